"""`gencompress export MODEL OUT.onnx`."""

import click

from gencompress.output import echo_json, table


@click.command()
@click.argument("model")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--checkpoint", type=click.Path(), help="state_dict (.pt/.pth) or .safetensors; loaded with weights_only=True.")
@click.option("--input", "inputs", multiple=True, metavar="NAME=SHAPE[:DTYPE[:PRIOR]]", help="A forward argument, e.g. z=1x100x1x1 or label=1:int64:0..9. Repeatable; dim 0 is the (dynamic) batch axis. PRIOR (what calibration and checks draw): normal (floats' default), uniform:LO..HI, onehot:K (float one-hot over a last axis of size K), LO..HI (ints), data:FILE.npz (rows of real data).")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
@click.option("--legacy", is_flag=True, help="Use the TorchScript exporter instead of torch.export (dynamo).")
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="Max abs error allowed between torch and onnxruntime.")
@click.option("--batch-size", type=int, help="Keep the batch (dim 0) fixed at N, for models whose graph depends on it (e.g. groups = batch); checks then run batches of N.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export(model, out, checkpoint, inputs, opset, legacy, tolerance, batch_size, as_json):
    """Export MODEL to OUT.onnx and check it against torch at batch 1, 7 and 64.

    MODEL is a zoo name (dcgan, vae, rvae, cgan), path/to/file.py:ClassOrFactory or
    package.module:attr.

    \b
    Examples:
      gencompress export dcgan dcgan.onnx
      gencompress export my_gen.py:Generator g.onnx --checkpoint g.pt \\
          --input z=1x64 --input label=1:int64:0..9
      gencompress export cond.py:G g.onnx --input z=1x64 --input y=1x10:float32:onehot:10
      gencompress export gencompress.models.families:ModulatedConvFused g.onnx --batch-size 4
    """
    from gencompress.exporter.export import export as run_export

    result = run_export(
        model, out, checkpoint=checkpoint, inputs=inputs, opset=opset, legacy=legacy, tolerance=tolerance, batch_size=batch_size,
        log=lambda m: click.echo(m, err=True),
    )
    if as_json:
        echo_json(result)
        return
    parity = result["parity"]
    click.echo(f"exported {result['model']} -> {result['output']} ({result['bytes'] / 1e6:.2f} MB, {result['exporter']} exporter, opset {result['opset']})")
    click.echo("parity check, onnxruntime vs torch:")
    rows = [[f"batch {b}", f"{e:.2e}"] for b, e in parity["max_abs_error"].items()]
    if parity["batch_consistency"] is not None:
        rows.append(["batch rows vs single", f"{parity['batch_consistency']:.2e}"])
    click.echo(table(["inputs", "max abs error"], rows))
    click.echo(f"OK: within tolerance {result['tolerance']:g}")
