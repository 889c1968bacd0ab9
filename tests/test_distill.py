"""Distillation: the torch mirror, the training loop's guarantees, the CLI, the recipe step, bad input.

Few steps and small batches keep this file fast; the quality targets (thousands of steps) are
measured by ``benchmarks/distill.py``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

STEPS = 40
BATCH = 16


def _prune(src, dst, *args):
    from gencompress.verbs.prune import prune

    prune(src, dst, **dict(args))
    return dst


@pytest.fixture(scope="module")
def dcgan_pruned(zoo_onnx, tmp_path_factory):
    """(teacher, unstructured 50%, 2:4, channel 50%) paths of the zoo dcgan."""
    folder = tmp_path_factory.mktemp("distill")
    teacher = zoo_onnx("dcgan")
    unstructured = _prune(teacher, folder / "u50.onnx", ("sparsity", 0.5))
    nm = _prune(teacher, folder / "nm.onnx", ("mode", "nm"))
    channel = _prune(teacher, folder / "ch50.onnx", ("mode", "channel"), ("sparsity", 0.5))
    return teacher, unstructured, nm, channel


def _inits(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _graph_signature(path):
    """Everything about a model except its initializer values."""
    m = onnx.load(str(path))
    g = m.graph
    nodes = [(n.op_type, n.name, n.domain, list(n.input), list(n.output), [a.SerializeToString() for a in n.attribute]) for n in g.node]
    inits = [(i.name, i.data_type, list(i.dims)) for i in g.initializer]
    io = [vi.SerializeToString() for vi in [*g.input, *g.output]]
    meta = sorted((p.key, p.value) for p in m.metadata_props)
    return nodes, inits, io, meta, [(o.domain, o.version) for o in m.opset_import], m.ir_version


# ---- the mirror --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dcgan", "vae", "rvae", "cgan"])
def test_mirror_reproduces_onnxruntime(zoo_onnx, tmp_path, name):
    import onnx_ir as ir
    import torch

    from gencompress.distillation.mirror import Mirror
    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.runtime_check.sessions import make_session

    paths = [zoo_onnx(name), _prune(zoo_onnx(name), tmp_path / "p.onnx", ("sparsity", 0.5))]
    if name == "cgan":
        paths.append(_prune(zoo_onnx(name), tmp_path / "c.onnx", ("mode", "channel"), ("sparsity", 0.5)))
    for path in paths:
        proto = onnx.load(str(path))
        feeds = sample_inputs(specs_of_model(proto), 8, seed=3)
        expected = make_session(path).run(None, feeds)
        with torch.no_grad():
            got = Mirror(ir.serde.deserialize_model(proto))(feeds)
        for e, g in zip(expected, got):
            assert e.shape == tuple(g.shape)
            np.testing.assert_allclose(g.numpy(), e, atol=1e-5, rtol=0)


def test_mirror_trains_a_weight_assembled_from_slices(zoo_onnx):
    """The exported rvae builds its GRU recurrence weight with Slice/Concat: it is trained at its source."""
    import onnx_ir as ir

    from gencompress.distillation.mirror import Mirror
    from gencompress.inputs import sample_inputs, specs_of_model

    model = ir.load(str(zoo_onnx("rvae")))
    assert model.graph.initializers["rnn.weight_hh_l0"].uses()[0].node.op_type == "Slice"
    mirror = Mirror(model)
    assert "rnn.weight_hh_l0" in mirror.weight_names
    feeds = sample_inputs(specs_of_model(ir.serde.serialize_model(model)), 4, seed=0)
    mirror(feeds)[0].square().mean().backward()
    assert float(mirror.parameter("rnn.weight_hh_l0").grad.abs().sum()) > 0


def test_fake_quant_matches_the_quantizers():
    """What quantization-aware training reads is what insert_qdq / weight_only_quantize store."""
    import torch

    from gencompress.distillation.train import FakeQuant
    from gencompress.passes.insert_qdq import quantize_symmetric
    from gencompress.passes.weight_only_quantize import quantize_blockwise

    w = np.random.default_rng(0).standard_normal((96, 40, 3, 3)).astype(np.float32)
    q, scale = quantize_symmetric(w, 1)
    expected = q.astype(np.float32) * scale.reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(FakeQuant(1, 127)(torch.from_numpy(w)).detach().numpy(), expected)
    q, scale = quantize_blockwise(w, 0, 64)
    blocks = np.repeat(scale, 64, axis=0)[:96]
    np.testing.assert_allclose(FakeQuant(0, 7, 64)(torch.from_numpy(w)).detach().numpy(), q.astype(np.float32) * blocks, rtol=0, atol=0)
    q, scale = quantize_symmetric(w, 0, block=4)  # insert_qdq's channel_block: one scale per 4 channels
    np.testing.assert_array_equal(FakeQuant(0, 127, group=4)(torch.from_numpy(w)).detach().numpy(), q * scale.reshape(-1, 1, 1, 1))
    q, scale = quantize_symmetric(w[0, 0, 0], None)  # a bias, per tensor
    np.testing.assert_array_equal(FakeQuant(None, 127)(torch.from_numpy(w[0, 0, 0])).detach().numpy(), q * scale)
    # ties round half to even in both (numpy's rint, torch.round): block peak 7 -> scale 1
    ties = np.array([[7.0, 2.5, -3.5, 0.5, -0.5, 1.5, 6.5, 0.0]], dtype=np.float32)
    fake = FakeQuant(1, 7, 64)(torch.from_numpy(ties)).detach().numpy()
    q, scale = quantize_blockwise(ties, 1, 64)
    np.testing.assert_array_equal(fake, q * scale)
    np.testing.assert_array_equal(fake, [[7, 2, -4, 0, 0, 2, 6, 0]])
    # backward: straight through the rounding, and through the scale into each block's peak
    t = torch.from_numpy(w).requires_grad_()
    FakeQuant(0, 7, 64)(t).sum().backward()
    assert torch.isfinite(t.grad).all() and (t.grad != 1).sum() >= 2 * 9 * 40  # the peaks' gradients differ


# ---- the training loop's guarantees -------------------------------------------------------------


@pytest.mark.parametrize("which", ["unstructured", "nm"])
def test_zeros_stay_zero_and_only_weights_change(dcgan_pruned, tmp_path, which):
    import gencompress

    teacher, unstructured, nm, _ = dcgan_pruned
    student = unstructured if which == "unstructured" else nm
    out = tmp_path / "d.onnx"
    result = gencompress.distill(teacher, student, out, steps=STEPS, batch=BATCH)
    before, after = _inits(student), _inits(out)
    changed = 0
    for name, w in before.items():
        if w.dtype != np.float32:
            np.testing.assert_array_equal(after[name], w)
            continue
        np.testing.assert_array_equal(after[name] == 0, w == 0)  # same zeros, bit for bit
        assert not np.signbit(after[name][w == 0]).any()  # +0.0, as pruning wrote them
        changed += not np.array_equal(after[name], w)
    assert changed >= 4
    if which == "nm":  # every group of 4 along the input axis keeps at most 2 non-zeros
        w = after["net.3.weight"]  # ConvTranspose [C_in, C_out, kH, kW]: input axis 0
        groups = np.moveaxis(w, 0, -1).reshape(-1, 4)
        assert (np.count_nonzero(groups, axis=1) <= 2).all()
    assert _graph_signature(out) == _graph_signature(student)
    assert result["masked_weights"]


def test_same_seed_same_bytes_and_psnr_improves(dcgan_pruned, tmp_path):
    import gencompress

    teacher, _, _, channel = dcgan_pruned
    a = gencompress.distill(teacher, channel, tmp_path / "a.onnx", steps=STEPS, batch=BATCH, seed=5)
    gencompress.distill(teacher, channel, tmp_path / "b.onnx", steps=STEPS, batch=BATCH, seed=5)
    gencompress.distill(teacher, channel, tmp_path / "c.onnx", steps=STEPS, batch=BATCH, seed=6)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert (tmp_path / "a.onnx").read_bytes() != (tmp_path / "c.onnx").read_bytes()
    assert _graph_signature(tmp_path / "a.onnx") == _graph_signature(channel)
    # the raw half-width student is far off; a few dozen steps already win several dB back
    assert a["psnr_after_db"] > a["psnr_before_db"] + 3, a
    curve = [loss for _, loss in a["loss_curve"]]
    assert curve[-1] < curve[0]
    # the report's PSNR is the one `check` measures on held-back latents
    check = gencompress.check(teacher, tmp_path / "a.onnx", samples=256, seed=a["seed"] + 1_000_003)
    assert check["outputs"][0]["psnr_db"] == pytest.approx(a["psnr_after_db"])


def test_best_checkpoint_on_the_held_out_set(dcgan_pruned):
    """The weights written back are the evaluated checkpoint with the lowest held-out loss (the
    starting student included), on a seeded set that is neither the training draws nor check's."""
    import onnx_ir as ir

    from gencompress.distillation.mirror import Mirror
    from gencompress.distillation.train import HOLDOUT_SEED_OFFSET, Batches, holdout_loss, train
    from gencompress.inputs import specs_of_model
    from gencompress.runtime_check.fidelity import EVAL_SEED_OFFSET
    from gencompress.runtime_check.sessions import make_session

    assert HOLDOUT_SEED_OFFSET not in (0, EVAL_SEED_OFFSET)
    teacher_path, _, _, channel = dcgan_pruned
    teacher = onnx.load(str(teacher_path))
    student = ir.load(str(channel))
    batches = Batches(specs_of_model(teacher), BATCH, seed=3)
    # a learning rate far too high: later steps are worse than earlier ones
    info = train(teacher, student, batches, steps=STEPS, lr=0.05, seed=3, threads=1, eval_every=10)
    steps, losses = zip(*info["holdout_curve"])
    assert steps == (0, 10, 20, 30, STEPS)
    assert info["best_step"] == steps[int(np.argmin(losses))]
    held = batches.holdout()
    targets = make_session(teacher, threads=1).run(None, held)
    written = holdout_loss(Mirror(student), held, targets, BATCH)
    assert written == pytest.approx(min(losses), rel=1e-5)
    assert written <= losses[-1] and written <= losses[0]


def test_interrupted_run_leaves_no_output(dcgan_pruned, tmp_path, monkeypatch):
    import gencompress
    from gencompress.distillation import mirror

    teacher, unstructured, _, _ = dcgan_pruned
    calls = {"n": 0}
    forward = mirror.Mirror.forward

    def interrupt(self, feeds, extra=()):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return forward(self, feeds, extra)

    monkeypatch.setattr(mirror.Mirror, "forward", interrupt)
    with pytest.raises(KeyboardInterrupt):
        gencompress.distill(teacher, unstructured, tmp_path / "d.onnx", steps=STEPS, batch=BATCH)
    assert list(tmp_path.iterdir()) == []


def test_a_student_that_already_matches_is_left_alone(dcgan_pruned, tmp_path):
    import gencompress

    teacher = dcgan_pruned[0]
    result = gencompress.distill(teacher, teacher, tmp_path / "d.onnx", steps=STEPS, batch=BATCH)
    assert result["steps"] == 0 and "skipped" in result and result["psnr_after_db"] == float("inf")
    assert _inits(tmp_path / "d.onnx").keys() == _inits(teacher).keys()
    assert all(np.array_equal(a, _inits(teacher)[k]) for k, a in _inits(tmp_path / "d.onnx").items())


def test_data_file_gives_the_inputs(dcgan_pruned, tmp_path):
    import gencompress

    teacher, unstructured, _, _ = dcgan_pruned
    data = tmp_path / "z.npz"
    np.savez(data, z=np.random.default_rng(1).standard_normal((64, 100, 1, 1)).astype(np.float32))
    result = gencompress.distill(teacher, unstructured, tmp_path / "d.onnx", steps=10, batch=BATCH, data=data)
    assert result["inputs"] == "data"


# ---- CLI and bad input -------------------------------------------------------------------------


def test_cli_json(run_cli, dcgan_pruned, tmp_path):
    teacher, unstructured, _, _ = dcgan_pruned
    out = tmp_path / "d.onnx"
    r = run_cli("distill", teacher, unstructured, out, "--steps", 20, "--batch", BATCH, "--json")
    assert r.exit_code == 0, r
    result = json.loads(r.stdout)
    assert result["steps"] == 20 and len(result["loss_curve"]) == 20 and out.is_file()
    r = run_cli("distill", teacher, unstructured, tmp_path / "e.onnx", "--steps", 5, "--batch", 4)
    assert r.exit_code == 0 and "PSNR after" in r.stdout and "wrote" in r.stdout, r
    assert "Example" in run_cli("distill", "--help").stdout


def _tiny(path, in_dims=(4,), out_dims=(3,), in_type=onnx.TensorProto.FLOAT, out_name="y"):
    dtype = helper.tensor_dtype_to_np_dtype(in_type)  # a valid graph: weight and output of the input's type
    w = numpy_helper.from_array(np.ones((in_dims[-1], out_dims[-1]), dtype), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["z", "w"], [out_name])], "tiny",
        [helper.make_tensor_value_info("z", in_type, ["N", *in_dims])],
        [helper.make_tensor_value_info(out_name, in_type, ["N", *out_dims])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_bad_input(run_cli, user_error, dcgan_pruned, zoo_onnx, tmp_path):
    teacher, unstructured, _, _ = dcgan_pruned
    out = tmp_path / "o.onnx"
    base = ("distill", teacher, unstructured, out)
    cases = [
        ((*base, "--steps", 0), "--steps"),
        ((*base, "--steps", -3), "--steps"),
        ((*base, "--batch", 0), "--batch"),
        ((*base, "--lr", 0), "--lr"),
        ((*base, "--lr", -1e-3), "--lr"),
        ((*base, "--lr", "nan"), "--lr"),
        ((*base, "--threads", 0), "--threads"),
        (("distill", teacher, unstructured, unstructured), "same file as the input"),
        (("distill", teacher, unstructured, teacher), "same file as the input"),
        (("distill", tmp_path / "missing.onnx", unstructured, out), "no such file"),
        (("distill", teacher, tmp_path / "missing.onnx", out), "no such file"),
        (("distill", zoo_onnx("vae"), unstructured, out), "differ"),
    ]
    t, s = _tiny(tmp_path / "t.onnx"), tmp_path / "s.onnx"
    cases.append((("distill", t, _tiny(s, out_dims=(5,)), out), "output 'y' is Nx3 in the teacher, Nx5 in the student"))
    cases.append((("distill", t, _tiny(tmp_path / "s2.onnx", in_type=onnx.TensorProto.DOUBLE), out), "input 'z' is float32 in the teacher, float64"))
    cases.append((("distill", t, _tiny(tmp_path / "s3.onnx", out_name="x"), out), "outputs differ"))
    from gencompress.verbs.quantize import quantize

    int8 = tmp_path / "int8.onnx"
    quantize(teacher, int8, calib_size=8)
    cases.append((("distill", teacher, int8, out), "quantized"))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, z=np.zeros((8, 50, 1, 1), np.float32))
    cases.append(((*base, "--data", wrong), "shape"))
    np.savez(tmp_path / "f64.npz", z=np.zeros((8, 100, 1, 1), np.float64))
    cases.append(((*base, "--data", tmp_path / "f64.npz"), "dtype"))
    cases.append(((*base, "--data", tmp_path / "none.npz"), "no such file"))
    nan = onnx.load(str(unstructured))
    nan.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(nan.graph.initializer[0]).shape, np.nan, np.float32), nan.graph.initializer[0].name))
    onnx.save(nan, str(tmp_path / "nan.onnx"))
    cases.append((("distill", teacher, tmp_path / "nan.onnx", out), "nan"))
    cases.append(((*base, "--batch", 10**9), "budget"))
    for args, fragment in cases:
        user_error(run_cli(*args), fragment)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---- the pipeline -----------------------------------------------------------------------------


def test_recipe_step_trains_against_the_input_model_quantization_aware(zoo_onnx):
    import onnx_ir as ir

    from gencompress.verbs.recipe import run_recipe

    model = ir.load(str(zoo_onnx("vae")))
    recipe = [
        {"pass": "cleanup"},
        {"pass": "magnitude_prune", "options": {"sparsity": 0.75}},
        {"pass": "distill", "options": {"steps": STEPS, "batch": BATCH}},
        {"pass": "weight_only_quantize", "options": {"bits": 4, "block_size": 16}},
    ]
    _, reports = run_recipe(model, recipe)
    step = reports[2]["report"]
    assert step["quantize_aware"] == "int4" and step["fake_quantized"] > 0
    assert step["psnr_after_db"] > step["psnr_before_db"]


def test_recipe_step_bad_options():
    from gencompress.errors import GencompressError
    from gencompress.passes.registry import validate_recipe
    from gencompress.verbs import recipe  # noqa: F401  (registers the distill step, as every verb that runs recipes does)

    for options, fragment in [({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"), ({"quantize_aware": "int2"}, "quantize_aware"),
                              ({"epochs": 3}, "unknown option")]:
        with pytest.raises(GencompressError, match=fragment):
            validate_recipe([{"pass": "distill", "options": options}])


def test_compress_distill(run_cli, user_error, zoo_onnx, tmp_path):
    out = tmp_path / "out"
    r = run_cli("compress", zoo_onnx("dcgan"), out, "--sparsity", 0.5, "--prune-mode", "channel", "--distill", 30,
                "--no-bench", "--samples", 64, "--calib-size", 32, "--json")
    assert r.exit_code == 0, r
    report = json.loads(r.stdout)
    assert [p["pass"] for p in report["passes"]] == ["cleanup", "channel_prune", "distill", "plan_int8"]
    step = report["passes"][2]
    assert step["summary"]["quantize_aware"] == "int8"
    assert step["summary"]["psnr_after_db"] > step["summary"]["psnr_before_db"]
    assert len(step["loss_curve"]) >= 10
    assert 'class="loss-chart"' in (out / "report.html").read_text()
    user_error(run_cli("compress", zoo_onnx("dcgan"), tmp_path / "x", "--distill", -5, "--no-bench"), "--distill")
