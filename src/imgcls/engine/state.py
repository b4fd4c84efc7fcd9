"""What a run keeps: the checkpoint state (everything to resume exactly) and the best model.

:func:`checkpoint_state` / :func:`restore` turn a :class:`~imgcls.engine.loop.Trainer` into the
dict :mod:`imgcls.engine.checkpoint` writes and back; :func:`improved` says whether an epoch's
validation beat the best so far (the monitored metric; on a tie the lower validation NLL), and
:func:`save_best` writes the model directory with its provenance.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from imgcls.artifacts import save_model
from imgcls.config import to_dict
from imgcls.engine.loop import Position, Trainer
from imgcls.tasks import monitor_metric


def checkpoint_state(tr: Trainer) -> dict[str, Any]:
    return {
        "model": tr.raw.state_dict(),
        "ema": tr.ema.module.state_dict() if tr.ema is not None else None,
        "optimizer": tr.optimizer.state_dict(),
        "scaler": tr.scaler.state_dict() if tr.scaler is not None else None,
        "position": tr.pos.to_dict(),
        "schedule": {"total": tr.schedule.total, "warmup": tr.schedule.warmup, "anchor": tr.schedule.anchor},
        # progressive resizing's measured cost at the small sizes (config.yaml keeps only the sizes)
        "sizes_fixed": tr.sizes.fixed if tr.sizes is not None else None,
        "elapsed": tr.elapsed,
        "config": to_dict(tr.cfg),
        "requested": dict(tr.requested),
        "classes": list(tr.task.class_names),  # what a resumed run's data is checked against
    }


def restore(tr: Trainer, state: dict[str, Any]) -> None:
    tr.raw.load_state_dict(state["model"])
    if tr.ema is not None and state.get("ema") is not None:
        tr.ema.module.load_state_dict(state["ema"])
    tr.optimizer.load_state_dict(state["optimizer"])
    if tr.scaler is not None and state.get("scaler"):
        tr.scaler.load_state_dict(state["scaler"])
    tr.pos = Position(**state["position"])
    tr.pos.elapsed = float(state.get("elapsed", 0.0))
    tr.schedule.total = int(state["schedule"]["total"])
    tr.schedule.warmup = int(state["schedule"]["warmup"])
    anchor = state["schedule"].get("anchor")  # a time budget's re-fitted schedule
    tr.schedule.anchor = (int(anchor[0]), float(anchor[1]), int(anchor[2])) if anchor else None
    if tr.sizes is not None and state.get("sizes_fixed") is not None:
        tr.sizes = dataclasses.replace(tr.sizes, fixed=float(state["sizes_fixed"]))
    if tr.budget is not None:  # the plan continues where the checkpoint's stood
        tr.budget.plan.sizes = tr.sizes
        tr.budget.resumed(tr.pos.total_steps)


def save_best(tr: Trainer, metrics: dict[str, Any]) -> None:
    pre = tr.preprocess
    save_model(
        tr.eval_model,
        tr.run_dir / "model",
        label_names=tr.task.class_names,
        preprocess=pre,
        task={**tr.task.to_dict(), "test_time_augmentation": tr.tta},
        provenance={
            "data": str(tr.cfg.data.data),
            **({"more_data": list(tr.cfg.data.more_data)} if tr.cfg.data.more_data else {}),
            "run": str(tr.run_dir.resolve()),
            "epoch": metrics.get("epoch"),
            "pretrained": tr.cfg.model.pretrained,
            **({"corrections": str(tr.cfg.data.corrections)} if tr.cfg.data.corrections else {}),
            "detection_crops": (
                {
                    "threshold": d.det_threshold,
                    "categories": d.det_categories,
                    "margin": d.crop_margin,
                }
                if (d := tr.cfg.data).detections
                else None
            ),
            "metrics": {k: v for k, v in metrics.items() if k.startswith("val_")},
            **({"tta_choice": metrics["tta_choice"]} if "tta_choice" in metrics else {}),
        },
    )


def improved(tr: Trainer, metrics: dict[str, Any]) -> bool:
    key, higher = monitor_metric(tr.task, tr.cfg.train.monitor)
    if key not in metrics:
        return True  # no validation: the latest model is the best we know
    value, loss = metrics[key], metrics.get("val_loss", 0.0)
    best = tr.pos.best
    if not best:
        return True
    if value == best["value"]:
        return loss < best.get("loss", math.inf)  # ties: the better likelihood wins
    return value > best["value"] if higher else value < best["value"]
