"""Export: zoo and user generators to ONNX that match torch, and one-line errors for bad input."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from gencompress.inputs import sample_inputs, specs_of_model
from gencompress.models import ZOO

ZOO_NAMES = list(ZOO)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_out(module, feeds):
    with torch.no_grad():
        out = module(*(torch.from_numpy(v) for v in feeds.values()))
    return out.numpy()


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_export_matches_torch(name, zoo_onnx):
    path = zoo_onnx(name)
    proto = onnx.load(str(path))
    # self-contained: no tensor points at a side file
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert not list(path.parent.glob(f"{path.name}.data"))
    onnx.checker.check_model(proto, full_check=True)

    specs = specs_of_model(proto)
    assert [s.name for s in specs] == [s.name for s in ZOO[name].inputs]
    module = ZOO[name].generator()
    session = _session(path)
    for batch in (1, 7, 64):
        feeds = sample_inputs(specs, batch, seed=100 + batch)
        got = session.run(None, feeds)[0]
        assert got.shape[0] == batch
        np.testing.assert_allclose(got, _torch_out(module, feeds), atol=1e-4, rtol=0)

    # eval-mode BatchNorm: a batch-64 row equals the same input run alone
    feeds = sample_inputs(specs, 64, seed=7)
    batched = session.run(None, feeds)[0]
    for i in (0, 31, 63):
        single = session.run(None, {k: v[i : i + 1] for k, v in feeds.items()})[0]
        np.testing.assert_allclose(batched[i : i + 1], single, atol=1e-5, rtol=0)


USER_MODEL = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    class TwoInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.fc = nn.Linear(24, 64)
            self.up = nn.ConvTranspose2d(4, 1, 4, 2, 1)

        def forward(self, z, label):
            h = torch.relu(self.fc(torch.cat([z, self.embed(label)], dim=1)))
            return torch.tanh(self.up(h.reshape(-1, 4, 4, 4)))

    def make():
        return TwoInput()

    class Branchy(nn.Module):
        # data-dependent control flow: torch.export refuses it, TorchScript tracing takes the branch
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, z):
            if (z * z).sum() >= 0:
                return torch.tanh(self.fc(z))
            return z

    class FixedBatch(nn.Module):
        # int() turns the batch size into a constant of the exported graph
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, z):
            return self.fc(z) + torch.zeros(int(z.shape[0]), 8)

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            raise RuntimeError("needs a GPU")

    class SaysItsInputs(nn.Module):
        gencompress_inputs = ["z=1x8"]

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, z):
            return self.fc(z)
    """
)


@pytest.fixture
def user_model(tmp_path):
    src = tmp_path / "user_gen.py"
    src.write_text(USER_MODEL)
    ns: dict = {}
    exec(compile(USER_MODEL, str(src), "exec"), ns)
    torch.manual_seed(0)
    module = ns["TwoInput"]().eval()
    ckpt = tmp_path / "two.pt"
    torch.save(module.state_dict(), ckpt)
    return src, ckpt, module


@pytest.mark.parametrize("attr", ["TwoInput", "make"])
def test_user_file_two_inputs_with_int64(attr, user_model, tmp_path, run_cli):
    src, ckpt, module = user_model
    out = tmp_path / "two.onnx"
    r = run_cli("export", f"{src}:{attr}", out, "--checkpoint", ckpt, "--input", "z=1x16", "--input", "label=1:int64:0..9")
    assert r.exit_code == 0, r
    assert "OK" in r.stdout
    session = _session(out)
    assert [i.type for i in session.get_inputs()] == ["tensor(float)", "tensor(int64)"]
    specs = specs_of_model(onnx.load(str(out)))
    assert specs[1].low == 0 and specs[1].high == 9
    for batch in (1, 7, 64):
        feeds = sample_inputs(specs, batch, seed=batch)
        assert feeds["label"].max() <= 9
        np.testing.assert_allclose(session.run(None, feeds)[0], _torch_out(module, feeds), atol=1e-4, rtol=0)


def test_package_module_attr_with_checkpoint(tmp_path, run_cli):
    out = tmp_path / "g.onnx"
    ckpt = ZOO["dcgan"].checkpoint
    r = run_cli("export", "gencompress.models.dcgan:DCGANGenerator", out, "--checkpoint", ckpt, "--input", "z=1x100x1x1", "--json")
    assert r.exit_code == 0, r
    import json

    result = json.loads(r.stdout)
    assert result["exporter"] == "dynamo"
    assert max(result["parity"]["max_abs_error"].values()) <= 1e-4
    assert set(result["parity"]["max_abs_error"]) == {"1", "7", "64"}


def test_legacy_exporter_keeps_parity(tmp_path, run_cli):
    out = tmp_path / "legacy.onnx"
    r = run_cli("export", "dcgan", out, "--legacy", "--json")
    assert r.exit_code == 0, r
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "ConvTranspose" in ops


def test_dynamo_failure_falls_back_to_legacy_and_says_so(user_model, tmp_path, run_cli):
    src, _, _ = user_model
    out = tmp_path / "branchy.onnx"
    r = run_cli("export", f"{src}:Branchy", out, "--input", "z=1x8")
    assert r.exit_code == 0, r
    assert "falling back to the TorchScript exporter" in r.stderr
    assert out.exists()


def test_exported_file_is_reproducible(tmp_path, run_cli):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert run_cli("export", "vae", a).exit_code == 0
    assert run_cli("export", "vae", b).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


# ---- bad input: one line, exit 2, nothing written ----------------------------------------------


def test_unknown_zoo_name(tmp_path, run_cli, user_error):
    user_error(run_cli("export", "stylegan9", tmp_path / "o.onnx"), "unknown zoo model", "stylegan9")


def test_missing_file(tmp_path, run_cli, user_error):
    user_error(run_cli("export", f"{tmp_path}/nope.py:G", tmp_path / "o.onnx"), "no such file")


def test_missing_attribute(user_model, tmp_path, run_cli, user_error):
    src, _, _ = user_model
    user_error(run_cli("export", f"{src}:Nope", tmp_path / "o.onnx", "--input", "z=1x16"), "no attribute", "Nope")


def test_checkpoint_mismatch_names_keys(user_model, tmp_path, run_cli, user_error):
    src, _, _ = user_model
    r = run_cli("export", f"{src}:Branchy", tmp_path / "o.onnx", "--checkpoint", user_model[1], "--input", "z=1x8")
    user_error(r, "does not match", "unexpected keys: embed.weight", "shape mismatch", "fc.weight (64, 24) vs (8, 8)")


def test_checkpoint_missing_or_not_weights(user_model, tmp_path, run_cli, user_error):
    src, _, _ = user_model
    user_error(run_cli("export", f"{src}:TwoInput", tmp_path / "o.onnx", "--checkpoint", tmp_path / "none.pt"), "no such file")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    user_error(run_cli("export", f"{src}:TwoInput", tmp_path / "o.onnx", "--checkpoint", junk), "cannot be loaded")


@pytest.mark.parametrize("spec", ["z", "z=", "z=1x", "z=0x3", "z=1x3:float8", "=1x3", "label=1:int64:9..0", "z=1x3:float32:0..1"])
def test_malformed_input_spec(spec, tmp_path, run_cli, user_error):
    user_error(run_cli("export", "dcgan", tmp_path / "o.onnx", "--input", spec), "--input")


def test_input_that_does_not_fit_the_model(tmp_path, run_cli, user_error):
    r = run_cli("export", "dcgan", tmp_path / "o.onnx", "--input", "z=1x7x1x1")
    user_error(r, "fails on inputs")
    assert not (tmp_path / "o.onnx").exists()


def test_failed_parity_writes_nothing(tmp_path, run_cli, user_error):
    out = tmp_path / "o.onnx"
    user_error(run_cli("export", "vae", out, "--tolerance", "1e-30"), "parity check failed")
    assert list(tmp_path.iterdir()) == []


def test_never_overwrites_its_input(user_model, run_cli, user_error):
    src, ckpt, _ = user_model
    before = ckpt.read_bytes()
    # an .onnx-suffixed checkpoint given as the output too
    onnx_ckpt = ckpt.with_suffix(".onnx")
    onnx_ckpt.write_bytes(before)
    r = run_cli("export", f"{src}:TwoInput", onnx_ckpt, "--checkpoint", onnx_ckpt, "--input", "z=1x16", "--input", "label=1:int64:0..9")
    user_error(r, "same file as the input")
    assert onnx_ckpt.read_bytes() == before


@pytest.mark.parametrize("legacy", [(), ("--legacy",)])
def test_fixed_batch_size_fails_parity_in_one_line(legacy, user_model, tmp_path, run_cli, user_error):
    src, _, _ = user_model
    out = tmp_path / "o.onnx"
    user_error(run_cli("export", f"{src}:FixedBatch", out, "--input", "z=1x8", *legacy), "parity check failed", "batch 1")
    assert not out.exists()


def test_constructor_that_raises(user_model, tmp_path, run_cli, user_error):
    src, _, _ = user_model
    user_error(run_cli("export", f"{src}:Broken", tmp_path / "o.onnx", "--input", "z=1x8"), "failed to build", "needs a GPU")


def test_module_declares_its_inputs_as_strings(user_model, tmp_path, run_cli):
    src, _, _ = user_model
    r = run_cli("export", f"{src}:SaysItsInputs", tmp_path / "o.onnx")
    assert r.exit_code == 0, r
    assert [s.name for s in specs_of_model(onnx.load(str(tmp_path / "o.onnx")))] == ["z"]


def test_requested_opset_is_the_one_written(tmp_path, run_cli):
    # the dynamo exporter writes opset 18 when asked for 13; the TorchScript one honours it
    out = tmp_path / "o13.onnx"
    r = run_cli("export", "dcgan", out, "--opset", "13")
    assert r.exit_code == 0, r
    assert "gave opset 18, not 13" in r.stderr
    assert [o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")] == [13]


def test_nan_tolerance_is_rejected(tmp_path, run_cli, user_error):
    user_error(run_cli("export", "vae", tmp_path / "o.onnx", "--tolerance", "nan"), "--tolerance")


def test_bare_command_prints_the_help(run_cli):
    r = run_cli()
    assert r.exit_code == 2, r
    assert r.stderr.startswith("Usage: ") and "\n  export " in r.stderr  # the listing, not one squashed line


def test_user_file_imports_its_neighbour(tmp_path, run_cli):
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "gen_layers_neighbour.py").write_text("import torch.nn as nn\n\ndef head():\n    return nn.Linear(8, 4)\n")
    (pkg / "gen.py").write_text(
        "import torch.nn as nn\nfrom gen_layers_neighbour import head\n\n"
        "class G(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.fc = head()\n\n"
        "    def forward(self, z):\n        return self.fc(z)\n"
    )
    r = run_cli("export", f"{pkg / 'gen.py'}:G", tmp_path / "g.onnx", "--input", "z=1x8")
    assert r.exit_code == 0, r
