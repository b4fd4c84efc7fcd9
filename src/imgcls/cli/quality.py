"""The data-quality loop's commands: ``explain``, ``audit`` and ``review`` (grammar and handlers)."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from imgcls.cli.commands import _allow_train_pixels
from imgcls.cli.options import _add, _add_config_options
from imgcls.errors import UserError


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
    p.add_argument("--split", choices=["train", "val", "test", "all"],
                   help="with --model: check the labels of this split (default: the model's validation split; "
                   "train and all include images the model trained on, not out of sample)")  # fmt: skip
    p.add_argument("--folds", type=int, default=4, help="cross-validation folds, one model each (default 4)")
    p.add_argument("--max-distance", type=int, default=4, help="near duplicates: hashes at most this many bits apart")
    p.add_argument("--labels", action=argparse.BooleanOptionalAction, default=True, help="look for label errors")
    p.add_argument("--duplicates", action=argparse.BooleanOptionalAction, default=True, help="look for duplicates")
    _add_config_options(p)
    for action in p._actions:  # --out is the audit's folder here
        if action.dest == "out":
            action.help, action.required = "folder for audit.html and the CSV files (required)", True


def add_review(sub: Any) -> None:
    """``imgcls review``."""
    p = _add(
        sub,
        "review",
        "Decide, image by image in the browser, what an audit or a model doubts (writes corrections.csv), or "
        "label the images imgcls suggest chose (--label: writes a labels file to train on).",
        "  imgcls review --audit audit/                       # the likely label errors and leaks\n"
        "  imgcls review --predictions preds.csv --limit 100  # the 100 least confident predictions\n"
        "  imgcls train --data photos/ --corrections audit/corrections.csv   # then retrain\n"
        "  imgcls review --label next.csv                     # label what 'imgcls suggest' chose\n"
        "  imgcls train --data photos/ --data next-labels.csv --out runs/b   # then train on both",
        _cmd_review,
    )
    p.add_argument("--audit", help="an imgcls audit folder: review its likely label errors and leaks")
    p.add_argument(
        "--label",
        metavar="NEXT_CSV",
        help="label the images of an 'imgcls suggest' output (the labels go to NEXT-labels.csv, or --out)",
    )
    p.add_argument("--predictions", help="an imgcls predict output (.csv, .jsonl, .json): review its least confident")
    p.add_argument("--limit", type=int, default=200, help="predictions reviewed, least confident first (default 200)")
    p.add_argument("--below", type=float, default=0.9,
                   help="review only predictions whose probability is below this (default 0.9)")  # fmt: skip
    p.add_argument(
        "--out",
        help="the corrections file (default: corrections.csv in the audit or predictions folder); "
        "with --label the labels file",
    )
    p.add_argument("--classes", help="labels offered for relabelling, comma-separated (added to the data's)")
    p.add_argument("--model", help="offer this model's labels for relabelling")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="answer to this host name too (a DNS alias; repeatable): other names are refused "
                   "against DNS rebinding")  # fmt: skip


def _cmd_explain(args: argparse.Namespace) -> int:
    from imgcls.explain import explain_files

    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    rows = explain_files(args.model, args.inputs, args.out, top=args.top_k, device=args.device)
    bad = sum(1 for r in rows if r["error"])
    done = len(rows) - bad
    unreadable = f" ({bad} unreadable)" if bad else ""
    print(
        f"explained {done} image{'s' if done != 1 else ''}{unreadable} -> {args.out} (one PNG each, explanations.csv)"
    )
    note = next((r["note"] for r in rows if r.get("note")), "")
    if note:  # one model, one map: the same for every image
        print(f"note: {note}")
    return 0


AUDIT_ONLY = (
    "handler",
    "config",
    "command",
    "out",
    "_started",
    "model",
    "split",
    "folds",
    "max_distance",
    "labels",
    "duplicates",
)


def _cmd_audit(args: argparse.Namespace) -> int:
    from imgcls.api import make_run_config
    from imgcls.audit import audit
    from imgcls.cli.options import data_specs

    options = data_specs({k: v for k, v in vars(args).items() if k not in AUDIT_ONLY})
    _allow_train_pixels(args, options)
    cfg = make_run_config(args.config, **options)
    if not cfg.data.data:
        raise UserError("no data given (--data SPEC)")
    if args.folds < 2:
        raise UserError("--folds must be at least 2")
    if not 0 <= args.max_distance <= 32:
        raise UserError("--max-distance must be between 0 and 32 bits")

    if args.split and not args.model:
        raise UserError("--split needs --model: cross-validation checks every image")

    def say(line: str) -> None:
        sys.stderr.write(line + "\n")

    r = audit(cfg, out=args.out, model=args.model, split=args.split, folds=args.folds, max_distance=args.max_distance,
              labels=args.labels, duplicates=args.duplicates, show=say, config_file=args.config)  # fmt: skip
    print(f"audited {r.images} images")
    if r.how:
        kind = "probabilities, not out of sample," if args.split in ("train", "all") else "out-of-sample probabilities"
        print(f"  checked the labels of {r.checked} of {r.images} images ({kind} from {r.how})")
    if r.trust is not None and r.trust.top1 is not None:
        folds = f" (folds {', '.join(f'{v:.3f}' for v in r.trust.fold_top1)})" if r.trust.fold_top1 else ""
        name = "top-1, trained on    " if args.split in ("train", "all") else "out-of-sample top-1  "
        print(f"  {name}{r.trust.top1:.3f}{folds}" + ("  <- see the warning" if r.trust.warning else ""))
    print(f"  likely label errors  {len(r.issues)}")
    if r.trust is not None and r.trust.unflagged_misses:  # the models' own mistakes, or wrong labels left unflagged
        who = "models disagree " if r.trust.fold_top1 else "model disagrees "
        print(f"  {who}     {r.trust.unflagged_misses} more labels, not flagged (see trust in summary.json)")
    print(f"  duplicate pairs      {len(r.duplicates)} ({r.leaks} across splits: leaks)")
    print(f"  unusable files       {len(r.unusable)}")
    if r.left_out:
        print(f"  left out on purpose  {len(r.left_out)} (frames without a detection, a review's rejections, "
              "observations no crop holds)")  # fmt: skip
    print(f"report: {r.folder / 'audit.html'} (CSV files beside it); review them: imgcls review --audit {r.folder}")
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    from imgcls.review import open_session, serve_review

    if args.limit < 1:
        raise UserError("--limit must be at least 1")
    if not 0 < args.below <= 1:
        raise UserError("--below must be a probability above 0, at most 1")
    classes = [c.strip() for c in (args.classes or "").split(",") if c.strip()]
    if args.label:
        if args.audit or args.predictions:
            raise UserError("--label labels suggested images: give it alone, not with --audit or --predictions")
        return _label(args, classes)
    session = open_session(audit=args.audit, predictions=args.predictions, out=args.out, limit=args.limit,
                           classes=classes, model=args.model, below=args.below)  # fmt: skip
    if not session.items:
        print("nothing to review: no likely label errors, leaks or predictions below --below")
        return 0
    c = session.counts()
    hint = session.hint
    resumed = f" ({c['decided']} decided already)" if c["decided"] else ""
    print(f"review {c['total']} images{resumed}: open http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    print(f"  every decision is saved at once to {session.out}")
    print(f"  then retrain: {hint}")
    if args.predictions and Path(args.predictions).suffix.lower() == ".csv" and _per_image_csv(args.predictions):
        print("  note: a CSV output keeps one row per image: for the detection crops, review predict's .jsonl or "
              "--format megadetector output")  # fmt: skip
    if session.adopted:
        print(f"  {session.adopted} decisions found in {session.out} or the audit's corrections file are kept")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"warning: anyone who can reach {args.host}:{args.port} can change the corrections\n")
    serve_review(session, host=args.host, port=args.port, hint=hint, allowed_hosts=args.allowed_host or [])
    c = session.counts()
    print(f"{c['decided']} of {c['total']} decided ({c['accept']} accepted, {c['relabel']} relabelled, "
          f"{c['reject']} rejected, {c['skip']} skipped), in {session.out}")  # fmt: skip
    if c["decided"]:
        print(f"retrain: {hint}")
    return 0


def _label(args: argparse.Namespace, classes: list[str]) -> int:
    """``imgcls review --label next.csv``: label the suggested images in the page."""
    from imgcls.review import open_label_session, serve_review

    session = open_label_session(args.label, out=args.out, model=args.model, classes=classes)
    if not session.items:
        print(f"nothing to label: {args.label} lists no image")
        return 0
    c = session.counts()
    resumed = f" ({c['decided']} labelled already)" if c["decided"] else ""
    print(f"label {c['total']} images{resumed}: open http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    print(f"  every label is saved at once to {session.out}, a --data spec")
    print(f"  then train: {session.hint}")
    print(f"  ({session.hint_note})")
    if session.adopted:
        print(f"  {session.adopted} label{'' if session.adopted == 1 else 's'} found in {session.out} kept")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"warning: anyone who can reach {args.host}:{args.port} can change the labels\n")
    serve_review(session, host=args.host, port=args.port, hint=session.hint, allowed_hosts=args.allowed_host or [])
    c = session.counts()
    print(f"{c['decided']} of {c['total']} labelled ({c['accept']} as the model guessed, {c['relabel']} another class, "
          f"{c['reject']} left out, {c['skip']} skipped), in {session.out}")  # fmt: skip
    if c["decided"]:
        print(f"train: {session.hint}")
        print(f"  ({session.hint_note})")
    return 0


def _per_image_csv(path: str) -> bool:
    """Whether a predictions CSV is a camera-trap output (its rows are frames: the crops are not in it)."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return "sequence" in header or "detections" in header
