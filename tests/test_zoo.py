"""The shipped zoo checkpoints generate digits: recognisable, of every class, varied, on demand.

A k-nearest-neighbour classifier fitted on the real digits (preprocessed exactly like the
training data) judges seeded samples from each generator's prior. Its confidence is the share
of a sample's 10 nearest real digits that agree on its class. Unlike logistic regression or an
MLP, which are as sure about uniform noise (median max-probability 0.71 and 1.00 here) as about
real digits, this vote drops for anything that is not close to real digits of one class:

    mean confidence (16x16)   held-out real 0.95   blend of two digits 0.71   noise 0.65   shifted digit 0.64
    mean confidence (8x8)     held-out real 0.96   blend of two digits 0.72   noise 0.61   shifted digit 0.69

Thresholds sit between those references (measured in the tests themselves, not hard-coded).
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


class Judge:
    """A kNN classifier over real digits of one resolution, with real and junk references."""

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
        # Superimposed digits of two classes: digit-like strokes but no single class.
        self.junk = self.confidence(0.5 * (x_held[i[differ]] + x_held[j[differ]]))
        self.real_spread = spread(x, labels)

    def confidence(self, x) -> float:
        return float(self.knn.predict_proba(x).max(axis=1).mean())

    def predict(self, x):
        return self.knn.predict(x)


def flat(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def spread(x, classes) -> float:
    """Mean over classes of the mean pixel distance between two samples of that class."""
    from sklearn.metrics import pairwise_distances

    per_class = []
    for k in np.unique(classes):
        members = x[classes == k]
        if len(members) > 1:
            per_class.append(pairwise_distances(members).sum() / (len(members) * (len(members) - 1)))
    return float(np.mean(per_class))


@pytest.fixture(scope="module")
def judges():
    return {16: Judge(16), 8: Judge(8)}


def generate(name: str, seed: int = SEED):
    """Samples of zoo model `name` in [0, 1], flattened, and the inputs they came from."""
    entry = ZOO[name]
    inputs = sample_inputs(entry.inputs, SAMPLES, seed)
    with torch.no_grad():
        out = entry.generator()(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    if entry.output_range == 2.0:  # tanh images
        out = (out + 1) / 2
    return flat(out), inputs


@pytest.mark.parametrize("name", ["dcgan", "vae", "rvae", "cgan"])
def test_samples_are_confident_digits(name, judges):
    judge = judges[8 if name == "rvae" else 16]
    x, _ = generate(name)
    conf = judge.confidence(x)
    # Much closer to real digits than to superimposed pairs of digits.
    assert conf >= judge.junk + 0.3 * (judge.real - judge.junk), (conf, judge.real, judge.junk)


@pytest.mark.parametrize("name", ["dcgan", "vae", "rvae", "cgan"])
def test_samples_are_varied(name, judges):
    judge = judges[8 if name == "rvae" else 16]
    x, inputs = generate(name)
    predicted = judge.predict(x)
    counts = np.bincount(predicted, minlength=10)
    assert (counts > 0).sum() >= 8, counts  # (nearly) every class appears ...
    assert counts.max() <= 0.35 * SAMPLES, counts  # ... and none dominates
    # Not one prototype per class: samples of a class differ about as much as real ones do.
    classes = inputs["label"] if name == "cgan" else predicted
    assert spread(x, classes) >= 0.5 * judge.real_spread, (spread(x, classes), judge.real_spread)


def test_cgan_draws_the_requested_digit(judges):
    x, inputs = generate("cgan")
    match = np.mean(judges[16].predict(x) == inputs["label"])
    assert match >= 0.8, match  # held-out real digits: 0.98


def test_checkpoints_are_small_and_load_strictly():
    for entry in ZOO.values():
        assert entry.checkpoint.stat().st_size < 3_000_000
        entry.generator()  # strict load: exactly the exported module's state_dict


def test_train_smoke_is_deterministic(tmp_path):
    from gencompress.exporter.checkpoint import read_state_dict
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
    with pytest.raises(GencompressError, match="positive"):
        train("vae", out=tmp_path / "w.safetensors", steps=0, progress=False)


def test_cli_unknown_model_is_one_line_error():
    from click.testing import CliRunner

    from gencompress.cli import main

    result = CliRunner().invoke(main, ["train", "nosuch"])
    assert result.exit_code == 2
    assert "unknown zoo model 'nosuch'" in result.output
    assert "Traceback" not in result.output
