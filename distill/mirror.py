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
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
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

    def trace(value, depth=0):
        if value is None or depth > 16:
            return
        init = _initializer(graph, value)
        if init is not None:
            if init.dtype == ir.DataType.FLOAT:
                found[init.name] = None
            return
        producer = value.producer()
        if producer is None or producer.op_type not in DATA_MOVEMENT:
            return
        sources = producer.inputs if producer.op_type == "Concat" else producer.inputs[:1]
        for v in sources:
            trace(v, depth + 1)

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
            trace(value)
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
    return out.reshape(*data.shape[:axis], *idx.shape, *data.shape[axis + 1:])


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


@op("ReduceMean")
def _reduce_mean(a, attrs, opset):
    x = a[0]
    axes = _ints(a[1]) if opset >= 18 and len(a) > 1 and a[1] is not None else list(attrs.get("axes") or [])
    axes = axes or list(range(x.dim()))
    return x.mean(dim=axes, keepdim=bool(attrs.get("keepdims", 1)))


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
