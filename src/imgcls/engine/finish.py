"""After the last epoch: the procedure prediction will use, decided on the validation split.

With the best weights reloaded, one pass over the validation images (and their mirror images
where test-time augmentation is on or to be decided):

- ``--tta auto``: flip TTA is kept only where it helps: the validation metric the run monitors
  (top-1, mAP...) with the mean logits of each image and its mirror against without, the NLL
  breaking ties (and the line says it was a tie); both figures are recorded in the model
  directory and printed;
- the temperature is fitted (multi-class, binary; at least 20 validation images and not all of
  them right, else it says so) to the logits prediction computes, so probabilities are calibrated;
  within :data:`~imgcls.tasks.TEMPERATURE_RANGE`, and a fit at a bound, on fewer than 100 images
  or with a wide interval is said not to be trusted (the model directory records why);
- thresholds are tuned (multi-label; binary with ``--binary-threshold f1|balanced``);
- the model is saved again with the validation metrics of exactly that procedure, which is what
  ``imgcls evaluate`` on the same split computes;
- a model whose validation top-1 is no better than always guessing the commonest class
  (:func:`near_chance`) is said to be at chance, with the likely cause, and its model directory
  records it (``provenance.near_chance``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from imgcls.config import TUNED_THRESHOLDS
from imgcls.console import info
from imgcls.engine.loop import val_metrics, validation_logits
from imgcls.tasks import (
    Task,
    TemperatureFit,
    calibrate,
    monitor_metric,
    quick_metrics,
    tune_binary_threshold,
    tune_thresholds,
)

if TYPE_CHECKING:
    from imgcls.engine.loop import Trainer

MIN_CALIBRATION_IMAGES = 20
#: a model at least this share of the way from the commonest class's guess to no mistake has learned something
CHANCE_GAIN = 0.1


class FinishPlan(NamedTuple):
    """What :func:`finish` does on the validation set."""

    tta: str  # flip: predict averages each image with its mirror; auto: decide; none
    calibrate: bool  # fit the temperature
    tune_binary: bool  # tune the binary threshold (multi-label thresholds are always tuned)
    todo: bool  # anything at all


def after_training(tr: Trainer) -> FinishPlan:
    t, name = tr.cfg.train, tr.task.name
    calibrate = t.calibrate and name != "multilabel" and len(tr.data.splits.val) >= MIN_CALIBRATION_IMAGES
    tune_binary = name == "binary" and t.binary_threshold in TUNED_THRESHOLDS
    tta = t.tta if len(tr.data.splits.val) or t.tta != "auto" else "none"  # nothing to decide on
    todo = name == "multilabel" or tta != "none" or calibrate or tune_binary
    return FinishPlan(tta, calibrate, tune_binary, todo)


def final_val_passes(tr: Trainer) -> float:
    """Validation passes :func:`finish` makes after training (for the time budget)."""
    plan = after_training(tr)
    return (2.0 if plan.tta != "none" else 1.0) if plan.todo else 0.0


def probabilities(task: Task, logits: np.ndarray) -> np.ndarray:
    return task.probabilities(torch.from_numpy(logits.astype(np.float64))).numpy()


def choose_tta(
    task: Task, plain: np.ndarray, mirror: np.ndarray, targets: np.ndarray, monitor: str = "auto"
) -> tuple[str, dict[str, dict[str, float]]]:
    """'flip' when averaging each image's logits with its mirror's improves the monitored
    validation metric (or keeps it and lowers the NLL), else 'none'; and both figures."""
    key, higher = monitor_metric(task, monitor)
    figures = {
        name: val_metrics(task, probabilities(task, z), targets)
        for name, z in (("none", plain), ("flip", (plain + mirror) / 2))
    }
    a, b = figures["none"].get(key), figures["flip"].get(key)
    if a is None or b is None:
        return "none", figures
    better = b > a if higher else b < a
    tie = b == a and figures["flip"].get("val_nll", np.inf) < figures["none"].get("val_nll", np.inf)
    return ("flip" if better or tie else "none"), figures


def finish(tr: Trainer, save: Any) -> dict[str, Any]:
    """Run the procedure of the module docstring; ``save(tr, metrics)`` saves the model. Returns
    the validation metrics of the saved model's procedure (empty when there was nothing to do:
    the best epoch's model is already saved as predict will use it)."""
    plan = after_training(tr)
    if tr.cfg.train.calibrate and tr.task.name != "multilabel" and not plan.calibrate and tr.dist.main:
        n = len(tr.data.splits.val)
        info(
            f"calibration: not fitted: {n} validation images, at least {MIN_CALIBRATION_IMAGES} are needed "
            "(probabilities are the network's own)"
        )
    if not plan.todo:
        return {}
    best_file = tr.run_dir / "model" / "model.safetensors"
    if best_file.is_file():
        from safetensors.torch import load_file

        tr.eval_model.load_state_dict(load_file(str(best_file)))
    t0 = time.perf_counter()
    plain, mirror, rows = validation_logits(tr, mirror=plan.tta != "none")
    targets = tr.data.table.targets[rows]
    figures: dict[str, dict[str, float]] = {}
    tr.tta = plan.tta
    if plan.tta == "auto":
        assert mirror is not None
        tr.tta, figures = choose_tta(tr.task, plain, mirror, targets, tr.cfg.train.monitor)
    logits = (plain + mirror) / 2 if tr.tta == "flip" and mirror is not None else plain
    before: float | None = None
    fit: TemperatureFit | None = None
    if plan.calibrate and len(rows):
        tr.task.temperature = 1.0
        before = quick_metrics(tr.task, probabilities(tr.task, logits), targets).get("nll")
        fit = calibrate(tr.task.name, logits, targets, tr.task.positive)
        tr.task.temperature = 1.0 if fit is None else fit.temperature
        tr.task.calibration = None if fit is None else fit.record()
    separated = before is not None and fit is None
    probs = probabilities(tr.task, logits)
    if tr.task.name == "multilabel" and len(rows):
        tr.task.thresholds = tune_thresholds(probs, targets)
    metric = tr.cfg.train.binary_threshold
    tune_binary = plan.tune_binary and len(rows) > 0
    if tune_binary:
        pos = tr.task.positive
        tr.task.thresholds = [tune_binary_threshold(probs[:, pos], targets == pos, metric)]
    val = val_metrics(tr.task, probs, targets) if len(rows) else {}
    val["val_seconds"] = time.perf_counter() - t0
    if tr.dist.main:
        _say(tr, figures, (fit, before), val, len(rows), tune_binary)
        if separated:
            info(
                f"calibration: not fitted: the network classifies all {len(rows)} validation images right, so "
                "the NLL only falls as the temperature goes to 0 (a fit would claim certainty); "
                "probabilities are the network's own"
            )
        last = tr.pos.history[-1] if tr.pos.history else {}
        extra = {"tta_choice": {k: {m: round(float(v), 6) for m, v in f.items()} for k, f in figures.items()}}
        save(tr, {**{k: v for k, v in last.items() if not k.startswith("val_")}, "epoch": tr.pos.best.get("epoch"),
                  **val, **(extra if figures else {})})  # fmt: skip
    return val


def _say(
    tr: Trainer,
    figures: dict[str, dict[str, float]],
    fitted: tuple[TemperatureFit | None, float | None],
    val: dict[str, Any],
    n: int,
    tuned: bool,
) -> None:
    """What :func:`finish` decided: the TTA choice with both figures, the temperature (and why
    not to trust it), the binary threshold."""
    if figures:
        key, _ = monitor_metric(tr.task, tr.cfg.train.monitor)
        info(tta_line(key, figures, tr.tta, n))
    fit, before = fitted
    if fit is not None and before is not None:
        for line in calibration_lines(fit, before, val.get("val_nll", float("nan"))):
            info(line)
    if tuned:
        info(
            f"threshold: {tr.task.positive_name} from p >= {tr.task.thresholds[0]:.3f} "
            f"(the best {tr.cfg.train.binary_threshold} on {n} validation images)"
        )


def _pair(a: float, b: float) -> tuple[str, str]:
    """Two figures with the digits that tell them apart (4 decimals, more where those agree)."""
    for digits in (4, 6, 8):
        fa, fb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if fa != fb:
            break
    return fa, fb


def tta_line(key: str, figures: dict[str, dict[str, float]], choice: str, n: int) -> str:
    """The test-time flip's line: both figures of the monitored metric; a tie says that the NLL
    decided it (and what keeping it costs)."""
    with_, without = figures["flip"].get(key, float("nan")), figures["none"].get(key, float("nan"))
    kept = "kept" if choice == "flip" else "left off"
    if with_ != without:
        a, b = _pair(with_, without)
        return f"test-time flip: {kept} ({key} {a} with it, {b} without, on {n} images)"
    nll_with, nll_without = _pair(
        figures["flip"].get("val_nll", float("nan")), figures["none"].get("val_nll", float("nan"))
    )
    lower = "lower" if choice == "flip" else "not lower"
    cost = "; predict looks at each image twice" if choice == "flip" else ""
    return (
        f"test-time flip: {kept}: {key} {with_:.4f} either way on {n} images, and the NLL is {lower} with it "
        f"({nll_with} against {nll_without}){cost}"
    )


def calibration_lines(fit: TemperatureFit, before: float, after: float) -> list[str]:
    """The temperature's line, and a warning naming each reason not to trust it."""
    lines = [
        f"calibration: temperature {fit.temperature:.3f} fitted on {fit.images} validation images "
        f"(NLL {before:.4f} -> {after:.4f})"
    ]
    if fit.doubts:
        lines.append(f"calibration: warning: not to be trusted: {'; '.join(fit.doubts)}")
    lines += [f"calibration: note: {note}" for note in fit.notes]
    return lines


@dataclass(frozen=True)
class Chance:
    """A top-1 no better than always guessing the commonest class (:func:`near_chance`)."""

    top1: float
    chance: float  # the top-1 of always guessing the commonest class, on these images
    margin: float  # what a model must beat it by to count as having learned something
    commonest: str
    images: int


def near_chance(top1: float, targets: np.ndarray, names: list[str]) -> Chance | None:
    """A :class:`Chance` when ``top1`` (on the images whose class indices are ``targets``) is no
    better than the best constant guess, always the commonest class, plus a margin; else None.

    The guess scores that class's share p (1/K on balanced data), so chance is p, not 1/K, on
    skewed data. The margin is the larger of :data:`CHANCE_GAIN` of the guess's mistakes,
    0.1 x (1 - p) (a model that removes less than a tenth of them is of no use: 0.19 for ten
    balanced classes, 0.55 for two, 0.955 where one class holds 95%), and two standard errors
    of the guess's top-1 on these n images, 2 sqrt(p (1 - p) / n) (on few images a top-1 that
    close cannot be told from the guess's)."""
    n = len(targets)
    if n == 0 or not math.isfinite(top1):
        return None
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=len(names))
    k = int(counts.argmax())
    p = float(counts[k]) / n
    margin = max(CHANCE_GAIN * (1 - p), 2 * math.sqrt(p * (1 - p) / n))
    if top1 > p + margin:
        return None
    return Chance(top1, p, margin, names[k] if k < len(names) else str(k), n)


def chance_line(c: Chance, *, budget: str | None, epochs: float, lr: float | None) -> str:
    """The warning: the figure, the chance level and the likely cause (the epochs a time budget
    trained on this machine; else the epochs and the learning rate)."""
    count = f"{epochs:.0f}" if float(epochs).is_integer() else f"{epochs:.1f}"
    trained = f"{count} epoch{'' if count == '1' else 's'}"
    if budget:
        cause = f"the {budget} budget trained {trained} on this machine, too few: give it a longer --time-budget"
    else:
        at = f" at lr {lr:.2e}" if lr else ""
        cause = (f"{trained}{at} taught it too little: train more epochs (--epochs) or check the "
                 "learning rate (--lr)")  # fmt: skip
    return (f"warning: val_top1 {c.top1:.4f} is at chance: always guessing {c.commonest!r} scores {c.chance:.4f} on "
            f"these {c.images} validation images, a model that learned something {c.chance + c.margin:.4f} or more; "
            f"{cause}")  # fmt: skip


def say_chance(tr: Trainer, final: dict[str, Any]) -> None:
    """After training (rank 0): warn when the saved model's validation top-1 (its procedure's,
    else the best epoch's) is at chance, and record it in the model directory's provenance."""
    best = tr.pos.best or {}
    epoch = best.get("epoch")
    top1 = final.get("val_top1")
    if top1 is None and isinstance(epoch, int) and 0 < epoch <= len(tr.pos.history):
        top1 = tr.pos.history[epoch - 1].get("val_top1")
    if tr.task.name == "multilabel" or not isinstance(top1, (int, float)):
        return
    c = near_chance(float(top1), tr.data.table.targets[tr.data.splits.val], tr.task.class_names)
    if c is None:
        return
    line = chance_line(c, budget=tr.cfg.train.time_budget, epochs=tr.steps_done / max(1, tr.steps_per_epoch),
                       lr=tr.cfg.optim.lr)  # fmt: skip
    info(line)
    path = tr.run_dir / "model" / "config.json"
    if path.is_file():
        from imgcls.io import atomic_write_text

        config = json.loads(path.read_text(encoding="utf-8"))
        record = {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(c).items()}
        config.setdefault("provenance", {})["near_chance"] = {**record, "warning": line}
        atomic_write_text(path, json.dumps(config, indent=2) + "\n")
