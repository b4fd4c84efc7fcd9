"""``audit.html``: one self-contained page of an audit's findings, with a thumbnail of every
image it names (no external resource)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from imgcls.data.table import DataTable

LIMIT = 200  # findings of each kind shown with thumbnails (the CSV files hold them all)
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1150px;color:#222;
padding:0 1rem;line-height:1.45}h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd}.sub,.note{color:#666}.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.6rem 1rem;min-width:8rem}.card b{display:block;font-size:1.5rem}
.card span{color:#666;font-size:.85rem}table{border-collapse:collapse;font-size:.88rem}td,th{border:1px solid #ddd;
padding:.25rem .5rem;text-align:left;vertical-align:middle}th{background:#f4f4f4}img{width:96px;height:96px;
object-fit:contain;background:#f0f0f0;display:block}.leak{color:#a00;font-weight:600}.path{font-size:.78rem;color:#555;
word-break:break-all;max-width:22rem}.warn{background:#fff4e0;border-left:4px solid #d98a00;padding:.5rem .8rem}
"""


class Thumbnails:
    """Small JPEG data URLs of a table's images, by path."""

    def __init__(self, table: DataTable) -> None:
        self.table = table
        self.row = {p: i for i, p in enumerate(table.paths)}

    def __call__(self, path: str, box: str = "") -> str:
        from PIL import Image

        from imgcls.data.image import ImageError, read_view

        try:
            i = self.row.get(path)
            if self.table.pixels is not None and i is not None:
                img = Image.fromarray(self.table.pixels[i]).convert("RGB")
            else:
                crop = [float(v) for v in box.split()] if box else None
                img = read_view(path, crop, margin=self.table.crop_margin)
        except ImageError:
            return ""
        img.thumbnail((96, 96))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        return '<img alt="" src="data:image/jpeg;base64,' + base64.b64encode(buf.getvalue()).decode() + '">'


def _e(v: Any) -> str:
    return html.escape(str(v))


def write_page(result: Any, table: DataTable, path: Path) -> None:
    from imgcls.io import atomic_write_text

    thumb = Thumbnails(table)
    cards = [(result.images, "images"), (result.checked, "labels checked"), (len(result.issues), "likely label errors"),
             (len(result.duplicates), "duplicate pairs"), (result.leaks, "leaks across splits"),
             (len(result.unusable), "unusable files"), (len(result.left_out), "left out on purpose")]  # fmt: skip
    misses = result.trust.unflagged_misses if result.trust else 0
    if misses:
        cards.insert(3, (misses, f"more labels the {_models(result)} get wrong, not flagged"))
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>imgcls audit</title><style>{CSS}</style>",
        "</head><body><h1>Audit</h1>",
        f"<p class=sub>data {_e(table.root)} · label errors from {_e(result.how or 'no check')}{_top1(result)}</p>",
        "<div class=cards>" + "".join(f"<div class=card><b>{n}</b><span>{t}</span></div>" for n, t in cards) + "</div>",
        f"<p class=warn>{_e(result.trust.warning)}</p>" if result.trust and result.trust.warning else "",
        "<h2>Likely label errors</h2><p class=note>Most likely wrong first: the probability the models gave the "
        "given label (quality) is low, and they agree on another. Review them with <code>imgcls review</code>.</p>",
        _issues(result.issues[:LIMIT], thumb),
        _unflagged(result, misses),
        "<h2>Duplicates and leaks</h2><p class=note>Pairs of images whose perceptual hashes differ in a few bits "
        "(0: the same picture). A pair on two sides of a split is a leak: the held-out score flatters the model.</p>",
        _duplicates(result.duplicates[:LIMIT], thumb),
        "<h2>Class balance</h2>",
        _plain(result.balance),
        "<h2>Unusable files</h2>",
        _plain([{"path": p, "reason": r} for p, r in result.unusable][:LIMIT]),
        "<h2>Left out on purpose</h2><p class=note>Frames without a detection to crop (blanks) and images a "
        "review rejected: not audited, not faults.</p>",
        _plain([{"path": p, "reason": r} for p, r in result.left_out][:LIMIT]),
        "</body></html>",
    ]
    atomic_write_text(path, "\n".join(parts))


def _top1(result: Any) -> str:
    """The probabilities' top-1 against the given labels (per fold too): how far to trust the flags."""
    t = result.trust
    if t is None or t.top1 is None:
        return ""
    folds = f" (folds {', '.join(f'{v:.3f}' for v in t.fold_top1)})" if t.fold_top1 else ""
    return f" · out-of-sample top-1 {t.top1:.3f}{folds} of {result.checked} labels checked"


def _models(result: Any) -> str:
    """'models' for the folds of a cross-validation, 'model' for one model's held-out split."""
    return "models" if result.trust and result.trust.fold_top1 else "model"


def _unflagged(result: Any, misses: int) -> str:
    """The labels the probabilities contradict that the audit does not flag: by its account the
    models' own mistakes, or wrong labels cleanlab is not sure enough of (the warning comes when
    they are many: :func:`imgcls.audit.labels.trust`)."""
    if not misses:
        return ""
    who = "models'" if _models(result) == "models" else "model's"
    return (f"<p class=note>The {who} top class is another label for {misses} more images that the audit does "
            f"not flag (<code>trust.unflagged_misses</code> in summary.json): by the audit's account the {who} own "
            "mistakes, or wrong labels it is not sure enough of to flag.</p>")  # fmt: skip


def _issues(rows: list[dict[str, Any]], thumb: Thumbnails) -> str:
    if not rows:
        return "<p class=note>none found</p>"
    head = "<tr><th>#</th><th>image</th><th>given</th><th>suggested</th><th>quality</th><th>path</th></tr>"
    body = "".join(
        f"<tr><td>{k}</td><td>{thumb(r['path'], r.get('box', ''))}</td><td>{_e(r['given'])}</td>"
        f"<td>{_e(r['suggested'])} "
        f"({r['p_suggested']:.2f})</td><td>{r['quality']:.3f}</td><td class=path>{_e(r['path'])}</td></tr>"
        for k, r in enumerate(rows, start=1)
    )
    return f"<table>{head}{body}</table>"


def _duplicates(rows: list[dict[str, Any]], thumb: Thumbnails) -> str:
    if not rows:
        return "<p class=note>none found</p>"
    head = "<tr><th>image</th><th>its duplicate</th><th>bits apart</th><th>splits</th><th>paths</th></tr>"
    body = "".join(
        f"<tr><td>{thumb(r['path_a'])}</td><td>{thumb(r['path_b'])}</td><td>{r['distance']}</td>"
        f"<td{' class=leak' if r['leak'] else ''}>{_e(r['split_a'])} / {_e(r['split_b'])}"
        f"{' — leak' if r['leak'] else ''}</td><td class=path>{_e(r['path_a'])}<br>{_e(r['path_b'])}</td></tr>"
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def _plain(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p class=note>none</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(r[c])}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
