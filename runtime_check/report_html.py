"""report.json and a self-contained report.html for a compression run.

``write_report(out_dir, report)`` writes both files atomically. The HTML needs nothing outside
itself: images are PNGs (encoded here with zlib + struct) inlined as data URIs, the sweep chart
is inline SVG, styles are inline, there is no script and no network reference.

The report dict (every key optional except where noted; ``api.build_report`` fills most):

``schema``      "gencompress.report/1"
``title``       str
``created``     ISO-8601 time
``reference``, ``candidate``   model paths (str)
``sizes``       {"reference": {"bytes", "deflate_bytes", "file_bytes"?}, "candidate": {...},
                 "ratio": candidate/reference bytes, "deflate_ratio": same for deflate}
``recipe``      the recipe as data: [{"pass": name, "options": {...}}, ...] (or a YAML str)
``passes``      what each pass did: [{"pass": name, "options": {...}?, "modified": bool?,
                 "summary": {key: number|str}?, "layers": [{flat row}, ...]?}, ...] — the summary
                 is shown as key: value, ``layers`` (e.g. the prune report's per-initializer rows)
                 as a table with one column per scalar key
``layers``      per-layer state of the candidate: [{"node", "op_type", "weight", "shape",
                 "params", "sparsity" (0..1), "zero_channels" (0..1|None), "precision"
                 ("float32", "int8", "float16", ...), "granularity" (None|"per-tensor"|
                 "per-channel (axis k)"|"blockwise (b)"), "bytes"}] — ``api.layer_stats``
``fidelity``    the dict ``api.check`` returns (with ``preview`` arrays: check(..., preview=8))
``latency``     the dict ``api.bench`` returns
``sweep``       configurations tried: [{"label": str, "bytes": int, "psnr_db": float,
                 "selected": bool?, ...any other numbers/str, shown as extra columns}]
                 (``api.sweep_entry`` makes one); drawn as size-vs-PSNR with the
                 Pareto front (smallest size for a given PSNR) marked; report.json gets
                 ``"pareto": bool`` on each entry.

In report.json, arrays under ``fidelity.preview`` are left out (only their shapes are kept),
and non-finite floats are written as the strings "inf", "-inf", "nan" (JSON has no Infinity).
In the HTML every number shown from the report carries ``data-key`` (its dotted path in
report.json, e.g. ``fidelity.outputs.0.psnr_db``) and ``data-value`` (the JSON value).
"""

from __future__ import annotations

import base64
import html
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from gencompress.errors import GencompressError

# --- PNG ---------------------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG of uint8 pixels [H, W] (grey) or [H, W, 3] (RGB): 8-bit, no interlace, filter 0."""
    px = np.ascontiguousarray(pixels, dtype=np.uint8)
    if px.ndim == 2:
        color, channels = 0, 1
    elif px.ndim == 3 and px.shape[2] == 3:
        color, channels = 2, 3
    else:
        raise ValueError(f"png_bytes: expected [H, W] or [H, W, 3] pixels, got shape {px.shape}")
    h, w = px.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("png_bytes: empty image")
    rows = px.reshape(h, w * channels)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def data_uri(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")


def upscale(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor."""
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else pixels


def display_factor(h: int, w: int, target: int = 64, cap: int = 8) -> int:
    return max(1, min(cap, target // max(h, w, 1)))


def to_u8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] to 0..255 (clipped; NaN → 0)."""
    span = hi - lo if hi > lo else 1.0
    x = (np.nan_to_num(np.asarray(values, dtype=np.float64), nan=lo) - lo) / span
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)  # inferno-like


def heat_rgb(values: np.ndarray, vmax: float) -> np.ndarray:
    """[H, W] non-negative values → [H, W, 3] colours: black (0) → purple → red → orange → yellow (vmax)."""
    t = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=vmax) / (vmax if vmax > 0 else 1.0), 0, 1)
    pos = t * (len(_HEAT) - 1)
    i = np.minimum(pos.astype(int), len(_HEAT) - 2)
    f = (pos - i)[..., None]
    return np.round(_HEAT[i] * (1 - f) + _HEAT[i + 1] * f).astype(np.uint8)


def sample_pixels(sample: np.ndarray, kind: str, lo: float, hi: float) -> np.ndarray:
    """One sample as display pixels: image [C, H, W] → grey (C=1, or channel 0) or RGB (C=3, 4);
    sequence [T, F] → a grey T×F picture (one row per step)."""
    s = np.asarray(sample)
    if kind == "image":
        if s.shape[0] in (3, 4):
            return to_u8(np.transpose(s[:3], (1, 2, 0)), lo, hi)
        return to_u8(s[0], lo, hi)
    return to_u8(s.reshape(s.shape[0], -1), lo, hi)


def sample_error(ref: np.ndarray, cand: np.ndarray, kind: str) -> np.ndarray:
    e = np.abs(np.asarray(cand, dtype=np.float64) - np.asarray(ref, dtype=np.float64))
    return e.mean(axis=0) if kind == "image" else e.reshape(e.shape[0], -1)


# --- Pareto front ------------------------------------------------------------------------------------


def pareto_front(points) -> list[bool]:
    """For (size, quality) pairs: True where no other point is at most as big and at least as good,
    and strictly better in one. Points with a NaN/None coordinate are never on the front."""
    pts = [(_num(s), _num(q)) for s, q in points]
    flags = []
    for i, (s, q) in enumerate(pts):
        if s is None or q is None or math.isnan(s) or math.isnan(q):
            flags.append(False)
            continue
        dominated = False
        for j, (s2, q2) in enumerate(pts):
            if j == i or s2 is None or q2 is None or math.isnan(s2) or math.isnan(q2):
                continue
            if s2 <= s and q2 >= q and (s2 < s or q2 > q):
                dominated = True
                break
        flags.append(not dominated)
    return flags


def _num(v):
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# --- JSON ----------------------------------------------------------------------------------------


def jsonable(value, path: tuple = ()):
    """A JSON-safe copy: numpy → Python, non-finite floats → "inf"/"-inf"/"nan", preview arrays
    → their shapes, tuples → lists, Paths → str."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if path[-1:] == ("preview",) and isinstance(v, np.ndarray):
                out[f"{k}_shape"] = list(v.shape)
                continue
            out[str(k)] = jsonable(v, path + (str(k),))
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(v, path) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), path)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        f = float(value)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def report_json(report: dict) -> dict:
    """The report as written to report.json (sweep entries get ``pareto``)."""
    data = jsonable(report)
    sweep = data.get("sweep")
    if isinstance(sweep, list) and sweep:
        flags = pareto_front([(e.get("bytes"), e.get("psnr_db")) for e in sweep])
        for entry, flag in zip(sweep, flags):
            entry["pareto"] = flag
    return data


def write_report(out_dir, report: dict) -> dict:
    """Write ``out_dir/report.json`` and ``out_dir/report.html`` (atomically); returns their paths."""
    from gencompress.onnx_io import atomic_path

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GencompressError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GencompressError(f"{out}: cannot create the report folder ({e.strerror})") from None
    data = report_json(report)
    page = render_html(report, data)
    json_path, html_path = out / "report.json", out / "report.html"
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    with atomic_path(html_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return {"json": json_path, "html": html_path}


# --- HTML ------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1100px;padding:0 16px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde1e8;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px}
.meta{color:#5b6474;font-size:12.5px}.meta code{font-size:12px}
.warn{color:#9b1c1c;font-size:12.5px;font-weight:600}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #dde1e8;padding:3px 8px;text-align:left;vertical-align:middle}
th{background:#f4f6f9;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid #dde1e8;border-radius:6px;padding:8px 12px;min-width:120px}
.card .v{font-size:20px;font-weight:600}.card .k{color:#5b6474;font-size:12px}
.samples td{text-align:center;padding:4px}.samples th{text-align:right}
img.px{image-rendering:pixelated;image-rendering:crisp-edges;display:block;margin:auto}
.note{color:#5b6474;font-size:12.5px;margin:4px 0}
pre{background:#f4f6f9;padding:8px;border-radius:4px;overflow:auto;font-size:12px}
.bar{display:inline-block;height:9px;background:#3a6fd8;vertical-align:middle;margin-right:6px}
svg text{font:11px system-ui,sans-serif;fill:#1d2330}
"""


def escape(text) -> str:
    """``text`` as HTML text or an attribute value."""
    return html.escape(str(text), quote=True)


def _get(data, path: str):
    cur = data
    for part in path.split("."):
        if isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError):
                return None
        elif isinstance(cur, dict):
            cur = cur.get(part)
        else:
            return None
    return cur


def fmt_value(v, *, digits: int = 5, scale: float = 1.0, suffix: str = "") -> str:
    """How a number is shown: None → "–", inf → "∞", floats with ``digits`` significant digits."""
    if v is None:
        return "–"
    if isinstance(v, str):
        return {"inf": "∞", "-inf": "-∞", "nan": "nan"}.get(v, v)
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) and scale == 1.0:
        return f"{v}{suffix}"
    x = float(v) * scale
    return f"{x:.{digits}g}{suffix}"


class _Page:
    """Renders cells that carry their report.json path and value."""

    def __init__(self, data: dict):
        self.data = data

    def num(self, path: str, *, digits: int = 5, scale: float = 1.0, suffix: str = "", tag: str = "td", cls: str = "n", before: str = "") -> str:
        v = _get(self.data, path)
        shown = fmt_value(v, digits=digits, scale=scale, suffix=suffix)
        attrs = f' data-key="{escape(path)}" data-value="{escape(json.dumps(v))}"'
        if scale != 1.0:
            attrs += f' data-scale="{scale!r}"'
        return f'<{tag} class="{cls}"{attrs}>{before}{escape(shown)}</{tag}>'


def render_html(report: dict, data: dict | None = None) -> str:
    """The report page as one string (``data``: the report.json form, computed if not given)."""
    data = data if data is not None else report_json(report)
    page = _Page(data)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(data.get('title') or 'gencompress report')}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(data.get('title') or 'gencompress report')}</h1>",
        _meta(data),
        _cards(report, data, page),
        _samples_section(report),
        _fidelity_section(data, page),
        _layers_section(data, page),
        _passes_section(data, page),
        _latency_section(data, page),
        _sweep_section(data, page),
        _details_section(data),
        '<p class="note">Written by gencompress; this page is self-contained (no scripts, no network).</p>',
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _meta(data) -> str:
    rows = []
    for key, label in (("reference", "reference"), ("candidate", "candidate"), ("created", "created")):
        if data.get(key):
            rows.append(f"{label}: <code>{escape(data[key])}</code>")
    fid = data.get("fidelity") or {}
    if fid.get("samples"):
        rows.append(f"fidelity set: {escape(fid['samples'])} samples, {escape(fid.get('inputs_source', ''))}")
    meta = f'<p class="meta">{" · ".join(rows)}</p>' if rows else ""
    return meta + _portability(data.get("portability"))


PORTABILITY_TEXT = {
    True: "saturation-free: the same int8 results on x86 CPUs without VNNI (AVX2, AVX-512BW)",
    False: "NOT saturation-free: x86 CPUs without VNNI (AVX2, AVX-512BW) saturate some int8 weight pairs, so these figures do not hold there",
    None: "no int8 kernel layers: the same results on every CPU",
}


def _portability(p) -> str:
    """Which CPU the figures were measured on, and whether they hold on every x86 CPU."""
    if not isinstance(p, dict) or p.get("saturation_free") not in PORTABILITY_TEXT:
        return ""
    verdict = p["saturation_free"]
    cls = "warn" if verdict is False else "meta"
    return f'<p id="portability" class="{cls}">measured on {escape(p.get("isa", "?"))} · {escape(PORTABILITY_TEXT[verdict])}</p>'


def _cards(report, data, page: _Page) -> str:
    cards = []

    def card(label, cell):
        cards.append(f'<div class="card">{cell}<div class="k">{escape(label)}</div></div>')

    if _get(data, "sizes.ratio") is not None:
        card("size / reference", page.num("sizes.ratio", digits=3, suffix="×", tag="div", cls="v"))
    outs = _get(data, "fidelity.outputs") or []
    if outs:
        card(f"PSNR dB ({outs[0].get('name')})", page.num("fidelity.outputs.0.psnr_db", digits=4, tag="div", cls="v"))
        if outs[0].get("ssim") is not None:
            card("SSIM", page.num("fidelity.outputs.0.ssim", digits=4, tag="div", cls="v"))
        if outs[0].get("frechet_distance_relative") is not None:
            card("Fréchet distance, relative", page.num("fidelity.outputs.0.frechet_distance_relative", digits=3, tag="div", cls="v"))
    for i, row in enumerate(_get(data, "latency.results") or []):
        if row.get("ratio") is not None and i < 4:
            card(f"speed-up vs reference, batch {row['batch']}, {row['threads']} thr", page.num(f"latency.results.{i}.speedup", digits=3, suffix="×", tag="div", cls="v"))
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _samples_section(report) -> str:
    preview = (report.get("fidelity") or {}).get("preview")
    if not preview or not isinstance(preview.get("reference"), np.ndarray):
        return ""
    kind = preview["kind"]
    ref, cand = preview["reference"], preview["candidate"]
    lo, hi = preview.get("display_range") or (float(np.nanmin(ref)), float(np.nanmax(ref)))
    errs = [sample_error(r, c, kind) for r, c in zip(ref, cand)]
    vmax = max((float(np.nanmax(e)) for e in errs if e.size), default=0.0)
    first = sample_pixels(ref[0], kind, lo, hi)
    factor = display_factor(*first.shape[:2])
    labels = preview.get("labels") or {}

    def img(px, alt):
        big = upscale(px, factor)
        return f'<img class="px" alt="{escape(alt)}" width="{big.shape[1]}" height="{big.shape[0]}" src="{data_uri(big)}">'

    head = ["<th></th>"]
    for j, idx in enumerate(preview["indices"]):
        extra = "".join(f"<br>{escape(n)}={escape(v[j])}" for n, v in labels.items())
        head.append(f"<th style='text-align:center'>#{escape(idx)}{extra}</th>")
    rows = [f"<tr>{''.join(head)}</tr>"]
    rows.append("<tr><th>reference</th>" + "".join(f"<td>{img(sample_pixels(r, kind, lo, hi), f'reference sample {i}')}</td>" for i, r in enumerate(ref)) + "</tr>")
    rows.append("<tr><th>compressed</th>" + "".join(f"<td>{img(sample_pixels(c, kind, lo, hi), f'compressed sample {i}')}</td>" for i, c in enumerate(cand)) + "</tr>")
    rows.append("<tr><th>|error|</th>" + "".join(f"<td>{img(heat_rgb(e, vmax), f'error of sample {i}')}</td>" for i, e in enumerate(errs)) + "</tr>")
    what = "images" if kind == "image" else "sequences (one row per time step)"
    parts = [
        "<h2>Samples</h2>",
        f"<p class='note'>Output <code>{escape(preview['output'])}</code>: reference and compressed {what} for the same inputs, "
        f"shown {factor}× (nearest neighbour); grey scale {lo:.4g} (black) … {hi:.4g} (white). "
        f"Error maps: |compressed − reference|{' averaged over channels' if kind == 'image' else ''}, black 0 … yellow {vmax:.3g}.</p>",
        f"<table class='samples'>{''.join(rows)}</table>",
    ]
    err_map = preview.get("error_map")
    if isinstance(err_map, np.ndarray) and err_map.size:
        m = err_map.reshape(err_map.shape[0], -1)
        mmax = float(np.nanmax(m))
        f2 = display_factor(*m.shape, target=128, cap=16)
        bar = heat_rgb(np.tile(np.linspace(0, mmax, 128), (10, 1)), mmax)
        parts += [
            "<h3>Per-pixel error heat map</h3>",
            f"<table class='samples'><tr><td>{img_tag(upscale(heat_rgb(m, mmax), f2), 'mean error heat map')}</td>"
            f"<td style='vertical-align:bottom'>{img_tag(bar, 'colour scale')}<div class='note'>0 … {mmax:.3g}</div></td></tr></table>",
            f"<p class='note'>{escape(preview.get('error_map_note', 'mean |compressed − reference|'))}.</p>",
        ]
    return "\n".join(parts)


def img_tag(px, alt) -> str:
    return f'<img class="px" alt="{escape(alt)}" width="{px.shape[1]}" height="{px.shape[0]}" src="{data_uri(px)}">'


FIDELITY_ROWS = [
    ("max_abs_error", "max |error|", 5),
    ("mean_abs_error", "mean |error|", 5),
    ("mse", "MSE", 5),
    ("rmse", "RMSE", 5),
    ("psnr_db", "PSNR (dB)", 5),
    ("psnr_worst_sample_db", "PSNR, worst sample (dB)", 5),
    ("ssim", "SSIM", 5),
    ("ssim_min", "SSIM, worst sample", 5),
    ("cosine_similarity", "cosine similarity", 6),
    ("cosine_similarity_min", "cosine similarity, worst sample", 6),
    ("diversity_ratio", "sample diversity / reference", 4),
    ("frechet_distance", "Fréchet distance (features)", 5),
    ("frechet_distance_relative", "Fréchet distance / Tr Σ_ref", 4),
    ("peak", "peak (PSNR/SSIM range)", 5),
    ("nonfinite", "non-finite values in candidate", 5),
]


def _fidelity_section(data, page: _Page) -> str:
    fid = data.get("fidelity") or {}
    outs = fid.get("outputs") or []
    if not outs:
        return ""
    head = "<tr><th>metric</th>" + "".join(f"<th>{escape(o.get('name'))} <span class='meta'>({escape(o.get('kind'))} {escape('×'.join(map(str, o.get('shape', []))))})</span></th>" for o in outs) + "</tr>"
    rows = [head]
    for key, label, digits in FIDELITY_ROWS:
        if all(o.get(key) is None for o in outs):
            continue
        rows.append(f"<tr><th>{escape(label)}</th>" + "".join(page.num(f"fidelity.outputs.{i}.{key}", digits=digits) for i in range(len(outs))) + "</tr>")
    notes = []
    for o in outs:
        notes.append(f"<code>{escape(o.get('name'))}</code>: peak {escape(fmt_value(o.get('peak')))} — {escape(o.get('peak_note') or o.get('peak_source'))}.")
        if o.get("ssim_window"):
            notes.append(f"SSIM: {o['ssim_window']}×{o['ssim_window']} uniform window, K1 0.01, K2 0.03, data range = peak.")
        feats = o.get("features")
        if feats:
            desc = feats.get("net") or feats.get("path")
            notes.append(f"Fréchet features ({escape(feats.get('kind'))}, {escape(feats.get('dim'))}-d): {escape(desc)}" + (f", seed {escape(feats['seed'])}" if feats.get("seed") is not None else "") + ".")
    inputs = fid.get("inputs") or []
    if inputs:
        notes.append("Inputs: " + ", ".join(f"<code>{escape(s['name'])}</code> {escape('×'.join(map(str, s['shape'])))} {escape(s['dtype'])} ~ {escape(s.get('prior', ''))}" for s in inputs) + f"; seed {escape(fid.get('seed'))}, provider {escape(fid.get('provider', ''))}.")
    return "<h2>Fidelity</h2>" + f"<table id='fidelity'>{''.join(rows)}</table>" + "".join(f"<p class='note'>{n}</p>" for n in notes)


def _layers_section(data, page: _Page) -> str:
    layers = data.get("layers")
    if not layers:
        return ""
    rows = ["<tr><th>layer</th><th>op</th><th>weight shape</th><th>params</th><th>sparsity</th><th>zero channels</th><th>precision</th><th>granularity</th><th>bytes</th></tr>"]
    for i, l in enumerate(layers):
        sp = _num(l.get("sparsity")) or 0.0
        bar = f"<span class='bar' style='width:{round(60 * sp)}px'></span>"
        rows.append(
            "<tr>"
            f"<td><code>{escape(l.get('node', ''))}</code></td><td>{escape(l.get('op_type', ''))}</td>"
            f"<td>{escape('×'.join(map(str, l.get('shape') or [])))}</td>"
            + page.num(f"layers.{i}.params")
            + page.num(f"layers.{i}.sparsity", digits=4, scale=100, suffix="%", before=bar)
            + page.num(f"layers.{i}.zero_channels", digits=4, scale=100, suffix="%")
            + f"<td>{escape(l.get('precision') or '')}</td><td>{escape(l.get('granularity') or '')}</td>"
            + page.num(f"layers.{i}.bytes")
            + "</tr>"
        )
    return "<h2>Layers: sparsity and precision</h2>" + f"<table id='layers'>{''.join(rows)}</table>"


def _passes_section(data, page: _Page) -> str:
    parts = []
    recipe = data.get("recipe")
    passes = data.get("passes")
    if passes:
        rows = ["<tr><th>#</th><th>pass</th><th>options</th><th>modified</th><th>summary</th></tr>"]
        for i, p in enumerate(passes):
            summary = p.get("summary") or {}
            cells = []
            for k, v in summary.items() if isinstance(summary, dict) else []:
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    cells.append(f"{escape(k)}: {page.num(f'passes.{i}.summary.{k}', tag='span', cls='n')}")
                else:
                    cells.append(f"{escape(k)}: {escape(json.dumps(v) if not isinstance(v, str) else v)}")
            opts = p.get("options")
            rows.append(
                f"<tr><td>{i + 1}</td><td><code>{escape(p.get('pass') or p.get('name') or '')}</code></td>"
                f"<td><code>{escape(json.dumps(opts, sort_keys=True) if opts else '')}</code></td>"
                f"<td>{escape(fmt_value(p.get('modified')) if 'modified' in p else '')}</td>"
                f"<td>{'<br>'.join(cells)}</td></tr>"
            )
        parts.append(f"<h3>Passes</h3><table id='passes'>{''.join(rows)}</table>")
        if data.get("reproducibility"):  # a timed plan: the same command may choose differently
            parts.append(f"<p class='note' id='reproducibility'>{escape(data['reproducibility'])}</p>")
        for i, p in enumerate(passes):
            if isinstance(p.get("layers"), list) and p["layers"]:
                name = p.get("pass") or p.get("name") or f"#{i + 1}"
                parts.append(f"<h3>Pass {i + 1}: <code>{escape(name)}</code>, per layer</h3>" + generic_table(p["layers"], f"passes.{i}.layers", page))
            if isinstance(p.get("loss_curve"), list) and p["loss_curve"]:
                parts.append(f"<h3>Pass {i + 1}: <code>{escape(p.get('pass') or '')}</code>, training loss</h3>" + loss_svg(p["loss_curve"]))
    if recipe:
        text = recipe if isinstance(recipe, str) else json.dumps(recipe, indent=2)
        parts.append(f"<h3>Recipe</h3><pre>{escape(text)}</pre>")
    return ("<h2>Compression</h2>" + "".join(parts)) if parts else ""


def _latency_section(data, page: _Page) -> str:
    parts = []
    sizes = data.get("sizes")
    if sizes:
        rows = ["<tr><th>model</th><th>bytes</th><th>deflate bytes</th></tr>"]
        for key in ("reference", "candidate", "model"):
            if isinstance(sizes.get(key), dict):
                rows.append(f"<tr><th>{key}</th>{page.num(f'sizes.{key}.bytes')}{page.num(f'sizes.{key}.deflate_bytes')}</tr>")
        if sizes.get("ratio") is not None:
            rows.append(f"<tr><th>ratio</th>{page.num('sizes.ratio', digits=4)}{page.num('sizes.deflate_ratio', digits=4)}</tr>")
        parts.append("<h3>Size</h3>" + f"<table id='sizes'>{''.join(rows)}</table><p class='note'>Self-contained model bytes, and zlib (deflate, level 6) compressed.</p>")
    lat = data.get("latency") or {}
    results = lat.get("results") or []
    if results:
        has_ref = any(r.get("reference") for r in results)
        head = "<tr><th>provider</th><th>threads</th><th>batch</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>samples/s</th>"
        head += "<th>reference p50 ms</th><th>reference p99 ms</th><th>ratio (p50)</th></tr>" if has_ref else "</tr>"
        rows = [head]
        for i, r in enumerate(results):
            cells = [f"<td>{escape(r.get('provider', ''))}</td>", page.num(f"latency.results.{i}.threads"), page.num(f"latency.results.{i}.batch")]
            cells += [page.num(f"latency.results.{i}.model.{k}", digits=4) for k in ("p50_ms", "p90_ms", "p99_ms", "samples_per_s")]
            if has_ref:
                cells += [page.num(f"latency.results.{i}.reference.p50_ms", digits=4), page.num(f"latency.results.{i}.reference.p99_ms", digits=4), page.num(f"latency.results.{i}.ratio", digits=4, suffix="×")]
            rows.append("<tr>" + "".join(cells) + "</tr>")
        settings = lat.get("settings") or {}
        note = (
            f"{escape(lat.get('runs'))} timed runs after {escape(lat.get('warmup'))} warm-up runs per model and configuration"
            + (", interleaved with the reference in one process" if has_ref else "")
            + f"; intra-op spinning {'on' if settings.get('intra_op_spinning') else 'off'}. Ratio = candidate p50 / reference p50 (below 1 is faster)."
        )
        parts.append("<h3>Latency</h3>" + f"<table id='latency'>{''.join(rows)}</table><p class='note'>{note}</p>")
    mem = lat.get("memory") or {}
    if mem.get("results"):
        has_ref = any("reference_peak_bytes" in r for r in mem["results"])
        mib = {"scale": 1 / 2**20, "suffix": " MiB", "digits": 4}
        rows = ["<tr><th>provider</th><th>batch</th><th>peak</th>" + ("<th>reference peak</th>" if has_ref else "") + "</tr>"]
        for i, r in enumerate(mem["results"]):
            rows.append(
                f"<tr><td>{escape(r.get('provider', ''))}</td>{page.num(f'latency.memory.results.{i}.batch')}{page.num(f'latency.memory.results.{i}.model_peak_bytes', **mib)}"
                + (page.num(f"latency.memory.results.{i}.reference_peak_bytes", **mib) if has_ref else "")
                + "</tr>"
            )
        parts.append("<h3>Session peak memory</h3>" + f"<table id='memory'>{''.join(rows)}</table><p class='note'>{escape(mem.get('method', ''))}.</p>")
    return ("<h2>Cost: size, latency, memory</h2>" + "".join(parts)) if parts else ""


SWEEP_FIXED = ("label", "bytes", "psnr_db", "selected", "pareto")


def _sweep_section(data, page: _Page) -> str:
    sweep = data.get("sweep")
    if not sweep:
        return ""
    extra = _scalar_columns(sweep, exclude=SWEEP_FIXED)
    head = "<tr><th>configuration</th><th>bytes</th><th>PSNR dB</th>" + "".join(f"<th>{escape(k)}</th>" for k in extra) + "<th>Pareto front</th></tr>"
    rows = [head]
    for i, e in enumerate(sweep):
        mark = " (selected)" if e.get("selected") else ""
        rows.append(
            f"<tr><td>{escape(e.get('label', f'#{i}'))}{escape(mark)}</td>{page.num(f'sweep.{i}.bytes')}{page.num(f'sweep.{i}.psnr_db', digits=4)}"
            + "".join(_cell(e, k, f"sweep.{i}.{k}", page) for k in extra)
            + f"<td>{'yes' if e.get('pareto') else ''}</td></tr>"
        )
    note = "<p class='note'>Pareto front: configurations no other configuration beats on both size and PSNR (at most as big and at least as good).</p>"
    return "<h2>Sweep: size vs PSNR</h2>" + sweep_svg(sweep) + note + f"<table id='sweep'>{''.join(rows)}</table>"


def _is_scalar(v) -> bool:
    """A value for one table cell: a scalar, or a short list of numbers (a shape)."""
    if isinstance(v, list):
        return len(v) <= 8 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    return v is None or isinstance(v, (str, int, float, bool))


def _scalar_columns(rows, exclude=()) -> list[str]:
    """Keys (in first-seen order) whose values are scalars in every row that has them."""
    cols: dict[str, bool] = {}
    for r in rows:
        if not isinstance(r, dict):
            continue
        for k, v in r.items():
            if k in exclude:
                continue
            cols[k] = cols.get(k, True) and _is_scalar(v)
    return [k for k, ok in cols.items() if ok]


def _cell(row: dict, key: str, path: str, page: _Page) -> str:
    v = row.get(key)
    if (isinstance(v, (int, float)) and not isinstance(v, bool)) or (isinstance(v, str) and v in ("inf", "-inf", "nan")):
        return page.num(path)
    if isinstance(v, list):
        return f"<td>{escape('×'.join(fmt_value(x) for x in v))}</td>"
    return f"<td>{escape(fmt_value(v)) if v is not None else ''}</td>"


def generic_table(rows: list, path: str, page: _Page) -> str:
    """A table of a list of flat dicts: one column per scalar key, numbers keyed to report.json."""
    rows = [r for r in rows if isinstance(r, dict)]
    cols = _scalar_columns(rows)
    if not cols:
        return ""
    out = ["<tr>" + "".join(f"<th>{escape(c)}</th>" for c in cols) + "</tr>"]
    for i, r in enumerate(rows):
        out.append("<tr>" + "".join(_cell(r, c, f"{path}.{i}.{c}", page) for c in cols) + "</tr>")
    return f"<table>{''.join(out)}</table>"


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round axis ticks (steps of 1, 2, 2.5 or 5 times a power of ten) within [lo, hi]."""
    if not (hi > lo):
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + k * step for k in range(int((hi - start) / step + 1e-9) + 1)]


def sweep_svg(sweep: list, width: int = 620, height: int = 360) -> str:
    """Inline SVG scatter of size (KiB, x) vs PSNR (dB, y); Pareto-front points filled and joined."""
    pts = []
    for i, e in enumerate(sweep):
        s, q = _num(e.get("bytes")), _num(e.get("psnr_db"))
        if s is None or q is None or math.isnan(s) or math.isnan(q):
            continue
        # a row's measured speed (speed_b1, speed_b64, ...: float p50 / model p50) joins its label
        speed = " ".join(f"{k[6:]} {v:.2f}x" for k, v in e.items() if k.startswith("speed_") and _num(v) is not None)
        label = str(e.get("label", f"#{i}")) + (f" [{speed}]" if speed else "")
        pts.append((i, s / 1024.0, q, bool(e.get("pareto")), label, bool(e.get("selected"))))
    if not pts:
        return "<p class='note'>No configuration has both a size and a PSNR to plot.</p>"
    ml, mr, mt, mb = 60, 24, 34, 44
    xs = [p[1] for p in pts]
    finite_q = [p[2] for p in pts if math.isfinite(p[2])]
    qlo = min(finite_q) if finite_q else 0.0
    qhi = max(finite_q) if finite_q else 1.0
    has_inf = any(math.isinf(p[2]) for p in pts)
    xlo, xhi = min(xs), max(xs)
    pad_x = (xhi - xlo) * 0.08 or max(xhi * 0.1, 1.0)
    pad_q = (qhi - qlo) * 0.1 or 1.0
    xlo, xhi = max(0.0, xlo - pad_x), xhi + pad_x
    ylo, yhi = qlo - pad_q, qhi + pad_q * (2.5 if has_inf else 1)

    def X(v):
        return ml + (v - xlo) / (xhi - xlo) * (width - ml - mr)

    def Y(q):
        q = yhi - pad_q * 0.5 if math.isinf(q) and q > 0 else (ylo if math.isinf(q) else q)
        return mt + (yhi - q) / (yhi - ylo) * (height - mt - mb)

    out = [f'<svg id="sweep-chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="size versus PSNR">']
    out.append(f'<rect x="{ml}" y="{mt}" width="{width - ml - mr}" height="{height - mt - mb}" fill="#fafbfc" stroke="#c9ced8"/>')
    for t in ticks(xlo, xhi):
        x = X(t)
        out.append(f'<line x1="{x:.1f}" y1="{height - mb}" x2="{x:.1f}" y2="{height - mb + 4}" stroke="#666"/><text x="{x:.1f}" y="{height - mb + 16}" text-anchor="middle">{t:g}</text>')
    for t in ticks(ylo, yhi if not has_inf else qhi + pad_q):
        y = Y(t)
        out.append(f'<line x1="{ml - 4}" y1="{y:.1f}" x2="{width - mr}" y2="{y:.1f}" stroke="#e3e6ec"/><text x="{ml - 7}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    if has_inf:
        out.append(f'<text x="{ml - 7}" y="{Y(math.inf) + 4:.1f}" text-anchor="end">∞</text>')
    out.append(f'<text x="{(ml + width - mr) / 2:.0f}" y="{height - 8}" text-anchor="middle">model size (KiB)</text>')
    out.append(f'<text transform="translate(14 {(mt + height - mb) / 2:.0f}) rotate(-90)" text-anchor="middle">PSNR (dB)</text>')
    front = sorted((p for p in pts if p[3]), key=lambda p: p[1])
    if len(front) > 1:
        path = []
        for k, p in enumerate(front):
            x, y = X(p[1]), Y(p[2])
            if k:
                path.append(f"H{x:.1f}")
                path.append(f"V{y:.1f}")
            else:
                path.append(f"M{x:.1f} {y:.1f}")
        out.append(f'<path d="{" ".join(path)}" fill="none" stroke="#d0452f" stroke-width="1.5" stroke-dasharray="4 3"/>')
    for i, kb, q, on_front, label, selected in pts:
        x, y = X(kb), Y(q)
        fill = "#d0452f" if on_front else "#fff"
        stroke = "#d0452f" if on_front else "#7a8292"
        r = 6 if selected else 4.5
        shown_q = "∞" if math.isinf(q) else f"{q:.3g}"
        out.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}" stroke="{stroke}" stroke-width="{2 if selected else 1.5}" '
            f'data-index="{i}" data-pareto="{str(on_front).lower()}"><title>{escape(label)}: {kb:.4g} KiB, {shown_q} dB</title></circle>'
        )
        right = x > width - mr - 130
        name, bracket, speed = label.partition(" [")
        short = name[:28] + bracket + speed
        out.append(f'<text x="{x - 7 if right else x + 7:.1f}" y="{y - 7:.1f}" text-anchor="{"end" if right else "start"}">{escape(short)}</text>')
    out.append(f'<circle cx="{ml + 6}" cy="14" r="4.5" fill="#d0452f" stroke="#d0452f"/><text x="{ml + 15}" y="18">Pareto front</text>')
    out.append(f'<circle cx="{ml + 116}" cy="14" r="4.5" fill="#fff" stroke="#7a8292" stroke-width="1.5"/><text x="{ml + 125}" y="18">dominated</text>')
    if any(p[5] for p in pts):
        out.append(f'<circle cx="{ml + 216}" cy="14" r="6" fill="#fff" stroke="#7a8292" stroke-width="2"/><text x="{ml + 226}" y="18">selected</text>')
    out.append("</svg>")
    return "".join(out)


def loss_svg(curve: list, width: int = 420, height: int = 220) -> str:
    """Inline SVG line chart of a loss curve ``[[step, loss], ...]``, loss on a log scale."""
    pts = [(float(s), float(v)) for s, v in ((c[0], c[1]) for c in curve if isinstance(c, (list, tuple)) and len(c) == 2)
           if _num(s) is not None and _num(v) is not None and math.isfinite(float(v)) and float(v) > 0]
    if not pts:
        return "<p class='note'>No loss values to plot.</p>"
    ml, mr, mt, mb = 64, 16, 14, 40
    x0, x1 = 0.0, max(p[0] for p in pts) or 1.0
    lo, hi = math.log10(min(p[1] for p in pts)), math.log10(max(p[1] for p in pts))
    lo, hi = math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1)

    def X(v):
        return ml + (v - x0) / (x1 - x0) * (width - ml - mr)

    def Y(v):
        return mt + (hi - math.log10(v)) / (hi - lo) * (height - mt - mb)

    out = [f'<svg class="loss-chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="training loss">']
    out.append(f'<rect x="{ml}" y="{mt}" width="{width - ml - mr}" height="{height - mt - mb}" fill="#fafbfc" stroke="#c9ced8"/>')
    for e in range(lo, hi + 1):
        y = Y(10.0 ** e)
        out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{width - mr}" y2="{y:.1f}" stroke="#e3e6ec"/><text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">1e{e}</text>')
    for t in ticks(x0, x1, 4):
        x = X(t)
        out.append(f'<text x="{x:.1f}" y="{height - mb + 16}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{(ml + width - mr) / 2:.0f}" y="{height - 6}" text-anchor="middle">step</text>')
    out.append(f'<text transform="translate(14 {(mt + height - mb) / 2:.0f}) rotate(-90)" text-anchor="middle">MSE loss</text>')
    path = " ".join(f"{'M' if k == 0 else 'L'}{X(s):.1f} {Y(v):.1f}" for k, (s, v) in enumerate(pts))
    out.append(f'<path d="{path}" fill="none" stroke="#2f6fd0" stroke-width="1.8"/>')
    out.append("</svg>")
    return "".join(out)


def _details_section(data) -> str:
    known = {"schema", "title", "created", "reference", "candidate", "sizes", "recipe", "passes", "layers", "fidelity", "latency", "sweep",
             "portability"}
    extra = {k: v for k, v in data.items() if k not in known}
    if not extra:
        return ""
    return "<h2>Details</h2>" + f"<pre>{escape(json.dumps(extra, indent=2))}</pre>"
