"""The third-party generator families of ``models/conv_families.py`` exported as a user would:
through gencompress's exporter, with their nominal output range recorded."""

from __future__ import annotations

from gencompress.exporter.export import export
from gencompress.inputs import METADATA_OUTPUT_RANGE
from gencompress.models.conv_families import OUTPUT_RANGE, build
from gencompress.onnx_io import load_model, save_model


def export_family(name: str, out, *, seed: int = 0, legacy: bool = False, **size) -> dict:
    """Export the family's network to ``out`` (dynamic batch, parity-checked at batch 1 and 7) and
    record its nominal output range; the exporter's report. ``legacy``: the TorchScript exporter
    (several times faster than dynamo; both fold the BatchNorms into the Convs)."""
    net = build(name, seed=seed, **size)
    report = export(net, out, batches=(1, 7), legacy=legacy)
    if OUTPUT_RANGE[name]:
        proto = load_model(out)
        proto.metadata_props.add(key=METADATA_OUTPUT_RANGE, value=repr(float(OUTPUT_RANGE[name])))
        save_model(proto, out)
    return report
