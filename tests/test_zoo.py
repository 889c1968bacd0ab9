"""The shipped zoo checkpoints generate digits: recognisable, of every class, varied, on demand.

A judge fitted on 70% of the real digits (preprocessed exactly like the training data) rates
seeded samples from each generator's prior against two references it measures itself: the
held-out 30% of real digits, and junk made by superimposing two real digits of different classes.

- Confidence: the share of a sample's 10 nearest real digits that agree on its class (kNN vote).
  Logistic regression and an MLP would not do: they rate uniform noise at a median
  max-probability of 0.71 and 1.00, as high as good samples. The vote drops for anything that
  is not near real digits of one class: mean 0.95 for held-out real digits, 0.71 for
  superimposed pairs, 0.65 for noise.
- Coverage: how many distinct real digits are the nearest neighbour of 200 samples. 200
  held-out real digits reach ~180; cGANs that drew one image (or a few) per class reached 27-61,
  though the vote called those samples 0.92-0.99 confident.

Worst of seeds 0-9 for the shipped checkpoints (confidence as the fraction of the way from junk
to real, threshold 0.25; coverage relative to real, threshold 0.5): dcgan 0.39 / 0.92,
vae 0.43 / 0.91, rvae 0.72 / 0.70, cgan 0.98 / 0.90; 97.5% of cGAN samples show the requested digit.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
torch = pytest.importorskip("torch")

from gencompress.errors import GencompressError  # noqa: E402
from gencompress.inputs import sample_inputs  # noqa: E402
from gencompress.models import ZOO, data  # noqa: E402

SAMPLES = 200
SEED = 0


def flat(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


class Judge:
    """kNN over real digits of one resolution (16x16 images or 8x8 rows), with its references."""

    def __init__(self, size: int):
        from sklearn.model_selection import train_test_split
        from sklearn.neighbors import KNeighborsClassifier

        images8, labels = data.load_digits()
        x = flat(data.upscale(images8).numpy() if size == 16 else images8)
        x_fit, x_held, y_fit, y_held = train_test_split(x, labels, test_size=0.3, random_state=0, stratify=labels)
        self.knn = KNeighborsClassifier(n_neighbors=10).fit(x_fit, y_fit)
        rng = np.random.default_rng(0)
        i, j = rng.integers(len(x_held), size=(2, 1000))
        differ = y_held[i] != y_held[j]
        self.real = self.confidence(x_held)
        self.junk = self.confidence(0.5 * (x_held[i[differ]] + x_held[j[differ]]))
        self.real_coverage = self.coverage(x_held[rng.choice(len(x_held), SAMPLES, replace=False)])

    def confidence(self, x) -> float:
        return float(self.knn.predict_proba(x).max(axis=1).mean())

    def coverage(self, x) -> int:
        return len(np.unique(self.knn.kneighbors(x, n_neighbors=1, return_distance=False)))

    def predict(self, x):
        return self.knn.predict(x)


@pytest.fixture(scope="module")
def judges():
    return {16: Judge(16), 8: Judge(8)}


def judge_for(name, judges) -> Judge:
    return judges[8 if name == "rvae" else 16]


def generate(name: str, seed: int = SEED):
    """SAMPLES outputs of zoo model `name`, flattened and in [0, 1], and the inputs drawn for them."""
    entry = ZOO[name]
    inputs = sample_inputs(entry.inputs, SAMPLES, seed)
    with torch.no_grad():
        out = entry.generator()(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    if entry.output_range == 2.0:  # tanh images
        out = (out + 1) / 2
    return flat(out), inputs


def assert_confidently_digits(judge: Judge, x) -> None:
    conf = judge.confidence(x)
    # A quarter of the way from superimposed digit pairs to real digits, at least.
    assert conf >= judge.junk + 0.25 * (judge.real - judge.junk), (conf, judge.junk, judge.real)


def assert_varied(judge: Judge, x) -> None:
    counts = np.bincount(judge.predict(x), minlength=10)
    assert (counts > 0).sum() >= 8, counts  # (nearly) every class appears ...
    assert counts.max() <= 0.35 * SAMPLES, counts  # ... and none dominates
    # Not a few prototypes: samples resemble many different real digits.
    assert judge.coverage(x) >= 0.5 * judge.real_coverage, (judge.coverage(x), judge.real_coverage)


def assert_requested_digits(judge: Judge, x, inputs) -> None:
    match = np.mean(judge.predict(x) == inputs["label"])
    assert match >= 0.8, match  # the judge gets 98% of held-out real digits right


@pytest.mark.parametrize("name", ["dcgan", "vae", "rvae", "cgan"])
def test_samples_are_confidently_digits(name, judges):
    assert_confidently_digits(judge_for(name, judges), generate(name)[0])


@pytest.mark.parametrize("name", ["dcgan", "vae", "rvae", "cgan"])
def test_samples_are_varied(name, judges):
    assert_varied(judge_for(name, judges), generate(name)[0])


def test_cgan_draws_the_requested_digit(judges):
    x, inputs = generate("cgan")
    assert_requested_digits(judges[16], x, inputs)


@pytest.mark.parametrize("name", ["dcgan", "cgan"])
def test_distilled_half_width_students_still_draw_digits(name, judges, zoo_onnx, tmp_path):
    """Channel pruning 50% damages the digits (the raw dcgan student falls below the confidence
    bar); 200 distillation steps against the float model (ONNX in, ONNX out, run in onnxruntime)
    bring back students that pass every judge test above, and more confidently than the raw one."""
    import onnxruntime as ort

    import gencompress

    teacher = zoo_onnx(name)
    gencompress.prune(teacher, tmp_path / "pruned.onnx", sparsity=0.5, mode="channel")
    gencompress.distill(teacher, tmp_path / "pruned.onnx", tmp_path / "student.onnx", steps=200, batch=64)  # a test-sized run
    inputs = sample_inputs(ZOO[name].inputs, SAMPLES, SEED)
    judge = judges[16]
    x = {}
    for label in ("pruned", "student"):
        out = ort.InferenceSession(str(tmp_path / f"{label}.onnx"), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
        x[label] = flat((out + 1) / 2)  # tanh images
    assert judge.confidence(x["student"]) > judge.confidence(x["pruned"])
    assert_confidently_digits(judge, x["student"])
    assert_varied(judge, x["student"])
    if name == "cgan":
        assert_requested_digits(judge, x["student"], inputs)


def test_checkpoints_are_small_and_load_strictly():
    for entry in ZOO.values():
        assert entry.checkpoint.stat().st_size < 3_000_000
        entry.generator()  # strict load: exactly the exported module's state_dict


def test_train_smoke_is_deterministic(tmp_path):
    from gencompress.checkpoint import read_state_dict
    from gencompress.models.train import train

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    result = train("vae", out=a, seed=3, steps=2, progress=False)
    train("vae", out=b, seed=3, steps=2, progress=False)
    assert result["checkpoint"] == str(a) and result["steps"] == 2
    sa, sb = read_state_dict(a), read_state_dict(b)
    assert sa.keys() == ZOO["vae"].generator(load_weights=False).state_dict().keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]  # no temp files left


def test_train_rejects_bad_requests(tmp_path):
    from gencompress.models.train import train

    with pytest.raises(GencompressError, match="unknown zoo model"):
        train("nosuch", progress=False)
    with pytest.raises(GencompressError, match="safetensors"):
        train("vae", out=tmp_path / "w.pt", steps=1, progress=False)
    with pytest.raises(GencompressError, match="does not exist"):
        train("vae", out=tmp_path / "no" / "w.safetensors", steps=1, progress=False)
    with pytest.raises(GencompressError, match=r"--steps 0: must be 1\.\."):
        train("vae", out=tmp_path / "w.safetensors", steps=0, progress=False)
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(GencompressError, match="cannot write there"):
        train("vae", out=tmp_path / "d.safetensors", steps=1, progress=False)


def test_cli_unknown_model_is_one_line_error():
    from click.testing import CliRunner

    from gencompress.cli import main

    result = CliRunner().invoke(main, ["train", "nosuch"])
    assert result.exit_code == 2
    assert "unknown zoo model 'nosuch'" in result.output
    assert "Traceback" not in result.output
