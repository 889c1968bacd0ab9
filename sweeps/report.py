"""The sweep's report.html: per model, size/PSNR and speed/PSNR Pareto charts, the best
configuration for each objective, and a table linking every trial's own report. Self-contained
(inline SVG, no script), like compress's report."""

from __future__ import annotations

import math
from pathlib import Path

from gencompress.runtime_check.report_html import CSS, escape, fmt_value, pareto_front, ticks

# objective -> (what it maximizes, row key, higher is better)
OBJECTIVES = {"size": ("smallest model", "bytes", False), "speed": ("fastest (first latency row)", "speedup", True),
              "fidelity": ("highest PSNR", "psnr_db", True)}


def _speed_key(rows) -> str | None:
    """The first latency row every timed trial has (``b1_t2.speedup``), or None when nothing was timed."""
    keys = [k for r in rows for k in r if k.endswith(".speedup")]
    return keys[0] if keys else None


def scatter_svg(points, *, xlabel: str, ylabel: str, chart_id: str, width: int = 520, height: int = 320) -> str:
    """points: (x, y, label, on_front, href). Front points filled red and joined."""
    pts = [p for p in points if p[0] is not None and p[1] is not None and math.isfinite(p[0]) and math.isfinite(p[1])]
    if not pts:
        return f"<p class='note'>No trial has both {escape(xlabel)} and {escape(ylabel)}.</p>"
    ml, mr, mt, mb = 60, 20, 16, 44
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    px, py = (max(xs) - min(xs)) * 0.08 or abs(max(xs)) * 0.1 or 1.0, (max(ys) - min(ys)) * 0.1 or 1.0
    xlo, xhi, ylo, yhi = min(xs) - px, max(xs) + px, min(ys) - py, max(ys) + py

    def X(v):
        return ml + (v - xlo) / (xhi - xlo) * (width - ml - mr)

    def Y(v):
        return mt + (yhi - v) / (yhi - ylo) * (height - mt - mb)

    out = [f'<svg id="{chart_id}" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{escape(xlabel)} versus {escape(ylabel)}">',
           f'<rect x="{ml}" y="{mt}" width="{width - ml - mr}" height="{height - mt - mb}" fill="#fafbfc" stroke="#c9ced8"/>']
    for t in ticks(xlo, xhi):
        out.append(f'<text x="{X(t):.1f}" y="{height - mb + 16}" text-anchor="middle">{t:g}</text>')
    for t in ticks(ylo, yhi):
        out.append(f'<line x1="{ml}" y1="{Y(t):.1f}" x2="{width - mr}" y2="{Y(t):.1f}" stroke="#e3e6ec"/>'
                   f'<text x="{ml - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{(ml + width - mr) / 2:.0f}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(14 {(mt + height - mb) / 2:.0f}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
    front = sorted((p for p in pts if p[3]), key=lambda p: p[0])
    if len(front) > 1:
        d = " ".join(f"{'M' if k == 0 else 'L'}{X(p[0]):.1f} {Y(p[1]):.1f}" for k, p in enumerate(front))
        out.append(f'<path d="{d}" fill="none" stroke="#d0452f" stroke-width="1.5" stroke-dasharray="4 3"/>')
    for x, y, label, on_front, href in pts:
        color = "#d0452f" if on_front else "#7a8292"
        out.append(f'<a href="{escape(href)}"><circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="5" fill="{color if on_front else "#fff"}" '
                   f'stroke="{color}" stroke-width="1.5" data-pareto="{str(on_front).lower()}"><title>{escape(label)}: {x:.4g}, {y:.4g}</title></circle></a>')
    out.append("</svg>")
    return "".join(out)


def render(rows: list[dict], header: dict) -> str:
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    speed = _speed_key(done)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>gencompress sweep</title><style>{CSS}"
             ".charts{display:flex;flex-wrap:wrap;gap:12px}</style></head><body>",
             "<h1>gencompress sweep</h1>",
             f"<p class='meta'>{len(done)} trials done, {len(failed)} failed, of {len(rows)}; gencompress {escape(header.get('version'))}; "
             f"spec <code>{escape(header.get('spec'))}</code>. Speed = float p50 / compressed p50 ({escape(speed or 'not timed')}).</p>"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in done if r["model"] == model]
        parts.append(f"<h2 id='model-{escape(model)}'>{escape(model)}</h2>")
        if mine:
            size_front = pareto_front([(r.get("bytes"), r.get("psnr_db")) for r in mine])
            charts = [scatter_svg([(r["bytes"] / 1024, r.get("psnr_db"), r["config"], f, _link(r)) for r, f in zip(mine, size_front)],
                                  xlabel="model size (KiB)", ylabel="PSNR (dB)", chart_id=f"size-{escape(model)}")]
            if speed:
                speed_front = pareto_front([(-r[speed] if r.get(speed) is not None else None, r.get("psnr_db")) for r in mine])
                charts.append(scatter_svg([(r.get(speed), r.get("psnr_db"), r["config"], f, _link(r)) for r, f in zip(mine, speed_front)],
                                          xlabel=f"speed vs float ({speed.split('.')[0]})", ylabel="PSNR (dB)", chart_id=f"speed-{escape(model)}"))
            parts.append(f"<div class='charts'>{''.join(charts)}</div>")
            parts.append(_best_table(mine, speed))
        parts.append(_trial_table([r for r in rows if r["model"] == model], speed))
    parts.append("</body></html>")
    return "".join(parts)


def _link(r) -> str:
    return f"{r['folder']}/report.html"


def best(rows: list[dict], objective: str, speed: str | None) -> dict | None:
    _, key, higher = OBJECTIVES[objective]
    key = speed if key == "speedup" else key
    scored = [r for r in rows if key and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not scored:
        return None
    return (max if higher else min)(scored, key=lambda r: r[key])


def _best_table(rows, speed) -> str:
    lines = ["<table class='best'><tr><th>objective</th><th>configuration</th><th>size</th><th>PSNR (dB)</th><th>speed</th></tr>"]
    for objective, (what, _, _) in OBJECTIVES.items():
        r = best(rows, objective, speed)
        if r is None:
            continue
        lines.append(f"<tr><td>{objective}: {escape(what)}</td><td><a href='{escape(_link(r))}'>{escape(r['config'])}</a></td>"
                     f"<td class='n'>{fmt_value(r.get('bytes'))} B</td><td class='n'>{fmt_value(r.get('psnr_db'), digits=4)}</td>"
                     f"<td class='n'>{fmt_value(r.get(speed), digits=3) + 'x' if speed and r.get(speed) is not None else '—'}</td></tr>")
    return "".join(lines) + "</table>"


def _trial_table(rows, speed) -> str:
    lines = ["<table class='trials'><tr><th>configuration</th><th>status</th><th>size ratio</th><th>PSNR (dB)</th><th>speed</th>"
             "<th>build s</th><th>report</th></tr>"]
    for r in rows:
        link = f"<a href='{escape(_link(r))}'>report</a>" if r["status"] == "done" else escape(r.get("error") or "")
        lines.append(f"<tr><td>{escape(r['config'])}</td><td>{escape(r['status'])}</td><td class='n'>{fmt_value(r.get('ratio'), digits=3)}</td>"
                     f"<td class='n'>{fmt_value(r.get('psnr_db'), digits=4)}</td>"
                     f"<td class='n'>{fmt_value(r.get(speed), digits=3) if speed and r.get(speed) is not None else '—'}</td>"
                     f"<td class='n'>{fmt_value(r.get('build_seconds'), digits=3)}</td><td>{link}</td></tr>")
    return "".join(lines) + "</table>"


def write(out: Path, rows: list[dict], header: dict) -> Path:
    from gencompress.onnx_io import atomic_path

    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(render(rows, header), encoding="utf-8")
    return path
