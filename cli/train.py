"""`gencompress train`: a thin click layer over gencompress.models.train.train."""

from __future__ import annotations

import click

from gencompress.arguments import SEED_MAX
from gencompress.output import echo_json


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.option("--out", type=click.Path(dir_okay=False), help="Checkpoint to write (.safetensors). Default: the zoo's own.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True, help="Seed for weights, batches and latents.")
@click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps. Default: the model's own (a few minutes on 2 cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train(model, out, seed, steps, as_json):
    """Train zoo MODEL (dcgan, vae, rvae, cgan) on scikit-learn's bundled digits.

    Saves only the exported generator's weights (for the VAEs, the decoder's) as safetensors,
    by default to the zoo checkpoint that `gencompress export MODEL` loads.

    \b
    Example:
      gencompress train dcgan --out /tmp/dcgan.safetensors --seed 1
    """
    from gencompress.models import get_zoo_entry
    from gencompress.models.train import train as run

    get_zoo_entry(model)  # unknown name: a one-line error before importing torch
    result = run(model, out=out, seed=seed, steps=steps, progress=True)
    if as_json:
        echo_json(result)
    else:
        click.echo(f"{model}: {result['steps']} steps in {result['seconds']} s -> {result['checkpoint']} ({result['bytes']} bytes)")
