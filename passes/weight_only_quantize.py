"""Weight-only quantization: weights stored as int8 or int4, a DequantizeLinear in front, float compute.

For edge size: the file shrinks, activations stay float, no calibration is needed.

- ``bits=8``: int8 symmetric, one scale per output channel (axes from ``passes/weights.py``).
- ``bits=4``: int4 symmetric (values in [-7, 7]), one scale per block of ``block_size`` values
  along the input (reduction) axis; stored packed, two values per byte. The block scales are
  stored as float16 (a Cast to float32 feeds the DequantizeLinear; runtimes fold it at load). DequantizeLinear with
  int4 and ``block_size`` needs opset 21: a model below it is converted to opset 21 first
  (onnxscript's version converter: ops whose signature changed are rewritten). A weight whose input axis is so short that int4 blocks would cost more than int8 per
  channel is stored int8 per channel instead.
- Covered: Conv, ConvTranspose, Gemm, MatMul, GRU/LSTM/RNN (W and R), and Gather tables
  (embeddings, one scale per row / blocks along the row).
- Biases of those ops with at least ``MIN_BIAS_VALUES`` values are stored int8, one scale per
  tensor (a bias is added, not multiplied: its error does not grow with the activations).

Guarantees: graph inputs and outputs unchanged; only DequantizeLinear nodes added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from gencompress.errors import GencompressError
from gencompress.passes.insert_qdq import (
    Builder,
    Layer,
    dequantize_weight,
    quantize_symmetric,
    select_layers,
    store_bias_int8,
    table_weights,
)
from gencompress.passes.registry import GencompressPass, register
from gencompress.passes.rewrite import onnx_opset
from gencompress.passes.weights import WeightUse, find_weights, no_float_weights_reason

BITS = (8, 4)
INT4_OPSET = 21
MIN_HALF_SCALES = 64  # fewer float16 scales save less than their Cast node costs
BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "GRU": 3, "LSTM": 3, "RNN": 3}


def weight_layers(graph: ir.Graph) -> list[Layer]:
    """Every node with float weights, in graph order."""
    by_node: dict[int, list[WeightUse]] = {}
    for use in [*find_weights(graph), *table_weights(graph)]:
        if use.value.dtype == ir.DataType.FLOAT:
            by_node.setdefault(id(use.node), []).append(use)
    return [Layer(node, "weights", by_node[id(node)]) for node in graph if id(node) in by_node]


def quantize_blockwise(w: np.ndarray, axis: int, block_size: int, qmax: int = 7, half_scales: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric block quantization along ``axis``: ``(q, scale)``, scale.shape[axis] = ceil(K / block_size).

    ``half_scales``: the scales are rounded to float16 first and the values quantized with the
    rounded scales, so that storing the scales as float16 loses nothing more.
    """
    w = np.asarray(w, dtype=np.float32)
    k = w.shape[axis]
    blocks = math.ceil(k / block_size)
    moved = np.moveaxis(w, axis, -1)
    padded = np.zeros((*moved.shape[:-1], blocks * block_size), dtype=np.float32)
    padded[..., :k] = moved
    grouped = padded.reshape(*moved.shape[:-1], blocks, block_size)
    scale = (np.abs(grouped).max(axis=-1) / qmax).astype(np.float32)
    if half_scales:
        scale = np.minimum(scale, np.float32(np.finfo(np.float16).max)).astype(np.float16).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(grouped / scale[..., None]), -qmax, qmax).astype(np.int8)
    q = q.reshape(*moved.shape[:-1], blocks * block_size)[..., :k]
    return np.moveaxis(q, -1, axis), np.moveaxis(scale, -1, axis)


def int4_bytes(shape, axis: int, block_size: int) -> int:
    n = int(np.prod(shape))
    blocks = n // shape[axis] * math.ceil(shape[axis] / block_size)
    return math.ceil(n / 2) + 2 * blocks  # float16 scales


def int8_bytes(shape, axis: int) -> int:
    return int(np.prod(shape)) + 4 * shape[axis]


@register("weight_only_quantize")
class WeightOnlyQuantizePass(GencompressPass):
    """Store weights as int8 (per output channel) or int4 (blocks along the input axis).

    Guarantees: graph inputs and outputs unchanged; every covered weight becomes an integer
    initializer behind a DequantizeLinear; compute stays float; deterministic.
    """

    @dataclass(frozen=True)
    class Options:
        bits: int = 8
        block_size: int = 64  # int4: values per scale along the input axis
        exclude: tuple[str, ...] = ()  # node names, op types or weight names kept in float
        include: tuple[str, ...] | None = None  # quantize only these (None: all)
        biases: bool = True  # biases with >= MIN_BIAS_VALUES values as int8

        def __post_init__(self):
            if self.bits not in BITS:
                raise ValueError(f"bits must be 8 or 4, not {self.bits}")
            if self.block_size < 16 or self.block_size & (self.block_size - 1):
                raise ValueError(f"block_size must be a power of two >= 16, not {self.block_size}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opts = self.options
        graph = model.graph
        all_layers = weight_layers(graph)
        if not all_layers:
            raise GencompressError(f"nothing to quantize: {no_float_weights_reason(graph)}")
        layers, dropped = select_layers(all_layers, opts.exclude, opts.include)
        if not layers:
            raise GencompressError("nothing to quantize: every layer with weights is excluded")
        if any(self._int4(use) for layer in layers for use in layer.weights):
            # before any int4 is written: the whole graph is converted to opset 21, which can
            # replace nodes (e.g. ReduceMean's axes attribute becomes an input), so find them again
            self._require_opset(model, INT4_OPSET)
            graph = model.graph
            layers, dropped = select_layers(weight_layers(graph), opts.exclude, opts.include)
        builder = Builder(graph)
        done: dict[str, ir.Value] = {}
        formats: dict[str, str] = {}
        for layer in layers:
            for use in layer.weights:
                if use.name not in done:
                    w = use.array()
                    fmt = "int4" if self._int4(use) else "int8"
                    if fmt == "int4":
                        q, scale = quantize_blockwise(w, use.reduce_axis, opts.block_size)
                        done[use.name] = dequantize_weight(
                            builder, use, q, scale, use.reduce_axis, ir.DataType.INT4, block_size=opts.block_size, half_scales=scale.size >= MIN_HALF_SCALES
                        )
                    else:
                        q, scale = quantize_symmetric(w, use.out_axis)
                        done[use.name] = dequantize_weight(builder, use, q, scale, use.out_axis, ir.DataType.INT8)
                    formats[use.name] = fmt
                layer.node.replace_input_with(use.input_index, done[use.name])
            index = BIAS_INPUT.get(layer.op_type)
            if opts.biases and index is not None:
                store_bias_int8(builder, layer.node, index, done)
        for name in list(graph.initializers):
            value = graph.initializers[name]
            if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
                del graph.initializers[name]
        common_passes.TopologicalSortPass()(model)
        self.report = {
            "bits": opts.bits,
            "block_size": opts.block_size if opts.bits == 4 else None,
            "layers": [{**layer.describe(), "formats": [formats[w.name] for w in layer.weights]} for layer in layers],
            "float_layers": [layer.describe() for layer in dropped],
            "opset": model.opset_imports.get(""),
        }
        return ir.passes.PassResult(model, True)

    def _int4(self, use: WeightUse) -> bool:
        """Whether this weight is stored int4 (with ``bits=4``, unless int8 per channel is smaller)."""
        shape = tuple(use.value.const_value.shape)
        return self.options.bits == 4 and int4_bytes(shape, use.reduce_axis, self.options.block_size) < int8_bytes(shape, use.out_axis)

    @staticmethod
    def _require_opset(model: ir.Model, version: int) -> None:
        """Convert the model to opset ``version`` (the ops whose signature changed are rewritten,
        not merely relabelled), or a user error saying it cannot be."""
        import logging

        from onnxscript.version_converter import convert_version

        current = onnx_opset(model)
        if current >= version:
            return
        if any(n.op_type == "GroupNormalization" and n.domain in ("", "ai.onnx") for n in ir.traversal.RecursiveGraphIterator(model.graph)):
            raise GencompressError(
                f"int4 needs opset {version}, and GroupNormalization changes meaning at opset 21; use --bits 8"
            )
        if "ai.onnx" in model.opset_imports:
            model.opset_imports[""] = model.opset_imports.pop("ai.onnx")
        logging.disable(logging.WARNING)  # the converter logs its fallbacks; failure is checked below
        try:
            convert_version(model, version, fallback=True)
        except Exception as e:
            raise GencompressError(f"int4 needs opset {version}: cannot convert the model from opset {current} ({type(e).__name__}); use --bits 8") from None
        finally:
            logging.disable(logging.NOTSET)
        if model.opset_imports.get("") != version:
            raise GencompressError(f"int4 needs opset {version}: cannot convert the model from opset {current}; use --bits 8")
        if model.ir_version is None or model.ir_version < 10:
            model.ir_version = 10
