"""Input specs of a generator and the seeded latent sets drawn from them.

A spec says what a graph input is and how to sample it: float inputs are drawn from
the standard normal prior, integer inputs (class labels) uniformly from [low, high].
The exporter records the specs in the ONNX model's metadata, so calibration and
fidelity checks later sample the same prior without data files.

CLI form: ``NAME=SHAPE[:DTYPE[:LOW..HIGH]]``, e.g. ``z=1x100x1x1``, ``label=1:int64:0..9``.
Dim 0 is the batch axis.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import numpy as np

from gencompress.errors import GencompressError

METADATA_INPUTS = "gencompress.inputs"
METADATA_OUTPUT_RANGE = "gencompress.output_range"
METADATA_SOURCE = "gencompress.source"

DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
}
_SPEC = re.compile(r"^(?P<name>[A-Za-z_][\w.\-/]*)=(?P<shape>\d+(?:x\d+)*)(?::(?P<dtype>\w+))?(?::(?P<range>-?\d+\.\.-?\d+))?$")


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]  # dim 0 is the batch axis
    dtype: str = "float32"
    low: int = 0  # integer inputs: inclusive range of values
    high: int = 1

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("float")

    def sample(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        shape = (batch, *self.shape[1:])
        if self.is_float:
            return rng.standard_normal(shape).astype(DTYPES[self.dtype])
        if self.dtype == "bool":
            return rng.integers(0, 2, size=shape).astype(np.bool_)
        return rng.integers(self.low, self.high + 1, size=shape).astype(DTYPES[self.dtype])


def parse_input_spec(text: str) -> InputSpec:
    """Parse ``NAME=SHAPE[:DTYPE[:LOW..HIGH]]``; a malformed spec is a one-line error."""
    m = _SPEC.match(text.strip())
    if not m:
        raise GencompressError(
            f"--input {text!r}: expected NAME=SHAPE[:DTYPE[:LOW..HIGH]], e.g. z=1x100x1x1 or label=1:int64:0..9"
        )
    shape = tuple(int(d) for d in m["shape"].split("x"))
    if any(d <= 0 for d in shape):
        raise GencompressError(f"--input {text!r}: every dimension must be positive")
    dtype = m["dtype"] or "float32"
    if dtype not in DTYPES:
        raise GencompressError(f"--input {text!r}: unknown dtype {dtype!r} (one of {', '.join(DTYPES)})")
    low, high = 0, 1
    if m["range"]:
        if dtype.startswith("float"):
            raise GencompressError(f"--input {text!r}: a value range applies to integer inputs only")
        low, high = (int(v) for v in m["range"].split(".."))
        if high < low:
            raise GencompressError(f"--input {text!r}: range {low}..{high} is empty")
    return InputSpec(m["name"], shape, dtype, low, high)


def sample_inputs(specs, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` seeded draws from the prior of every input, as one batch."""
    if n <= 0:
        raise GencompressError(f"sample count must be positive, got {n}")
    rng = np.random.default_rng(seed)
    return {s.name: s.sample(n, rng) for s in specs}


def specs_to_json(specs) -> str:
    return json.dumps([asdict(s) for s in specs])


def specs_from_json(text: str) -> list[InputSpec]:
    try:
        specs = [InputSpec(d["name"], tuple(int(n) for n in d["shape"]), d["dtype"], int(d.get("low", 0)), int(d.get("high", 1)))
                 for d in json.loads(text)]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise GencompressError(f"model metadata {METADATA_INPUTS!r} is malformed ({type(e).__name__}: {e}); remove it to read the inputs off the graph") from None
    for spec in specs:
        if spec.dtype not in DTYPES:
            raise GencompressError(f"model metadata {METADATA_INPUTS!r}: input {spec.name!r} has unknown dtype {spec.dtype!r}")
    return specs


_ONNX_TO_NP = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 9: "bool"}


def specs_of_model(model) -> list[InputSpec]:
    """Specs recorded by the exporter, else read off the graph inputs (batch dim → 1)."""
    from gencompress.onnx_io import to_proto

    proto = to_proto(model)
    meta = {p.key: p.value for p in proto.metadata_props}
    if METADATA_INPUTS in meta:
        return specs_from_json(meta[METADATA_INPUTS])
    initializers = {i.name for i in proto.graph.initializer}
    specs = []
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        t = vi.type.tensor_type
        dtype = _ONNX_TO_NP.get(t.elem_type)
        if dtype is None:
            raise GencompressError(f"input {vi.name!r}: element type {t.elem_type} is not supported")
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        specs.append(InputSpec(vi.name, tuple(dims) or (1,), dtype))
    return specs


def output_range_of_model(model) -> float | None:
    """The output's nominal peak-to-peak range recorded by the exporter, if any."""
    from gencompress.onnx_io import to_proto

    meta = {p.key: p.value for p in to_proto(model).metadata_props}
    value = meta.get(METADATA_OUTPUT_RANGE)
    return float(value) if value else None


def load_npz_inputs(path, specs) -> dict[str, np.ndarray]:
    """Real inputs from an ``.npz`` keyed by input name, checked against the specs."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise GencompressError(f"{path}: no such file")
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as e:
        raise GencompressError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(data) - set(by_name))
    if unknown:
        raise GencompressError(f"{path}: unknown input name(s) {', '.join(unknown)}; the model's inputs are {', '.join(by_name)}")
    missing = sorted(set(by_name) - set(data))
    if missing:
        raise GencompressError(f"{path}: missing input(s) {', '.join(missing)}")
    counts = set()
    for name, arr in data.items():
        spec = by_name[name]
        if arr.dtype != np.dtype(DTYPES[spec.dtype]):
            raise GencompressError(f"{path}: input {name!r} has dtype {arr.dtype}, the model wants {spec.dtype}")
        if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != tuple(spec.shape[1:]):
            want = "x".join(["N", *map(str, spec.shape[1:])])
            raise GencompressError(f"{path}: input {name!r} has shape {'x'.join(map(str, arr.shape))}, the model wants {want}")
        if arr.shape[0] == 0:
            raise GencompressError(f"{path}: input {name!r} has no samples")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise GencompressError(f"{path}: input {name!r} contains NaN or Inf")
        counts.add(arr.shape[0])
    if len(counts) > 1:
        raise GencompressError(f"{path}: inputs have different sample counts {sorted(counts)}")
    return data
