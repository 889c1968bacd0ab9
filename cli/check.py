"""`gencompress check` and `gencompress bench`: thin click layers over runtime_check.api."""

from __future__ import annotations

import click

from gencompress.arguments import BENCH_BUDGET_S, SEED_MAX, positive_int
from gencompress.errors import GencompressError
from gencompress.output import cell
from gencompress.runtime_check.fidelity import AUTO_SAMPLES_HELP, HELD_BACK_SEED


def _ints(values, option: str) -> list[int]:
    """``--batch 1 --batch 64`` or ``--batch 1,64`` → [1, 64]; each must be a positive integer."""
    out = []
    for v in values:
        for part in str(v).replace(",", " ").split():
            out.append(positive_int(part, option))  # the limit: the verb's
    if not out:
        raise GencompressError(f"{option}: give at least one value")
    return list(dict.fromkeys(out))


CHECK_ROWS = [
    ("max_abs_error", "max |error|"),
    ("mse", "MSE"),
    ("psnr_db", "PSNR dB"),
    ("psnr_worst_sample_db", "PSNR worst sample dB"),
    ("ssim", "SSIM"),
    ("cosine_similarity", "cosine similarity"),
    ("diversity_ratio", "diversity / reference"),
    ("frechet_distance", "Frechet distance"),
    ("frechet_distance_relative", "Frechet distance relative"),
]


@click.command("check")
@click.argument("reference", metavar="REF.onnx")
@click.argument("candidate", metavar="CANDIDATE.onnx")
@click.option("--samples", "-n", type=int, default=None, show_default="auto",
              help=f"Number of seeded latents (the same for both models); {AUTO_SAMPLES_HELP}.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=HELD_BACK_SEED, show_default=True,
              help="Seed of the latent set (default: the held-back set quantize and compress report PSNR on).")
@click.option("--batch", type=int, default=64, show_default=True, help="Samples per onnxruntime call.")
@click.option("--inputs", "inputs_npz", metavar="FILE.npz|FOLDER", help="Real inputs: an .npz keyed by input name, or a folder of PNG/JPEG images for an image input.")
@click.option("--features", metavar="FEAT.onnx", help="ONNX model (e.g. a discriminator or encoder) whose first output gives the Frechet features.")
@click.option("--peak", type=float, help="Peak-to-peak range for PSNR/SSIM (default: the nominal range the exporter recorded).")
@click.option("--provider", "-p", default="cpu", show_default=True, help="Execution provider to run both models on.")
@click.option("--report", "report_dir", metavar="DIR", help="Also write DIR/report.json and DIR/report.html (samples side by side).")
@click.option("--allow-nonfinite", is_flag=True, help="Measure a model with NaN/Inf weights anyway (default: refused, exit 2).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(reference, candidate, samples, seed, batch, inputs_npz, features, peak, provider, report_dir, allow_nonfinite, as_json):
    """Fidelity of CANDIDATE against its float reference REF on a fixed seeded latent set.

    Both models run the same inputs in onnxruntime: max abs error, MSE, PSNR (peak = the
    output's nominal range, 2.0 for tanh, 1.0 for sigmoid), SSIM for images, cosine
    similarity, and the Frechet distance of feature statistics (catches mode collapse).

    \b
    Examples:
      gencompress check g.onnx g.int8.onnx
      gencompress check g.onnx g.int8.onnx --samples 1024 --seed 3 --json
      gencompress check g.onnx g.int8.onnx --features disc.onnx --report out/
    """
    from gencompress.output import echo_json, table
    from gencompress.verbs import check as api
    from gencompress.runtime_check.report_html import jsonable

    if report_dir:  # the report must not land on one of the files it reports on
        from pathlib import Path

        from gencompress.onnx_io import refuse_overwrite

        for name in ("report.json", "report.html"):
            refuse_overwrite(Path(report_dir) / name, [reference, candidate, features, inputs_npz])
    result = api.check(
        reference,
        candidate,
        samples=samples,
        seed=seed,
        batch=batch,
        inputs=inputs_npz,
        features=features,
        peak=peak,
        provider=provider,
        preview=8 if report_dir else 0,
        progress=not as_json,
        allow_nonfinite=allow_nonfinite,
    )
    for warning in result.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    written = None
    if report_dir:
        written = api.write_report(report_dir, api.build_report(reference, candidate, fidelity=result))
    if as_json:
        data = jsonable({k: v for k, v in result.items() if k != "preview"})
        if written:
            data["report"] = {k: str(v) for k, v in written.items()}
        echo_json(data)
        return
    outs = result["outputs"]
    rows = []
    for key, label in CHECK_ROWS:
        if all(o.get(key) is None for o in outs):
            continue
        rows.append([label, *(cell(o.get(key), decimals=2 if key.endswith("_db") else None) for o in outs)])
    click.echo(f"{result['samples']} samples, seed {result['seed']}, {result['provider']}")
    if result.get("samples_note"):
        click.echo(result["samples_note"])
    click.echo(portability_line(result.get("portability")))
    click.echo(table(["metric", *(o["name"] for o in outs)], rows))
    for o in outs:
        click.echo(f"{o['name']}: peak {cell(o['peak'])} ({o['peak_note']})")
    if written:
        click.echo(f"report: {written['html']}")


@click.command("bench")
@click.argument("model", metavar="MODEL.onnx")
@click.option("--reference", "-r", metavar="REF.onnx", help="Time this model interleaved with MODEL and report the ratio.")
@click.option("--provider", "-p", "providers", multiple=True, default=("cpu",), show_default=True, help="Execution provider (repeatable): cpu, cuda, tensorrt, or a full onnxruntime name.")
@click.option("--batch", "-b", "batches", multiple=True, default=("1", "64"), show_default=True, help="Batch size (repeatable, or comma-separated).")
@click.option("--threads", "-t", "threads", multiple=True, default=("2",), show_default=True, help="Intra-op thread count (repeatable, or comma-separated).")
@click.option("--runs", type=int, default=100, show_default=True, help="Timed runs per model and configuration.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed warm-up runs.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True, help="Seed of the inputs.")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Measure session peak memory (one fresh process per model and batch).")
@click.option("--time-budget", "budget", type=float, default=BENCH_BUDGET_S, show_default=True,
              help="Seconds per configuration (batch, threads, provider): a model too slow for --runs in it gets fewer, and says so; 0: no limit.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench(model, reference, providers, batches, threads, runs, warmup, seed, memory, budget, as_json):
    """Latency, throughput, peak memory and size of MODEL in onnxruntime.

    Warm-up, then repeated runs: p50/p90/p99 and samples/s per execution provider, batch size
    and thread count. With --reference, both models are timed interleaved in one process
    (intra-op spinning off) and their p50 ratio is the figure to quote. A provider this
    onnxruntime build lacks is an error, never a silent CPU fallback.

    \b
    Examples:
      gencompress bench g.int8.onnx --reference g.onnx
      gencompress bench g.onnx --batch 1 --batch 64 --threads 1,2 --runs 200
      gencompress bench g.onnx --provider cuda --json
    """
    from gencompress.output import echo_json, table
    from gencompress.verbs import check as api
    from gencompress.runtime_check.report_html import jsonable

    result = api.bench(
        model,
        reference=reference,
        providers=providers,
        batches=_ints(batches, "--batch"),
        threads=_ints(threads, "--threads"),
        runs=runs,
        warmup=warmup,
        seed=seed,
        memory=memory,
        progress=not as_json,
        budget=budget,
    )
    for warning in result.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    for note in result.get("notes", []):
        click.echo(f"note: {note}", err=True)
    if as_json:
        echo_json(jsonable(result))
        return
    has_ref = result["reference"] is not None
    headers = ["provider", "threads", "batch", "p50 ms", "p90 ms", "p99 ms", "samples/s"]
    if has_ref:
        headers += ["ref p50 ms", "p50 / ref p50"]
    rows = []
    for r in result["results"]:
        row = [r["provider"].replace("ExecutionProvider", ""), r["threads"], r["batch"], *(cell(r["model"][k]) for k in ("p50_ms", "p90_ms", "p99_ms")), cell(r["model"]["samples_per_s"], 5)]
        if has_ref:
            row += [cell(r["reference"]["p50_ms"]), cell(r["ratio"], 3)]
        rows.append(row)
    click.echo(table(headers, rows))
    if result["memory"]:
        mheaders = ["provider", "batch", "peak MiB"] + (["ref peak MiB"] if has_ref else [])
        mrows = []
        for r in result["memory"]["results"]:
            row = [r["provider"].replace("ExecutionProvider", ""), r["batch"], cell(r["model_peak_bytes"] / 2**20)]
            if has_ref:
                row.append(cell(r["reference_peak_bytes"] / 2**20))
            mrows.append(row)
        click.echo("")
        click.echo(table(mheaders, mrows))
    s = result["sizes"]
    line = f"size: {s['model']['bytes']} bytes, deflate {s['model']['deflate_bytes']}"
    if s.get("reference"):
        line += f"; reference {s['reference']['bytes']} bytes (ratio {cell(s['ratio'], 3)}, deflate ratio {cell(s['deflate_ratio'], 3)})"
    click.echo("")
    click.echo(line)


def portability_line(p: dict | None) -> str:
    """Which CPU the figures hold for: measured on this ISA, and whether every x86 CPU computes the same."""
    if not p:
        return ""
    verdict = {True: "saturation-free on x86 without VNNI (AVX2, AVX-512BW)",
               False: "NOT saturation-free on x86 without VNNI (AVX2, AVX-512BW): requantize with --int8-kernels portable",
               None: "no int8 kernels: the same on every CPU"}[p.get("saturation_free")]
    return f"measured on {p.get('isa')}; {verdict}"
