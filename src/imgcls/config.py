"""Typed configuration: dataclasses the command line fills, saved with every run (YAML).

The preprocessing config travels with the weights (timm's ``pretrained_cfg`` keys), so train,
evaluate, predict, export and serve all build their transforms from the model directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from imgcls.errors import UserError

T = TypeVar("T")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: the augmentation presets' names (their settings: imgcls.data.transforms.PRESETS)
AUGMENT_PRESETS = ("none", "flip", "light", "standard", "strong", "small")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '10m', '1h30m', '2h', '600' (seconds) -> seconds."""
    import re

    t = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", t)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != t.replace(" ", ""):
        raise UserError(f"cannot read the duration {text!r} (examples: 90s, 10m, 1h30m)")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UserError(f"the time budget must be positive, not {text!r}")
    return seconds


@dataclass
class PreprocessConfig:
    """How pixels become a model input, in timm's ``pretrained_cfg`` vocabulary.

    Evaluation transform: resize the shorter side to ``size / crop_pct``, center-crop ``size``,
    scale to [0, 1], subtract ``mean`` and divide by ``std`` per channel. ``resize_mode`` 'pad'
    letterboxes the whole frame into the square instead of cropping (wide camera-trap frames).
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    resize_mode: str = "crop"

    @property
    def image_size(self) -> int:
        return int(self.input_size[-1])

    def with_size(self, size: int | None) -> PreprocessConfig:
        if not size:
            return self
        return dataclasses.replace(self, input_size=(self.input_size[0], size, size))

    def to_pretrained_cfg(self) -> dict[str, Any]:
        """timm's keys (``resize_mode`` is imgcls's own and travels beside them)."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }

    @classmethod
    def from_pretrained_cfg(cls, cfg: dict[str, Any]) -> PreprocessConfig:
        default = cls()
        return cls(
            input_size=tuple(cfg.get("input_size", default.input_size)),
            mean=tuple(cfg.get("mean", default.mean)),
            std=tuple(cfg.get("std", default.std)),
            interpolation=str(cfg.get("interpolation") or default.interpolation),
            crop_pct=float(cfg.get("crop_pct") or default.crop_pct),
            crop_mode=str(cfg.get("crop_mode") or default.crop_mode),
            resize_mode=str(cfg.get("resize_mode") or default.resize_mode),
        )


@dataclass
class DataConfig:
    """Where the images are and how they become batches."""

    data: str = ""
    val_data: str | None = None
    image_root: str | None = None
    val_split: float = 0.2
    max_val: int | None = 5000  # at most this many validation images are carved out
    split_by: str | None = "auto"  # auto: location, else sequence, else image (crops), else none
    image_size: int | None = None  # default: the model's own input size
    resize_mode: str | None = None  # crop | pad (letterbox); default: crop
    crop_pct: float | None = None  # center-crop share of the resized image (default: the model's)
    interpolation: str | None = None  # bilinear | bicubic (default: the model's)
    augment: str = "auto"  # none | flip | light | standard | strong | small | auto
    mixup: float = 0.0  # Beta(alpha, alpha) mixing of image pairs; 0 = off
    cutmix: float = 0.0
    cache: str = "disk"  # disk | memory | none
    cache_dir: str | None = None
    cache_max_gb: float = 50.0  # the disk cache's size: least recently used entries go beyond it
    workers: int | None = None  # decoding threads / processes; default: the cores
    max_skipped: float = 0.5  # stop when a larger share of the files is unusable
    max_pixels: int = 100_000_000
    detections: str | None = None  # MegaDetector results JSON: train on the detection crops
    det_threshold: float = 0.2  # detections at or above this confidence are crops
    det_categories: str = "animal"  # comma-separated detection categories to crop
    crop_margin: float = 0.1  # share of the box's longer side added around a crop


@dataclass
class ModelConfig:
    """Which network to build: a registry name plus the family's options."""

    arch: str = "auto"  # auto: resnet18, or a small-image net for images of 64 px or less
    pretrained: str | None = "auto"  # auto | none | timm | torchvision | PATH
    norm: str | None = None
    attn: str | None = None
    drop_rate: float = 0.0
    freeze: str = "none"  # none | backbone (train the classifier only)
    head_epochs: int | None = None  # staged fine-tuning: epochs with the backbone frozen first


@dataclass
class OptimConfig:
    """The optimiser and its schedule."""

    optimizer: str = "adamw"  # adamw | sgd
    lr: float | None = None  # default: 1e-3 per 64 images, sqrt-scaled (adamw); 0.1 per 256 (sgd)
    weight_decay: float | None = None  # default: 0.05 (adamw) or 5e-4 (sgd)
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"  # cosine | onecycle | constant
    warmup: float = 0.05  # share of all steps spent warming up
    backbone_lr_mult: float | None = None  # default: 0.1 with pretrained weights, else 1
    clip_grad: float | None = None  # max gradient norm
    accumulate: int = 1  # batches per optimiser step
    label_smoothing: float = 0.1
    ema: float = 0.0  # decay of the weights' moving average (e.g. 0.999); 0 = off


TUNED_THRESHOLDS = ("f1", "balanced")  # --binary-threshold values tuned on the validation set


@dataclass
class TrainConfig:
    """The run: task, length, precision, device and where the results go."""

    out: str = ""
    task: str = "auto"  # auto | multiclass | binary | multilabel
    positive: str | None = None  # binary: the positive class (default: the second name)
    binary_threshold: str = "0.5"  # binary decision: a probability, or f1 / balanced (tuned on validation)
    epochs: int | None = None  # default 10 (or as many as --time-budget allows)
    time_budget: str | None = None  # e.g. 10m: plan the schedule to end on time
    batch_size: int | None = None  # default 64, or 256 for images of 64 px or less; smaller for small datasets
    seed: int = 0
    deterministic: bool = False
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    device: str = "auto"  # auto | cpu | cuda
    channels_last: bool | None = None  # default: on for conv nets
    compile: bool = False
    threads: int | None = None
    balance: str = "none"  # none | weights | sampler
    early_stopping: int = 0  # patience in epochs; 0 = off
    monitor: str = "auto"  # val_top1 | val_loss | val_mAP | ... ; auto by task
    checkpoint_minutes: float = 10.0  # also checkpoint within an epoch this often
    tta: str = "auto"  # flip | none | auto: flip for small images trained with flips
    export_onnx: bool = True  # also write model/model.onnx (verified): fast-starting predictions
    calibrate: bool = True  # fit a temperature on the validation set (multiclass, binary)


@dataclass
class RunConfig:
    """Everything a training run needs; saved as RUN_DIR/config.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) to plain YAML/JSON-able values; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the annotated field type, with a clear error when it cannot be."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        for a in non_none:
            try:
                return _coerce(a, value, where)
            except (TypeError, ValueError, UserError):
                continue
        raise UserError(f"{where}: cannot use {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        return tuple(_coerce(args[0] if args else Any, v, where) for v in value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(args[0] if args else Any, v, where) for v in value]
    if origin is dict or tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1", "on"):
            return True
        if str(value).lower() in ("false", "no", "0", "off"):
            return False
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float, str):
        try:
            return tp(value)
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: expected {tp.__name__}, got {value!r}") from e
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a dataclass from a mapping; unknown keys are an error naming the valid ones."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def dump_yaml(obj: Any, path: Path) -> None:
    from imgcls.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise UserError(f"config file not found: {p}") from e
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping at the top level")
    return data


def check_config(cfg: RunConfig) -> None:
    """Refuse out-of-range and unknown settings at once, before any data is read or weights are
    fetched, with the option's command-line name in the message."""
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train

    def bad(option: str, value: Any, want: str) -> None:
        raise UserError(f"--{option.replace('_', '-')} must be {want}, not {value!r}")

    def choice(option: str, value: Any, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            bad(option, value, "one of " + ", ".join(allowed))

    if t.epochs is not None and t.epochs < 1:
        bad("epochs", t.epochs, "at least 1")
    if t.batch_size is not None and t.batch_size < 1:
        bad("batch_size", t.batch_size, "at least 1")
    if t.time_budget is not None:
        parse_duration(t.time_budget)
    if not 0 <= d.val_split < 1:
        bad("val_split", d.val_split, "at least 0 and below 1")
    if d.max_val is not None and d.max_val < 1:
        bad("max_val", d.max_val, "at least 1")
    if d.image_size is not None and not 8 <= d.image_size <= 4096:
        bad("image_size", d.image_size, "between 8 and 4096")
    if not 0 <= d.max_skipped <= 1:
        bad("max_skipped", d.max_skipped, "a share between 0 and 1")
    if not 0 <= d.det_threshold <= 1:
        bad("det_threshold", d.det_threshold, "between 0 and 1")
    if not 0 <= d.crop_margin <= 2:
        bad("crop_margin", d.crop_margin, "between 0 and 2")
    if d.mixup < 0 or d.cutmix < 0:
        bad("mixup" if d.mixup < 0 else "cutmix", min(d.mixup, d.cutmix), "0 (off) or a positive alpha")
    if d.workers is not None and d.workers < 0:
        bad("workers", d.workers, "0 or more")
    choice("cache", d.cache, ("disk", "memory", "none"))
    if not d.cache_max_gb > 0:
        bad("cache_max_gb", d.cache_max_gb, "positive")
    if d.crop_pct and not 0.2 <= d.crop_pct <= 1.0:
        bad("crop_pct", d.crop_pct, "between 0.2 and 1")
    if d.interpolation:
        choice("interpolation", d.interpolation, ("bilinear", "bicubic", "nearest"))
    if d.resize_mode:
        choice("resize_mode", d.resize_mode, ("crop", "pad"))
    choice("augment", d.augment, ("auto", *AUGMENT_PRESETS))
    if not 0 <= m.drop_rate < 1:
        bad("drop_rate", m.drop_rate, "at least 0 and below 1")
    choice("freeze", m.freeze, ("none", "backbone"))
    if m.head_epochs is not None and m.head_epochs < 0:
        bad("head_epochs", m.head_epochs, "0 or more")
    if o.lr is not None and not o.lr > 0:
        bad("lr", o.lr, "positive")
    if o.weight_decay is not None and o.weight_decay < 0:
        bad("weight_decay", o.weight_decay, "0 or more")
    if not 0 <= o.momentum < 1:
        bad("momentum", o.momentum, "at least 0 and below 1")
    if not 0 <= o.warmup < 1:
        bad("warmup", o.warmup, "a share of the steps, at least 0 and below 1")
    if o.backbone_lr_mult is not None and o.backbone_lr_mult < 0:
        bad("backbone_lr_mult", o.backbone_lr_mult, "0 or more")
    if o.clip_grad is not None and not o.clip_grad > 0:
        bad("clip_grad", o.clip_grad, "positive")
    if o.accumulate < 1:
        bad("accumulate", o.accumulate, "at least 1")
    if not 0 <= o.label_smoothing < 1:
        bad("label_smoothing", o.label_smoothing, "at least 0 and below 1")
    if not 0 <= o.ema < 1:
        bad("ema", o.ema, "0 (off) or a decay below 1, e.g. 0.999")
    choice("task", t.task, ("auto", "multiclass", "binary", "multilabel"))
    choice("precision", t.precision, ("auto", "bf16", "fp16", "fp32"))
    if not t.device.startswith("cuda:"):
        choice("device", t.device, ("auto", "cpu", "cuda"))
    choice("balance", t.balance, ("none", "weights", "sampler"))
    choice("tta", t.tta, ("auto", "flip", "none"))
    if t.binary_threshold not in TUNED_THRESHOLDS:
        try:
            cut = float(t.binary_threshold)
        except ValueError:
            cut = -1.0
        if not 0 < cut < 1:
            bad("binary_threshold", t.binary_threshold, "a probability between 0 and 1, f1 or balanced")
    if t.early_stopping < 0:
        bad("early_stopping", t.early_stopping, "0 (off) or a number of epochs")
    if not t.checkpoint_minutes > 0:
        bad("checkpoint_minutes", t.checkpoint_minutes, "positive")
    if t.threads is not None and t.threads < 1:
        bad("threads", t.threads, "at least 1")
