"""``fit``: the run, top to bottom. Set up the run folder (or load the checkpoint to resume),
read the data source, resolve every default (:mod:`imgcls.engine.plan`), build the trainer
(:mod:`imgcls.engine.trainer`), train epoch by epoch (:mod:`imgcls.engine.loop`), keeping the
best model and checkpoints (:mod:`imgcls.engine.state`), then decide the procedure prediction
uses (:mod:`imgcls.engine.finish`). It writes the run directory:

``config.yaml`` (resolved), ``metrics.jsonl`` (a line per epoch), ``splits.csv``,
``skipped.csv``, ``model/`` (the best model directory), ``checkpoint/`` (resume state).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.artifacts import write_history
from imgcls.config import RunConfig, check_config, dump_yaml, from_dict
from imgcls.console import info
from imgcls.data.dataset import TableHook, load_table, mixed_framing
from imgcls.data.table import LISTED_AGAIN, NO_CROP, NO_DETECTION, REVIEWED, count_left_out
from imgcls.data.transforms import describe_augment
from imgcls.engine.budget import Clock
from imgcls.engine.checkpoint import CheckpointWriter, load_checkpoint
from imgcls.engine.distributed import Dist, init_distributed, shutdown
from imgcls.engine.finish import finish, say_chance
from imgcls.engine.loop import Trainer, maybe_replan, price_validation, train_one_epoch, validate
from imgcls.engine.plan import DEFAULT_EPOCHS, resolve_model
from imgcls.engine.state import checkpoint_state, improved, restore, save_best
from imgcls.engine.trainer import build_trainer
from imgcls.errors import UserError
from imgcls.io import atomic_write_csv, atomic_write_text
from imgcls.ranks import hear_refusal, tell_refusal
from imgcls.runtime import resolve_device, set_deterministic, set_threads
from imgcls.tasks import monitor_metric

EpochCallback = Callable[[Path, list[dict[str, Any]]], None]


# ----------------------------------------------------------------------------- run directory
def prepare_run_dir(cfg: RunConfig, resume: bool) -> tuple[Path, dict[str, Any] | None]:
    """The run folder, and the checkpoint state when resuming (its config replaces ``cfg``).

    Under ``torchrun`` only rank 0 checks and creates a new run folder (:func:`new_run_dir`):
    another rank, looking while rank 0 probes it, would find it not empty and refuse (the others
    wait for rank 0 when they join the process group, which comes after this, and hear its
    verdict there: :mod:`imgcls.ranks`)."""
    from imgcls.io import launch_rank

    if not cfg.train.out:
        raise UserError("--out RUN_DIR is required")
    run = Path(cfg.train.out)
    if resume:
        state = load_checkpoint(run / "checkpoint")
        if state is None:
            raise UserError(f"--resume: {run} has no checkpoint to resume from")
        return run, state
    if launch_rank() == 0:
        try:
            new_run_dir(cfg, run)
        except Exception as e:  # a refusal, or a folder that cannot be read: the others stop too
            tell_refusal(_device_type(cfg), str(e))
            raise
    return run, None


def new_run_dir(cfg: RunConfig, run: Path) -> None:
    """Refuse an ``--out`` inside a class folder of the data, or one that holds files; create it."""
    for spec in (cfg.data.data, *cfg.data.more_data):
        if inside_class_folders(run, spec):
            raise UserError(f"--out {run} is inside the data folder {spec}: the run's files would become a "
                            "class of the next run on it; choose an --out outside it")  # fmt: skip
    if run.is_dir() and any(run.iterdir()):
        hint = " (add --resume to continue it)" if (run / "checkpoint" / "state.pt").exists() else ""
        raise UserError(f"{run} already exists and is not empty{hint}; choose another --out")
    from imgcls.io import check_writable

    check_writable(run, folder=True)
    run.mkdir(parents=True, exist_ok=True)


def _device_type(cfg: RunConfig) -> str:
    return "cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu"


def inside_class_folders(run: Path, data: str | None) -> bool:
    """``run`` lies inside a class-folder tree given as ``--data``."""
    from imgcls.data.sources import is_class_folders

    return bool(data) and is_class_folders(Path(str(data))) and run.resolve().is_relative_to(Path(str(data)).resolve())


# ---------------------------------------------------------------------------------- training
def end_epoch(tr: Trainer, epoch: int, stats: dict[str, float], on_epoch_end: EpochCallback | None) -> bool:
    """Validate, record, keep the best model, checkpoint; True when training should stop."""
    val = validate(tr)
    metrics: dict[str, Any] = {"epoch": epoch + 1, **stats, **val}
    metrics["seconds"] = stats["train_seconds"] + val.get("val_seconds", 0.0)
    metrics["images_per_second"] = stats["images"] / max(stats["train_seconds"], 1e-9)
    if tr.budget is not None:  # the plan this epoch ended under (its line says so when it changes)
        metrics["planned_epochs"] = planned_epochs(tr)
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
    tr.pos.epoch_loss, tr.pos.epoch_images, tr.pos.epoch_seconds, tr.pos.epoch_correct = 0.0, 0, 0.0, 0.0
    if tr.dist.main:
        write_history(tr.run_dir, tr.pos.history)
        said = tr.budget.announce(tr.pos.total_steps) if tr.budget is not None else None
        if said:  # the plan's epoch count changed in this epoch: why, before the line that counts them
            info(said)
        info(epoch_line(metrics, tr))
        if on_epoch_end is not None:
            on_epoch_end(tr.run_dir, tr.pos.history)
    if tr.save_checkpoint is not None:
        tr.save_checkpoint()
    if stop and tr.dist.main:
        info(f"early stopping: {key} has not improved for {tr.pos.bad_epochs} epochs")
    return stop


def planned_epochs(tr: Trainer) -> int:
    """The epochs the current plan trains (with a time budget the last may be shortened)."""
    return -(-tr.pos.total_steps // max(1, tr.steps_per_epoch))


def epoch_line(m: dict[str, Any], tr: Trainer) -> str:
    parts = [f"epoch {m['epoch']}/{planned_epochs(tr)}", f"train_loss {m['train_loss']:.4f}"]
    parts += [f"{k} {v:.4f}" for k, v in m.items() if k.startswith("val_") and k not in ("val_seconds", "val_nll")]
    parts += [f"lr {m['lr']:.2e}", f"{m['images_per_second']:.1f} img/s", f"{m['seconds']:.1f}s"]
    if "train_size" in m:  # progressive resizing: the size the epoch ended at
        parts.append(f"{m['train_size']}px")
    return "  ".join(parts)


def write_run_files(tr: Trainer) -> None:
    if not tr.dist.main:
        return
    dump_yaml(tr.cfg, tr.run_dir / "config.yaml")
    if tr.cfg.data.corrections:  # the run keeps the decisions it was trained with
        atomic_write_text(tr.run_dir / "corrections.csv", Path(tr.cfg.data.corrections).read_text(encoding="utf-8"))
    atomic_write_text(tr.run_dir / "splits.csv", tr.data.splits_csv)
    atomic_write_csv(tr.run_dir / "skipped.csv", ["path", "reason"], tr.data.skipped)


def run_epochs(tr: Trainer, on_epoch_end: EpochCallback | None) -> None:
    spe = tr.steps_per_epoch
    price_validation(tr)  # a time budget's: before the first plan
    while True:
        maybe_replan(tr, epoch_end=tr.pos.epoch > 0 and tr.pos.step == 0)  # a time budget: the end just measured
        if tr.pos.epoch * spe >= tr.pos.total_steps:  # (a resumed epoch trained to its end still validates)
            break
        stats = train_one_epoch(tr, tr.pos.epoch)
        found = tr.data.source.found_bad
        if found and tr.dist.main:  # cache='none': files found broken while streaming
            known = {p for p, _ in tr.data.skipped}
            tr.data.skipped += [
                (tr.data.table.paths[i], r) for i, r in sorted(found.items()) if tr.data.table.paths[i] not in known
            ]
            atomic_write_csv(tr.run_dir / "skipped.csv", ["path", "reason"], tr.data.skipped)
        ended = tr.clock()
        stop = end_epoch(tr, tr.pos.epoch, stats, on_epoch_end)
        if tr.budget is not None:
            tr.budget.record_epoch_end(tr.pos.history[-1].get("val_seconds", 0.0), tr.clock() - ended)
        if stop:
            break


def fit(
    cfg: RunConfig,
    *,
    resume: bool = False,
    started: float | None = None,
    on_epoch_end: EpochCallback | None = None,
    table_hook: TableHook | None = None,
    requested: dict[str, Any] | None = None,
    clock: Clock = time.monotonic,
) -> Path:
    """Train as ``cfg`` says; returns the run directory (its ``model/`` is the best model).

    ``requested``: the options the user gave (command line and ``--config`` file), kept in the
    checkpoint; with ``resume`` they are the options given now, applied to the saved
    configuration as :mod:`imgcls.engine.resume` allows. ``clock``: what a time budget and the
    run's timings are measured on, ``started`` being on it (tests simulate a machine with one)."""
    started = started if started is not None else clock()
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
    dist = init_distributed(_device_type(cfg))
    try:
        if not resume:
            hear_refusal()  # rank 0's verdict on the new run folder
        return _fit(cfg, run, state, dist, (started, clock), on_epoch_end, table_hook, requested or {}, changes)
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
    timing: tuple[float, Clock],
    on_epoch_end: EpochCallback | None,
    table_hook: TableHook | None,
    requested: dict[str, Any],
    changes: list[str],
) -> Path:
    table = load_table(cfg, table_hook)
    if state is not None:  # the split the run started with, never drawn again
        from imgcls.engine.resume import keep_split

        table, notes = keep_split(cfg, run, table, state)
        changes += notes
    tr, _ = build_trainer(cfg, resolve_model(cfg, table), run, dist, table, timing[0], resuming=state is not None,
                          clock=timing[1])  # fmt: skip
    tr.requested = requested
    if not begin(tr, state, changes):
        return run
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
        say_chance(tr, final)
    dist.barrier()
    return run


def begin(tr: Trainer, state: dict[str, Any] | None, changes: list[str]) -> bool:
    """Restore a resumed run (saying where it stands) or describe a new one; False when the
    resumed run is already complete."""
    if state is None:
        if tr.dist.main:
            describe_start(tr)
        return True
    restore(tr, state)
    replan_on_resume(tr, changes)
    if tr.pos.finished:
        if tr.dist.main:
            info(f"{tr.run_dir} is complete ({describe_best(tr)}): nothing to train; add --epochs N to train more")
        return False
    if tr.dist.main:
        said = f" ({'; '.join(changes)})" if changes else ""
        info(f"resuming {tr.run_dir} at epoch {tr.pos.epoch + 1}, step {tr.pos.step}{said}")
    return True


def absolute_paths(cfg: RunConfig) -> None:
    """The run records where its data is as absolute paths, so its config.yaml, its model's
    provenance (``imgcls evaluate`` without --data) and --resume work from any folder."""
    import os

    d = cfg.data
    for name in ("data", "val_data", "image_root", "detections", "cache_dir", "corrections"):
        value = getattr(d, name)
        if value:
            setattr(d, name, os.path.abspath(os.path.expanduser(value)))
    d.more_data = [os.path.abspath(os.path.expanduser(s)) for s in d.more_data]
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
    """'epoch 7 of 8, val_top1 0.9815, val_nll 0.0608 (with test-time flip, temperature 0.445;
    val_top1 0.9779 without the flip, as on epoch 7's line)': the model directory's epoch and its
    validation metrics as predict and evaluate compute them, naming the epoch line's own figure
    where the flip makes them differ."""
    best = tr.pos.best
    n = -(-tr.pos.total_steps // max(1, tr.steps_per_epoch))
    key = str(best.get("metric"))
    value = (final or {}).get(key, best.get("value"))
    shown = f", {key} {value:.4f}" if isinstance(value, (int, float)) else ""
    if final and isinstance(final.get("val_nll"), float):
        shown += f", val_nll {final['val_nll']:.4f}"
    how = [w for w, on in (("with test-time flip", tr.tta == "flip"),
                           (f"temperature {tr.task.temperature:.3f}", tr.task.temperature != 1.0)) if on]  # fmt: skip
    plain = best.get("value")  # the epoch line's figure: validated without the flip
    if tr.tta == "flip" and isinstance(plain, (int, float)) and isinstance(value, (int, float)) and plain != value:
        how[-1] += f"; {key} {plain:.4f} without the flip, as on epoch {best.get('epoch')}'s line"
    return f"epoch {best.get('epoch')} of {n}{shown}" + (f" ({', '.join(how)})" if how else "")


#: a class with fewer training images than this is too few to learn (the start line warns)
FEW_TRAINING_IMAGES = 5


def thin_classes(trained: dict[str, int], validated: dict[str, int], *, validating: bool) -> list[str]:
    """The start line's warnings about classes a run can hardly learn or cannot measure: fewer
    than :data:`FEW_TRAINING_IMAGES` training images, and (where the run validates) training
    images but no validation image, so top-1, the best epoch and the temperature never see it. A
    class a review creates starts with one image, and the class list on the data line may cut it
    off; a class only in validation has its own warning."""

    def named(classes: list[str], how: Callable[[str], str]) -> str:
        return ", ".join(f"{k} ({how(k)})" for k in classes[:5]) + (" ..." if len(classes) > 5 else "")

    few = [k for k, v in trained.items() if 0 < v < FEW_TRAINING_IMAGES]
    unmeasured = [k for k, v in trained.items() if v and validating and not validated.get(k)]
    lines = []
    if few:
        lines.append(f"warning: fewer than {FEW_TRAINING_IMAGES} training images of class "
                     f"{named(few, lambda k: str(trained[k]))}: too few for the network to learn it "
                     "(add images of it, or merge it into another class)")  # fmt: skip
    if unmeasured:
        lines.append(f"warning: no validation image of class {named(unmeasured, lambda k: f'{trained[k]} in training')}"
                     ": the validation figures (top-1, the best epoch, the temperature) leave it out")  # fmt: skip
    return lines


def describe_start(tr: Trainer) -> None:
    d, t = tr.data, tr.cfg.train
    used = d.table.subset(np.concatenate([d.splits.train, d.splits.val]))
    counts = used.class_counts()
    classes = ", ".join(f"{k} ({v})" for k, v in list(counts.items())[:8]) + (" ..." if len(counts) > 8 else "")
    info(f"data: {len(d.splits.train)} train / {len(d.splits.val)} val images, {len(counts)} classes: {classes}")
    if d.table.origin is not None:  # several specs: how many rows each gave
        rows = np.concatenate([d.splits.train, d.splits.val])
        info("from " + ", ".join(f"{spec}: {n}" for spec, n in d.table.origin_counts(rows)))
    trained = d.table.subset(d.splits.train).class_counts()
    unseen = [k for k, v in counts.items() if v and not trained.get(k)]
    if unseen:
        info(f"warning: no training image of class {', '.join(unseen[:5])}{' ...' if len(unseen) > 5 else ''} "
             "(only in validation): the network cannot learn it")  # fmt: skip
    validated = d.table.subset(d.splits.val).class_counts()
    for line in thin_classes(trained, validated, validating=len(d.splits.val) > 0):
        info(line)
    mixed = mixed_framing(d.table, np.concatenate([d.splits.train, d.splits.val]))
    if mixed:
        info(f"warning: whole frames and detection crops in one class: {mixed}: the network can learn the framing "
             "instead of what the image shows")  # fmt: skip
    if tr.choice:
        info(tr.choice)
    if d.skipped:
        reviewed, blank, again, uncropped = (sum(1 for _, why in d.skipped if why.startswith(start))
                                             for start in (REVIEWED, NO_DETECTION, LISTED_AGAIN, NO_CROP))  # fmt: skip
        parts = ((len(d.skipped) - count_left_out(d.skipped), "unusable"), (blank, "without a detection (blank)"),
                 (again, "listed a second time"), (reviewed, REVIEWED),
                 (uncropped, f"observation{'s' * (uncropped != 1)} without a box (the image's crops are used)"),
                 )  # fmt: skip
        from imgcls.data.image import not_images_note
        from imgcls.data.table import not_images

        said = [f"{n} {w}" for n, w in parts if n] + [not_images_note(not_images(d.skipped))]
        info(f"skipped {', '.join(w for w in said if w)} (listed in {tr.run_dir / 'skipped.csv'})")
    pre, augment = tr.preprocess, describe_augment(tr.cfg.data.augment)
    n = tr.task.num_outputs
    info(
        f"model: {tr.cfg.model.arch} ({tr.task.name}, {n} output{'s' if n != 1 else ''}), "
        f"{tr.sizes.describe() if tr.sizes else f'{pre.image_size}px'}, augment {augment}; "
        f"{tr.runtime.describe()}; "
        f"batch {t.batch_size}, {tr.cfg.optim.optimizer} lr {tr.cfg.optim.lr:.2e}"
    )
