"""Generators users bring (models/families.py): every verb runs, compress and quantize agree,
int8 lands at the size the zoo gets. Each family is exported once per session (``family_onnx``)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import gencompress
from gencompress.models.families import FAMILIES, ModulatedConvFused
from gencompress.verbs.compress import compress


CALIB = "32"  # calibration draws: few, for speed; compress and quantize get the same
FAST = {"calib_size": int(CALIB), "eval_size": 16, "objective": "size"}  # structural checks: every layer int8, untimed
# PSNR floor of the int8 model against the float one (every layer int8, --objective size)
PSNR_FLOOR = 30.0
# instancenorm_resnet on natural-image crops (its image input's default prior since images.py):
# 23.31 dB (portable kernels; 23.32 with vnni: not the saturation bound), above 30 on noise. The
# honest int8 fidelity of this untrained net on smooth 16x16 crops, not a calibration problem
# (23.6 dB with 16 calibration crops, 23.2 with 128, 23.7 with --calib mse): the stem Conv's output
# is quantized per tensor (step 0.0133 over its -1.6..1.3 range) and InstanceNorm then divides each
# channel by its std over one crop (median 0.06, down to 0.0075 on a flat crop), amplifying that
# step. Keeping only that QDQ in float gives 34.7 dB; --exclude node_conv2d (the 3->48 stem) 34.9
# dB at 0.284x the float size.
PSNR_FLOOR_OF = {"instancenorm_resnet": 22.0}


@pytest.fixture(scope="session")
def family_onnx(tmp_path_factory):
    """``family_onnx(name) -> Path`` of the family exported with its seeded weights (cached)."""
    cache = {}
    folder = tmp_path_factory.mktemp("families")

    def get(name):
        if name not in cache:
            from gencompress.exporter.export import export

            out = folder / f"{name}.onnx"
            export(FAMILIES[name][0](), out, batches=(1, 3))
            cache[name] = out
        return cache[name]

    return get


def initializer_contents(path) -> Counter:
    """The initializers as a multiset of (dtype, shape, content hash): names aside, the stored weights."""
    model = onnx.load(str(path))
    return Counter(
        (a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest())
        for a in (numpy_helper.to_array(t) for t in model.graph.initializer)
    )


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_verb_runs_and_int8_is_small(family_onnx, tmp_path, run_cli, name):
    src = family_onnx(name)
    bound = FAMILIES[name][1]
    result = run_cli("quantize", src, tmp_path / "q.onnx", "--calib-size", CALIB, "--eval-size", "16", "--objective", "size", "--json")
    assert result.exit_code == 0, result
    report = json.loads(result.stdout)
    assert report["ratio"] <= bound, (name, report["ratio"])
    assert report["psnr_db"] is None or report["psnr_db"] > PSNR_FLOOR_OF.get(name, PSNR_FLOOR), (name, report["psnr_db"])
    assert not report["warnings"]
    # compress (cleanup -> rewrites -> insert_qdq) writes the same weights, the same size
    out = compress(src, tmp_path / "c", bench=False, samples=16, flags={"calib_size": int(CALIB), "objective": "size"})
    assert initializer_contents(tmp_path / "c" / "model.onnx") == initializer_contents(tmp_path / "q.onnx")
    assert out["sizes"]["candidate"]["bytes"] == (tmp_path / "q.onnx").stat().st_size
    assert out["warnings"] == []
    # fp16 and pruning: no traceback (run_cli re-raises anything but a clean exit)
    result = run_cli("quantize", src, tmp_path / "h.onnx", "--mode", "fp16", "--eval-size", "16", "--json")
    assert result.exit_code == 0, result
    assert json.loads(result.stdout)["ratio"] < 0.55
    result = run_cli("prune", src, tmp_path / "p.onnx", "--sparsity", "0.25", "--mode", "channel")
    assert result.exit_code in (0, 2), result  # 2: nothing prunable, said in one line


def test_zoo_rvae_compress_matches_quantize(zoo_onnx, tmp_path):
    """The GRU's weights, computed by Slice/Concat, fold in compress as in quantize."""
    src = zoo_onnx("rvae")
    q = gencompress.quantize(src, tmp_path / "q.onnx", calib_size=int(CALIB), eval_size=16, objective="size")
    out = compress(src, tmp_path / "c", bench=False, samples=16, flags={"calib_size": int(CALIB), "objective": "size"})
    assert out["sizes"]["ratio"] <= 0.27
    assert initializer_contents(tmp_path / "c" / "model.onnx") == initializer_contents(tmp_path / "q.onnx")
    assert q["ratio"] <= 0.27
    # and the exporter's debug metadata is gone from both
    for path in (tmp_path / "q.onnx", tmp_path / "c" / "model.onnx"):
        model = onnx.load(str(path))
        assert not [p.key for n in model.graph.node for p in n.metadata_props if p.key.startswith("pkg.")]


def test_shared_weight_stored_once_and_modulated_convs_float(family_onnx, tmp_path):
    """Non-fused: the demodulation reads the conv weight; fused: the conv weight is computed per
    run. Neither leaves a float copy of a weight beside its int8 one."""
    nonfused = gencompress.quantize(family_onnx("stylegan2_nonfused"), tmp_path / "n.onnx", **FAST)
    model = onnx.load(str(tmp_path / "n.onnx"))
    large_float = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 1024]
    assert large_float == []
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and list(t.dims) == [64, 64, 3, 3]]
    assert len(int8) == 3  # one int8 copy per modulated layer's weight
    assert nonfused["ratio"] < 0.45
    fused = gencompress.quantize(family_onnx("stylegan2_fused"), tmp_path / "f.onnx", **FAST)
    modulated = [layer for layer in fused["float_layers"] if "runtime-modulated" in layer.get("reason", "")]
    assert len(modulated) >= 2  # (the first layer's conv reads a constant input: not a layer at all)
    assert fused["ratio"] < 0.45


def test_fixed_batch_export_and_failure_log(family_onnx, tmp_path, run_cli, user_error):
    """StyleGAN2's fused form needs a fixed batch: with it the graph keeps dim 0 = 2 and the checks
    run batches of 2; without it the export fails in one line naming a log with the full error."""
    model = onnx.load(str(family_onnx("stylegan2_fused")))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == ModulatedConvFused.gencompress_batch_size
    out = tmp_path / "g.onnx"
    result = run_cli("export", "gencompress.models.families:ModulatedConvFused", out, "--batch-size", "0")
    user_error(result, "--batch-size")

    from gencompress.errors import GencompressError
    from gencompress.exporter.export import export

    dynamic = ModulatedConvFused()
    dynamic.gencompress_batch_size = None
    with pytest.raises(GencompressError) as error:
        export(dynamic, out)
    message = str(error.value)
    assert "\n" not in message and "--batch-size" in message and "export-error.log" in message
    log = tmp_path / "g.onnx.export-error.log"
    assert log.is_file() and len(log.read_text().splitlines()) > 50
    assert not out.exists()


class TimeMajor(torch.nn.Module):
    """Input [T=8, N, 16]: a per-step offset fixes dim 0."""

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(8, 1, 16))

    def forward(self, x):
        return x + self.offset


def test_time_major_input_is_named(tmp_path):
    from gencompress.errors import GencompressError
    from gencompress.exporter.export import export

    with pytest.raises(GencompressError, match="dim 0 is not a free batch axis.*--batch-size 8"):
        export(TimeMajor(), tmp_path / "t.onnx", inputs=["x=8x1x16"])


def test_old_opset_is_upgraded(tmp_path):
    from gencompress.exporter.upgrade import model_opset

    from gencompress.exporter.export import export
    from gencompress.models.families import UNet

    export(UNet(), tmp_path / "old.onnx", legacy=True, opset=11, batches=(1,))
    assert model_opset(onnx.load(str(tmp_path / "old.onnx"))) == 11
    lines = []
    report = gencompress.quantize(tmp_path / "old.onnx", tmp_path / "q.onnx", log=lines.append, **FAST)
    assert any("opset 11" in line and "upgraded" in line for line in lines)
    assert report["opset"] >= 13 and report["ratio"] <= 0.30


def test_convtranspose_layout_chosen_by_size(family_onnx, tmp_path):
    """The U-Net's first up layer (2x2 input) would grow 2.25x in the fused layout: phases instead."""
    report = gencompress.quantize(family_onnx("unet"), tmp_path / "q.onnx", **FAST)
    rewritten = report["rewrite"]["passes"]["convtranspose_to_conv"]["rewritten"]
    for item in rewritten:
        assert item["layout"] == ("phases" if item["fused_weight_vs_convtranspose"] > 1 else "fused")
    assert any(item["layout"] == "phases" for item in rewritten)


def test_size_warning_names_the_float_tensors(family_onnx, tmp_path):
    lines = []
    report = gencompress.quantize(family_onnx("unet"), tmp_path / "q.onnx", exclude=("ConvTranspose",), rewrite=False, log=lines.append, **FAST)
    assert report["ratio"] > 0.5
    (warning,) = report["warnings"]
    assert "float size" in warning and "up3.weight" in warning
    assert any(line.startswith("warning:") for line in lines)


def test_channel_pruning_through_pad_and_instancenorm(tmp_path):
    """Conv -> InstanceNorm -> ReLU -> reflect Pad -> Conv: channels whose conv weights and bias are
    zero (and InstanceNorm bias zero) carry nothing, so pruning them leaves the output unchanged,
    and the InstanceNorm's scale and bias lose the same channels."""
    import onnxruntime as ort

    from gencompress.exporter.export import export
    from gencompress.models.families import InstanceNormResNet

    model = InstanceNormResNet()
    with torch.no_grad():
        for block in model.blocks:
            block[1].weight[:12] = 0
            block[1].bias[:12] = 0
    export(model, tmp_path / "g.onnx", batches=(1,))
    report = gencompress.prune(tmp_path / "g.onnx", tmp_path / "p.onnx", mode="channel", sparsity=0.25)
    pruned = onnx.load(str(tmp_path / "p.onnx"))
    shapes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert [shapes[f"blocks.{i}.1.weight"] for i in (0, 1)] == [[36, 48, 3, 3]] * 2
    assert [shapes[f"blocks.{i}.5.weight"] for i in (0, 1)] == [[48, 36, 3, 3]] * 2
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0] for p in (tmp_path / "g.onnx", tmp_path / "p.onnx")]
    assert np.abs(outs[0] - outs[1]).max() < 1e-4
    assert report is not None
