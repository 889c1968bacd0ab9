"""Measure, then decide: which layers run int8 kernels, and in what form float layers store weights.

onnxruntime runs an int8 layer fast only when the int8 kernel saves more than the data movement
around it costs (Q/DQ, the Transposes around its channels-last int8 Conv, the DepthToSpace/Slice
of a rewritten ConvTranspose); on small layers at batch 1 it often does not. So, per layer, we
time the model with the layer in int8 and with it in float, interleaved with the float model in
one process (``runtime_check.latency.time_interleaved``, sessions from
``runtime_check.sessions``, spinning off), on the chosen execution provider, batch sizes and
thread count, and keep int8 only where it pays.

A layer computed in float still stores its weights as int8: ``Cast(int8) * scale`` on constants
(``cast_mul_weights``). onnxruntime constant-folds that into a float initializer at load (and
pre-packs it like any float weight), whereas it never folds a DequantizeLinear (kept for its QDQ
fusions), which then runs on every call: measured on the zoo vae, weight-only int8 with
DequantizeLinear ran at 0.55x/0.73x float (batch 1/64), with Cast*Mul at 0.98x/1.02x; the rvae's
GRU weights behind a DequantizeLinear at 0.76x, as Cast*Mul at 1.0x.

Objectives (``OBJECTIVES``):
  speed     a layer is int8 when that lowers the model's time (geometric mean over the batches);
            of {planned, all int8, no int8}, the fastest is kept.
  balanced  (default) a layer is int8 unless that is slower beyond ``NOISE`` at some batch size
            (a tie keeps int8, the smaller form); the result must not be slower than float beyond
            ``NOISE`` at any batch size, else no layer computes in int8 (weights still int8,
            folded at load); of the plan, all-int8 and no-int8 (those within ``SIZE_SLACK`` of
            the smallest), the one with the most int8 layers is kept unless another is faster
            beyond ``NOISE``.
  size      every layer int8, nothing timed (the most quantized model; weights behind
            DequantizeLinear, the standard QDQ form).

The timer is injected (``plan_layers(measure=...)``), so the decision logic is tested with
stubbed measurements.

Cheap first (``predict_groups``): each group's layer is timed alone, float against its int8
form as the whole build makes it, on its own shapes; a group clearly faster in int8 alone, or
too small a part of the model to slow it beyond noise (balanced), is decided without timing the
whole model; only the others go through the greedy steps. Kernel timings are kept per machine
kind (``plan_cache.KernelCache``), so layers seen before are not timed alone again. Then the
plan is timed beside float, one configuration at a time (``plan_layers``), unless isolation
decided every group and that timing would cost more than ``GUARD_SECONDS``. A model file over
``ISOLATE_BYTES`` is first planned on its streamed form (``predicted_plan``, called by quantize):
decided alone, it is built by the one streamed build, never timed whole (no float session).

What planning costs besides the timing: a configuration built only to be timed skips the
search for int8 weight values safe on kernels without VNNI (the same graph and shapes run the
same kernels at the same cost; the chosen model is built once more with it); at most
``KEEP_BUILDS`` configurations stay built (each holds the weights once more), the others are
remembered by size; the interleaved timer builds each model when it makes its session. A model
whose plan would not fit in memory (``plan_memory_note``) is not planned. A plan is kept on disk (``plan_cache``) by model content, options and machine
kind (int8 kernel path, onnxruntime version, threads): a second run reuses it without timing and
writes the same bytes. The plan says what it was timed on (``PlanResult.timed_on``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir

from gencompress.errors import GencompressError
from gencompress.onnx_io import collect_cycles
from gencompress.passes.fold_weights import cast_mul_weights
from gencompress.passes.insert_qdq import StaticOptions
from gencompress.passes.registry import GencompressPass, register

OBJECTIVES = ("balanced", "speed", "size")
DEFAULT_OBJECTIVE = "balanced"
SIZE_SLACK = 0.10  # balanced: a faster model this much larger than the smallest not-slower one still counts as small
NOISE = 0.05  # relative timing noise we do not act on (interleaved p50 ratios move this much under load)
DEFAULT_BATCHES = (1, 64)
DEFAULT_THREADS = 2
TARGET_SLOT_SECONDS = 0.25  # timed seconds per model and batch size in one measurement
STEP_GROUPS = 3  # groups flipped against the same plan in one measurement (1.33 models timed per group instead of 2)
MIN_RUNS = 5  # timed runs per model and batch size at least (a slow model's runs each average out more noise)
# a group is decided from its layer timed in isolation (``predict_groups``) when int8 is this much faster at
# every batch (balanced; speed: on the geometric mean), otherwise timed in context. Never "float" from
# isolation: alone, an int8 layer pays Q/DQ and layout Transposes that chained int8 layers share in
# context (the zoo dcgan's first layer: 0.11x alone at batch 1, int8 pays in context).
# Set from benchmarks/plan_cost.py --agreement (README: what the plan costs).
CLEAR_FASTER = 0.10
SIZE_BUDGET = 1.2  # balanced: a chosen model larger than this times the every-layer-int8 one says so in its message
ISOLATED_SECONDS = 0.15  # timed seconds per form and batch size of an isolated layer
ISOLATED_MIN_RUNS = 3
# above this estimated cost of timing the plan beside float in the whole model (``guard_seconds``), a
# plan every group of which isolation decides is not timed in the model (benchmarks/plan_cost.py)
GUARD_SECONDS = 10.0
# the greedy steps in the model stop before they would pass this (each step builds and times whole models); the
# groups left are decided untimed, the final measurement beside float still runs (plan_layers' ``budget``)
PLAN_BUDGET_SECONDS = 40.0
# an isolated layer at a larger batch is timed at the batch whose float run takes about this (0.05 until session 6:
# RRDB's 64-channel 3x3 Convs were timed at batch 64, 0.2-0.4 s a layer of the plan's ~3 s; their int8 kernels are
# full at batch 16 or so, 16K output rows; 0.02 until session 7: RRDB's 7 heavier layers' batch-64 runs were 1.0 of the
# 1.5 s its layers took alone, their gains at 16-32 within noise of 64 (gan, style too); no group's isolated verdict moved
# beyond the flips sub-millisecond layers show between runs of the same code, 6 interleaved rounds of 6 models, load 1.4-9)
ISOLATED_RUN_SECONDS = 0.01
# a model whose float run at a batch would take over this is timed at the batch that takes about this, but at no
# smaller batch than MODEL_MIN_BATCH: its kernels are full there (every layer int8 against float at 16 / 64: RRDB
# 2.76x / 2.87x, the Upsample GAN 3.11x / 3.59x, the style net 2.90x / 2.99x, SRGAN 2.37x / 2.93x, ESPCN 2.12x /
# 2.46x; benchmarks/stand_in_batch.py, load 2.3-5), while a weight-bound layer's int8 gain still changes below it (the
# 47M DCGAN's first layer). Batch 64's runs were most of RRDB's whole-model timing (0.4-0.7 s a float run)
MODEL_RUN_SECONDS = 0.1
MODEL_MIN_BATCH = 16


def stand_in_batch(batch: int, sample_seconds: float) -> int:
    """The batch a model is timed at in place of ``batch`` (larger than the smallest planned), its
    float run taking ``sample_seconds`` a sample: the batch whose run takes about ``MODEL_RUN_SECONDS``,
    at least ``MODEL_MIN_BATCH`` (or ``batch`` itself when smaller), at most ``batch``."""
    return int(np.clip(MODEL_RUN_SECONDS / max(sample_seconds, 1e-12), min(batch, MODEL_MIN_BATCH), batch))
ISOLATE_BYTES = 20e6  # with fewer groups than a greedy step takes, layers are timed alone only in models larger than this
ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "Elu", "Selu", "HardSwish"})

Ratios = dict  # {batch: model p50 / float p50}


# peak memory of a timed plan per byte of the model file (float session, one candidate, the prepared
# model and a build; benchmarks/plan_cost.py) and what the process holds besides
PLAN_PEAK_PER_FILE_BYTE = 12
PLAN_PEAK_FIXED = 0.3e9


def model_bytes(model) -> int:
    """A model's size: its files on disk (a path), its tensors (an onnx_ir model or a proto), or
    the bytes themselves (an int)."""
    import os

    from gencompress.onnx_io import model_files, tensor_bytes

    if isinstance(model, int):
        return model
    if isinstance(model, (str, os.PathLike)):
        return sum(f.stat().st_size for f in model_files(model) if f.is_file())
    return tensor_bytes(model)


def plan_memory_note(model) -> str | None:
    """A one-line note when timing a plan of ``model`` (a path or a model: ``model_bytes``) would
    not fit in the memory available now (``onnx_io.free_memory``; unknown: never): quantize and
    the plan_int8 step then build every layer int8 untimed instead. None when it fits."""
    from gencompress.onnx_io import free_memory

    file = model_bytes(model)
    need = file * PLAN_PEAK_PER_FILE_BYTE + PLAN_PEAK_FIXED
    available = free_memory()
    if available is None or need <= available * 0.8:
        return None
    return (f"note: timing an int8 plan of this {file / 1e6:.0f} MB model would take about {need / 2**30:.1f} GiB of memory"
            f" ({available / 2**30:.1f} GiB available): every layer int8 instead, not timed (as --objective size)")


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise GencompressError(f"--objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    return objective


# ---- the decision (pure: measurements in, choice out) -------------------------------------------


def geomean(ratios: Ratios) -> float:
    return math.exp(sum(math.log(r) for r in ratios.values()) / len(ratios))


def int8_pays(with_int8: Ratios, without: Ratios, objective: str, noise: float = NOISE) -> bool:
    """Keep a layer in int8? ``with_int8`` / ``without``: the model's time ratios to float with the
    layer in int8 / in float (the rest as currently planned)."""
    gain = {b: without[b] / with_int8[b] for b in with_int8}  # > 1: int8 is faster
    if objective == "speed":
        return geomean(gain) >= 1.0
    return min(gain.values()) >= 1.0 - noise  # a tie keeps int8: it is the smaller form


def fmt_ratios(ratios: Ratios) -> str:
    return ", ".join(f"b{b} {1 / r:.2f}x" for b, r in sorted(ratios.items()))


@dataclass
class PlanResult:
    int8: frozenset  # layer names that compute in int8
    ratios: Ratios  # measured, of the chosen configuration
    layers: list[dict] = field(default_factory=list)  # per layer: choice and measured reason
    configs: list[dict] = field(default_factory=list)  # every configuration measured
    message: str = ""
    timed_on: dict = field(default_factory=dict)  # machine kind and settings of the timing (ISA, onnxruntime, threads, ...)
    cached: str | None = None  # the plan cache entry it was read from, when it was not timed in this run
    route: str = "timed in the model"  # or ROUTE_ALONE, ROUTE_MEMORY, ROUTE_SIZE: how the plan was reached


ROUTE_ALONE = "decided alone"  # every group decided from its layer timed alone; the model not timed whole
ROUTE_MEMORY = "untimed: memory"  # a timed plan would not fit in memory: every layer int8 (plan_memory_note)
ROUTE_SIZE = "untimed: objective size"


def choose_final(finals: list[frozenset], measured: dict, objective: str, noise: float, size, none: frozenset) -> tuple[frozenset, str]:
    """The configuration ``plan_layers`` returns, of the plan, all-int8 and no-int8 measured side by
    side (see there), and the message that says why."""
    if objective == "speed":
        chosen = min(finals, key=lambda c: geomean(measured[c]))
        message = f"fastest measured: {fmt_ratios(measured[chosen])} float speed"
    else:
        safe = [c for c in finals if max(measured[c].values()) <= 1.0 + noise]
        if safe and size is not None:  # smallest within "not slower": sizes within SIZE_SLACK count as equal
            smallest = min(size(c) for c in safe)
            safe = [c for c in safe if size(c) <= smallest * (1.0 + SIZE_SLACK)]
        chosen = none
        if safe:  # the most int8 (the smaller form), unless another one is faster beyond noise
            preferred = max(safe, key=lambda c: (len(c), -size(c) if size is not None else 0))
            fastest = min(safe, key=lambda c: geomean(measured[c]))
            chosen = fastest if geomean(measured[fastest]) < geomean(measured[preferred]) * (1.0 - noise) else preferred
        message = (f"not slower than float beyond {noise:.0%} at any batch: {fmt_ratios(measured[chosen])} float speed" if safe
                   else f"every configuration was slower than float beyond {noise:.0%}; no int8 compute ({fmt_ratios(measured[none])})")
    return chosen, message


def predicted_choice(gain: Ratios | None, objective: str, negligible: bool = False) -> str | None:
    """"int8" when a group's isolated gain (``{batch: float time / int8 time}`` of its layer alone)
    is clear beyond ``CLEAR_FASTER``, else None (time it in context). An isolated int8 layer pays
    the Q/DQ (and layout Transposes) at both its edges, which chained int8 layers share in context:
    isolation is close to the worst case for int8, so a layer clearly faster alone is faster in
    context, while one slower alone may still pay in context (never "float" from here). ``negligible``
    (balanced): the group in int8, even as timed alone, costs the model at most half the noise
    band at every batch (``predict_groups``): a tie, which keeps int8."""
    if not gain:
        return None
    g = geomean(gain) if objective == "speed" else min(gain.values())
    if g >= 1.0 + CLEAR_FASTER or (negligible and objective == "balanced"):
        return "int8"
    return None


def plan_layers(layers: list[str], measure: Callable[..., list[Ratios]], objective: str, noise: float = NOISE,
                size: Callable[[frozenset], int] | None = None, groups: list[list[str]] | None = None,
                predicted: list[Ratios | None] | None = None, negligible: list[bool] | None = None,
                untimed: str | None = None, follows: list[bool] | None = None, budget: float | None = None,
                clock: Callable[[], float] = time.perf_counter) -> PlanResult:
    """Choose the layers that compute in int8.

    ``measure(configs, reference=True, give_up=None)`` times each configuration (a frozenset of int8
    layer names) interleaved and returns, per configuration, ``{batch: p50 / float p50}``; with
    ``reference=False`` it may leave the float model out and return ratios to the first
    configuration instead (the greedy steps compare configurations with each other, not with float);
    ``give_up(*ratios so far)`` true after a batch size: the other batch sizes may be left out
    (balanced: int8 already lost at batch 1, the larger, slower batches need no timing).
    ``groups``: layers decided together (``layer_groups``: the same op on the same shapes runs the
    same kernel at the same cost); default one group per layer.
    ``predicted``: per group, its layer's isolated gain (``predict_groups``) or None, and
    ``negligible``, whether it cannot move the model's time beyond noise; a clear one
    (``predicted_choice``) decides the group without timing it in context.
    Greedy, over the groups not decided so (``_greedy``): more than ``STEP_GROUPS`` of them are
    first timed as one block, the plan as it stands beside it with the whole block in float; a
    block whose int8 pays keeps int8 at once, one that does not is halved; ``STEP_GROUPS`` groups
    or fewer: time the plan as it stands and, beside it, the plan with each of those groups in
    float (one interleaved run, so load drift hits them alike); keep each group's better form per
    the objective. ``budget`` (seconds of ``clock``): once the next step would take the greedy
    steps beyond it (its cost estimated from the steps so far), the groups left are decided
    untimed (int8, or float where their block measured float) and the message says so.
    Then the plan, all-int8 and no-int8 against float, one at a time (two models alive), and the
    pick per the objective; balanced: of those not slower than float beyond ``noise`` whose
    ``size(config)`` (bytes) is within ``SIZE_SLACK`` of the smallest, the one with the most int8
    layers, unless another is faster than it beyond ``noise`` (then the fastest). No-int8 runs the
    float model's kernels (its int8 weights are folded into float at load): it is taken as 1.0x
    float and timed only when the pick would fall on it.
    ``follows``: per group, a weightless one between int8 layers (``followers``): int8 untimed.
    ``untimed``: when every group is decided from isolation, nothing is timed in the model: every
    layer int8, with this said in the message (the whole model's timing would cost more than the
    plan may: ``guard_seconds``).
    """
    check_objective(objective)
    full, none = frozenset(layers), frozenset()
    if objective == "size" or not layers:
        return PlanResult(full, {}, [{"node": n, "choice": "int8", "reason": "objective size: every layer int8 (not timed)"} for n in layers],
                          route=ROUTE_SIZE)
    configs: list[dict] = []

    def timed(*candidates, reference=True, **kwargs):
        results = measure(list(candidates), reference=reference, **kwargs)
        for c, r in zip(candidates, results):
            configs.append({"int8": sorted(c), "vs": "float" if reference else "first", "ratios": {str(b): round(v, 4) for b, v in r.items()}})
        return results

    units = groups or [[n] for n in layers]
    rows, undecided = isolated_rows(units, predicted, negligible, objective, follows)
    order = {n: i for i, n in enumerate(layers)}
    if untimed and not undecided:
        rows.sort(key=lambda r: order[r["node"]])
        return PlanResult(full, {}, rows, configs, untimed, route=ROUTE_ALONE)
    current, left = _greedy(undecided, rows, timed, full, objective, noise, budget, clock)
    rows.sort(key=lambda r: order[r["node"]])
    measured = _measure_finals(timed, current, full, none, objective, noise, size)
    chosen, message = choose_final(list(measured), measured, objective, noise, size, none)
    if left:
        message += f"; {left}"
    if objective == "balanced" and size is not None and chosen != full and size(chosen) > SIZE_BUDGET * size(full):
        message += (f"; {size(chosen) / size(full):.2f}x the size of every layer in int8 (over the {SIZE_BUDGET:g}x budget),"
                    " kept because every layer in int8 was slower than float")
    if chosen != current:
        for row in rows:
            choice = "int8" if row["node"] in chosen else "float"
            if choice != row["choice"]:
                row["choice"] = choice
                row["reason"] += (f"; overridden: the whole plan with {'all' if chosen == full else 'no'} layers in int8 measured"
                                  f" {'faster' if objective == 'speed' else 'not slower and is smaller, or faster'}")
    return PlanResult(chosen, measured[chosen], rows, configs, message)


def _greedy(undecided: list[tuple], rows: list[dict], timed, full: frozenset, objective: str, noise: float,
            budget: float | None, clock) -> tuple[frozenset, str]:
    """The greedy steps of ``plan_layers`` over ``undecided`` [(group, isolated gain)]: rows appended
    to ``rows``; returns (the plan, a note on the groups the budget left untimed, or "").
    Blocks: more than ``STEP_GROUPS`` groups are timed as one block, the plan as it stands beside it
    with the whole block in float. Its int8 paying (a tie keeps int8) decides every group of it in
    one comparison; else it is halved. A half of a block that measured faster in float keeps int8
    only where int8 is not slower at all (ties within the noise band, summed over many groups, are
    what made the block slower); a half slower within the noise band is float as a whole, one
    slower beyond it is halved again. DenseNet-121: 120 Concat and BatchNorm Mul groups, each a
    fraction of a percent of the model, measured noise one by one in 160 whole-model builds, while
    the 120 in float made the model 1.19-1.24x faster (load 3.5-5.3)."""
    current = full
    work = [(undecided, None)] if undecided else []  # (groups, "float" when the block they came from measured float faster)
    spent, configs = 0.0, 0

    def hopeless(with_int8: Ratios, *flips: Ratios) -> bool:
        """balanced: for every group of the step, int8 is already slower beyond noise at one batch
        size; the other batch sizes cannot save it."""
        return objective == "balanced" and all(any(f[b] / with_int8[b] < 1.0 - noise for b in with_int8) for f in flips)

    while work:
        step, prior = work[0]
        block = len(step) > STEP_GROUPS
        cost = 2 if block else len(step) + 1
        if budget is not None and configs and spent + spent / configs * cost > budget:
            return current - _untimed_rows(work, rows, spent, budget), _budget_note(work, spent, budget)
        work.pop(0)
        started = clock()
        band = 0.0 if prior == "float" else noise  # within a block that lost, a tie is no reason for int8
        if block:
            names = frozenset(n for g, _ in step for n in g)
            with_int8, without = timed(current, current - names, reference=False, give_up=hopeless)
            what = f" (decided as one block of {len(step)} groups)"
            if int8_pays(with_int8, without, objective, band):
                _context_rows(rows, step, with_int8, without, True, what)
            elif prior == "float" and int8_pays(with_int8, without, objective, noise):
                _context_rows(rows, step, with_int8, without, False, what + ", part of a block faster in float")
            else:  # halves, each timed against the plan as it stands
                work[:0] = [(step[:len(step) // 2], "float"), (step[len(step) // 2:], "float")]
        else:
            with_int8, *flips = timed(current, *(current - set(g) for g, _ in step), reference=False, give_up=hopeless)
            for item, without in zip(step, flips):
                _context_rows(rows, [item], with_int8, without, int8_pays(with_int8, without, objective, band))
        spent, configs = spent + clock() - started, configs + cost
        current = current - {r["node"] for r in rows if r["choice"] == "float"}
    return current, ""


def _context_rows(rows: list[dict], step: list[tuple], with_int8: Ratios, without: Ratios, keep: bool, block: str = "") -> None:
    """Rows of groups decided in the model (``keep``: int8), with the model's gain from their int8
    form beside the rest of the plan as it stands."""
    gain = {b: without[b] / with_int8[b] for b in with_int8}
    for group, isolated in step:
        together = f" (decided with {len(group) - 1} more of its shape)" if len(group) > 1 and not block else block
        reason = (f"int8 {'pays' if keep else 'does not pay'}: the model runs "
                  + ", ".join(f"b{b} {g:.2f}x" for b, g in sorted(gain.items())) + f" as fast with it in int8 as in float{together}")
        for name in group:
            row = {"node": name, "choice": "int8" if keep else "float", "reason": reason, "decided": "in context",
                   "int8_gain": {str(b): round(g, 3) for b, g in gain.items()}}
            if isolated:
                row["isolated_gain"] = {str(b): round(g, 3) for b, g in isolated.items()}
            rows.append(row)


def _untimed_rows(work: list[tuple], rows: list[dict], spent: float, budget: float) -> set:
    """Rows of the groups the budget left untimed: int8 (balanced: a tie keeps int8, and the final
    measurement of the plan beside every layer int8 and float still applies), float where the
    block they came from measured float. Returns the float layers."""
    floating = set()
    for step, prior in work:
        choice = prior or "int8"
        reason = (f"not timed in the model: the plan's in-model timing budget ({budget:.0f} s, {spent:.0f} s spent) ran out; "
                  + ("its block measured faster in float" if choice == "float" else "int8 (a tie keeps int8)"))
        for group, isolated in step:
            for name in group:
                rows.append({"node": name, "choice": choice, "reason": reason, "decided": "budget",
                             **({"isolated_gain": {str(b): round(g, 3) for b, g in isolated.items()}} if isolated else {})})
                if choice == "float":
                    floating.add(name)
    return floating


def _budget_note(work: list[tuple], spent: float, budget: float) -> str:
    n = sum(len(step) for step, _ in work)
    return f"{n} layer group(s) decided untimed: the in-model timing budget ({budget:.0f} s) was spent ({spent:.0f} s)"


FOLLOWS = ("int8: every tensor it reads comes from an int8 layer and every reader is an int8 layer, so int8 adds no"
           " Q/DQ and runs one int8 op where float runs DequantizeLinear, the op and QuantizeLinear (not timed)")


def isolated_rows(units: list[list[str]], predicted, negligible, objective: str, follows=None) -> tuple[list[dict], list[tuple]]:
    """(report rows of the groups their isolated gains, or their neighbours (``follows``), decide,
    [(group, gain)] of the others)."""
    predicted = predicted or [None] * len(units)
    negligible = negligible or [False] * len(units)
    follows = follows or [False] * len(units)
    rows, undecided = [], []
    for group, gain, small, follow in zip(units, predicted, negligible, follows):
        verdict = predicted_choice(gain, objective, small)
        if verdict is None and follow:
            rows += [{"node": name, "choice": "int8", "reason": FOLLOWS, "decided": "neighbours",
                      **({"isolated_gain": {str(b): round(g, 3) for b, g in gain.items()}} if gain else {})} for name in group]
            continue
        if verdict is None:
            undecided.append((group, gain))
            continue
        together = f" (with {len(group) - 1} more of its shape)" if len(group) > 1 else ""
        reason = ("int8 pays: the layer alone runs "
                  + ", ".join(f"b{b} {g:.2f}x" for b, g in sorted(gain.items())) + f" as fast in int8 as in float{together}"
                  + ("; too small a part of the model to slow it beyond noise" if small and min(gain.values()) < 1.0 + CLEAR_FASTER else ""))
        for name in group:
            rows.append({"node": name, "choice": verdict, "reason": reason, "decided": "isolated",
                         "isolated_gain": {str(b): round(g, 3) for b, g in gain.items()}})
    return rows, undecided


def guard_seconds(total: dict) -> float:
    """About what timing a plan beside float in the whole model costs (seconds), from the summed
    float times of its layers alone per batch (``predict_groups``): two models, each batch at least
    ``TARGET_SLOT_SECONDS`` or ``MIN_RUNS`` runs, and the probe and warm-up runs; a large batch at
    the batch that stands in for it (``stand_in_batch``)."""
    smallest = min(total, default=0)
    timed = {b: t if b == smallest else t / b * stand_in_batch(b, t / b) for b, t in total.items()}
    return sum(2 * max(TARGET_SLOT_SECONDS, (MIN_RUNS + 2) * t) for t in timed.values())


def untimed_message(total: dict, why: str) -> str:
    return (f"every layer group faster in int8 alone or too small to matter: every layer int8, not timed in the whole model"
            f" ({why}; float alone sums to {fmt_seconds(total)})")


def fmt_seconds(total: dict) -> str:
    return ", ".join(f"b{b} {t * 1e3:.1f} ms" for b, t in sorted(total.items()))


def _measure_finals(timed, current: frozenset, full: frozenset, none: frozenset, objective: str, noise: float, size) -> dict:
    """{config: ratios to float} of the plan, all-int8 (when it differs) and no-int8 (only when the
    pick would fall on it taken as 1.0x float), each timed beside float on its own."""
    measured = {current: timed(current)[0]}
    if full not in measured:
        measured[full] = timed(full)[0]
    if none not in measured:
        assumed = {**measured, none: {b: 1.0 for b in measured[current]}}
        if choose_final(list(assumed), assumed, objective, noise, size, none)[0] == none:
            measured[none] = timed(none)[0]
    return measured


def layer_groups(graph: ir.Graph, names: list[str]) -> list[list[str]]:
    """``names`` grouped by what decides an int8 layer's cost: op, input shapes, constant shapes,
    attributes, and the kinds of op reading its output (repeated blocks give many identical
    layers; deciding them together takes one measurement, and a larger, less noisy difference).
    Groups in the graph order of their first layer."""
    nodes = {n.name: n for n in graph}

    def signature(node: ir.Node):
        inputs = tuple(None if v is None else (str(v.shape), None if v.const_value is None else tuple(v.const_value.shape)) for v in node.inputs)
        attributes = tuple(sorted((k, str(a.value)) for k, a in node.attributes.items()))
        readers = frozenset(u.node.op_type for v in node.outputs for u in v.uses())
        return node.op_type, node.domain, inputs, attributes, readers

    def known(node: ir.Node) -> bool:  # without shapes, only the node itself is known to be like itself
        return all(v is None or v.shape is not None for v in node.inputs)

    groups: dict = {}
    for name in names:
        node = nodes.get(name)
        groups.setdefault(signature(node) if node is not None and known(node) else name, []).append(name)
    return list(groups.values())


# ---- building a configuration ------------------------------------------------------------------


def rewrite_only(model: ir.Model, keep_float: set[str]):
    """The int8 rewrites on every ConvTranspose except those named in ``keep_float`` (which stay
    ConvTranspose: in float that is onnxruntime's fastest form), phases interleaved DCR and
    spelled channels-last (``depth_to_space_nhwc``: onnxruntime then drops the Transposes around
    its int8 Convs); nearest upsampling spelled channels-last (``resize_nhwc``) before the Convs
    not in ``keep_float``. Returns (model, the rewrite report)."""
    from gencompress.passes.int8_rewrites import RewriteForInt8Pass

    p = RewriteForInt8Pass(RewriteForInt8Pass.Options(
        depth_to_space="DCR", exclude=tuple(sorted(keep_float)), channels_last=True, layout_rewrites=True))
    model = p(model).model
    return model, p.report


def _matches(name: str, original: str) -> bool:
    """A node of the rewritten graph stands for ``original`` (the rewrites name theirs ``original/...``)."""
    return name == original or name.startswith(original + "/")


def rewritable_layers(model: ir.Model) -> frozenset:
    """Names of the layers an int8 rewrite changes: ConvTransposes, Convs after a nearest
    upsampling (``resize_nhwc``) and Convs with few output channels (``conv_space_to_depth``)."""
    from gencompress.passes.conv_space_to_depth import rewritable_convs
    from gencompress.passes.resize_nhwc import upsamplers

    graph = model.graph
    convs = {c.name for readers in upsamplers(model).values() for c in readers}
    return frozenset(convs | rewritable_convs(model) | {n.name for n in graph if n.op_type == "ConvTranspose"})


@dataclass
class ConfigBuilder:
    """Builds the model for a set of int8 layers (original names) from the prepared float model."""

    prepared: onnx.ModelProto  # after prepare(), before the rewrites
    rewrite: bool  # apply the int8 rewrites to the layers that go int8 (asked for, and some layer has one)
    static_options: object  # StaticOptions: how the int8 layers are calibrated and stored
    log: Callable = lambda message: None
    exclude: tuple = ()  # user's --exclude: float, weights kept float too
    layers: list[dict] = field(default_factory=list)  # decidable int8 layers of the prepared graph
    storage_layers: list[str] = field(default_factory=list)  # float-compute layers with weights (GRU, Gather)
    groups: list[list[str]] = field(default_factory=list)  # decidable layers decided together (layer_groups)
    rewritten: frozenset = frozenset()  # layers whose form the rewrites change when they go int8
    _quantizers: dict = field(default_factory=dict)  # the last KEEP_BUILDS, oldest first
    _built: dict = field(default_factory=dict)  # the last KEEP_BUILDS, oldest first
    _sizes: dict = field(default_factory=dict)  # bytes of every configuration built
    _calibrated: tuple | None = None  # calibrated_ranges of ``prepared``: one run for every configuration

    @classmethod
    def create(cls, prepared: onnx.ModelProto, *, rewrite: bool, static_options, exclude=(), log=lambda message: None):
        from gencompress.passes.insert_qdq import find_layers, select_layers

        decidable, storage, groups, rewritten = _decidable(_with_shapes(prepared), exclude)
        return cls(prepared, rewrite and bool(rewritten), static_options, log, tuple(exclude), decidable, storage, groups, rewritten)

    def isolation(self) -> "Isolation":
        """What timing this model's layers alone needs (``predict_groups``)."""
        return Isolation(_with_shapes(self.prepared), [l["node"] for l in self.layers], self.groups, self.rewrite,
                         self.static_options, self.ranges(), self.log, frozenset(l["node"] for l in self.layers if not l["weights"]))

    def _quantizer(self, keep_float: frozenset):
        """(rewritten prepared proto's static quantizer, rewrite report) for this set of float ConvTransposes."""
        key = keep_float if self.rewrite else None
        if key not in self._quantizers:
            from gencompress.verbs.quantizers import static_quantizer

            before = ir.serde.deserialize_model(self.prepared)  # wraps the proto's tensors, no copy
            model = ir.serde.deserialize_model(self.prepared)
            report = None
            if self.rewrite:
                model, report = rewrite_only(model, set(keep_float))
            quantizer = static_quantizer(  # the rewritten onnx_ir model itself: a serialized copy held its weights twice
                model, self.static_options, log=self.log, exclude=self.exclude, before_rewrites=before if self.rewrite else None,
                calibrated=self.ranges())
            _keep_last(self._quantizers, key, (quantizer, report))
        return self._quantizers[key]

    def ranges(self) -> tuple[dict, dict]:
        """``calibrated_ranges`` of ``prepared``: one calibration run for every configuration (and
        every isolated layer, whose tensors keep their names)."""
        if self._calibrated is None:
            from gencompress.verbs.plan_cache import cached_ranges
            from gencompress.verbs.quantizers import calibrated_ranges

            self._calibrated = cached_ranges(self.prepared, self.static_options, log=self.log, compute=lambda: calibrated_ranges(
                ir.serde.deserialize_model(self.prepared), self.static_options, log=self.log))
        return self._calibrated

    def calibration(self) -> dict | None:
        """How the configurations were calibrated (the same settings for each)."""
        return next((quantizer.calibration for quantizer, _ in self._quantizers.values()), None)

    def build(self, int8: frozenset, timing: bool = False) -> tuple[onnx.ModelProto, dict]:
        """The model with ``int8`` layers computing in int8, the other layers' weights int8 folded at load.
        ``timing``: a model only to be timed: its int8 weights skip the search for values safe on
        kernels without VNNI (``int8_kernels`` vnni): the same graph and shapes, so the same kernels
        at the same cost, without the search's seconds per build."""
        int8 = frozenset(int8)
        key = (int8, timing)
        if key in self._built:
            self._built[key] = self._built.pop(key)  # most recently used last
            return self._built[key]
        from gencompress.verbs.quantizers import finalize
        from gencompress.passes.weight_only_quantize import WeightOnlyQuantizePass, weight_layers

        rewritten = {l["node"] for l in self.layers if l["node"] in self.rewritten}
        quantizer, rewrite_report = self._quantizer(frozenset(rewritten - int8))
        if timing:
            quantizer = _vnni_weights(quantizer)
        names = [l["node"] for l in quantizer.layers]
        int8_names = [n for n in names if any(_matches(n, o) for o in int8)]
        include = tuple(int8_names + [n for n in names if n in self.storage_layers])
        report = {"layers": [], "float_layers": [], "quantized_activations": 0, "rewrite": rewrite_report}
        if include:
            proto, report_q = quantizer.build(self.exclude, include)
            report.update(report_q)
            model = ir.serde.deserialize_model(proto)
        else:
            model = quantizer.prepared.clone()  # an onnx_ir model sharing its weight tensors: the passes below make new ones
        floating = [l["node"] for l in self.layers if l["node"] not in int8]
        targets = tuple(n for n in names if n not in include and any(_matches(n, o) for o in floating))
        # insert_qdq may already store some of them int8 behind a DequantizeLinear (weights no layer of its reads)
        still_float = {layer.node.name for layer in weight_layers(model.graph)}
        targets = tuple(t for t in targets if t in still_float)
        if targets:
            p = WeightOnlyQuantizePass(WeightOnlyQuantizePass.Options(bits=8, include=targets))
            model = p(model).model
            report["weight_only"] = [l["node"] for l in p.report["layers"]]
        report["folded_weights"] = cast_mul_weights(model, frozenset(int8_names))
        result = (finalize(ir.serde.serialize_model(model)), report)
        self._sizes[int8] = result[0].ByteSize()
        _keep_last(self._built, key, result)
        return result

    def size(self, int8: frozenset) -> int:
        """Bytes of the model for ``int8`` (built once; the model itself may be gone by then)."""
        int8 = frozenset(int8)
        if int8 not in self._sizes:
            self.build(int8, timing=True)
        return self._sizes[int8]


def _decidable(model: ir.Model, exclude) -> tuple[list[dict], list[str], list[list[str]], frozenset]:
    """(decidable int8 layers, float-compute layers with weights, groups, layers the rewrites change)
    of a model with shapes."""
    from gencompress.passes.insert_qdq import find_layers, select_layers

    kept, _ = select_layers(find_layers(model.graph), exclude)
    decidable = [{"node": l.name, "op_type": l.op_type, "weights": [w.name for w in l.weights]} for l in kept if l.kind == "int8"]
    storage = [l.name for l in kept if l.kind == "weights"]
    return decidable, storage, layer_groups(model.graph, [l["node"] for l in decidable]), rewritable_layers(model)


@dataclass
class Isolation:
    """What timing a model's layers alone needs: its graph (onnx_ir, shapes inferred; weights read
    one layer at a time, so a memory-mapped model stays mapped), its decidable layers and their
    groups, how int8 layers are built, and its calibrated ranges (``calibrated_ranges``)."""

    model: ir.Model
    layers: list[str]
    groups: list[list[str]]
    rewrite: bool
    static_options: object
    ranges: tuple
    log: Callable = lambda message: None
    weightless: frozenset = frozenset()  # decidable layers without weights (Add, Concat, an activation, Mul by a constant)


def isolation_of(model: ir.Model, *, rewrite: bool, static_options, exclude, ranges, log=lambda m: None) -> Isolation:
    """``Isolation`` of a prepared onnx_ir model (before the int8 rewrites), without copying its
    weights (shapes are inferred on a clone sharing them)."""
    from onnx_ir.passes.common import ShapeInferencePass

    shaped = model.clone()
    ShapeInferencePass(strict_mode=False)(shaped)
    decidable, _, groups, rewritten = _decidable(shaped, exclude)
    return Isolation(shaped, [l["node"] for l in decidable], groups, rewrite and bool(rewritten), static_options, ranges, log,
                     frozenset(l["node"] for l in decidable if not l["weights"]))


KEEP_BUILDS = 1  # models (and rewritten quantizers) kept built: each is a whole copy of the weights; sizes are remembered


def _vnni_weights(quantizer):
    """``quantizer`` building with ``int8_kernels="vnni"`` (for models that are only timed)."""
    import dataclasses

    def make_pass(exclude, include):
        p = quantizer.make_pass(exclude, include)
        return type(p)(dataclasses.replace(p.options, int8_kernels="vnni"), calibrate=p.calibrate)

    return dataclasses.replace(quantizer, make_pass=make_pass)


def _keep_last(cache: dict, key, value) -> None:
    cache[key] = value
    while len(cache) > KEEP_BUILDS:
        del cache[next(iter(cache))]


# ---- one layer in isolation ---------------------------------------------------------------------


def isolated_layer(model: ir.Model, name: str, slice_weights: int | None = None) -> onnx.ModelProto | None:
    """A float model of layer ``name`` alone: the layer, a nearest Resize feeding it (the
    ``resize_nhwc`` rewrite takes both), an activation that alone reads it (fused in int8), its
    weights; its one activation input a graph input with the layer's own shape, the batch
    dimension the model's. None when the layer has several activation inputs or shapes that do
    not follow the batch. ``model``: onnx_ir, shapes inferred; only these nodes' weights are read.
    ``slice_weights``: a larger layer keeps a slice of its outputs (``_sliced``; None: ``ISOLATE_WEIGHTS``, 0: whole)."""
    node = next((n for n in model.graph if n.name == name), None)
    if node is None or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    acts = [v for v in node.inputs if v is not None and v.const_value is None]
    if len(acts) != 1:
        return None
    x, chain = acts[0], [node]
    constant = lambda n, skip: all(v is None or v.const_value is not None for v in n.inputs[skip:])  # noqa: E731
    head = x.producer()
    if head is not None and head.op_type == "Resize" and constant(head, 1) and len(list(x.uses())) == 1:
        chain.insert(0, head)
        x = head.inputs[0]
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) == 1 and uses[0].node.op_type in ACTIVATIONS and constant(uses[0].node, 1) and not out.is_graph_output():
        chain.append(uses[0].node)
        out = uses[0].node.outputs[0]
    shape = _batch_shape(model, x)
    if shape is None or x.dtype is None:
        return None
    weights = {v.name: v.const_value for n in chain for v in n.inputs if v is not None and v.const_value is not None}
    weights, scale = _sliced(node, weights, slice_weights or ISOLATE_WEIGHTS) if slice_weights != 0 else (weights, 1.0)
    nodes, x_info = [ir.serde.serialize_node(n) for n in chain], onnx.helper.make_tensor_value_info(x.name, int(x.dtype), shape)
    y_info = onnx.helper.make_tensor_value_info(out.name, int(out.dtype or x.dtype), None)
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    # shapes inferred with the weights as typed inputs: inferring them on the model with its weights serializes them
    typed = [onnx.helper.make_tensor_value_info(k, int(w.dtype), list(w.shape)) for k, w in sorted(weights.items())]
    shapes = onnx.shape_inference.infer_shapes(onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "shapes", [x_info, *typed], [y_info]), opset_imports=opsets, ir_version=model.ir_version))
    graph = onnx.helper.make_graph(nodes, f"isolated {name}", [x_info], [shapes.graph.output[0]],
                                   [_in_memory(weights[k]) for k in sorted(weights)], value_info=shapes.graph.value_info)
    _release_weights(chain)  # copied into the proto: the mapped pages it read leave (a large layer's would double it)
    tiny = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    if scale != 1.0:
        tiny.metadata_props.add(key=SLICED_KEY, value=repr(scale))
    return tiny


SLICED_KEY = "gencompress.isolated_scale"  # an isolated layer timed on a slice of its output channels: times scale by this
ISOLATE_WEIGHTS = 1 << 20  # a Conv/ConvTranspose/Gemm/MatMul with more weights is timed alone on a slice of its outputs (at least 64)
# a sliced layer not clear by SLICED_CLEAR is timed again on a slice of at most this many weights (or whole, when smaller):
# its two forms, the rewrite between them and onnxruntime's pre-packed copy hold about 4x its float bytes, so the 47M
# DCGAN's 33.5M-weight layer timed whole took the plan's peak from 2.7x to 7.4x the model file (5.5x its own bytes),
# and on 16M weights to 3.4x (quiet: 625 MiB against 482 MiB before the plan; on 8M weights the plan adds nothing)
RETIME_WEIGHTS = 8 << 20


def _sliced(node: ir.Node, weights: dict, limit: int) -> tuple[dict, float]:
    """A large layer (over ``limit`` weights, ``ISOLATE_WEIGHTS`` at first: a Conv or ConvTranspose of group 1, a Gemm or
    MatMul with a 2-D weight) keeps a slice of its output channels or columns (and bias), at least
    64: its int8 and float kernels stay full (the same GEMM depth and rows, fewer columns) while
    building and loading it costs a fraction (the 47M DCGAN's 33.5M-weight layer: 2.4 s of
    rewrites and 1.6 s of serializing alone; VGG-19's first fully connected layer, 102M weights).
    Returns the weights (numpy-backed where sliced) and the factor that scales its times back."""
    axis = _output_axis(node, limit)
    if axis is None:
        return weights, 1.0
    w = node.inputs[1].const_value
    channels = w.shape[axis]
    keep = max(64, int(np.ceil(channels * limit / w.size / 16)) * 16)
    if keep >= channels:
        return weights, 1.0
    out = dict(weights)
    out[node.inputs[1].name] = ir.Tensor(np.ascontiguousarray(np.take(w.numpy(), np.arange(keep), axis=axis)), name=node.inputs[1].name)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and bias.const_value is not None and bias.const_value.shape and bias.const_value.shape[-1] == channels:
        out[bias.name] = ir.Tensor(np.ascontiguousarray(bias.const_value.numpy()[..., :keep]), name=bias.name)
    return out, channels / keep


def _output_axis(node: ir.Node, limit: int) -> int | None:
    """The axis of a large layer's weight (input 1) that holds its output channels or columns; None
    when it is not sliced (small, grouped, a constant first input, another op)."""
    w = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if w is None or w.size <= limit or node.inputs[0] is None or node.inputs[0].const_value is not None:
        return None
    if node.op_type in ("Conv", "ConvTranspose"):
        group = node.attributes.get("group")
        return None if (group is not None and group.value != 1) or len(w.shape) < 3 else (0 if node.op_type == "Conv" else 1)
    if node.op_type == "Gemm" and len(w.shape) == 2 and not node.attributes.get_int("transA", 0):
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "MatMul" and len(w.shape) == 2:
        return 1
    return None


def _release_weights(nodes) -> None:
    """Unmap the memory-mapped weights ``nodes`` read (``onnx_io.release``; in-memory ones stay)."""
    from gencompress.onnx_io import release

    for node in nodes:
        for v in node.inputs:
            if v is not None and v.const_value is not None:
                release(v.const_value)


def _in_memory(tensor) -> onnx.TensorProto:
    """A weight as a self-contained TensorProto (a memory-mapped or external one read)."""
    if isinstance(tensor, (ir.serde.TensorProtoTensor, ir.Tensor)):
        return ir.serde.serialize_tensor(tensor)
    return ir.serde.serialize_tensor(ir.Tensor(tensor.numpy(), name=tensor.name))


def _with_shapes(prepared: onnx.ModelProto) -> ir.Model:
    """``prepared`` wrapped by onnx_ir (its tensors not copied), shapes inferred where the file has
    none: layers are grouped and isolated by their shapes."""
    from onnx_ir.passes.common import ShapeInferencePass

    model = ir.serde.deserialize_model(prepared)
    ShapeInferencePass(strict_mode=False)(model)  # inferred on a copy without the weights
    return model


def _batch_shape(model: ir.Model, x: ir.Value) -> list | None:
    """``x``'s shape for an isolated model: every dimension known, except the first when it is the
    batch dimension of the model's inputs (then "N"). None otherwise."""
    if x.shape is None or len(x.shape) == 0 or not all(isinstance(d, int) for d in x.shape[1:]):
        return None
    firsts = [i.shape[0] for i in model.graph.inputs if i.shape is not None and len(i.shape)]
    batch_names = {str(d.value) for d in firsts if not isinstance(d, int) and d.value}
    first = x.shape[0]
    if batch_names:  # dynamic batch: the layer's first dimension must be the batch itself
        return ["N", *x.shape[1:]] if not isinstance(first, int) and str(first.value) in batch_names else None
    return list(x.shape) if isinstance(first, int) else None


def isolated_pair(iso: Isolation, tiny: onnx.ModelProto, name: str) -> tuple[onnx.ModelProto, onnx.ModelProto] | None:
    """(float, int8) forms of an isolated layer: the layer as it is (a float layer's int8 weights,
    ``Cast * scale``, are folded into float at load: the same kernel), and its int8 form built as
    the whole model's configurations build it (the same rewrites, QDQ and calibrated ranges,
    weights skipping the saturation search); when an int8 layer of the model reads its output,
    both end with that layer's input quantization (``reads_int8``)."""
    small = ConfigBuilder.create(tiny, rewrite=iso.rewrite, static_options=iso.static_options, log=iso.log)
    if name not in {l["node"] for l in small.layers}:
        return None
    small._calibrated = iso.ranges
    pair = tiny, small.build(frozenset({name}), timing=True)[0]  # the float form: ``tiny`` itself (the caller's, not copied)
    del small
    collect_cycles(sum(len(t.raw_data) for t in tiny.graph.initializer))  # a large layer's build: its rewritten weights go with its cycles
    out = tiny.graph.output[0].name
    if reads_int8(iso, out):
        lo, hi = iso.ranges[0].get(out, (-1.0, 1.0))
        pair = tuple(_with_output_qdq(m, lo, hi, iso.static_options.activations == "int8") for m in pair)
    return pair


def reads_int8(iso: Isolation, tensor: str) -> bool:
    """A decidable layer of the model reads ``tensor``."""
    value = next((v for n in iso.model.graph for v in n.outputs if v.name == tensor), None)
    layers = set(iso.layers)
    return value is not None and any(u.node.name in layers for u in value.uses())


def kernel_key(iso: Isolation, tiny: onnx.ModelProto, batch: int) -> str:
    """The kernel cache's key of an isolated layer at a batch size: its float structure (``structure_digest``,
    no weight values) and what decides its int8 form's structure."""
    from gencompress.verbs.plan_cache import structure_digest

    o = iso.static_options
    form = (iso.rewrite, o.activations, o.per_tensor, reads_int8(iso, tiny.graph.output[0].name))
    return f"{structure_digest(tiny)}:{form}:{batch}"


def _with_output_qdq(model: onnx.ModelProto, lo: float, hi: float, signed: bool) -> onnx.ModelProto:
    """``model`` with its one output quantized and dequantized, as the int8 layer reading it in the
    model quantizes it: without it onnxruntime does not fuse an int8 Gemm whose output is not
    quantized, and its weights' DequantizeLinear runs on every call (the 47M DCGAN's first
    layer: 7.4 ms of 8.6 at batch 1 alone; in the model it is fused). The same in both forms."""
    from onnx import helper, numpy_helper

    out = model.graph.output[0]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if signed:
        scale, zero = max(abs(lo), abs(hi)) / 127.0 or 1.0, np.array(0, np.int8)
    else:
        scale = (hi - lo) / 255.0 or 1.0
        zero = np.array(int(np.clip(round(-lo / scale), 0, 255)), np.uint8)
    inner, tag = out.name + "/before_qdq", out.name + "/qdq"
    for node in model.graph.node:
        node.output[:] = [inner if o == out.name else o for o in node.output]
    model.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), tag + "_scale"),
                                    numpy_helper.from_array(zero, tag + "_zero")])
    model.graph.node.extend([
        helper.make_node("QuantizeLinear", [inner, tag + "_scale", tag + "_zero"], [tag + "_q"], name=tag + "/Q"),
        helper.make_node("DequantizeLinear", [tag + "_q", tag + "_scale", tag + "_zero"], [out.name], name=tag + "/DQ")])
    return model


def worth_isolating(builder: "ConfigBuilder") -> bool:
    """Time layers alone only where that can save whole-model timing: more groups than one greedy
    step takes, or a model whose every build and session is large (the zoo vae's 3 groups: 2 s
    more at load 16 for a plan timed in one step either way)."""
    return len(builder.groups) > STEP_GROUPS or (len(builder.groups) > 0 and model_bytes(builder.prepared) > ISOLATE_BYTES)


def predict_groups(iso: Isolation, isolated, batches, kernels=None, log=lambda m: None) -> tuple[list, list[bool], dict]:
    """Per group of ``iso.groups``: its first layer's isolated gain ``{batch: float p50 / int8
    p50}`` (``isolated(float_model, int8_model, feeds_at) -> {batch: (float s, int8 s)}``), or None
    when it cannot be isolated; whether the group is negligible: its layers in int8, timed
    alone (edges included), add at most ``NOISE / 2`` of the model's time at every batch, the
    model's time taken as the sum of every isolated layer's float time (a lower bound: the share
    comes out too large, never too small); and that sum per batch (seconds). ``kernels``
    (``plan_cache.KernelCache``): timings by the pair's structure and batch, reused across models
    and runs on this machine kind."""
    out, timed = [], 0
    nodes = {n.name: n for n in iso.model.graph}
    for group in iso.groups:
        gains = _isolated_gains(iso, group[0], isolated, batches, kernels, log)
        if gains is not None and gains[1] and min(f / i for f, i in gains[0].values()) < SLICED_CLEAR:
            log(f"  {group[0]}: its slice {min(f / i for f, i in gains[0].values()):.2f}x, not clear by {SLICED_CLEAR:g}x:"
                f" timed again on up to {RETIME_WEIGHTS >> 20}M weights")
            gains = _isolated_gains(iso, group[0], isolated, batches, kernels, log, slice_weights=RETIME_WEIGHTS)  # near: (nearly) whole
        _release_weights([nodes[group[0]]] if group[0] in nodes else [])  # a memory-mapped weight read: its pages leave
        timed += bool(gains and gains[2])
        out.append(gains[0] if gains else None)
    log(f"  {sum(g is not None for g in out)} of {len(out)} group(s) timed alone ({timed} timed, the others from the kernel cache)")
    total = {b: sum(len(g) * t[b][0] for g, t in zip(iso.groups, out) if t) for b in batches}
    negligible = [bool(t) and all(len(g) * (t[b][1] - t[b][0]) <= NOISE / 2 * total[b] for b in batches) for g, t in zip(iso.groups, out)]
    return [{b: f / max(i, 1e-12) for b, (f, i) in t.items()} if t else None for t in out], negligible, total


def followers(iso: Isolation, predicted, negligible, objective: str) -> list[bool]:
    """Per group of ``iso.groups``: a group of weightless layers (Add, Concat, an activation, Mul by a
    constant: ``iso.weightless``) that isolation leaves undecided, every activation it reads made by
    an int8 layer and every reader of its output an int8 layer, those decided int8 alone or
    themselves such followers (the largest such set). Between int8 layers such a layer in float
    runs DequantizeLinear, the op and QuantizeLinear; in int8, one int8 op and no Q/DQ more, so
    int8 is not slower: it is decided without timing the model (RRDB: its Concat and Add groups
    cannot be timed alone, so they took greedy steps over the whole model). Ops that keep a
    quantized tensor's scale (Resize nearest, Reshape, ...: insert_qdq moves the Q/DQ across them)
    are looked through. A tensor from a graph input, a float or undecided layer, or any other op
    leaves the group to be timed."""
    if objective == "size":
        return [False] * len(iso.groups)
    decided = set()
    for group, gain, small in zip(iso.groups, predicted or [None] * len(iso.groups), negligible or [False] * len(iso.groups)):
        if predicted_choice(gain, objective, small) == "int8":
            decided.update(group)
    from gencompress.passes.insert_qdq import is_transparent

    candidates = [g for g in iso.groups if not decided.issuperset(g) and all(n in iso.weightless for n in g)]
    nodes = {n.name: n for n in iso.model.graph}

    def made_int8(v: ir.Value, int8: set) -> bool:  # through ops that keep a quantized tensor's scale (insert_qdq moves Q/DQ there)
        producer = v.producer()
        while producer is not None and is_transparent(producer) and producer.name not in int8 and producer.inputs:
            producer = producer.inputs[0].producer() if producer.inputs[0] is not None else None
        return producer is not None and producer.name in int8

    def read_int8(v: ir.Value, int8: set) -> bool:
        return not v.is_graph_output() and all(u.node.name in int8 or (is_transparent(u.node) and u.idx == 0 and
                                                                        all(read_int8(o, int8) for o in u.node.outputs))
                                               for u in v.uses())

    def between_int8(name: str, int8: set) -> bool:
        node = nodes.get(name)
        reads = [v for v in node.inputs if v is not None and v.const_value is None] if node is not None else [None]
        return node is not None and all(made_int8(v, int8) for v in reads) and all(read_int8(v, int8) for v in node.outputs)

    while True:
        int8 = decided | {n for g in candidates for n in g}
        kept = [g for g in candidates if all(between_int8(n, int8) for n in g)]
        if len(kept) == len(candidates):
            break
        candidates = kept
    chosen = {id(g) for g in candidates}
    return [id(g) in chosen for g in iso.groups]


# a layer timed on a slice of its output channels is decided from it only when int8 is at least this much
# faster at every batch, else timed whole: on the 47M DCGAN's four large layers the slice's gain was 0.36-2.0x
# the whole layer's (load 6; benchmarks/plan_cost.py)
SLICED_CLEAR = 2.2


def _isolated_gains(iso: Isolation, name: str, isolated, batches, kernels, log, slice_weights: int | None = None):
    """({batch: (float s, int8 s)}, sliced, timed now) of one layer alone, or None."""
    gains = None
    try:
        tiny = isolated_layer(iso.model, name, slice_weights)
        keys = {b: kernel_key(iso, tiny, b) for b in batches} if tiny is not None else {}
        cached = {b: kernels.get(k) for b, k in keys.items()} if kernels is not None else {}
        if cached and all(cached.values()):  # timed before on this machine kind: not even built
            gains = {b: (float(e["float_s"]), float(e["int8_s"])) for b, e in cached.items()}
        pair = isolated_pair(iso, tiny, name) if tiny is not None and gains is None else None
    except Exception as e:  # an optimisation: a layer the isolation cannot build is timed in context instead
        log(f"  {name}: not timed alone ({str(e).splitlines()[0][:120]})")
        return None
    sliced = tiny is not None and any(m.key == SLICED_KEY for m in tiny.metadata_props)
    if gains is not None or pair is None:
        return (gains, sliced, False) if gains is not None else None
    x = onnx.ValueInfoProto()
    x.CopyFrom(tiny.graph.input[0])
    scale = float(next((m.value for m in tiny.metadata_props if m.key == SLICED_KEY), 1.0))
    op = tiny.graph.node[0].op_type
    forms = dict(zip(("float", "int8"), pair))
    del tiny, pair  # each form goes once its session is made: a large layer timed whole holds its weights once, in onnxruntime
    clear_at = SLICED_CLEAR if sliced and slice_weights is None else 1.0 + CLEAR_FASTER  # the gain the caller decides at
    gains = isolated(lambda: forms.pop("float"), lambda: forms.pop("int8"), _feeds_at(x, iso.ranges[0].get(x.name, (-1.0, 1.0))), clear_at)
    gains = {b: (f * scale, i * scale) for b, (f, i) in gains.items()}  # a slice of the layer: its whole time
    if kernels is not None:
        kernels.put({keys[b]: {"gain": f / i, "float_s": f, "int8_s": i, "op": op} for b, (f, i) in gains.items()})
    return gains, sliced, True


def predicted_plan(iso: Isolation, timer, objective: str, why: str, log=lambda m: None) -> PlanResult | None:
    """The plan of a model too large to time cheaply in the whole: when its layers timed alone
    (``predict_groups``, kernel timings cached per machine kind) decide every group, every layer
    int8, nothing timed in the model (no float session of it is made); None when some group is
    near the band (it must be timed in the model: ``plan``). ``timer``: ``interleaved_timer``'s."""
    from gencompress.verbs import plan_cache

    settings = timer.settings
    if objective == "size" or not iso.groups:
        return None
    log(f"timing {len(iso.layers)} layer(s) in {len(iso.groups)} group(s) of the same shape alone, int8 vs float ({objective}) ...")
    gains, negligible, total = predict_groups(iso, timer.isolated, settings["batches"], plan_cache.KernelCache(settings), log)
    rows, undecided = isolated_rows(iso.groups, gains, negligible, objective, followers(iso, gains, negligible, objective))
    if undecided:
        log(f"  {len(undecided)} group(s) not decided alone ({', '.join(g[0] for g, _ in undecided[:3])}{', ...' if len(undecided) > 3 else ''})")
        return None
    order = {n: i for i, n in enumerate(iso.layers)}
    rows.sort(key=lambda r: order[r["node"]])
    return PlanResult(frozenset(iso.layers), {}, rows, [], untimed_message(total, why),
                      timed_on={**plan_cache.machine_kind(settings["threads"]), **settings}, route=ROUTE_ALONE)


def predicts_first(model) -> bool:
    """A model (a path or a model: ``model_bytes``) large enough (``ISOLATE_BYTES``) that quantize
    and the plan_int8 step first try to plan it from its layers timed alone (``predicted_plan``)
    before timing it whole; the memory check (``plan_memory_note``) comes only when they do not
    decide every group."""
    return model_bytes(model) > ISOLATE_BYTES


FEED_SAMPLES = 4  # seeded samples drawn per isolated layer; a larger batch repeats them


def _feeds_at(x: onnx.ValueInfoProto, value_range) -> Callable[[int], dict]:
    """Inputs of an isolated layer at a batch size: uniform over its input's calibrated range,
    ``FEED_SAMPLES`` seeded samples drawn once and repeated to the batch (a kernel's time does not
    depend on the values; drawing RRDB's batch-64 inputs anew for each layer and batch took 0.18 s)."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in x.type.tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(x.type.tensor_type.elem_type)
    lo, hi = (float(v) for v in value_range)
    drawn = []

    def feeds(batch: int) -> dict:
        shape = [batch if d is None else d for d in dims]
        if not drawn:
            block = np.random.default_rng(0).random([FEED_SAMPLES, *shape[1:]], dtype=np.float32)
            block *= np.float32((hi if hi > lo else lo + 1.0) - lo)
            block += np.float32(lo)
            drawn.append(block.astype(dtype, copy=False))
        return {x.name: np.resize(drawn[0], shape)}

    return feeds


# ---- the timer ---------------------------------------------------------------------------------


MEDIAN_Z = 2.58  # the medians' bounds: about 99% each (checked after every round, so wider than one look needs)


def median_bounds(times) -> tuple[float, float]:
    """Distribution-free confidence bounds of the median of ``times``: the order statistics
    ``MEDIAN_Z`` binomial standard deviations either side of the middle (the smallest and largest
    of a few runs)."""
    s = np.sort(np.asarray(times, dtype=np.float64))
    k = max(int((len(s) - MEDIAN_Z * np.sqrt(len(s))) / 2), 0)
    return float(s[k]), float(s[len(s) - 1 - k])


def quartiles(times) -> tuple[float, float]:
    """The 25th and 75th percentiles of ``times`` (``np.percentile``'s, at a fifth of its cost: the
    timer asks after every round)."""
    s = np.sort(np.asarray(times, dtype=np.float64))
    return tuple(float(v) for v in np.interp((0.25 * (len(s) - 1), 0.75 * (len(s) - 1)), np.arange(len(s)), s))


def interleaved_timer(reference, *, header: onnx.ModelProto | None = None, provider: str = "CPUExecutionProvider",
                      threads: int = DEFAULT_THREADS, batches=DEFAULT_BATCHES, seed: int = 0) -> Callable[[list[onnx.ModelProto]], list[Ratios]]:
    """``measure(models, reference=True) -> [{batch: p50 / float p50}]`` (a model: a proto, or a
    function returning one, called when its session is made): each call times the float
    model and the given models interleaved in one process (spinning off), on ``provider`` with
    ``threads`` intra-op threads, each batch size (ascending) for about ``TARGET_SLOT_SECONDS`` per
    model (at least ``MIN_RUNS`` runs); ``reference=False``: without the float model, ratios to the
    first model; ``give_up(*ratios so far)`` true: the larger batch sizes are not timed. The float
    session and the run counts (from the float model's time) are made once."""
    from gencompress.inputs import sample_inputs, specs_of_model
    from gencompress.batches import fixed_batch
    from gencompress.runtime_check.latency import time_interleaved
    from gencompress.runtime_check.sessions import cast_feeds, make_session, model_bytes

    header = reference if header is None else header  # ``reference`` may be a path: ``header`` has its inputs and metadata
    fixed = fixed_batch(header)
    batches = (fixed,) if fixed else tuple(sorted(batches))
    specs = specs_of_model(header)

    float_session = None
    probed: dict = {}  # timed batch -> (feeds, runs, warm-up runs, float seconds a sample), from the float model's time
    timed_at: dict = {}  # batch -> the batch it is timed at (``stand_in_batch``)

    def slot(b):
        """(the batch ``b`` is timed at, its feeds, runs, warm-up runs); the float session has run on them."""
        if b not in timed_at:
            smaller = [t for t in probed if t < b]  # the float time a sample at the largest smaller batch timed (an upper bound)
            timed_at[b] = stand_in_batch(b, probed[max(smaller)][3]) if smaller else b
        t = timed_at[b]
        if t not in probed:
            feeds = sample_inputs(specs, t, seed)
            probe = time_interleaved({"float": reference_session()}, feeds, runs=1, warmup=1)["float"]
            if probe[0] <= 0.05:  # a fast model: a median of three; a slow one's single run sets its counts well enough
                probe += time_interleaved({"float": reference_session()}, feeds, runs=2, warmup=0)["float"]  # (RRDB at 64: 0.4 s a run)
            p50 = max(float(np.median(probe)), 1e-6)
            probed[t] = (feeds, int(np.clip(TARGET_SLOT_SECONDS / p50, MIN_RUNS, 400)), 1 if p50 > 0.05 else 3, p50 / t)
        return (t, *probed[t][:3])

    def reference_session():
        nonlocal float_session
        if float_session is None:
            # from the path when it is one: no bytes copy of the float model held for the plan
            float_session = make_session(reference, provider=provider, threads=threads, label="float")
        return float_session

    def clear(times) -> bool:
        """Every candidate's runs all faster, or all slower, than every float run beyond twice the
        noise band: more runs cannot change a decision (a slow model's guard stops early)."""
        f = times["float"]
        return len(f) >= MIN_RUNS - 2 and all(max(t) < min(f) * (1 - 2 * NOISE) or min(t) > max(f) * (1 + 2 * NOISE)
                                               for k, t in times.items() if k != "float")

    def measure(models, reference=True, give_up=None):
        sessions = {"float": reference_session()} if reference else {}
        for i, m in enumerate(models):  # a model may come as a function that builds it: built here, one at a time
            sessions[i] = make_session(model_bytes(m() if callable(m) else m), provider=provider, threads=threads, label=f"candidate {i}")
        out, done = [{} for _ in models], {}
        for b in batches:
            t, inputs, runs, warmup = slot(b)
            if t not in done:  # a batch standing in for another timed already (batch 16 for 64 of batches 16 and 64): its ratios
                feeds = {k: cast_feeds(s, inputs) for k, s in sessions.items()}
                warm = {k: 0 if k == "float" else warmup for k in sessions}  # the float session ran on these feeds in ``slot``
                times = time_interleaved(sessions, feeds, runs=runs, warmup=warm, stop=clear if reference and len(models) == 1 else None)
                base = float(np.median(times["float" if reference else 0]))
                done[t] = [float(np.median(times[i])) / base for i in range(len(models))]
            for i, ratio in enumerate(done[t]):
                out[i][b] = ratio
            if give_up is not None and give_up(*out):
                break
        return out

    def settled(times, clear_at: float) -> bool:
        """At least ``ISOLATED_MIN_RUNS`` runs each, and the int8 runs' quartiles (scaled by ``clear_at``) both
        below, or both above, the float runs' beyond the noise band (quartiles: a sub-millisecond layer's
        runs have outliers 5-30x its median here); or, after many runs, the same of the medians' confidence
        bounds (``median_bounds``), which narrow as runs add up where quartiles do not (RRDB's last layer,
        1.2-1.5x: all 400 runs at batch 1)."""
        f, i = times["float"], times["int8"]
        if len(i) < ISOLATED_MIN_RUNS:
            return False
        (f1, f3), (i1, i3) = quartiles(f), quartiles(i)
        (fl, fh), (il, ih) = median_bounds(f), median_bounds(i)
        return (i3 * clear_at * (1 + NOISE) < f1 or i1 * clear_at > f3 * (1 + NOISE)
                or ih * clear_at * (1 + NOISE) < fl or il * clear_at > fh * (1 + NOISE))

    def isolated(float_model, int8_model, feeds_at, clear_at: float | None = None) -> dict:
        """{batch: (float p50, int8 p50)} in seconds of one layer's two forms (protos, or functions that
        return one, called when its session is made), interleaved, about
        ``ISOLATED_SECONDS`` each per batch size (at least ``ISOLATED_MIN_RUNS`` runs). A layer whose
        float run at a batch would take over ``ISOLATED_RUN_SECONDS`` is timed at the batch that
        takes about that (at least the smallest batch), its times scaled by the batch ratio: a
        layer that large already fills the int8 and float kernels (the 47M DCGAN's three large
        layers: int8 1.5-9.9x as fast at batch 1, 1.9-5.4x at 64: the decision is the same).
        ``clear_at``: the gain (float / int8) the caller decides at; a batch size stops being timed
        once its int8 runs are beyond the noise band on one side of it against its float runs
        (``settled``): more runs would move the digits, not the decision (the 47M DCGAN's five
        layers, quiet: 2.6 s of the plan's 4.3 s were runs of the timer, 4,227 of them)."""
        pair = {"float": make_session(model_bytes(float_model() if callable(float_model) else float_model), provider=provider,
                                      threads=threads, label="isolated float layer"),
                "int8": make_session(model_bytes(int8_model() if callable(int8_model) else int8_model), provider=provider,
                                     threads=threads, label="isolated int8 layer")}
        gains, per_sample, at = {}, None, {}
        for b in batches:
            timed = b if per_sample is None else int(np.clip(ISOLATED_RUN_SECONDS / per_sample, min(batches), b))
            if timed not in at:  # a batch size timed already (a large layer's every batch at batch 1): its times
                inputs = feeds_at(timed)  # one draw for both forms
                feeds = {k: cast_feeds(s, inputs) for k, s in pair.items()}
                probe = time_interleaved(pair, feeds, runs=1, warmup=1)  # its run counts among the timed ones
                p50 = max(max(t[0] for t in probe.values()), 1e-6)
                more = time_interleaved(pair, feeds, runs=int(np.clip(ISOLATED_SECONDS / p50, ISOLATED_MIN_RUNS, 400)) - 1, warmup=0,
                                        stop=None if clear_at is None else lambda t: settled({k: probe[k] + t[k] for k in t}, clear_at))
                times = {k: probe[k] + more[k] for k in pair}
                at[timed] = float(np.median(times["float"])), max(float(np.median(times["int8"])), 1e-9)
            f, i = at[timed]
            per_sample = per_sample or f / timed
            gains[b] = (f * b / timed, i * b / timed)
        return gains

    measure.settings = {"provider": provider, "threads": threads, "batches": list(batches)}  # what the plan cache keys on
    measure.timed_at = timed_at  # {batch: batch timed at}, filled as batches are timed
    measure.isolated = isolated
    measure.lazy = True  # takes functions that build the models
    return measure


def plan(builder: ConfigBuilder, objective: str, measure_models, log=lambda m: None, cache=None) -> tuple[onnx.ModelProto, dict, PlanResult]:
    """Decide, build and return (model, its quantizer report, the plan).

    ``cache`` (a ``plan_cache.PlanCache``): a plan timed before for this model, these options and
    this machine kind is reused instead of timed, and a new one is stored; only with a timer that
    says what it times (``measure_models.settings``, as ``interleaved_timer`` does)."""
    from gencompress.verbs import plan_cache

    names = [l["node"] for l in builder.layers]
    settings = getattr(measure_models, "settings", None)
    timed_on = {**plan_cache.machine_kind(settings["threads"]), **settings} if settings else {}
    key = None
    if cache is not None and settings and objective != "size" and names:
        key = plan_cache.plan_key(builder.prepared, objective=objective, rewrite=builder.rewrite, exclude=builder.exclude,
                                  static_options=builder.static_options, timed=settings)
    result = _from_entry(cache.load(key), names) if key else None
    if result is not None:
        result.cached = str(cache.path(key))
        log(f"int8 plan reused from {result.cached} (timed on {result.timed_on.get('isa')}, {result.timed_on.get('threads')} thread(s))")
    else:
        def measure(configs, reference=True, give_up=None):  # a timer that takes functions builds each model when it needs it
            lazy = getattr(measure_models, "lazy", False)
            models = [(lambda c=c: builder.build(c, timing=True)[0]) if lazy else builder.build(c, timing=True)[0] for c in configs]
            return measure_models(models, reference=reference, give_up=give_up)

        predicted = None
        if objective != "size" and names:
            log(f"timing {len(names)} layer(s) in {len(builder.groups or names)} group(s) of the same shape, int8 vs float ({objective}) ...")
            isolated = getattr(measure_models, "isolated", None)
            if isolated is not None and worth_isolating(builder):
                from gencompress.verbs.plan_cache import KernelCache

                kernels = KernelCache(settings, cache.folder) if settings and cache is not None else None
                iso = builder.isolation()
                predicted = predict_groups(iso, isolated, settings["batches"] if settings else [1], kernels, log)
                predicted = (*predicted, followers(iso, predicted[0], predicted[1], objective))
                del iso
        untimed = None
        if predicted and guard_seconds(predicted[2]) > GUARD_SECONDS:
            untimed = untimed_message(predicted[2], f"timing it would take about {guard_seconds(predicted[2]):.0f} s")
        result = plan_layers(names, measure, objective, size=builder.size, groups=builder.groups or None,
                             predicted=predicted[0] if predicted else None, negligible=predicted[1] if predicted else None,
                             untimed=untimed, follows=predicted[3] if predicted else None, budget=PLAN_BUDGET_SECONDS)
        result.timed_on = timed_on if objective != "size" and names else {}
        stand_ins = {b: t for b, t in getattr(measure_models, "timed_at", {}).items() if t != b}
        if stand_ins and result.ratios:
            result.message += "; " + ", ".join(f"batch {b} timed at batch {t}" for b, t in sorted(stand_ins.items())) + \
                f" in the model (a float run there takes about {MODEL_RUN_SECONDS:g} s: its kernels are full)"
        op_of = {l["node"]: l["op_type"] for l in builder.layers}
        for row in result.layers:
            row["op_type"] = op_of.get(row["node"])
        if key:
            cache.store(key, {"int8": sorted(result.int8), "ratios": {str(b): r for b, r in result.ratios.items()}, "layers": result.layers,
                              "configs": result.configs, "message": result.message, "timed_on": result.timed_on,
                              "route": result.route})
    proto, report = builder.build(result.int8)
    return proto, report, result


def _from_entry(entry: dict | None, names: list[str]) -> PlanResult | None:
    """A cached plan as a PlanResult, or None when it does not fit these layers (or is malformed)."""
    try:
        int8 = frozenset(entry["int8"])
        ratios = {int(b): float(r) for b, r in entry["ratios"].items()}
        layers = list(entry["layers"])
        if not int8 <= set(names) or sorted(r["node"] for r in layers) != sorted(names) or not all(r > 0 for r in ratios.values()):
            return None
        return PlanResult(int8, ratios, layers, list(entry["configs"]), str(entry["message"]), dict(entry["timed_on"]),
                          route=str(entry.get("route", PlanResult.route)))
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


# ---- as recipe steps ---------------------------------------------------------------------------



@register("plan_int8")
class PlanInt8Pass(GencompressPass):
    """Static int8 with a measured per-layer plan (the module docstring): the int8 rewrites and
    insert_qdq on the layers where int8 pays for ``objective`` on ``provider`` at ``batches`` with
    ``threads`` threads; the other layers compute in float with int8 weights folded at load.
    ``self.report["layers"]``: per layer, the choice and the measured reason."""

    @dataclass(frozen=True)
    class Options(StaticOptions):
        objective: str = DEFAULT_OBJECTIVE
        exclude: tuple[str, ...] = ()
        rewrite: bool = True
        batches: tuple[int, ...] = DEFAULT_BATCHES
        threads: int = DEFAULT_THREADS
        provider: str = "CPUExecutionProvider"

        def __post_init__(self):
            super().__post_init__()
            if self.objective not in OBJECTIVES:
                raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
            if self.threads <= 0 or not self.batches or any(int(b) <= 0 for b in self.batches):
                raise ValueError("threads and batches must be positive")

    @property
    def in_place(self) -> bool:  # builds a new model from the measured plan
        return False

    timer = None  # tests: replaces the interleaved timer

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from gencompress.verbs.quantizers import fold_into_layers, prepare

        o = self.options
        notes: list[str] = []
        reference = ir.serde.serialize_model(model)
        work = ir.serde.deserialize_model(reference)
        prepare(work)
        if o.rewrite:
            fold_into_layers(work)
        builder = ConfigBuilder.create(
            ir.serde.serialize_model(work), rewrite=o.rewrite, exclude=tuple(o.exclude),
            static_options=StaticOptions(**o.static_fields()), log=notes.append,
        )
        del work
        timer = self.timer or interleaved_timer(reference, provider=o.provider, threads=o.threads, batches=o.batches, seed=o.seed)
        proto, report, result = planned_route(builder, o.objective, timer, model_bytes(reference), notes.append)
        self.report = {"layers": result.layers, "objective": o.objective, "message": result.message, "route": result.route,
                       "speed": {str(b): round(1 / r, 3) for b, r in result.ratios.items()},
                       "configs_measured": len(result.configs), "folded_weights": report.get("folded_weights", 0),
                       "timed_on": result.timed_on, "cached": result.cached, "notes": [n for n in notes if n.startswith("note:")]}
        return ir.passes.PassResult(ir.serde.deserialize_model(proto), True)


def planned_route(builder: ConfigBuilder, objective: str, timer, file_bytes: int, log=lambda m: None) -> tuple[onnx.ModelProto, dict, PlanResult]:
    """(model, quantizer report, plan) of the plan_int8 step, by quantize's route: a model over
    ``ISOLATE_BYTES`` is first planned from its layers timed alone (``predicted_plan``: decided, it
    is built every layer int8 and never timed whole); then, when a timed plan would not fit in memory
    (``plan_memory_note``), every layer int8 untimed, with the note; else the timed plan (``plan``)."""
    from gencompress.verbs.plan_cache import PlanCache

    result = None
    if objective != "size" and builder.layers and predicts_first(file_bytes) and getattr(timer, "isolated", None):
        why = f"a {file_bytes / 1e6:.0f} MB model: timed whole, it would hold a float session of it beside each configuration"
        result = predicted_plan(builder.isolation(), timer, objective, why, log)
    note = plan_memory_note(file_bytes) if result is None and objective != "size" and builder.layers else None
    if note:
        log(note)
        result = PlanResult(frozenset(l["node"] for l in builder.layers), {},
                            [{"node": l["node"], "choice": "int8", "reason": note[len("note: "):], "decided": "untimed"} for l in builder.layers],
                            message=note[len("note: "):], route=ROUTE_MEMORY)
    if result is None:
        return plan(builder, objective, timer, log, cache=PlanCache())
    op_of = {l["node"]: l["op_type"] for l in builder.layers}
    for row in result.layers:
        row["op_type"] = op_of.get(row["node"])
    proto, report = builder.build(result.int8)
    return proto, report, result
