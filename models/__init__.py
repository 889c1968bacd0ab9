"""The zoo: small generators with trained weights, trained on scikit-learn's handwritten digits.

Each entry says how to build the exported generator (a torch ``nn.Module`` in eval mode),
which inputs it takes (``InputSpec``: the latent prior the checks sample from), what its
outputs are called, their nominal range, and where its committed checkpoint lives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gencompress.errors import GencompressError
from gencompress.inputs import InputSpec

CHECKPOINTS = Path(__file__).parent / "checkpoints"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    build: Callable[..., object]  # (**options) -> generator nn.Module
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    output_range: float  # nominal peak-to-peak of the output: 2.0 for tanh, 1.0 for sigmoid
    options: dict = field(default_factory=dict)  # architecture options of the shipped checkpoint

    @property
    def checkpoint(self) -> Path:
        return CHECKPOINTS / f"{self.name}.safetensors"

    def generator(self, load_weights: bool = True):
        """The generator in eval mode, with the shipped trained weights unless told otherwise."""
        module = self.build(**self.options)
        if load_weights:
            from gencompress.checkpoint import load_checkpoint_into

            if not self.checkpoint.exists():
                raise GencompressError(
                    f"zoo model {self.name!r} has no checkpoint at {self.checkpoint}; run `gencompress train {self.name}`"
                )
            load_checkpoint_into(module, self.checkpoint)
        return module.eval()


def _dcgan(**kw):
    from gencompress.models.dcgan import DCGANGenerator

    return DCGANGenerator(**kw)


def _vae(**kw):
    from gencompress.models.vae import VAE

    return VAE(**kw).decoder


def _rvae(**kw):
    from gencompress.models.rvae import RecurrentVAE

    return RecurrentVAE(**kw).decoder


def _cgan(**kw):
    from gencompress.models.cgan import ConditionalGenerator

    return ConditionalGenerator(**kw)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "dcgan",
            "DCGAN generator: latent 100x1x1 -> ConvTranspose/BatchNorm/ReLU stack -> Tanh, 1x16x16 digits",
            _dcgan,
            (InputSpec("z", (1, 100, 1, 1)),),
            ("image",),
            2.0,
            {"nz": 100, "ngf": 32},
        ),
        ZooEntry(
            "vae",
            "Convolutional VAE decoder: latent 16 -> Linear -> ConvTranspose stack -> Sigmoid, 1x16x16 digits",
            _vae,
            (InputSpec("z", (1, 16)),),
            ("image",),
            1.0,
            {"latent": 16},
        ),
        ZooEntry(
            "rvae",
            "Recurrent VAE decoder (GRU): latent 16 -> 8-step sequence of 8-pixel digit rows, Sigmoid",
            _rvae,
            (InputSpec("z", (1, 16)),),
            ("sequence",),
            1.0,
            {"latent": 16, "hidden": 64, "cell": "gru"},
        ),
        ZooEntry(
            "cgan",
            "Conditional generator: latent 100 + int64 class label 0..9 -> 1x16x16 digit of that class, Tanh",
            _cgan,
            (InputSpec("z", (1, 100)), InputSpec("label", (1,), "int64", 0, 9)),
            ("image",),
            2.0,
            {"nz": 100, "ngf": 32, "classes": 10},
        ),
    ]
}


def get_zoo_entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise GencompressError(f"unknown zoo model {name!r}; the zoo has {', '.join(ZOO)}") from None
