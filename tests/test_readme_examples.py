"""Every CLI example in README.md runs (issue 26): the ``gencompress ...`` lines of every bash block.

The examples are read from the README itself, so a new one is picked up and a broken one fails
`make test`. They run in README order in one folder, as a user would type them, with the files
they name made first (``g.onnx`` is the zoo dcgan, ``my_gen.py:Generator`` + ``g.pt`` a small
user module, ``recipe.yaml`` the README's own recipe, ``spec.yaml`` a one-trial sweep). Each gets its verb's fast options
(``FAST``: few samples, few steps, no timing where the verb has that switch) and ``--json``
where the verb has it; ``train`` writes into the test folder, not the zoo's checkpoint;
``old_opset11.onnx`` is the zoo dcgan converted to opset 11. An example shown twice runs once.
``NOT_HERE`` lists the examples that cannot run here, with the reason.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# options each verb gets so that an example takes seconds, not minutes
FAST = {
    "compress": ["--samples", "8", "--no-bench"],
    "quantize": ["--eval-size", "8"],
    "sensitivity": ["--eval-size", "8"],
    "check": ["--samples", "8"],
    "bench": ["--runs", "2", "--warmup", "0", "--no-memory"],
    "distill": ["--batch", "8"],
    "train": ["--steps", "2", "--out", "dcgan.safetensors"],
}
# values of options in the examples that make them long: replaced by small ones
SMALL = {"--distill": "3", "--steps": "3"}
STATIC_ONLY = ["--calib-size", "8"]  # refused with --mode weight-only / fp16
JSON_VERBS = {"compress", "export", "prune", "distill", "quantize", "sensitivity", "check", "bench", "ship", "train", "sweep"}
# the sweep spec the example reads: one model, one untimed configuration, few samples and runs
SWEEP_SPEC = "models: [{model: g.onnx, name: g}]\nconfigs: {objective: size}\noptions: {samples: 8, batches: [1], runs: 2}\n"
# example (as written in the README) -> why it cannot run in the test suite
NOT_HERE: dict[str, str] = {
    "gencompress sweep spec.yaml out/ --address auto": "joins a running Ray cluster; the test machine has none",
}


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def cli_examples() -> list[str]:
    """The ``gencompress ...`` lines of the README's bash blocks in order (the CLI section's and
    every other's), continuations joined, comments dropped, each once."""
    examples = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["gencompress"]:
                examples.append(shlex.join(words))
    return list(dict.fromkeys(examples))


def readme_recipe() -> str:
    """The YAML recipe the CLI section shows, with its steps and calibration made small."""
    (block,) = re.findall(r"```yaml\n(.*?)```", readme_section("CLI"), flags=re.S)
    return re.sub(r"calib_size: \d+", "calib_size: 8", re.sub(r"steps: \d+", "steps: 3", block))


def fast_args(words: list[str]) -> list[str]:
    verb = words[1]
    args = [SMALL.get(prev, w) if prev in SMALL else w for prev, w in zip([""] + words, words)]
    extra = list(FAST.get(verb, []))
    static = verb in ("compress", "quantize", "sensitivity") and "--mode" not in args and "--recipe" not in args
    if static:
        extra += STATIC_ONLY
    if verb == "train":
        args = args[:3]  # the zoo checkpoint stays as shipped: --out goes to the test folder
    if verb in JSON_VERBS:
        extra.append("--json")
    return args[1:] + extra


USER_MODULE = '''
import torch


class Generator(torch.nn.Module):
    """z [N, 64], label [N] int64 in 0..9, t [N] -> image [N, 3, 8, 8] in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.fc = torch.nn.Linear(64 + 8 + 1, 3 * 8 * 8)

    def forward(self, z, label, t):
        h = torch.cat([z, self.embed(label), t.view(-1, 1)], dim=1)
        return torch.tanh(self.fc(h)).view(-1, 3, 8, 8)
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, zoo_onnx):
    """The folder the examples run in, with every file they read made first."""
    import sys

    import torch

    import gencompress

    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(zoo_onnx("dcgan"), folder / "g.onnx")
    shutil.copy(zoo_onnx("dcgan"), folder / "big.onnx")
    (folder / "my_gen.py").write_text(USER_MODULE)
    sys.path.insert(0, str(folder))
    try:
        import my_gen

        torch.manual_seed(0)
        torch.save(my_gen.Generator().state_dict(), folder / "g.pt")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("my_gen", None)
    (folder / "recipe.yaml").write_text(readme_recipe())
    (folder / "spec.yaml").write_text(SWEEP_SPEC)
    _old_opset_model(folder / "old_opset11.onnx")
    # what later examples read before an earlier one in the README writes it
    gencompress.prune(folder / "g.onnx", folder / "g.sparse.onnx", sparsity=0.5)
    gencompress.quantize(folder / "g.onnx", folder / "g.int8.onnx", objective="size", calib_size=8, eval_size=8)
    return folder


def _old_opset_model(path: Path) -> None:
    """A small generator saved at opset 11 (z [N, 16] -> Gemm -> Relu -> Gemm -> Tanh), with the
    metadata the exporter records."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
               for name, shape in (("W1", (16, 64)), ("W2", (64, 32)))]
    nodes = [helper.make_node("Gemm", ["z", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2"], ["o"]), helper.make_node("Tanh", ["o"], ["image"])]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 32])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    helper.set_model_props(model, {"gencompress.inputs": json.dumps([{"name": "z", "shape": [1, 16], "dtype": "float32"}]),
                                   "gencompress.output_range": "2.0"})
    onnx.save(model, str(path))


def test_readme_has_cli_examples():
    examples = cli_examples()
    assert len(examples) >= 30, examples  # the parser still finds them
    for verb in ("compress", "quantize"):  # the target search through both verbs (a crash there went unseen once)
        assert any(e.startswith(f"gencompress {verb} ") and "--target-psnr" in e for e in examples), verb
    assert set(NOT_HERE) <= set(examples)  # a reason for an example that is gone is stale


@pytest.mark.parametrize("example", cli_examples())
def test_readme_cli_example(example, workdir, run_cli, monkeypatch):
    if example in NOT_HERE:
        pytest.skip(NOT_HERE[example])
    monkeypatch.chdir(workdir)
    args = fast_args(shlex.split(example))
    r = run_cli(*args)
    assert r.exit_code == 0, (args, r)
    if "--json" in args:
        json.loads(r.stdout)  # machine-readable, nothing else on stdout
