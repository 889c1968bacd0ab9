"""Small instances of the generator families users bring (untrained, seeded weights).

They are not zoo models (no checkpoints, no training): each is the smallest module that has the
structure that matters to a compressor, for tests and benchmarks. Each class carries
``gencompress_inputs``, so ``gencompress export gencompress.models.families:NAME out.onnx`` works.

- ``EqualizedLRStack``: weights computed in the graph as ``weight * scale`` (StyleGAN's
  equalized learning rate), the constant-folding policy's test.
- ``ModulatedConvFused`` / ``ModulatedConvNonFused``: StyleGAN2's modulated conv, with per-sample
  weights through a grouped conv whose groups = batch (the batch is fixed at export: ``--batch-size``),
  or modulating the activations and demodulating the output (the conv weight is read twice).
- ``LSTMDecoder``: an LSTM with a zero initial state (a batch-sized ConstantOfShape).
- ``UNet``: strided Conv down, ConvTranspose up, Concat skips.
- ``InstanceNormResNet``: residual blocks with InstanceNorm (style transfer, CycleGAN).
- ``AttentionGenerator``: a transformer block over latent tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gencompress.inputs import InputSpec

SEED = 0


def _seeded(cls):
    """Build every family with the same seeded weights, whatever the caller's RNG state."""
    init = cls.__init__

    def __init__(self, *args, **kwargs):
        with torch.random.fork_rng():
            torch.manual_seed(SEED)
            init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


class EqualizedConv(nn.Module):
    """Conv whose weight is stored unscaled and multiplied by 1/sqrt(fan_in) on every forward."""

    def __init__(self, c_in: int, c_out: int, k: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = 1.0 / math.sqrt(c_in * k * k)
        self.pad = k // 2

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


class EqualizedLinear(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = 1.0 / math.sqrt(c_in)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


@_seeded
class EqualizedLRStack(nn.Module):
    """latent [N, 32] -> image [N, 3, 16, 16] in [-1, 1], every weight scaled at run time."""

    gencompress_inputs = (InputSpec("z", (1, 32)),)
    output_range = 2.0

    def __init__(self, latent: int = 32, width: int = 64):
        super().__init__()
        self.width = width
        self.fc = EqualizedLinear(latent, width * 4 * 4)
        self.convs = nn.ModuleList([EqualizedConv(width, width) for _ in range(4)])
        self.to_rgb = EqualizedConv(width, 3, 1)

    def forward(self, z):
        x = F.leaky_relu(self.fc(z), 0.2).reshape(-1, self.width, 4, 4)
        for i, conv in enumerate(self.convs):
            if i % 2 == 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = F.leaky_relu(conv(x), 0.2)
        return torch.tanh(self.to_rgb(x))


class _Modulated(nn.Module):
    """Shared parts of StyleGAN2's synthesis layers: mapping, learned constant, weights, to_rgb."""

    def __init__(self, latent: int = 32, width: int = 64, layers: int = 3):
        super().__init__()
        self.width = width
        self.mapping = nn.Sequential(nn.Linear(latent, width), nn.LeakyReLU(0.2), nn.Linear(width, width))
        self.const = nn.Parameter(torch.randn(1, width, 4, 4))
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(width, width, 3, 3) / math.sqrt(width * 9)) for _ in range(layers)])
        self.affines = nn.ModuleList([nn.Linear(width, width) for _ in range(layers)])
        self.to_rgb = nn.Conv2d(width, 3, 1)

    def styles(self, z, i):
        return self.affines[i](self.mapping(z)) + 1.0  # around 1, as StyleGAN2's bias init gives


@_seeded
class ModulatedConvFused(_Modulated):
    """StyleGAN2 modulated conv, fused form: per-sample weights, one grouped conv with groups = batch.

    The batch is part of the graph (the grouped conv's ``group``): export with a fixed batch."""

    gencompress_inputs = (InputSpec("z", (2, 32)),)
    gencompress_batch_size = 2  # the exporter keeps dim 0 fixed at this size
    output_range = 2.0

    def forward(self, z):
        batch = z.shape[0]
        x = self.const.expand(batch, -1, -1, -1)
        for i, weight in enumerate(self.weights):
            s = self.styles(z, i)  # [B, C_in]
            w = weight[None] * s[:, None, :, None, None]  # [B, C_out, C_in, k, k]
            w = w * torch.rsqrt((w * w).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
            x = F.interpolate(x, scale_factor=2.0, mode="nearest") if i == 1 else x
            h, wd = x.shape[2], x.shape[3]
            x = F.conv2d(x.reshape(1, batch * self.width, h, wd), w.reshape(batch * self.width, self.width, 3, 3), padding=1, groups=batch)
            x = F.leaky_relu(x.reshape(batch, self.width, h, wd), 0.2)
        return torch.tanh(self.to_rgb(x))


@_seeded
class ModulatedConvNonFused(_Modulated):
    """StyleGAN2 modulated conv, non-fused form: scale the activations by the style, convolve with
    the shared weight, scale the output by the demodulation computed from the same weight."""

    gencompress_inputs = (InputSpec("z", (1, 32)),)
    output_range = 2.0

    def forward(self, z):
        x = self.const.expand(z.shape[0], -1, -1, -1)
        for i, weight in enumerate(self.weights):
            s = self.styles(z, i)
            demod = torch.rsqrt((weight[None] * s[:, None, :, None, None]).square().sum(dim=(2, 3, 4)) + 1e-8)
            x = F.interpolate(x, scale_factor=2.0, mode="nearest") if i == 1 else x
            x = F.conv2d(x * s[:, :, None, None], weight, padding=1) * demod[:, :, None, None]
            x = F.leaky_relu(x, 0.2)
        return torch.tanh(self.to_rgb(x))


@_seeded
class LSTMDecoder(nn.Module):
    """latent [N, 16] -> sequence [N, 8, 16] in [0, 1]; the LSTM starts from a zero state."""

    gencompress_inputs = (InputSpec("z", (1, 16)),)
    output_range = 1.0

    def __init__(self, latent: int = 16, hidden: int = 96, features: int = 16, steps: int = 8):
        super().__init__()
        self.steps, self.hidden = steps, hidden
        self.rnn = nn.LSTM(latent, hidden, batch_first=True)
        self.out = nn.Linear(hidden, features)

    def forward(self, z):
        x = z.unsqueeze(1).expand(-1, self.steps, -1)
        zeros = z.new_zeros((1, z.shape[0], self.hidden))  # batch-sized: a ConstantOfShape without a value
        y, _ = self.rnn(x, (zeros, zeros))
        return torch.sigmoid(self.out(y))


@_seeded
class UNet(nn.Module):
    """image [N, 3, 16, 16] -> image [N, 3, 16, 16] in [-1, 1] (pix2pix-style, ConvTranspose up, skips)."""

    gencompress_inputs = (InputSpec("image", (1, 3, 16, 16)),)
    output_range = 2.0

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.down1 = nn.Conv2d(3, w, 4, 2, 1)  # 8
        self.down2 = nn.Conv2d(w, 2 * w, 4, 2, 1)  # 4
        self.down3 = nn.Conv2d(2 * w, 4 * w, 4, 2, 1)  # 2
        self.up3 = nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1)  # 4
        self.up2 = nn.ConvTranspose2d(4 * w, w, 4, 2, 1)  # 8
        self.up1 = nn.ConvTranspose2d(2 * w, 3, 4, 2, 1)  # 16

    def forward(self, image):
        d1 = F.leaky_relu(self.down1(image), 0.2)
        d2 = F.leaky_relu(self.down2(d1), 0.2)
        d3 = F.leaky_relu(self.down3(d2), 0.2)
        u3 = F.relu(self.up3(d3))
        u2 = F.relu(self.up2(torch.cat([u3, d2], 1)))
        return torch.tanh(self.up1(torch.cat([u2, d1], 1)))


@_seeded
class InstanceNormResNet(nn.Module):
    """image [N, 3, 16, 16] -> image [N, 3, 16, 16] in [-1, 1] (CycleGAN / style-transfer style)."""

    gencompress_inputs = (InputSpec("image", (1, 3, 16, 16)),)
    output_range = 2.0

    def __init__(self, width: int = 48, blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.InstanceNorm2d(width, affine=True), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width, affine=True), nn.ReLU(),
                nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width, affine=True),
            )
            for _ in range(blocks)
        )
        self.head = nn.Conv2d(width, 3, 3, 1, 1)

    def forward(self, image):
        x = self.stem(image)
        for block in self.blocks:
            x = x + block(x)
        return torch.tanh(self.head(x))


@_seeded
class AttentionGenerator(nn.Module):
    """latent [N, 32] -> 16 tokens of 48 values in [-1, 1] through one transformer block."""

    gencompress_inputs = (InputSpec("z", (1, 32)),)
    output_range = 2.0

    def __init__(self, latent: int = 32, dim: int = 64, tokens: int = 16, heads: int = 4, out: int = 48):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.embed = nn.Linear(latent, tokens * dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, out)

    def forward(self, z):
        x = self.embed(z).reshape(-1, self.tokens, self.dim)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return torch.tanh(self.head(x))


# name -> (class, int8 size bound relative to float: 0.30, or 0.55 where attention/norm layers dominate)
FAMILIES: dict[str, tuple[type, float]] = {
    "equalized_lr": (EqualizedLRStack, 0.30),
    "stylegan2_fused": (ModulatedConvFused, 0.45),
    "stylegan2_nonfused": (ModulatedConvNonFused, 0.45),
    "lstm_decoder": (LSTMDecoder, 0.30),
    "unet": (UNet, 0.30),
    "instancenorm_resnet": (InstanceNormResNet, 0.55),
    "attention": (AttentionGenerator, 0.55),
}
