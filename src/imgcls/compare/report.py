"""The compare's report: ``compare.csv`` and ``compare.json`` (one row per configuration), the
plots (accuracy against throughput with the Pareto front, accuracy against multiply-adds, every
configuration's training and validation curves overlaid, the loss landscapes) and one
self-contained ``compare.html`` built with the evaluation report's helpers."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.io import atomic_write_csv, atomic_write_text
from imgcls.report.html import CSS, _fmt, _img
from imgcls.report.plots import _pyplot, _save

#: the table's columns: (row key, heading, how a value is shown)
COLUMNS: list[tuple[str, str, Any]] = [
    ("accuracy", "{metric}", lambda v: f"{v:.4f}"),  # the task's headline: top-1, or mAP (multi-label)
    ("balanced_accuracy", "balanced acc.", lambda v: f"{v:.4f}"),
    ("nll", "NLL", lambda v: f"{v:.4f}"),
    ("ece", "ECE", lambda v: f"{v:.4f}"),
    ("throughput", "img/s (batch 32)", lambda v: f"{v:,.0f}"),
    ("latency_ms", "latency (ms)", lambda v: f"{v:.2f}"),
    ("params", "params", lambda v: f"{v / 1e6:.3f}M"),
    ("macs", "MACs", lambda v: f"{v / 1e6:,.1f}M"),
    ("size_bytes", "size", lambda v: f"{v / 1e6:.2f} MB"),
    ("input", "input (px)", str),
    ("train_seconds", "train time", lambda v: f"{v:.1f} s" if v < 10 else f"{v:,.0f} s"),
]
CSS_MORE = (
    ".wide{overflow-x:auto;max-width:100%}td{white-space:nowrap}tr.best td{background:#eef7ee;font-weight:600}"
    ".grid{display:flex;flex-wrap:wrap;gap:.5rem}"
    ".grid img{max-width:340px}.pick{font-size:1.05rem;border-left:4px solid #3a3;padding:.3rem .8rem}"
)


def write_tables(folder: Path, document: dict[str, Any]) -> None:
    """``compare.json`` (the whole document) and ``compare.csv`` (a row per configuration)."""
    rows = document["configurations"]
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and not isinstance(v, (dict, list))]
    atomic_write_csv(folder / "compare.csv", keys, [[_cell(r.get(k)) for k in keys] for r in rows])
    atomic_write_text(folder / "compare.json", json.dumps(_jsonable(document), indent=1) + "\n")


def _cell(v: Any) -> Any:
    return "" if v is None else round(v, 6) if isinstance(v, float) else v


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


# ------------------------------------------------------------------------------------------ plots
def plot_tradeoffs(rows: Sequence[dict[str, Any]], front: set[str], best: str | None, path: Path) -> Path:
    """Accuracy against throughput (the Pareto front joined) and against multiply-adds."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    metric = str(rows[0].get("metric", "accuracy")) if rows else "accuracy"
    for ax, x, label in ((axes[0], "throughput", "images per second (batch 32, this machine)"),
                         (axes[1], "macs", "multiply-adds per image")):  # fmt: skip
        points = [r for r in rows if isinstance(r.get(x), (int, float)) and r[x] > 0]
        for r in points:
            on = r["name"] in front and x == "throughput"
            ax.scatter(r[x], r["accuracy"], s=70 if r["name"] == best else 40, zorder=3,
                       marker="*" if r["name"] == best else "o", color="#d62728" if on else "#1f77b4")  # fmt: skip
            ax.annotate(r["name"], (r[x], r["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if x == "throughput":
            line = sorted((r for r in points if r["name"] in front), key=lambda r: r[x])
            if line:
                ax.plot([r[x] for r in line], [r["accuracy"] for r in line], "--", color="#d62728", zorder=2)
        _log_axis(ax, x)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (held out)")
        ax.grid(alpha=0.3, which="both")
        _pad(ax, [r[x] for r in points])
    # the front is said in the title: a legend box in the axes hid a point and its name
    front_note = "(red, dashed: the Pareto front, none both faster and more accurate)"
    axes[0].set_title(f"{metric} against throughput\n{front_note}", fontsize=10)
    axes[1].set_title(f"{metric} against multiply-adds", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _log_axis(ax: Any, key: str) -> None:
    """A log axis labelled as numbers are written (1,000 img/s; 40M multiply-adds), minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from imgcls.models.summary import human

    ax.set_xscale("log")
    shown = (lambda v, _: human(v)) if key == "macs" else (lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    ax.xaxis.set_major_formatter(FuncFormatter(shown))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _pad(ax: Any, xs: list[float]) -> None:
    """Room for the names: a log axis widened by a factor each side (a single point gets a decade)."""
    if xs:
        low, high = min(xs), max(xs)
        ax.set_xlim(low / (1.6 if high > low else 3), high * (2.2 if high > low else 3))


def plot_histories(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Every configuration's curves per epoch, overlaid: training error and loss (as trained:
    augmented, the loss with its label smoothing), validation error and NLL. He et al.'s Figure
    6: a plain network's training error that rises with depth, a residual one's that falls."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    panels = (
        (axes[0][0], "train_top1", True, "training error (as trained)"),
        (axes[0][1], "train_loss", False, "training loss (as optimised)"),
        (axes[1][0], "val_top1", True, "validation error"),
        (axes[1][1], "val_loss", False, "validation NLL"),
    )
    colours = plt.get_cmap("tab10" if len(histories) <= 10 else "tab20")
    for k, (name, history) in enumerate(histories.items()):
        style = "--" if name.startswith("plain") else "-"
        for ax, key, error, _ in panels:
            points = [(h["epoch"], h[key]) for h in history if isinstance(h.get(key), (int, float))]
            if points:
                xs, ys = zip(*points, strict=True)
                ys = tuple(1 - y for y in ys) if error else ys
                ax.plot(xs, ys, style, color=colours(k % colours.N), marker="." if len(xs) < 30 else None,
                        label=name)  # fmt: skip
    for ax, _key, error, title in panels:
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if error:
            ax.set_ylabel("error (1 - top-1)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_surface(name: str, s: dict[str, Any], path: Path) -> Path:
    """One configuration's loss landscape: filled contours on a log scale (the loss grows by orders
    of magnitude away from the minimum), the trained weights marked."""
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    raw = np.asarray(s["losses"], dtype=np.float64)
    finite = raw[np.isfinite(raw)]
    top = float(finite.max()) if finite.size else 1.0
    # a loss that overflowed far from the minimum (inf, nan) is drawn as the largest finite one
    losses = np.maximum(np.where(np.isfinite(raw), raw, top), 1e-6)
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    low, high = float(losses.min()), float(losses.max())
    levels = np.geomspace(low, max(high, 1.001 * low), 16)
    filled = ax.contourf(s["alphas"], s["betas"], losses, levels=levels, norm=LogNorm(), cmap="viridis")
    ax.contour(s["alphas"], s["betas"], losses, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
    fig.colorbar(filled, ax=ax, fraction=0.046, pad=0.04, format="%.3g", label="training loss (log scale)")
    ax.plot([0], [0], "r+", markersize=12, mew=2)
    ax.set_title(f"{name}: loss {s['centre']:.3f} at + (trained)\n{s['steps']}x{s['steps']} points, "
                 f"{s['images']} training images", fontsize=9)  # fmt: skip
    ax.set_xlabel("α (filter-normalised direction δ)", fontsize=8)
    ax.set_ylabel("β (direction η)", fontsize=8)
    ax.set_aspect("equal")
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- page
def render(document: dict[str, Any], images: dict[str, Path], landscapes: dict[str, Path]) -> str:
    """The page: what was compared and how, the pick and its reason, the table, the plots."""
    rows, s = document["configurations"], document["settings"]
    pick = document["pick"]
    title = f"imgcls compare: {len(rows)} configurations on {Path(str(s['data'])).name}"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>{CSS}{CSS_MORE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=sub>{html.escape(_subtitle(document))}</p>",
        f"<p class=pick><b>Recommended ({html.escape(pick['rule'])}):</b> {html.escape(pick['reason'])}"
        + (f" — its model: <code>{html.escape(str(pick['model']))}</code>" if pick.get("model") else "")
        + "</p>",
        _table(rows, pick.get("name")),
    ]
    parts += _notes(document)
    for key, heading in (("tradeoffs", "Accuracy against cost"), ("curves", "Training and validation curves")):
        if key in images:
            parts.append(f"<h2>{heading}</h2>{_img(images[key], heading)}")
            if key == "curves":
                parts.append(CURVES_NOTE)
    if landscapes:
        parts.append("<h2>Loss landscapes</h2><p class=note>The training loss on a 2-D slice through each trained "
                     "network's weights along two random filter-normalised directions (Li et al. 2018), each on its "
                     "own scale; flatter and wider basins around the + usually generalise better.</p>")  # fmt: skip
        parts.append("<div class=grid>" + "".join(_img(p, f"loss landscape of {n}") for n, p in landscapes.items())
                     + "</div>")  # fmt: skip
    if document.get("failed"):
        parts.append("<h2>Configurations that failed</h2>")
        parts.append("<table><tr><th>configuration</th><th>reason</th></tr>" + "".join(
            f"<tr><td>{html.escape(f['name'])}</td><td>{html.escape(f['error'])}</td></tr>" for f in document["failed"]
        ) + "</table>")  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts)


CURVES_NOTE = (
    "<p class=note>Training error and loss are measured on the training batches as trained (augmented; the loss "
    "with its label smoothing), as in He et al.'s curves; dashed lines are plain networks. Validation curves are on "
    "the split that chose each run's best epoch.</p>"
)


def _subtitle(document: dict[str, Any]) -> str:
    s, m = document["settings"], document["machine"]
    length = f"{s['epochs']} epochs" if s.get("epochs") else f"a time budget of {s.get('time_budget')}"
    split = document["split"]
    return (f"data {s['data']} · {split['train']} training, {split['val']} validation, {split['test']} test images "
            f"(one split for all) · {length} each, seed {s['seed']} · measured on {m['cpu']} ({m['cores']} cores) "
            f"with the engine imgcls predict uses")  # fmt: skip


def _table(rows: Sequence[dict[str, Any]], best: str | None) -> str:
    if not rows:
        return "<p class=note>No configuration finished.</p>"
    metric = str(rows[0].get("metric", "accuracy"))
    head = "<th>configuration</th>" + "".join(f"<th>{html.escape(h.format(metric=metric))}</th>" for _, h, _ in COLUMNS)
    head += "<th>epochs</th><th>engine</th>"
    body = []
    for r in rows:
        mark = " ★" if r["name"] == best else ""
        mark += " ◆" if r.get("pareto") else ""
        cells = [f"<td>{html.escape(str(r['name']))}{mark}</td>"]
        cells += [f"<td>{html.escape(show(r[k])) if isinstance(r.get(k), (int, float, str)) else '–'}</td>"
                  for k, _, show in COLUMNS]  # fmt: skip
        tta = " + flip" if r.get("tta") == "flip" else ""
        cells += [f"<td>{_fmt(r.get('epochs', ''))}</td>", f"<td>{html.escape(str(r.get('engine', '')))}{tta}</td>"]
        body.append(f"<tr{' class=best' if r['name'] == best else ''}>{''.join(cells)}</tr>")
    return f"<div class=wide><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _notes(document: dict[str, Any]) -> list[str]:
    rows = document["configurations"]
    split = rows[0]["split"] if rows else "test"
    notes = [
        "<p class=note>★ recommended · ◆ on the Pareto front of accuracy against throughput. Accuracy, balanced "
        f"accuracy, NLL and ECE on the {html.escape(split)} split; latency: one image through the model "
        "(normalisation, forward pass, the test-time flip where the model has one), the median of repeated calls; "
        "throughput at batch 32, decoding excluded (every model timed again at the end, in turns, the best of 3 "
        "rounds kept); size: the file the engine loads. Each configuration's run folder "
        "is under runs/ (evaluate one in detail: imgcls evaluate --model runs/NAME/model).</p>"
    ]
    if document.get("timing_note"):
        notes.append(f"<p class=note><b>Timing:</b> {html.escape(str(document['timing_note']))}.</p>")
    if any(r.get("optimistic") for r in rows):
        notes.append(
            "<p class=note><b>Optimistic:</b> the data has no test split, so the figures are on the validation images, "
            "which also chose each run's best epoch and temperature; for unbiased figures, give the data a test split "
            "(a test/ folder or a split column).</p>"
        )
    return notes


def write_report(folder: Path, document: dict[str, Any], histories: dict[str, list[dict[str, Any]]]) -> Path:
    """All of the report's files; the path of ``compare.html``."""
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    rows = document["configurations"]
    images: dict[str, Path] = {}
    if rows:
        front = {r["name"] for r in rows if r.get("pareto")}
        images["tradeoffs"] = plot_tradeoffs(rows, front, document["pick"].get("name"), plots / "tradeoffs.png")
    if any(histories.values()):
        images["curves"] = plot_histories(histories, plots / "curves.png")
    landscapes = {r["name"]: plot_surface(r["name"], r["landscape"], plots / f"landscape-{r['name']}.png")
                  for r in rows if isinstance(r.get("landscape"), dict) and "losses" in r["landscape"]}  # fmt: skip
    write_tables(folder, document)
    page = folder / "compare.html"
    atomic_write_text(page, render(document, images, landscapes))
    return page
