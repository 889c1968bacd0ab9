"""Small Conv-only generators of five common families, for int8 speed and placement work.

Not trained and not part of the zoo: seeded weights, with BatchNorm statistics measured on seeded
inputs (as ``benchmarks/standard_dcgan.py`` does) so every layer's activations have the scale a
trained network's would. What matters is the structure — the ops onnxruntime sees — not the picture:

``rrdb``   super-resolution net of residual-in-residual dense blocks (ESRGAN-like): Conv →
           RRDB × n (three dense blocks each: five 3×3 Convs over a growing Concat of the
           block's input and earlier outputs, LeakyReLU 0.2, scaled residual ``x + 0.2·y``),
           trunk Conv + Add → upsampler (nearest Upsample ×2 → Conv → LeakyReLU) → Conv → Conv.
``gan``    GAN generator: Linear → reshape → (Upsample ×2 → Conv 3×3 → BatchNorm → LeakyReLU) ×2
           → Conv → Tanh.
``style``  style-transfer net (Johnson et al.-like): Conv 9×9 / stride-2 Convs with InstanceNorm
           + ReLU → residual blocks (Conv IN ReLU Conv IN, + x) → (Upsample ×2 → Conv → IN →
           ReLU) ×2 → Conv 9×9 → Tanh.
``srgan``  SRGAN's generator (SRResNet): Conv 9×9 3→nf + PReLU → residual blocks (Conv 3×3 → BN →
           PReLU → Conv 3×3 → BN, + x) → Conv 3×3 → BN, + the long skip → (Conv nf→4·nf →
           PixelShuffle 2 → PReLU) ×2 → Conv 9×9 nf→3; image [N, 3, s, s] → [N, 3, 4s, 4s].
``espcn``  ESPCN super-resolution (sub-pixel convolution; the structure of PyTorch's
           super-resolution example that onnxruntime's tutorials export): Conv 5×5 1→64 → ReLU →
           Conv 3×3 64→64 → ReLU → Conv 3×3 64→32 → ReLU → Conv 3×3 32→r² → PixelShuffle r; the
           luminance channel [N, 1, s, s] → [N, 1, rs, rs], r = 3.

``build(name, **size)`` gives the module (eval mode, with ``gencompress_inputs``);
``exporter/families.export_family(name, out, **size)`` exports it with gencompress's exporter and records the
nominal output range (2.0 for the Tanh outputs; the super-resolution output has none).
``SIZES`` holds the benchmark sizes (64 channels at 32×32–64×64) and ``TINY`` test sizes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gencompress.inputs import InputSpec

FAMILIES = ("rrdb", "gan", "style", "srgan", "espcn")
# benchmark sizes: big enough that int8 speed matters (64 channels at 32x32 - 64x64)
SIZES = {
    "rrdb": {"nf": 64, "gc": 32, "blocks": 1, "size": 32},
    "gan": {"nz": 100, "ngf": 64, "size": 32},
    "style": {"base": 16, "blocks": 3, "size": 64},
    "srgan": {"nf": 64, "blocks": 16, "size": 24},  # SRResNet's 16 blocks; 24 -> 96 px
    "espcn": {"nf": 64, "upscale": 3, "size": 64},  # 64 -> 192 px
}
# test sizes: the same structure, a few milliseconds per batch
TINY = {
    "rrdb": {"nf": 16, "gc": 8, "blocks": 1, "size": 8},
    "gan": {"nz": 16, "ngf": 16, "size": 16},
    "style": {"base": 8, "blocks": 1, "size": 16},
    "srgan": {"nf": 16, "blocks": 1, "size": 4},  # nf 16: only the last Conv has few output channels, as at full size
    "espcn": {"nf": 16, "upscale": 3, "size": 8},
}
OUTPUT_RANGE = {"rrdb": None, "gan": 2.0, "style": 2.0, "srgan": None, "espcn": None}


# ---- super-resolution: residual-in-residual dense blocks ---------------------------------------


class DenseBlock(nn.Module):
    """Five 3×3 Convs, each reading the Concat of the block input and all earlier outputs."""

    def __init__(self, nf: int, gc: int, scale: float = 0.2):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(nf + i * gc, gc if i < 4 else nf, 3, 1, 1) for i in range(5))
        self.act = nn.LeakyReLU(0.2)
        self.scale = scale

    def forward(self, x):
        features = [x]
        for conv in self.convs[:-1]:
            features.append(self.act(conv(torch.cat(features, 1))))
        return x + self.scale * self.convs[-1](torch.cat(features, 1))


class RRDB(nn.Module):
    def __init__(self, nf: int, gc: int, scale: float = 0.2):
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(nf, gc, scale) for _ in range(3)))
        self.scale = scale

    def forward(self, x):
        return x + self.scale * self.blocks(x)


class RRDBNet(nn.Module):
    """image [N, 3, s, s] -> image [N, 3, 2s, 2s]."""

    def __init__(self, nf: int = 64, gc: int = 32, blocks: int = 1, size: int = 32, channels: int = 3):
        super().__init__()
        self.first = nn.Conv2d(channels, nf, 3, 1, 1)
        self.trunk = nn.Sequential(*(RRDB(nf, gc) for _ in range(blocks)))
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.up_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.hr_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.last = nn.Conv2d(nf, channels, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2)
        self.gencompress_inputs = (InputSpec("image", (1, channels, size, size)),)

    def forward(self, x):
        feat = self.first(x)
        feat = feat + self.trunk_conv(self.trunk(feat))
        feat = self.act(self.up_conv(self.up(feat)))
        return self.last(self.act(self.hr_conv(feat)))


# ---- GAN generator: Linear -> (Upsample -> Conv -> BatchNorm -> LeakyReLU) x2 -> Conv -> Tanh ---


class UpsampleGenerator(nn.Module):
    """latent [N, nz] -> image [N, 3, size, size] in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, size: int = 32, channels: int = 3):
        super().__init__()
        self.init = size // 4
        self.ngf = ngf
        self.linear = nn.Linear(nz, 2 * ngf * self.init * self.init)
        self.net = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, 1, 1),
            nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, 1, 1),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf, channels, 3, 1, 1),
            nn.Tanh(),
        )
        self.gencompress_inputs = (InputSpec("z", (1, nz)),)

    def forward(self, z):
        x = self.linear(z).view(z.shape[0], 2 * self.ngf, self.init, self.init)
        return self.net(x)


# ---- style transfer: residual blocks with InstanceNorm ----------------------------------------


def _conv_in_relu(cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2), nn.InstanceNorm2d(cout, affine=True)]
    return layers + [nn.ReLU()] if relu else layers


class ResidualBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_in_relu(c, c, 3), *_conv_in_relu(c, c, 3, relu=False))

    def forward(self, x):
        return x + self.body(x)


class StyleTransferNet(nn.Module):
    """image [N, 3, s, s] -> image [N, 3, s, s] in [-1, 1]."""

    def __init__(self, base: int = 16, blocks: int = 3, size: int = 64, channels: int = 3):
        super().__init__()
        b = base
        self.net = nn.Sequential(
            *_conv_in_relu(channels, b, 9),
            *_conv_in_relu(b, 2 * b, 3, 2),
            *_conv_in_relu(2 * b, 4 * b, 3, 2),
            *(ResidualBlock(4 * b) for _ in range(blocks)),
            nn.Upsample(scale_factor=2),
            *_conv_in_relu(4 * b, 2 * b, 3),
            nn.Upsample(scale_factor=2),
            *_conv_in_relu(2 * b, b, 3),
            nn.Conv2d(b, channels, 9, 1, 4),
            nn.Tanh(),
        )
        self.gencompress_inputs = (InputSpec("image", (1, channels, size, size)),)

    def forward(self, x):
        return self.net(x)


# ---- SRGAN's generator (SRResNet): residual blocks with BatchNorm + PReLU, pixel-shuffle upsampling --


class SRResidualBlock(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(nf, nf, 3, 1, 1), nn.BatchNorm2d(nf), nn.PReLU(nf), nn.Conv2d(nf, nf, 3, 1, 1), nn.BatchNorm2d(nf))

    def forward(self, x):
        return x + self.body(x)


class SRResNet(nn.Module):
    """image [N, 3, s, s] -> image [N, 3, 4s, 4s]."""

    def __init__(self, nf: int = 64, blocks: int = 16, size: int = 24, channels: int = 3):
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(channels, nf, 9, 1, 4), nn.PReLU(nf))
        self.trunk = nn.Sequential(*(SRResidualBlock(nf) for _ in range(blocks)))
        self.trunk_end = nn.Sequential(nn.Conv2d(nf, nf, 3, 1, 1), nn.BatchNorm2d(nf))
        self.up = nn.Sequential(*(m for _ in range(2) for m in (nn.Conv2d(nf, 4 * nf, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU(nf))))
        self.last = nn.Conv2d(nf, channels, 9, 1, 4)
        self.gencompress_inputs = (InputSpec("image", (1, channels, size, size)),)

    def forward(self, x):
        feat = self.first(x)
        feat = feat + self.trunk_end(self.trunk(feat))
        return self.last(self.up(feat))


class ESPCN(nn.Module):
    """luminance [N, 1, s, s] -> [N, 1, rs, rs]."""

    def __init__(self, nf: int = 64, upscale: int = 3, size: int = 64, channels: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, nf, 5, 1, 2), nn.ReLU(), nn.Conv2d(nf, nf, 3, 1, 1), nn.ReLU(),
                                  nn.Conv2d(nf, nf // 2, 3, 1, 1), nn.ReLU(), nn.Conv2d(nf // 2, channels * upscale ** 2, 3, 1, 1),
                                  nn.PixelShuffle(upscale))
        self.gencompress_inputs = (InputSpec("image", (1, channels, size, size)),)

    def forward(self, x):
        return self.body(x)


# ---- building and exporting -------------------------------------------------------------------

_CLASSES = {"rrdb": RRDBNet, "gan": UpsampleGenerator, "style": StyleTransferNet, "srgan": SRResNet, "espcn": ESPCN}


def build(name: str, seed: int = 0, **size) -> nn.Module:
    """The family's network in eval mode: seeded weights (Conv/Linear N(0, σ) with σ keeping the
    activation scale steady, as He init does), affine norm parameters N(1, 0.02) / 0, BatchNorm
    statistics measured on four seeded input batches."""
    torch.manual_seed(seed)
    net = _CLASSES[name](**{**SIZES[name], **size})
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the batches below
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0.2)
            if name == "rrdb":
                m.weight.data *= 0.5  # ESRGAN scales its dense-block init down; keeps the residual sums tame
            nn.init.normal_(m.bias, 0.0, 0.01)
    if any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
        net.train()
        spec = net.gencompress_inputs[0]
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for _ in range(4):
                net(torch.randn(32, *spec.shape[1:], generator=g))
    return net.eval()
