"""``fit``: set up a run from a :class:`RunConfig`, train it epoch by epoch (resuming where a
killed run stopped), keep the best model, and write the run directory:

``config.yaml`` (resolved), ``metrics.jsonl`` (a line per epoch), ``splits.csv``,
``skipped.csv``, ``model/`` (the best model directory), ``checkpoint/`` (resume state).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.artifacts import save_model, write_history
from imgcls.config import (
    TUNED_THRESHOLDS,
    PreprocessConfig,
    RunConfig,
    check_config,
    dump_yaml,
    from_dict,
    to_dict,
)
from imgcls.console import info
from imgcls.data.dataset import TrainingData, prepare_training_data
from imgcls.data.loaders import EvalBatches, TrainBatches
from imgcls.data.sources import load_source
from imgcls.data.table import DataTable
from imgcls.data.transforms import PRESETS, BatchAugment
from imgcls.engine.budget import BudgetPlan, parse_duration
from imgcls.engine.checkpoint import CheckpointWriter, load_checkpoint
from imgcls.engine.distributed import Dist, init_distributed, shutdown
from imgcls.engine.finish import final_val_passes, finish
from imgcls.engine.loop import Position, Trainer, train_one_epoch, validate
from imgcls.engine.optim import DEFAULT_WD, Schedule, build_optimizer, default_lr, param_groups
from imgcls.errors import UserError
from imgcls.io import atomic_write_text
from imgcls.models.factory import build_model, classifier_name, preprocess_config
from imgcls.runtime import make_runtime, physical_cores, resolve_device, set_deterministic, set_threads
from imgcls.tasks import (
    Task,
    infer_task,
    monitor_metric,
)

DEFAULT_EPOCHS = 10
SMALL_IMAGE = 64  # images at most this size get the small-image architecture and augmentation
SMALL_ARCH = "smallnet"

EpochCallback = Callable[[Path, list[dict[str, Any]]], None]


# ----------------------------------------------------------------------------- run directory
def prepare_run_dir(cfg: RunConfig, resume: bool) -> tuple[Path, dict[str, Any] | None]:
    """The run folder, and the checkpoint state when resuming (its config replaces ``cfg``)."""
    if not cfg.train.out:
        raise UserError("--out RUN_DIR is required")
    run = Path(cfg.train.out)
    ckpt_dir = run / "checkpoint"
    if resume:
        state = load_checkpoint(ckpt_dir)
        if state is None:
            raise UserError(f"--resume: {run} has no checkpoint to resume from")
        return run, state
    if run.is_dir() and any(run.iterdir()):
        hint = " (add --resume to continue it)" if (ckpt_dir / "state.pt").exists() else ""
        raise UserError(f"{run} already exists and is not empty{hint}; choose another --out")
    from imgcls.io import check_writable

    check_writable(run, folder=True)
    run.mkdir(parents=True, exist_ok=True)
    return run, None


def write_csv(path: Path, header: list[str], rows: list[tuple[Any, ...]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------------- resolving
def image_side(table: DataTable, sample: int = 48) -> int | None:
    """The larger side of the source's images when they are small (at most 64 px): all of them
    for images held in memory (IDX), else read from the headers of ``sample`` files spread over
    the table (a folder of 28-px PNGs is as small as MNIST). None for larger or mixed images and
    for detection crops."""
    if table.pixels is not None:
        return int(max(table.pixels.shape[1:3]))
    if table.boxes is not None or not len(table):
        return None
    from imgcls.data.image import ImageError, open_image

    sides = []
    for i in np.unique(np.linspace(0, len(table) - 1, min(sample, len(table))).astype(int)):
        try:
            with open_image(table.paths[i]) as img:
                sides.append(max(img.size))
        except ImageError:
            continue  # an unusable file is skipped later, with its reason
    return max(sides) if sides and max(sides) <= SMALL_IMAGE else None


def resolve_arch(cfg: RunConfig, table: DataTable) -> str:
    if cfg.model.arch != "auto":
        return cfg.model.arch
    saved = pretrained_model_dir_arch(cfg.model.pretrained)
    if saved is not None:  # fine-tuning a saved model: its architecture and options, by default
        arch, norm, attn = saved
        cfg.model.norm = cfg.model.norm or norm
        cfg.model.attn = cfg.model.attn or attn
        return arch
    side = image_side(table)
    return SMALL_ARCH if side is not None and side <= SMALL_IMAGE else "resnet18"


def pretrained_model_dir_arch(pretrained: str | None) -> tuple[str, str | None, str | None] | None:
    """(arch, norm, attn) of a model directory given as ``--pretrained``, else None."""
    if not pretrained or pretrained in ("auto", "none", "None", "false", "timm", "torchvision", "default"):
        return None
    config = Path(pretrained) / "config.json"
    if not config.is_file():
        return None
    try:
        saved = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{config}: not a readable model configuration ({e})") from None
    own = saved.get("imgcls") or {}
    arch = own.get("arch") or saved.get("architecture")
    if not arch:
        return None
    if not own and "/" not in arch:  # a timm hub directory: timm's name
        arch = f"timm/{arch}"
    norm = own.get("norm")
    return str(arch), (None if norm in (None, "") else str(norm)), own.get("attn")


def resolve_pretrained(cfg: RunConfig, arch: str) -> str | None:
    """'auto' means the published weights where the architecture has them (the default path:
    transfer learning), else training from scratch."""
    from imgcls.models.registry import get_entry

    p = cfg.model.pretrained
    if p in (None, "", "none", "None", "false"):
        return None
    if p == "auto":
        entry = get_entry(arch)
        return "default" if (entry.timm_weights or entry.torchvision_weights) else None
    return p


def resolve_preprocess(cfg: RunConfig, model: torch.nn.Module, table: DataTable) -> PreprocessConfig:
    pre = preprocess_config(model)
    side = image_side(table)
    if cfg.data.image_size:
        pre = pre.with_size(cfg.data.image_size)
    elif side is not None and side < pre.image_size and pre.image_size > 64:
        pre = pre.with_size(max(32, side))  # no 224-px upsampling of 28-px images by default
    if side is not None and side <= SMALL_IMAGE:
        pre = dataclasses.replace(pre, crop_pct=1.0)  # small images: keep every pixel
    # the values were checked by check_config
    if cfg.data.crop_pct:
        pre = dataclasses.replace(pre, crop_pct=cfg.data.crop_pct)
    if cfg.data.interpolation:
        pre = dataclasses.replace(pre, interpolation=cfg.data.interpolation)
    if cfg.data.resize_mode:
        pre = dataclasses.replace(pre, resize_mode=cfg.data.resize_mode)
    return pre


MIN_STEPS_PER_EPOCH = 32


def default_batch_size(image_size: int, train_images: int) -> int:
    """256 for small images, 64 otherwise; smaller (a power of two, at least 16) when the
    training set would give fewer than 32 steps an epoch, since a thousand images in four
    steps of 256 learn little in a few epochs."""
    base = 256 if image_size <= SMALL_IMAGE else 64
    fit = 16
    while fit * 2 <= min(base, train_images // MIN_STEPS_PER_EPOCH):
        fit *= 2
    return min(base, fit)


def resolve_augment(cfg: RunConfig, pre: PreprocessConfig) -> str:
    name = cfg.data.augment
    if name == "auto":
        name = "small" if pre.image_size <= SMALL_IMAGE else "standard"
    return name


def resolve_tta(tta: str, pre: PreprocessConfig, augment: str) -> str:
    """'auto' stays 'auto' (flip test-time augmentation, kept after training only where the
    validation split shows it helps: :mod:`imgcls.engine.finish`) for small images (the model is
    cheap, the gain largest) trained with flips (so a mirror image is the same class by the
    user's own choice); elsewhere it is 'none'."""
    if tta == "auto":
        return "auto" if pre.image_size <= SMALL_IMAGE and PRESETS[augment].hflip > 0 else "none"
    return tta


def make_task(cfg: RunConfig, table: DataTable, rows: np.ndarray) -> Task:
    name = infer_task(cfg.train.task, table.num_classes, table.multilabel)
    positive = 1
    if name == "binary" and cfg.train.positive:
        if cfg.train.positive not in table.class_names:
            raise UserError(f"--positive {cfg.train.positive!r} is not a class ({', '.join(table.class_names)})")
        positive = table.class_names.index(cfg.train.positive)
    smoothing = cfg.optim.label_smoothing if name == "multiclass" else 0.0
    weights = pos_weight = None
    if cfg.train.balance == "weights":
        if table.multilabel:
            pos_weight = torch.tensor(label_pos_weight(table.targets[rows]), dtype=torch.float32)
        else:
            counts = np.maximum(np.bincount(table.targets[rows], minlength=table.num_classes), 1).astype(np.float64)
            weights = torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)  # "balanced"
    cut = cfg.train.binary_threshold
    fixed = [float(cut)] if name == "binary" and cut not in TUNED_THRESHOLDS else []
    return Task(
        name,
        list(table.class_names),
        positive=positive,
        label_smoothing=smoothing,
        class_weights=weights,
        pos_weight=pos_weight,
        thresholds=fixed,
    )


def label_pos_weight(targets: np.ndarray) -> np.ndarray:
    """Multi-label ``--balance weights``: per label, negatives / positives, the weight of a
    positive in that label's binary cross-entropy (PyTorch's ``pos_weight``), so each label's
    positives count as much as its negatives. A label with no positive gets 1."""
    positives = targets.sum(axis=0).astype(np.float64)
    negatives = len(targets) - positives
    return np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)


def sampler_weights(cfg: RunConfig, table: DataTable, rows: np.ndarray) -> np.ndarray | None:
    """``--balance sampler``: each row's weight is 1 / the size of its stratum (its class; for
    multi-label rows the rarest label, and rows with no label a stratum of their own), so every
    stratum is drawn equally often."""
    if cfg.train.balance != "sampler":
        return None
    _, stratum = np.unique(table.stratify_key()[rows], return_inverse=True)
    return 1.0 / np.bincount(stratum)[stratum]


def make_mixer(cfg: RunConfig, task: Task) -> Callable[..., Any] | None:
    d = cfg.data
    if not d.mixup and not d.cutmix:
        return None
    if task.name != "multiclass":
        raise UserError("--mixup / --cutmix need a multi-class task")
    from torchvision.transforms import v2

    k = len(task.class_names)
    choices = []
    if d.mixup:
        choices.append(v2.MixUp(alpha=d.mixup, num_classes=k))
    if d.cutmix:
        choices.append(v2.CutMix(alpha=d.cutmix, num_classes=k))
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


# ------------------------------------------------------------------------------------- setup
def build_trainer(
    cfg: RunConfig, run: Path, dist: Dist, table: DataTable, started: float, *, resuming: bool = False
) -> Trainer:
    """The trainer of ``cfg``. ``resuming``: the weights come from the checkpoint, so the
    pretrained ones are neither fetched nor read again."""
    t = cfg.train
    arch = resolve_arch(cfg, table)
    cfg.model.arch = arch
    task_probe = infer_task(t.task, table.num_classes, table.multilabel)
    Task(task_probe, list(table.class_names))  # a data problem (one class...) before any weights
    outputs = 1 if task_probe == "binary" else table.num_classes
    pretrained = resolve_pretrained(cfg, arch)
    model, report = build_model(
        arch,
        num_classes=outputs,
        pretrained=None if resuming else pretrained,
        norm=cfg.model.norm,
        attn=cfg.model.attn,
        drop_rate=cfg.model.drop_rate,
    )
    if report is not None and dist.main:
        info(f"pretrained: {report.describe()}")
    cfg.model.pretrained = pretrained or "none"
    pre = resolve_preprocess(cfg, model, table)
    cfg.data.image_size, cfg.data.resize_mode = pre.image_size, pre.resize_mode
    cfg.data.crop_pct, cfg.data.interpolation = pre.crop_pct, pre.interpolation
    cfg.data.augment = resolve_augment(cfg, pre)
    t.tta = resolve_tta(t.tta, pre, cfg.data.augment)
    data = load_training_data(cfg, pre, table, dist)
    if t.batch_size is None:
        t.batch_size = default_batch_size(pre.image_size, len(data.splits.train) // dist.world)
    task = make_task(cfg, data.table, data.splits.train)
    runtime = make_runtime(model, device=t.device, precision=t.precision, channels_last=t.channels_last)
    raw = runtime.prepare(model)
    classifier = classifier_name(raw)
    o = cfg.optim
    if o.backbone_lr_mult is None:
        o.backbone_lr_mult = 0.1 if pretrained else 1.0
    if cfg.model.head_epochs is None:
        cfg.model.head_epochs = 1 if pretrained and (t.epochs or DEFAULT_EPOCHS) >= 4 else 0
    o.lr = o.lr or default_lr(o.optimizer, t.batch_size * dist.world * max(1, o.accumulate))
    o.weight_decay = DEFAULT_WD.get(o.optimizer, 0.0) if o.weight_decay is None else o.weight_decay
    groups = param_groups(raw, classifier=classifier, weight_decay=o.weight_decay, backbone_lr_mult=o.backbone_lr_mult)
    optimizer = build_optimizer(o.optimizer, groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    train_batches = TrainBatches(
        source=data.source,
        targets=task.targets(data.table.targets),
        rows=data.splits.train,
        batch_size=min(t.batch_size, max(1, len(data.splits.train) // dist.world)),
        augment=BatchAugment(pre, PRESETS[cfg.data.augment]),
        seed=t.seed,
        weights=sampler_weights(cfg, data.table, data.splits.train),
        rank=dist.rank,
        world=dist.world,
    )
    val_batches = None
    if len(data.splits.val):
        val_batches = EvalBatches(
            data.source,
            task.targets(data.table.targets),
            data.splits.val,
            t.batch_size * 2,
            pre,
            dist.rank,
            dist.world,
        )
    if t.compile:
        raw.compile()  # in place, so the DDP wrapper (per training stage) wraps compiled code
    ema = None
    if o.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(raw, decay=o.ema)
    scaler = torch.amp.GradScaler(runtime.device.type) if runtime.precision == "fp16" else None
    tr = Trainer(
        cfg=cfg,
        run_dir=run,
        model=raw,  # wrapped for DDP by set_train_mode, per training stage
        raw=raw,
        task=task,
        runtime=runtime,
        dist=dist,
        optimizer=optimizer,
        schedule=Schedule(base_lr=o.lr, total=1, warmup=0, kind=o.schedule),
        data=data,
        train_batches=train_batches,
        val_batches=val_batches,
        classifier=classifier,
        preprocess=pre,
        ema=ema,
        scaler=scaler,
        mix=make_mixer(cfg, task),
        started=started,
        tta="flip" if t.tta == "flip" else "none",  # auto: decided by finish()
    )
    plan_steps(tr)
    return tr


def load_training_data(cfg: RunConfig, pre: PreprocessConfig, table: DataTable, dist: Dist) -> TrainingData:
    d = cfg.data
    workers = d.workers or physical_cores()
    from imgcls.console import Progress

    def prepare(show: bool) -> TrainingData:
        with Progress(len(table), "decoding images", enabled=show) as bar:
            return prepare_training_data(
                d.data, pre, table=table, val_split=d.val_split, split_by=d.split_by,
                max_val=d.max_val,
                seed=cfg.train.seed,
                cache=d.cache, cache_dir=d.cache_dir, workers=workers, max_pixels=d.max_pixels,
                max_skipped=d.max_skipped, progress=lambda n: bar.update(n - bar.done),
                cache_max_bytes=int(d.cache_max_gb * 1e9),
            )  # fmt: skip

    # rank 0 decodes (and fills the shared disk cache) first; the others then read it
    data = prepare(show=dist.main) if dist.main else None
    dist.barrier()
    if data is None:
        data = prepare(show=False)
    return data


def plan_steps(tr: Trainer) -> None:
    t = tr.cfg.train
    spe = tr.steps_per_epoch
    if t.time_budget:
        budget = parse_duration(t.time_budget)
        tr.budget = BudgetPlan(
            budget=budget,
            steps_per_epoch=spe,
            val_images=len(tr.data.splits.val),
            batch_size=tr.train_batches.batch_size,
            final_passes=final_val_passes(tr),
        )
        epochs_cap = t.epochs or 10_000
        tr.pos.total_steps = epochs_cap * spe  # provisional: re-planned after a few steps
        tr.schedule.total = tr.pos.total_steps
        tr.schedule.warmup = int(tr.cfg.optim.warmup * min(tr.pos.total_steps, 20 * spe))
    else:
        tr.pos.total_steps = (t.epochs or DEFAULT_EPOCHS) * spe
        tr.schedule.total = tr.pos.total_steps
        tr.schedule.warmup = int(tr.cfg.optim.warmup * tr.pos.total_steps)


# --------------------------------------------------------------------------- state & saving
def checkpoint_state(tr: Trainer) -> dict[str, Any]:
    return {
        "model": tr.raw.state_dict(),
        "ema": tr.ema.module.state_dict() if tr.ema is not None else None,
        "optimizer": tr.optimizer.state_dict(),
        "scaler": tr.scaler.state_dict() if tr.scaler is not None else None,
        "position": tr.pos.to_dict(),
        "schedule": {"total": tr.schedule.total, "warmup": tr.schedule.warmup},
        "elapsed": tr.elapsed,
        "config": to_dict(tr.cfg),
        "requested": dict(tr.requested),
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
            "run": str(tr.run_dir.resolve()),
            "epoch": metrics.get("epoch"),
            "pretrained": tr.cfg.model.pretrained,
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


# ---------------------------------------------------------------------------------- training
def end_epoch(tr: Trainer, epoch: int, stats: dict[str, float], on_epoch_end: EpochCallback | None) -> bool:
    """Validate, record, keep the best model, checkpoint; True when training should stop."""
    val = validate(tr)
    metrics: dict[str, Any] = {"epoch": epoch + 1, **stats, **val}
    metrics["seconds"] = stats["train_seconds"] + val.get("val_seconds", 0.0)
    metrics["images_per_second"] = stats["images"] / max(stats["train_seconds"], 1e-9)
    tr.pos.history.append(metrics)
    stop = False
    key, _ = monitor_metric(tr.task, tr.cfg.train.monitor)
    if improved(tr, metrics):
        tr.pos.best = {
            "epoch": epoch + 1,
            "metric": key,
            "value": metrics.get(key),
            "loss": metrics.get("val_loss", 0.0),
        }
        tr.pos.bad_epochs = 0
        if tr.dist.main:
            save_best(tr, metrics)
    else:
        tr.pos.bad_epochs += 1
        stop = bool(tr.cfg.train.early_stopping) and tr.pos.bad_epochs >= tr.cfg.train.early_stopping
    tr.pos.epoch, tr.pos.step = epoch + 1, 0
    tr.pos.epoch_loss, tr.pos.epoch_images, tr.pos.epoch_seconds = 0.0, 0, 0.0
    if tr.dist.main:
        write_history(tr.run_dir, tr.pos.history)
        info(epoch_line(metrics, tr))
        if on_epoch_end is not None:
            on_epoch_end(tr.run_dir, tr.pos.history)
    if tr.save_checkpoint is not None:
        tr.save_checkpoint()
    if stop and tr.dist.main:
        info(f"early stopping: {key} has not improved for {tr.pos.bad_epochs} epochs")
    return stop


def epoch_line(m: dict[str, Any], tr: Trainer) -> str:
    n_epochs = -(-tr.pos.total_steps // max(1, tr.steps_per_epoch))
    parts = [f"epoch {m['epoch']}/{n_epochs}", f"train_loss {m['train_loss']:.4f}"]
    parts += [f"{k} {v:.4f}" for k, v in m.items() if k.startswith("val_") and k not in ("val_seconds", "val_nll")]
    parts += [f"lr {m['lr']:.2e}", f"{m['images_per_second']:.1f} img/s", f"{m['seconds']:.1f}s"]
    return "  ".join(parts)


def write_run_files(tr: Trainer) -> None:
    if not tr.dist.main:
        return
    dump_yaml(tr.cfg, tr.run_dir / "config.yaml")
    atomic_write_text(tr.run_dir / "splits.csv", tr.data.splits_csv)
    write_csv(tr.run_dir / "skipped.csv", ["path", "reason"], tr.data.skipped)


def run_epochs(tr: Trainer, on_epoch_end: EpochCallback | None) -> None:
    spe = tr.steps_per_epoch
    while tr.pos.epoch * spe < tr.pos.total_steps:
        stats = train_one_epoch(tr, tr.pos.epoch)
        found = tr.data.source.found_bad
        if found and tr.dist.main:  # cache='none': files found broken while streaming
            known = {p for p, _ in tr.data.skipped}
            tr.data.skipped += [
                (tr.data.table.paths[i], r) for i, r in sorted(found.items()) if tr.data.table.paths[i] not in known
            ]
            write_csv(tr.run_dir / "skipped.csv", ["path", "reason"], tr.data.skipped)
        if end_epoch(tr, tr.pos.epoch, stats, on_epoch_end):
            break


TableHook = Callable[[RunConfig, DataTable], DataTable]


def fit(
    cfg: RunConfig,
    *,
    resume: bool = False,
    started: float | None = None,
    on_epoch_end: EpochCallback | None = None,
    table_hook: TableHook | None = None,
    requested: dict[str, Any] | None = None,
) -> Path:
    """Train as ``cfg`` says; returns the run directory (its ``model/`` is the best model).

    ``requested``: the options the user gave (command line and ``--config`` file), kept in the
    checkpoint; with ``resume`` they are the options given now, applied to the saved
    configuration as :mod:`imgcls.engine.resume` allows."""
    started = started if started is not None else time.monotonic()
    check_config(cfg)
    absolute_paths(cfg)
    resolve_device(cfg.train.device)  # no GPU for --device cuda: say so before any work
    fresh = not Path(cfg.train.out).exists() if cfg.train.out else False
    run, state = prepare_run_dir(cfg, resume)
    changes: list[str] = []
    if state is not None:
        from imgcls.engine.resume import apply_resume_options

        out = cfg.train.out
        cfg = from_dict(RunConfig, state["config"])
        cfg.train.out = out
        changes = apply_resume_options(cfg, requested or {}, state.get("requested"))
        check_config(cfg)
        requested = state.get("requested")
    t = cfg.train
    set_threads(t.threads)
    set_deterministic(t.deterministic)
    torch.manual_seed(t.seed)
    dist = init_distributed("cuda" if t.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        return _fit(cfg, run, state, dist, started, on_epoch_end, table_hook, requested or {}, changes)
    except BaseException:
        if fresh and dist.main and run.is_dir() and not any(run.iterdir()):
            run.rmdir()  # a run that failed before writing anything leaves no empty folder
        raise
    finally:
        shutdown(dist)


def _fit(
    cfg: RunConfig,
    run: Path,
    state: dict[str, Any] | None,
    dist: Dist,
    started: float,
    on_epoch_end: EpochCallback | None,
    table_hook: TableHook | None,
    requested: dict[str, Any],
    changes: list[str],
) -> Path:
    t = cfg.train
    d = cfg.data
    table = load_source(d.data, multilabel=True if t.task == "multilabel" else None, image_root=d.image_root)
    if d.val_data:
        from imgcls.data.dataset import concat_val

        table = concat_val(table, load_source(d.val_data, multilabel=table.multilabel, image_root=d.image_root))
    if table_hook is not None:  # e.g. detection crops (imgcls.cameratrap)
        table = table_hook(cfg, table)
    from imgcls.data.splits import resolve_split_by

    d.split_by = resolve_split_by(table, d.split_by) or "none"
    tr = build_trainer(cfg, run, dist, table, started, resuming=state is not None)
    tr.requested = requested
    if state is not None:
        restore(tr, state)
        replan_on_resume(tr, changes)
        if tr.pos.finished:
            if dist.main:
                info(f"{run} is complete ({describe_best(tr)}): nothing to train; add --epochs N to train more")
            return run
        if dist.main:
            said = f" ({'; '.join(changes)})" if changes else ""
            info(f"resuming {run} at epoch {tr.pos.epoch + 1}, step {tr.pos.step}{said}")
    elif dist.main:
        describe_start(tr)
    write_run_files(tr)
    writer = CheckpointWriter(run / "checkpoint")
    if dist.main:

        def checkpoint() -> None:
            writer.save(checkpoint_state(tr))

        tr.save_checkpoint = checkpoint
    try:
        run_epochs(tr, on_epoch_end)
        final = finish(tr, save_best)
        tr.pos.finished = True
        if tr.save_checkpoint is not None:
            tr.save_checkpoint()
    finally:
        writer.wait()
    if dist.main and tr.pos.best:
        info(f"best: {describe_best(tr, final)}")
    dist.barrier()
    return run


def absolute_paths(cfg: RunConfig) -> None:
    """The run records where its data is as absolute paths, so its config.yaml, its model's
    provenance (``imgcls evaluate`` without --data) and --resume work from any folder."""
    import os

    d = cfg.data
    for name in ("data", "val_data", "image_root", "detections", "cache_dir"):
        value = getattr(d, name)
        if value:
            setattr(d, name, os.path.abspath(os.path.expanduser(value)))
    if cfg.model.pretrained and os.path.exists(os.path.expanduser(cfg.model.pretrained)):
        cfg.model.pretrained = os.path.abspath(os.path.expanduser(cfg.model.pretrained))


def replan_on_resume(tr: Trainer, changes: list[str]) -> None:
    """A resumed run keeps its restored schedule, unless ``--epochs`` changed: then the
    schedule is planned for the new length (the learning rate follows the longer cosine)."""
    t = tr.cfg.train
    if t.time_budget or not any(c.startswith("epochs ") for c in changes):
        return
    total = (t.epochs or DEFAULT_EPOCHS) * tr.steps_per_epoch
    if total <= tr.steps_done and total != tr.pos.total_steps:
        raise UserError(
            f"--epochs {t.epochs}: the run has already trained {tr.pos.epoch} epochs; give more to train more"
        )
    tr.pos.total_steps = tr.schedule.total = total
    tr.pos.finished = tr.pos.finished and total == tr.steps_done


def describe_best(tr: Trainer, final: dict[str, Any] | None = None) -> str:
    """'epoch 7 of 8, val_top1 0.9742, val_nll 0.0608 (test-time flip, temperature 0.445)': the
    model directory's epoch and its validation metrics as predict and evaluate compute them."""
    best = tr.pos.best
    n = -(-tr.pos.total_steps // max(1, tr.steps_per_epoch))
    key = str(best.get("metric"))
    value = (final or {}).get(key, best.get("value"))
    shown = f", {key} {value:.4f}" if isinstance(value, (int, float)) else ""
    if final and isinstance(final.get("val_nll"), float):
        shown += f", val_nll {final['val_nll']:.4f}"
    how = [w for w, on in (("test-time flip", tr.tta == "flip"),
                           (f"temperature {tr.task.temperature:.3f}", tr.task.temperature != 1.0)) if on]  # fmt: skip
    return f"epoch {best.get('epoch')} of {n}{shown}" + (f" ({', '.join(how)})" if how else "")


def describe_start(tr: Trainer) -> None:
    d, t = tr.data, tr.cfg.train
    used = d.table.subset(np.concatenate([d.splits.train, d.splits.val]))
    counts = used.class_counts()
    classes = ", ".join(f"{k} ({v})" for k, v in list(counts.items())[:8]) + (" ..." if len(counts) > 8 else "")
    info(f"data: {len(d.splits.train)} train / {len(d.splits.val)} val images, {len(counts)} classes: {classes}")
    if d.skipped:
        info(f"skipped {len(d.skipped)} unusable files (listed in {tr.run_dir / 'skipped.csv'})")
    pre = tr.preprocess
    n = tr.task.num_outputs
    info(
        f"model: {tr.cfg.model.arch} ({tr.task.name}, {n} output{'s' if n != 1 else ''}), "
        f"{pre.image_size}px, augment {tr.cfg.data.augment}; {tr.runtime.describe()}; "
        f"batch {t.batch_size}, {tr.cfg.optim.optimizer} lr {tr.cfg.optim.lr:.2e}"
    )
