"""Old-opset ONNX files upgraded on load, with a one-line notice, instead of refused.

An ONNX file may be all a user has (no torch source to re-export). Below ``MIN_OPSET`` the int8
QDQ format (per-axis QuantizeLinear/DequantizeLinear) cannot be written, so compress and quantize
convert such a model to ``TARGET_OPSET`` with onnx's version converter (onnxscript's when onnx's
fails) and check onnxruntime still loads it.
"""

from __future__ import annotations

import onnx

from gencompress.errors import GencompressError

MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
TARGET_OPSET = 17


def model_opset(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def upgrade_opset(proto: onnx.ModelProto, source, log=None) -> onnx.ModelProto:
    """``proto`` itself when its opset is ``MIN_OPSET`` or newer, else the model converted to
    ``TARGET_OPSET`` (metadata kept); ``log`` gets the one-line notice. A model neither converter
    can upgrade is a user error naming the op that failed."""
    opset = model_opset(proto)
    if opset is None or opset >= MIN_OPSET:
        return proto
    errors = []
    upgraded = None
    try:
        upgraded = onnx.version_converter.convert_version(proto, TARGET_OPSET)
    except Exception as e:
        errors.append(f"onnx: {' '.join(str(e).split())[:160]}")
    if upgraded is None:
        try:
            import onnx_ir as ir
            from onnxscript import version_converter

            model = ir.serde.deserialize_model(proto)
            version_converter.convert_version(model, TARGET_OPSET)
            upgraded = ir.serde.serialize_model(model)
        except Exception as e:
            errors.append(f"onnxscript: {' '.join(str(e).split())[:160]}")
    if upgraded is None or model_opset(upgraded) != TARGET_OPSET:
        raise GencompressError(f"{source}: opset {opset} is too old for int8 QDQ (needs {MIN_OPSET}+) and the version converters cannot upgrade it ({'; '.join(errors) or 'no conversion'})")
    del upgraded.metadata_props[:]
    upgraded.metadata_props.extend(proto.metadata_props)
    if log:
        log(f"note: {source} has opset {opset}; upgraded to opset {TARGET_OPSET} with the ONNX version converter (the input file is unchanged)")
    return upgraded
