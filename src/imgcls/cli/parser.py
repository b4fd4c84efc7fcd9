"""The command line's grammar: every command, its options, their help and examples.

Each ``add_*`` function is the argument table of one command; the training options come from
the fields of :mod:`imgcls.config`'s dataclasses. The handlers live in
:mod:`imgcls.cli.commands`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from imgcls.cli.commands import (
    _cmd_audit,
    _cmd_cache,
    _cmd_demo,
    _cmd_evaluate,
    _cmd_explain,
    _cmd_export,
    _cmd_models,
    _cmd_predict,
    _cmd_serve,
    _cmd_summary,
    _cmd_train,
)
from imgcls.models.options import ATTNS, NORMS

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
    "data": "training data: class folders, train/val/test folders, IDX folder, .csv, COCO .json",
    "val_data": "separate validation data (same kinds of SPEC)",
    "image_root": "base folder for relative paths in .csv / .json files",
    "val_split": "share of the training images held out for validation (default 0.2)",
    "max_val": "at most this many images are held out for validation (default 5000)",
    "split_by": "keep groups (location, sequence, image or any column) on one side of the split; "
    "auto (default): location, else sequence, else image for crops; none: stratified",
    "image_size": "input size in pixels (default: the model's own)",
    "resize_mode": "crop (shorter side, center crop) or pad (letterbox the whole frame)",
    "crop_pct": "center-crop share of the resized image, e.g. 0.875 (default: the model's)",
    "interpolation": "resampling: bilinear, bicubic or nearest (default: the model's)",
    "augment": "none, flip, light, standard, strong, small or auto (default)",
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
    "arch": "architecture (see 'imgcls models'); auto: resnet18, or lenet for tiny images",
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
    "time_budget": "plan the run to end within this wall time, e.g. 10m, 1h30m",
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
            flag = "--" + f.name.replace("_", "-")
            tp = hints[f.name]
            args = [t for t in typing.get_args(tp) if t is not type(None)] or [tp]
            kind = args[0]
            help_text = TRAIN_HELP.get(f.name, "")
            if kind is bool:
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


def _device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", default="auto", help="auto (bf16 where fast), bf16, fp16, fp32")


def _inference_options(p: argparse.ArgumentParser, *, batch_size: int) -> None:
    """The options predict and evaluate share: batches, decoding, TTA, device, precision."""
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"images per forward pass (default {batch_size})")
    p.add_argument("--workers", type=int, help="decoding processes (default: the cores)")
    p.add_argument(
        "--tta", choices=["auto", "none", "flip"], default="auto",
        help="test-time augmentation (default: what the model was trained for)",
    )  # fmt: skip
    _device_options(p)


def build_parser() -> argparse.ArgumentParser:
    from imgcls import __version__

    parser = argparse.ArgumentParser(
        prog="imgcls",
        allow_abbrev=False,
        description="Image classification: train, evaluate, predict at scale, export and serve.",
        formatter_class=_Formatter,
        epilog="Run 'imgcls COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    parser.error = _parser_error(parser)  # type: ignore[method-assign,assignment]
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_models(sub)
    add_summary(sub)
    add_train(sub)
    add_predict(sub)
    add_evaluate(sub)
    add_export(sub)
    add_serve(sub)
    add_explain(sub)
    add_audit(sub)
    add_cache(sub)
    add_demo(sub)
    return parser


def add_models(sub: Any) -> None:
    """``imgcls models``."""
    p = _add(
        sub,
        "models",
        "List the registered architectures with parameters and multiply-adds.",
        "  imgcls models\n  imgcls models 'vgg*'\n  imgcls models resnet --json",
        _cmd_models,
    )
    p.add_argument("pattern", nargs="?", help="shell pattern or substring of the name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_summary(sub: Any) -> None:
    """``imgcls summary``."""
    p = _add(
        sub,
        "summary",
        "Per-layer table of an architecture: output shape, parameters, memory, multiply-adds.",
        "  imgcls summary alexnet\n  imgcls summary lenet --input-size 3 32 32 --num-classes 10"
        "\n  imgcls summary resnet18 --norm group --attn se --json",
        _cmd_summary,
    )
    p.add_argument("arch", help="architecture name (see 'imgcls models'), timm/NAME, torchvision/NAME")
    p.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"), help="input size (default: the model's)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000, as ImageNet)")
    p.add_argument("--norm", choices=NORMS, help="normalization (ResNet, VGG, LeNet families)")
    p.add_argument("--attn", choices=ATTNS, help="channel attention (ResNet, VGG, LeNet families)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_train(sub: Any) -> None:
    """``imgcls train``."""
    p = _add(
        sub,
        "train",
        "Train a classifier (multi-class, binary or multi-label), fine-tuning pretrained weights.",
        "  imgcls train --data photos/ --out runs/photos\n"
        "  imgcls train --data photos/ --arch convnext_tiny --epochs 5 --out runs/cnx\n"
        "  imgcls train --data /usr/share/datasets/fashion-mnist --time-budget 10m --out runs/fm\n"
        "  imgcls train --data labels.csv --task multilabel --out runs/ml\n"
        "  imgcls train --data cct.json --split-by location --out runs/ct\n"
        "  imgcls train --config recipe.yaml --lr 0.01 --out runs/b   # YAML plus overrides\n"
        "  imgcls train --out runs/photos --resume                      # continue a killed run\n"
        "  torchrun --nproc_per_node 2 -m imgcls train --data photos/ --out runs/ddp",
        _cmd_train,
    )
    p.add_argument("--config", help="YAML file with data/model/optim/train sections")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    _add_config_options(p)


def add_predict(sub: Any) -> None:
    """``imgcls predict``."""
    p = _add(
        sub,
        "predict",
        "Predict labels for images: files, folders, globs, .txt/.csv lists; resumable.",
        "  imgcls predict --model runs/a/model photo.jpg\n"
        "  imgcls predict --model runs/a/model photos/ 'more/*.JPG' list.txt --out preds.csv\n"
        "  imgcls predict --model model.onnx photos/ --out preds.jsonl --top-k 3\n"
        "  imgcls predict --model runs/a/model photos/ --out preds.csv   # again: resumes\n"
        "  imgcls predict --model M traps/ --detections md.json --format megadetector --out md_cls.json\n"
        "  imgcls predict --model M traps/ --aggregate sequence --format camtrapdp --out package/\n"
        "  torchrun --nproc_per_node 4 -m imgcls predict --model M photos/ --out preds.csv",
        _cmd_predict,
    )
    p.add_argument("--model", required=True, help="model directory or exported .onnx file")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders, glob patterns, .txt/.csv lists",
    )
    p.add_argument("--out", help="output file (.csv, .jsonl, .json); default: CSV on stdout")
    p.add_argument(
        "--format",
        help="csv, jsonl, json, megadetector or camtrapdp (default: from the --out suffix, else csv)",
    )
    p.add_argument("--top-k", type=int, default=5, help="probabilities kept per image (default 5)")
    p.add_argument(
        "--threshold",
        type=float,
        help="multi-class: below this probability the label is 'unknown'; binary: the positive "
        "class from this probability; multi-label: every label's (default: the model's own)",
    )
    _inference_options(p, batch_size=32)
    p.add_argument(
        "--backend", choices=["auto", "torch", "onnx"], default="auto",
        help="auto: ONNX Runtime (the model directory's model.onnx) for up to 200 images, else PyTorch",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming")
    g = p.add_argument_group("decisions")
    g.add_argument("--class-thresholds", help="per-class thresholds: fox=0.8,deer=0.6 (below: unknown)")
    g.add_argument("--rollup", action="store_true", help="roll uncertain species up an 'a;b;c' taxonomy")
    g.add_argument("--blank-threshold", type=float, help="call an image blank only at this p(blank)")
    g = p.add_argument_group("camera traps")
    g.add_argument("--detections", help="MegaDetector results JSON: classify the detection crops")
    g.add_argument(
        "--det-threshold",
        type=float,
        help="detection confidence for a crop (default: the model's, else 0.2)",
    )
    g.add_argument(
        "--det-categories",
        default="animal",
        help="detection categories to classify (default animal)",
    )
    g.add_argument("--crop-margin", type=float, help="margin around a crop (default: the model's, else 0.1)")
    g.add_argument("--image-root", help="folder the detections' file names are relative to")
    g.add_argument("--aggregate", choices=["none", "sequence"], default="none", help="event-level labels")
    g.add_argument("--sequence-gap", type=float, default=30.0, help="seconds between frames of one event")
    g.add_argument("--metadata", help="COCO Camera Traps .json or .csv with sequence / location per image")
    g.add_argument("--utc-offset", default="+00:00", help="time zone of the cameras' clocks (Camtrap DP)")
    g.add_argument("--deployments", help="CSV with deploymentID and coordinates to merge (Camtrap DP)")
    g.add_argument("--camtrapdp-metadata", help="JSON merged into datapackage.json (project, contributors)")


def add_evaluate(sub: Any) -> None:
    """``imgcls evaluate``."""
    p = _add(
        sub,
        "evaluate",
        "Metrics, plots and an HTML report of a model on labelled data.",
        "  imgcls evaluate --model runs/a/model        # the run's validation split\n"
        "  imgcls evaluate --model runs/a/model --data photos/ --split test --out report/\n"
        "  imgcls evaluate --model model.onnx --data labels.csv --out report/",
        _cmd_evaluate,
    )
    p.add_argument("--model", required=True, help="model directory or exported .onnx file")
    p.add_argument("--data", help="labelled data (default: the model's training data)")
    p.add_argument("--split", help="train, val, test or all (default: test, else val, else all)")
    p.add_argument(
        "--out",
        help="report folder: metrics.json, per_class.csv, plots, report.html (default: RUN/eval-SPLIT by the model)",
    )
    p.add_argument("--image-root", help="base folder for relative paths in .csv / .json files")
    _inference_options(p, batch_size=64)
    p.add_argument("--detections", help="MegaDetector results JSON: evaluate on the detection crops")
    p.add_argument("--det-threshold", type=float, help="detection confidence for a crop (default: the model's)")
    p.add_argument("--det-categories", default="animal", help="detection categories to crop, e.g. animal,person")
    p.add_argument("--crop-margin", type=float, help="margin around a crop (default: the model's)")


def add_export(sub: Any) -> None:
    """``imgcls export``."""
    p = _add(
        sub,
        "export",
        "Export a model directory to ONNX (dynamic batch; labels and preprocessing in the "
        "metadata), verified against PyTorch.",
        "  imgcls export --model runs/a/model --format onnx\n"
        "  imgcls export --model runs/a/model --out model.onnx --images photos/a.jpg photos/b.jpg",
        _cmd_export,
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--format", default="onnx", help="onnx (the only format so far)")
    p.add_argument("--out", help="output file (default: MODEL/model.onnx)")
    p.add_argument("--images", nargs="+", help="images for the verification (default: the training data)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed probability difference")


def add_serve(sub: Any) -> None:
    """``imgcls serve``."""
    p = _add(
        sub,
        "serve",
        "An HTTP API (POST /predict, GET /model, GET /health) and a web page over a model.",
        "  imgcls serve --model runs/a/model                # http://127.0.0.1:8000/\n"
        "  IMGCLS_API_KEY=secret imgcls serve --model model.onnx --port 9000\n"
        "  curl -F file=@cat.jpg -F file=@dog.jpg 'http://127.0.0.1:8000/predict?top_k=3'",
        _cmd_serve,
    )
    p.add_argument("--model", required=True, help="model directory or exported .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--api-key", help="require this key on /predict (default: $IMGCLS_API_KEY, else none)")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest request body (default 25 MB)")
    p.add_argument("--max-files", type=int, default=16, help="most images per request (default 16)")
    p.add_argument("--max-pixels", type=int, default=60_000_000, help="largest image in pixels")
    p.add_argument("--cors-origin", action="append", help="allow browser calls from this origin (repeatable)")
    p.add_argument("--max-batch", type=int, default=32, help="images per micro-batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for company")
    p.add_argument("--top-k", type=int, default=5, help="default labels per image")
    _device_options(p)


def add_cache(sub: Any) -> None:
    """``imgcls cache``."""
    p = _add(
        sub,
        "cache",
        "Show or clear the decoded-image cache that training fills (and reuses across runs).",
        "  imgcls cache info\n  imgcls cache clear\n  imgcls cache clear --older-than 30d\n"
        "  imgcls cache info --cache-dir /scratch/imgcls-cache",
        _cmd_cache,
    )
    p.add_argument("action", choices=["info", "clear"], help="info: list the entries; clear: remove them")
    p.add_argument("--cache-dir", help="the cache folder (default ~/.cache/imgcls/decoded)")
    p.add_argument("--older-than", help="clear: only entries not used for this long, e.g. 30d, 12h")


def add_demo(sub: Any) -> None:
    """``imgcls demo``."""
    p = _add(
        sub,
        "demo",
        "The main job on an embedded dataset (scikit-learn's handwritten digits).",
        "  imgcls demo\n  imgcls demo --out demo-run",
        _cmd_demo,
    )
    p.add_argument("--out", default="demo-run", help="folder for the demo's outputs")


def add_explain(sub: Any) -> None:
    """``imgcls explain``."""
    p = _add(
        sub,
        "explain",
        "Where in each image the model finds the evidence for its top classes (Grad-CAM overlays).",
        "  imgcls explain --model runs/a/model photo.jpg --out why/\n"
        "  imgcls explain --model runs/a/model photos/ --top-k 2 --out why/",
        _cmd_explain,
    )
    p.add_argument("--model", required=True, help="model directory (an exported .onnx has no gradients to explain)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, glob patterns, .txt/.csv lists")
    p.add_argument("--out", required=True, help="folder for one PNG per image and explanations.csv")
    p.add_argument("--top-k", type=int, default=3, help="classes explained per image, most probable first (default 3)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def add_audit(sub: Any) -> None:
    """``imgcls audit``."""
    p = _add(
        sub,
        "audit",
        "Find likely label errors, duplicates and leaks across splits, class balance and unusable files.",
        "  imgcls audit --data photos/ --out audit/ --epochs 5 --pretrained none\n"
        "  imgcls audit --data photos/ --model runs/a/model --out audit/   # the model's held-out images\n"
        "  imgcls audit --data cct.json --config runs/a/config.yaml --folds 5 --out audit/",
        _cmd_audit,
    )
    p.add_argument("--config", help="YAML with the settings the folds train with (a run's config.yaml works)")
    p.add_argument("--model", help="use this model's probabilities of its held-out images instead of training folds")
    p.add_argument("--folds", type=int, default=4, help="cross-validation folds, one model each (default 4)")
    p.add_argument("--max-distance", type=int, default=4, help="near duplicates: hashes at most this many bits apart")
    p.add_argument("--labels", action=argparse.BooleanOptionalAction, default=True, help="look for label errors")
    p.add_argument("--duplicates", action=argparse.BooleanOptionalAction, default=True, help="look for duplicates")
    _add_config_options(p)
    for action in p._actions:  # --out is the audit's folder here
        if action.dest == "out":
            action.help, action.required = "folder for audit.html and the CSV files (required)", True
