"""Build a :class:`~imgcls.engine.loop.Trainer` from a resolved :class:`~imgcls.engine.plan.Plan`:
the model (with its starting weights), the task and its loss weights, the decoded data, the
optimiser, the batches, EMA and the step plan. Every decision was made by :mod:`imgcls.engine.plan`;
this module only constructs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.config import TUNED_THRESHOLDS, PreprocessConfig, RunConfig, parse_duration
from imgcls.console import info
from imgcls.data.dataset import TrainingData, prepare_training_data
from imgcls.data.loaders import EvalBatches, TrainBatches
from imgcls.data.table import DataTable
from imgcls.data.transforms import PRESETS, BatchAugment
from imgcls.engine.budget import CLOSING_FLOOR, BudgetPlan, Clock, Pacer, prepay_closing, provisional_warmup
from imgcls.engine.candidates import Timing, fit_to_budget
from imgcls.engine.distributed import Dist
from imgcls.engine.finish import final_val_passes
from imgcls.engine.loop import Trainer
from imgcls.engine.optim import Schedule, build_optimizer, param_groups
from imgcls.engine.plan import DEFAULT_EPOCHS, ModelPlan, Plan, resolve, resolve_preprocess
from imgcls.errors import UserError
from imgcls.models.factory import build_model, classifier_name, preprocess_config
from imgcls.runtime import DeviceFacts, device_facts, make_runtime, physical_cores, resolve_device
from imgcls.tasks import Task, infer_task

#: where the decoded images are, as a GPU run's start says (:mod:`imgcls.data.device`)
PLACES = {"device": "on the device", "pinned": "in host memory, copied ahead of each step",
          "decoded": "decoded each epoch, copied ahead of each step"}  # fmt: skip


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


def build_trainer(
    cfg: RunConfig,
    model_plan: ModelPlan,
    run: Path,
    dist: Dist,
    table: DataTable,
    started: float | None = None,
    *,
    resuming: bool = False,
    clock: Clock = time.monotonic,
) -> tuple[Trainer, Plan]:
    """The trainer of ``cfg`` and the plan it was built from. ``resuming``: the weights come
    from the checkpoint, so the pretrained ones are neither fetched nor read again. ``clock``:
    what the run's times are measured on (``started`` is on it)."""
    mp = model_plan
    model = _network(cfg, mp, table, dist, resuming)
    model_pre = preprocess_config(model)
    pre = resolve_preprocess(cfg, model_pre, mp.image_side)
    data = load_training_data(cfg, pre, table, dist)
    plan = resolve(cfg, mp, model_pre, train_images=len(data.splits.train), world=dist.world,
                   **batch_device(cfg, mp, pre))  # fmt: skip
    timing = Timing(clock() if started is None else started, clock, budget_closing(cfg, clock))
    n_train, n_val = len(data.splits.train) // dist.world, len(data.splits.val)
    model, mp, plan, choice = (model, mp, plan, "") if resuming else fit_to_budget(  # a resumed run keeps its choice
        cfg, mp, plan, model, run, train_images=n_train, val_images=n_val, timing=timing, dist=dist)  # fmt: skip
    cfg = plan.config(cfg)
    task = make_task(cfg, data.table, data.splits.train)
    t, o = cfg.train, cfg.optim
    runtime = make_runtime(model, device=t.device, precision=t.precision, channels_last=t.channels_last)
    raw = runtime.prepare(model)
    classifier = classifier_name(raw)
    groups = param_groups(raw, classifier=classifier, weight_decay=plan.weight_decay,
                          backbone_lr_mult=plan.backbone_lr_mult)  # fmt: skip
    train_batches, val_batches = make_batches(cfg, plan, data, task, dist, runtime.device)
    if t.compile:
        raw.compile()  # in place, so the DDP wrapper (per training stage) wraps compiled code
    ema = None
    if o.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(raw, decay=o.ema)
    tr = Trainer(
        cfg=cfg, run_dir=run, model=raw, raw=raw, task=task, runtime=runtime, dist=dist,  # DDP: set_train_mode
        optimizer=build_optimizer(o.optimizer, groups, lr=plan.lr, momentum=o.momentum, nesterov=o.nesterov),
        schedule=Schedule(base_lr=plan.lr, total=1, warmup=0, kind=o.schedule),
        data=data, train_batches=train_batches, val_batches=val_batches, classifier=classifier,
        preprocess=plan.preprocess, ema=ema, mix=make_mixer(cfg, task), started=timing.started, clock=clock,
        scaler=torch.amp.GradScaler(runtime.device.type) if runtime.precision == "fp16" else None,
        tta="flip" if plan.tta == "flip" else "none",  # auto: decided by finish()
        choice=choice,
    )  # fmt: skip
    if plan.sizes.enabled:
        tr.sizes = plan.sizes
        sizes = plan.sizes
        train_batches.size_at = lambda step: sizes.size(step, tr.pos.total_steps)
    plan_steps(tr, timing.closing)
    return tr, plan


def _network(cfg: RunConfig, mp: ModelPlan, table: DataTable, dist: Dist, resuming: bool) -> Any:
    """The network, its pretrained weights loaded (said on the main process), the classifier's
    rows matched to the table's classes by name where the weights are a model directory's."""
    model, report = build_model(mp.arch, num_classes=mp.num_outputs, pretrained=None if resuming else mp.pretrained,
                                norm=mp.norm, attn=mp.attn, drop_rate=cfg.model.drop_rate,
                                class_names=list(table.class_names), positive=cfg.train.positive)  # fmt: skip
    if report is not None and dist.main:
        info(f"pretrained: {report.describe()}")
    return model


def batch_device(cfg: RunConfig, mp: ModelPlan, pre: PreprocessConfig) -> dict[str, Any]:
    """:func:`~imgcls.engine.plan.resolve`'s ``device`` the default batch is planned for and,
    on a GPU, ``activation_kb``: the model's activation memory per image at the input size
    (float32 KB, counted on the meta device: no memory, no arithmetic). Nothing when
    ``--batch-size`` is given."""
    if cfg.train.batch_size:
        return {}
    facts: DeviceFacts = device_facts(resolve_device(cfg.train.device))
    if facts.type != "cuda":
        return {"device": facts}
    from imgcls.models.summary import summarize_arch

    size = (3, pre.image_size, pre.image_size)
    try:
        summary = summarize_arch(mp.arch, input_size=size, num_classes=mp.num_outputs, norm=mp.norm, attn=mp.attn)
    except Exception:  # a model the meta device cannot run: the batch falls back to the CPU's size
        return {"device": facts}
    return {"device": facts, "activation_kb": summary.activation_kb}


def budget_closing(cfg: RunConfig, clock: Clock) -> float:
    """With a time budget, the seconds its closing work is priced at, its imports spent now
    (:func:`~imgcls.engine.budget.prepay_closing`); 0 without one."""
    if not cfg.train.time_budget:
        return 0.0
    return prepay_closing(export=cfg.train.export_onnx or cfg.train.export_int8, clock=clock)


def make_batches(
    cfg: RunConfig, plan: Plan, data: TrainingData, task: Task, dist: Dist, device: torch.device | None = None
) -> tuple[TrainBatches, EvalBatches | None]:
    """The training batches (augmented, sampled as ``--balance`` says) and the validation ones,
    made on ``device`` (the decoded store placed there: :mod:`imgcls.data.device`)."""
    if device is not None:
        where = data.source.place(device)
        if device.type != "cpu" and dist.main:
            info(f"batches made on {device.type}: decoded images {PLACES.get(where, where)}")
    targets = task.targets(data.table.targets)
    train = TrainBatches(
        source=data.source,
        targets=targets,
        rows=data.splits.train,
        batch_size=min(plan.batch_size, max(1, len(data.splits.train) // dist.world)),
        augment=BatchAugment(plan.preprocess, PRESETS[plan.augment]),
        seed=cfg.train.seed,
        weights=sampler_weights(cfg, data.table, data.splits.train),
        rank=dist.rank,
        world=dist.world,
    )
    val = None
    if len(data.splits.val):
        val = EvalBatches(data.source, targets, data.splits.val, plan.batch_size * 2, plan.preprocess, dist.rank,
                          dist.world)  # fmt: skip
    return train, val


def plan_steps(tr: Trainer, closing: float = CLOSING_FLOOR) -> None:
    """The step count and the schedule: ``--epochs``' (default 10); with a time budget a
    provisional one until the first steps are measured (:class:`~imgcls.engine.budget.Pacer`),
    at most ``--epochs`` when both are given, ``closing`` seconds kept for the closing work."""
    t = tr.cfg.train
    spe = tr.steps_per_epoch
    if t.time_budget:
        plan = BudgetPlan(
            budget=parse_duration(t.time_budget),
            steps_per_epoch=spe,
            val_images=len(tr.data.splits.val),
            batch_size=tr.train_batches.batch_size,
            final_passes=final_val_passes(tr),
            sizes=tr.sizes,
            closing=closing,
            max_steps=t.epochs * spe if t.epochs else None,
        )
        tr.budget = Pacer(plan, warmup_share=tr.cfg.optim.warmup)
        tr.pos.total_steps = (t.epochs or 10_000) * spe  # provisional: planned after a few steps
        tr.schedule.total = tr.pos.total_steps
        tr.schedule.warmup = provisional_warmup(tr.cfg.optim.warmup, spe)
    else:
        tr.pos.total_steps = (t.epochs or DEFAULT_EPOCHS) * spe
        tr.schedule.total = tr.pos.total_steps
        tr.schedule.warmup = int(tr.cfg.optim.warmup * tr.pos.total_steps)
