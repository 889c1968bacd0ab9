"""Whether a QDQ model computes the same on every CPU: its int8 weights read against the int16
pair bound of onnxruntime's x86 kernels without VNNI (``passes/int8_saturation.py``).

A layer counts when onnxruntime runs it as an int8 kernel (``int8_saturation.unsafe_layers``):
its weight pairs, in the kernel's K order, must keep same-sign magnitudes within 128.
"""

from __future__ import annotations

import onnx_ir as ir

from gencompress.isa import host_isa, saturates
from gencompress.passes.int8_saturation import unsafe_layers


def portability(model) -> dict:
    """For report.json, bench and manifests: the ISA the figures here were measured on, and the
    model's verdict: ``saturation_free`` True/False (None when no layer runs as an int8 kernel)."""
    if not isinstance(model, ir.Model):
        model = ir.serde.deserialize_model(model)
    unsafe = unsafe_layers(model.graph)
    # no QuantizeLinear: no activation is int8, so no layer runs as an int8 kernel (weight-only, fp16, float)
    int8_kernels = any(node.op_type == "QuantizeLinear" for node in model.graph)
    isa = host_isa()
    out = {"isa": isa, "isa_saturates_int8": saturates(isa), "saturation_free": (not unsafe) if int8_kernels else None}
    if unsafe:
        out["unsafe_layers"] = unsafe
        out["note"] = ("int8 weight pairs that x86 CPUs without VNNI (AVX2, AVX-512BW) sum into a saturating int16: "
                       "figures measured on a VNNI CPU do not hold there (requantize with --int8-kernels portable)")
    return out
