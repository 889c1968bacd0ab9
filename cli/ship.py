"""`gencompress ship MODEL OUT_DIR`: a bundle that runs without torch (Python, ORT format, browser)."""

from __future__ import annotations

import click

from gencompress.output import echo_json, table


@click.command()
@click.argument("model")
@click.argument("out_dir", type=click.Path(file_okay=True))
@click.option("--target", "targets", default="python,ort,web", show_default=True,
              help="Comma-separated: python (sample.py), ort (model.ort + required operators), web (onnxruntime-web page).")
@click.option("--web-backends", default="wasm", show_default=True,
              help="onnxruntime-web builds the page carries: wasm, webgpu or wasm,webgpu (the first is the default; "
                   "the page's ?backend= picks another; WebGPU falls back to wasm without an adapter).")
@click.option("--json", "as_json", is_flag=True, help="Print manifest.json instead of the summary.")
def ship(model, out_dir, targets, web_backends, as_json):
    """Bundle a compressed MODEL (.onnx, or a compress OUT_DIR) into OUT_DIR for edge devices.

    OUT_DIR gets model.onnx and manifest.json (inputs, priors, outputs, checksums, fidelity
    and latency from a compress report.json beside the model) plus, per target: sample.py
    (runs with onnxruntime + numpy only), model.ort + required_operators.config (onnxruntime's
    converter; mobile usability in the manifest), web/ (onnxruntime-web page, runtime vendored,
    fetched once with npm into ~/.cache/gencompress or $GENCOMPRESS_CACHE).

    If the web runtime cannot be fetched, the other targets are still written, manifest.json
    records the web failure, and the command exits 2 with one line naming the fix.

    \b
    Examples:
      gencompress ship out/model.onnx bundle/
      gencompress ship out/ bundle/ --target python,ort
      gencompress ship out/ bundle/ --web-backends wasm,webgpu
      cd bundle && python sample.py --n 16 --seed 0 --out samples.png
      python bundle/sample.py --verify        # exit 1 if this machine computes other outputs
      python -m http.server -d bundle/web 8000    # then open http://127.0.0.1:8000/
    """
    import sys

    from gencompress.edge.bundle import ship as run

    manifest = run(model, out_dir, targets=targets, web_backends=web_backends, log=lambda m: click.echo(m, err=True) if sys.stderr.isatty() else None)
    if as_json:
        echo_json(manifest)
        return
    click.echo(summary(manifest, out_dir))


def summary(manifest: dict, out_dir) -> str:
    rows = []
    for name, entry in manifest["targets"].items():
        if not entry.get("built"):
            rows.append([name, "failed", entry.get("error", "")])
            continue
        size = sum(manifest["files"][f]["bytes"] for f in entry["files"])
        if name == "ort":
            note = f"{entry['operator_count']} operators in the reduced build; .ort max |diff| vs .onnx {entry['check']['max_abs_diff_vs_onnx']:.2g}"
        elif name == "web":
            note = f"onnxruntime-web {entry['onnxruntime_web']}, {'+'.join(entry['backends'])}: serve {out_dir}/web on localhost or https"
        else:
            note = entry["run"]
        rows.append([name, f"{size / 1e6:.3f} MB", note])
    total = sum(f["bytes"] for f in manifest["files"].values())
    lines = [table(["target", "size", ""], rows), "", f"bundle: {out_dir} ({total / 1e6:.3f} MB, {len(manifest['files'])} files + manifest.json)"]
    return "\n".join(lines)
