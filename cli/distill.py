"""`gencompress distill`: the click layer over ``gencompress.distill``."""

from __future__ import annotations

import sys

import click

from gencompress.arguments import SEED_MAX
from gencompress.verbs.distill import DEFAULTS


@click.command("distill", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("teacher", metavar="TEACHER.onnx")
@click.argument("student", metavar="STUDENT.onnx")
@click.argument("out", metavar="OUT.onnx")
@click.option("--steps", type=int, default=DEFAULTS["steps"], show_default=True, help="Training steps (one batch each).")
@click.option("--batch", type=int, default=DEFAULTS["batch"], show_default=True, help="Inputs per step.")
@click.option("--lr", type=float, help="Adam learning rate (warm-up, cosine decay to 1%); default 2e-3, or 3e-5 for an unpruned student with --quantize-aware.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=DEFAULTS["seed"], show_default=True, help="Seed of the training draws; same seed, same output file.")
@click.option("--threads", type=int, default=DEFAULTS["threads"], show_default=True, help="Torch and onnxruntime threads (the result depends on it).")
@click.option("--data", type=click.Path(), metavar="FILE.npz|FOLDER", help="Real inputs: an .npz keyed by input name, or a folder of PNG/JPEG images for an image input.")
@click.option("--quantize-aware", type=click.Choice(["int8", "int4"]), help="Train through the weight rounding of int8 (static or weight-only) or int4 weight-only.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def distill(teacher, student, out, steps, batch, lr, seed, threads, data, quantize_aware, as_json):
    """Train STUDENT.onnx's weights to reproduce TEACHER.onnx's outputs; write OUT.onnx.

    The student (e.g. the output of `gencompress prune`) keeps its graph: only weight
    values change, and pruned zeros stay zero. Inputs are fresh seeded draws from the
    latent prior recorded in the teacher (or rows of --data); the loss is the output MSE.

    \b
    Examples:
      gencompress prune g.onnx g.pruned.onnx --mode channel --sparsity 0.5
      gencompress distill g.onnx g.pruned.onnx g.distilled.onnx --steps 2000
      gencompress distill g.onnx g.pruned.onnx g.qat.onnx --quantize-aware int4
      gencompress check g.onnx g.distilled.onnx
    """
    from gencompress.verbs.distill import distill as run
    from gencompress.output import echo_json, table

    result = run(teacher, student, out, steps=steps, batch=batch, lr=lr, seed=seed, threads=threads, data=data,
                 quantize_aware=quantize_aware, progress=sys.stderr.isatty())
    if as_json:
        echo_json(result)
        return
    rows = [[o["name"], _db(o["psnr_before_db"]), _db(o["psnr_after_db"])] for o in result["outputs"]]
    click.echo(table(["output", "PSNR before (dB)", "PSNR after (dB)"], rows))
    curve = result["loss_curve"]
    if not curve:
        click.echo(f"no training: {result.get('skipped', 'nothing to train')}")
        click.echo(f"wrote {out}")
        return
    click.echo(f"{result['steps']} steps, batch {result['batch']}, lr {result['lr']:.2g}, {result['wall_s']:.1f} s; loss {curve[0][1]:.3g} -> {curve[-1][1]:.3g}"
               + (f"; quantization-aware {result['quantize_aware']}" if result["quantize_aware"] else ""))
    if result.get("best_step") != result["steps"]:
        click.echo(f"kept the weights of step {result['best_step']}: the lowest loss on the held-out latents")
    click.echo(f"wrote {out}")


def _db(v):
    return "-" if v is None else f"{v:.2f}"
