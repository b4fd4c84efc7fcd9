"""The ``imgcls`` command line: parses arguments, fills configs, calls the library.

Nothing else imports this module. Each subcommand imports what it needs when it runs, so
``imgcls --help`` and a single-image ``imgcls predict`` start quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
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


# ---------------------------------------------------------------------------------------- models
def _cmd_models(args: argparse.Namespace) -> int:
    from imgcls.models.catalog import catalog, rows_as_dicts
    from imgcls.models.summary import human

    rows = catalog(args.pattern)
    if not rows:
        raise UserError(f"no registered architecture matches {args.pattern!r}")
    if args.json:
        print(json.dumps(rows_as_dicts(rows), indent=2))
        return 0
    head = ("name", "family", "source", "params", "MACs", "input", "pretrained", "options")
    table = [
        (
            r.name,
            r.family,
            r.source,
            f"{r.params / 1e6:.2f}M",
            human(r.macs),
            "x".join(str(d) for d in r.input_size[1:]),
            ",".join(r.pretrained) or "-",
            ",".join(r.options) or "-",
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *table, strict=True)]
    for line in (head, *table):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    print(
        f"\n{len(rows)} architectures; MACs = multiply-adds of one forward pass at the input size."
        "\nAny timm or torchvision classifier also works as timm/NAME or torchvision/NAME."
    )
    return 0


# --------------------------------------------------------------------------------------- summary
def _cmd_summary(args: argparse.Namespace) -> int:
    from imgcls.models.summary import summarize_arch

    size = tuple(args.input_size) if args.input_size else None
    if size is not None and (min(size) < 1 or size[0] != 3):
        raise UserError(f"--input-size must be 3 H W with positive H and W, not {size}")
    try:
        s = summarize_arch(args.arch, input_size=size, num_classes=args.num_classes, norm=args.norm, attn=args.attn)
    except RuntimeError as e:
        if size is None:
            raise
        reason = str(e).splitlines()[0]
        raise UserError(f"{args.arch} cannot run at input size {size}: {reason}") from None
    print(json.dumps(s.to_dict(), indent=2) if args.json else s.table())
    return 0


# ----------------------------------------------------------------------------------------- train
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


def _cmd_train(args: argparse.Namespace) -> int:
    import time

    from imgcls.api import train

    started = getattr(args, "_started", time.monotonic())
    options = {
        k: v for k, v in vars(args).items() if k not in ("handler", "config", "resume", "command", "out", "_started")
    }
    _allow_train_pixels(args, options)
    run = train(out=args.out, config=args.config, resume=args.resume, started=started, **options)
    if os.environ.get("RANK", "0") != "0":
        return 0
    from imgcls.api import run_config

    model = run / "model"
    d = run_config(run).data
    data = options.get("data") or d.data  # as the user wrote it, else the run's
    listing = run / "splits.csv"  # the test split, where the data has one, is the one to judge by
    has_test = listing.is_file() and ",test\n" in listing.read_text(encoding="utf-8")
    print(f"model: {model}")
    import shlex

    split = " --split test" if has_test else ""
    crops = ""
    if d.detections:  # a model of detection crops is judged on crops
        crops = f" --detections {shlex.quote(str(options.get('detections') or d.detections))}"
        crops += f" --det-categories {d.det_categories}"
    print(
        f"evaluate it: imgcls evaluate --model {shlex.quote(str(model))} --data {shlex.quote(str(data))}{crops}{split}"
    )
    return 0


def _allow_train_pixels(args: argparse.Namespace, options: dict[str, Any]) -> None:
    """This process is the command's own: let Pillow open what --max-pixels allows (from the
    command line, the --config file or, on --resume, the run's config.yaml)."""
    from pathlib import Path

    import yaml

    from imgcls.data.image import MAX_PIXELS, allow_pixels

    limit = options.get("max_pixels")
    for source in ([Path(args.config)] if args.config else []) + (
        [Path(args.out) / "config.yaml"] if args.resume and args.out else []
    ):
        if limit is None and source.is_file():
            try:
                saved = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                continue  # the training command reports it
            if isinstance(saved, dict):
                section = saved.get("data")
                limit = (section if isinstance(section, dict) else saved).get("max_pixels")
    allow_pixels(int(limit) if isinstance(limit, (int, float)) else MAX_PIXELS)


# --------------------------------------------------------------------------------------- predict
FEW_IMAGES = 200  # up to this many inputs, predict starts on ONNX Runtime when it can


def _set_decision(clf: Any, args: argparse.Namespace) -> None:
    """--threshold, --class-thresholds, --rollup, --blank-threshold -> the classifier's rule."""
    from imgcls.decisions import DecisionRule, parse_class_thresholds

    wanted = args.class_thresholds or args.rollup or args.blank_threshold is not None
    if not wanted:
        return
    if clf.task != "multiclass":
        raise UserError("--class-thresholds, --rollup and --blank-threshold apply to multi-class models")
    clf.decision = DecisionRule(
        clf.label_names,
        threshold=args.threshold if args.threshold is not None else (0.5 if args.rollup else None),
        class_thresholds=parse_class_thresholds(args.class_thresholds, clf.label_names),
        rollup=args.rollup,
        blank_threshold=args.blank_threshold,
    )


def _cmd_predict(args: argparse.Namespace) -> int:
    from imgcls.predict import Classifier, run_predict

    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UserError("--threshold must be between 0 and 1")
    import itertools
    from pathlib import Path

    from imgcls.predict import check_inputs, iter_inputs

    if not Path(args.model).exists():
        raise UserError(f"model not found: {args.model} (expected a model directory or an .onnx file)")
    check_inputs(args.inputs)
    if args.out:
        from imgcls.io import check_writable

        check_writable(args.out, folder=args.format == "camtrapdp")
    n = sum(1 for _ in itertools.islice(iter_inputs(args.inputs), FEW_IMAGES + 1))
    if n == 0:
        raise UserError(f"no files found in {' '.join(args.inputs)} (folders, globs and lists were all empty)")
    backend = args.backend
    if backend == "auto":
        # a few images: ONNX Runtime starts in a fraction of PyTorch's import time; many
        # images: PyTorch's bf16 kernels are faster per image
        backend = "auto" if n <= FEW_IMAGES else "torch"
    clf = Classifier.load(args.model, device=args.device, precision=args.precision, backend=backend)
    _set_decision(clf, args)
    common = dict(
        top_k=args.top_k, batch_size=args.batch_size, workers=args.workers,
        show_progress=args.out is not None, resume=not args.overwrite,
    )  # fmt: skip
    camera = args.detections or args.aggregate != "none" or args.format in ("megadetector", "camtrapdp")
    if camera:
        import imgcls.cameratrap.writers  # noqa: F401  (registers the formats)
        from imgcls.cameratrap.pipeline import run

        options = {
            "utc_offset": args.utc_offset,
            "deployments": args.deployments,
            "metadata": args.camtrapdp_metadata,
        }
        summary = run(
            clf, args.inputs, out=args.out, fmt=args.format, detections_file=args.detections,
            image_root=args.image_root, det_threshold=args.det_threshold, det_categories=args.det_categories,
            crop_margin=args.crop_margin, aggregate=args.aggregate, sequence_gap=args.sequence_gap,
            metadata=args.metadata, writer_options=options, **common,
        )  # fmt: skip
    else:
        summary = run_predict(
            clf, args.inputs, out=args.out, fmt=args.format, threshold=args.threshold,
            tta={"flip": True, "none": False}.get(args.tta), **common,
        )  # fmt: skip
    note = summary.left_out_note()
    if args.out and os.environ.get("RANK", "0") == "0":
        done = f", {summary.skipped_done} already done" if summary.skipped_done else ""
        sys.stderr.write(
            f"predicted {summary.written} images{done} ({summary.errors} unreadable) in "
            f"{summary.seconds:.1f}s ({summary.images_per_second:.1f} img/s) -> {args.out}"
            f"{'; ' + note if note else ''}\n"
        )
    elif note:
        sys.stderr.write(f"imgcls predict: {note}\n")
    return 0


# -------------------------------------------------------------------------------------- evaluate
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from imgcls.evaluate import evaluate

    r = evaluate(
        args.model, args.data, split=args.split, out=args.out, image_root=args.image_root,
        batch_size=args.batch_size, workers=args.workers, device=args.device,
        precision=args.precision, tta={"flip": True, "none": False}.get(args.tta), detections=args.detections,
        det_threshold=args.det_threshold, det_categories=args.det_categories,
        crop_margin=args.crop_margin, default_out=True,
    )  # fmt: skip
    m = r.metrics
    print(f"{r.task} evaluation on {m['num_images']} images ({r.split}), {m['num_skipped']} skipped")
    keys = ("top1", "top5", "balanced_accuracy", "macro_f1", "roc_auc", "average_precision", "mAP",
            "micro_f1", "subset_accuracy", "hamming_loss", "nll", "ece")  # fmt: skip
    width = max(len(k) for k in keys)
    for k in keys:
        if isinstance(m.get(k), float):
            print(f"  {k:<{width}}  {m[k]:.4f}")
    groups = m.get("per_location") or []
    if groups:
        print("per location (accuracy, images):")
        for g in groups[:20]:
            print(f"  {g['group']:<{width}}  {g['accuracy']:.4f}  {g['images']}")
        if len(groups) > 20:
            print(f"  ... {len(groups) - 20} more in metrics.json")
    if r.selection_split:
        print(f"note: {r.selection_note}")
    if r.report_dir is not None:
        print(f"report: {r.report_dir / 'report.html'}")
    return 0


# ---------------------------------------------------------------------------------------- export
def _cmd_export(args: argparse.Namespace) -> int:
    from imgcls.export import export_onnx

    if args.format != "onnx":
        raise UserError(f"unknown export format {args.format!r} (onnx is supported)")
    report, source = export_onnx(args.model, args.out, images=args.images, opset=args.opset, tolerance=args.tolerance)
    print(f"wrote {report.path}")
    print(
        f"verified with ONNX Runtime on {report.images} {source}: max |logit diff| "
        f"{report.max_logit_diff:.2e}, max |probability diff| {report.max_prob_diff:.2e}, "
        f"top-1 agreement {100 * report.top1_agreement:.1f}%"
    )
    return 0


# ----------------------------------------------------------------------------------------- serve
def _cmd_serve(args: argparse.Namespace) -> int:
    from imgcls.serve.app import ServeConfig, serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"imgcls serve: listening on {args.host}: reachable from other machines\n")
    from imgcls.data.image import allow_pixels

    allow_pixels(args.max_pixels)  # this process is the server's own
    cfg = ServeConfig(
        model=args.model, host=args.host, port=args.port, api_key=args.api_key,
        max_upload_mb=args.max_upload_mb, max_files=args.max_files, max_pixels=args.max_pixels,
        cors_origins=args.cors_origin or [], max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        top_k=args.top_k, device=args.device, precision=args.precision,
    )  # fmt: skip
    serve(cfg)
    return 0


# ----------------------------------------------------------------------------------------- cache
def _cmd_cache(args: argparse.Namespace) -> int:
    import time

    from imgcls.data.store import cache_entries, default_cache_dir, remove_entries
    from imgcls.engine.budget import parse_duration

    folder = args.cache_dir or str(default_cache_dir())
    entries = cache_entries(folder)
    if args.action == "info":
        total = sum(e.bytes for e in entries)
        print(f"{folder}: {len(entries)} entries, {total / 1e9:.2f} GB (training keeps it under --cache-max-gb, 50)")
        for e in entries:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
            what = f"{e.images} images of {e.side}x{e.side} px" if e.images else "unfinished write"
            print(f"  {e.key}  {e.bytes / 1e6:9.1f} MB  used {used}  {what}  from {e.data}")
        return 0
    if args.older_than:
        cutoff = time.time() - parse_duration(args.older_than)
        entries = [e for e in entries if e.last_used < cutoff]
    freed = remove_entries(entries)
    print(f"removed {len(entries)} entries ({freed / 1e9:.2f} GB) from {folder}")
    return 0


# ------------------------------------------------------------------------------------------ demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from imgcls.demo import run_demo

    run_demo(out=args.out)
    return 0


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

    p = _add(
        sub,
        "models",
        "List the registered architectures with parameters and multiply-adds.",
        "  imgcls models\n  imgcls models 'vgg*'\n  imgcls models resnet --json",
        _cmd_models,
    )
    p.add_argument("pattern", nargs="?", help="shell pattern or substring of the name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    from imgcls.models.options import ATTNS, NORMS

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

    p = _add(
        sub,
        "demo",
        "The main job on an embedded dataset (scikit-learn's handwritten digits).",
        "  imgcls demo\n  imgcls demo --out demo-run",
        _cmd_demo,
    )
    p.add_argument("--out", default="demo-run", help="folder for the demo's outputs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from imgcls.runtime import process_started

    started = process_started()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unknown_options(parser, args, unknown)
    args._started = started
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        sys.stderr.write(f"imgcls: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"imgcls: interrupted{_how_to_continue(args)}\n")
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # a file that cannot be written or read where the command needs it
        if os.environ.get("IMGCLS_DEBUG"):
            raise
        where = f": {_shown_path(e.filename)}" if e.filename else ""
        sys.stderr.write(f"imgcls: error: {e.strerror or e}{where}\n")
        return 2


def _how_to_continue(args: argparse.Namespace) -> str:
    """For an interrupted command that can be continued: how."""
    import shlex

    if args.command == "predict" and args.out:
        return f"; run the same command again to continue where it stopped ({shlex.quote(args.out)} keeps every row)"
    if args.command == "train" and args.out:
        from pathlib import Path

        if (Path(args.out) / "checkpoint" / "state.pt").is_file():
            return f"; continue from its last checkpoint with: imgcls train --out {shlex.quote(args.out)} --resume"
    return ""


def _unknown_options(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]) -> None:
    """One line for arguments the command does not know, with the option meant where one is
    close (``--topk``: did you mean --top-k?)."""
    import difflib

    command = getattr(args, "command", None)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    target = sub.choices.get(command) if sub is not None and command else None
    known = [o for a in (target or parser)._actions for o in a.option_strings if o.startswith("--")]
    word = unknown[0].split("=")[0]
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.75) if word.startswith("-") else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    what = "option" if word.startswith("-") else "argument"
    name = f"imgcls {command}" if command else "imgcls"
    sys.stderr.write(f"{name}: error: unknown {what} {word}{hint} (see {name} --help)\n")
    raise SystemExit(2)


def _shown_path(name: Any) -> str:
    """The file a user named, not the temporary sibling it is written through
    (``.preds.csv.k3j2.tmp`` -> ``preds.csv``)."""
    import re
    from pathlib import Path

    p = Path(str(name))
    found = re.fullmatch(r"\.(.+)\.[A-Za-z0-9_]+\.tmp(\.onnx)?", p.name)
    return str(p.with_name(found.group(1))) if found else str(name)


def entry() -> None:
    """The ``imgcls`` program: :func:`main`, then a fast exit. Unloading torch, timm and
    friends at interpreter shutdown takes over a second on two cores and serves no purpose
    once every file is closed and synced (all writes here are), so the process ends at once."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if "torch" in sys.modules:
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
