"""Label less on Fashion-MNIST: does ``imgcls suggest`` pick the images worth labelling?

A simulated labelling project (issue 27): 500 labelled images to start, a pool of 20,000
unlabelled ones, then rounds of 500 more picked by a strategy and "labelled" from the ground
truth. Each strategy starts from the same 500 and the same model; every round retrains from
scratch with the same recipe on all the labels so far (``imgcls train --data start.csv --data
round1.csv ...``: the several-specs path a person uses) and is scored on the t10k test images
(``imgcls evaluate``). The picks are made by the product's own command line: ``imgcls suggest
--model <the round's model> pool/ --n 500 --labelled <the labels so far> --strategy S``, so
``random`` (seeded) is the same command with the baseline's rule.

Target (issue 27): ``auto`` reaches the test accuracy that ``random`` reaches with 2,500 labels
using at most 1,750 (read off each seed's curve by linear interpolation between rounds).

The PNGs (pool 20,000 from the 60,000 training images, the start sets, the test images) are
written once under BENCH/label-less/data and kept.

    .venv/bin/python benchmarks/bench_label_less.py [--seeds 0 1 2] [--rounds 4] [--per-round 500]
        [--start 500] [--pool 20000] [--test 10000] [--strategies auto random] [--json F]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import BENCH, BIN, FASHION_MNIST, fashion_mnist, report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

#: one training recipe for every round and strategy: a small CNN at Fashion-MNIST's own size,
#: a fixed number of optimiser steps' worth of epochs, a tenth of the labels for validation
#: (temperature and the best epoch)
RECIPE = ["--arch", "smallnet_050", "--pretrained", "none", "--image-size", "28", "--augment", "small",
          "--val-split", "0.1", "--batch-size", "32", "--no-export-onnx"]  # fmt: skip


def write_pngs(folder: Path, args: argparse.Namespace) -> tuple[list[str], dict[str, str], list[list[str]]]:
    """(the pool's paths, every written image's true label by path, one start set per seed).
    The pool and the start sets come from one seeded shuffle of the 60,000 training images (no
    image in two of them); the test images are the first ``--test`` of the t10k files, in
    class folders under ``folder/test``."""
    from PIL import Image

    from imgcls.data.sources.idx import FASHION_MNIST_CLASSES, _find, read_idx_file

    fashion_mnist()
    names = [n.replace("/", "-") for n in FASHION_MNIST_CLASSES]
    images = read_idx_file(_find(FASHION_MNIST, "train-images-idx3-ubyte"))  # type: ignore[arg-type]
    labels = read_idx_file(_find(FASHION_MNIST, "train-labels-idx1-ubyte"))  # type: ignore[arg-type]
    order = np.random.default_rng(12345).permutation(len(labels))
    pool_idx = order[: args.pool]
    starts_idx = [order[args.pool + k * args.start : args.pool + (k + 1) * args.start] for k in range(len(args.seeds))]
    truth: dict[str, str] = {}

    def save(i: int, sub: str) -> str:
        p = folder / sub / f"{i:05d}.png"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(p)
        truth[str(p.resolve())] = names[int(labels[i])]
        return str(p.resolve())

    pool = [save(int(i), "pool") for i in pool_idx]
    starts = [[save(int(i), "start") for i in idx] for idx in starts_idx]
    test_images = read_idx_file(_find(FASHION_MNIST, "t10k-images-idx3-ubyte"))  # type: ignore[arg-type]
    test_labels = read_idx_file(_find(FASHION_MNIST, "t10k-labels-idx1-ubyte"))  # type: ignore[arg-type]
    for i in range(min(args.test, len(test_labels))):
        p = folder / "test" / names[int(test_labels[i])] / f"{i:05d}.png"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(test_images[i]).save(p)
    return pool, truth, starts


def run(cmd: list[str], log: Path) -> float:
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise SystemExit(f"command failed (see {log}): {' '.join(cmd)}")
    return time.perf_counter() - t


def labels_csv(path: Path, paths: list[str], truth: dict[str, str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows((p, truth[p]) for p in paths)
    return path


def train_and_test(specs: list[Path], seed: int, epochs: int, out: Path, test: Path, log: Path) -> tuple[float, float]:
    """(test top-1, seconds) of the recipe trained on ``specs``."""
    if (out / "test" / "metrics.json").is_file():  # done by an earlier, interrupted run
        return json.loads((out / "test" / "metrics.json").read_text())["top1"], 0.0
    shutil.rmtree(out, ignore_errors=True)
    data = [a for s in specs for a in ("--data", str(s))]
    took = run([str(BIN / "imgcls"), "train", *data, *RECIPE, "--epochs", str(epochs), "--seed", str(seed),
                "--cache", "memory", "--out", str(out / "run")], log)  # fmt: skip
    took += run([str(BIN / "imgcls"), "evaluate", "--model", str(out / "run" / "model"), "--data", str(test),
                 "--split", "all", "--out", str(out / "test")], log)  # fmt: skip
    return json.loads((out / "test" / "metrics.json").read_text())["top1"], took


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The labels at which ``curve`` ((labels, accuracy) by round) first reaches ``target``,
    interpolated linearly between rounds; None if it never does."""
    for (n0, a0), (n1, a1) in itertools.pairwise(curve):
        if a1 >= target:
            if a0 >= target:
                return float(n0)
            return n0 + (n1 - n0) * (target - a0) / (a1 - a0)
    return float(curve[0][0]) if curve and curve[0][1] >= target and len(curve) == 1 else None


def add_data_options(ap: argparse.ArgumentParser) -> None:
    """The options that decide the data, the start sets and the recipe's length (and so the
    folders the rounds are kept in): shared with ``bench_suggest_bursts.py``."""
    ap.add_argument("--start", type=int, default=500)
    ap.add_argument("--pool", type=int, default=20000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--work", type=Path, default=BENCH / "label-less")
    ap.add_argument("--json", type=Path)


def run_tag(args: argparse.Namespace, per_round: int) -> str:
    """The folder of one benchmark's settings under ``--work`` (each seed's rounds below it)."""
    return f"p{args.pool}-s{args.start}-r{per_round}-e{args.epochs}-t{args.test}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-round", type=int, default=500)
    ap.add_argument("--strategies", nargs="+", default=["auto", "random"])
    add_data_options(ap)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "log.txt"
    _pool, truth, starts = write_pngs(args.work / "data", args)
    test = args.work / "data" / "test"
    t0 = time.perf_counter()
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {s: {} for s in args.strategies}
    seconds: dict[str, float] = {s: 0.0 for s in args.strategies}
    tag = run_tag(args, args.per_round)
    for k, seed in enumerate(args.seeds):
        folder = args.work / tag / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        start = labels_csv(folder / "start.csv", starts[k], truth)
        acc0, took = train_and_test([start], seed, args.epochs, folder / "round0", test, log)
        print(f"seed {seed}: {args.start} labels: top-1 {acc0:.4f} ({took:.0f} s)", flush=True)
        for strategy in args.strategies:
            specs, curve, model = [start], [(args.start, acc0)], folder / "round0" / "run" / "model"
            for r in range(1, args.rounds + 1):
                here = folder / strategy / f"round{r}"
                here.mkdir(parents=True, exist_ok=True)
                picks = here / "picks.csv"
                if not picks.is_file():
                    t = time.perf_counter()
                    run([str(BIN / "imgcls"), "suggest", "--model", str(model), "--n", str(args.per_round),
                         "--strategy", strategy, "--seed", str(seed), "--out", str(here / "next.csv"),
                         "--labelled", *map(str, specs), "--", str(args.work / "data" / "pool")], log)  # fmt: skip
                    seconds[strategy] += time.perf_counter() - t
                    with open(here / "next.csv", newline="") as f:
                        chosen = [row["path"] for row in csv.DictReader(f)]
                    if len(chosen) != args.per_round:
                        raise SystemExit(f"{here / 'next.csv'}: {len(chosen)} picks, not {args.per_round}")
                    labels_csv(picks, chosen, truth)
                specs = [*specs, picks]
                acc, took = train_and_test(specs, seed, args.epochs, here / "trained", test, log)
                seconds[strategy] += took
                labelled = args.start + r * args.per_round
                curve.append((labelled, acc))
                model = here / "trained" / "run" / "model"
                print(f"seed {seed}: {strategy:>6} {labelled} labels: top-1 {acc:.4f}", flush=True)
            curves[strategy][seed] = curve
    rows: dict[str, object] = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "recipe": RECIPE}  # fmt: skip
    for strategy, by_seed in curves.items():
        per_round = list(zip(*[[a for _, a in c] for c in by_seed.values()], strict=True))
        rows[strategy] = {
            "labels": [n for n, _ in next(iter(by_seed.values()))],
            "top1_per_seed": {str(s): [round(a, 4) for _, a in c] for s, c in by_seed.items()},
            "top1_mean": [round(statistics.fmean(a), 4) for a in per_round],
        }
    if "random" in curves:
        final = args.start + args.rounds * args.per_round
        for strategy in args.strategies:
            if strategy == "random":
                continue
            reach = []
            for seed in args.seeds:
                target = curves["random"][seed][-1][1]
                reach.append(labels_to_reach(curves[strategy][seed], target))
            rows[f"{strategy}_labels_to_reach_random_at_{final}"] = [None if r is None else round(r) for r in reach]
            mean = list(zip(rows[strategy]["labels"], rows[strategy]["top1_mean"], strict=True))  # type: ignore[index]
            target = rows["random"]["top1_mean"][-1]  # type: ignore[index]
            on_mean = labels_to_reach(mean, target)
            rows[f"{strategy}_mean_curve_labels_to_reach_random_mean_at_{final}"] = on_mean and round(on_mean)
            rows[f"{strategy}_target_met_on_the_mean_curves"] = on_mean is not None and on_mean <= 0.7 * final
            rows[f"{strategy}_target_met_on_every_seed"] = all(r is not None and r <= 0.7 * final for r in reach)
    rows["seconds"] = {s: round(v, 1) for s, v in seconds.items()}
    rows["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report("label_less", rows, args.json)


if __name__ == "__main__":
    main()
