"""Plots as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgcls.io import atomic_write_with


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Training curves: losses (train, validation) and validation metrics per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    metric_keys = [
        k for k in ("val_top1", "val_top5", "val_roc_auc", "val_mAP", "val_micro_f1")
        if any(k in h for h in history)
    ]  # fmt: skip
    fig, axes = plt.subplots(1, 2 if metric_keys else 1, figsize=(11 if metric_keys else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [h.get("train_loss") for h in history], "o-", label="train loss (as optimised)")
    if any("val_loss" in h for h in history):
        ax.plot(epochs, [h.get("val_loss") for h in history], "s-", label="validation NLL")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (negative log-likelihood per image)")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if metric_keys:
        ax = axes[0][1]
        for k in metric_keys:
            ax.plot(epochs, [h.get(k) for h in history], "o-", label=k.removeprefix("val_"))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation score")
        ax.set_ylim(0, 1.02)
        ax.set_title("Validation metrics")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    for a in axes[0]:
        a.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    out = Path(path)
    atomic_write_with(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return out


def _save(fig: Any, path: str | Path) -> Path:
    plt = _pyplot()
    out = Path(path)
    atomic_write_with(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
    plt.close(fig)
    return out


def plot_confusion(matrix: list[list[int]], names: list[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix (each true class sums to 1), counts in the cells."""
    import numpy as np

    plt = _pyplot()
    cm = np.asarray(matrix, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(names)
    side = min(16.0, max(4.5, 0.55 * k + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels=names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (rows normalised; counts in cells)")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}\n({int(cm[i, j])})",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color=colour,
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _save(fig, path)


#: a reliability bin with fewer images than this is drawn faded: its accuracy says little
FEW_IMAGES = 10


def _wilson(right: float, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of an accuracy of ``right`` over ``n`` images (a bin of one right
    image: 0.21 to 1)."""
    z = 1.96
    centre = (right + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (right * (1 - right) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def plot_reliability(bins: list[dict[str, float]], ece: float, path: str | Path) -> Path:
    """Reliability diagram: accuracy against confidence per bin; the diagonal is calibrated.
    Each bin is labelled with its number of images and carries the 95% interval of its accuracy;
    bins of fewer than :data:`FEW_IMAGES` are faded, since one right image is an accuracy of 1.0."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5.5, 7.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    fig.subplots_adjust(bottom=0.15)  # the legend goes below, clear of the bins' labels
    width = bins[0]["high"] - bins[0]["low"]
    used = [b for b in bins if b["count"]]
    for b in used:
        n, acc, conf = int(b["count"]), b["accuracy"], b["confidence"]
        centre, few = (b["low"] + b["high"]) / 2, n < FEW_IMAGES
        alpha = 0.3 if few else 1.0
        ax.bar(centre, acc, width=width * 0.95, color="#4c72b0", edgecolor="black", alpha=alpha)
        ax.bar(centre, abs(conf - acc), bottom=min(acc, conf), width=width * 0.95, color="#c44e52",
               alpha=0.3 * alpha, edgecolor="#c44e52", hatch="//")  # fmt: skip
        lo, hi = _wilson(acc, n)
        ax.plot([centre, centre], [lo, hi], color="black", lw=1, alpha=0.5 if few else 0.9)
        ax.text(centre, min(max(acc, conf, hi) + 0.015, 1.0), f"n={n}", ha="center", va="bottom", fontsize=7,
                rotation=90 if len(used) > 8 else 0, color="#777" if few else "black")  # fmt: skip
    from matplotlib.patches import Patch

    (diagonal,) = ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    handles = [diagonal, Patch(facecolor="#4c72b0", edgecolor="black", label="accuracy (line: its 95% interval)"),
               Patch(facecolor="#c44e52", alpha=0.3, edgecolor="#c44e52", hatch="//",
                     label="gap to mean confidence")]  # fmt: skip
    if any(b["count"] < FEW_IMAGES for b in used):
        handles.append(Patch(facecolor="#4c72b0", alpha=0.3, edgecolor="black",
                             label=f"fewer than {FEW_IMAGES} images (faded)"))  # fmt: skip
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.1)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    total = sum(int(b["count"]) for b in used)
    ax.set_title(f"Reliability diagram (ECE {ece:.3f}, {total} images)")
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    ax2.bar([(b["low"] + b["high"]) / 2 for b in used], [b["count"] for b in used], width=width * 0.95, color="gray")
    ax2.set_yscale("log")  # a bin of 424 images beside bins of 1: both visible
    ax2.set_xlabel("confidence of the top-1 prediction")
    ax2.set_ylabel("images (log scale)")
    ax2.set_xlim(0, 1)
    return _save(fig, path)


def plot_roc_pr(y_true: Any, score: Any, path: str | Path, *, positive: str, threshold: float | None = None) -> Path:
    """ROC and precision-recall curves of a binary decision, with the model's operating point
    (its saved threshold) marked on both."""
    import numpy as np
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.3))
    fpr, tpr, _ = roc_curve(y_true, score)
    a.plot(fpr, tpr, lw=2, label=f"AUC {auc(fpr, tpr):.3f}")
    a.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    a.set_xlabel("false positive rate")
    a.set_ylabel("true positive rate (recall)")
    a.set_title(f"ROC curve ({positive} positive)")
    a.legend(loc="lower right")
    prec, rec, _ = precision_recall_curve(y_true, score)
    b.plot(rec, prec, lw=2)
    b.axhline(float(sum(y_true)) / max(1, len(y_true)), color="k", ls="--", lw=1, label="base rate")
    b.set_xlabel("recall")
    b.set_ylabel("precision")
    b.set_title("Precision-recall curve")
    b.set_ylim(0, 1.02)
    if threshold is not None:
        y, s = np.asarray(y_true, bool), np.asarray(score) >= threshold
        tp, fp = float((s & y).sum()), float((s & ~y).sum())
        recall = tp / max(1.0, float(y.sum()))
        label = f"threshold {threshold:.2f}"
        a.plot([fp / max(1.0, float((~y).sum()))], [recall], "o", color="#d62728", ms=7, label=label)
        a.legend(loc="lower right")
        if tp + fp:
            b.plot([recall], [tp / (tp + fp)], "o", color="#d62728", ms=7, label=label)
    b.legend(loc="lower left")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_mistakes(items: list[dict[str, Any]], path: str | Path, *, columns: int = 4) -> Path:
    """A gallery of the most confident mistakes: thumbnail, true and predicted label and
    probability."""
    plt = _pyplot()
    n = max(1, len(items))
    wide = any(it["image"].width > 1.5 * it["image"].height for it in items)  # with their explanations
    columns = columns // 2 if wide else columns
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=((6.4 if wide else 3.2) * columns, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, it in zip(axes.flat, items, strict=False):
        ax.imshow(it["image"])
        ax.set_title(
            f"true: {it['true']}\npredicted: {it['pred']} ({it['prob']:.2f})",
            fontsize=9,
            color="#a00",
        )
    title = "Most confident mistakes" + (", each beside where the model saw its (wrong) label" if wide else "")
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def plot_tradeoff(curve: list[dict[str, float]], path: str | Path, *, title: str, knob: str) -> Path:
    """Animal recall against the share of blanks removed, one point per threshold; the
    thresholds that land on one point share a label ('0.05-0.85'), labels that would cover
    another are left out, and the title gives the numbers of images the shares are of."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.6))
    xs = [c["blanks_removed"] for c in curve]
    ys = [c["animal_recall"] for c in curve]
    ax.plot(xs, ys, "o-", lw=1.5, ms=4)
    ax.set_xlabel("share of blank images removed")
    ax.set_ylabel("share of animal images kept (animal recall)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    counts = ""
    if curve and "animals" in curve[0]:
        counts = f"{curve[0]['animals']} animal images, {curve[0]['blanks']} blank; "
    ax.set_title(f"{title}\n({counts}labels: {knob})", fontsize=11)
    _label_thresholds(fig, ax, curve)
    return _save(fig, path)


def _label_thresholds(fig: Any, ax: Any, curve: list[dict[str, float]]) -> None:
    """One label per distinct point (its thresholds as a range), the ends of the curve first, then
    every other point from the left; a label that would overlap one already drawn, or leave the
    axes, is removed (measured on the drawn figure, so any font size works)."""
    groups: list[tuple[float, float, list[float]]] = []
    for c in curve:
        x, y = c["blanks_removed"], c["animal_recall"]
        if x != x or y != y:  # NaN: no blank or no animal image
            continue
        if groups and (groups[-1][0], groups[-1][1]) == (x, y):
            groups[-1][2].append(c["threshold"])
        else:
            groups.append((x, y, [c["threshold"]]))
    if not groups:
        return
    order = [0, len(groups) - 1, *range(1, len(groups) - 1)] if len(groups) > 1 else [0]
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    kept: list[Any] = []
    for i in order:
        x, y, ts = groups[i]
        text = f"{min(ts):.2f}" if len(ts) == 1 else f"{min(ts):.2f}-{max(ts):.2f}"
        right = x > 0.7  # near the right edge: the label goes to the left of its point
        note = ax.annotate(text, (x, y), textcoords="offset points", xytext=(-4 if right else 4, -10 if y > 0.1 else 6),
                           ha="right" if right else "left", fontsize=8, color="#555")  # fmt: skip
        box = note.get_window_extent(renderer)
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        if not inside or any(box.overlaps(other) for other in kept):
            note.remove()
        else:
            kept.append(box)
