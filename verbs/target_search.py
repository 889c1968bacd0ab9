"""A fidelity target in one command: build the candidate configurations, measure each (PSNR on
held-back inputs, size, speed against float), keep the best for the objective that meets the
target (``compress --target-psnr``)."""

from __future__ import annotations

from typing import Callable

from gencompress.errors import GencompressError
from gencompress.runtime_check.fidelity import Evaluator
from gencompress.verbs.int8_plan import DEFAULT_BATCHES, DEFAULT_THREADS, NOISE, fmt_ratios, geomean, interleaved_timer
from gencompress.verbs.quantize import quantize
from gencompress.verbs.quantizers import eval_inputs

# Hook for stages that make more candidates (e.g. pruning + distillation, once they exist):
# each is called as ``hook(reference_path, folder, target_psnr, log)`` and returns
# ``[(label, model_path), ...]``; the candidates join the search like the built-in ones.
CANDIDATE_HOOKS: list[Callable] = []


def target_candidates(objective: str, has_convtranspose: bool) -> list[tuple[str, dict]]:
    """(label, gencompress.quantize keyword arguments) of the configurations the search tries."""
    plans = [objective] if objective == "balanced" else [objective, "balanced"]
    out = [(f"int8 plan ({o})", {"objective": o}) for o in plans if o != "size"]
    out += [(f"int8 plan ({o}) + damaging layers in float", {"objective": o, "target_psnr": None}) for o in plans if o != "size"]
    out.append(("int8 every layer", {"objective": "size"}))
    if has_convtranspose:
        out.append(("int8 every layer, rewrites off", {"objective": "size", "rewrite": False}))
    out += [
        ("weight-only int8 (folded at load)", {"mode": "weight-only", "bits": 8, "objective": "balanced"}),
        ("weight-only int4", {"mode": "weight-only", "bits": 4, "objective": "size"}),
        ("fp16 weights", {"mode": "fp16", "objective": "size"}),
    ]
    return out


def choose_candidate(rows: list[dict], target: float, objective: str, noise: float = NOISE) -> tuple[dict | None, str]:
    """The best row meeting ``target`` dB for ``objective`` (rows: label, bytes, psnr (inf for
    identical), ratios {batch: p50 / float p50}); None and why when none meets it."""
    ok = [r for r in rows if r["psnr"] >= target]
    if not ok:
        best = max(rows, key=lambda r: r["psnr"])
        return None, f"target {target:g} dB cannot be met: the closest is {best['label']} at {best['psnr']:.2f} dB"
    fastest = lambda r: (geomean(r["ratios"]), r["bytes"])  # noqa: E731
    if objective == "speed":  # the fastest, or a smaller one within timing noise of it
        best = min(geomean(r["ratios"]) for r in ok)
        pick = min((r for r in ok if geomean(r["ratios"]) <= best * (1.0 + noise)), key=lambda r: (r["bytes"], geomean(r["ratios"])))
    elif objective == "size":
        pick = min(ok, key=lambda r: (r["bytes"], geomean(r["ratios"])))
    else:
        safe = [r for r in ok if max(r["ratios"].values()) <= 1.0 + noise]
        pick = min(safe, key=lambda r: (r["bytes"], geomean(r["ratios"]))) if safe else min(ok, key=fastest)
    return pick, f"target {target:g} dB met by {pick['label']} ({pick['psnr']:.2f} dB, {fmt_ratios(pick['ratios'])} float speed, objective {objective})"


def search_target(reference_path, folder, *, target: float, objective: str, seed: int = 0, calib_size=None,
                  timing: dict | None = None, timer=None, log=lambda m: None) -> dict:
    """Try the configurations of ``target_candidates`` (and the ``CANDIDATE_HOOKS``), measure PSNR
    (held-back latents), size and speed (one interleaved run, all candidates beside float), and
    pick per ``choose_candidate``. Returns ``{"chosen": path or None, "rows": [...], "message"}``."""
    from pathlib import Path

    from gencompress.onnx_io import load_model

    timing = dict(timing or {})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reference = load_model(reference_path)
    has_convt = any(n.op_type == "ConvTranspose" for n in reference.graph.node)
    timer = timer or interleaved_timer(reference, provider=timing.get("provider", "CPUExecutionProvider"),
                                       threads=timing.get("threads", DEFAULT_THREADS), batches=tuple(timing.get("batches", DEFAULT_BATCHES)), seed=seed)
    made, met = [], set()
    for i, (label, kwargs) in enumerate(target_candidates(objective, has_convt)):
        if "target_psnr" in kwargs:
            if kwargs["objective"] in met:
                continue  # the plan alone meets the target: nothing to keep in float
            kwargs = {**kwargs, "target_psnr": target}
        path = folder / f"candidate{i}.onnx"
        log(f"candidate {label} ...")
        static = kwargs.get("mode", "static") == "static"
        try:
            report = quantize(reference_path, path, seed=seed, calib_size=calib_size if static else None, timer=timer if static else None, **kwargs)
        except GencompressError as e:  # e.g. nothing for int4 to quantize: the others still count
            log(f"  skipped: {e}")
            continue
        made.append((label, path))
        if label.startswith("int8 plan") and "target_psnr" not in kwargs and (report["psnr_db"] is None or report["psnr_db"] >= target):
            met.add(kwargs["objective"])
    for hook in CANDIDATE_HOOKS:
        made += hook(reference_path, folder, target, log)
    evaluator = Evaluator(reference, eval_inputs(reference, seed))
    protos = [load_model(p) for _, p in made]
    ratios = timer(protos)
    rows = [{"label": label, "path": str(path), "bytes": path.stat().st_size, "psnr": evaluator.psnr(proto), "ratios": r}
            for (label, path), proto, r in zip(made, protos, ratios)]
    if not rows:
        raise GencompressError("--target-psnr: no configuration could be built for this model")
    pick, message = choose_candidate(rows, target, objective)
    for r in rows:
        r["chosen"] = r is (pick or max(rows, key=lambda x: x["psnr"]))
        r["meets_target"] = r["psnr"] >= target
    closest = pick or max(rows, key=lambda r: r["psnr"])
    return {"chosen": closest["path"], "met": pick is not None, "rows": rows, "message": message, "target_psnr": target, "objective": objective}
