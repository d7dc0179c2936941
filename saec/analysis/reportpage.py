"""``report.html``: one self-contained page per run, and a page comparing runs.

A run's page shows the resolved spec, the IR table (as ``saec compile``
prints it), the loss and activity curves per epoch (and the loss per step
from ``steps.csv``), every figure, the final validation metrics, the
hardware statistics (``stats.json``, after ``saec stats``) and the export
agreement checks (``export/*.json``, after ``saec export``). Everything is
inside the one file: figures are PNGs embedded as base64 ``data:`` URIs,
curves are inline SVG, the style sheet is inline, there is no script and
nothing is fetched, so the page opens offline, from an e-mail or an archive.
The pages are rendered from data (:class:`RunPage`, :class:`ComparedRun`); the run layer reads the
run folder into them (:mod:`saec.run.report`). No model is run.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from saec.analysis.reporting import layer_rows
from saec.compiler.graph import IRGraph

#: Per-epoch curves: (title, [(metrics.jsonl key, label)]).
EPOCH_CURVES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Loss per epoch", (("train_loss", "training loss"), ("train_rec", "training L_rec"),
                        ("val_rec_loss", "validation L_rec"))),
    ("Activity per epoch", (("train_spike_rate", "training spike rate"), ("val_spike_rate", "validation spike rate"),
                            ("val_latent_anr", "validation latent ANR"))),
)
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; display: block; overflow-x: auto;
        max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.note { color: #666; font-size: 0.9em; }
svg text { font-size: 11px; font-family: system-ui, sans-serif; }
"""


# ---------------------------------------------------------------- what a page shows
@dataclass
class RunPage:
    """Everything a run's page shows, as the run layer read it from the folder (:func:`saec.run.report.read_run_page`).

    Attributes:
        name: the run's name (the spec's ``name``).
        folder: the run folder, as shown.
        spec_text: the resolved spec (YAML).
        metrics: ``eval.json`` ({} before training ends).
        history: ``metrics.jsonl``, one row per epoch.
        steps: ``steps.csv``, one row per optimizer step.
        figures: (caption, PNG bytes), in the order shown.
        stats: ``stats.json``, or None.
        export_files: names of the exported files (``export/``, not the checks).
        export_checks: (file name, content) of each ``export/*.json`` agreement check.
        ir: the compiled graph, or None when ``ir.json`` is unreadable.
        ir_summary: ``ir.json``'s summary (totals).
    """

    name: str
    folder: str
    spec_text: str
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    stats: dict | None = None
    export_files: list[str] = field(default_factory=list)
    export_checks: list[tuple[str, Any]] = field(default_factory=list)
    ir: IRGraph | None = None
    ir_summary: dict = field(default_factory=dict)


@dataclass
class ComparedRun:
    """One run of a comparison page: its label, metrics, history, resolved spec (a dict) and reconstructions."""

    label: str
    metrics: dict
    history: list[dict]
    spec: dict
    reconstructions: bytes | None = None


# ---------------------------------------------------------------- HTML pieces
def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1e3 else f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: Iterable[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{_e(_fmt(c))}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
                         else f"<td>{_e(_fmt(c))}</td>" for c in row) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        out: list[tuple[str, Any]] = []
        for key, value in data.items():
            out.extend(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list) and len(data) > 8:
        return [(prefix, f"[{len(data)} values]")]
    return [(prefix, data)]


def line_chart(series: list[tuple[str, list[float], list[float]]], *, title: str, x_label: str,
               width: int = 520, height: int = 260) -> str:
    """An inline SVG line chart.

    Args:
        series: (label, x values, y values) per line; NaN / None points are skipped.
        title: drawn above the plot.
        x_label: the x axis' name.
        width, height: pixels.

    Returns:
        ``<svg>`` markup ("no data" text when every series is empty).
    """
    left, right, top, bottom = 58, 12, 24, 62
    pts = [(lbl, [(float(x), float(y)) for x, y in zip(xs, ys)
                  if y is not None and x is not None and math.isfinite(float(y))]) for lbl, xs, ys in series]
    pts = [(lbl, p) for lbl, p in pts if p]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_e(title)}"><text x="{width / 2}" y="15" text-anchor="middle" '
             f'font-weight="bold">{_e(title)}</text>']
    if not pts:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data yet</text></svg>')
        return "".join(parts)
    xs = [x for _, p in pts for x, _ in p]
    ys = [y for _, p in pts for _, y in p]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) or 1) * 0.1, y1 + (abs(y1) or 1) * 0.1
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{_e(f"{yv:.4g}")}</text>')
        xv = x0 + (x1 - x0) * i / 4
        parts.append(f'<text x="{sx(xv):.1f}" y="{top + ph + 14}" text-anchor="middle">{_e(f"{xv:.4g}")}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{top + ph + 27}" text-anchor="middle">{_e(x_label)}</text>')
    for i, (label, p) in enumerate(pts):
        colour = _COLOURS[i % len(_COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in p)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{path}"/>')
        if len(p) <= 40:
            parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in p)
        lx = left + (i % 3) * (pw / 3)
        ly = top + ph + 46 + (i // 3) * 13
        parts.append(f'<rect x="{lx:.1f}" y="{ly - 8}" width="10" height="3" fill="{colour}"/>'
                     f'<text x="{lx + 14:.1f}" y="{ly - 3}">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _image(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


# ---------------------------------------------------------------- one run
def _ir_section(graph: IRGraph | None, summary: dict) -> str:
    if graph is None:
        return '<p class="note">no readable ir.json</p>'
    rows = layer_rows(graph)
    table_rows = [[r["layer"], r["op"], r["activation"], r["shape"], r["params"] or "-", r["neurons"] or "-",
                   r["macs"] or "-"] for r in rows]
    if summary:
        table_rows.append(["total", "", "", "", summary.get("total_params"), summary.get("neurons"),
                           summary.get("macs_per_step")])
    extra = ""
    if summary:
        extra = (f'<p>MACs per example over T = {_e(summary.get("timesteps"))} steps (dense): '
                 f'{_e(_fmt(summary.get("macs_per_example")))}; synapses: {_e(_fmt(summary.get("synapses")))}</p>')
    return _table(["layer", "op", "act.", "output", "params", "neurons", "MACs/step"], table_rows) + extra


def _curves_section(history: list[dict], steps: list[dict[str, float]]) -> str:
    charts = []
    for title, keys in EPOCH_CURVES:
        series = [(label, [r.get("epoch") for r in history], [r.get(key) for r in history]) for key, label in keys]
        charts.append(line_chart(series, title=title, x_label="epoch"))
    if steps:
        step_series = [(key, [r.get("global_step") for r in steps], [r.get(key) for r in steps])
                       for key in ("loss", "rec") if key in steps[0]]
        charts.append(line_chart(step_series, title="Training loss per step (steps.csv)", x_label="global step"))
    table = ""
    if history:
        keys = [k for k in history[0] if k not in ("epoch",)]
        table = _table(["epoch", *keys], [[r.get("epoch"), *(r.get(k) for k in keys)] for r in history])
    return "".join(charts) + table


def _metrics_section(metrics: dict) -> str:
    if not metrics:
        return '<p class="note">no eval.json yet (training has not finished)</p>'
    top = [[k, metrics[k]] for k in ("validation", "examples", "rec_loss", "rec_loss_per_example",
                                     "spikes_per_example", "mean_firing_rate", "timesteps") if k in metrics]
    parts = [_table(["metric", "value"], top)]
    layers = metrics.get("layers") or {}
    if layers:
        rows = [[name, v.get("anr"), v.get("afr"), v.get("rae"), v.get("spikes_per_example"),
                 (v.get("firing_rates") or {}).get("dead"), (v.get("firing_rates") or {}).get("bursting")]
                for name, v in layers.items()]
        parts.append(_table(["layer", "ANR", "AFR", "RAE", "spikes / example", "dead", "bursting"], rows))
    ratios = metrics.get("s_intra_inter") or {}
    if ratios:
        parts.append(_table(["distance", "s_intra / s_inter (latent)"], [[k, v] for k, v in ratios.items()]))
    return "".join(parts)


def _stats_section(stats: dict | None) -> str:
    if not stats:
        return '<p class="note">no stats.json (run <code>saec stats RUN</code>)</p>'
    layers = stats.get("layers") or {}
    rows = [[name, v.get("neurons"), v.get("synapses"), v.get("weights"), v.get("firing_rate"),
             v.get("spikes_per_example"), v.get("synops_per_example"), v.get("synop_kind")]
            for name, v in layers.items()]
    parts = [_table(["layer", "neurons", "synapses", "weights", "firing rate", "spikes / example",
                     "synaptic ops / example", "kind"], rows)]
    parts.append(_table(["total", "value"], [[k, v] for k, v in (stats.get("total") or {}).items()]))
    return "".join(parts)


def _export_section(others: list[str], checks: list[tuple[str, Any]]) -> str:
    if not checks and not others:
        return '<p class="note">not exported yet (run <code>saec export RUN --format nir|onnx</code>)</p>'
    parts = []
    if others:
        parts.append(f"<p>files: {', '.join(f'<code>{_e(name)}</code>' for name in others)}</p>")
    for name, data in checks:
        parts.append(f"<h3>{_e(name)}</h3>" + _table(["check", "value"], _flatten(data)))
    if not checks:
        parts.append('<p class="note">no agreement checks recorded (export/*.json)</p>')
    return "".join(parts)


def render_run_page(page: RunPage) -> str:
    """The HTML of a run's report page (see the module docstring)."""
    metrics, history = page.metrics, page.history
    headline = ""
    if "rec_loss" in metrics:
        headline = (f"<p>validation L_rec <b>{metrics['rec_loss']:.3f}</b> on {_e(metrics.get('examples'))} "
                    f"images ({_e(metrics.get('validation', ''))}); {len(history)} epochs, "
                    f"{int(history[-1]['global_step']) if history else 0} steps</p>")
    body = [
        f"<h1>saec run <code>{_e(page.name)}</code></h1>",
        f'<p class="note">folder {_e(page.folder)}</p>',
        headline,
        "<h2>Curves</h2>", _curves_section(history, page.steps),
        "<h2>Figures</h2>",
        "".join(_image(png, caption) for caption, png in page.figures) or '<p class="note">no figures yet</p>',
        "<h2>Validation metrics</h2>", _metrics_section(metrics),
        "<h2>Hardware statistics</h2>", _stats_section(page.stats),
        "<h2>Export and agreement checks</h2>", _export_section(page.export_files, page.export_checks),
        "<h2>Network (IR)</h2>", _ir_section(page.ir, page.ir_summary),
        "<h2>Resolved spec</h2>", f"<pre>{_e(page.spec_text)}</pre>",
    ]
    return _page(f"saec run {page.name}", "\n".join(body))


# ---------------------------------------------------------------- several runs
def render_comparison_page(runs: list[ComparedRun]) -> str:
    """The HTML of a page comparing runs: a metrics table, overlaid curves, spec differences, reconstructions."""
    labels = [r.label for r in runs]
    metrics = [r.metrics for r in runs]
    histories = [r.history for r in runs]
    specs = [r.spec for r in runs]

    def latent(m: dict, key: str) -> Any:
        return ((m.get("layers") or {}).get(m.get("latent_layer") or "") or {}).get(key)

    rows = [[label, m.get("rec_loss"), m.get("examples"), m.get("validation"), latent(m, "anr"), latent(m, "afr"),
             (m.get("s_intra_inter") or {}).get("euclidean"), len(h)]
            for label, m, h in zip(labels, metrics, histories)]
    table = _table(["run", "L_rec", "images", "validation", "latent ANR", "latent AFR",
                    "s_intra/s_inter (eucl.)", "epochs"], rows)
    charts = []
    for key, title in (("val_rec_loss", "Validation L_rec per epoch"), ("train_loss", "Training loss per epoch"),
                       ("val_latent_anr", "Validation latent ANR per epoch")):
        charts.append(line_chart([(label, [r.get("epoch") for r in h], [r.get(key) for r in h])
                                  for label, h in zip(labels, histories)], title=title, x_label="epoch"))
    flat = [dict(_flatten(s)) for s in specs]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    diff = (_table(["spec field", *labels], [[k, *(json.dumps(f.get(k), default=str) for f in flat)]
                                             for k in differing])
            if differing else "<p>the resolved specs are identical</p>")
    figures = "".join(_image(r.reconstructions, f"{r.label}: reconstructions")
                      for r in runs if r.reconstructions is not None)
    body = [f"<h1>saec: {len(runs)} runs compared</h1>", "<h2>Results</h2>", table, "<h2>Curves</h2>",
            "".join(charts), "<h2>Spec fields that differ</h2>", diff, "<h2>Reconstructions</h2>",
            figures or '<p class="note">no figures</p>']
    return _page(f"saec: {len(runs)} runs compared", "\n".join(body))
