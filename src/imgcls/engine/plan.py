"""Resolve: the user's configuration and the data table to a plan with every default decided.

Nothing here builds, trains or changes anything: each function reads the configuration (and
the data: the images' size, the class list), returns what it decided, and is tested without
training. The decisions come in the order they depend on each other:

1. :func:`resolve_model` — the architecture (``auto``: ``smallnet`` for images of 64 px or
   less, else ``resnet18``; a model directory given as ``--pretrained`` brings its own), its
   options, the weights to start from (``auto``: the published ones where there are), the task
   and the size of the classifier;
2. :func:`resolve` — given the built model's own preprocessing and the number of training
   images: the input size and preprocessing, augmentation, test-time augmentation, batch size,
   learning rate, weight decay, the fine-tuning schedule (head-only epochs, backbone rate), the
   training sizes (``--progressive-resize``; with ``auto`` a time budget decides it:
   :mod:`imgcls.engine.candidates`). The batch size considers the device (a GPU's free memory
   and the model's activation memory) and the learning rate is scaled to the batch.

:meth:`Plan.config` writes the decisions into a copy of the configuration (``config.yaml``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.config import PreprocessConfig, RunConfig
from imgcls.data.table import DataTable
from imgcls.engine.resolution import SizeSchedule, parse_progressive
from imgcls.errors import UserError
from imgcls.runtime import DeviceFacts

DEFAULT_EPOCHS = 10
SMALL_IMAGE = 64  # images at most this size get the small-image architecture and augmentation
SMALL_ARCH = "smallnet"
MIN_STEPS_PER_EPOCH = 32
NO_WEIGHTS = (None, "", "none", "None", "false")
#: the default batch on a GPU, for large images (False) and small ones (True)
GPU_BATCH = {False: 256, True: 512}
#: the share of a GPU's free memory (before the model is on it) a training batch may take
GPU_BATCH_MEMORY_SHARE = 0.5
#: a training step's memory per image over the model's float32 activation memory per image: under
#: bf16 autocast the activations kept for the backward pass take about half of it, the rest covers
#: the gradients flowing back and the convolutions' workspaces
ACTIVATION_FACTOR = 1.0


@dataclass(frozen=True)
class ModelPlan:
    """What to build: decided before any weights are read."""

    arch: str
    norm: str | None
    attn: str | None
    pretrained: str | None  # 'default', 'timm', 'torchvision', a path, or None (from scratch)
    task: str  # multiclass | binary | multilabel
    num_outputs: int
    image_side: int | None  # the images' larger side when they are small, else None


@dataclass(frozen=True)
class Plan:
    """Every default of a run, decided."""

    model: ModelPlan
    preprocess: PreprocessConfig
    augment: str
    tta: str  # flip | none | auto (decided after training on the validation split)
    batch_size: int
    lr: float
    weight_decay: float
    backbone_lr_mult: float
    head_epochs: int
    sizes: SizeSchedule  # the training input size of each step (progressive resizing, or none)

    def config(self, cfg: RunConfig) -> RunConfig:
        """A copy of ``cfg`` with every decision written in (what ``config.yaml`` records)."""
        out = copy.deepcopy(cfg)
        m, d, o, t, pre = out.model, out.data, out.optim, out.train, self.preprocess
        m.arch, m.norm, m.attn = self.model.arch, self.model.norm, self.model.attn
        m.pretrained, m.head_epochs = self.model.pretrained or "none", self.head_epochs
        d.image_size, d.resize_mode, d.crop_pct, d.interpolation = (
            pre.image_size, pre.resize_mode, pre.crop_pct, pre.interpolation,
        )  # fmt: skip
        d.augment, t.tta, t.batch_size = self.augment, self.tta, self.batch_size
        d.progressive_resize = str(self.sizes.low) if self.sizes.enabled else "off"
        o.lr, o.weight_decay, o.backbone_lr_mult = self.lr, self.weight_decay, self.backbone_lr_mult
        return out


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


def pretrained_model_dir_arch(pretrained: str | None) -> tuple[str, str | None, str | None] | None:
    """(arch, norm, attn) of a model directory given as ``--pretrained``, else None."""
    if pretrained in NO_WEIGHTS or pretrained in ("auto", "timm", "torchvision", "default"):
        return None
    config = Path(str(pretrained)) / "config.json"
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


def resolve_pretrained(pretrained: str | None, arch: str) -> str | None:
    """'auto' means the published weights where the architecture has them (the default path:
    transfer learning), else training from scratch."""
    from imgcls.models.registry import get_entry

    if pretrained in NO_WEIGHTS:
        return None
    if pretrained == "auto":
        entry = get_entry(arch)
        return "default" if (entry.timm_weights or entry.torchvision_weights) else None
    return pretrained


def resolve_model(cfg: RunConfig, table: DataTable) -> ModelPlan:
    """The architecture, its options, the starting weights and the task (see the module
    docstring). A data problem (a single class...) is said here, before any weights are read."""
    from imgcls.tasks import Task, infer_task

    m = cfg.model
    side = image_side(table)
    arch, norm, attn = m.arch, m.norm, m.attn
    if arch == "auto":
        saved = pretrained_model_dir_arch(m.pretrained)
        if saved is not None:  # fine-tuning a saved model: its architecture and options, by default
            arch, norm, attn = saved[0], norm or saved[1], attn or saved[2]
        else:
            arch = SMALL_ARCH if side is not None and side <= SMALL_IMAGE else "resnet18"
    task = infer_task(cfg.train.task, table.num_classes, table.multilabel)
    Task(task, list(table.class_names))  # validates the classes for the task
    outputs = 1 if task == "binary" else table.num_classes
    return ModelPlan(arch, norm, attn, resolve_pretrained(m.pretrained, arch), task, outputs, side)


def resolve_preprocess(cfg: RunConfig, model_pre: PreprocessConfig, side: int | None) -> PreprocessConfig:
    """The model's own preprocessing, at the images' size where they are small, with the
    user's overrides (input size, crop share, interpolation, resize mode)."""
    pre = model_pre
    d = cfg.data
    if d.image_size:
        pre = pre.with_size(d.image_size)
    elif side is not None and side < pre.image_size and pre.image_size > 64:
        pre = pre.with_size(max(32, side))  # no 224-px upsampling of 28-px images by default
    elif side is not None and pre.image_size < side <= SMALL_IMAGE:
        pre = pre.with_size(side)  # nor a downsampling: 32-px CIFAR-like images train at 32, not 28
    if side is not None and side <= SMALL_IMAGE:
        pre = dataclasses.replace(pre, crop_pct=1.0)  # small images: keep every pixel
    # the values were checked by check_config
    if d.crop_pct:
        pre = dataclasses.replace(pre, crop_pct=d.crop_pct)
    if d.interpolation:
        pre = dataclasses.replace(pre, interpolation=d.interpolation)
    if d.resize_mode:
        pre = dataclasses.replace(pre, resize_mode=d.resize_mode)
    return pre


def default_batch_size(
    image_size: int, train_images: int, device: DeviceFacts | None = None, activation_kb: float = 0.0
) -> int:
    """On a CPU 256 for small images, 64 otherwise; on a GPU (``device``) 512 and 256, as many
    as fit in :data:`GPU_BATCH_MEMORY_SHARE` of its free memory at ``activation_kb`` (the model's
    activation memory per image, float32 KB, as :mod:`imgcls.models.summary` counts it; unknown:
    the CPU's size), halved until they do: a GPU computes a larger batch in about the time of a
    small one. Smaller (a power of two, at least 16) when the training set would give fewer than
    32 steps an epoch, since a thousand images in four steps of 256 learn little in a few epochs."""
    small = image_size <= SMALL_IMAGE
    base = 256 if small else 64
    if device is not None and device.type == "cuda" and activation_kb > 0:
        base = GPU_BATCH[small]
        per_image = activation_kb * 1024 * ACTIVATION_FACTOR
        while base > 16 and base * per_image > GPU_BATCH_MEMORY_SHARE * device.free_bytes:
            base //= 2
    fit = 16
    while fit * 2 <= min(base, train_images // MIN_STEPS_PER_EPOCH):
        fit *= 2
    return min(base, fit)


def resolve_augment(augment: str, pre: PreprocessConfig) -> str:
    if augment == "auto":
        return "small" if pre.image_size <= SMALL_IMAGE else "standard"
    return augment


def resolve_tta(tta: str, pre: PreprocessConfig, augment: str) -> str:
    """'auto' stays 'auto' (flip test-time augmentation, kept after training only where the
    validation split shows it helps: :mod:`imgcls.engine.finish`) for small images (the model is
    cheap, the gain largest) trained with flips (so a mirror image is the same class by the
    user's own choice); elsewhere it is 'none'."""
    from imgcls.data.transforms import PRESETS

    if tta == "auto":
        return "auto" if pre.image_size <= SMALL_IMAGE and PRESETS[augment].hflip > 0 else "none"
    return tta


def resolve(
    cfg: RunConfig,
    model: ModelPlan,
    model_pre: PreprocessConfig,
    *,
    train_images: int,
    world: int = 1,
    device: DeviceFacts | None = None,
    activation_kb: float = 0.0,
) -> Plan:
    """Every remaining default (see the module docstring), from the model's own preprocessing
    (its ``pretrained_cfg``, after its weights are loaded), the training images per process and
    the device that trains (its memory, the model's ``activation_kb`` per image: the batch)."""
    from imgcls.engine.optim import DEFAULT_WD, default_lr

    t, o = cfg.train, cfg.optim
    pre = resolve_preprocess(cfg, model_pre, model.image_side)
    augment = resolve_augment(cfg.data.augment, pre)
    batch = t.batch_size or default_batch_size(pre.image_size, train_images // world, device, activation_kb)
    fine_tuning = model.pretrained is not None
    head_epochs = cfg.model.head_epochs
    if head_epochs is None:
        head_epochs = 1 if fine_tuning and (t.epochs or DEFAULT_EPOCHS) >= 4 else 0
    return Plan(
        model=model,
        preprocess=pre,
        augment=augment,
        tta=resolve_tta(t.tta, pre, augment),
        batch_size=batch,
        lr=o.lr or default_lr(o.optimizer, batch * world * max(1, o.accumulate)),
        weight_decay=DEFAULT_WD.get(o.optimizer, 0.0) if o.weight_decay is None else o.weight_decay,
        backbone_lr_mult=(0.1 if fine_tuning else 1.0) if o.backbone_lr_mult is None else o.backbone_lr_mult,
        head_epochs=head_epochs,
        sizes=parse_progressive(cfg.data.progressive_resize, pre.image_size)
        or SizeSchedule(pre.image_size, pre.image_size),  # auto without a budget: off
    )
