"""The command line's grammar: every command, its options, their help and examples.

Each ``add_*`` function is the argument table of one command; the training options come from
the fields of :mod:`imgcls.config`'s dataclasses. The handlers live in
:mod:`imgcls.cli.commands`.
"""

from __future__ import annotations

import argparse
from typing import Any

from imgcls.cli.commands import (
    _cmd_cache,
    _cmd_demo,
    _cmd_evaluate,
    _cmd_export,
    _cmd_models,
    _cmd_predict,
    _cmd_serve,
    _cmd_summary,
    _cmd_train,
)
from imgcls.cli.compare import add_compare
from imgcls.cli.options import _add, _add_config_options, _device_options, _Formatter, _inference_options, _parser_error
from imgcls.cli.quality import add_audit, add_explain, add_review
from imgcls.cli.suggest import add_suggest
from imgcls.models.options import ATTNS, NORMS


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
    add_review(sub)
    add_compare(sub)
    add_suggest(sub)
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
        "  torchrun --nproc_per_node 4 -m imgcls predict --model M photos/ --out preds.csv\n"
        "  imgcls predict --model M photos/ --out preds.csv --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT",
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
    _backend_option(p, "auto: float32 on ONNX Runtime where model.onnx is current, else PyTorch, whatever the "
                    "number of inputs (a call of over 200 images times both, for the record); "
                    "int8 or bf16 only with --precision")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming")
    p.add_argument("--shard", metavar="K/N", help="one of N separate jobs (a SLURM job array's tasks): every N-th "
                   "input from the K-th (0-based) into a part beside --out; the job finishing the last part merges "
                   "them into --out in input order")  # fmt: skip
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
    g.add_argument("--sequence-gap", type=float, help="seconds between frames of one event (default 30; with "
                   "--aggregate sequence)")  # fmt: skip
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
    _backend_option(p, "auto: predict's engine (float32: ONNX Runtime, else PyTorch; int8, bf16 only with --precision)")
    p.add_argument(
        "--corrections",
        help="corrections.csv from 'imgcls review', applied to the labels (default: the run's own, "
        "when evaluating its training data)",
    )


def _backend_option(p: argparse.ArgumentParser, auto: str) -> None:
    p.add_argument(
        "--backend", choices=["auto", "torch", "onnx"], default="auto",
        help=f"{auto}; torch or onnx (the model directory's model.onnx) force one",
    )  # fmt: skip


def add_export(sub: Any) -> None:
    """``imgcls export``."""
    p = _add(
        sub,
        "export",
        "Export a model directory to ONNX (dynamic batch; labels and preprocessing in the "
        "metadata), verified against PyTorch.",
        "  imgcls export --model runs/a/model --format onnx\n"
        "  imgcls export --model runs/a/model --out model.onnx --images photos/a.jpg photos/b.jpg\n"
        "  imgcls export --model runs/a/model --quantize int8   # also model.int8.onnx: predict --precision int8",
        _cmd_export,
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--format", default="onnx", help="onnx (the only format so far)")
    p.add_argument("--out", help="output file (default: MODEL/model.onnx)")
    p.add_argument("--images", nargs="+", help="images for the verification (default: the training data)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed probability difference")
    p.add_argument(
        "--quantize", choices=["none", "int8"], default="none",
        help="int8: also write NAME.int8.onnx beside the .onnx (ONNX Runtime static quantisation, calibrated "
        "on the run's training images, its cost measured on the validation split)",
    )  # fmt: skip
    p.add_argument(
        "--max-accuracy-drop", type=float, default=1.0,
        help="refuse the int8 model (writing nothing) if validation top-1 drops by more points (default 1)",
    )  # fmt: skip
    p.add_argument("--calibration-images", type=int, default=300, help="training images that calibrate int8 (300)")


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
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="answer to this host name too (a DNS alias, a proxy's; repeatable): other names are "
                   "refused against DNS rebinding")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=32, help="images per micro-batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for company")
    p.add_argument("--top-k", type=int, default=5, help="default labels per image")
    _device_options(p)
    from imgcls.cli.options import _decoder_option

    _decoder_option(p)
    _backend_option(p, "auto: predict's engine (float32: ONNX Runtime, else PyTorch; int8, bf16 only with --precision)")


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
