"""Full garbage collections (onnx_ir's reference cycles) only where the weights they free are large:
each walks every object of the process, 0.04 s a call in a quantize run of a small model."""

from __future__ import annotations

import gc

from gencompress import onnx_io


def test_collections_only_for_large_weights(zoo_onnx, tmp_path, monkeypatch):
    from gencompress import prune, quantize

    calls = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(a) or 0)
    src = zoo_onnx("dcgan")  # 1.5 MB of weights
    quantize(src, tmp_path / "q.onnx", objective="size", check=False)
    prune(src, tmp_path / "p.onnx", sparsity=0.5)
    assert calls == []
    onnx_io.collect_cycles(onnx_io.COLLECT_BYTES - 1)
    assert calls == []
    onnx_io.collect_cycles(onnx_io.COLLECT_BYTES)  # a large model's: collected
    assert len(calls) == 1
