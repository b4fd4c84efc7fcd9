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
AUGMENT_PRESETS = ("none", "flip", "light", "standard", "strong", "small", "shift")

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
    more_data: list[str] = field(default_factory=list)  # further specs: train --data A --data B
    val_data: str | None = None
    image_root: str | None = None
    val_split: float = 0.2
    max_val: int | None = 5000  # at most this many validation images are carved out
    split_by: str | None = "auto"  # auto: location, else sequence, else image (crops), else none
    image_size: int | None = None  # default: the model's own input size
    progressive_resize: str = "auto"  # auto (a time budget decides) | on | off | the starting size
    resize_mode: str | None = None  # crop | pad (letterbox); default: crop
    crop_pct: float | None = None  # center-crop share of the resized image (default: the model's)
    interpolation: str | None = None  # bilinear | bicubic (default: the model's)
    augment: str = "auto"  # none | flip | light | standard | strong | small | shift | auto
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
    corrections: str | None = None  # a review's corrections.csv: relabel or leave out images


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
    export_int8: bool = False  # also write model/model.int8.onnx (ONNX Runtime static quantisation, measured)
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


def _share(low: float, high: float, *, open_high: bool = True) -> Any:
    return lambda v: low <= v < high if open_high else low <= v <= high


#: field -> (whether a value is acceptable, what it must be); None means "not set" throughout
_RANGES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "val_split": (_share(0, 1), "at least 0 and below 1"),
    "max_val": (lambda v: v >= 1, "at least 1"),
    "image_size": (_share(8, 4096, open_high=False), "between 8 and 4096"),
    "max_skipped": (_share(0, 1, open_high=False), "a share between 0 and 1"),
    "det_threshold": (_share(0, 1, open_high=False), "between 0 and 1"),
    "crop_margin": (_share(0, 2, open_high=False), "between 0 and 2"),
    "mixup": (lambda v: v >= 0, "0 (off) or a positive alpha"),
    "cutmix": (lambda v: v >= 0, "0 (off) or a positive alpha"),
    "workers": (lambda v: v >= 0, "0 or more"),
    "cache_max_gb": (lambda v: v > 0, "positive"),
    "crop_pct": (lambda v: not v or 0.2 <= v <= 1.0, "between 0.2 and 1"),
    "drop_rate": (_share(0, 1), "at least 0 and below 1"),
    "head_epochs": (lambda v: v >= 0, "0 or more"),
    "lr": (lambda v: v > 0, "positive"),
    "weight_decay": (lambda v: v >= 0, "0 or more"),
    "momentum": (_share(0, 1), "at least 0 and below 1"),
    "warmup": (_share(0, 1), "a share of the steps, at least 0 and below 1"),
    "backbone_lr_mult": (lambda v: v >= 0, "0 or more"),
    "clip_grad": (lambda v: v > 0, "positive"),
    "accumulate": (lambda v: v >= 1, "at least 1"),
    "label_smoothing": (_share(0, 1), "at least 0 and below 1"),
    "ema": (_share(0, 1), "0 (off) or a decay below 1, e.g. 0.999"),
    "early_stopping": (lambda v: v >= 0, "0 (off) or a number of epochs"),
    "checkpoint_minutes": (lambda v: v > 0, "positive"),
    "threads": (lambda v: v >= 1, "at least 1"),
    "binary_threshold": (
        lambda v: v in TUNED_THRESHOLDS or _probability(v),
        "a probability between 0 and 1, f1 or balanced",
    ),
    "device": (lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"), "one of auto, cpu, cuda"),
    "progressive_resize": (
        lambda v: str(v).lower() in ("auto", "on", "off") or (str(v).isdigit() and int(v) >= 8),
        "auto, on, off or a starting size of at least 8 px",
    ),
}

#: field -> the values it may take (an empty value means "the model's own" for the optional ones)
_CHOICES: dict[str, tuple[str, ...]] = {
    "cache": ("disk", "memory", "none"),
    "interpolation": ("bilinear", "bicubic", "nearest"),
    "resize_mode": ("crop", "pad"),
    "augment": ("auto", *AUGMENT_PRESETS),
    "freeze": ("none", "backbone"),
    "task": ("auto", "multiclass", "binary", "multilabel"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "balance": ("none", "weights", "sampler"),
    "tta": ("auto", "flip", "none"),
}


def _probability(text: str) -> bool:
    try:
        return 0 < float(text) < 1
    except ValueError:
        return False


def check_config(cfg: RunConfig) -> None:
    """Refuse out-of-range and unknown settings at once, before any data is read or weights are
    fetched, with the option's command-line name in the message."""
    for section in (cfg.data, cfg.model, cfg.optim, cfg.train):
        for f in fields(section):
            value = getattr(section, f.name)
            if value is None or (value == "" and f.name in ("interpolation", "resize_mode")):
                continue
            if f.name in _CHOICES and value not in _CHOICES[f.name]:
                _bad(f.name, value, "one of " + ", ".join(_CHOICES[f.name]))
            if f.name in _RANGES and not _RANGES[f.name][0](value):
                _bad(f.name, value, _RANGES[f.name][1])
    if cfg.train.time_budget is not None:
        parse_duration(cfg.train.time_budget)


def _bad(option: str, value: Any, want: str) -> None:
    raise UserError(f"--{option.replace('_', '-')} must be {want}, not {value!r}")
