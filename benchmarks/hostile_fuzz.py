"""Count tracebacks and silent acceptances per class of hostile input, across the verbs and the API.

    python benchmarks/hostile_fuzz.py [--classes flips truncate crafted outputs options api recipes npz modules]
                                      [--cases 24] [--seed 0] [--timeout 60]

Every case runs in a forked child (benchmarks/forked.py: imports paid once; a segfault, a hang or
a multi-line message is seen as such) and ends as refused (one line), ok, crash (a bug) or hang.

A case says what it expects: ``refuse`` (the input is wrong: ``ok`` is a *silent acceptance*) or
``either`` (a damaged file may still be a valid model: only crashes and hangs count). Classes:

- crafted: invalid models made by hand (external-data tricks and checksums, no graph outputs, bad
  dims and tensor sizes, weights whose type the op does not take) through prune, quantize, check
  and bench; a float16 model through quantize (refused naming its type);
- outputs: every writing verb given a FIFO, a name over 255 bytes, the input through a symlink,
  a folder, a path below a file;
- flips / truncate: a small DCGAN (ConvTranspose, BatchNorm, external metadata as the exporter
  writes it) with one random byte changed, or cut at a random length, through prune, quantize
  (``--objective size`` and the default), check, bench, sensitivity, compress and ship;
- options: every numeric CLI option of every verb at hostile values (-1, 0.5, 1e30, nan, inf,
  2**70, text);
- api: every argument of every ``gencompress.<verb>`` given a value of no sensible type;
- recipes: YAML with Python tags, aliases, duplicate keys, huge ints, deep nesting, bad steps;
- npz: ``--calib-data`` / ``--inputs`` files with pickles, object arrays, NaN, wrong dtypes;
- modules: user ``file.py:Class`` generators that misbehave (raise, exit, print, return junk);
- cache: a damaged output cache (entry.json not JSON or of the wrong shape, a stored model flipped,
  truncated, a FIFO or a link to /dev/zero, the cache folder a file or a device, its cap not a
  number): every rerun must write the bytes a build writes (a wrong output counts as a traceback).

Prints each non-passing case and a table of counts per class; an input (any file the cases were
made from) that a case changed or removed is counted as lost.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from forked import forked  # noqa: E402


def cli(*args):
    """``gencompress ARGS`` in this process: (exit code, stderr)."""
    from click.testing import CliRunner

    from gencompress.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


# ---- the cases: (class, label, call, expect) -------------------------------------------------------


def small_model(folder: Path) -> Path:
    import scale

    path = scale.build_generator(4, folder / "g.onnx", external=False)
    return path


def verb_calls(m: Path, out: Path) -> dict:
    import gencompress

    return {
        "prune": lambda: gencompress.prune(m, out / "p.onnx", sparsity=0.5),
        "quantize size": lambda: gencompress.quantize(m, out / "q.onnx", objective="size", calib_size=16, eval_size=16),
        "quantize": lambda: gencompress.quantize(m, out / "q2.onnx", calib_size=16, eval_size=16, batches=(1,)),
        "check": lambda: gencompress.check(m, m, samples=8),
        "bench": lambda: gencompress.bench(m, batches=1, runs=2, warmup=0, memory=False),
        "sensitivity": lambda: gencompress.sensitivity(m, calib_size=16, eval_size=16),
        "compress": lambda: gencompress.compress(m, out / "c", samples=8, bench=False, flags={"objective": "size", "calib_size": 16}),
        "ship": lambda: gencompress.ship(m, out / "s", targets="python"),
    }


def damaged_cases(good: Path, folder: Path, rng: random.Random, n: int, kind: str) -> list:
    data = good.read_bytes()
    cases = []
    verbs = list(verb_calls(good, folder))
    for i in range(n):
        bad = bytearray(data)
        if kind == "flips":
            at = rng.randrange(len(bad))
            bad[at] ^= 1 << rng.randrange(8)
            what = f"bit {at}"
        else:
            at = rng.randrange(1, len(bad))
            bad = bad[:at]
            what = f"cut at {at}"
        path = folder / f"{kind}{i}.onnx"
        path.write_bytes(bytes(bad))
        verb = verbs[i % len(verbs)]
        out = folder / f"{kind}{i}.out"
        out.mkdir()
        cases.append((kind, f"{verb} ({what})", verb_calls(path, out)[verb], "either"))
    return cases


HOSTILE_NUMBERS = ("-1", "0.5", "1e30", "nan", "inf", str(2**70), "abc")
# option -> (verb args before it, values that are valid for it)
NUMERIC_OPTIONS = {
    "prune": ("{m} {o}/p.onnx --sparsity 0.5", {"--sparsity": (), "--min-size": ()}),
    "quantize": ("{m} {o}/q.onnx --objective size --calib-size 8 --eval-size 8",
                 {"--calib-size": (), "--eval-size": (), "--seed": (), "--percentile": (), "--block-size": (), "--target-psnr": (),
                  "--threads": (), "--batch": ()}),
    "check": ("{m} {m} --samples 8", {"--samples": (), "--seed": (), "--batch": (), "--peak": ("1e30", str(2**70))}),
    "bench": ("{m} --runs 2 --warmup 0 --batch 1 --no-memory", {"--runs": (), "--warmup": (), "--batch": (), "--threads": (), "--seed": ()}),
    "sensitivity": ("{m} --calib-size 8 --eval-size 8", {"--calib-size": (), "--eval-size": (), "--seed": (), "--percentile": (),
                                                         "--block-size": ()}),
    "compress": ("{m} {o}/c --no-bench --samples 8 --calib-size 8 --objective size",
                 {"--samples": (), "--seed": (), "--sparsity": (), "--batch": (), "--threads": (), "--calib-size": (), "--target-psnr": (),
                  "--distill": ()}),
    "distill": ("{m} {m} {o}/d.onnx --steps 2", {"--steps": (), "--batch": (), "--lr": (), "--seed": (), "--threads": ()}),
    "export": ("dcgan {o}/e.onnx", {"--opset": (), "--tolerance": ("1e30", str(2**70)), "--batch-size": ()}),
    "train": ("dcgan --out {o}/t.safetensors", {"--seed": (), "--steps": ()}),
}


def option_cases(m: Path, folder: Path) -> list:
    cases = []
    for verb, (base, options) in NUMERIC_OPTIONS.items():
        for option, valid in options.items():
            for value in HOSTILE_NUMBERS:
                if value == "0.5" and option in ("--sparsity", "--lr", "--peak", "--target-psnr", "--tolerance"):
                    continue  # a valid value there
                out = folder / f"opt-{verb}{option}{value}"[:80].replace("/", "_")
                args = [verb, *base.format(m=m, o=out).split(), option, value]
                if verb == "compress" and option in ("--target-psnr", "--distill"):
                    args.remove("--objective"), args.remove("size")
                cases.append(("options", f"{verb} {option} {value}", lambda args=args: cli(*args), "either" if value in valid else "refuse"))
    return cases


class Junk:
    """No verb takes one of these."""

    def __repr__(self):
        return "Junk()"


def api_cases(m: Path, folder: Path) -> list:
    import inspect

    import gencompress

    base = {
        "export": dict(model="dcgan", out=folder / "e.onnx", batches=(1,)),
        "train": dict(name="dcgan", out=folder / "t.safetensors", steps=1, progress=False),
        "prune": dict(in_path=m, out_path=folder / "p.onnx", sparsity=0.5),
        "quantize": dict(in_path=m, out_path=folder / "q.onnx", objective="size", calib_size=8, eval_size=8),
        "sensitivity": dict(in_path=m, calib_size=8, eval_size=8),
        "check": dict(reference=m, candidate=m, samples=8),
        "bench": dict(model=m, batches=1, runs=2, warmup=0, memory=False),
        "compress": dict(model=m, out_dir=folder / "c", samples=8, bench=False, flags={"objective": "size"}),
        "distill": dict(teacher=m, student=m, out=folder / "d.onnx", steps=2, batch=8),
        "ship": dict(model=m, out_dir=folder / "s", targets="python"),
        "sweep": dict(spec=folder / "no-such-spec.yaml", out_dir=folder / "sw"),
    }
    cases = []
    for verb, kwargs in base.items():
        fn = getattr(gencompress, verb)
        for name in inspect.signature(fn.__wrapped__).parameters:
            if verb == "sweep" and name not in ("spec", "out_dir"):
                continue  # the others reach Ray only after the spec is read
            for value in (Junk(), float("nan")):
                call = {**kwargs, name: value}
                cases.append(("api", f"{verb}({name}={value!r})", lambda fn=fn, call=call: fn(**call), "refuse"))
    # values inside the richer arguments: compress's flags and sweep, ship's web version
    from gencompress.verbs.compress import SWEEP_KEYS, default_recipe

    compress = dict(base["compress"], flags={})
    for flag in inspect.signature(default_recipe).parameters:
        if flag != "timing":
            cases.append(("api", f"compress(flags={{{flag!r}: Junk()}})", lambda f=flag: gencompress.compress(**{**compress, "flags": {f: Junk()}}), "refuse"))
    for key in SWEEP_KEYS:
        cases.append(("api", f"compress(sweep=({key!r}, [Junk()]))", lambda k=key: gencompress.compress(**{**compress, "sweep": (k, [Junk()])}), "refuse"))
    cases.append(("api", "ship(web_version='../../x')", lambda: gencompress.ship(m, folder / "s", targets="web", web_version="../../x"), "refuse"))
    return cases


RECIPES = {
    "python tag": "- pass: !!python/object/apply:os.system ['echo pwned']\n",
    "python name tag": "- pass: cleanup\n  options: !!python/name:os.system\n",
    "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                  "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
    "duplicate keys": "- pass: cleanup\n  pass: magnitude_prune\n  options: {sparsity: 0.5}\n",
    "huge int": "- pass: magnitude_prune\n  options: {sparsity: 0.5, min_size: 99999999999999999999999999999}\n",
    "float as int": "- pass: insert_qdq\n  options: {calib_size: 8.5}\n",
    "bool as number": "- pass: magnitude_prune\n  options: {sparsity: true}\n",
    "nan": "- pass: magnitude_prune\n  options: {sparsity: .nan}\n",
    "deep nesting": "- pass: cleanup\n  options: " + "[" * 5000 + "]" * 5000 + "\n",
    "not utf-8": "- pass: cl\xe9anup\n",
    "tabs": "- pass: cleanup\n\toptions: {}\n",
    "a mapping": "pass: cleanup\n",
    "empty": "",
    "null step": "- null\n",
    "unknown pass": "- pass: rm_rf\n",
    "option of another pass": "- pass: cleanup\n  options: {sparsity: 0.5}\n",
    "list as options": "- pass: magnitude_prune\n  options: [0.5]\n",
    "prune after qdq": "- pass: insert_qdq\n  options: {calib_size: 8}\n- pass: magnitude_prune\n  options: {sparsity: 0.5}\n",
    "exclude not names": "- pass: insert_qdq\n  options: {calib_size: 8, exclude: [1, 2]}\n",
    "ranges malformed": "- pass: insert_qdq\n  options: {calib_size: 8, ranges: [[a, b]]}\n",
    "date value": "- pass: magnitude_prune\n  options: {sparsity: 2001-12-14}\n",
    "binary value": "- pass: magnitude_prune\n  options: {sparsity: !!binary aGVsbG8=}\n",
    "set value": "- pass: insert_qdq\n  options: {calib_size: 8, exclude: !!set {a, b}}\n",
    "json nan": '[{"pass": "magnitude_prune", "options": {"sparsity": NaN}}]',
}


def recipe_cases(m: Path, folder: Path) -> list:
    cases = []
    for i, (label, text) in enumerate(RECIPES.items()):
        path = folder / f"r{i}.{'json' if label.startswith('json') else 'yaml'}"
        path.write_bytes(text.encode("latin-1") if label == "not utf-8" else text.encode())
        args = ["compress", m, folder / f"rc{i}", "--recipe", path, "--no-bench", "--samples", "8"]
        cases.append(("recipes", label, lambda args=args: cli(*args), "refuse"))
    return cases


def npz_cases(m: Path, folder: Path) -> list:
    import pickle

    import numpy as np

    files = {
        "object array": dict(z=np.array([object()] * 4)),
        "NaN": dict(z=np.full((4, 100, 1, 1), np.nan, np.float32)),
        "Inf": dict(z=np.full((4, 100, 1, 1), np.inf, np.float32)),
        "float64": dict(z=np.zeros((4, 100, 1, 1))),
        "complex": dict(z=np.zeros((4, 100, 1, 1), np.complex64)),
        "strings": dict(z=np.array(["a"] * 4)),
        "no samples": dict(z=np.zeros((0, 100, 1, 1), np.float32)),
        "scalar": dict(z=np.float32(1)),
        "wrong shape": dict(z=np.zeros((4, 3), np.float32)),
        "unknown name": dict(q=np.zeros((4, 100, 1, 1), np.float32)),
    }
    cases = []
    for i, (label, arrays) in enumerate(files.items()):
        path = folder / f"n{i}.npz"
        np.savez(path, **arrays)
        cases.append(("npz", f"quantize --calib-data {label}", lambda p=path, i=i: cli("quantize", m, folder / f"nq{i}.onnx", "--calib-data", p, "--objective", "size"), "refuse"))
        cases.append(("npz", f"check --inputs {label}", lambda p=path: cli("check", m, m, "--inputs", p), "refuse"))
    pickled = folder / "pickle.npz"
    pickled.write_bytes(pickle.dumps({"z": np.zeros((4, 100, 1, 1), np.float32)}))
    cases.append(("npz", "check --inputs a pickle", lambda: cli("check", m, m, "--inputs", pickled), "refuse"))
    evil = folder / "evil.npy"
    evil.write_bytes(pickle.dumps(Junk))
    cases.append(("npz", "check --inputs a pickled class (.npy)", lambda: cli("check", m, m, "--inputs", evil), "refuse"))
    return cases


MODULE_HEAD = "import torch\nfrom torch import nn\n"
GOOD_CLASS = ("class G(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.l = nn.Linear(8, 16)\n"
              "    def forward(self, z):\n        return torch.tanh(self.l(z))\n")
MODULES = {
    "raises at import": "raise RuntimeError('boom')\n",
    "sys.exit at import": "import sys\nsys.exit(3)\n",
    "KeyboardInterrupt-like": "raise SystemExit('bye')\n",
    "syntax error": "def (:\n",
    "no such class": "x = 1\n",
    "class needs arguments": "class G(nn.Module):\n    def __init__(self, width):\n        super().__init__()\n",
    "not a module": "class G:\n    pass\n",
    "forward raises": "class G(nn.Module):\n    def forward(self, z):\n        raise ValueError('nope')\n",
    "forward returns a string": "class G(nn.Module):\n    def forward(self, z):\n        return 'image'\n",
    "forward returns None": "class G(nn.Module):\n    def forward(self, z):\n        return None\n",
    "forward returns NaN": "class G(nn.Module):\n    def forward(self, z):\n        return z * float('nan')\n",
    "forward returns a dict": "class G(nn.Module):\n    def forward(self, z):\n        return {'a': z}\n",
    "input spec an int": GOOD_CLASS + "gencompress_inputs = 5\n",
    "input spec junk": GOOD_CLASS + "gencompress_inputs = ['z=axb']\n",
    "batch size junk": GOOD_CLASS + "gencompress_inputs = ['z=1x8']\ngencompress_batch_size = 'many'\n",
    "batch size huge": GOOD_CLASS + "gencompress_inputs = ['z=1x8']\ngencompress_batch_size = 10**12\n",
    "prints to stdout": GOOD_CLASS.replace("return", "print('hello')\n        return") + "gencompress_inputs = ['z=1x8']\n",
}


def module_cases(folder: Path) -> list:
    cases = []
    for i, (label, body) in enumerate(MODULES.items()):
        path = folder / f"user{i}.py"
        path.write_text(MODULE_HEAD + body)
        spec = f"{path}:G"
        extra = [] if "gencompress_inputs" in body else ["--input", "z=1x8"]
        expect = "either" if label == "prints to stdout" else "refuse"
        cases.append(("modules", label, lambda spec=spec, i=i, extra=extra: cli("export", spec, folder / f"ue{i}.onnx", *extra), expect))
    return cases


def crafted_cases(folder: Path) -> list:
    """Hand-made invalid models (external-data tricks, a graph without outputs, bad dims and
    tensors), each through prune, quantize, check and bench: every one is refused."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)

    def save(name, *, external=None, outputs=True, dims=("N", 8), raw_extra=b"", dtype=np.float32):
        sub = folder / f"crafted-{name}"
        sub.mkdir()
        w = numpy_helper.from_array(weight.astype(dtype), "W")
        w.raw_data = w.raw_data + raw_extra
        graph = helper.make_graph([helper.make_node("Gemm", ["z", "W"], ["out"])], "g",
                                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, list(dims))],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 16])] if outputs else [], [w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        if external is not None:
            (sub / "w.bin").write_bytes(weight.tobytes())
            t = model.graph.initializer[0]
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in external.items():
                t.external_data.add(key=k, value=v)
        onnx.save(model, str(sub / "g.onnx"))
        return sub / "g.onnx"

    models = {
        "external data: the folder itself": save("dot", external={"location": "."}),
        "external data: unknown key": save("key", external={"location": "w.bin", "evil": "1"}),
        "external data: outside the folder": save("out", external={"location": "../w.bin"}),
        "external data: past the end": save("end", external={"location": "w.bin", "offset": "4096"}),
        "no graph outputs": save("noout", outputs=False),
        "dimension 0": save("dim0", dims=(0, 8)),
        "dimension 2**62": save("huge", dims=(2**62, 8)),
        "raw data one byte long": save("raw", raw_extra=b"\0"),
        "external data: checksum of other bytes": save("sum", external={"location": "w.bin", "checksum": "0" * 40}),
        "external data: checksum not a digest": save("sumtext", external={"location": "w.bin", "checksum": "../w.bin"}),
        "a double weight into a float Gemm": save("double", dtype=np.float64),
        "an int32 weight into a float Gemm": save("int32", dtype=np.int32),
    }
    import gencompress

    cases = []
    for label, m in models.items():
        out = m.parent
        calls = {"prune": lambda m=m, out=out: gencompress.prune(m, out / "p.onnx", sparsity=0.5),
                 "quantize": lambda m=m, out=out: gencompress.quantize(m, out / "q.onnx", objective="size", calib_size=8, eval_size=8),
                 "check": lambda m=m: gencompress.check(m, m, samples=4),
                 "bench": lambda m=m: gencompress.bench(m, batches=1, runs=1, warmup=0, memory=False)}
        for verb, call in calls.items():
            if label.startswith("dimension") and verb == "prune":
                continue  # prune draws no inputs: the dims are not its business
            cases.append(("crafted", f"{verb} {label}", call, "refuse"))
    # a float16 model is a valid model: prune, check and bench measure it; quantize refuses it
    # naming its type (it said "nothing to quantize")
    half = folder / "crafted-half"
    half.mkdir()
    gencompress.quantize(save("half32"), half / "g.onnx", mode="fp16", eval_size=4)
    for objective in ("size", "balanced"):
        cases.append(("crafted", f"quantize --objective {objective} a float16 model",
                      lambda objective=objective: _refused_with(gencompress.quantize, "float16, not float32", half / "g.onnx", half / "q.onnx",
                                                                objective=objective, calib_size=8, eval_size=8), "refuse"))
    return cases


def _refused_with(call, fragment: str, *args, **kwargs):
    """``call`` must raise GencompressError naming ``fragment`` (a refusal for an untrue reason is a bug)."""
    from gencompress.errors import GencompressError

    try:
        call(*args, **kwargs)
    except GencompressError as e:
        if fragment not in str(e):
            raise AssertionError(f"refused for another reason: {e}") from None
        raise


def output_cases(m: Path, folder: Path) -> list:
    """Paths the tool writes: a FIFO, a name the OS refuses, the input itself through a symlink,
    the input's folder, a file where a folder should be; every verb that writes, each refused."""
    out = folder / "outputs"
    out.mkdir()
    os.mkfifo(out / "fifo.onnx")
    (out / "afile").write_text("x")
    os.symlink(m, out / "link.onnx")
    targets = {"a FIFO": out / "fifo.onnx", "a name of 300 bytes": out / ("x" * 300 + ".onnx"), "the input through a symlink": out / "link.onnx",
               "a folder": out, "below a file": out / "afile" / "o.onnx"}
    writers = {
        "prune": lambda o: cli("prune", m, o, "--sparsity", "0.5"),
        "quantize": lambda o: cli("quantize", m, o, "--objective", "size", "--calib-size", "8", "--eval-size", "8"),
        "compress": lambda o: cli("compress", m, o, "--objective", "size", "--no-bench", "--samples", "8", "--calib-size", "8"),
        "check --report": lambda o: cli("check", m, m, "--samples", "4", "--report", o),
        "ship": lambda o: cli("ship", m, o, "--target", "python"),
    }
    cases = []
    for verb, call in writers.items():
        for label, target in targets.items():
            if verb in ("compress", "check --report", "ship") and label == "a folder":
                continue  # these write into a folder: an existing one of theirs is fine
            cases.append(("outputs", f"{verb} into {label}", lambda call=call, target=target: call(target), "refuse"))
    return cases


def cache_cases(m: Path, root: Path, timeout: int) -> list:
    """A damaged or hostile output cache (verbs/output_cache.py): every rerun still writes the
    bytes a build writes (a miss), never a traceback, a hang or a wrong output. One good entry is
    made first, then each case damages a copy of it."""
    import json
    import shutil

    args = ("--objective", "size", "--calib-size", "8", "--no-check")
    good, built = root / "good", root / "built.onnx"
    root.mkdir(parents=True)
    os.environ["GENCOMPRESS_OUTPUT_CACHE"] = str(good)
    forked(lambda: cli("quantize", m, root / "first.onnx", *args), timeout)  # the entry
    os.environ["GENCOMPRESS_OUTPUT_CACHE"] = "off"
    forked(lambda: cli("quantize", m, built, *args), timeout)  # what a build writes
    os.environ.pop("GENCOMPRESS_OUTPUT_CACHE")
    key = next(p.name for p in good.iterdir() if len(p.name) == 64)

    def meta(change):
        def damage(entry):
            data = json.loads((entry / "entry.json").read_text())
            change(data)
            (entry / "entry.json").write_text(json.dumps(data))
        return damage

    def flip(entry):
        data = bytearray((entry / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 1
        (entry / "model.onnx").write_bytes(bytes(data))

    def replace(name, how):
        def damage(entry):
            target = entry / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
            how(target)
        return damage

    damages = {
        "entry.json not JSON": lambda e: (e / "entry.json").write_text("{nope"),
        "entry.json a folder": replace("entry.json", lambda t: t.mkdir()),
        "entry.json a list": lambda e: (e / "entry.json").write_text("[]"),
        "report not a dict": meta(lambda d: d.update(report=[1])),
        "files a string": meta(lambda d: d.update(files="model.onnx")),
        "file name ../x": meta(lambda d: d["files"][0].update(name="../x")),
        "size a text": meta(lambda d: d["files"][0].update(size="big")),
        "side ../../x": meta(lambda d: d.update(side="../../x")),
        "stored model one bit flipped": flip,
        "stored model truncated": lambda e: (e / "model.onnx").write_bytes((e / "model.onnx").read_bytes()[:100]),
        "stored model a FIFO": replace("model.onnx", lambda t: os.mkfifo(t)),
        "stored model a link to /dev/zero": replace("model.onnx", lambda t: os.symlink("/dev/zero", t)),
        "stored model a folder": replace("model.onnx", lambda t: t.mkdir()),
        "entry a file": lambda e: (shutil.rmtree(e), e.write_text("x")),
    }
    environments = {
        "cache folder a file": {"GENCOMPRESS_OUTPUT_CACHE": str(built)},
        "cache folder /dev/null": {"GENCOMPRESS_OUTPUT_CACHE": "/dev/null"},
        "cache folder below a file": {"GENCOMPRESS_OUTPUT_CACHE": str(built / "x")},
        **{f"cap {v}": {"GENCOMPRESS_OUTPUT_CACHE_MB": v} for v in ("nan", "-1", "1e400", "lots", "")},
    }

    def rerun(env: dict, out: Path):
        os.environ.update(env)
        code, err = cli("quantize", m, out, *args)
        if code != 0 or out.read_bytes() != built.read_bytes():
            raise AssertionError(f"exit {code}, {err.strip()[:200]}; output {'differs from a build' if code == 0 else 'missing'}")
        return code, err

    cases = []
    for i, (label, damage) in enumerate(damages.items()):
        folder = root / f"d{i}"
        shutil.copytree(good, folder)
        damage(folder / key)
        cases.append(("cache", label, lambda f=folder, i=i: rerun({"GENCOMPRESS_OUTPUT_CACHE": str(f)}, root / f"o{i}.onnx"), "either"))
    for i, (label, env) in enumerate(environments.items()):
        folder = root / f"e{i}"
        shutil.copytree(good, folder)
        cases.append(("cache", label, lambda f=folder, env=env, i=i: rerun({"GENCOMPRESS_OUTPUT_CACHE": str(f), **env}, root / f"p{i}.onnx"),
                      "either"))
    return cases


def _digest(path: Path) -> str | None:
    import hashlib

    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _digests(folder: Path) -> dict:
    """SHA-1 of every regular file under ``folder`` (the inputs the cases were made from)."""
    return {p: _digest(p) for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", nargs="*", default=["flips", "truncate", "crafted", "outputs", "options", "api", "recipes", "npz", "modules",
                                                         "cache"])
    parser.add_argument("--cases", type=int, default=24, help="damaged files per class (flips, truncate)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--tree", type=Path, help="run the package of another checkout (e.g. `git archive COMMIT | tar -x -C DIR`), "
                                                  "for a before/after count")
    args = parser.parse_args()
    if args.tree:  # the editable install maps gencompress.* to this checkout's folders: point them at the other one
        import __editable___gencompress_0_1_0_finder as finder

        here = str(Path(__file__).resolve().parent.parent)
        for name, path in finder.MAPPING.items():
            finder.MAPPING[name] = path.replace(here, str(args.tree.resolve()))

    import gencompress
    import gencompress.cli  # noqa: F401
    import gencompress.verbs.compress  # noqa: F401  (imported once, before the forks)

    for verb in ("prune", "quantize", "check", "bench", "sensitivity", "compress", "ship", "export", "distill", "train", "sweep"):
        getattr(gencompress, verb)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    print(f"gencompress from {Path(gencompress.__file__).parent.parent}, load avg {os.getloadavg()[0]:.2f} at start", flush=True)
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as cache_tmp:
        folder = Path(tmp)
        # caches of its own (plans, calibration, outputs), outside the inputs' folder: every case runs
        # the code, none reuses a user's entry
        os.environ["GENCOMPRESS_CACHE"] = str(Path(cache_tmp) / "cache")
        for name in ("GENCOMPRESS_PLAN_CACHE", "GENCOMPRESS_OUTPUT_CACHE"):
            os.environ.pop(name, None)
        m = small_model(folder)
        cases = []
        for kind in ("flips", "truncate"):
            if kind in args.classes:
                cases += damaged_cases(m, folder, rng, args.cases, kind)
        makers = {"crafted": lambda: crafted_cases(folder), "outputs": lambda: output_cases(m, folder), "options": lambda: option_cases(m, folder), "api": lambda: api_cases(m, folder), "recipes": lambda: recipe_cases(m, folder),
                  "npz": lambda: npz_cases(m, folder), "modules": lambda: module_cases(folder),
                  "cache": lambda: cache_cases(m, Path(cache_tmp) / "outputs", args.timeout)}
        for kind, make in makers.items():
            if kind in args.classes:
                cases += make()
        counts: Counter = Counter()
        inputs = _digests(folder)  # every file the cases read: none may change or go
        for kind, label, call, expect in cases:
            row = forked(call, args.timeout)
            outcome = row["outcome"]
            verdict = {"crash": "traceback", "hang": "hang"}.get(outcome) or ("silent" if outcome == "ok" and expect == "refuse" else "pass")
            lost = [p for p, digest in inputs.items() if _digest(p) != digest]
            if lost:
                verdict = "lost"
                inputs = _digests(folder)  # counted once
            counts[(kind, verdict)] += 1
            if verdict != "pass":
                detail = f"changed or gone: {', '.join(str(p.relative_to(folder)) for p in lost[:3])}" if lost else row["detail"][:240]
                print(f"  {verdict:9s} [{kind}] {label}: {outcome} {detail}", flush=True)
    classes = list(dict.fromkeys(k for k, _ in counts))
    print(f"\n{time.perf_counter() - started:.0f} s, load avg {os.getloadavg()[0]:.2f} at end")
    print("| class | cases | tracebacks | hangs | silent acceptances | inputs lost |")
    print("|---|---|---|---|---|---|")
    for kind in classes:
        total = sum(v for (k, _), v in counts.items() if k == kind)
        print(f"| {kind} | {total} | {counts[(kind, 'traceback')]} | {counts[(kind, 'hang')]} | {counts[(kind, 'silent')]} | {counts[(kind, 'lost')]} |")
    return 1 if any(v for (_, verdict), v in counts.items() if verdict != "pass") else 0


if __name__ == "__main__":
    sys.exit(main())
