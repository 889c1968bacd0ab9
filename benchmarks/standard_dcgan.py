"""The standard speed model: the DCGAN generator of Radford et al., built in torch and exported to ONNX.

latent ``z [N, 100, 1, 1]`` -> ConvTranspose 4/1/0 (512) -> four ConvTranspose 4/2/1
(256, 128, 64, 3) with BatchNorm + ReLU between them -> Tanh -> image ``[N, 3, 64, 64]``.

The file records the output's nominal range like the exporter does for zoo models
(``gencompress.output_range`` = "2.0": Tanh output in [-1, 1]), so PSNR uses peak 2.0.

Weights are seeded DCGAN-style draws (conv N(0, 0.02), BatchNorm scale N(1, 0.02)); the
BatchNorm running statistics are then measured on a few seeded latent batches, so every
layer's activations have the scale they would have in a trained generator (timing and int8
calibration depend on it, the picture does not matter).

    python benchmarks/standard_dcgan.py OUT.onnx [--legacy] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys

NZ, NGF, NC = 100, 64, 3
OUTPUT_RANGE = 2.0  # Tanh: [-1, 1]


def build_generator(nz: int = NZ, ngf: int = NGF, nc: int = NC, seed: int = 0):
    """The standard DCGAN generator in eval mode, seeded, with measured BatchNorm statistics."""
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    layers = []
    channels = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
    for i in range(4):
        stride, pad = (1, 0) if i == 0 else (2, 1)
        layers += [
            nn.ConvTranspose2d(channels[i], channels[i + 1], 4, stride, pad, bias=False),
            nn.BatchNorm2d(channels[i + 1]),
            nn.ReLU(True),
        ]
    layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
            m.momentum = None  # cumulative average over the calibration batches below
    generator = net.train()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for _ in range(4):
            generator(torch.randn(32, nz, 1, 1, generator=g))
    return generator.eval()


def input_specs(nz: int = NZ):
    from gencompress.inputs import InputSpec

    return (InputSpec("z", (1, nz, 1, 1)),)


def export_standard_dcgan(out, *, legacy: bool = False, seed: int = 0, **build_options) -> dict:
    """Export the standard DCGAN generator to ``out`` (dynamic batch, parity-checked); the export report."""
    from gencompress.exporter.export import export

    generator = build_generator(seed=seed, **build_options)
    nz = build_options.get("nz", NZ)
    report = export(generator, out, inputs=input_specs(nz), legacy=legacy, batches=(1, 7))
    record_output_range(out, OUTPUT_RANGE)
    report["bytes"] = os.path.getsize(out)
    return report


def record_output_range(path, peak: float) -> None:
    """Set the model metadata ``gencompress.output_range`` (what the exporter writes for zoo models)."""
    from gencompress.inputs import METADATA_OUTPUT_RANGE
    from gencompress.onnx_io import load_model, save_model

    proto = load_model(path)
    value = repr(float(peak))
    entry = next((p for p in proto.metadata_props if p.key == METADATA_OUTPUT_RANGE), None)
    if entry is None:
        proto.metadata_props.add(key=METADATA_OUTPUT_RANGE, value=value)
    else:
        entry.value = value
    save_model(proto, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output .onnx path")
    parser.add_argument("--legacy", action="store_true", help="TorchScript exporter (keeps BatchNormalization nodes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = export_standard_dcgan(args.out, legacy=args.legacy, seed=args.seed)
    print(f"{report['output']}: {report['exporter']} exporter, opset {report['opset']}, {report['bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
