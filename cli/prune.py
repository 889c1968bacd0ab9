"""`gencompress prune`: the click layer over ``gencompress.prune``."""

from __future__ import annotations

import click

from gencompress.passes.prune_report import CRITERIA, DEFAULT_MIN_SIZE, SCOPES
from gencompress.verbs.prune import PASS_OF_MODE


@click.command("prune", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("in_path", metavar="IN.onnx")
@click.argument("out_path", metavar="OUT.onnx")
@click.option("--sparsity", type=float, help="Fraction of weights zeroed (unstructured) or of output channels removed (channel), in [0, 1).")
@click.option("--mode", type=click.Choice(list(PASS_OF_MODE)), default="unstructured", show_default=True, help="What to prune.")
@click.option("--scope", type=click.Choice(SCOPES), default="layer", show_default=True, help="Sparsity per layer, or one ranking across all layers.")
@click.option("--nm", "nm", default="2:4", show_default=True, metavar="N:M", help="--mode nm: at most N non-zeros in every M weights along the input-channel axis.")
@click.option("--criterion", type=click.Choice(CRITERIA), default="l1", show_default=True, help="--mode channel: rank channels by the L1 or L2 norm of their weights.")
@click.option("--exclude", multiple=True, metavar="NAME|GLOB", help="Leave matching weight nodes/initializers dense; in channel mode they keep their output channels (repeatable, or comma-separated).")
@click.option("--min-size", type=int, default=DEFAULT_MIN_SIZE, show_default=True, help="Leave weights with fewer elements dense.")
@click.option("--keep-first-last", is_flag=True, help="Leave the first and last weight layers dense (often the most sensitive in generators).")
@click.option("--sparse-initializers", is_flag=True, help="Store pruned weights as SparseTensorProto where smaller (onnxruntime densifies them at load).")
@click.option("--keep-initializer-inputs", is_flag=True, help="An IR version 3 graph's initializers that are graph inputs too stay inputs (default: taken as weights, with a note).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def prune(in_path, out_path, sparsity, mode, scope, nm, criterion, exclude, min_size, keep_first_last, sparse_initializers,
          keep_initializer_inputs, as_json):
    """Prune the weights of IN.onnx and write OUT.onnx; print a per-initializer report.

    \b
    Modes:
      unstructured  the smallest |w| become 0 (per layer, or --scope global)
      nm            N:M semi-structured (2:4): along the input-channel / K axis
      channel       remove whole output channels and shrink every consumer
    The report gives shapes, sparsity, parameters removed, and the file's deflated
    size (zeros do not shrink a dense file, but they compress).

    \b
    Examples:
      gencompress prune g.onnx g.pruned.onnx --sparsity 0.5
      gencompress prune g.onnx g.24.onnx --mode nm --nm 2:4 --json
      gencompress prune g.onnx g.small.onnx --mode channel --sparsity 0.5 --criterion l2
    """
    from gencompress.onnx_io import initializer_inputs, lifted_note
    from gencompress.output import echo_json
    from gencompress.passes.prune_report import format_report
    from gencompress.verbs.prune import prune as prune_api

    with initializer_inputs(keep_initializer_inputs) as lifted:
        report = prune_api(
            in_path,
            out_path,
            sparsity=sparsity,
            mode=mode,
            scope=scope,
            nm=nm,
            exclude=exclude,
            min_size=min_size,
            keep_first_last=keep_first_last,
            criterion=criterion,
            sparse_initializers=sparse_initializers,
        )
    if lifted:
        click.echo(f"gencompress prune: note: {lifted_note(lifted, in_path)}", err=True)
    for note in report.get("notes", []):
        click.echo(f"gencompress prune: note: {note}", err=True)
    for warning in report["warnings"]:
        click.echo(f"gencompress prune: warning: {warning}", err=True)
    if as_json:
        echo_json(report)
    else:
        click.echo(format_report(report))
        click.echo(f"wrote {out_path}")
