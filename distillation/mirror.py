"""The student ONNX graph as a differentiable torch module: a small interpreter over onnx_ir nodes.

Why our own interpreter and not onnx2torch: onnx2torch (last release 1.5.15) has no GRU
converter (its GRU issue #233 is open), and it turns initializers into attributes of generated
submodules, so writing trained weights back into the student's graph would need a name map.
Here every trainable float initializer is an ``nn.Parameter`` kept under its ONNX name, the
graph's nodes are evaluated as they are (same order, same tensors), and writing back is
replacing initializer values: nodes, names, inputs and outputs stay exactly the student's.

Trainable weights are the float initializers that reach a parameter input of a layer op (Conv,
ConvTranspose, Gemm, MatMul, GRU/LSTM/RNN, Gather tables, normalization scale/bias, a bias or
scale vector of Add/Mul/Sub, PRelu slopes), directly or through data-movement ops (Slice,
Concat, Unsqueeze, Reshape, ...): weights the exporter assembles from slices (the zoo rvae's GRU
recurrence) train through the Slice/Concat. Shape constants, epsilons and exponents stay fixed.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from gencompress.errors import GencompressError

# op -> inputs that are layer parameters (None: any constant input)
PARAM_INPUTS = {
    "Conv": (0, 1, 2),  # input 0: a learned constant (StyleGAN's 4x4 start), traced through the math below
    "ConvTranspose": (0, 1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "GRU": (1, 2, 3),
    "LSTM": (1, 2, 3),
    "RNN": (1, 2, 3),
    "Gather": (0,),
    "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "PRelu": (1,),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Mul": (0, 1),
}
ELEMENTWISE_PARAM_OPS = ("Add", "Sub", "Mul")  # only vectors (size > 1) count: a scalar is a constant
# ops a weight may pass through on its way to a layer (input 0, or every input for Concat)
DATA_MOVEMENT = ("Identity", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Slice", "Concat", "Flatten", "Split", "Expand", "Cast")
# ops a weight may be computed through at run time (StyleGAN2's modulation and demodulation,
# equalized learning rate): op -> how many leading inputs carry the weight (Pow's exponent does not)
WEIGHT_MATH = {"Mul": 2, "Div": 2, "Add": 2, "Sub": 2, "Pow": 1, "Sqrt": 1, "Reciprocal": 1, "Neg": 1, "ReduceSum": 1,
               "ReduceMean": 1, "ReduceSumSquare": 1, "ReduceL2": 1}
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "QGemm", "MatMulInteger", "ConvInteger", "MatMulNBits")
NOT_FLOAT_WEIGHTS = (ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT4, ir.DataType.UINT4, ir.DataType.FLOAT16,
                     ir.DataType.BFLOAT16)

_TORCH_DTYPE = {
    ir.DataType.FLOAT: torch.float32, ir.DataType.DOUBLE: torch.float64, ir.DataType.FLOAT16: torch.float16,
    ir.DataType.INT64: torch.int64, ir.DataType.INT32: torch.int32, ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8, ir.DataType.BOOL: torch.bool,
}


def refuse_quantized(model: ir.Model, label: str = "student") -> None:
    """A one-line error for a graph that is not float: quantized nodes, or integer/half weights."""
    for node in model.graph:
        if node.op_type in QUANTIZED_OPS:
            raise GencompressError(f"{label} is quantized ({node.op_type} node {node.name!r}); distill the float model, then quantize")
    for name, value in model.graph.initializers.items():
        if value.dtype in NOT_FLOAT_WEIGHTS:
            raise GencompressError(f"{label} is not a float model: weight {name!r} is {value.dtype.name}; distill the float model, then quantize")


def _initializer(graph: ir.Graph, value) -> ir.Value | None:
    if value is None or value.name not in graph.initializers or value.is_graph_input() or value.const_value is None:
        return None
    return value


def trainable_weights(graph: ir.Graph) -> list[str]:
    """Names of the float initializers that are layer parameters (see the module docstring), in graph order."""
    found: dict[str, None] = {}
    seen: set[int] = set()

    def trace(value, depth=0, computed=False):
        if value is None or depth > 16 or id(value) in seen:
            return
        seen.add(id(value))
        init = _initializer(graph, value)
        if init is not None:
            # a scalar that scales a computed weight (equalized lr's 1/sqrt(fan_in), an epsilon) stays fixed
            if init.dtype == ir.DataType.FLOAT and not (computed and init.const_value.size <= 1):
                found[init.name] = None
            return
        producer = value.producer()
        if producer is None:
            return
        if producer.op_type in DATA_MOVEMENT:
            sources = producer.inputs if producer.op_type == "Concat" else producer.inputs[:1]
        elif producer.op_type in WEIGHT_MATH:
            sources, computed = producer.inputs[:WEIGHT_MATH[producer.op_type]], True
        else:
            return
        for v in sources:
            trace(v, depth + 1, computed)

    for node in graph:
        indices = PARAM_INPUTS.get(node.op_type)
        if indices is None or node.domain not in ("", "ai.onnx"):
            continue
        for i in indices:
            if i >= len(node.inputs) or node.inputs[i] is None:
                continue
            value = node.inputs[i]
            if node.op_type in ELEMENTWISE_PARAM_OPS:
                init = _initializer(graph, value)
                if init is None or init.const_value.size <= 1:
                    continue
            trace(value, computed=node.op_type in ("Conv", "ConvTranspose") and i == 0)
    return list(found)


def _attrs(node: ir.Node) -> dict:
    out = {}
    for name, attr in node.attributes.items():
        if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            raise GencompressError(f"node {node.name!r} ({node.op_type}): subgraphs are not supported by the distillation mirror")
        value = attr.value
        if isinstance(value, ir.TensorProtocol):
            value = value.numpy()
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


class Mirror(torch.nn.Module):
    """``Mirror(model)(feeds) -> [outputs]``: the onnx_ir graph evaluated with torch ops.

    ``weights``: the trainable initializers (``name -> nn.Parameter``, via ``parameter(name)``);
    ``transforms``: optional ``name -> fn(tensor) -> tensor`` applied to a weight when it is read
    (fake quantization). ``write_back(model)`` puts the trained values into ``model``'s initializers.
    """

    def __init__(self, model: ir.Model):
        super().__init__()
        graph = model.graph
        self.weight_names = trainable_weights(graph)
        index = {n: i for i, n in enumerate(self.weight_names)}
        self.params = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.from_numpy(np.array(graph.initializers[n].const_value.numpy(), dtype=np.float32))) for n in self.weight_names]
        )
        self._index = index
        self.consts: dict[str, torch.Tensor] = {}
        for name, value in graph.initializers.items():
            if name in index or value.const_value is None:
                continue  # an initializer that is also a graph input stays its default value
            self.consts[name] = _to_torch(value.const_value.numpy())
        self.input_names = [v.name for v in graph.inputs if v.name not in graph.initializers]
        self.output_names = [v.name for v in graph.outputs]
        self.nodes = []
        for node in graph:
            if node.domain not in ("", "ai.onnx"):
                raise GencompressError(f"node {node.name!r}: op {node.domain}::{node.op_type} is not supported by the distillation mirror")
            if node.op_type not in OPS:
                raise GencompressError(f"node {node.name!r}: op {node.op_type} is not supported by the distillation mirror")
            ins = [v.name if v is not None else "" for v in node.inputs]
            outs = [v.name for v in node.outputs]
            self.nodes.append((node.op_type, node.name, ins, outs, _attrs(node)))
        self.opset = int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)))
        self.transforms: dict[str, callable] = {}

    def parameter(self, name: str) -> torch.nn.Parameter:
        return self.params[self._index[name]]

    def named_weights(self):
        return [(n, self.params[i]) for i, n in enumerate(self.weight_names)]

    def forward(self, feeds: dict, extra: tuple[str, ...] = ()) -> list[torch.Tensor]:
        """The graph outputs for ``feeds``, then the intermediate tensors named in ``extra``."""
        env: dict[str, torch.Tensor | None] = {"": None}
        env.update(self.consts)
        for name, p in self.named_weights():
            fn = self.transforms.get(name)
            env[name] = fn(p) if fn is not None else p
        for name in self.input_names:
            x = feeds[name]
            env[name] = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        for op, name, ins, outs, attrs in self.nodes:
            try:
                args = [env[i] for i in ins]
                results = OPS[op](args, attrs, self.opset)
            except GencompressError:
                raise
            except Exception as e:
                raise GencompressError(f"node {name!r} ({op}): the distillation mirror cannot run it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
            if not isinstance(results, (list, tuple)):
                results = [results]
            for out, r in zip(outs, results):
                if out:
                    env[out] = r
        return [env[n] for n in (*self.output_names, *extra)]

    @torch.no_grad()
    def write_back(self, model: ir.Model) -> None:
        """Replace the values of the trained initializers in ``model`` (same names, shapes, dtype)."""
        for name, p in self.named_weights():
            value = model.graph.initializers[name]
            value.const_value = ir.Tensor(p.detach().cpu().numpy().astype(np.float32), name=name)


def _to_torch(arr: np.ndarray) -> torch.Tensor:
    arr = np.array(arr)  # a writable copy
    if arr.dtype == np.uint64 or arr.dtype == np.uint32 or arr.dtype == np.uint16:
        arr = arr.astype(np.int64)
    return torch.from_numpy(arr)


def _ints(t) -> list[int]:
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


# ---- ops -----------------------------------------------------------------------------------------

OPS: dict[str, callable] = {}


def op(*names):
    def deco(fn):
        for n in names:
            OPS[n] = fn
        return fn

    return deco


def _pads(attrs, rank):
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise GencompressError(f"auto_pad {attrs['auto_pad']} is not supported by the distillation mirror; run cleanup or re-export with explicit pads")
    pads = attrs.get("pads") or [0] * (2 * rank)
    return pads[:rank], pads[rank:]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("Conv")
def _conv(a, attrs, opset):
    x, w = a[0], a[1]
    b = a[2] if len(a) > 2 else None
    rank = w.dim() - 2
    begin, end = _pads(attrs, rank)
    if begin != end:
        x = F.pad(x, [p for i in reversed(range(rank)) for p in (begin[i], end[i])])
        begin = [0] * rank
    return _CONV[rank](x, w, b, stride=attrs.get("strides") or 1, padding=begin, dilation=attrs.get("dilations") or 1,
                       groups=attrs.get("group", 1))


@op("ConvTranspose")
def _conv_transpose(a, attrs, opset):
    x, w = a[0], a[1]
    b = a[2] if len(a) > 2 else None
    rank = w.dim() - 2
    if attrs.get("output_shape"):
        raise GencompressError("ConvTranspose with output_shape is not supported by the distillation mirror")
    begin, end = _pads(attrs, rank)
    out_pad = attrs.get("output_padding") or [0] * rank
    group, dilations = attrs.get("group", 1), attrs.get("dilations") or [1] * rank
    if all(d == 1 for d in x.shape[2:]) and group == 1 and not any(begin + end + out_pad) and all(d == 1 for d in dilations):
        # a 1x1 input (the latent projection): one matrix product, much faster than torch's kernel
        y = (x.reshape(x.shape[0], -1) @ w.reshape(w.shape[0], -1)).reshape(x.shape[0], *w.shape[1:])
        return y if b is None else y + b.reshape(1, -1, *[1] * rank)
    symmetric = begin == end
    y = _CONV_T[rank](x, w, b, stride=attrs.get("strides") or 1, padding=begin if symmetric else 0, output_padding=out_pad,
                      groups=group, dilation=dilations)
    if symmetric:
        return y
    index = [slice(None), slice(None)] + [slice(begin[i], y.shape[2 + i] - end[i]) for i in range(rank)]
    return y[tuple(index)].contiguous()


@op("Gemm")
def _gemm(a, attrs, opset):
    x, w = a[0], a[1]
    if attrs.get("transA", 0):
        x = x.transpose(0, 1)
    if attrs.get("transB", 0):
        w = w.transpose(0, 1)
    y = attrs.get("alpha", 1.0) * (x @ w)
    if len(a) > 2 and a[2] is not None:
        y = y + attrs.get("beta", 1.0) * a[2]
    return y


OPS["MatMul"] = lambda a, attrs, opset: torch.matmul(a[0], a[1])
OPS["Add"] = lambda a, attrs, opset: a[0] + a[1]
OPS["Sub"] = lambda a, attrs, opset: a[0] - a[1]
OPS["Mul"] = lambda a, attrs, opset: a[0] * a[1]


@op("Div")
def _div(a, attrs, opset):
    if a[0].dtype.is_floating_point:
        return a[0] / a[1]
    return torch.div(a[0], a[1], rounding_mode="trunc")


OPS["Pow"] = lambda a, attrs, opset: torch.pow(a[0], a[1])
OPS["Sqrt"] = lambda a, attrs, opset: torch.sqrt(a[0])
OPS["Exp"] = lambda a, attrs, opset: torch.exp(a[0])
OPS["Log"] = lambda a, attrs, opset: torch.log(a[0])
OPS["Neg"] = lambda a, attrs, opset: -a[0]
OPS["Abs"] = lambda a, attrs, opset: torch.abs(a[0])
OPS["Reciprocal"] = lambda a, attrs, opset: 1.0 / a[0]
OPS["Erf"] = lambda a, attrs, opset: torch.erf(a[0])
OPS["Relu"] = lambda a, attrs, opset: torch.relu(a[0])
OPS["Sigmoid"] = lambda a, attrs, opset: torch.sigmoid(a[0])
OPS["Tanh"] = lambda a, attrs, opset: torch.tanh(a[0])
OPS["LeakyRelu"] = lambda a, attrs, opset: F.leaky_relu(a[0], attrs.get("alpha", 0.01))
OPS["Elu"] = lambda a, attrs, opset: F.elu(a[0], attrs.get("alpha", 1.0))
OPS["Softplus"] = lambda a, attrs, opset: F.softplus(a[0])
OPS["HardSigmoid"] = lambda a, attrs, opset: torch.clamp(attrs.get("alpha", 0.2) * a[0] + attrs.get("beta", 0.5), 0, 1)
OPS["Gelu"] = lambda a, attrs, opset: F.gelu(a[0], approximate="tanh" if attrs.get("approximate", "none") == "tanh" else "none")
OPS["PRelu"] = lambda a, attrs, opset: torch.where(a[0] >= 0, a[0], a[0] * a[1])
OPS["Identity"] = lambda a, attrs, opset: a[0]
OPS["Softmax"] = lambda a, attrs, opset: torch.softmax(a[0], dim=attrs.get("axis", -1 if opset >= 13 else 1))


@op("Selu")
def _selu(a, attrs, opset):
    alpha, gamma = attrs.get("alpha", 1.67326319217681884765625), attrs.get("gamma", 1.05070102214813232421875)
    x = a[0]
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("Clip")
def _clip(a, attrs, opset):
    if opset < 11:
        return torch.clamp(a[0], attrs.get("min"), attrs.get("max"))
    lo = a[1] if len(a) > 1 and a[1] is not None else None
    hi = a[2] if len(a) > 2 and a[2] is not None else None
    return torch.clamp(a[0], lo, hi)


@op("Constant")
def _constant(a, attrs, opset):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            v = attrs[key]
            if key.startswith("value_int"):
                return torch.tensor(v, dtype=torch.int64)
            if key.startswith("value_float"):
                return torch.tensor(v, dtype=torch.float32)
            return _to_torch(v)
    raise GencompressError("Constant without a value attribute is not supported by the distillation mirror")


@op("Cast")
def _cast(a, attrs, opset):
    dtype = _TORCH_DTYPE.get(ir.DataType(attrs["to"]))
    if dtype is None:
        raise GencompressError(f"Cast to {ir.DataType(attrs['to']).name} is not supported by the distillation mirror")
    return a[0].to(dtype)


@op("Shape")
def _shape(a, attrs, opset):
    dims = list(a[0].shape)
    start = attrs.get("start", 0)
    end = attrs.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64)


@op("Reshape")
def _reshape(a, attrs, opset):
    x, shape = a[0], _ints(a[1])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("Flatten")
def _flatten(a, attrs, opset):
    x = a[0]
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


@op("Transpose")
def _transpose(a, attrs, opset):
    perm = attrs.get("perm") or list(reversed(range(a[0].dim())))
    return a[0].permute(perm)


def _axes(a, attrs, opset, new_rank):
    axes = _ints(a[1]) if opset >= 13 and len(a) > 1 and a[1] is not None else list(attrs.get("axes") or [])
    return sorted(ax + new_rank if ax < 0 else ax for ax in axes)


@op("Unsqueeze")
def _unsqueeze(a, attrs, opset):
    x = a[0]
    axes = _ints(a[1]) if opset >= 13 else list(attrs["axes"])
    rank = x.dim() + len(axes)
    for ax in sorted(ax + rank if ax < 0 else ax for ax in axes):
        x = x.unsqueeze(ax)
    return x


@op("Squeeze")
def _squeeze(a, attrs, opset):
    x = a[0]
    axes = _axes(a, attrs, opset, x.dim())
    if not axes:
        return x.squeeze()
    for ax in reversed(axes):
        x = x.squeeze(ax)
    return x


@op("Concat")
def _concat(a, attrs, opset):
    return torch.cat([t for t in a if t is not None], dim=attrs["axis"])


@op("Split")
def _split(a, attrs, opset):
    x = a[0]
    axis = attrs.get("axis", 0)
    split = _ints(a[1]) if opset >= 13 and len(a) > 1 and a[1] is not None else list(attrs.get("split") or [])
    if not split:
        n = attrs.get("num_outputs")
        if n is None:
            raise GencompressError("Split without split sizes or num_outputs is not supported by the distillation mirror")
        size = -(-x.shape[axis] // n)
        return list(torch.split(x, size, dim=axis))
    return list(torch.split(x, split, dim=axis))


@op("Slice")
def _slice(a, attrs, opset):
    x = a[0]
    if opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = _ints(a[1]), _ints(a[2])
        axes = _ints(a[3]) if len(a) > 3 and a[3] is not None else None
        steps = _ints(a[4]) if len(a) > 4 and a[4] is not None else None
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + x.dim() if axis < 0 else axis
        first, stop, stride = slice(start, end, step).indices(x.shape[axis])
        if stride == 1:
            x = x.narrow(axis, first, max(0, stop - first))
        else:
            x = x.index_select(axis, torch.arange(first, stop, stride, dtype=torch.int64))
    return x


@op("Gather")
def _gather(a, attrs, opset):
    data, idx = a[0], a[1].to(torch.int64)
    axis = attrs.get("axis", 0)
    axis = axis + data.dim() if axis < 0 else axis
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1:]))


@op("Expand")
def _expand(a, attrs, opset):
    shape = torch.broadcast_shapes(tuple(a[0].shape), tuple(_ints(a[1])))
    return a[0].expand(shape)


@op("Tile")
def _tile(a, attrs, opset):
    return a[0].repeat(_ints(a[1]))


@op("ConstantOfShape")
def _constant_of_shape(a, attrs, opset):
    value = attrs.get("value")
    fill = _to_torch(value).reshape(-1)[0] if value is not None else torch.tensor(0.0)
    return torch.full(_ints(a[0]), fill.item(), dtype=fill.dtype)


@op("BatchNormalization")
def _batchnorm(a, attrs, opset):
    if attrs.get("training_mode", 0):
        raise GencompressError("BatchNormalization in training mode is not supported by the distillation mirror")
    return F.batch_norm(a[0], a[3], a[4], a[1], a[2], training=False, eps=attrs.get("epsilon", 1e-5))


@op("InstanceNormalization")
def _instance_norm(a, attrs, opset):
    return F.instance_norm(a[0], weight=a[1], bias=a[2], eps=attrs.get("epsilon", 1e-5))


@op("LayerNormalization")
def _layer_norm(a, attrs, opset):
    x = a[0]
    axis = attrs.get("axis", -1)
    axis = axis + x.dim() if axis < 0 else axis
    b = a[2] if len(a) > 2 else None
    return F.layer_norm(x, tuple(x.shape[axis:]), a[1], b, eps=attrs.get("epsilon", 1e-5))


@op("DepthToSpace")
def _depth_to_space(a, attrs, opset):
    x, bs = a[0], attrs["blocksize"]
    n, c, h, w = x.shape
    if attrs.get("mode", "DCR") == "CRD":
        return F.pixel_shuffle(x, bs)
    y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (bs * bs), h * bs, w * bs)


@op("GRU")
def _gru(a, attrs, opset):
    """ONNX GRU (gates z, r, h), forward / reverse / bidirectional, default activations."""
    if attrs.get("activations") not in (None, ["Sigmoid", "Tanh"], ["Sigmoid", "Tanh", "Sigmoid", "Tanh"]):
        raise GencompressError(f"GRU activations {attrs['activations']} are not supported by the distillation mirror")
    if attrs.get("clip") is not None:
        raise GencompressError("GRU clip is not supported by the distillation mirror")
    x, w, r = a[0], a[1], a[2]
    b = a[3] if len(a) > 3 else None
    if len(a) > 4 and a[4] is not None and not bool((a[4] == x.shape[0 if not attrs.get("layout", 0) else 1]).all()):
        raise GencompressError("GRU with varying sequence_lens is not supported by the distillation mirror")
    h0 = a[5] if len(a) > 5 else None
    layout = attrs.get("layout", 0)
    if layout:
        x = x.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
    steps, batch = x.shape[0], x.shape[1]
    hidden = attrs.get("hidden_size", r.shape[-1])
    direction = attrs.get("direction", "forward")
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    lbr = attrs.get("linear_before_reset", 0)
    ys, hs = [], []
    for d, name in enumerate(dirs):
        wd, rd = w[d], r[d]
        bw = b[d, : 3 * hidden] if b is not None else torch.zeros(3 * hidden)
        br = b[d, 3 * hidden:] if b is not None else torch.zeros(3 * hidden)
        rz, rr, rh = rd.split(hidden)
        brz, brr, brh = br.split(hidden)
        gx = x @ wd.transpose(0, 1) + bw  # [T, B, 3H]
        h = h0[d] if h0 is not None else torch.zeros(batch, hidden, dtype=x.dtype)
        order = range(steps) if name == "forward" else reversed(range(steps))
        out = [None] * steps
        for t in order:
            zx, rx, hx = gx[t].split(hidden, dim=-1)
            z = torch.sigmoid(zx + h @ rz.T + brz)
            rg = torch.sigmoid(rx + h @ rr.T + brr)
            if lbr:
                hh = torch.tanh(hx + rg * (h @ rh.T + brh))
            else:
                hh = torch.tanh(hx + (rg * h) @ rh.T + brh)
            h = (1 - z) * hh + z * h
            out[t] = h
        ys.append(torch.stack(out))  # [T, B, H]
        hs.append(h)
    y = torch.stack(ys, dim=1)  # [T, D, B, H]
    y_h = torch.stack(hs)  # [D, B, H]
    if layout:
        y, y_h = y.permute(2, 0, 1, 3), y_h.transpose(0, 1)
    return [y, y_h]


@op("LSTM")
def _lstm(a, attrs, opset):
    """ONNX LSTM (gates i, o, f, c; optional peepholes), forward / reverse / bidirectional, default activations."""
    if attrs.get("activations") not in (None, ["Sigmoid", "Tanh", "Tanh"], ["Sigmoid", "Tanh", "Tanh"] * 2):
        raise GencompressError(f"LSTM activations {attrs['activations']} are not supported by the distillation mirror")
    if attrs.get("clip") is not None or attrs.get("input_forget", 0):
        raise GencompressError("LSTM clip / input_forget is not supported by the distillation mirror")
    a = list(a) + [None] * (8 - len(a))
    x, w, r, b, lens, h0, c0, peep = a[:8]
    layout = attrs.get("layout", 0)
    if lens is not None and not bool((lens == x.shape[1 if layout else 0]).all()):
        raise GencompressError("LSTM with varying sequence_lens is not supported by the distillation mirror")
    if layout:
        x = x.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    steps, batch = x.shape[0], x.shape[1]
    hidden = attrs.get("hidden_size", r.shape[-1])
    direction = attrs.get("direction", "forward")
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    ys, hs, cs = [], [], []
    for d, name in enumerate(dirs):
        bias = b[d, : 4 * hidden] + b[d, 4 * hidden:] if b is not None else torch.zeros(4 * hidden, dtype=x.dtype)
        gx = x @ w[d].transpose(0, 1) + bias  # [T, B, 4H]
        rt = r[d].transpose(0, 1)
        pi, po, pf = peep[d].split(hidden) if peep is not None else (None, None, None)
        h = h0[d] if h0 is not None else torch.zeros(batch, hidden, dtype=x.dtype)
        c = c0[d] if c0 is not None else torch.zeros(batch, hidden, dtype=x.dtype)
        out = [None] * steps
        for t in (range(steps) if name == "forward" else reversed(range(steps))):
            gi, go, gf, gc = (gx[t] + h @ rt).split(hidden, dim=-1)
            if pi is not None:
                gi, gf = gi + pi * c, gf + pf * c
            i, f = torch.sigmoid(gi), torch.sigmoid(gf)
            c = f * c + i * torch.tanh(gc)
            o = torch.sigmoid(go + po * c if po is not None else go)
            h = o * torch.tanh(c)
            out[t] = h
        ys.append(torch.stack(out))
        hs.append(h)
        cs.append(c)
    y, y_h, y_c = torch.stack(ys, dim=1), torch.stack(hs), torch.stack(cs)
    if layout:
        y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
    return [y, y_h, y_c]


@op("Resize")
def _resize(a, attrs, opset):
    from gencompress.distillation.resample import resize

    if opset < 11:  # opset 10: (X, scales)
        return resize(a[0], None, [float(v) for v in a[1].reshape(-1).tolist()], None, {**attrs, "coordinate_transformation_mode": "asymmetric",
                                                                                         "nearest_mode": "floor"})
    if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        raise GencompressError("Resize tf_crop_and_resize is not supported by the distillation mirror")
    scales = a[2].reshape(-1).tolist() if len(a) > 2 and a[2] is not None and a[2].numel() else None
    sizes = _ints(a[3]) if len(a) > 3 and a[3] is not None and a[3].numel() else None
    return resize(a[0], None, scales, sizes, attrs)


@op("Pad")
def _pad(a, attrs, opset):
    from gencompress.distillation.resample import pad

    mode = attrs.get("mode", "constant")
    if opset < 11:
        return pad(a[0], list(attrs["pads"]), attrs.get("value", 0.0), mode)
    value = a[2].reshape(-1)[0].item() if len(a) > 2 and a[2] is not None and a[2].numel() else 0.0
    axes = _ints(a[3]) if len(a) > 3 and a[3] is not None else None
    return pad(a[0], _ints(a[1]), value, mode, axes)


def _reduce(fn, axes_input_from: int):
    """A Reduce* op: axes from the input (opset >= ``axes_input_from``) or the attribute."""
    def run(a, attrs, opset):
        x = a[0]
        if opset >= axes_input_from:
            axes = _ints(a[1]) if len(a) > 1 and a[1] is not None else []
        else:
            axes = list(attrs.get("axes") or [])
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        axes = sorted({ax + x.dim() if ax < 0 else ax for ax in axes})
        return fn(x, axes, keep)

    return run


def _amax(x, axes, keep):
    return x.amax(dim=axes, keepdim=keep)


def _amin(x, axes, keep):
    return x.amin(dim=axes, keepdim=keep)


def _prod(x, axes, keep):
    for ax in reversed(axes):
        x = x.prod(dim=ax, keepdim=keep)
    return x


OPS["ReduceSum"] = _reduce(lambda x, axes, keep: x.sum(dim=axes, keepdim=keep), 13)
OPS["ReduceMean"] = _reduce(lambda x, axes, keep: x.mean(dim=axes, keepdim=keep), 18)
OPS["ReduceMax"] = _reduce(_amax, 18)
OPS["ReduceMin"] = _reduce(_amin, 18)
OPS["ReduceProd"] = _reduce(_prod, 18)
OPS["ReduceSumSquare"] = _reduce(lambda x, axes, keep: (x * x).sum(dim=axes, keepdim=keep), 18)
OPS["ReduceL1"] = _reduce(lambda x, axes, keep: x.abs().sum(dim=axes, keepdim=keep), 18)
OPS["ReduceL2"] = _reduce(lambda x, axes, keep: torch.sqrt((x * x).sum(dim=axes, keepdim=keep)), 18)
OPS["ReduceLogSumExp"] = _reduce(lambda x, axes, keep: torch.logsumexp(x, dim=axes, keepdim=keep), 18)
OPS["ReduceLogSum"] = _reduce(lambda x, axes, keep: torch.log(x.sum(dim=axes, keepdim=keep)), 18)

OPS["Where"] = lambda a, attrs, opset: torch.where(a[0].to(torch.bool), a[1], a[2])
OPS["Equal"] = lambda a, attrs, opset: torch.eq(a[0], a[1])
OPS["Less"] = lambda a, attrs, opset: torch.lt(a[0], a[1])
OPS["LessOrEqual"] = lambda a, attrs, opset: torch.le(a[0], a[1])
OPS["Greater"] = lambda a, attrs, opset: torch.gt(a[0], a[1])
OPS["GreaterOrEqual"] = lambda a, attrs, opset: torch.ge(a[0], a[1])
OPS["Not"] = lambda a, attrs, opset: torch.logical_not(a[0])
OPS["And"] = lambda a, attrs, opset: torch.logical_and(a[0], a[1])
OPS["Or"] = lambda a, attrs, opset: torch.logical_or(a[0], a[1])
OPS["Xor"] = lambda a, attrs, opset: torch.logical_xor(a[0], a[1])
OPS["IsNaN"] = lambda a, attrs, opset: torch.isnan(a[0])
OPS["Sin"] = lambda a, attrs, opset: torch.sin(a[0])
OPS["Cos"] = lambda a, attrs, opset: torch.cos(a[0])
OPS["Tan"] = lambda a, attrs, opset: torch.tan(a[0])
OPS["Atan"] = lambda a, attrs, opset: torch.atan(a[0])
OPS["Floor"] = lambda a, attrs, opset: torch.floor(a[0])
OPS["Ceil"] = lambda a, attrs, opset: torch.ceil(a[0])
OPS["Round"] = lambda a, attrs, opset: torch.round(a[0])  # half to even, as ONNX
OPS["Sign"] = lambda a, attrs, opset: torch.sign(a[0])
OPS["Softsign"] = lambda a, attrs, opset: a[0] / (1 + a[0].abs())
OPS["HardSwish"] = lambda a, attrs, opset: a[0] * torch.clamp(a[0] / 6 + 0.5, 0, 1)
OPS["Mish"] = lambda a, attrs, opset: a[0] * torch.tanh(F.softplus(a[0]))
OPS["Celu"] = lambda a, attrs, opset: F.celu(a[0], attrs.get("alpha", 1.0))
OPS["ThresholdedRelu"] = lambda a, attrs, opset: torch.where(a[0] > attrs.get("alpha", 1.0), a[0], torch.zeros_like(a[0]))
OPS["Dropout"] = lambda a, attrs, opset: [a[0], torch.ones_like(a[0], dtype=torch.bool)]  # inference: identity
OPS["Size"] = lambda a, attrs, opset: torch.tensor(a[0].numel(), dtype=torch.int64)
OPS["CastLike"] = lambda a, attrs, opset: a[0].to(a[1].dtype)
OPS["Max"] = lambda a, attrs, opset: _fold(torch.maximum, a)
OPS["Min"] = lambda a, attrs, opset: _fold(torch.minimum, a)
OPS["Sum"] = lambda a, attrs, opset: _fold(torch.add, a)
OPS["Mean"] = lambda a, attrs, opset: _fold(torch.add, a) / len(a)


def _fold(fn, tensors):
    out = tensors[0]
    for t in tensors[1:]:
        out = fn(out, t)
    return out


@op("Mod")
def _mod(a, attrs, opset):
    if attrs.get("fmod", 0):
        return torch.fmod(a[0], a[1])
    return torch.remainder(a[0], a[1])  # the sign of the divisor, as ONNX's integer Mod


@op("LogSoftmax")
def _log_softmax(a, attrs, opset):
    return torch.log_softmax(a[0], dim=attrs.get("axis", -1 if opset >= 13 else 1))


@op("Range")
def _range(a, attrs, opset):
    start, limit, delta = (t.reshape(()) for t in a[:3])
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@op("Einsum")
def _einsum(a, attrs, opset):
    return torch.einsum(attrs["equation"].replace(" ", ""), *a)


@op("Trilu")
def _trilu(a, attrs, opset):
    k = int(a[1].item()) if len(a) > 1 and a[1] is not None else 0
    return torch.triu(a[0], k) if attrs.get("upper", 1) else torch.tril(a[0], k)


@op("CumSum")
def _cumsum(a, attrs, opset):
    x, axis = a[0], int(a[1].item())
    if attrs.get("reverse", 0):
        x = x.flip(axis)
    if attrs.get("exclusive", 0):
        x = torch.cat([torch.zeros_like(x.narrow(axis, 0, 1)), x.narrow(axis, 0, x.shape[axis] - 1)], dim=axis)
    y = torch.cumsum(x, dim=axis)
    return y.flip(axis) if attrs.get("reverse", 0) else y


@op("GatherElements")
def _gather_elements(a, attrs, opset):
    data, idx = a[0], a[1].to(torch.int64)
    axis = attrs.get("axis", 0)
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    return torch.gather(data, axis, idx)


@op("SpaceToDepth")
def _space_to_depth(a, attrs, opset):
    x, bs = a[0], attrs["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * bs * bs, h // bs, w // bs)


OPS["GlobalAveragePool"] = lambda a, attrs, opset: a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True)
OPS["GlobalMaxPool"] = lambda a, attrs, opset: a[0].amax(dim=tuple(range(2, a[0].dim())), keepdim=True)
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _pool_setup(x, attrs, pad_value):
    """(x padded where the pads are asymmetric, kernel, strides, symmetric pads, dilations)."""
    kernel = list(attrs["kernel_shape"])
    rank = len(kernel)
    begin, end = _pads(attrs, rank)
    if begin != end and attrs.get("ceil_mode", 0):  # torch's ceil rule counts from the padded edge, onnxruntime's from the input's
        raise GencompressError("pooling with ceil_mode and asymmetric pads is not supported by the distillation mirror")
    strides = attrs.get("strides") or [1] * rank
    if begin != end:
        x = F.pad(x, [p for i in reversed(range(rank)) for p in (begin[i], end[i])], value=pad_value)
        begin = [0] * rank
    return x, kernel, strides, begin, attrs.get("dilations") or [1] * rank


@op("AveragePool")
def _avg_pool(a, attrs, opset):
    x = a[0]
    include = bool(attrs.get("count_include_pad", 0))
    pads = attrs.get("pads") or []
    if not include and any(pads) and pads[: len(pads) // 2] != pads[len(pads) // 2:]:
        raise GencompressError("AveragePool with asymmetric pads excluded from the count is not supported by the distillation mirror")
    if any(d != 1 for d in attrs.get("dilations") or []):
        raise GencompressError("AveragePool with dilations is not supported by the distillation mirror")
    x, kernel, strides, begin, _ = _pool_setup(x, attrs, 0.0)
    return _AVG_POOL[len(kernel)](x, kernel, strides, begin, ceil_mode=bool(attrs.get("ceil_mode", 0)), count_include_pad=include)


@op("MaxPool")
def _max_pool(a, attrs, opset):
    x, kernel, strides, begin, dilations = _pool_setup(a[0], attrs, float("-inf"))
    return _MAX_POOL[len(kernel)](x, kernel, strides, begin, dilations, ceil_mode=bool(attrs.get("ceil_mode", 0)))
