"""Features for the Fréchet distance: a fixed, seeded small conv net, or the user's ONNX model.

The built-in net is an ONNX graph made here from seeded weights (He-normal, fixed seed), run in
onnxruntime — so its features are the same on every machine and for every model compared, and
no torch is needed. Its shape follows the generator's output:

- image ``[N, C, H, W]``: Conv3x3(C→16) ReLU → Conv3x3/2(16→32) ReLU → Conv3x3/2(32→64) ReLU;
  features = global average of the last two blocks (32 + 64 = 96 numbers per sample);
- sequence ``[N, T, F]``: the same with 1-D convolutions over time, the F features as channels;
- vector ``[N, D]`` (and any other rank, flattened): the values themselves, or a seeded Gaussian
  projection to 128 dimensions when D > 256.

Inputs to the built-in net are first mapped by one affine transform taken from the reference
(centre on its mean, divide by half the peak), identical for reference and candidate.
A user's model (e.g. a discriminator or encoder as ONNX) gets the raw outputs; its first output,
flattened per sample, is the feature vector.
"""

from __future__ import annotations

import numpy as np

from gencompress.errors import GencompressError

SEED = 20240613
OPSET = 17
MAX_VECTOR_DIM = 256
PROJECTED_DIM = 128


def _conv_weights(rng, c_out, c_in, kernel):
    fan_in = c_in * int(np.prod(kernel))
    w = rng.standard_normal((c_out, c_in, *kernel)) * np.sqrt(2.0 / fan_in)
    b = rng.standard_normal(c_out) * 0.1
    return w.astype(np.float32), b.astype(np.float32)


def conv_net(channels: int, spatial_dims: int):
    """The built-in feature net as an ``onnx.ModelProto``: input ``x`` [N, channels, *spatial]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED + 1000 * spatial_dims + channels)
    k = (3,) * spatial_dims
    pads1 = [1] * (2 * spatial_dims)
    layers = [(channels, 16, 1), (16, 32, 2), (32, 64, 2)]
    nodes, inits = [], []
    prev = "x"
    pooled = []
    for i, (c_in, c_out, stride) in enumerate(layers):
        w, b = _conv_weights(rng, c_out, c_in, k)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(
            helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=list(k), pads=pads1, strides=[stride] * spatial_dims)
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
        if i >= 1:
            nodes.append(helper.make_node("GlobalAveragePool", [f"r{i}"], [f"g{i}"]))
            nodes.append(helper.make_node("Flatten", [f"g{i}"], [f"f{i}"], axis=1))
            pooled.append(f"f{i}")
    nodes.append(helper.make_node("Concat", pooled, ["features"], axis=1))
    spatial = [None] * spatial_dims
    graph = helper.make_graph(
        nodes,
        "gencompress_feature_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, *spatial])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 96])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class FeatureExtractor:
    """``extractor(outputs) -> [N, D] float64`` features, deterministic.

    ``describe()`` says in one dict what the features are, for the report.
    """

    def __init__(self, kind: str, run, description: dict):
        self.kind = kind
        self._run = run
        self.description = description

    def __call__(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        parts = [self._run(x[i : i + batch]) for i in range(0, len(x), batch)]
        feats = np.concatenate(parts, axis=0) if parts else np.zeros((0, 0))
        return feats.reshape(len(x), -1).astype(np.float64)

    def describe(self) -> dict:
        return dict(self.description)


def builtin_extractor(reference: np.ndarray, peak: float) -> FeatureExtractor:
    """The fixed seeded net for outputs shaped like ``reference`` ([N, ...])."""
    shape = reference.shape[1:]
    ref = np.asarray(reference, dtype=np.float64)
    offset = float(ref.mean()) if ref.size else 0.0
    scale = float(peak) / 2.0 if peak and np.isfinite(peak) and peak > 0 else 1.0
    rank = reference.ndim
    base = {"kind": "builtin", "seed": SEED, "normalisation": f"(x - {offset:.6g}) / {scale:.6g}"}

    if rank in (3, 4):
        if rank == 4:
            channels, spatial = shape[0], 2
            prep = lambda x: x  # noqa: E731 [N, C, H, W]
            net = "conv net 3x3: 16-32-64 channels, ReLU, global average of the last two blocks"
        else:
            channels, spatial = shape[1], 1
            prep = lambda x: np.transpose(x, (0, 2, 1))  # noqa: E731 [N, T, F] -> [N, F, T]
            net = "1-D conv net over time (features as channels): 16-32-64, ReLU, global average of the last two blocks"
        from gencompress.runtime_check.sessions import make_session

        session = make_session(conv_net(int(channels), spatial), label="feature net")

        def run(x):
            x = ((np.asarray(x, dtype=np.float64) - offset) / scale).astype(np.float32)
            x = np.nan_to_num(x, nan=0.0, posinf=1e6, neginf=-1e6)
            return session.run(None, {"x": np.ascontiguousarray(prep(x))})[0]

        return FeatureExtractor("builtin", run, {**base, "net": net, "dim": 96})

    flat_dim = int(np.prod(shape)) if shape else 1
    if flat_dim <= MAX_VECTOR_DIM:

        def run(x):
            return ((np.asarray(x, dtype=np.float64) - offset) / scale).reshape(len(x), -1)

        return FeatureExtractor("builtin", run, {**base, "net": "the output values themselves", "dim": flat_dim})
    proj = np.random.default_rng(SEED).standard_normal((flat_dim, PROJECTED_DIM)) / np.sqrt(PROJECTED_DIM)

    def run(x):
        return ((np.asarray(x, dtype=np.float64) - offset) / scale).reshape(len(x), -1) @ proj

    return FeatureExtractor("builtin", run, {**base, "net": f"seeded Gaussian projection {flat_dim}->{PROJECTED_DIM}", "dim": PROJECTED_DIM})


def onnx_extractor(path, output_name: str, sample: np.ndarray) -> FeatureExtractor:
    """Features from the user's ONNX model (discriminator, encoder): its first output, flattened.

    The model must take exactly one input shaped like the generator output ``output_name``.
    """
    from gencompress.onnx_io import load_model
    from gencompress.runtime_check.sessions import make_session

    proto = load_model(path)
    label = f"feature model {path}"
    session = make_session(proto, label=label)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise GencompressError(f"{label}: needs exactly one input (the generator output {output_name!r}), it has {len(inputs)}: {names}")
    name = inputs[0].name
    want = inputs[0].type

    def run(x):
        try:
            out = session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32 if want == "tensor(float)" else x.dtype)})[0]
        except Exception as e:
            reason = " ".join(str(e).split())[:200]
            raise GencompressError(
                f"{label}: cannot run it on output {output_name!r} of shape {list(x.shape)} ({type(e).__name__}: {reason})"
            ) from None
        return np.asarray(out, dtype=np.float64).reshape(len(x), -1)

    dim = run(sample[:2]).shape[1]
    return FeatureExtractor("onnx", run, {"kind": "onnx", "path": str(path), "output": session.get_outputs()[0].name, "dim": int(dim)})
