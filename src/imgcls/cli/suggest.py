"""``imgcls suggest``: its grammar and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from imgcls.cli.options import _add, sequence_gap


def add_suggest(sub: Any) -> None:
    """``imgcls suggest``."""
    p = _add(
        sub,
        "suggest",
        "Which unlabelled images to label next: uncertain, diverse, rare-class ones first; resumable.",
        "  imgcls suggest --model runs/a/model unlabelled/ --n 500 --out next.csv\n"
        "  imgcls suggest --model M new-sites/ 'more/*.JPG' list.txt --n 200 --labelled done.csv --out next.csv\n"
        "  imgcls suggest --model M pool/ --n 500 --strategy random --seed 1 --out baseline.csv\n"
        "  imgcls suggest --model M pool/ --n 500 --out next.csv   # again: re-ranks from the scores kept",
        _cmd_suggest,
    )
    p.add_argument("--model", required=True, help="model directory (the embedding is read from its PyTorch model)")
    p.add_argument(
        "inputs", nargs="+", metavar="POOL", help="unlabelled images: files, folders, globs, .txt/.csv lists"
    )
    p.add_argument("--n", type=int, required=True, help="how many images to suggest")
    p.add_argument("--out", required=True, help="the suggestions CSV, in labelling order; the scores are kept beside "
                   "it (.NAME.scores/) so a cut run continues and a finished one re-ranks without scoring")  # fmt: skip
    p.add_argument("--strategy", default="auto", help="auto (uncertain and diverse, near-duplicates collapsed, rare "
                   "predicted classes favoured; default), margin or entropy (uncertainty alone), random (the "
                   "baseline, seeded)")  # fmt: skip
    p.add_argument("--uncertainty", default="margin", help="margin: 1 - (p1 - p2) (default), or entropy")
    p.add_argument("--dedup", type=float, default=0.98,
                   help="cosine similarity of embeddings from which images count as near-duplicates "
                   "(default 0.98)")  # fmt: skip
    p.add_argument("--labelled", nargs="+", default=[], metavar="FILE",
                   help="images already labelled, left out: CSVs with a path column, lists, folders")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of --strategy random (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=int, help="decoding processes (default: one per core)")
    p.add_argument("--detections", help="MegaDetector results JSON: rank the detection crops, one item per crop")
    p.add_argument(
        "--det-threshold",
        type=float,
        help="detections at or above this confidence are crops (default: the model's, else 0.2)",
    )
    p.add_argument("--det-categories", help="detection categories to crop (default: the model's, else animal)")
    p.add_argument("--aggregate", choices=["none", "sequence"], default="none",
                   help="sequence: choose --n events (the frames one trigger took: the camera's folder and EXIF "
                   "times), each listed with all its images or crops (default none: single items)")  # fmt: skip
    p.add_argument("--sequence-gap", "--gap", dest="sequence_gap", type=float,
                   help="seconds between frames of one event (default 30; with --aggregate sequence)")  # fmt: skip
    p.add_argument("--crop-margin", type=float, help="share of the box's longer side added around a crop "
                   "(default: the model's, else 0.1)")  # fmt: skip


def _cmd_suggest(args: argparse.Namespace) -> int:
    from imgcls.suggest import beside, suggest

    gap = sequence_gap(args)
    r = suggest(
        args.model, args.inputs, n=args.n, out=args.out, strategy=args.strategy, uncertainty_measure=args.uncertainty,
        dedup=args.dedup, labelled=args.labelled, seed=args.seed, batch_size=args.batch_size, workers=args.workers,
        detections=args.detections, det_threshold=args.det_threshold, det_categories=args.det_categories,
        crop_margin=args.crop_margin, aggregate=args.aggregate, gap=gap,
    )  # fmt: skip
    what = "item" if r.crops else "image"
    unlisted = f"; {_count(r.unlisted, 'frame')} not in {Path(args.detections).name}" if r.unlisted else ""
    blank = f" ({_count(r.blank, 'frame')} without a detection left out as blank{unlisted})" if r.crops else ""
    print(f"pool: {_count(r.pool, 'detection crop' if r.crops else 'image')}{blank}; scored {r.scored_now} now, "
          f"{r.pool - r.scored_now} from the scores kept")  # fmt: skip
    near = f", {r.near_known} near-duplicates of those" if r.near_known else ""
    print(f"left out: {r.in_training} in the model's training data, {r.labelled} already labelled{near}")
    if args.labelled and not r.labelled_named:
        print(f"  note: no image --labelled names is in the pool (check its paths: {' '.join(args.labelled)})")
    if r.skipped:
        listed = beside(r.out, "skipped")
        why = "could not be used" if r.crops else "could not be read"
        frames = f"the {_count(r.unlisted, 'frame')} not in the detections file and " if r.unlisted else ""
        failed = len(r.skipped) - r.unlisted
        print(f"skipped: {frames}{_count(failed, what)} that {why} (listed in {listed})")
    if not r.rows:
        print(f"nothing to suggest: no image of the pool is readable and new to the model; wrote {r.out} (empty)")
        return 0
    dups = sum(int(row["duplicates"]) for row in r.rows)
    how = "collapsed into the picks" if args.strategy == "auto" else "of the picks (--strategy auto collapses them)"
    chosen = str(len(r.rows))
    if args.aggregate == "sequence":
        chosen = f"{len({row['sequence'] for row in r.rows})} events ({len(r.rows)} {what}s)"
    of = f"{r.eligible} {what}s" if args.aggregate == "sequence" else str(r.eligible)
    print(f"suggested: {chosen} of {of} ({args.strategy}); {dups} near-duplicates {how}, "
          f"listed in {beside(r.out, 'duplicates')}")  # fmt: skip
    print(f"wrote {r.out}")
    return 0


def _count(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"
