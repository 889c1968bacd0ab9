"""Quantization of the trained zoo models: static int8 against onnxruntime's quantize_static,
weight-only int8/int4, fp16, determinism, the int8 kernels onnxruntime really runs, sensitivity
and --target-psnr."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from gencompress.errors import GencompressError
from gencompress.inputs import output_range_of_model
from gencompress.isa import host_isa, saturates
from gencompress.runtime_check.calibration import calibration_inputs
from gencompress.passes.insert_qdq import MIN_COMPACT_SAVING, repeat_pattern
from gencompress.runtime_check.fidelity import Evaluator
from gencompress.verbs.quantize import quantize
from gencompress.verbs.quantizers import eval_inputs
from gencompress.verbs.sensitivity import sensitivity

ZOO = ("dcgan", "vae", "rvae", "cgan")
LEVELS = tuple(ort.GraphOptimizationLevel.__members__.values())  # disable, basic, extended, layout, all
CALIB = 64
# The vae decoder's first layer is a Linear 16 -> 1024: with per-channel int8 weights its 1024
# weight scales and int32 bias (1024 distinct values each: nothing repeats) cost half as much as its
# int8 weights, and the int8 weights of the whole model are already 0.23x the float file; its
# bias scales are computed in the graph and its zero points stored once, which brings it from
# 0.325x to 0.322x (0.302x without the rewrites, whose sub-pixel Convs have 4x the channels).
STATIC_RATIO = {"dcgan": 0.27, "vae": 0.325, "rvae": 0.27, "cgan": 0.27}
FUSING_LEVELS = tuple(level for level in LEVELS if int(level) >= int(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED))  # extended, layout, all


def outputs_at_every_level(path, feeds):
    results = []
    for level in LEVELS:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        results.append(session.run(None, feeds))
    return results


def assert_runs_everywhere(path, reference_path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ref = onnx.load(str(reference_path))
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [(i.name, i.type.tensor_type.elem_type) for i in ref.graph.input]
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == [(o.name, o.type.tensor_type.elem_type) for o in ref.graph.output]
    assert {p.key: p.value for p in model.metadata_props} == {p.key: p.value for p in ref.metadata_props}
    feeds = eval_inputs(ref, seed=5, size=8)
    results = outputs_at_every_level(path, feeds)
    # The same model at every level: fused int8 kernels requantize with integer rounding where the
    # unfused DQ -> float op -> Q path rounds once, so a one-step difference in an early layer can
    # carry through the later ones: a few uint8 steps (1/255 of a layer's range each). Bounded by
    # 3% of the output's nominal range at the worst element (vae, portable weights: 0.024 on 3 of
    # 16384 outputs) and 0.5% on average.
    peak = output_range_of_model(ref) or 1.0
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.all(np.isfinite(b))
            assert np.abs(a - b).max() < 0.03 * peak and np.abs(a - b).mean() < 0.005 * peak


def stored_sources(model, name) -> set[str]:
    """The initializers a value is computed from through constant ops (Expand, Reshape, Mul, Cast)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(name)
    if node is None:
        return {name}
    if node.op_type in ("Expand", "Reshape", "Mul", "Cast"):
        return set().union(*(stored_sources(model, i) for i in node.input if i))
    return set()


def ort_quantize_static(float_path, out_path, feeds, reduce_range=False):
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([feeds])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(float_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        reduce_range=reduce_range,
    )


@pytest.mark.parametrize("name", ZOO)
def test_static_int8(zoo_onnx, tmp_path, name):
    src = zoo_onnx(name)
    out = tmp_path / f"{name}.int8.onnx"
    report = quantize(src, out, objective="size", calib_size=CALIB)  # default settings: the rewrites run where there is a ConvTranspose
    assert report["rewrite"]["applied"] == (name != "rvae")
    assert_runs_everywhere(out, src)
    model = onnx.load(str(out))
    # every weight is an integer initializer now; what stays float is scales and tiny biases
    scales = set().union(*(stored_sources(model, n.input[1]) for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")))
    floats = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and i.name not in scales]
    assert max((int(np.prod(i.dims)) for i in floats), default=0) < 64
    # no stored parameter vector repeats a pattern worth storing once
    for init in model.graph.initializer:
        if len(init.dims) == 1:
            array = numpy_helper.to_array(init)
            found = repeat_pattern(array)
            assert found is None or (array.size - found[1]) * array.itemsize < MIN_COMPACT_SAVING, init.name
    # int8, or uint8 where portable int8 keeps a cheap layer's full 8-bit weights (int8_saturation.uint8_layers)
    ints = [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)]
    assert sum(int(np.prod(i.dims)) for i in ints) > 0.9 * sum(int(np.prod(i.dims)) for i in onnx.load(str(src)).graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    ratio = os.path.getsize(out) / os.path.getsize(src)
    assert ratio <= STATIC_RATIO[name]
    assert report["ratio"] == pytest.approx(ratio, abs=1e-4)
    # fidelity against onnxruntime's quantize_static at the same settings, same calibration inputs,
    # in its portable form (reduce_range: 7-bit weights): ours is saturation-free on x86 without VNNI
    # too, so its full 8-bit weights would be compared on the kernel path alone (on a VNNI host
    # they lose nothing; on AVX2 they lose up to 14 dB, benchmarks/portability.py)
    reference = onnx.load(str(src))
    evaluator = Evaluator(reference, eval_inputs(reference, seed=0))
    theirs = tmp_path / f"{name}.ort.onnx"
    ort_quantize_static(src, theirs, calibration_inputs(reference, size=CALIB, seed=0), reduce_range=True)
    ours_db, theirs_db = evaluator.psnr(onnx.load(str(out))), evaluator.psnr(onnx.load(str(theirs)))
    assert report["psnr_db"] == pytest.approx(ours_db, abs=0.01)
    assert ours_db >= theirs_db - 0.5, (ours_db, theirs_db)
    assert ours_db > 30


@pytest.mark.parametrize("name", ZOO)
def test_weight_only_int4_and_int8(zoo_onnx, tmp_path, name):
    src = zoo_onnx(name)
    out4, out8 = tmp_path / f"{name}.w4.onnx", tmp_path / f"{name}.w8.onnx"
    r4 = quantize(src, out4, objective="size", mode="weight-only", bits=4)
    r8 = quantize(src, out8, objective="size", mode="weight-only", bits=8)
    for out in (out4, out8):
        assert_runs_everywhere(out, src)
    assert os.path.getsize(out4) / os.path.getsize(src) <= 0.16
    assert r4["opset"] == 21
    model = onnx.load(str(out4))
    int4 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT4]
    assert int4 and all(len(i.raw_data) == (int(np.prod(i.dims)) + 1) // 2 for i in int4)  # packed
    assert r8["psnr_db"] > r4["psnr_db"] > 20


@pytest.mark.parametrize("name", ZOO)
def test_fp16(zoo_onnx, tmp_path, name):
    src = zoo_onnx(name)
    out = tmp_path / f"{name}.fp16.onnx"
    report = quantize(src, out, objective="size", mode="fp16")
    assert_runs_everywhere(out, src)  # also: inputs/outputs still float32
    assert os.path.getsize(out) / os.path.getsize(src) <= 0.51
    assert report["psnr_db"] is None or report["psnr_db"] > 60


def test_same_command_same_bytes(zoo_onnx, tmp_path):
    for name, kwargs in (("dcgan", {"calib_size": CALIB}), ("cgan", {"calib": "percentile", "calib_size": CALIB}), ("cgan", {"mode": "weight-only", "bits": 4})):
        src = zoo_onnx(name)
        a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
        quantize(src, a, objective="size", **kwargs)
        quantize(src, b, objective="size", **kwargs)
        assert a.read_bytes() == b.read_bytes(), (name, kwargs)


def _kernels(path, tmp_path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    """(op type, input element types) of every node onnxruntime's profiler saw run."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "profile")
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(str(path))
    session.run(None, eval_inputs(model, seed=0, size=2))
    events = json.loads(open(session.end_profiling()).read())
    seen = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            args = e["args"]
            seen[e["name"]] = (args["op_name"], [next(iter(t)) for t in args.get("input_type_shape", [])])
    return list(seen.values())


def test_onnxruntime_runs_int8_kernels(zoo_onnx, tmp_path):
    """Without the rewrites, Gemm and Conv→Relu fuse into QGemm / QLinearConv on uint8 data and a
    ConvTranspose runs in float."""
    src = zoo_onnx("cgan")
    plain = tmp_path / "cgan.int8.onnx"
    report = quantize(src, plain, objective="size", calib_size=CALIB, rewrite=False)
    assert not report["rewrite"]["applied"] and "--no-rewrite" in report["rewrite"]["reason"]
    kernels = _kernels(plain, tmp_path)
    ops = [op for op, _ in kernels]
    assert "QGemm" in ops and "QLinearConv" in ops and "ConvTranspose" in ops
    for op, types in kernels:
        if op in ("QGemm", "QLinearConv"):
            # uint8 activations in; the int8 weight itself is pre-packed, its int8 zero point shows
            assert types[0] == "uint8" and "int8" in types
    assert "Relu" not in ops  # fused into the int8 kernels' output quantization


def test_rewritten_dcgan_runs_only_int8_kernels(zoo_onnx, tmp_path):
    """The default (rewrites on): every ConvTranspose became an int8 Conv or Gemm. The Gemm's
    2048 columns are 128 ConvTranspose channels x 16 positions: its weight scales, zero points
    and int32 bias are stored once per channel and expanded in the graph, the bias scale is a Mul;
    onnxruntime folds those at load time and still fuses QGemm at every level that fuses."""
    src = zoo_onnx("dcgan")
    out = tmp_path / "dcgan.int8.onnx"
    report = quantize(src, out, objective="size", calib_size=CALIB)
    rewrite = report["rewrite"]
    assert rewrite["applied"] and rewrite["setting"] == "auto" and rewrite["convtranspose_rewritten"] == 3
    assert len(rewrite["changes"]) == 3 and "Gemm 100x2048" in rewrite["changes"][0]
    assert [layer.get("channel_block") for layer in report["layers"]] == [16, None, None, None]
    model = onnx.load(str(out))
    big = [i for i in model.graph.initializer if int(np.prod(i.dims)) > 256]
    assert big and all(i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(i.dims) > 1 for i in big)  # only weights
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    producers = {o: n for n in model.graph.node for o in n.output}
    weight_dq, bias_dq = producers[gemm.input[1]], producers[gemm.input[2]]
    assert producers[weight_dq.input[1]].op_type == "Reshape" and producers[weight_dq.input[2]].op_type == "Expand"
    assert producers[bias_dq.input[0]].op_type == "Reshape" and producers[bias_dq.input[1]].op_type == "Mul"
    for level in FUSING_LEVELS:
        kernels = _kernels(out, tmp_path, level)
        ops = [op for op, _ in kernels]
        assert not {"Conv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "Expand", "Mul"} & set(ops), (level, ops)
        assert ops.count("QLinearConv") == 3 and ops.count("QGemm") == 1, (level, ops)
        for op, types in kernels:
            if op in ("QGemm", "QLinearConv"):
                assert types[0] == "uint8" and ("int8" in types or types.count("uint8") > 1)  # uint8 weights: a cheap layer's
    # accuracy: per ConvTranspose channel scales, as without the rewrites (not the finer per column).
    # Full 8-bit weights on both sides: without the rewrites the ConvTranspose layers compute in
    # float after DequantizeLinear, where no int16 pair bound applies (int8_kernels portable).
    # On a CPU whose int8 kernels saturate (AVX2), full 8-bit weights clip there by design: the
    # rewritten model compared is then the portable one, the one made for such CPUs.
    # The same weights kind on both sides (portable int8 now also rounds with error feedback).
    kernels = "portable" if saturates(host_isa()) else "vnni"
    plain = quantize(src, tmp_path / "plain.onnx", objective="size", calib_size=CALIB, rewrite=False, int8_kernels=kernels)
    full = report if kernels == "portable" else quantize(src, tmp_path / "full.onnx", objective="size", calib_size=CALIB, int8_kernels="vnni")
    assert full["psnr_db"] >= plain["psnr_db"] - 0.1
    assert report["ratio"] <= 0.27


@pytest.fixture(scope="module")
def family_onnx(tmp_path_factory):
    """``family_onnx(name)``: a tiny instance of a Conv-only family (models/conv_families.py)."""
    from gencompress.exporter.families import export_family
    from gencompress.models.conv_families import TINY

    folder = tmp_path_factory.mktemp("families")

    def get(name):
        path = folder / f"{name}.onnx"
        if not path.exists():
            export_family(name, path, legacy=True, **TINY[name])  # TorchScript: seconds faster than dynamo
        return path

    return get


@pytest.mark.parametrize("source,plan", [
    ("zoo:dcgan", False),  # Gemm from the 1x1 ConvTranspose (Flatten), Tanh moved before the pixel shuffle
    ("zoo:vae", False),  # Sigmoid moved before the pixel shuffle
    ("zoo:dcgan", True),  # the speed plan's forms: pixel shuffle spelled channels-last
    ("family:gan", False),  # nearest upsampling spelled channels-last (resize_nhwc)
    ("family:style", False),  # a Conv on pixel blocks (conv_space_to_depth)
])
def test_ranges_carried_across_the_rewrites_are_the_rewritten_graphs_own(zoo_onnx, family_onnx, source, plan):
    """quantize calibrates the model before the int8 rewrites: every activation the rewritten
    graph quantizes gets a range, by name or carried through ops that only move values, equal
    (to float rounding) to calibrating the rewritten graph itself."""
    import onnx_ir as ir

    from gencompress.passes.carry_ranges import carry_ranges
    from gencompress.passes.insert_qdq import find_layers, make_plan
    from gencompress.passes.insert_qdq import StaticOptions
    from gencompress.verbs.quantizers import apply_rewrites, calibrated_ranges, fold_into_layers, prepare
    from gencompress.verbs.int8_plan import rewrite_only

    kind, name = source.split(":")
    model = ir.load(zoo_onnx(name) if kind == "zoo" else family_onnx(name))
    prepare(model)
    fold_into_layers(model)
    before = model.clone()
    if plan:
        model, _ = rewrite_only(model, set())
    else:
        model, report = apply_rewrites(model, setting=None, mode="static", exclude=())
        assert report["applied"]
    static = StaticOptions(calib_size=32)
    ranges, _ = calibrated_ranges(before, static, log=lambda m: None)
    carried = carry_ranges(model.graph, before.graph, ranges)
    assert carried  # the rewrites made tensors
    own, _ = calibrated_ranges(model, static, log=lambda m: None)
    seeds = list(make_plan(model.graph, find_layers(model.graph)).seeds)
    for seed in seeds:
        lo, hi = ranges.get(seed) or carried[seed]
        want_lo, want_hi = own[seed]
        tolerance = 1e-5 * (want_hi - want_lo)
        assert abs(lo - want_lo) <= tolerance and abs(hi - want_hi) <= tolerance, (seed, (lo, hi), own[seed])


def test_quantize_and_the_speed_plan_calibrate_once(zoo_onnx, tmp_path, monkeypatch):
    """One calibration run per quantize, on the model before the rewrites (it has the
    ConvTransposes), also when the speed plan builds several rewritten configurations; at most one
    more run for the input moments of portable int8's error feedback (the final build only)."""
    import gencompress.runtime_check.calibration as calibrate
    import gencompress.verbs.int8_plan as speed_plan

    monkeypatch.setenv("GENCOMPRESS_PLAN_CACHE", str(tmp_path / "plans"))  # ranges cached by an earlier test would skip the run
    runs, moment_runs, rewrites = [], [], []
    real_stats, real_rewrite = calibrate.collect_stats, speed_plan.rewrite_only
    monkeypatch.setattr(calibrate, "collect_stats", lambda model, *a, **k: ((runs if k.get("stats") is None else moment_runs).append(model), real_stats(model, *a, **k))[1])
    monkeypatch.setattr(speed_plan, "rewrite_only", lambda model, keep: (rewrites.append(frozenset(keep)), real_rewrite(model, keep))[1])

    def int8_slower(models, reference=True, give_up=None):  # every configuration with int8 layers loses
        return [{1: 1.2, 64: 1.2} for _ in models]

    for objective in ("size", "balanced"):
        runs.clear()
        moment_runs.clear()
        report = quantize(zoo_onnx("dcgan"), tmp_path / f"{objective}.onnx", objective=objective, calib_size=32, check=False, timer=int8_slower)
        assert len(runs) == 1 and len(moment_runs) <= 1, objective
        assert "ConvTranspose" in [node.op_type for node in runs[0].graph], objective
    assert len(set(rewrites)) > 1  # configurations with different ConvTransposes kept float


def test_sensitivity_is_reproducible(zoo_onnx):
    src = zoo_onnx("dcgan")
    a = sensitivity(src, calib_size=CALIB, eval_size=32)
    b = sensitivity(src, calib_size=CALIB, eval_size=32)
    assert a["layers"] == b["layers"]
    values = [r["psnr_db"] for r in a["layers"]]
    assert values == sorted(values)
    assert [r["rank"] for r in a["layers"]] == [1, 2, 3, 4]
    assert {r["op_type"] for r in a["layers"]} == {"ConvTranspose", "Conv"}
    # each layer alone does less damage than all of them together
    assert a["all_quantized_psnr_db"] < values[0]


def test_target_psnr(zoo_onnx, tmp_path):
    src = zoo_onnx("dcgan")
    base = quantize(src, tmp_path / "base.onnx", objective="size", calib_size=CALIB)
    target = base["psnr_db"] + 1.0
    report = quantize(src, tmp_path / "met.onnx", objective="size", calib_size=CALIB, target_psnr=target)
    assert report["target"]["met"] and report["psnr_db"] >= target
    kept = report["target"]["kept_float"]
    assert kept and {layer["node"] for layer in report["float_layers"]} == set(kept)
    # out of reach: the closest model is written and the report says how close it got
    far = quantize(src, tmp_path / "far.onnx", objective="size", calib_size=CALIB, target_psnr=150.0)
    assert not far["target"]["met"] and "cannot be met" in far["target"]["message"]
    assert far["target"]["closest_psnr_db"] == far["psnr_db"] < 150 and (tmp_path / "far.onnx").exists()
    with pytest.raises(GencompressError, match="cannot be met"):
        quantize(src, tmp_path / "strict.onnx", objective="size", calib_size=CALIB, target_psnr=150.0, strict=True)
    assert not (tmp_path / "strict.onnx").exists()


def test_unet_on_image_crops_calibrates_the_values_read(tmp_path):
    """unet (models/families.py) on natural-image crops: its last ConvTranspose becomes a sub-pixel
    Conv -> Tanh -> DepthToSpace -> Slice. The Conv also computes border pixels the Slice drops; on
    image crops they reach 2% past the kept values' range. The range carried from the ConvTranspose
    is the kept values' range, and compress's recipe (rewrite_for_int8 -> insert_qdq) calibrates the
    model before the rewrites and carries, as quantize does: the same int8 scale (it once
    calibrated the rewritten graph, border pixels included: 0.0044501 against 0.00436149)."""
    import onnx_ir as ir

    from gencompress.exporter.export import export
    from gencompress.inputs import specs_of_model
    from gencompress.models.families import FAMILIES
    from gencompress.passes.carry_ranges import carry_ranges
    from gencompress.passes.insert_qdq import StaticOptions
    from gencompress.verbs.compress import default_recipe
    from gencompress.verbs.quantizers import apply_rewrites, calibrated_ranges, fold_into_layers, prepare
    from gencompress.verbs.recipe import run_recipe

    src = tmp_path / "unet.onnx"
    export(FAMILIES["unet"][0](), src, batches=(1, 3))
    model = ir.load(src)
    prepare(model)
    fold_into_layers(model)
    before = model.clone()
    model, report = apply_rewrites(model, setting=None, mode="static", exclude=())
    assert report["applied"]
    static = StaticOptions(calib_size=32)
    ranges, _ = calibrated_ranges(before, static, log=lambda m: None)
    assert [s.prior for s in specs_of_model(onnx.load(str(src)))] == ["images:0..1"]  # calibrated on natural-image crops
    tanh = next(n for n in model.graph if n.op_type == "Tanh")
    conv_out = tanh.inputs[0].name  # the sub-pixel Conv's output
    original = next(n for n in before.graph if n.op_type == "Tanh").inputs[0].name  # the ConvTranspose's
    carried = carry_ranges(model.graph, before.graph, ranges)
    assert carried[conv_out] == ranges[original]
    own, _ = calibrated_ranges(model, static, log=lambda m: None)
    lo, hi = carried[conv_out]
    # the kept values: tanh is monotonic and the graph output is what the Slice keeps of tanh(conv)
    out_lo, out_hi = own[model.graph.outputs[0].name]
    span = hi - lo
    assert abs(np.arctanh(out_lo) - lo) <= 1e-5 * span and abs(np.arctanh(out_hi) - hi) <= 1e-5 * span
    assert own[conv_out][0] < lo - 0.01 * span  # the dropped border pixels: below the kept values
    # compress's recipe: the same scale as quantize's
    q = quantize(src, tmp_path / "q.onnx", calib_size=32, objective="size", check=False)
    assert q["ratio"] < 1
    recipe_model = ir.load(src)
    recipe_model, _ = run_recipe(recipe_model, default_recipe(calib_size=32, objective="size"))
    name = f"{conv_out}_scale"
    scales = {}
    for label, proto in (("quantize", onnx.load(str(tmp_path / "q.onnx"))), ("recipe", ir.serde.serialize_model(recipe_model))):
        scales[label] = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}[name]
    assert scales["quantize"] == scales["recipe"]
    assert abs(float(scales["quantize"]) - span / 255) <= 1e-6 * span


def test_espcn_family_quantizes_every_conv_saturation_free(family_onnx, tmp_path):
    """ESPCN (PyTorch's super-resolution example, a 1-channel image input, a 3x pixel shuffle)
    with every layer int8: its four Convs read int8 weights and activations, no int8 weight pair
    can overflow the non-VNNI kernels' int16, and the image is within 40 dB of float."""
    import onnx_ir as ir

    from gencompress import quantize
    from gencompress.passes.int8_saturation import unsafe_layers

    out = tmp_path / "espcn.int8.onnx"
    report = quantize(family_onnx("espcn"), out, objective="size", calib_size=32)
    model = ir.load(out)
    convs = [n for n in model.graph if n.op_type == "Conv"]
    assert len(convs) == 4 and all(v.producer() is not None and v.producer().op_type == "DequantizeLinear"
                                   for n in convs for v in n.inputs[:2])
    assert unsafe_layers(model.graph) == [] and report["psnr_db"] >= 40.0
