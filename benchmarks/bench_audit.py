"""The audit's measured effect: flip a share of the training labels of a real data set, run
``imgcls audit``, and compare what it flags with the flips (precision and recall of the flagged
set, and of the first N of its ranked list, N the number of flips); then train on the clean
labels, on the noisy ones, and on the noisy ones with the audit's suggestions applied through
``--corrections`` two ways: every flagged image relabelled to the label the models suggest
("relabelled"), or left out ("pruned", what cleanlab's CleanLearning does). Each is tested on the
untouched test images. Targets (issue 18): recall >= 0.8 at precision >= 0.8, and the cleaned
model within 1 point of top-1 of the clean one.

Data: scikit-learn's digits (default: 1,355 training / 442 test images) or a class-balanced
subset of Fashion-MNIST (``--dataset fashion-mnist``, Debian's dataset-fashion-mnist). Every
training uses the same settings as the audit's folds (``--arch``, default ``auto``: imgcls's
choice for the images, ``--epochs``); each variant is trained with every ``--seeds`` value and
the mean is reported.

    .venv/bin/python benchmarks/bench_audit.py [--dataset digits] [--noise 0.1] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from common import BENCH, BIN, FASHION_MNIST, fashion_mnist, report, scratch, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def fashion_subset(folder: Path, per_class_train: int, per_class_test: int) -> Path:
    """PNG files of the first ``per_class_*`` images of each class (train from the 60,000, test
    from the 10,000 t10k images)."""
    from PIL import Image

    from imgcls.data.sources.idx import FASHION_MNIST_CLASSES, _find, read_idx_file

    if (folder / "test").is_dir():
        return folder
    for split, stem, per_class in (("train", "train", per_class_train), ("test", "t10k", per_class_test)):
        images = read_idx_file(_find(FASHION_MNIST, f"{stem}-images-idx3-ubyte"))  # type: ignore[arg-type]
        labels = read_idx_file(_find(FASHION_MNIST, f"{stem}-labels-idx1-ubyte"))  # type: ignore[arg-type]
        for k, name in enumerate(FASHION_MNIST_CLASSES):
            d = folder / split / name.replace("/", "-")
            d.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == k)[:per_class]:
                Image.fromarray(images[i]).save(d / f"{i:05d}.png")
    return folder


def listing(folder: Path) -> list[tuple[str, str]]:
    return sorted((str(p.resolve()), p.parent.name) for p in folder.glob("*/*.png"))


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return path


def flip(rows: list[tuple[str, str]], share: float, seed: int) -> tuple[list[tuple[str, str]], set[str]]:
    """The rows with ``share`` of them given another class, uniformly at random; the flipped paths."""
    rng = np.random.default_rng(seed)
    classes = sorted({label for _, label in rows})
    chosen = set(rng.choice(len(rows), size=round(share * len(rows)), replace=False).tolist())
    out = []
    for i, (path, label) in enumerate(rows):
        if i in chosen:
            label = str(rng.choice([c for c in classes if c != label]))
        out.append((path, label))
    return out, {rows[i][0] for i in chosen}


def test_top1(train_args: list[str], test: Path, work: Path, name: str) -> tuple[float, float]:
    """(top-1 on the test images, training wall seconds) of one training."""
    wall, _, _ = timed([str(BIN / "imgcls"), "train", *train_args, "--out", str(work / name)])
    timed([str(BIN / "imgcls"), "evaluate", "--model", str(work / name / "model"), "--data", str(test),
           "--split", "all", "--out", str(work / f"{name}-eval")])  # fmt: skip
    return json.loads((work / f"{name}-eval" / "metrics.json").read_text())["top1"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["digits", "fashion-mnist"], default="digits")
    ap.add_argument("--per-class", type=int, default=600, help="fashion-mnist: training images per class")
    ap.add_argument("--noise", type=float, default=0.1, help="share of the training labels flipped")
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from imgcls.demo import write_digits

    if args.dataset == "digits":
        data = BENCH / "digits"
        if not (data / "test").is_dir():
            write_digits(data)
    else:
        fashion_mnist()
        data = fashion_subset(BENCH / f"fashion-mnist-{args.per_class}", args.per_class, args.per_class // 3)
    with scratch() as work:
        result = run(args, data, work)
    report("audit_label_noise", result, args.json)


def run(args: argparse.Namespace, data: Path, work: Path) -> dict:
    clean_rows = listing(data / "train")
    noisy_rows, flipped = flip(clean_rows, args.noise, seed=12345)
    clean, noisy = write_manifest(work / "clean.csv", clean_rows), write_manifest(work / "noisy.csv", noisy_rows)
    test = write_manifest(work / "test.csv", listing(data / "test"))
    common = ["--arch", args.arch, "--pretrained", "none", "--epochs", str(args.epochs),
              "--cache-dir", str(work / "cache"), "--no-export-onnx"]  # fmt: skip
    audit_wall, _, _ = timed([str(BIN / "imgcls"), "audit", "--data", str(noisy), "--out", str(work / "audit"),
                              "--folds", str(args.folds), "--no-duplicates", *common])  # fmt: skip
    with open(work / "audit" / "label_issues.csv", newline="") as f:
        issues = list(csv.DictReader(f))
    flagged = [r["path"] for r in issues]
    first = flagged[: len(flipped)]
    truth = dict(clean_rows)
    variants = {"clean": ["--data", str(clean)], "noisy": ["--data", str(noisy)]}
    for name, action in (("relabelled", "relabel"), ("pruned", "reject")):
        with open(work / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "action"])
            w.writerows([r["path"], r["suggested"], action] for r in issues)
        variants[name] = ["--data", str(noisy), "--corrections", str(work / f"{name}.csv")]
    top1: dict[str, list[float]] = {v: [] for v in variants}
    for seed in args.seeds:
        for name, extra in variants.items():
            acc, _ = test_top1([*extra, *common, "--seed", str(seed)], test, work, f"{name}-{seed}")
            top1[name].append(acc)
            print(f"seed {seed} {name}: test top-1 {acc:.4f}", flush=True)
    mean = {v: statistics.mean(a) for v, a in top1.items()}
    hits = len(set(flagged) & flipped)
    precision, recall = hits / max(1, len(flagged)), hits / max(1, len(flipped))
    best_cleaned = max(mean["relabelled"], mean["pruned"])
    return {
        "dataset": args.dataset, "train_images": len(clean_rows), "test_images": len(listing(data / "test")),
        "flipped": len(flipped), "flagged": len(flagged), "flagged_and_flipped": hits,
        "precision": round(precision, 4), "recall": round(recall, 4),
        "first_n_precision_recall": round(len(set(first) & flipped) / max(1, len(flipped)), 4),
        "suggestion_is_the_true_label": round(
            sum(1 for r in issues if r["path"] in flipped and r["suggested"] == truth[r["path"]]) / max(1, hits), 4),
        "audit_wall_seconds": round(audit_wall, 1), "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "test_top1": {v: [round(a, 4) for a in accs] for v, accs in top1.items()},
        "test_top1_mean": {v: round(m, 4) for v, m in mean.items()},
        "minus_clean_points": {v: round(100 * (m - mean["clean"]), 2) for v, m in mean.items() if v != "clean"},
        "targets_met": precision >= 0.8 and recall >= 0.8 and best_cleaned >= mean["clean"] - 0.01,
    }  # fmt: skip


if __name__ == "__main__":
    main()
