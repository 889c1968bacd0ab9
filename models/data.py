"""The zoo's training data: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

Images are upscaled to the generators' 16x16 (bilinear) and scaled to the output range of the
model that learns them: [-1, 1] for the tanh GANs, [0, 1] for the sigmoid VAE. The recurrent VAE
reads the original 8x8 digit as a sequence of 8 rows of 8 pixels in [0, 1].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from gencompress.errors import GencompressError


@lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 8, 8] float32 in [0, 1], labels [N] int64 0..9)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise GencompressError(
            "training data needs scikit-learn (it ships the digits); run `pip install gencompress[train]`"
        ) from None
    d = sk_load_digits()
    images = (d.images / 16.0).astype(np.float32)  # pixel values are 0..16
    return images, d.target.astype(np.int64)


def upscale(images8) -> torch.Tensor:
    """[N, 8, 8] in [0, 1] -> [N, 1, 16, 16] in [0, 1] (bilinear keeps the range)."""
    x = torch.as_tensor(images8, dtype=torch.float32).unsqueeze(1)
    return F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)


def images(kind: str = "tanh") -> torch.Tensor:
    """All digits as [N, 1, 16, 16]: in [-1, 1] for kind "tanh", in [0, 1] for kind "sigmoid"."""
    x = upscale(load_digits()[0])
    if kind == "tanh":
        return x * 2 - 1
    if kind == "sigmoid":
        return x
    raise ValueError(f"kind must be 'tanh' or 'sigmoid', got {kind!r}")


def sequences() -> torch.Tensor:
    """All digits as [N, 8 steps, 8 pixels] in [0, 1]: one row per step."""
    return torch.from_numpy(load_digits()[0].copy())


def labels() -> torch.Tensor:
    """[N] int64 class of every digit, in the same order as images() and sequences()."""
    return torch.from_numpy(load_digits()[1].copy())
