"""The loop: ``train_one_epoch`` and ``validate`` over a :class:`Trainer`'s state (as in
ConvNeXt's ``engine.py``); :mod:`imgcls.engine.fit` sets a Trainer up and runs the epochs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgcls.config import PreprocessConfig, RunConfig
from imgcls.console import Progress, info
from imgcls.data.dataset import TrainingData
from imgcls.data.loaders import EvalBatches, TrainBatches, batch_generator
from imgcls.engine.budget import Clock, Pacer
from imgcls.engine.distributed import Dist, wrap_ddp
from imgcls.engine.optim import Schedule
from imgcls.engine.resolution import SizeSchedule
from imgcls.runtime import Runtime
from imgcls.tasks import Task, quick_metrics


@dataclass
class Position:
    """Where the run is: the next batch to train is ``step`` of ``epoch`` (0-based)."""

    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    bad_epochs: int = 0
    elapsed: float = 0.0  # seconds of training spent by earlier sessions of this run
    epoch_loss: float = 0.0  # running sums of the current epoch (for a mid-epoch resume)
    epoch_images: int = 0
    epoch_correct: float = 0.0  # training images the model's decision got right (multi-class, binary)
    epoch_seconds: float = 0.0
    lr: float = 0.0  # the last rate applied
    finished: bool = False  # training and the final calibration are done

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Trainer:
    cfg: RunConfig
    run_dir: Path
    model: nn.Module  # as trained (maybe DDP-wrapped)
    raw: nn.Module  # the bare model (saved, evaluated)
    task: Task
    runtime: Runtime
    dist: Dist
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    data: TrainingData
    train_batches: TrainBatches
    val_batches: EvalBatches | None
    classifier: str
    preprocess: PreprocessConfig
    pos: Position = field(default_factory=Position)
    ema: Any = None
    scaler: Any = None
    mix: Callable[..., Any] | None = None
    budget: Pacer | None = None  # --time-budget: its prices and re-plans
    sizes: SizeSchedule | None = None  # progressive resizing (None: every step at full size)
    started: float = field(default_factory=time.monotonic)  # on ``clock``
    save_checkpoint: Callable[[], None] | None = None
    ddp_frozen: bool | None = None  # the stage the DDP wrapper was built for
    requested: dict[str, Any] = field(default_factory=dict)  # the options the user gave (for --resume)
    tta: str = "none"  # the test-time augmentation the saved model uses (auto: decided after training)
    choice: str = ""  # what --time-budget chose and why (said when training starts)
    clock: Clock = time.monotonic  # what the run's times are measured on (tests simulate one)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)

    @property
    def steps_done(self) -> int:
        return self.pos.epoch * self.steps_per_epoch + self.pos.step

    @property
    def elapsed(self) -> float:
        """Seconds the run has taken: earlier sessions of a resumed run, then this command's."""
        return self.pos.elapsed + (self.clock() - self.started)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.raw


def frozen_backbone(tr: Trainer, epoch: int) -> bool:
    m = tr.cfg.model
    return m.freeze == "backbone" or epoch < (m.head_epochs or 0)


def set_train_mode(tr: Trainer, epoch: int) -> None:
    """Training mode; with a frozen backbone its parameters get no gradient and its BatchNorm
    layers keep their (pretrained) running statistics."""
    frozen = frozen_backbone(tr, epoch)
    head = tr.classifier + "."
    tr.raw.train()
    for name, p in tr.raw.named_parameters():
        p.requires_grad_(not frozen or name.startswith(head))
    if tr.dist.enabled and tr.ddp_frozen != frozen:
        tr.model = wrap_ddp(tr.raw, tr.dist, tr.runtime.device.type)
        tr.ddp_frozen = frozen
    if frozen:
        for name, mod in tr.raw.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not name.startswith(tr.classifier):
                mod.eval()


def _optimizer_step(tr: Trainer, global_step: int) -> None:
    o = tr.cfg.optim
    if tr.scaler is not None:
        tr.scaler.unscale_(tr.optimizer)
    if o.clip_grad:
        params = [p for p in tr.raw.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, o.clip_grad)
    if tr.scaler is not None:
        tr.scaler.step(tr.optimizer)
        tr.scaler.update()
    else:
        tr.optimizer.step()
    tr.optimizer.zero_grad(set_to_none=True)
    if tr.ema is not None:
        tr.ema.update(tr.raw, step=global_step)


def maybe_replan(tr: Trainer, *, epoch_end: bool = False) -> None:
    """With a time budget, when it is due: plan the rest of the run from the prices measured so
    far, re-fitting the schedule (see :mod:`imgcls.engine.budget`). Every process adopts the
    first one's plan. Once the planned steps are done the schedule has ended: nothing is added."""
    pacer = tr.budget
    done = tr.steps_done
    if pacer is None or done >= tr.pos.total_steps or not pacer.due(done, epoch_end=epoch_end):
        return
    total, next_at = tr.dist.broadcast(pacer.propose(tr.elapsed, done, tr.pos.epoch, tr.pos.total_steps))
    said = pacer.adopt(total, next_at, done, tr.schedule)
    tr.pos.total_steps = total
    if said and tr.dist.main:
        info(said)


def price_validation(tr: Trainer) -> None:
    """A budgeted run's validation pass priced before it trains: a batch of it timed (the
    second of two forward passes: the first of a shape also picks its kernels), times the
    batches a pass has. The first epoch end measures the whole pass; until then a plan that
    guessed it (a third of a step per image) could end at an epoch end with its cosine cut when
    the pass proved dearer."""
    batch = first_validation_batch(tr) if tr.budget is not None else None
    if tr.budget is None or batch is None:  # (torchrun: a process may have no validation image)
        return
    x = tr.runtime.inputs(batch)
    model = tr.eval_model
    was = model.training
    model.eval()
    took = 0.0
    with torch.inference_mode():
        for _ in range(2):
            t0 = tr.clock()
            with tr.runtime.autocast():
                model(x)
            took = tr.clock() - t0
    model.train(was)
    share = len(tr.data.splits.val) / max(1, tr.dist.world) / max(1, int(x.shape[0]))
    tr.budget.priced_validation(took * share)


def first_validation_batch(tr: Trainer) -> torch.Tensor | None:
    """The images of this process's first validation batch (None: it has none)."""
    batches = iter(tr.val_batches or [])
    first = next(batches, None)
    close = getattr(batches, "close", None)
    if callable(close):  # a generator: its prefetching thread stops
        close()
    return None if first is None else first[0]


def _hits(task: Task, logits: torch.Tensor, y: torch.Tensor) -> float:
    """The batch's images whose decision matches the label, as trained (augmented; a mixed
    label counts as its larger share): the training error of He et al.'s curves, which the loss
    alone (label smoothing, mixup) does not show. Multi-label: 0 (no single decision)."""
    if task.name == "multilabel":
        return 0.0
    with torch.no_grad():
        if task.name == "binary":
            right = (logits.detach().reshape(-1) > 0) == (y.reshape(-1) > 0.5)
        else:
            right = logits.detach().argmax(1) == (y.argmax(1) if y.ndim > 1 else y)
    return float(right.sum())


def _count_step(tr: Trainer, x: torch.Tensor, loss: float, took: float, hits: float = 0.0) -> int:
    """Add a finished step to the epoch's sums and the step times; the images it trained (all
    ranks). The budget plans in full-size steps, so a smaller step's time (progressive
    resizing) is scaled up to one."""
    if tr.budget is not None:
        share = tr.sizes.cost(int(x.shape[-1])) if tr.sizes is not None else 1.0
        tr.budget.record_step(took / share)
    n = int(x.shape[0]) * tr.dist.world
    tr.pos.epoch_loss += loss * n
    tr.pos.epoch_images += n
    tr.pos.epoch_correct += hits * tr.dist.world
    tr.pos.epoch_seconds += took
    tr.pos.step += 1
    return n


def train_one_epoch(tr: Trainer, epoch: int, *, show: bool = True) -> dict[str, float]:
    """Train until the epoch (or the planned total) ends; returns loss, lr, images, seconds."""
    cfg = tr.cfg
    spe = tr.steps_per_epoch
    set_train_mode(tr, epoch)
    accumulate = max(1, cfg.optim.accumulate)
    last_ckpt = tr.clock()
    lr = tr.pos.lr
    steps_this_epoch = min(spe, tr.pos.total_steps - epoch * spe)
    total_images = steps_this_epoch * tr.train_batches.batch_size * tr.dist.world
    with Progress(total_images, f"epoch {epoch + 1}", enabled=show and tr.dist.main) as bar:
        bar.done = tr.pos.epoch_images
        t_last = tr.clock()
        for x, y, _rows in tr.train_batches.epoch(epoch, start_step=tr.pos.step):
            global_step = epoch * spe + tr.pos.step
            if global_step >= tr.pos.total_steps:
                break
            # dropout / drop-path draw from the global RNG: seed it per step, so a resumed run
            # draws what the uninterrupted run drew
            torch.manual_seed(int(batch_generator(cfg.train.seed, epoch, tr.pos.step).initial_seed()) + 1)
            x, y = tr.runtime.inputs(x), y.to(tr.runtime.device)
            if tr.mix is not None:
                x, y = tr.mix(x, y)
            lr = tr.pos.lr = tr.schedule.apply(tr.optimizer, global_step)
            with tr.runtime.autocast():
                logits = tr.model(x)
            loss = tr.task.loss(logits, y) / accumulate
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {float(loss)} at epoch {epoch + 1}, step {tr.pos.step + 1}: "
                    "lower the learning rate (--lr) or use --clip-grad"
                )
            (tr.scaler.scale(loss) if tr.scaler is not None else loss).backward()
            if (tr.pos.step + 1) % accumulate == 0 or tr.pos.step + 1 == spe:
                _optimizer_step(tr, global_step)
            now = tr.clock()
            n = _count_step(tr, x, float(loss.detach()) * accumulate, now - t_last, _hits(tr.task, logits, y))
            t_last = now
            bar.update(n, loss=tr.pos.epoch_loss / max(1, tr.pos.epoch_images), lr=lr)
            maybe_replan(tr)
            minutes = cfg.train.checkpoint_minutes
            at_boundary = tr.pos.step % accumulate == 0  # no half-accumulated gradient is lost
            due = minutes and tr.clock() - last_ckpt > 60 * minutes
            if tr.save_checkpoint is not None and due and at_boundary:
                tr.save_checkpoint()
                last_ckpt = tr.clock()
    if tr.budget is not None and tr.budget.next_at < 0:  # an epoch shorter than the steps a first plan waits for
        maybe_replan(tr, epoch_end=True)  # (its line counts the plan's epochs, not the provisional ones)
    extra: dict[str, float] = {}
    if tr.sizes is not None:
        extra["train_size"] = tr.sizes.size(tr.steps_done - 1, tr.pos.total_steps)
    if tr.task.name != "multilabel":  # the share of the epoch's training images decided right, as trained
        extra["train_top1"] = tr.pos.epoch_correct / max(1, tr.pos.epoch_images)
    return {
        **extra,
        "lr": lr,
        "train_loss": tr.pos.epoch_loss / max(1, tr.pos.epoch_images),
        "images": tr.pos.epoch_images,
        "train_seconds": tr.pos.epoch_seconds,
    }


def validation_logits(tr: Trainer, *, mirror: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """float32 logits of the validation images over all ranks, those of their mirror images too
    with ``mirror`` (else None), and their rows."""
    plain: list[np.ndarray] = []
    mirrored: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    model = tr.eval_model
    was = model.training
    model.eval()
    with torch.inference_mode():
        for x, _y, r in tr.val_batches or []:
            x = tr.runtime.inputs(x)
            with tr.runtime.autocast():
                plain.append(model(x).float().cpu().numpy())
                if mirror:
                    mirrored.append(model(x.flip(-1)).float().cpu().numpy())
            rows.append(r)
    model.train(was)
    k = tr.task.num_outputs

    def joined(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, k), np.float32)

    mine = (joined(plain), joined(mirrored), np.concatenate(rows) if rows else np.zeros(0, np.int64))
    parts = tr.dist.all_gather(mine)
    every = [np.concatenate([p[i] for p in parts]) for i in range(3)]
    return every[0], (every[1] if mirror else None), every[2]


def val_metrics(task: Task, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """The ``val_`` metrics of validation probabilities; ``val_loss`` is the mean NLL."""
    out = {f"val_{k}": v for k, v in quick_metrics(task, probs, targets).items()}
    if "val_nll" in out:
        out["val_loss"] = out["val_nll"]
    return out


def validate(tr: Trainer) -> dict[str, float]:
    """Validation metrics (``val_`` keys) over all ranks."""
    if tr.val_batches is None:
        return {}
    t0 = tr.clock()
    logits, _, rows = validation_logits(tr)
    probs = tr.task.probabilities(torch.from_numpy(logits)).numpy()
    out = val_metrics(tr.task, probs, tr.data.table.targets[rows])
    out["val_seconds"] = tr.clock() - t0
    return out
