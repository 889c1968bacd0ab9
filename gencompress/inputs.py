"""Input specs of a generator, the priors they are drawn from, and the seeded latent sets.

A spec says what a graph input is and how to sample it (its *prior*):

    normal           float inputs, standard normal (the default for floats)
    uniform:LO..HI   float inputs, uniform in [LO, HI)
    onehot:K         float one-hot vectors over the last axis (of size K), e.g. class labels
    LO..HI           integer inputs, uniform integers in [LO, HI] (the default for ints: 0..1)
    images:LO..HI    float image inputs [N, 1 or 3, H, W]: natural photographs (``gencompress.images``),
                     pixels mapped to [LO, HI]; the default of an image-shaped input read off a
                     model, in the model's output range ([-1, 1] for a tanh output, else [0, 1])
    data:FILE.npz    rows drawn from real data: FILE.npz holds an array keyed by the input's
                     name (or a single array), shaped N x (the input's shape without dim 0);
                     or data:FOLDER of PNG/JPEG images (image inputs, pixels in [-1, 1])

CLI form: ``NAME=SHAPE[:DTYPE[:PRIOR]]``, e.g. ``z=1x100x1x1``, ``label=1:int64:0..9``,
``y=1x10:float32:onehot:10``, ``t=1:float32:uniform:0..1``, ``x=1x3x64x64:float32:data:imgs.npz``.
Dim 0 is the batch axis. The exporter records the specs in the ONNX model's metadata
(``gencompress.inputs``), so calibration and fidelity checks later draw from the same prior.

Every piece of ``gencompress.*`` metadata the tool reads is validated here, in one place
(``spec_from_dict``, ``output_range_of_model``), and every sampled batch has a memory budget.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

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
MAX_RANK = 16
MAX_DIM = 2**31 - 1
MAX_NAME = 256
MAX_METADATA_CHARS = 1 << 20  # a spec list is a few hundred bytes; a megabyte is hostile
MAX_INPUTS = 1024
# Bytes one sampled batch may take (all inputs together); GENCOMPRESS_SAMPLE_BUDGET_MB overrides.
DEFAULT_SAMPLE_BUDGET_MB = 1024

_SPEC = re.compile(r"^(?P<name>[A-Za-z_][\w.\-/]*)=(?P<shape>\d+(?:x\d+)*)(?::(?P<dtype>\w+))?(?::(?P<prior>.+))?$")
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_UNIFORM = re.compile(rf"^uniform:(?P<lo>{_NUM})\.\.(?P<hi>{_NUM})$")
_INT_RANGE = re.compile(r"^(?P<lo>-?\d+)\.\.(?P<hi>-?\d+)$")
_ONEHOT = re.compile(r"^onehot:(?P<k>\d+)$")
_IMAGES = re.compile(rf"^images:(?P<lo>{_NUM})\.\.(?P<hi>{_NUM})$")
SYNTAX = "NAME=SHAPE[:DTYPE[:PRIOR]]"
PRIOR_HELP = "PRIOR: normal | uniform:LO..HI | onehot:K | images:LO..HI (floats), LO..HI (ints), data:FILE.npz or data:FOLDER"
DATA_FOLDER_RANGE = (-1.0, 1.0)  # pixels of a data:FOLDER prior


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]  # dim 0 is the batch axis
    dtype: str = "float32"
    low: int = 0  # integer inputs: inclusive range of values
    high: int = 1
    prior: str = ""  # "" = the dtype's default (normal for floats, low..high for ints); see module doc
    # False: read off the graph, no range recorded (low..high a guess): real data may leave it
    recorded: bool = field(default=True, compare=False)

    def __post_init__(self):
        _validate(self, f"input {_short(self.name)}")

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("float")

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample (the shape without the batch axis)."""
        return math.prod(self.shape[1:]) * np.dtype(DTYPES[self.dtype]).itemsize

    def describe_prior(self) -> str:
        kind, args = prior_parts(self)
        if kind == "normal":
            return "normal(0, 1)"
        if kind == "uniform":
            return f"uniform({args[0]:g}, {args[1]:g})"
        if kind == "onehot":
            return f"one-hot over {args[0]} classes"
        if kind == "data":
            return f"rows of {args[0]}"
        if kind == "images":
            from gencompress.images import NATURAL_SET

            return f"natural images ({NATURAL_SET}) in [{args[0]:g}, {args[1]:g}]"
        if kind == "bool":
            return "bernoulli(0.5)"
        return f"uniform integers {self.low}..{self.high}"

    def sample(self, batch: int, rng: np.random.Generator, rows: np.ndarray | None = None) -> np.ndarray:
        """``batch`` draws from the prior; ``rows`` (data priors) picks the data rows to use."""
        shape = (batch, *self.shape[1:])
        kind, args = prior_parts(self)
        dtype = DTYPES[self.dtype]
        if kind == "normal":
            return rng.standard_normal(shape).astype(dtype)
        if kind == "uniform":
            return rng.uniform(args[0], args[1], size=shape).astype(dtype)
        if kind == "onehot":
            return np.eye(args[0], dtype=dtype)[rng.integers(0, args[0], size=shape[:-1])]
        if kind == "images":
            from gencompress.images import natural_patches

            return natural_patches(self.shape, batch, rng, *args).astype(dtype, copy=False)
        if kind == "data":
            data = _data_array(args[0], self)
            if rows is None:
                rows = rng.integers(0, len(data), size=batch)
            return data[rows % len(data)].astype(dtype, copy=False)
        if kind == "bool":
            return rng.integers(0, 2, size=shape).astype(np.bool_)
        return rng.integers(self.low, self.high, size=shape, endpoint=True, dtype=np.int64).astype(dtype)


def _short(value, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def prior_parts(spec: InputSpec) -> tuple[str, tuple]:
    """(kind, args) of a validated spec's prior."""
    prior = spec.prior
    if prior.startswith("data:"):
        return "data", (prior[5:],)
    if spec.dtype == "bool":
        return "bool", ()
    if not spec.is_float:
        return "range", ()
    if prior in ("", "normal"):
        return "normal", ()
    if m := _UNIFORM.match(prior):
        return "uniform", (float(m["lo"]), float(m["hi"]))
    if m := _IMAGES.match(prior):
        return "images", (float(m["lo"]), float(m["hi"]))
    m = _ONEHOT.match(prior)
    return "onehot", (int(m["k"]),)


def _validate(spec: InputSpec, where: str) -> None:
    """The one schema of an input spec; errors say ``where`` (the key or flag) and the problem."""
    if not isinstance(spec.name, str) or not spec.name or len(spec.name) > MAX_NAME or "\0" in spec.name:
        raise GencompressError(f"{where}: name must be a non-empty string of at most {MAX_NAME} characters")
    shape = spec.shape
    if not isinstance(shape, tuple) or not shape or len(shape) > MAX_RANK:
        raise GencompressError(f"{where}: shape must list 1 to {MAX_RANK} dimensions")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d <= MAX_DIM:
            raise GencompressError(f"{where}: shape dimensions must be integers in 1..{MAX_DIM}, got {_short(d)}")
    if math.prod(shape[1:]) > MAX_DIM:
        raise GencompressError(f"{where}: one sample of shape {'x'.join(map(str, shape))} has more than {MAX_DIM} elements")
    if not isinstance(spec.dtype, str) or spec.dtype not in DTYPES:
        raise GencompressError(f"{where}: unknown dtype {_short(spec.dtype)} (one of {', '.join(DTYPES)}; string inputs cannot be drawn)")
    for key in ("low", "high"):
        v = getattr(spec, key)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise GencompressError(f"{where}: {key} must be an integer, got {_short(v)}")
    if not isinstance(spec.prior, str) or len(spec.prior) > 4096:
        raise GencompressError(f"{where}: prior must be a short string, got {_short(spec.prior)}")
    prior = spec.prior
    if prior.startswith("data:"):
        if not prior[5:]:
            raise GencompressError(f"{where}: prior data: needs a file, e.g. data:inputs.npz")
        return
    if spec.dtype in ("int32", "int64"):
        info = np.iinfo(DTYPES[spec.dtype])
        if prior:
            raise GencompressError(f"{where}: prior {_short(prior)} applies to float inputs; integer inputs take LO..HI or data:FILE.npz")
        if not info.min <= spec.low < spec.high <= info.max:
            raise GencompressError(f"{where}: integer range {spec.low}..{spec.high} needs LOW < HIGH within {spec.dtype} ({info.min}..{info.max})")
    elif spec.dtype == "bool":
        if prior:
            raise GencompressError(f"{where}: bool inputs are drawn as bernoulli(0.5) or from data:FILE.npz, not {_short(prior)}")
    elif prior not in ("", "normal"):
        if m := _UNIFORM.match(prior):
            lo, hi = float(m["lo"]), float(m["hi"])
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise GencompressError(f"{where}: prior {_short(prior)} needs finite LO < HI")
        elif m := _IMAGES.match(prior):
            from gencompress.images import MIN_SIDE, is_image_shape

            lo, hi = float(m["lo"]), float(m["hi"])
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise GencompressError(f"{where}: prior {_short(prior)} needs finite LO < HI")
            if not is_image_shape(shape):
                raise GencompressError(f"{where}: prior images: needs an image shape N x 1 or 3 x H x W (H, W >= {MIN_SIDE}), "
                                       f"not {'x'.join(map(str, shape))}")
        elif m := _ONEHOT.match(prior):
            k = int(m["k"])
            if k < 1 or shape[-1] != k or len(shape) < 2:
                raise GencompressError(f"{where}: prior onehot:{k} needs a last axis of size {k} (shape {'x'.join(map(str, shape))})")
        else:
            raise GencompressError(f"{where}: unknown prior {_short(prior)} ({PRIOR_HELP})")


def parse_input_spec(text: str) -> InputSpec:
    """Parse ``NAME=SHAPE[:DTYPE[:PRIOR]]``; a malformed spec is a one-line error."""
    if not isinstance(text, str):
        raise GencompressError(f"--input: expected {SYNTAX} text, got {type(text).__name__}")
    where = f"--input {_short(text.strip())}"
    m = _SPEC.match(text.strip())
    if not m:
        raise GencompressError(f"{where}: expected {SYNTAX}, e.g. z=1x100x1x1 or label=1:int64:0..9 ({PRIOR_HELP})")
    try:
        shape = tuple(int(d) for d in m["shape"].split("x"))
    except ValueError:
        raise GencompressError(f"{where}: bad shape") from None
    if any(d <= 0 for d in shape):
        raise GencompressError(f"{where}: every dimension must be positive")
    dtype = m["dtype"] or "float32"
    if dtype not in DTYPES:
        raise GencompressError(f"{where}: unknown dtype {dtype!r} (one of {', '.join(DTYPES)})")
    prior = m["prior"] or ""
    low, high = 0, 1
    if r := _INT_RANGE.match(prior):
        if dtype.startswith("float"):
            raise GencompressError(f"{where}: LO..HI applies to integer inputs; floats take uniform:LO..HI")
        low, high, prior = int(r["lo"]), int(r["hi"]), ""
        if high < low:
            raise GencompressError(f"{where}: range {low}..{high} is empty")
    spec = _build(where, name=m["name"], shape=shape, dtype=dtype, low=low, high=high, prior=prior)
    if spec.prior.startswith("data:"):
        _data_array(spec.prior[5:], spec)  # a data file that does not fit fails now, not at calibration
    return spec


def _build(where: str, **fields) -> InputSpec:
    """An InputSpec whose validation errors name ``where`` (a flag or a metadata key)."""
    try:
        return InputSpec(**fields)
    except GencompressError as e:
        message = str(e)
        prefix = f"input {_short(fields.get('name'))}"
        if message.startswith(prefix):
            message = f"{where}: {message[len(prefix) + 2:]}" if where.startswith("--input") else f"{where}, {message}"
        raise GencompressError(message) from None


def sample_budget_bytes() -> int:
    text = os.environ.get("GENCOMPRESS_SAMPLE_BUDGET_MB", "")
    try:
        mb = float(text) if text else DEFAULT_SAMPLE_BUDGET_MB
    except ValueError:
        mb = DEFAULT_SAMPLE_BUDGET_MB
    return int(mb * 2**20)


def check_batch_budget(specs, n: int, what: str = "samples") -> None:
    """Refuse, with the numbers, a batch whose inputs would not fit the sampling budget."""
    per_sample = sum(s.sample_bytes for s in specs)
    need = per_sample * n
    budget = sample_budget_bytes()
    if need > budget:
        raise GencompressError(
            f"{n} {what} of this model's inputs need {need / 2**20:,.0f} MiB ({per_sample:,} bytes each), above the "
            f"{budget / 2**20:,.0f} MiB budget; use fewer (at most {max(budget // max(per_sample, 1), 0):,}) "
            "or raise GENCOMPRESS_SAMPLE_BUDGET_MB"
        )


def sample_inputs(specs, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` seeded draws from the prior of every input, as one batch.

    Inputs drawn from the same data file take the same rows (paired data stays paired).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise GencompressError(f"sample count must be a positive integer, got {_short(n)}")
    check_batch_budget(specs, int(n))
    rng = np.random.default_rng(seed)
    rows_of_file: dict[str, np.ndarray] = {}
    out = {}
    for s in specs:
        rows = None
        if s.prior.startswith("data:"):
            file = s.prior[5:]
            if file not in rows_of_file:
                rows_of_file[file] = rng.integers(0, len(_data_array(file, s)), size=int(n))
            rows = rows_of_file[file]
        out[s.name] = s.sample(int(n), rng, rows)
    return out


def _data_array(file: str, spec: InputSpec) -> np.ndarray:
    path = Path(file)
    from gencompress.onnx_io import regular_file

    if path.is_dir():
        return _image_rows(path, spec, *DATA_FOLDER_RANGE)

    size = regular_file(path, f"data prior of input {spec.name!r}")
    return _read_data(str(path.resolve()), size, os.path.getmtime(path), spec.name, spec.shape[1:], spec.dtype)


@lru_cache(maxsize=8)
def _read_data(path: str, size: int, mtime: float, name: str, sample_shape: tuple, dtype: str) -> np.ndarray:
    where = f"{path} (data prior of input {name!r})"
    if size > sample_budget_bytes():
        raise GencompressError(f"{where}: {size / 2**20:,.0f} MiB, above the {sample_budget_bytes() / 2**20:,.0f} MiB sampling budget (GENCOMPRESS_SAMPLE_BUDGET_MB)")
    arrays = read_npz(path, where)
    keys = list(arrays)
    key = name if name in keys else (keys[0] if len(keys) == 1 else None)
    if key is None:
        raise GencompressError(f"{where}: holds {', '.join(keys[:5]) or 'no arrays'}; expected an array named {name!r} or a single array")
    arr = arrays[key]
    if arr.ndim != 1 + len(sample_shape) or tuple(arr.shape[1:]) != tuple(sample_shape) or arr.shape[0] == 0:
        raise GencompressError(f"{where}: array of shape {'x'.join(map(str, arr.shape))}, expected N x {'x'.join(map(str, sample_shape)) or '(scalar)'} with N >= 1")
    if arr.dtype.kind not in "fiub":
        raise GencompressError(f"{where}: array of dtype {arr.dtype}, expected numbers")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise GencompressError(f"{where}: contains NaN or Inf")
    return arr.astype(DTYPES[dtype], copy=False)


def _image_rows(folder: Path, spec: InputSpec, low: float, high: float) -> np.ndarray:
    from gencompress.images import MIN_SIDE, is_image_shape, load_image_folder

    if not spec.is_float or not is_image_shape(spec.shape):
        raise GencompressError(f"{folder}: a folder of images feeds image inputs (N x 1 or 3 x H x W, H, W >= {MIN_SIDE}); "
                               f"input {spec.name!r} is {spec.dtype} {'x'.join(map(str, spec.shape))}")
    return load_image_folder(folder, spec.shape, low, high, sample_budget_bytes(), spec.name).astype(DTYPES[spec.dtype], copy=False)


def image_range(spec: InputSpec, output_range: float | None = None) -> tuple[float, float]:
    """The pixel range an image input takes: its images: prior's, else the output's ([-1, 1] for a
    peak-to-peak range of 2, as tanh generators take and give, else [0, 1])."""
    kind, args = prior_parts(spec)
    if kind == "images":
        return args
    return (-1.0, 1.0) if output_range == 2.0 else (0.0, 1.0)


def with_default_image_priors(specs, output_range: float | None) -> list[InputSpec]:
    """Image-shaped float inputs whose prior was left to the default draw natural images, not noise
    (an explicit ``normal`` prior keeps the noise)."""
    from gencompress.images import is_image_shape

    out = []
    for s in specs:
        if s.is_float and s.prior == "" and is_image_shape(s.shape):
            lo, hi = image_range(s, output_range)
            s = InputSpec(s.name, s.shape, s.dtype, s.low, s.high, f"images:{lo:g}..{hi:g}")
        out.append(s)
    return out


def specs_to_json(specs) -> str:
    """The metadata form; ``prior`` only where set, so older readers and files stay the same."""
    rows = []
    for s in specs:
        row = {"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "low": s.low, "high": s.high}
        if s.prior:
            row["prior"] = s.prior
        rows.append(row)
    return json.dumps(rows)


def spec_from_dict(d, i: int) -> InputSpec:
    """One entry of ``gencompress.inputs`` metadata, validated; the error names key and entry."""
    where = f"model metadata {METADATA_INPUTS!r} entry {i}"
    if not isinstance(d, dict):
        raise GencompressError(f"{where}: expected an object, got {type(d).__name__}")
    unknown = sorted(set(d) - {"name", "shape", "dtype", "low", "high", "prior"})
    if unknown:
        raise GencompressError(f"{where}: unknown key(s) {', '.join(_short(k) for k in unknown[:3])}")
    for key in ("name", "shape"):
        if key not in d:
            raise GencompressError(f"{where}: missing {key!r}")
    shape = d["shape"]
    if not isinstance(shape, list):
        raise GencompressError(f"{where}: 'shape' must be a list of positive integers, got {_short(shape)}")
    fields = {"name": d["name"], "shape": tuple(shape), "dtype": d.get("dtype", "float32"),
              "low": d.get("low", 0), "high": d.get("high", 1), "prior": d.get("prior", "")}
    if fields["dtype"] == "bool" or (isinstance(fields["dtype"], str) and fields["dtype"].startswith("float")):
        fields["low"], fields["high"] = 0, 1  # the range is an integer input's; ignored elsewhere
    return _build(f"{where} ({_short(d['name'])})", **fields)


def specs_from_json(text: str) -> list[InputSpec]:
    if not isinstance(text, str) or len(text) > MAX_METADATA_CHARS:
        raise GencompressError(f"model metadata {METADATA_INPUTS!r}: larger than {MAX_METADATA_CHARS} characters")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise GencompressError(f"model metadata {METADATA_INPUTS!r} is malformed ({type(e).__name__}); remove it to read the inputs off the graph") from None
    if not isinstance(data, list) or not data:
        raise GencompressError(f"model metadata {METADATA_INPUTS!r}: expected a non-empty list of inputs")
    if len(data) > MAX_INPUTS:
        raise GencompressError(f"model metadata {METADATA_INPUTS!r}: {len(data)} inputs, more than {MAX_INPUTS}")
    specs = [spec_from_dict(d, i) for i, d in enumerate(data)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise GencompressError(f"model metadata {METADATA_INPUTS!r}: input names repeat")
    return specs


_ONNX_TO_NP = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 9: "bool"}


def _graph_inputs(proto):
    initializers = {i.name for i in proto.graph.initializer}
    return [vi for vi in proto.graph.input if vi.name not in initializers]


def specs_of_model(model) -> list[InputSpec]:
    """Specs recorded by the exporter (validated against the graph), else read off the graph inputs."""
    from gencompress.onnx_io import to_proto

    proto = to_proto(model)
    meta = {p.key: p.value for p in proto.metadata_props}
    graph_inputs = _graph_inputs(proto)
    if not graph_inputs:
        raise GencompressError("the model has no inputs to draw samples for")
    if METADATA_INPUTS in meta:
        specs = specs_from_json(meta[METADATA_INPUTS])
        want = sorted(vi.name for vi in graph_inputs)
        if sorted(s.name for s in specs) != want:
            raise GencompressError(
                f"model metadata {METADATA_INPUTS!r} names inputs {', '.join(_short(s.name) for s in specs[:5])}, "
                f"but the graph's inputs are {', '.join(_short(n) for n in want[:5])}"
            )
        return with_default_image_priors(specs, output_range_of_model(proto))
    specs = []
    for vi in graph_inputs:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise GencompressError(f"input {_short(vi.name)}: not a tensor (sequences, maps and optionals cannot be drawn)")
        dtype = _ONNX_TO_NP.get(t.elem_type)
        if dtype is None:
            import onnx

            kind = onnx.TensorProto.DataType.Name(t.elem_type) if t.elem_type in onnx.TensorProto.DataType.values() else str(t.elem_type)
            raise GencompressError(f"input {_short(vi.name)}: element type {kind} cannot be drawn (supported: {', '.join(DTYPES)})")
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value") and d.dim_value <= 0:
                raise GencompressError(f"input {_short(vi.name)}: dimension {d.dim_value} in the graph is not positive")
            dims.append(d.dim_value if d.HasField("dim_value") else 1)
        specs.append(_build(f"input {_short(vi.name)} of the graph", name=vi.name, shape=tuple(dims) or (1,), dtype=dtype, recorded=False))
    _refuse_unbatched(graph_inputs)
    return with_default_image_priors(specs, output_range_of_model(proto))


def _refuse_unbatched(graph_inputs) -> None:
    """Samples are drawn, and run, along dim 0 of every input: inputs that fix different sizes
    there (a matrix product's [2, 3] and [3, 4]) or a scalar input have no common batch axis."""
    fixed = {}
    for vi in graph_inputs:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and not dims:
            raise GencompressError(f"input {_short(vi.name)} is a scalar: samples are drawn along dim 0 (the batch axis), "
                                   "which it does not have; give the model a batch axis, or inputs with metadata (gencompress.inputs)")
        if dims and dims[0].HasField("dim_value"):
            fixed[vi.name] = dims[0].dim_value
    if len(set(fixed.values())) > 1:
        listed = ", ".join(f"{_short(k)} {v}" for k, v in list(fixed.items())[:4])
        raise GencompressError(f"the inputs fix different sizes at dim 0 ({listed}): samples are drawn and run along dim 0, "
                               "the batch axis, which these inputs do not share")


def output_range_of_model(model) -> float | None:
    """The output's nominal peak-to-peak range recorded by the exporter, if any (validated)."""
    from gencompress.onnx_io import to_proto

    meta = {p.key: p.value for p in to_proto(model).metadata_props}
    value = meta.get(METADATA_OUTPUT_RANGE)
    if value is None or value == "":
        return None
    try:
        number = float(value[:64])
    except ValueError:
        number = float("nan")
    if not (math.isfinite(number) and number > 0) or len(value) > 64:
        raise GencompressError(f"model metadata {METADATA_OUTPUT_RANGE!r} must be a finite positive number, got {_short(value)}")
    return number


def read_npz(path, where: str) -> dict[str, np.ndarray]:
    """Every member of the ``.npz`` at ``path`` as an array; a file numpy cannot read, or a member
    that is not a saved array (np.load hands back the raw bytes of e.g. a text file in the zip,
    or refuses a pickled object array), is a one-line user error."""
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):  # a plain .npy named .npz
            raise GencompressError(f"{where}: a single array, not an .npz archive of named arrays (save with np.savez)")
        with npz:
            data = {key: npz[key] for key in npz.files}
    except GencompressError:
        raise
    except Exception as e:
        if "allow_pickle" in str(e):
            raise GencompressError(f"{where}: an array of Python objects (pickled); save numbers with np.savez") from None
        raise GencompressError(f"{where}: not a readable .npz file ({type(e).__name__})") from None
    for key, value in data.items():
        if not isinstance(value, np.ndarray):
            raise GencompressError(f"{where}: member {_short(key)} is not a saved array (the archive holds another file); save inputs with np.savez")
    return data


def load_folder_inputs(folder: Path, specs) -> dict[str, np.ndarray]:
    """A folder of images feeds the model's one image input (in its range); any other input takes
    seeded draws from its prior, one per image."""
    from gencompress.images import is_image_shape

    images = [s for s in specs if s.is_float and is_image_shape(s.shape)]
    if len(images) != 1:
        raise GencompressError(f"{folder}: a folder of images feeds one image input; the model has "
                               f"{len(images)} ({', '.join(s.name for s in images) or 'none'}): give an .npz keyed by input name")
    spec = images[0]
    rows = _image_rows(folder, spec, *image_range(spec))
    rng = np.random.default_rng(0)
    return {s.name: rows if s is spec else s.sample(len(rows), rng) for s in specs}


def load_npz_inputs(path, specs) -> dict[str, np.ndarray]:
    """Real inputs from an ``.npz`` keyed by input name (or a folder of images), checked against the specs."""
    from gencompress.onnx_io import as_path, regular_file

    if isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
        return load_folder_inputs(Path(path), specs)
    path = as_path(path, "inputs .npz")
    size = regular_file(path)
    if size > sample_budget_bytes():
        raise GencompressError(f"{path}: {size / 2**20:,.0f} MiB, above the {sample_budget_bytes() / 2**20:,.0f} MiB sampling budget (GENCOMPRESS_SAMPLE_BUDGET_MB)")
    data = read_npz(path, str(path))
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
        if arr.dtype.kind in "iu" and spec.recorded and not spec.prior and (arr.min() < spec.low or arr.max() > spec.high):
            raise GencompressError(f"{path}: input {name!r} holds values {arr.min()}..{arr.max()}, outside the model's "
                                   f"{spec.low}..{spec.high} (e.g. class labels); an embedding would read out of range")
        counts.add(arr.shape[0])
    if len(counts) > 1:
        raise GencompressError(f"{path}: inputs have different sample counts {sorted(counts)}")
    return data
