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

What planning costs besides the timing: a configuration built only to be timed skips the
search for int8 weight values safe on kernels without VNNI (the same graph and shapes run the
same kernels at the same cost; the chosen model is built once more with it); at most
``KEEP_BUILDS`` configurations stay built (each holds the weights once more), the others are
remembered by size. A plan is kept on disk (``plan_cache``) by model content, options and machine
kind (int8 kernel path, onnxruntime version, threads): a second run reuses it without timing and
writes the same bytes. The plan says what it was timed on (``PlanResult.timed_on``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx_ir as ir

from gencompress.errors import GencompressError
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

Ratios = dict  # {batch: model p50 / float p50}


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


def plan_layers(layers: list[str], measure: Callable[..., list[Ratios]], objective: str, noise: float = NOISE,
                size: Callable[[frozenset], int] | None = None, groups: list[list[str]] | None = None) -> PlanResult:
    """Choose the layers that compute in int8.

    ``measure(configs, reference=True, give_up=None)`` times each configuration (a frozenset of int8
    layer names) interleaved and returns, per configuration, ``{batch: p50 / float p50}``; with
    ``reference=False`` it may leave the float model out and return ratios to the first
    configuration instead (the greedy steps compare configurations with each other, not with float);
    ``give_up(*ratios so far)`` true after a batch size: the other batch sizes may be left out
    (balanced: int8 already lost at batch 1, the larger, slower batches need no timing).
    ``groups``: layers decided together (``layer_groups``: the same op on the same shapes runs the
    same kernel at the same cost); default one group per layer.
    Greedy: start from every layer in int8; for ``STEP_GROUPS`` groups at a time in graph order,
    time the plan as it stands and, beside it, the plan with each of those groups in float (one
    interleaved run, so load drift hits them alike); keep each group's better form per the
    objective.
    Then compare the plan, all-int8 and no-int8 side by side with float and pick per the
    objective; balanced: of those not slower than float beyond ``noise`` whose ``size(config)``
    (bytes) is within ``SIZE_SLACK`` of the smallest, the one with the most int8 layers, unless
    another is faster than it beyond ``noise`` (then the fastest).
    """
    check_objective(objective)
    full, none = frozenset(layers), frozenset()
    if objective == "size" or not layers:
        return PlanResult(full, {}, [{"node": n, "choice": "int8", "reason": "objective size: every layer int8 (not timed)"} for n in layers])
    configs: list[dict] = []

    def timed(*candidates, reference=True, **kwargs):
        results = measure(list(candidates), reference=reference, **kwargs)
        for c, r in zip(candidates, results):
            configs.append({"int8": sorted(c), "vs": "float" if reference else "first", "ratios": {str(b): round(v, 4) for b, v in r.items()}})
        return results

    def hopeless(with_int8: Ratios, *flips: Ratios) -> bool:
        """balanced: for every group of the step, int8 is already slower beyond noise at one batch
        size; the other batch sizes cannot save it."""
        return objective == "balanced" and all(any(f[b] / with_int8[b] < 1.0 - noise for b in with_int8) for f in flips)

    current = full
    rows = []
    units = groups or [[n] for n in layers]
    for start in range(0, len(units), STEP_GROUPS):
        step = units[start:start + STEP_GROUPS]
        with_int8, *flips = timed(current, *(current - set(g) for g in step), reference=False, give_up=hopeless)
        for group, without in zip(step, flips):
            keep = int8_pays(with_int8, without, objective, noise)
            gain = {b: without[b] / with_int8[b] for b in with_int8}
            together = f" (decided with {len(group) - 1} more of its shape)" if len(group) > 1 else ""
            reason = (f"int8 {'pays' if keep else 'does not pay'}: the model runs "
                      + ", ".join(f"b{b} {g:.2f}x" for b, g in sorted(gain.items())) + f" as fast with it in int8 as in float{together}")
            for name in group:
                rows.append({"node": name, "choice": "int8" if keep else "float", "reason": reason,
                             "int8_gain": {str(b): round(g, 3) for b, g in gain.items()}})
        current = current - {r["node"] for r in rows if r["choice"] == "float"}
    order = {n: i for i, n in enumerate(layers)}
    rows.sort(key=lambda r: order[r["node"]])
    finals = list(dict.fromkeys([current, full, none]))
    measured = dict(zip(finals, timed(*finals)))
    chosen, message = choose_final(finals, measured, objective, noise, size, none)
    if chosen != current:
        for row in rows:
            choice = "int8" if row["node"] in chosen else "float"
            if choice != row["choice"]:
                row["choice"] = choice
                row["reason"] += (f"; overridden: the whole plan with {'all' if chosen == full else 'no'} layers in int8 measured"
                                  f" {'faster' if objective == 'speed' else 'not slower and is smaller, or faster'}")
    return PlanResult(chosen, measured[chosen], rows, configs, message)


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

        model = ir.serde.deserialize_model(prepared)
        graph = model.graph
        kept, _ = select_layers(find_layers(graph), exclude)
        decidable = [{"node": l.name, "op_type": l.op_type, "weights": [w.name for w in l.weights]} for l in kept if l.kind == "int8"]
        storage = [l.name for l in kept if l.kind == "weights"]
        groups = layer_groups(graph, [l["node"] for l in decidable])
        rewritten = rewritable_layers(model)
        return cls(prepared, rewrite and bool(rewritten), static_options, log, tuple(exclude), decidable, storage, groups, rewritten)

    def _quantizer(self, keep_float: frozenset):
        """(rewritten prepared proto's static quantizer, rewrite report) for this set of float ConvTransposes."""
        key = keep_float if self.rewrite else None
        if key not in self._quantizers:
            from gencompress.verbs.quantizers import calibrated_ranges, static_quantizer

            before = ir.serde.deserialize_model(self.prepared)  # wraps the proto's tensors, no copy
            if self._calibrated is None:
                self._calibrated = calibrated_ranges(before, self.static_options, log=self.log)
            model = ir.serde.deserialize_model(self.prepared)
            report = None
            if self.rewrite:
                model, report = rewrite_only(model, set(keep_float))
            proto = ir.serde.serialize_model(model)
            quantizer = static_quantizer(
                proto, self.static_options, log=self.log, exclude=self.exclude, before_rewrites=before if self.rewrite else None,
                calibrated=self._calibrated)
            _keep_last(self._quantizers, key, (quantizer, report))
        return self._quantizers[key]

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


KEEP_BUILDS = STEP_GROUPS + 1  # models kept built: one measurement's worth (each a whole copy of the weights)


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


# ---- the timer ---------------------------------------------------------------------------------


def interleaved_timer(reference, *, header: onnx.ModelProto | None = None, provider: str = "CPUExecutionProvider",
                      threads: int = DEFAULT_THREADS, batches=DEFAULT_BATCHES, seed: int = 0) -> Callable[[list[onnx.ModelProto]], list[Ratios]]:
    """``measure(models, reference=True) -> [{batch: p50 / float p50}]``: each call times the float
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
    probed: dict = {}  # batch -> (feeds, runs, warm-up runs), from the float model's time

    def slot(b):
        if b not in probed:
            probe = time_interleaved({"float": reference_session()}, sample_inputs(specs, b, seed), runs=3, warmup=1)
            p50 = max(float(np.median(probe["float"])), 1e-6)
            probed[b] = (sample_inputs(specs, b, seed), int(np.clip(TARGET_SLOT_SECONDS / p50, MIN_RUNS, 400)), 1 if p50 > 0.05 else 3)
        return probed[b]

    def reference_session():
        nonlocal float_session
        if float_session is None:
            # from the path when it is one: no bytes copy of the float model held for the plan
            float_session = make_session(reference, provider=provider, threads=threads, label="float")
        return float_session

    def measure(models, reference=True, give_up=None):
        sessions = {"float": reference_session()} if reference else {}
        for i, m in enumerate(models):
            sessions[i] = make_session(model_bytes(m), provider=provider, threads=threads, label=f"candidate {i}")
        out = [{} for _ in models]
        for b in batches:
            inputs, runs, warmup = slot(b)
            feeds = {k: cast_feeds(s, inputs) for k, s in sessions.items()}
            times = time_interleaved(sessions, feeds, runs=runs, warmup=warmup)
            base = float(np.median(times["float" if reference else 0]))
            for i in range(len(models)):
                out[i][b] = float(np.median(times[i])) / base
            if give_up is not None and give_up(*out):
                break
        return out

    measure.settings = {"provider": provider, "threads": threads, "batches": list(batches)}  # what the plan cache keys on
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
        def measure(configs, reference=True, give_up=None):
            return measure_models([builder.build(c, timing=True)[0] for c in configs], reference=reference, give_up=give_up)

        if objective != "size" and names:
            log(f"timing {len(names)} layer(s) in {len(builder.groups or names)} group(s) of the same shape, int8 vs float ({objective}) ...")
        result = plan_layers(names, measure, objective, size=builder.size, groups=builder.groups or None)
        result.timed_on = timed_on if objective != "size" and names else {}
        op_of = {l["node"]: l["op_type"] for l in builder.layers}
        for row in result.layers:
            row["op_type"] = op_of.get(row["node"])
        if key:
            cache.store(key, {"int8": sorted(result.int8), "ratios": {str(b): r for b, r in result.ratios.items()}, "layers": result.layers,
                              "configs": result.configs, "message": result.message, "timed_on": result.timed_on})
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
        return PlanResult(int8, ratios, layers, list(entry["configs"]), str(entry["message"]), dict(entry["timed_on"]))
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
        reference = ir.serde.serialize_model(model)
        work = ir.serde.deserialize_model(reference)
        prepare(work)
        if o.rewrite:
            fold_into_layers(work)
        builder = ConfigBuilder.create(
            ir.serde.serialize_model(work), rewrite=o.rewrite, exclude=tuple(o.exclude),
            static_options=StaticOptions(**o.static_fields()),
        )
        timer = self.timer or interleaved_timer(reference, provider=o.provider, threads=o.threads, batches=o.batches, seed=o.seed)
        from gencompress.verbs.plan_cache import PlanCache

        proto, report, result = plan(builder, o.objective, timer, cache=PlanCache())
        self.report = {"layers": result.layers, "objective": o.objective, "message": result.message,
                       "speed": {str(b): round(1 / r, 3) for b, r in result.ratios.items()},
                       "configs_measured": len(result.configs), "folded_weights": report.get("folded_weights", 0),
                       "timed_on": result.timed_on, "cached": result.cached}
        return ir.passes.PassResult(ir.serde.deserialize_model(proto), True)
