"""The `gencompress sweep` command; the work is in gencompress.sweeps.run."""

from __future__ import annotations

import json
import sys

import click


@click.command()
@click.argument("spec", type=click.Path())
@click.argument("out_dir", type=click.Path(file_okay=True))
@click.option("--address", default=None, help="Join a Ray cluster: 'auto' or HOST:PORT. Default: start a local Ray on this machine.")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def sweep(spec, out_dir, address, num_cpus, as_json):
    """Compress every model of SPEC with every configuration, as Ray tasks; write OUT_DIR.

    OUT_DIR gets trials/<model>/<key>/ (one compress run each), results.json, results.csv and
    report.html (per-model size/speed/PSNR Pareto charts). Rerunning resumes: a trial whose model,
    configuration and tool version are unchanged is not run again. Builds run in parallel;
    timings run after them, one per node (nodes of a cluster need
    --resources '{"gencompress_timing": 1}').

    \b
    Example spec (YAML):
      models: [dcgan, vae, {model: g.onnx, name: mine}]
      configs: {sparsity: [0, 0.5], distill: [0, 500], objective: size}
      options: {samples: 64, batches: [1]}
    \b
    Examples:
      gencompress sweep spec.yaml out/
      gencompress sweep spec.yaml out/ --address auto
    """
    from gencompress.sweeps.run import sweep as run

    summary = run(spec, out_dir, address=address, num_cpus=num_cpus, progress=sys.stderr.isatty(),
                  log=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{summary['done']} of {summary['trials']} trials done ({summary['resumed']} resumed, "
               f"{len(summary['executed'])} run now), {summary['failed']} failed; {summary['results']}")
    if summary["failed"]:
        sys.exit(1)
