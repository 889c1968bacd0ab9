"""Batches of input samples: what size a model fixes, and how a sample set is cut into runs."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import onnx

from gencompress.errors import GencompressError


def fixed_batch(model) -> int | None:
    """The batch size a model's inputs fix: the number at dim 0 of the inputs that have one (all the
    same), or None when every batch axis is dynamic. One input fixing it is enough: the model then
    runs no other batch size (e.g. a latent ``[1, 100]`` beside a label ``[N]``)."""
    if not isinstance(model, onnx.ModelProto):  # an onnx_ir model: read its inputs, no serialization
        sizes = {
            int(v.shape[0]) for v in model.graph.inputs
            if v.shape is not None and v.shape.rank() and isinstance(v.shape[0], int) and v.shape[0] > 0 and v.name not in model.graph.initializers
        }
        return sizes.pop() if len(sizes) == 1 else None
    proto = model
    initializers = {i.name for i in proto.graph.initializer}
    sizes = set()
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            sizes.add(int(dims[0].dim_value))
    return sizes.pop() if len(sizes) == 1 else None


def batches(feeds: Mapping[str, np.ndarray], batch_size: int, *, exact: bool = False) -> Iterable[dict[str, np.ndarray]]:
    """Consecutive batches of ``feeds``; with ``exact`` only full batches (a fixed-batch model)."""
    n = len(next(iter(feeds.values())))
    if exact and n < batch_size:
        raise GencompressError(f"the model takes batches of exactly {batch_size}; give at least {batch_size} samples")
    stop = n - n % batch_size if exact else n
    for start in range(0, stop, batch_size):
        yield {k: v[start : start + batch_size] for k, v in feeds.items()}


def num_samples(feeds: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))

