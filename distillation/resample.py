"""ONNX Resize and Pad in torch, exactly as onnxruntime computes them, differentiable.

Both are gathers along one axis at a time: the source indices (and, for linear and cubic
resizing, the weights) of every output position are computed in numpy from the ONNX formulas,
then applied with ``index_select``. That covers every coordinate transformation, nearest
rounding, cubic coefficient and padding mode with one code path, where torch's ``interpolate``
and ``pad`` each cover a few (their nearest is ``asymmetric``+``floor`` only, their reflect pad
needs a batch and channel axis).
"""

from __future__ import annotations

import numpy as np
import torch

from gencompress.errors import GencompressError

COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric")


def _source_coordinates(n_in: int, n_out: int, scale: float, mode: str) -> np.ndarray:
    """Where each output position samples the input (ONNX Resize's coordinate_transformation_mode)."""
    # float32, as onnxruntime computes them: a nearest tie (x.5) must round the same way
    x = np.arange(n_out, dtype=np.float32)
    scale, n_in, n_out = np.float32(scale), np.float32(n_in), np.float32(n_out)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = n_out / (scale * n_in)
        return n_in / 2 * (1 - adjustment) + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(x)
    return x / scale  # asymmetric


def _nearest(coords: np.ndarray, rounding: str, n_in: int) -> np.ndarray:
    if rounding == "floor":
        idx = np.floor(coords)
    elif rounding == "ceil":
        idx = np.ceil(coords)
    elif rounding == "round_prefer_ceil":
        idx = np.floor(coords + 0.5)
    else:  # round_prefer_floor: a tie goes down
        idx = np.ceil(coords - 0.5)
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution weights of the four taps at offsets -1, 0, 1, 2 from floor(x)."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.stack([far(1 + t), near(t), near(1 - t), far(2 - t)], axis=-1)


def _taps(n_in: int, n_out: int, scale: float, attrs: dict) -> tuple[np.ndarray, np.ndarray]:
    """(indices [n_out, taps], weights [n_out, taps]) of one axis."""
    mode = attrs.get("mode", "nearest")
    coords = _source_coordinates(n_in, n_out, scale, attrs.get("coordinate_transformation_mode", "half_pixel"))
    if mode == "nearest":
        return _nearest(coords, attrs.get("nearest_mode", "round_prefer_floor"), n_in)[:, None], np.ones((n_out, 1))
    if mode == "linear":
        coords = np.clip(coords, 0, n_in - 1)  # onnxruntime clamps before interpolating
        base = np.floor(coords)
        t = coords - base
        idx = np.stack([base, base + 1], axis=-1)
        weights = np.stack([1 - t, t], axis=-1)
    else:  # cubic
        base = np.floor(coords)
        t = coords - base
        idx = base[:, None] + np.arange(-1, 3)
        weights = _cubic_weights(t, attrs.get("cubic_coeff_a", -0.75))
        if attrs.get("exclude_outside", 0):
            weights = np.where((idx < 0) | (idx > n_in - 1), 0.0, weights)
            weights = weights / weights.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, n_in - 1).astype(np.int64), weights


def _gather_axis(x: torch.Tensor, axis: int, idx: np.ndarray, weights: np.ndarray | None = None) -> torch.Tensor:
    """``sum_k weights[:, k] * x[..., idx[:, k], ...]`` along ``axis`` (plain gather without weights)."""
    if weights is None or (weights.shape[1] == 1 and np.all(weights == 1)):
        return x.index_select(axis, torch.from_numpy(np.ascontiguousarray(idx[:, 0] if idx.ndim == 2 else idx)))
    shape = [1] * x.dim()
    shape[axis] = idx.shape[0]
    out = None
    for k in range(idx.shape[1]):
        w = torch.from_numpy(weights[:, k].astype(np.float32)).to(x.dtype).reshape(shape)
        term = x.index_select(axis, torch.from_numpy(np.ascontiguousarray(idx[:, k]))) * w
        out = term if out is None else out + term
    return out


def resize(x: torch.Tensor, roi, scales, sizes, attrs: dict) -> torch.Tensor:
    """ONNX Resize (opset 11+; ``roi``/``scales``/``sizes`` as lists or None)."""
    mode = attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise GencompressError(f"Resize mode {mode!r} is not supported by the distillation mirror")
    coord = attrs.get("coordinate_transformation_mode", "half_pixel")
    if coord not in COORDINATE_MODES:
        raise GencompressError(f"Resize coordinate_transformation_mode {coord!r} is not supported by the distillation mirror")
    if attrs.get("antialias", 0) and mode != "nearest":
        raise GencompressError("Resize with antialias is not supported by the distillation mirror")
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch" and sizes:
        raise GencompressError("Resize keep_aspect_ratio_policy other than stretch is not supported by the distillation mirror")
    rank = x.dim()
    axes = attrs.get("axes") or list(range(rank))
    axes = [a + rank if a < 0 else a for a in axes]
    if sizes:
        if len(sizes) != len(axes):
            raise GencompressError(f"Resize: {len(sizes)} sizes for {len(axes)} axes")
        plan = [(ax, int(s), np.float32(s) / np.float32(x.shape[ax])) for ax, s in zip(axes, sizes)]
    else:
        if not scales or len(scales) != len(axes):
            raise GencompressError("Resize needs scales or sizes, one per axis")
        plan = [(ax, int(np.floor(np.float32(x.shape[ax]) * np.float32(s))), np.float32(s)) for ax, s in zip(axes, scales)]
    for ax, n_out, scale in plan:
        n_in = x.shape[ax]
        if n_out == n_in and scale == 1.0:
            continue
        idx, weights = _taps(n_in, n_out, scale, attrs)
        x = _gather_axis(x, ax, idx, weights)
    return x


def _pad_indices(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of every position of one padded axis (before/after >= 0)."""
    pos = np.arange(-before, n + after)
    if mode == "edge":
        return np.clip(pos, 0, n - 1)
    if mode == "wrap":
        return pos % n
    if n == 1:  # reflect on a single value repeats it
        return np.zeros_like(pos)
    period = 2 * (n - 1)
    pos = np.abs(pos) % period
    return np.where(pos >= n, period - pos, pos)


def pad(x: torch.Tensor, pads: list[int], value, mode: str, axes=None) -> torch.Tensor:
    """ONNX Pad: ``pads`` = [begin of each axis..., end of each axis...]; negative pads crop."""
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise GencompressError(f"Pad mode {mode!r} is not supported by the distillation mirror")
    rank = x.dim()
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    if len(pads) != 2 * len(axes):
        raise GencompressError(f"Pad: {len(pads)} pads for {len(axes)} axes")
    for i, ax in enumerate(axes):
        begin, end = pads[i], pads[i + len(axes)]
        if begin < 0 or end < 0:  # crop first
            start, stop = max(0, -begin), x.shape[ax] - max(0, -end)
            x = x.narrow(ax, start, max(0, stop - start))
            begin, end = max(0, begin), max(0, end)
        if not begin and not end:
            continue
        if mode == "constant":
            spec = [0] * (2 * (rank - ax))
            spec[-2], spec[-1] = begin, end
            x = torch.nn.functional.pad(x, spec, value=float(value) if value is not None else 0.0)
        else:
            if mode == "reflect" and (begin >= x.shape[ax] or end >= x.shape[ax]):
                raise GencompressError(f"Pad reflect of {max(begin, end)} on an axis of {x.shape[ax]}: the pad must be smaller than the axis")
            x = x.index_select(ax, torch.from_numpy(_pad_indices(x.shape[ax], begin, end, mode)))
    return x
