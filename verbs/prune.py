"""`gencompress.prune`: prune an ONNX file's weights and report what changed, file sizes included.

Three modes, one pass each: ``unstructured`` (``magnitude_prune``), ``nm`` (``nm_prune``) and
``channel`` (``channel_prune``). Zeros do not shrink a dense file, so the report also gives the
deflate-compressed size (zlib level 9 of the serialized model: what a download costs).

``sparse_initializers=True`` stores pruned weights as ONNX SparseTensorProto (flat int64
indices, the only index type the ONNX checker accepts) where that is smaller than dense.
onnxruntime loads them (it densifies them at load time: smaller file, no speed-up), but
``onnx.checker.check_model(full_check=True)`` rejects such a model: strict type inference types
a sparse initializer ``sparse_tensor(float)``, which Conv/Gemm/MatMul do not accept. With int64
indices a sparse weight is smaller only above ~2/3 sparsity (12 bytes per non-zero vs 4 per entry).
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
import onnx

from gencompress.errors import GencompressError
from gencompress.onnx_io import collect_cycles, deflate_files, deflate_level, deflate_size, materialize, refuse_nonfinite_weights, refuse_overwrite, save_model, spill, tensor_bytes, with_scratch_folder
from gencompress.passes.prune_report import DEFAULT_MIN_SIZE

MODES = ("unstructured", "nm", "channel")
PASS_OF_MODE = {"unstructured": "magnitude_prune", "nm": "nm_prune", "channel": "channel_prune"}


@with_scratch_folder  # streamed weights live there for the run
def prune(
    in_path,
    out_path,
    *,
    sparsity: float | None = None,
    mode: str = "unstructured",
    scope: str = "layer",
    nm: str = "2:4",
    exclude=(),
    min_size: int = DEFAULT_MIN_SIZE,
    keep_first_last: bool = False,
    criterion: str = "l1",
    sparse_initializers: bool = False,
    external_data: bool | None = None,
) -> dict:
    """Prune the weights of the ONNX model ``in_path`` and write it to ``out_path``.

    ``sparsity``: fraction of weights zeroed (``unstructured``) or of output channels removed
    (``channel``), in [0, 1); ``nm`` mode takes its sparsity from the pattern (``"2:4"``).
    Returns the report: options, one row per initializer, per-layer channels (channel mode),
    totals with file and deflated sizes, and warnings (e.g. an ``exclude`` that matched nothing).
    ``external_data``: write the weights to ``OUT.onnx.data`` beside the output (None: only above
    the 2 GB limit of a single .onnx).
    """
    import onnx_ir as ir

    from gencompress.passes.registry import make_pass

    options = _options(sparsity, mode, scope, nm, exclude, min_size, keep_first_last, criterion)
    refuse_overwrite(out_path, [in_path])
    from gencompress.onnx_io import inline_bytes, mapped_ir

    proto, densified, sizes_before = _read_input(in_path)
    model = mapped_ir(proto, in_path)  # wraps the proto's tensors, no copy
    del proto
    notes = _fold_fills(model)
    from gencompress.verbs.quantizers import own_tensors

    # large weights load_mapped leaves in memory (densified sparse ones, integer ones, those of
    # subgraphs) moved to the scratch folder and read back memory-mapped, one at a time:
    # the loaded proto is freed, and only the pruned copies are held in memory
    weight_bytes = tensor_bytes(model)
    if inline_bytes(model) > 2**20 and spill(model, "input.onnx") is not None:
        own_tensors(model)
        collect_cycles(weight_bytes)  # onnx_ir graphs hold reference cycles: the proto goes only with them
    signature = _signature(model.graph)
    p = make_pass(PASS_OF_MODE[mode], options)
    model = p(model).model
    report = dict(p.report)
    if not report["initializers"]:
        quantized = any(n.op_type == "DequantizeLinear" for n in model.graph)
        # e.g. the onnx wheel's "light" nets: every weight a ConstantOfShape fill, nothing stored to prune
        computed = sorted({n.inputs[1].producer().op_type for n in model.graph if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
                           and len(n.inputs) > 1 and n.inputs[1] is not None and n.inputs[1].producer() is not None
                           and n.inputs[1].producer().op_type in ("ConstantOfShape", "RandomNormal", "RandomUniform")})
        raise GencompressError(
            f"{in_path}: no prunable weights (no Conv, ConvTranspose, Gemm, MatMul, GRU or LSTM weight initializer)"
            + ("; it is quantized: prune the float model, then quantize" if quantized else "")
            + (f"; its layers' weights are computed in the graph ({', '.join(computed)}), not stored" if computed and not quantized else "")
        )
    if _signature(model.graph) != signature:  # a pass guarantee; never a user error
        raise RuntimeError(f"{PASS_OF_MODE[mode]} changed the graph's inputs or outputs")

    warnings = list(report.get("warnings", []))
    if densified:
        warnings.append(f"{densified} sparse initializer(s) of the input were read as dense tensors")
    if all(r["status"] != "pruned" for r in report["initializers"]) and (sparsity or mode == "nm"):
        warnings.append("nothing was pruned: every weight was skipped (see the reasons in the table)")
    sparse = None
    if sparse_initializers:
        out_model = ir.serde.serialize_model(materialize(model))
        sparse = _to_sparse(out_model, [r["name"] for r in report["initializers"] if r["status"] == "pruned"])
        warnings += sparse.pop("warnings")
    else:
        own_tensors(model)  # the weights left as they were: so that the input's proto is freed
        out_model = model
    del model
    written = save_model(out_model, out_path, inputs=[in_path], external_data=external_data)
    del out_model
    collect_cycles(weight_bytes)  # onnx_ir graphs hold reference cycles: the weights go before the output is read back

    return {**_result(in_path, out_path, mode, report, written, sizes_before, sparse, warnings), "notes": notes}


def _fold_fills(model) -> list[str]:
    """Layer weights the graph fills in with ConstantOfShape (nothing stored: the onnx wheel's
    "light" classic CNNs) made initializers first, so that they are pruned; the note says so."""
    from gencompress.passes.cleanup import fills_note, fold_weight_fills

    note = fills_note(model)
    if note is None:
        return []
    fold_weight_fills(model)
    return [note]


def _read_input(in_path):
    """The input's graph (weights left in their files, read memory-mapped when used, sparse
    initializers made dense), how many were sparse, and its (bytes, deflated bytes, deflate level)."""
    from gencompress.onnx_io import external_data_entries, load_external_data, load_mapped, stored_bytes

    proto = load_mapped(in_path)
    entries = external_data_entries(proto, Path(in_path))
    in_files = list(dict.fromkeys([Path(in_path).resolve(), *sorted(f.resolve() for _, f, _, _ in entries)]))
    bytes_before = stored_bytes(in_path, entries)
    refuse_nonfinite_weights(in_path, in_path)
    densified = _densify_sparse_initializers(proto)
    if densified:  # the dense model the pass starts from, serialized once for both sizes
        load_external_data(proto, in_path)
        dense = proto.SerializeToString(deterministic=True)
        bytes_before, level = len(dense), deflate_level(len(dense))
        deflate_before = deflate_size(dense, level)
        del dense
    else:  # the input's files, read in chunks, as deflate_after reads the output's
        level = deflate_level(bytes_before)
        deflate_before = deflate_files(in_files, level)
    return proto, densified, (bytes_before, deflate_before, level)


def _result(in_path, out_path, mode, report, written, sizes_before, sparse, warnings) -> dict:
    """The verb's report: options, one row per initializer, totals with file and deflated sizes."""
    bytes_before, deflate_before, level = sizes_before
    result = {"input": str(in_path), "output": str(out_path), "mode": mode, "pass": report["pass"], "options": report["options"]}
    for key in ("channels", "left_dense"):
        if key in report:
            result[key] = report[key]
    result["initializers"] = report["initializers"]
    result["totals"] = {
        **report["totals"],
        "bytes_before": bytes_before,
        "bytes_after": sum(f.stat().st_size for f in written),
        "deflate_before": deflate_before,
        "deflate_after": deflate_files(written, level),
        "deflate_level": level,
    }
    if sparse is not None:
        result["sparse_initializers"] = sparse
    result["warnings"] = warnings
    return result


def _options(sparsity, mode, scope, nm, exclude, min_size, keep_first_last, criterion) -> dict:
    """Check the user's options (errors name the CLI flags) and build the pass options."""
    if mode not in MODES:
        raise GencompressError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    if scope not in ("layer", "global"):
        raise GencompressError(f"--scope {scope!r}: choose layer or global")
    if criterion not in ("l1", "l2"):
        raise GencompressError(f"--criterion {criterion!r}: choose l1 or l2")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise GencompressError(f"--min-size must be a non-negative integer, got {min_size!r}")
    if exclude is None:
        exclude = ()
    elif isinstance(exclude, str):
        exclude = (exclude,)
    exclude = tuple(p.strip() for e in exclude for p in str(e).split(",") if p.strip())
    common = {"exclude": exclude, "min_size": min_size, "keep_first_last": bool(keep_first_last)}
    if sparsity is not None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity < 1:
            raise GencompressError(f"--sparsity must be in [0, 1), got {sparsity}")
        sparsity = float(sparsity)
    if mode == "nm":
        from gencompress.passes.nm_prune import parse_nm

        try:
            n, m = parse_nm(nm)
        except ValueError as e:
            raise GencompressError(f"--nm {nm}: {e}") from None
        if scope != "layer":
            raise GencompressError("--scope applies to --mode unstructured and channel; N:M is per group of M weights")
        if sparsity is not None and abs(sparsity - (1 - n / m)) > 1e-9:
            raise GencompressError(f"--sparsity {sparsity:g} does not match --nm {n}:{m} (which means {1 - n / m:g}); leave --sparsity out")
        return {"n": n, "m": m, **common}
    if sparsity is None:
        raise GencompressError(f"--sparsity is required for --mode {mode}, e.g. --sparsity 0.5")
    options = {"sparsity": sparsity, "scope": scope, **common}
    if mode == "channel":
        options["criterion"] = criterion
    return options


def _signature(graph) -> tuple:
    """Names, dtypes and ranks of the graph's inputs and outputs."""

    def sig(values):
        return [(v.name, v.dtype, None if v.shape is None else v.shape.rank()) for v in values]

    return sig(graph.inputs), sig(graph.outputs)


def _densify_sparse_initializers(proto: onnx.ModelProto) -> int:
    """Turn the graph's sparse initializers into dense ones (onnx_ir does not read them)."""
    from onnx import numpy_helper

    sparse = list(proto.graph.sparse_initializer)
    for sp in sparse:
        values = numpy_helper.to_array(sp.values)
        indices = numpy_helper.to_array(sp.indices).astype("int64")
        dense = np.zeros(tuple(sp.dims), dtype=values.dtype)
        if indices.ndim == 2:
            dense[tuple(indices.T)] = values
        else:
            dense.ravel()[indices] = values
        proto.graph.initializer.append(numpy_helper.from_array(dense, sp.values.name))
    del proto.graph.sparse_initializer[:]
    return len(sparse)


def _to_sparse(proto: onnx.ModelProto, names: list[str]) -> dict:
    """Move the named initializers to ``sparse_initializer`` where that is smaller; check ORT loads it."""
    from onnx import helper, numpy_helper

    wanted = set(names)
    keep, converted, larger = [], [], []
    for init in proto.graph.initializer:
        if init.name not in wanted:
            keep.append(init)
            continue
        array = numpy_helper.to_array(init)
        nz = np.flatnonzero(array)
        sp = helper.make_sparse_tensor(
            numpy_helper.from_array(array.ravel()[nz], init.name),
            numpy_helper.from_array(nz.astype(np.int64)),
            list(array.shape),
        )
        if sp.ByteSize() < init.ByteSize():
            converted.append((init, sp))
        else:
            keep.append(init)
            larger.append(init.name)
    warnings = []
    if converted:
        dense = onnx.ModelProto()
        dense.CopyFrom(proto)
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
        proto.graph.sparse_initializer.extend(sp for _, sp in converted)
        error = _ort_load_error(proto)
        if error:
            proto.CopyFrom(dense)
            warnings.append(f"onnxruntime rejects the sparse initializers ({error}); the weights stay dense")
            converted = []
    note = (
        f"{len(converted)} weight(s) stored sparse (int64 indices), {len(larger)} kept dense (sparse would be larger); "
        "onnxruntime densifies them at load; onnx.checker full_check rejects sparse initializers on Conv/Gemm/MatMul inputs"
    )
    return {"converted": [i.name for i, _ in converted], "kept_dense": larger, "note": note, "warnings": warnings}


def _ort_load_error(proto: onnx.ModelProto) -> str | None:
    from gencompress.runtime_check.sessions import load_error

    return load_error(proto)


__all__ = ["prune", "MODES", "deflate_size"]
