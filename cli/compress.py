"""`gencompress compress MODEL OUT_DIR`: the product's main job."""

import sys
from pathlib import Path

import click

from gencompress.arguments import SEED_MAX
from gencompress.cli.check import portability_line
from gencompress.output import cell, echo_json, table
from gencompress.passes.insert_qdq import ACTIVATION_TYPES, CALIBRATION_METHODS, INT8_KERNELS
from gencompress.passes.prune_report import SCOPES
from gencompress.runtime_check.calibration import AUTO_CALIB_HELP
from gencompress.runtime_check.fidelity import AUTO_SAMPLES_HELP
from gencompress.verbs.compress import QUANT_MODES
from gencompress.verbs.prune import PASS_OF_MODE
from gencompress.verbs.int8_plan import OBJECTIVES


# options that only build the flag recipe (default_recipe)
RECIPE_FLAGS = ("mode", "bits", "sparsity", "prune_mode", "prune_scope", "nm", "calib", "calib_size", "per_tensor", "activations", "int8_kernels",
                "no_rewrite", "exclude", "objective", "distill")

# flag -> (the option that decides whether it is used, the values for which it is)
APPLIES_TO = {
    "bits": ("mode", ("weight-only",)),
    "calib": ("mode", ("static",)),
    "calib_size": ("mode", ("static",)),
    "per_tensor": ("mode", ("static",)),
    "activations": ("mode", ("static",)),
    "int8_kernels": ("mode", ("static",)),
    "no_rewrite": ("mode", ("static",)),
    "nm": ("prune_mode", ("nm",)),
    "prune_scope": ("prune_mode", ("unstructured",)),
    "exclude": ("mode", ("static", "weight-only", "fp16")),
    "objective": ("mode", ("static", "weight-only")),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@click.command()
@click.argument("model")
@click.argument("out_dir", type=click.Path(file_okay=True))
@click.option("--recipe", type=click.Path(), help="YAML/JSON recipe: a list of {pass: NAME, options: {...}}.")
@click.option("--checkpoint", type=click.Path(), help="Weights for a torch MODEL (state_dict or .safetensors).")
@click.option("--input", "inputs", multiple=True, metavar="NAME=SHAPE[:DTYPE[:PRIOR]]", help="Inputs of a torch MODEL; PRIOR: normal, uniform:LO..HI, onehot:K, LO..HI (ints), data:FILE.npz (see `gencompress export --help`).")
@click.option("--batch-size", "batch_size", type=int, help="Export with the batch (dim 0) fixed at N (a torch MODEL whose graph depends on it).")
@click.option("--mode", type=click.Choice(QUANT_MODES), default="static", show_default=True, help="Quantization.")
@click.option("--bits", type=click.Choice(["8", "4"]), default="8", show_default=True, help="Weight bits for --mode weight-only.")
@click.option("--sparsity", type=float, default=0.0, show_default=True, help="Prune this fraction of weights (or channels) first.")
@click.option("--prune-mode", type=click.Choice(list(PASS_OF_MODE)), default="unstructured", show_default=True, help="nm prunes by --nm, without --sparsity.")
@click.option("--prune-scope", type=click.Choice(SCOPES), default=None,
              help="Unstructured: the sparsity per weight (layer) or one magnitude threshold across all weights (global). "
                   "Default: global with --distill (measured better after distillation), else layer.")
@click.option("--nm", default="2:4", show_default=True, help="N:M pattern for --prune-mode nm.")
@click.option("--calib", type=click.Choice(CALIBRATION_METHODS), default="minmax", show_default=True)
@click.option("--calib-size", type=int, help=f"Calibration samples (seeded draws from the latent prior; {AUTO_CALIB_HELP}).")
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
@click.option("--activations", type=click.Choice(ACTIVATION_TYPES), default="uint8", show_default=True)
@click.option("--int8-kernels", type=click.Choice(INT8_KERNELS), default="portable", show_default=True,
              help="portable: int8 weights no x86 kernel without VNNI can saturate on; vnni: full 8-bit weights.")
@click.option("--no-rewrite", is_flag=True, help="Skip the int8 rewrites (ConvTranspose → Conv/Gemm, BatchNorm folding).")
@click.option("--exclude", multiple=True, help="Node names, weight names or op types to keep in float.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="balanced", show_default=True,
              help="balanced: int8 compute only where it is timed faster, never slower than float; speed: fastest; size: all int8, untimed.")
@click.option("--target-psnr", type=float, default=None, metavar="DB",
              help="Search the configurations (per-layer int8/float, rewrites on/off, weight-only int8/int4, fp16) for the best "
                   "one per --objective that stays at or above DB against float; all candidates go on the report's chart.")
@click.option("--distill", type=int, default=0, show_default=True, metavar="STEPS", help="After pruning, distill the pruned model against the float one for STEPS steps (quantization-aware when a quantization follows).")
@click.option("--sweep", help="Also run KEY=V1,V2,... (sparsity, bits, mode, calib) for the size-vs-PSNR chart.")
@click.option("--samples", type=int, default=None, show_default="auto", help=f"Seeded latents for the fidelity check; {AUTO_SAMPLES_HELP}.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True)
@click.option("--provider", default="CPUExecutionProvider", show_default=True, help="Execution provider to time.")
@click.option("--batch", "batches", type=int, multiple=True, help="Batch sizes to time (default 1 and 64).")
@click.option("--threads", type=int, multiple=True, help="Intra-op thread counts to time (default 2).")
@click.option("--no-bench", is_flag=True, help="Skip the latency measurement.")
@click.option("--ship", "ship", is_flag=True, help="Also bundle the compressed model into OUT_DIR/ship (see `gencompress ship`).")
@click.option("--keep-initializer-inputs", is_flag=True, help="An IR version 3 graph's initializers that are graph inputs too stay inputs (default: taken as weights, with a note).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of the summary table.")
def compress(model, out_dir, recipe, checkpoint, inputs, batch_size, mode, bits, sparsity, prune_mode, prune_scope, nm, calib, calib_size,
             per_tensor, activations, int8_kernels, no_rewrite, exclude, objective, target_psnr, distill, sweep, samples, seed, provider, batches, threads,
             no_bench, ship, keep_initializer_inputs, as_json):
    """Export MODEL (or take MODEL.onnx), compress it, check it; write OUT_DIR.

    OUT_DIR gets model.onnx, reference.onnx, report.json and report.html.
    The default recipe is static int8: cleanup → int8 rewrites → QDQ with calibration.
    The rewrites turn each ConvTranspose into one sub-pixel Conv, or one Conv per output
    phase where the single Conv would store zeros (recipe option of rewrite_for_int8:
    layout: auto|fused|phases; auto by default). A torch MODEL whose graph depends on the
    batch (groups = batch) exports with --batch-size N. The summary warns when the result
    is >= 0.5x the float size or slower than float, naming the layers responsible.

    \b
    Examples:
      gencompress compress dcgan out/
      gencompress compress vae out/ --objective speed --batch 1
      gencompress compress vae out/ --target-psnr 40 --objective speed
      gencompress compress vae out/ --sparsity 0.5 --mode weight-only --bits 4
      gencompress compress g.onnx out/ --recipe recipe.yaml
      gencompress compress dcgan out/ --sweep bits=8,4 --mode weight-only
      gencompress compress dcgan out/ --sparsity 0.5 --prune-mode channel --distill 2000
      gencompress compress dcgan out/ --sparsity 0.5 --distill 2000     # global magnitude threshold
      gencompress compress dcgan out/ --ship      # + out/ship: sample.py, model.ort, web/
      gencompress compress gencompress.models.families:ModulatedConvFused out/ --batch-size 2
    """
    from gencompress.errors import GencompressError
    from gencompress.verbs.compress import compress as run, parse_sweep

    ctx = click.get_current_context()
    given = [n for n in RECIPE_FLAGS if ctx.get_parameter_source(n) != click.core.ParameterSource.DEFAULT]
    if recipe and given:  # these flags only build the default recipe: with --recipe they would do nothing
        raise GencompressError(f"{', '.join(_flag(n) for n in given)}: set in the recipe file when --recipe is given")
    chosen = {"mode": mode, "prune_mode": prune_mode}
    swept = parse_sweep(sweep)[0] if sweep else None
    for name in given:  # e.g. --bits 4 without --mode weight-only would quietly give static int8
        if name in APPLIES_TO:
            option, values = APPLIES_TO[name]
            if chosen[option] not in values and swept != option:
                raise GencompressError(f"{_flag(name)} applies to {' or '.join(f'{_flag(option)} {v}' for v in values)} only")
    flags = dict(mode=mode, sparsity=sparsity, prune_mode=prune_mode, prune_scope=prune_scope, nm=nm, bits=int(bits), calib=calib,
                 calib_size=calib_size, per_tensor=per_tensor, activations=activations, int8_kernels=int8_kernels, rewrite=not no_rewrite,
                 exclude=tuple(exclude), seed=seed, objective=objective, distill=distill)
    from gencompress.onnx_io import initializer_inputs, lifted_note

    with initializer_inputs(keep_initializer_inputs) as lifted:
        report = run(
            model, out_dir, recipe=recipe, checkpoint=checkpoint, inputs=inputs, batch_size=batch_size, samples=samples, seed=seed,
            bench=not no_bench, batches=batches or (1, 64), threads=threads or (2,), provider=provider,
            sweep=parse_sweep(sweep) if sweep else None, flags=flags, target_psnr=target_psnr,
            ship_targets=("python", "ort", "web") if ship else None,
            log=lambda m: click.echo(m, err=True), progress=sys.stderr.isatty(),
        )
    if lifted:
        click.echo(f"note: {lifted_note(lifted, model)}", err=True)
    search = next((p for p in report.get("passes", []) if p.get("pass") == "target_search"), None)
    if search and not search["summary"].get("met"):
        click.echo(f"gencompress: warning: {search['summary']['message']}", err=True)
    for note in (report.get("latency") or {}).get("notes") or []:  # fewer timed runs than asked (bench's time budget)
        click.echo(f"note: {note}", err=True)
    if as_json:
        echo_json(report)
        return
    click.echo(summary_table(report))
    if search:
        click.echo(f"\n{search['summary']['message']}")
    for warning in report.get("warnings") or []:
        click.echo(f"warning: {warning}")
    out = Path(out_dir)
    click.echo(portability_line(report.get("portability")))
    click.echo(f"\nreport: {out / 'report.html'}   model: {out / 'model.onnx'}" + (f"   bundle: {out / 'ship'}" if ship else ""))


def summary_table(report: dict) -> str:
    sizes = report["sizes"]
    rows = [["size", f"{sizes['reference']['bytes'] / 1e6:.3f} MB", f"{sizes['candidate']['bytes'] / 1e6:.3f} MB", f"{sizes['ratio']:.3f}x"],
            ["deflated size", f"{sizes['reference']['deflate_bytes'] / 1e6:.3f} MB", f"{sizes['candidate']['deflate_bytes'] / 1e6:.3f} MB", f"{sizes['deflate_ratio']:.3f}x"]]
    for out in report["fidelity"]["outputs"]:
        name = out["name"]
        rows.append([f"PSNR {name} (dB, peak {out['peak']:g})", "", cell(out.get("psnr_db"), decimals=2), ""])
        if out.get("ssim") is not None:
            rows.append([f"SSIM {name}", "", cell(out["ssim"]), ""])
        rows.append([f"Fréchet distance {name} (relative)", "", cell(out.get("frechet_distance_relative")), ""])
    for r in (report.get("latency") or {}).get("results", []):
        rows.append([f"latency p50, batch {r['batch']}, {r['threads']} threads",
                     f"{r['reference']['p50_ms']:.3f} ms", f"{r['model']['p50_ms']:.3f} ms", f"{r['speedup']:.2f}x speed-up"])
    return table(["", "reference", "compressed", "compressed vs reference"], rows)


