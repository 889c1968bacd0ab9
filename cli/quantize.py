"""Click commands `gencompress quantize` and `gencompress sensitivity` (thin layers over the API)."""

from __future__ import annotations

import click

from gencompress.arguments import SEED_MAX
from gencompress.output import echo_json, table
from gencompress.passes.insert_qdq import ACTIVATION_TYPES, CALIBRATION_METHODS, INT8_KERNELS
from gencompress.verbs.int8_plan import OBJECTIVES
from gencompress.verbs.quantizers import MODES
from gencompress.runtime_check.calibration import AUTO_CALIB_HELP
from gencompress.runtime_check.fidelity import AUTO_SAMPLES_HELP

_QUANTIZE_EPILOG = """\b
Examples:
  gencompress quantize g.onnx g.int8.onnx
  gencompress quantize g.onnx g.int8.onnx --calib percentile --calib-size 512
  gencompress quantize g.onnx g.int8.onnx --calib-data latents.npz --exclude node_conv2d
  gencompress quantize g.onnx g.int8.onnx --target-psnr 40
  gencompress quantize g.onnx g.int8.onnx --objective speed --batch 1 --threads 2
  gencompress quantize g.onnx g.int8.onnx --objective size     # every layer int8, untimed
  gencompress quantize g.onnx g.int8.onnx --no-rewrite
  gencompress quantize big.onnx big.int8.onnx --no-check --external-data
  gencompress quantize g.onnx g.w4.onnx --mode weight-only --bits 4
  gencompress quantize g.onnx g.fp16.onnx --mode fp16
"""

_SENSITIVITY_EPILOG = """\b
Examples:
  gencompress sensitivity g.onnx
  gencompress sensitivity g.onnx --mode weight-only --bits 4 --json
"""


def _options(*names):
    """Shared click options, applied in the order named."""
    table_ = {
        "mode": click.option("--mode", type=click.Choice(MODES), default="static", show_default=True,
                             help="static: int8 weights and activations (QDQ); weight-only: int8/int4 weights, float compute; fp16."),
        "bits": click.option("--bits", type=click.Choice(["8", "4"]), default="8", show_default=True, help="Weight bits (4 needs --mode weight-only)."),
        "block-size": click.option("--block-size", type=click.IntRange(16, 65536), default=64, show_default=True, help="int4: weights per scale along the input axis."),
        "calib": click.option("--calib", type=click.Choice(CALIBRATION_METHODS), default="minmax", show_default=True,
                              help="How activation ranges are chosen from the calibration run (static mode)."),
        "calib-size": click.option("--calib-size", type=int, default=None,
                                   help=f"Calibration samples: seeded latent draws ({AUTO_CALIB_HELP}), or the first N rows of --calib-data."),
        "calib-data": click.option("--calib-data", type=click.Path(), default=None, metavar="FILE.npz|FOLDER",
                                   help="Real calibration inputs: an .npz with one array per model input, keyed by input name, "
                                        "or a folder of PNG/JPEG images for an image input."),
        "percentile": click.option("--percentile", type=float, default=None, help="For --calib percentile: the % of values kept (default 99.99)."),
        "per-tensor": click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel."),
        "activations": click.option("--activations", type=click.Choice(ACTIVATION_TYPES), default="uint8", show_default=True,
                                    help="Activation type: uint8 asymmetric or int8 symmetric."),
        "int8-kernels": click.option("--int8-kernels", type=click.Choice(INT8_KERNELS), default="portable", show_default=True,
                                     help="portable: int8 weights that cannot saturate the int16 sums of x86 kernels without VNNI "
                                          "(AVX2, AVX-512BW); vnni: full 8-bit weights, for targets that all have VNNI or ARM dot-product."),
        "seed": click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True, help="Seed of the calibration draws (evaluation uses a held-back seed)."),
        "eval-size": click.option("--eval-size", type=int, default=None, show_default="auto",
                                  help="Held-back samples for the PSNR check (the set `gencompress check` draws by default); "
                                       f"{AUTO_SAMPLES_HELP}."),
        "json": click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    }

    def apply(f):
        for name in reversed(names):
            f = table_[name](f)
        return f

    return apply


_COMMON = ("mode", "bits", "block-size", "calib", "calib-size", "calib-data", "percentile", "per-tensor", "activations", "int8-kernels")


@click.command("quantize", epilog=_QUANTIZE_EPILOG)
@click.argument("in_path", metavar="IN.onnx", type=click.Path(dir_okay=False))
@click.argument("out_path", metavar="OUT.onnx", type=click.Path(dir_okay=False))
@_options(*_COMMON)
@click.option("--exclude", multiple=True, metavar="NAME", help="Keep a node, op type or weight in float (repeat, or comma-separated).")
@click.option("--target-psnr", type=float, default=None, metavar="DB",
              help="Keep the most damaging layers in float until the PSNR against float reaches DB.")
@click.option("--strict", is_flag=True, help="With --target-psnr: fail (exit 2, nothing written) when the target cannot be met.")
@click.option("--fp16-io", is_flag=True, help="fp16 mode: make the graph inputs/outputs float16 too (default: they stay float32).")
@click.option("--rewrite/--no-rewrite", default=None,
              help="Int8 graph rewrites first (BatchNorm folding, ConvTranspose -> Conv/Gemm, which onnxruntime runs in int8). "
                   "Default: on for --mode static when the model has a ConvTranspose they apply to, off otherwise.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="balanced", show_default=True,
              help="balanced: int8 compute only where onnxruntime runs it faster (timed per layer), never slower than float; "
                   "speed: fastest measured; size: every layer int8, untimed.")
@click.option("--batch", "batches", type=int, multiple=True, help="Batch sizes the objective is timed at (default 1 and 64).")
@click.option("--threads", type=int, default=2, show_default=True, help="Intra-op threads the objective is timed with.")
@click.option("--provider", default="CPUExecutionProvider", show_default=True, help="Execution provider the objective is timed on.")
@click.option("--no-check", is_flag=True, help="Skip the PSNR check against float after quantizing (faster on large models).")
@click.option("--external-data", is_flag=True,
              help="Write the weights to OUT.onnx.data beside OUT.onnx (automatic above the 2 GB limit of a single .onnx).")
@click.option("--keep-initializer-inputs", is_flag=True, help="An IR version 3 graph's initializers that are graph inputs too stay inputs (default: taken as weights, with a note).")
@_options("seed", "eval-size", "json")
def quantize(in_path, out_path, mode, bits, block_size, calib, calib_size, calib_data, percentile, per_tensor, activations,
             int8_kernels, exclude, target_psnr, strict, fp16_io, rewrite, objective, batches, threads, provider, no_check, external_data,
             keep_initializer_inputs, seed, eval_size, as_json):
    """Quantize a float ONNX generator: static int8 QDQ (default), weight-only int8/int4, or fp16.

    Static int8 calibrates activation ranges on seeded draws from the model's latent prior (or
    --calib-data), stores weights as int8 per output channel and places QuantizeLinear /
    DequantizeLinear so onnxruntime runs int8 kernels. ConvTranspose layers, which onnxruntime
    can only run in float, are first rewritten as Conv or Gemm (--no-rewrite keeps them): one
    sub-pixel Conv per layer, or one Conv per output phase where the single Conv would store
    zeros (layout auto; a recipe's rewrite_for_int8 takes layout: auto|fused|phases). The
    result is checked against the float model: PSNR on a held-back seeded latent set. A model
    below opset 13 is upgraded first (a note says so); a result >= 0.5x the float size gets a
    warning naming the largest float tensors left.
    """
    from gencompress.onnx_io import initializer_inputs, lifted_note
    from gencompress.verbs.quantize import quantize as run

    with initializer_inputs(keep_initializer_inputs) as lifted:
        report = run(
            in_path, out_path, mode=mode, bits=int(bits), calib=calib, calib_size=calib_size, calib_data=calib_data,
            per_tensor=per_tensor, activations=activations, int8_kernels=int8_kernels, exclude=exclude, target_psnr=target_psnr, strict=strict,
            seed=seed, percentile=percentile, block_size=block_size, keep_io_types=not fp16_io, eval_size=eval_size,
            rewrite=rewrite, objective=objective, batches=batches or (1, 64), threads=threads, provider=provider,
            check=not no_check, external_data=True if external_data else None, log=lambda m: click.echo(m, err=True),
        )
    if lifted:
        click.echo(f"note: {lifted_note(lifted, in_path)}", err=True)
    # notes and warnings reached stderr through ``log`` as they happened
    target = report.get("target")
    if target is not None and not target["met"]:
        click.echo(f"gencompress: warning: {target['message']}", err=True)
    if as_json:
        echo_json(report)
        return
    click.echo(_summary(report))


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _summary(report: dict) -> str:
    mode = report["mode"]
    what = {
        "static": f"static int8 ({report.get('weights')} weights, {report.get('activations')} activations)",
        "weight-only": f"weight-only int{report['bits']}" + (f" (blocks of {report['block_size']})" if report.get("block_size") else ""),
        "fp16": "float16",
    }[mode]
    ev = report["evaluation"]
    if "skipped" in ev:
        psnr, evaluated = "not measured (--no-check)", ""
    else:
        psnr = "identical" if report["psnr_db"] is None else f"{report['psnr_db']:.2f} dB"
        evaluated = f" (on {ev['source']}, peak {ev['peak']} = {ev['peak_source']})"
    rows = [
        ("mode", what),
        ("size before", _mb(report["bytes_before"])),
        ("size after", _mb(report["bytes_after"])),
        ("ratio", f"{report['ratio']:.3f}x"),
        ("PSNR vs float", psnr + evaluated),
    ]
    if "calibration" in report:
        c = report["calibration"]
        rows.append(("calibration", f"{c['method']}, {c['samples']} samples from {c['source']}"))
    rewrite = report.get("rewrite") or {}
    if mode == "static" or rewrite.get("applied"):
        if rewrite.get("applied"):
            n = rewrite.get("convtranspose_rewritten", 0)
            what = f"{n} ConvTranspose layer{'s' if n != 1 else ''} -> Conv/Gemm, run in int8" if n else rewrite.get("reason", "")
            rows.append(("rewrite", f"on: {what} (--no-rewrite turns it off)"))
        else:
            rows.append(("rewrite", f"off: {rewrite.get('reason', '')}"))
    if "target" in report:
        rows.append(("target", report["target"]["message"]))
    plan = report.get("speed_plan")
    if plan:
        rows.append(("objective", f"{plan['objective']}: {plan['message']}"))
        if plan.get("timed_on"):
            t = plan["timed_on"]
            rows.append(("timed on", f"{t['isa']}, {t['threads']} thread(s), onnxruntime {t['onnxruntime']}"
                         + (f"; plan reused from {plan['cached']}" if plan.get("cached") else "")))
    elif report.get("objective"):
        rows.append(("objective", report["objective"] + (": every layer int8, not timed" if mode == "static" else "")))
    if report.get("cached"):  # verbs/output_cache.py: a rerun of the same quantize
        c = report["cached"]
        rows.append(("cached", f"output reused from {c['entry']} (first run {c['first_run_seconds']} s, {c['created']})"))
    lines = [table(["", report["output"]], rows)]
    if mode == "fp16":
        fp = report["fp16"]
        kept = ", ".join(f"{n['node']} ({n['op_type']})" for n in fp["float32_nodes"]) or "none"
        lines += ["", f"float16 nodes: {fp['float16_nodes']}; kept float32: {kept}; casts: {fp['casts']}"]
        return "\n".join(lines)
    layer_rows = []
    for layer in report["layers"]:
        if mode == "weight-only":
            kind = "/".join(sorted(set(layer.get("formats", [])))) + " weights, float compute"
        elif layer["kind"] == "int8":
            kind = "int8 weights + activations"
        else:
            kind = "int8 weights, float compute"
        layer_rows.append((layer["node"], layer["op_type"], kind, ", ".join(layer["weights"])))
    layer_rows += [(layer["node"], layer["op_type"], f"float ({layer.get('reason', 'excluded')})", ", ".join(layer["weights"])) for layer in report["float_layers"]]
    lines += ["", table(["layer", "op", "quantized", "weights"], layer_rows)]
    if plan and plan["layers"]:
        lines += ["", "per layer, measured (" + plan["objective"] + "):",
                  table(["layer", "op", "computes in", "why"], [(r["node"], r.get("op_type") or "", r["choice"], r["reason"]) for r in plan["layers"]])]
    if rewrite.get("changes"):
        lines += ["", "rewrites:", *(f"  {change}" for change in rewrite["changes"])]
    if mode == "static" and any(layer["op_type"] == "ConvTranspose" for layer in report["layers"]):
        if rewrite.get("setting") == "off":
            hint = "without --no-rewrite they become int8 Conv/Gemm"
        else:
            hint = f"not rewritten as int8 Conv/Gemm: {rewrite.get('reason', 'rewrites off')}"
        lines.append("note: onnxruntime's CPU provider has no int8 ConvTranspose kernel; it runs those as dequantize -> float "
                     f"ConvTranspose -> quantize ({hint})")
    return "\n".join(lines)


@click.command("sensitivity", epilog=_SENSITIVITY_EPILOG)
@click.argument("in_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@_options(*_COMMON, "seed", "eval-size", "json")
def sensitivity(in_path, mode, bits, block_size, calib, calib_size, calib_data, percentile, per_tensor, activations, int8_kernels, seed,
                eval_size, as_json):
    """Rank layers by the damage quantizing each one alone does to the generator's output.

    PSNR against the float model on a seeded latent set (peak: the nominal output range, else
    the reference's peak-to-peak); the lowest PSNR is the most damaging layer. Reproducible:
    the same command gives the same ranking.
    """
    from gencompress.verbs.sensitivity import sensitivity as run

    report = run(
        in_path, mode=mode, bits=int(bits), calib=calib, calib_size=calib_size, calib_data=calib_data, per_tensor=per_tensor,
        activations=activations, int8_kernels=int8_kernels, seed=seed, percentile=percentile, block_size=block_size, eval_size=eval_size,
    )
    if as_json:
        echo_json(report)
        return
    rows = [(r["rank"], r["node"], r["op_type"], "identical" if r["psnr_db"] is None else r["psnr_db"], ", ".join(r["weights"])) for r in report["layers"]]
    ev = report["evaluation"]
    all_q = report["all_quantized_psnr_db"]
    click.echo(table(["rank", "layer", "op", "PSNR dB", "weights"], rows))
    click.echo(f"\nall layers quantized: {'identical' if all_q is None else f'{all_q:.2f} dB'} "
               f"({ev['samples']} seeded latents, peak {ev['peak']} = {ev['peak_source']}); rank 1 = most damaging")
