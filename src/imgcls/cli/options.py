"""What every command's grammar shares: one-line parse errors, the examples layout, the
training options generated from :mod:`imgcls.config`'s dataclasses, device and inference options."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from imgcls.errors import UserError

Handler = Callable[[argparse.Namespace], int]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks; show defaults."""


def _parser_error(parser: argparse.ArgumentParser) -> Callable[[str], Any]:
    def error(message: str) -> None:
        # One line, non-zero exit: argparse's usage dump stays available through --help.
        name = parser.prog if parser.prog.startswith("imgcls") else f"imgcls {parser.prog.split()[-1]}"
        sys.stderr.write(f"{name}: error: {message} (see {name} --help)\n")
        raise SystemExit(2)

    return error


def _add(sub: Any, name: str, help_text: str, examples: str, handler: Handler) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=f"{help_text}\n\nexamples:\n{examples}",
        formatter_class=_Formatter,
        allow_abbrev=False,  # --epoch is not --epochs: a typo is said, not guessed
    )
    p.error = _parser_error(p)  # type: ignore[method-assign,assignment]
    p.set_defaults(handler=handler)
    return p


#: help for every training option; the options themselves come from imgcls.config's dataclasses
TRAIN_HELP = {
    "data": "training data: class folders, train/val/test folders, IDX folder, .csv, COCO .json, Camtrap DP; "
    "give --data again to train on several at once (--data old/ --data labels.csv)",
    "val_data": "separate validation data (same kinds of SPEC)",
    "image_root": "base folder for relative paths in .csv / .json files",
    "val_split": "share of the training images held out for validation (default 0.2)",
    "max_val": "at most this many images are held out for validation (default 5000)",
    "split_by": "keep groups (location, sequence, image or any column) on one side of the split; "
    "auto (default): location, else sequence, else image for crops; none: stratified",
    "image_size": "input size in pixels (default: the model's own)",
    "progressive_resize": "train the first steps on smaller images: on (from 4/7 of the size), off, a starting "
    "size in px, or auto (default: --time-budget decides, by measuring the machine)",
    "resize_mode": "crop (shorter side, center crop) or pad (letterbox the whole frame)",
    "crop_pct": "center-crop share of the resized image, e.g. 0.875 (default: the model's)",
    "interpolation": "resampling: bilinear, bicubic or nearest (default: the model's)",
    "augment": "none, flip, light, standard, strong, small, shift (small without flips) or auto (default)",
    "mixup": "mixup alpha (0 = off)",
    "cutmix": "cutmix alpha (0 = off)",
    "cache": "decoded-image cache: disk (default, reused across runs), memory or none",
    "cache_dir": "folder of the disk cache (default ~/.cache/imgcls/decoded)",
    "cache_max_gb": "size of the disk cache; least recently used entries go beyond it (default 50)",
    "workers": "decoding threads / processes (default: the cores)",
    "max_skipped": "stop when a larger share of the files is unusable (default 0.5)",
    "max_pixels": "refuse images with more pixels (default 100 million)",
    "detections": "MegaDetector results JSON: train on the detection crops",
    "det_threshold": "detection confidence for a crop (default 0.2)",
    "det_categories": "detection categories to crop (default animal)",
    "crop_margin": "margin around a crop, share of the box's longer side (default 0.1)",
    "corrections": "corrections.csv from 'imgcls review': relabelled images take their new label, rejected "
    "ones are left out",
    "arch": "architecture (see 'imgcls models'); auto: resnet18, or smallnet for images of 64 px or less "
    "(with --time-budget, smallnet_075 or smallnet_050 where the machine is too slow for it)",
    "pretrained": "auto (published weights when there are), none, timm, torchvision, or a model "
    "directory / weights file",
    "norm": "normalization: batch, group, layer, instance, none (ResNet, VGG, LeNet)",
    "attn": "channel attention: se, eca, cbam, none (ResNet, VGG, LeNet)",
    "drop_rate": "dropout before the classifier",
    "freeze": "backbone: train the classifier only; none (default)",
    "head_epochs": "first train the classifier alone for N epochs (default 1 when fine-tuning)",
    "optimizer": "adamw (default) or sgd",
    "lr": "learning rate (default 1e-3 for adamw, 0.1 per 256 images for sgd)",
    "weight_decay": "weight decay on conv/linear weights (default 0.05 adamw, 5e-4 sgd)",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum for SGD",
    "schedule": "cosine (default), onecycle or constant, after warm-up",
    "warmup": "share of the steps spent warming up (default 0.05)",
    "backbone_lr_mult": "backbone rate relative to the classifier's (default 0.1 when fine-tuning)",
    "clip_grad": "clip the gradient norm to this value",
    "accumulate": "batches per optimiser step",
    "label_smoothing": "label smoothing for multi-class (default 0.1)",
    "ema": "keep an exponential moving average of the weights with this decay (e.g. 0.999)",
    "out": "run directory (created; must be new unless --resume)",
    "task": "auto, multiclass, binary or multilabel",
    "positive": "binary task: the positive class",
    "binary_threshold": (
        "binary task: the probability of the positive class from which it is predicted (default 0.5), "
        "or f1 / balanced: the one that maximises F1 / balanced accuracy on the validation set"
    ),
    "epochs": "number of epochs (default 10)",
    "time_budget": "plan the run to end within this wall time, e.g. 10m, 1h30m; it first times the settings "
    "left open (small images: smallnet's width; large: progressive resizing) and takes the most capable one "
    "that still trains 10 epochs (RUN_DIR/budget.json)",
    "batch_size": (
        "images per batch (default 64; 256 for images of 64 px or less; smaller, down to 16, "
        "when the training set would give under 32 steps an epoch)"
    ),
    "seed": "random seed (splits, initialisation, augmentation)",
    "deterministic": "bit-exact repeatability where the kernels allow it",
    "precision": "auto (bf16 where fast), bf16, fp16 (GPU) or fp32",
    "device": "auto, cpu or cuda",
    "channels_last": "channels-last memory format (default: on for conv nets)",
    "compile": "torch.compile the model",
    "threads": "intra-op threads (default: the cores)",
    "balance": "class imbalance: none, weights (loss) or sampler",
    "early_stopping": "stop after N epochs without improvement (0 = off)",
    "monitor": "metric for the best model and early stopping (default: top1 or mAP)",
    "checkpoint_minutes": "also checkpoint within an epoch this often (default 10)",
    "tta": "test-time augmentation saved with the model: flip, none, auto (flip for small images)",
    "export_onnx": "also export model/model.onnx, verified (default): fast-starting predictions",
    "export_int8": "also write model/model.int8.onnx (int8, calibrated on training images; its top-1 cost on "
    "the validation split measured, refused over 1 point): 'predict --precision int8'",
    "calibrate": "fit a temperature on the validation set so probabilities are calibrated (default)",
}


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per field of the config dataclasses; unset options stay None, so a YAML file
    given with --config fills them and the command line overrides it."""
    import dataclasses
    import typing

    from imgcls.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

    for title, cls in (
        ("data", DataConfig),
        ("model", ModelConfig),
        ("optimisation", OptimConfig),
        ("run", TrainConfig),
    ):
        group = p.add_argument_group(f"{title} options")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "more_data":  # the second and later --data
                continue
            flag = "--" + f.name.replace("_", "-")
            tp = hints[f.name]
            args = [t for t in typing.get_args(tp) if t is not type(None)] or [tp]
            kind = args[0]
            help_text = TRAIN_HELP.get(f.name, "")
            if f.name == "data":  # --data A --data B: several specs, one table
                group.add_argument(flag, dest="data", action="append", default=None, metavar="SPEC", help=help_text)
            elif kind is bool:
                group.add_argument(
                    flag,
                    dest=f.name,
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help=help_text,
                )
            else:
                group.add_argument(
                    flag,
                    dest=f.name,
                    type=kind,
                    default=None,
                    metavar=f.name.upper(),
                    help=help_text,
                )


def data_specs(options: dict[str, Any]) -> dict[str, Any]:
    """``--data A --data B`` (a list from argparse) as the config's fields: ``data`` the first
    spec, ``more_data`` the others; a spec given twice is a one-line error. Options without
    ``--data`` are returned as they are."""
    specs = options.get("data")
    if not isinstance(specs, list):
        return options
    seen: dict[str, str] = {}
    for s in specs:
        real = os.path.realpath(os.path.expanduser(str(s)))
        if real in seen:
            raise UserError(f"--data {s} is given twice (as {seen[real]}): give each data spec once")
        seen[real] = str(s)
    return {**options, "data": str(specs[0]), "more_data": [str(s) for s in specs[1:]]}


def sequence_gap(args: argparse.Namespace) -> float:
    """``--sequence-gap`` (30 s unless given), refused without ``--aggregate sequence``, where it
    would be ignored."""
    if args.sequence_gap is None:
        return 30.0
    if args.aggregate != "sequence":
        raise UserError("--sequence-gap groups frames into events: it needs --aggregate sequence")
    if args.sequence_gap <= 0:
        raise UserError(
            f"--sequence-gap is the seconds between frames of one event: above 0 (got {args.sequence_gap:g})"
        )
    return float(args.sequence_gap)


def _device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--precision", default="auto",
        help="auto (bf16 where fast), bf16, fp16, fp32, or int8 (the model directory's model.int8.onnx "
        "from 'imgcls export --quantize int8', on ONNX Runtime)",
    )  # fmt: skip


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (``--batch-size 0`` is refused in
    one line, not run with a batch size the user did not ask for)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def _decoder_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--decoder", choices=["auto", "cpu", "cuda"], default="auto",
        help="who decodes JPEGs: auto (where the model runs on a GPU, the GPU's nvJPEG beside the CPU's workers "
        "when that measured faster here), cpu, or cuda (the GPU, the CPU for what it refuses)",
    )  # fmt: skip


def _inference_options(p: argparse.ArgumentParser, *, batch_size: int) -> None:
    """The options predict and evaluate share: batches, decoding, TTA, device, precision."""
    p.add_argument("--batch-size", type=at_least(1), default=batch_size,
                   help=f"images per forward pass (default {batch_size})")  # fmt: skip
    p.add_argument("--workers", type=at_least(0), help="decoding processes (default: the cores; 0: decode in this one)")
    _decoder_option(p)
    p.add_argument(
        "--tta", choices=["auto", "none", "flip"], default="auto",
        help="test-time augmentation (default: what the model was trained for)",
    )  # fmt: skip
    _device_options(p)
