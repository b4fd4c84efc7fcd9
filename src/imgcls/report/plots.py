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
    fig, axes = plt.subplots(
        1, 2 if metric_keys else 1, figsize=(11 if metric_keys else 6, 4), squeeze=False
    )
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
