"""`gencompress compress`: export → recipe of passes → check, written to one folder.

    OUT_DIR/reference.onnx   the float model (exported, or a copy of the given .onnx)
    OUT_DIR/model.onnx       the compressed model
    OUT_DIR/report.json      fidelity, latency, sizes, per-layer precision/sparsity, recipe
    OUT_DIR/report.html      the same, self-contained, with samples side by side
    OUT_DIR/ship/            with ``ship_targets``: the edge bundle of model.onnx (see edge/bundle.py)

Everything is built in a hidden staging folder inside OUT_DIR (same file system, so the final
moves are renames) and moved in only when the whole job succeeded. The commit swaps the set of
files this tool writes (the four above and ``sweep/``) by renames: the previous run's set is first
renamed aside, the new set renamed in, then the old set deleted; a failure midway renames
everything back, so OUT_DIR never mixes two runs. Other files in OUT_DIR are never touched. An
interrupt (Ctrl-C, SIGTERM) removes the staging folder, and OUT_DIR if this run created it.

Parameters of ``compress``: ``model``: zoo name, ``file.py:Name``, ``package.module:attr`` or an
``.onnx`` path. ``recipe``: a recipe file path or a list of steps; default:
``default_recipe(**flags)``. ``sweep``: (key, values): extra configurations of the flag recipe,
for the size-vs-PSNR chart. ``target_psnr``: search the configurations for the one meeting it
(``verbs/target_search.py``). ``ship_targets``: also bundle the compressed model into
OUT_DIR/ship for these targets (``edge/bundle.py``); if only the web runtime cannot be
fetched, everything else is still written and ``PartialShip`` is raised after the move.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from gencompress.arguments import check_types, target_psnr_value
from gencompress.errors import GencompressError
from gencompress.verbs.prune import PASS_OF_MODE
from gencompress.verbs.quantizers import MODES

QUANT_MODES = (*MODES, "none")
SWEEP_KEYS = ("sparsity", "bits", "mode", "calib")
OUTPUT_FILES = ("reference.onnx", "model.onnx", "report.json", "report.html")


def options_exclude(exclude) -> dict:
    """A recipe step's ``exclude`` option: absent when nothing is excluded (the step's default)."""
    if isinstance(exclude, str):  # the API's exclude="conv1,conv2", as quantize takes it (not one letter each)
        exclude = [name.strip() for name in exclude.split(",") if name.strip()]
    return {"exclude": list(exclude)} if exclude else {}


def default_recipe(
    *,
    mode: str = "static",
    sparsity: float = 0.0,
    prune_mode: str = "unstructured",
    prune_scope: str | None = None,
    nm: str = "2:4",
    bits: int = 8,
    calib: str = "minmax",
    calib_size: int | None = None,
    per_tensor: bool = False,
    activations: str = "uint8",
    int8_kernels: str = "portable",
    rewrite: bool = True,
    exclude: tuple[str, ...] = (),
    seed: int = 0,
    objective: str = "balanced",
    timing: dict | None = None,
    distill: int = 0,
) -> list[dict]:
    """The recipe the common flags stand for: cleanup → prune? → distill? → (rewrite →) quantize.

    Pruning runs when ``sparsity > 0``, or with ``prune_mode="nm"`` (whose N:M fixes the sparsity).
    ``distill`` > 0: that many distillation steps against the input model, after pruning.
    """
    if mode not in QUANT_MODES:
        raise GencompressError(f"--mode {mode!r}: one of {', '.join(QUANT_MODES)}")
    if prune_mode not in PASS_OF_MODE:
        raise GencompressError(f"--prune-mode {prune_mode!r}: one of {', '.join(PASS_OF_MODE)}")
    if not 0 <= sparsity < 1:
        raise GencompressError(f"--sparsity must be in [0, 1), got {sparsity}")
    steps: list[dict] = [{"pass": "cleanup", "options": {}}]
    if prune_mode == "nm":  # N:M sets the sparsity itself
        if sparsity > 0:
            raise GencompressError("--sparsity does not apply to --prune-mode nm; --nm N:M sets the sparsity")
        n, m = _parse_nm(nm)
        steps.append({"pass": "nm_prune", "options": {"n": n, "m": m}})
    elif sparsity > 0:
        options = {"sparsity": sparsity}
        if prune_scope is not None and prune_scope != "layer" and prune_mode != "unstructured":
            raise GencompressError(f"--prune-scope {prune_scope} applies to --prune-mode unstructured only")
        if prune_scope is None:  # one threshold across the layers when distillation wins the accuracy back
            prune_scope = "global" if distill and prune_mode == "unstructured" else "layer"
        if prune_scope != "layer":
            options["scope"] = prune_scope
        steps.append({"pass": PASS_OF_MODE[prune_mode], "options": options})
    if distill:
        if isinstance(distill, bool) or not isinstance(distill, int) or distill < 0:
            raise GencompressError(f"--distill must be a number of steps, 0 or more, got {distill!r}")
        steps.append({"pass": "distill", "options": {"steps": distill, "seed": seed}})
    from gencompress.verbs.int8_plan import check_objective

    check_objective(objective)
    if mode == "static":
        options = {"calib": calib, "per_tensor": per_tensor, "activations": activations, "seed": seed}
        if int8_kernels != "portable":
            options["int8_kernels"] = int8_kernels
        if calib_size is not None:
            options["calib_size"] = calib_size
        options.update(options_exclude(exclude))
        if objective != "size":  # measure, then decide per layer (verbs/int8_plan.py)
            steps.append({"pass": "plan_int8", "options": {"objective": objective, **options, "rewrite": rewrite, **(timing or {})}})
        else:
            if rewrite:
                steps.append({"pass": "rewrite_for_int8", "options": {"layout_rewrites": True, **options_exclude(exclude)}})
            steps.append({"pass": "insert_qdq", "options": options})
    elif mode == "weight-only":
        options = {"bits": bits}
        options.update(options_exclude(exclude))
        steps.append({"pass": "weight_only_quantize", "options": options})
        if objective != "size" and bits == 8:  # float compute: int8 weights folded at load, not dequantized per call
            steps.append({"pass": "fold_weights", "options": {}})
    elif mode == "fp16":
        steps.append({"pass": "fp16_convert", "options": options_exclude(exclude)})
    return steps


def _parse_nm(nm: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in nm.split(":"))
    except ValueError:
        raise GencompressError(f"--nm {nm!r}: expected N:M, e.g. 2:4") from None
    if not 0 < n < m:
        raise GencompressError(f"--nm {nm!r}: need 0 < N < M")
    return n, m


def parse_sweep(text: str) -> tuple[str, list]:
    """``KEY=V1,V2,...`` with KEY one of sparsity, bits, mode, calib."""
    key, sep, values = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or key not in SWEEP_KEYS or not values.strip():
        raise GencompressError(f"--sweep {text!r}: expected KEY=V1,V2,... with KEY one of {', '.join(SWEEP_KEYS)}")
    items = [v.strip() for v in values.split(",") if v.strip()]
    try:
        if key == "sparsity":
            items = [float(v) for v in items]
        elif key == "bits":
            items = [int(v) for v in items]
    except ValueError:
        raise GencompressError(f"--sweep {text!r}: {key} values must be numbers") from None
    return key, items


def run_recipe_on(reference_path, recipe) -> tuple[object, list[dict]]:
    """Load the reference as onnx_ir and run the recipe on it; returns (ModelProto, pass reports)."""
    import onnx_ir as ir

    from gencompress.onnx_io import load_ir
    from gencompress.passes.cleanup import strip_debug_metadata
    from gencompress.verbs.quantizers import finalize
    from gencompress.verbs.recipe import run_recipe

    model, reports = run_recipe(load_ir(reference_path), recipe)
    strip_debug_metadata(model)  # as quantize does, whether or not the recipe starts with cleanup
    return finalize(ir.serde.serialize_model(model)), reports  # the same file quantize writes


def compress(
    model,
    out_dir,
    *,
    recipe=None,
    checkpoint=None,
    inputs=None,
    batch_size: int | None = None,
    samples: int | None = None,
    seed: int = 0,
    bench: bool = True,
    batches=(1, 64),
    threads=(2,),
    runs: int = 50,
    provider: str = "CPUExecutionProvider",
    sweep: tuple[str, list] | None = None,
    flags: dict | None = None,
    target_psnr: float | None = None,
    ship_targets=None,
    exported=None,
    keep_previews: bool = False,
    log=None,
    progress: bool = False,
) -> dict:
    """Run the whole job; returns the report dict (as written to report.json; with
    ``keep_previews`` its ``fidelity.preview`` keeps the sample arrays report.html shows, which
    report.json has only the shapes of). The other parameters: the module docstring."""
    from gencompress.verbs import check as rc

    from gencompress.arguments import out_dir_path, seed_value

    log = log or (lambda msg: None)
    flags = _checked_flags(flags)
    seed = seed_value(seed)
    out = out_dir_path(out_dir)
    samples, batches, threads, runs, provider = checked_counts(samples, batches, threads, runs, provider, bench)
    timing = {"batches": list(batches), "threads": threads[0], "provider": provider}
    # Everything that can be checked is checked before any work is done.
    steps, recipe_source = _steps_of(recipe, flags, timing, target_psnr, sweep)
    sweep_recipes = _sweep_recipes(sweep, recipe, flags)
    is_onnx = _check_model_argument(model, checkpoint, inputs, batch_size)
    if exported is not None and is_onnx:
        raise GencompressError("exported: an .onnx model is its own reference; give exported only with a torch model")
    if exported is not None and not isinstance(exported, (str, os.PathLike)):
        raise GencompressError(f"exported: the path of a torch model's earlier export, got {type(exported).__name__}")
    if ship_targets:
        from gencompress.edge.bundle import parse_targets

        ship_targets = parse_targets(ship_targets)
    _refuse_overwrite_inputs(out, [model if is_onnx else None, checkpoint, exported, recipe if isinstance(recipe, (str, Path)) else None],
                             sweep=bool(sweep_recipes), ship=bool(ship_targets))

    created_out = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as e:
        raise GencompressError(f"{out}: cannot create output folder ({e.strerror})") from None
    committed = False
    partial = None
    try:
        reference = staging / "reference.onnx"
        source = _write_reference(model, reference, is_onnx, exported=exported, checkpoint=checkpoint, inputs=inputs, seed=seed,
                                  batch_size=batch_size, samples=samples, log=log)
        candidate = staging / "model.onnx"
        if target_psnr is not None:
            search, pass_reports = _search_target(reference, candidate, steps, target_psnr, flags, seed, timing, log)
        else:
            steps, sweep_recipes = _calibration_count(reference, steps, sweep_recipes, log)
            search, pass_reports = None, _run_steps(reference, candidate, steps, log)
        report = _measure_and_report(reference, candidate, staging, steps, pass_reports, search, sweep_recipes, source=source,
                                     recipe_source=recipe_source, samples=samples, seed=seed, bench=bench, batches=batches,
                                     threads=threads, runs=runs, provider=provider, progress=progress, log=log)
        rc.write_report(staging, report)
        if ship_targets:
            partial = _ship_into(candidate, staging / "ship", out, ship_targets, log)
        _move_into(staging, out)
        committed = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created_out and not committed:
            shutil.rmtree(out, ignore_errors=True)  # this run made it: leave nothing behind
    if partial is not None:
        raise partial
    written = json.loads((out / "report.json").read_text())
    if keep_previews and (report.get("fidelity") or {}).get("preview") is not None:
        written["fidelity"]["preview"] = report["fidelity"]["preview"]
    return written


def _calibration_count(reference, steps, sweep_recipes, log) -> tuple[list[dict], list[tuple[str, list[dict]]]]:
    """``steps`` and ``sweep_recipes`` with the default calibration count written into their static
    int8 steps that would draw it (no calib_size, no calib_data): counted once, from the reference,
    as quantize counts it, and said in quantize's note when the calibration budget cut it, so the
    count said is the count every step draws (and the report's recipe records it)."""
    from gencompress.passes.registry import STATIC_INT8
    from gencompress.runtime_check.calibration import calib_size_note

    def draws(step) -> bool:
        options = step.get("options") or {}
        return step["pass"] in STATIC_INT8 and options.get("calib_size") is None and options.get("calib_data") is None

    if not any(draws(step) for recipe in [steps, *(r for _, r in sweep_recipes)] for step in recipe):
        return steps, sweep_recipes
    count, note = calib_size_note(reference)
    if note:
        log(note)

    def counted(recipe):
        return [{**step, "options": {**(step.get("options") or {}), "calib_size": count}} if draws(step) else step for step in recipe]

    return counted(steps), [(label, counted(recipe)) for label, recipe in sweep_recipes]


def _run_steps(reference, candidate, steps, log) -> list[dict]:
    """The recipe run on the reference, the result written to ``candidate``; the step reports."""
    from gencompress.onnx_io import save_model

    log(f"running {len(steps)} passes: {' → '.join(s['pass'] for s in steps)}")
    compressed, pass_reports = run_recipe_on(reference, steps)
    for note in (n for entry in pass_reports for n in (entry.get("report") or {}).get("notes") or ()):
        log(note)  # a step's route said aloud (the int8 plan's memory fallback)
    save_model(compressed, candidate)
    return pass_reports


def _ship_into(candidate, folder, out, targets, log):
    """The edge bundle of ``candidate`` in ``folder``; the ``PartialShip`` of a bundle that lacks only
    the web runtime (npm unreachable: the rest is complete, so it is kept), else None."""
    from gencompress.edge.bundle import PartialShip, ship as ship_bundle

    log(f"shipping the compressed model into {out / 'ship'} ({', '.join(targets)}) ...")
    try:
        ship_bundle(candidate, folder, targets=targets, source=str((out / "model.onnx").resolve()), log=log)
    except PartialShip as e:
        return e
    return None


def checked_counts(samples, batches, threads, runs, provider, bench: bool):
    """The measurement's counts checked before any work (the limits keep a typo from hanging the
    run for hours) and the provider resolved (an unavailable one fails now, not after export)."""
    from gencompress.arguments import MAX_BATCH, MAX_RUNS, MAX_SAMPLES, MAX_THREADS, positive_int, positive_ints

    samples = None if samples is None else positive_int(samples, "--samples", MAX_SAMPLES)  # None: the reference's default
    batches = positive_ints(batches, "--batch", MAX_BATCH)
    threads = positive_ints(threads, "--threads", MAX_THREADS)
    runs = positive_int(runs, "--runs", MAX_RUNS)
    if bench:
        from gencompress.runtime_check.sessions import resolve_providers

        (provider,) = resolve_providers([provider])
    return samples, batches, threads, runs, provider


def _checked_flags(flags) -> dict:
    """``flags``: keyword arguments of ``default_recipe`` (an unknown one is a user error, not a TypeError)."""
    import inspect

    flags = dict(flags or {})
    unknown = sorted(set(flags) - set(inspect.signature(default_recipe).parameters))
    if unknown:
        raise GencompressError(f"flags: unknown option(s) {', '.join(map(repr, unknown))}; known: {', '.join(inspect.signature(default_recipe).parameters)}")
    check_types(default_recipe, flags, "compress: flags")
    return flags


def _steps_of(recipe, flags: dict, timing: dict, target_psnr, sweep) -> tuple[list[dict], str]:
    """The validated steps to run and where they came from (flags, a recipe file, the API)."""
    from gencompress.passes.registry import load_recipe, validate_recipe
    from gencompress.verbs import recipe as _steps  # noqa: F401  (registers the steps that run a model)

    if recipe is None:
        if flags.get("objective", "balanced") != "size":  # the plan is timed as the report's latency will be
            flags["timing"] = timing
        steps, source = validate_recipe(default_recipe(**flags)), "flags"  # option ranges checked now, not after the export
    elif isinstance(recipe, (str, Path)):
        steps, source = load_recipe(recipe), str(recipe)
    else:
        steps, source = validate_recipe(recipe), "api"
    if target_psnr is None:
        return steps, source
    # the target search tries the configurations itself (verbs/target_search.py)
    if recipe is not None or sweep:
        raise GencompressError("--target-psnr searches configurations itself; it cannot be combined with --recipe or --sweep")
    target_psnr = target_psnr_value(target_psnr)
    if flags.get("mode", "static") != "static" or flags.get("sparsity") or flags.get("prune_mode", "unstructured") != "unstructured":
        raise GencompressError("--target-psnr chooses the quantization itself: drop --mode, --sparsity and --prune-mode")
    return [{"pass": "target_search", "options": {"target_psnr": target_psnr, "objective": flags.get("objective", "balanced")}}], source


def _sweep_recipes(sweep, recipe, flags: dict) -> list[tuple[str, list[dict]]]:
    """(label, validated steps) for each value of ``--sweep KEY=V1,V2``."""
    from gencompress.passes.registry import validate_recipe

    if not sweep:
        return []
    if recipe is not None:
        raise GencompressError("--sweep varies the flag recipe; it cannot be combined with --recipe")
    key, values = sweep
    if key not in SWEEP_KEYS:
        raise GencompressError(f"sweep {key!r}: expected one of {', '.join(SWEEP_KEYS)}")
    mode = flags.get("mode", "static")
    if (key == "bits" and mode != "weight-only") or (key == "calib" and mode != "static"):
        needed = "weight-only" if key == "bits" else "static"
        raise GencompressError(f"--sweep {key}=...: {key} applies to --mode {needed} only (this run is --mode {mode})")
    for value in values:
        check_types(default_recipe, {key: value}, "compress: sweep")
    return [(f"{key}={value}", validate_recipe(default_recipe(**{**flags, key: value}))) for value in values]


def _check_model_argument(model, checkpoint, inputs, batch_size) -> bool:
    """Whether ``model`` is an .onnx file (else a torch model to export)."""
    if not isinstance(model, (str, os.PathLike)):
        raise GencompressError(f"model: expected a zoo name, file.py:Name, package.module:attr or an .onnx path, got {type(model).__name__}")
    is_onnx = str(model).endswith(".onnx")
    if is_onnx and (checkpoint or inputs or batch_size):
        raise GencompressError("--checkpoint, --input and --batch-size apply to a torch model, not an .onnx file")
    return is_onnx


def _write_reference(model, reference: Path, is_onnx: bool, *, exported, checkpoint, inputs, seed, batch_size, samples, log) -> str:
    """The float reference at ``reference``: the .onnx file checked and upgraded, the torch model
    exported, or its earlier export ``exported`` copied. Returns the model's source for the report."""
    if exported is not None:
        return _copy_export(exported, reference, samples)
    if not is_onnx:
        from gencompress.exporter.export import export

        log(f"exporting {model} ...")
        return export(model, reference, checkpoint=checkpoint, inputs=inputs, seed=seed, batch_size=batch_size, log=log)["model"]
    from gencompress.exporter.upgrade import upgrade_opset
    from gencompress.onnx_io import load_model, save_model

    proto = _checked_reference(load_model(model), model, samples)
    save_model(upgrade_opset(proto, model, log), reference)
    return str(model)


def _checked_reference(proto, path, samples: int):
    """``proto`` (read from ``path``) if it can be a reference: outputs the checks can compare,
    finite weights, input priors and output range in its metadata, ``samples`` within budget."""
    from gencompress.inputs import check_batch_budget, output_range_of_model, specs_of_model
    from gencompress.onnx_io import refuse_nonfinite_weights

    from gencompress.runtime_check.fidelity import DEFAULT_SAMPLES, refuse_uncomparable_outputs

    refuse_uncomparable_outputs(proto, str(path))
    refuse_nonfinite_weights(proto, path)
    check_batch_budget(specs_of_model(proto), samples or DEFAULT_SAMPLES)  # the model's metadata, checked before any work
    output_range_of_model(proto)
    return proto


def _copy_export(exported, reference: Path, samples: int) -> str:
    """``exported`` (what ``export`` wrote for this torch model) copied byte for byte, as the
    export would have written it; its recorded source is the report's."""
    import onnx

    from gencompress.onnx_io import load_header

    proto = load_header(exported)  # all of it: an export without a side file holds its weights inline
    source = next((p.value for p in proto.metadata_props if p.key == "gencompress.source"), None)
    if source is None:
        raise GencompressError(f"{exported}: not written by gencompress export (no gencompress.source metadata)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise GencompressError(f"{exported}: an export with its weights in a side file; give only the model to export it again")
    _checked_reference(proto, exported, samples)  # the checks an .onnx model gets
    shutil.copyfile(exported, reference)
    return source


def _search_target(reference, candidate, steps, target_psnr, flags, seed, timing, log) -> tuple[dict, list[dict]]:
    """``--target-psnr``: the chosen candidate written to ``candidate``; (the search, its step report)."""
    from gencompress.onnx_io import load_model, save_model
    from gencompress.verbs.target_search import search_target

    log(f"searching for the {flags.get('objective', 'balanced')} model meeting {target_psnr:g} dB ...")
    search = search_target(reference, candidate.parent / "candidates", target=target_psnr, objective=flags.get("objective", "balanced"),
                           seed=seed, calib_size=flags.get("calib_size"), log=log, timing=timing)
    log(search["message"])
    save_model(load_model(search["chosen"]), candidate)
    rows = [{"candidate": r["label"], "psnr_db": round(r["psnr"], 2) if r["psnr"] != float("inf") else None, "bytes": r["bytes"],
             **{f"speed_b{b}": round(1 / v, 3) for b, v in r["ratios"].items()}, "chosen": r["chosen"]} for r in search["rows"]]
    report = {"message": search["message"], "met": search["met"], "layers": rows}
    return search, [{"pass": "target_search", "options": steps[0]["options"], "report": report}]


def _measure_and_report(reference, candidate, staging, steps, pass_reports, search, sweep_recipes, *, source, recipe_source,
                        samples, seed, bench, batches, threads, runs, provider, progress, log) -> dict:
    """Fidelity, latency and the sweep's extra configurations measured; the report (as report.json)."""
    from gencompress.onnx_io import load_model, save_model
    from gencompress.runtime_check.fidelity import budgeted_samples, held_back_seed
    from gencompress.verbs import check as rc

    note = None
    if samples is None:  # the held-back set's size for this model's compute, said when under 256
        samples, note = budgeted_samples(reference)
    log(note or f"checking fidelity on {samples} seeded samples ...")
    # Held back: calibration drew its latents with ``seed``; fidelity must not reuse them.
    # The same set quantize and check evaluate on (one fidelity protocol).
    check_seed = held_back_seed(seed)
    fidelity = rc.check(reference, candidate, samples=samples, seed=check_seed, preview=8, progress=progress)
    fidelity["samples_note"] = note
    latency = None
    if bench:
        log("timing reference and candidate, interleaved ...")
        latency = rc.bench(candidate, reference=reference, providers=(provider,), batches=tuple(batches),
                           threads=tuple(threads), runs=runs, seed=seed, memory=False, progress=progress)
    sweep_rows = []
    for r in (search or {}).get("rows", []):  # the candidates the search tried, on the size/speed/PSNR chart
        sweep_rows.append({"label": r["label"], "bytes": r["bytes"], "psnr_db": None if r["psnr"] == float("inf") else round(r["psnr"], 3),
                           **{f"speed_b{b}": round(1 / v, 3) for b, v in r["ratios"].items()}, "selected": r["chosen"]})
    for label, sweep_steps in sweep_recipes:
        log(f"sweep {label} ...")
        swept, _ = run_recipe_on(reference, sweep_steps)
        swept_path = staging / "sweep" / f"{label.replace('=', '-')}.onnx"
        save_model(swept, swept_path)
        fid = rc.check(reference, swept_path, samples=samples, seed=check_seed)
        sweep_rows.append(rc.sweep_entry(label, swept_path, fid, file=f"sweep/{swept_path.name}"))
    if sweep_recipes:  # the next run may replace this folder: the marker says it is this tool's
        (staging / "sweep" / SWEEP_MARKER).write_text("written by gencompress compress --sweep; its next run replaces this folder\n")
    report = rc.build_report(reference, candidate, fidelity=fidelity, latency=latency, recipe=steps,
                             passes=[_pass_entry(r) for r in pass_reports], sweep=sweep_rows or None, title=f"gencompress: {source}",
                             source=source, recipe_source=recipe_source)
    report["reference"], report["candidate"] = "reference.onnx", "model.onnx"
    if _timed(steps):
        report["reproducibility"] = TIMED_NOTE
    report["warnings"] = _result_warnings(load_model(candidate), report, pass_reports)  # printed under the summary
    return without_prefix(report, f"{staging}{os.sep}")  # identical runs → identical report.json


TIMED_NOTE = ("The int8 plan chose each layer's precision from timings (measured in this run, or cached from an earlier "
              "run of the same model and options on this machine, which then writes the same bytes): on another machine, "
              "or timed afresh on a busy one, model.onnx and this report may differ. --objective size is untimed: the same "
              "bytes every run.")


def _timed(steps) -> bool:
    """Whether a step decides by timings (the int8 plan; the target search unless for size)."""
    return any(s["pass"] == "plan_int8" and (s.get("options") or {}).get("objective", "balanced") != "size"
               or s["pass"] == "target_search" and (s.get("options") or {}).get("objective", "balanced") != "size" for s in steps)


def _result_warnings(compressed, report: dict, pass_reports) -> list[str]:
    from gencompress.result_warnings import compression_warnings

    float_layers = [layer for entry in pass_reports for layer in ((entry.get("report") or {}).get("float_layers") or [])]
    latency = (report.get("latency") or {}).get("results")
    return compression_warnings(compressed, report["sizes"]["ratio"], latency=latency, float_layers=float_layers)


def _refuse_overwrite_inputs(out: Path, inputs, *, sweep: bool, ship: bool = False) -> None:
    """OUT_DIR's files are replaced at the end: none of them may be one of the inputs."""
    from gencompress.onnx_io import refuse_overwrite

    inputs = [Path(p) for p in inputs if p is not None]
    for name in (*OUTPUT_FILES, *SIDE_FILES):
        refuse_overwrite(out / name, inputs)
    # a folder this run replaces must be one a run wrote: sweep/ has its marker, ship/ its bundle's manifest
    for folder, used, mark, flag in (("sweep", sweep, SWEEP_MARKER, "--sweep"), ("ship", ship, "manifest.json", "--ship")):
        path = out / folder
        if used and os.path.lexists(path) and (path.is_symlink() or not (path / mark).is_file()):
            raise GencompressError(f"{path}: exists and was not written by gencompress (no {mark} in it); "
                                   f"{flag} would replace it: move it or choose another OUT_DIR")
    # replaced as a whole by this run (only when they exist: the check reads each input's external-data list)
    replaced = [folder for folder, used in (("sweep", sweep), ("ship", ship)) if used and (out / folder).exists()]
    if not replaced:
        return
    from gencompress.onnx_io import external_data_files

    for p in inputs:
        for f in [p, *external_data_files(p)]:
            for folder in replaced:
                if f.resolve().is_relative_to((out / folder).resolve()):
                    raise GencompressError(f"{f}: is inside {out / folder}, which this run replaces; choose another OUT_DIR")


def _pass_entry(entry: dict) -> dict:
    """A recipe step's report in the shape the HTML report renders (summary scalars + layer rows)."""
    report = entry.get("report") or {}
    summary = {k: v for k, v in report.items() if isinstance(v, (int, float, str, bool)) or v is None}
    layers = next((v for v in report.values() if isinstance(v, list) and v and isinstance(v[0], dict)), None)
    row = {"pass": entry["pass"], "options": entry["options"], "summary": summary}
    if report.get("loss_curve"):  # distill: drawn as a chart in report.html
        row["loss_curve"] = report["loss_curve"]
    if layers:
        row["layers"] = [{k: v for k, v in layer.items() if not isinstance(v, (dict, list))} for layer in layers]
    return row


STAGING_PREFIX = ".gencompress-staging-"
SWEEP_MARKER = ".gencompress-sweep"  # in the sweep/ folder a run wrote: only such a folder is replaced
# the models' weights, beside them when above the 2 GB limit of a self-contained .onnx
SIDE_FILES = ("reference.onnx.data", "model.onnx.data")
MANAGED = (*OUTPUT_FILES, *SIDE_FILES, "sweep", "ship")  # what a run owns in OUT_DIR; anything else there is left alone


def without_prefix(value, prefix: str):
    """``value`` with ``prefix`` (the staging folder) cut from every string in it."""
    if isinstance(value, str):
        return value.replace(prefix, "")
    if isinstance(value, dict):
        return {k: without_prefix(v, prefix) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(without_prefix(v, prefix) for v in value)
    return value


def _move_into(staging: Path, out: Path) -> None:
    """Swap OUT_DIR's managed files for the staged ones by renames, all or nothing.

    The previous run's files go to a hidden folder first (renames within OUT_DIR), the new ones
    are renamed in, then the old ones deleted. Any failure renames everything back.
    """
    names = [name for name in MANAGED if (staging / name).exists()]  # sweep/, ship/ only when this run made them
    # a previous run's side file goes too when this run's model has none (it would be stale)
    stale = [name for name in SIDE_FILES if name not in names and os.path.lexists(out / name)]
    old = Path(tempfile.mkdtemp(prefix=".gencompress-previous-", dir=out))
    moved_old, moved_new = [], []
    try:
        for name in [*names, *stale]:
            if os.path.lexists(out / name):
                (out / name).rename(old / name)
                moved_old.append(name)
        for name in names:
            (staging / name).rename(out / name)
            moved_new.append(name)
    except BaseException as e:
        for name in moved_new:
            with _ignored():
                (out / name).rename(staging / name)
        for name in moved_old:
            with _ignored():
                (old / name).rename(out / name)
        shutil.rmtree(old, ignore_errors=True)
        if isinstance(e, OSError):
            raise GencompressError(f"{out}: cannot move the results in ({e.strerror}); OUT_DIR is as before") from None
        raise
    shutil.rmtree(old, ignore_errors=True)


class _ignored:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)
