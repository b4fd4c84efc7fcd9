"""The report's plots (imgcls.report.plots), read off the figure matplotlib draws: what a bin of
one image looks like, whether threshold labels collide, and what counts the plots carry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgcls.decisions import blank_tradeoff, tradeoff
from imgcls.report import plots


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The figures the plots hand to ``_save``, still open, drawn (the PNG is written too)."""
    figures: list[Any] = []

    def keep(fig: Any, path: str | Path) -> Path:
        fig.canvas.draw()
        figures.append(fig)
        out = Path(path)
        fig.savefig(out, dpi=110, format="png", bbox_inches="tight")
        return out

    monkeypatch.setattr(plots, "_save", keep)
    yield figures
    for fig in figures:
        plots._pyplot().close(fig)


def _bins(counts: dict[int, tuple[int, float, float]]) -> list[dict[str, float]]:
    """15 bins of width 1/15; ``counts``: bin index -> (images, accuracy, mean confidence)."""
    out = []
    for i in range(15):
        n, acc, conf = counts.get(i, (0, 0.0, 0.0))
        out.append({"low": i / 15, "high": (i + 1) / 15, "count": n, "accuracy": acc, "confidence": conf})
    return out


def test_a_reliability_bin_of_one_image_is_faded_and_counted(drawn: list[Any], tmp_path: Path) -> None:
    """The demo's diagram drew a bin of 1 image at full height (accuracy 1.0), like the bin of 424."""
    bins = _bins({6: (1, 1.0, 0.43), 8: (5, 0.6, 0.57), 14: (424, 0.998, 0.997)})
    plots.plot_reliability(bins, 0.006, tmp_path / "reliability.png")
    (fig,) = drawn
    ax = fig.axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert {"n=1", "n=5", "n=424"} <= texts  # every bin says how many images it holds
    # the accuracy bars of the bins where every image is right (height 1)
    centre = {round(p.get_x() + p.get_width() / 2, 3): p for p in ax.patches if p.get_height() > 0.99}
    one, many = centre[round(6.5 / 15, 3)], centre[round(14.5 / 15, 3)]
    assert (one.get_alpha() or 1.0) < 0.5 <= (many.get_alpha() or 1.0)  # the bin of one image is faded
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "fewer than 10 images" in legend
    assert (tmp_path / "reliability.png").stat().st_size > 0


def _overlaps(fig: Any) -> list[tuple[str, str]]:
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.axes[0].texts]
    return [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1 :] if box.overlaps(other)]


def test_the_tradeoff_labels_do_not_overlap_and_the_counts_are_given(drawn: list[Any], tmp_path: Path) -> None:
    """A model sure of most images: many thresholds land on the same point, and their labels were
    drawn on top of each other; the plot did not say how few blanks the curve rests on."""
    rng = np.random.default_rng(0)
    blank = np.r_[np.zeros(190, bool), np.ones(7, bool)]
    p_blank = np.where(blank, rng.uniform(0.9, 1.0, blank.size), rng.uniform(0.0, 0.05, blank.size))
    probs = np.stack([1 - p_blank, p_blank], axis=1)
    curve = blank_tradeoff(probs, blank.astype(int), blank=1)
    assert curve[0]["blanks"] == 7 and curve[0]["animals"] == 190  # the counts behind the shares
    plots.plot_tradeoff(curve, tmp_path / "t.png", title="Blank threshold", knob="threshold on p(blank)")
    (fig,) = drawn
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert len(labels) >= 2 and _overlaps(fig) == []
    assert any("-" in label or "–" in label for label in labels)  # one label for the thresholds of one point
    assert "190 animal images, 7 blank" in fig.axes[0].get_title()
    # a detector's curve: thresholds 0.05 .. 0.95, points spread out
    score = rng.uniform(0, 1, 300)
    det = tradeoff(score, score < 0.3, np.linspace(0.05, 0.95, 20), blank_at_or_above=False)
    plots.plot_tradeoff(det, tmp_path / "d.png", title="Detector", knob="detection confidence")
    assert len(drawn[1].axes[0].texts) >= 3 and _overlaps(drawn[1]) == []


def test_a_report_is_titled_by_what_identifies_it() -> None:
    """Every report was titled 'imgcls evaluation: model' (the model folder's own name)."""
    from imgcls.report.html import page_title

    assert page_title("/home/ana/runs/digits-lenet/model", "/data/digits", "test") == (
        "imgcls evaluation: runs/digits-lenet/model on digits (test)"
    )
    assert page_title("runs/a/model/model.int8.onnx", "traps/cct.json", "val") == (
        "imgcls evaluation: a/model/model.int8.onnx on cct.json (val)"
    )
    titles = {page_title(f"/x/runs/{name}/model", "/d/photos", "test") for name in ("a", "b")}
    assert len(titles) == 2  # two runs' reports no longer share a title
