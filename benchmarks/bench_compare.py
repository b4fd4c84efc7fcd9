"""The seed's degradation experiment with ``imgcls compare`` (He et al. 2016, Figures 1 and 6):
plain20, plain56, resnet20 and resnet56 trained on the same split of Fashion-MNIST for the same
epochs; does the deeper *plain* network train worse (a higher training error, not only a higher
test error) while the deeper *residual* one does not?

On two CPU cores the 60,000 images do not fit a 20-minute budget, so the compare trains on a
class-balanced subset of the training images (tested on a subset of the 10,000 t10k images).
The subset's size is chosen from a probe: each network's training step is timed on a batch
first, and the images per class are those that let all four train ``--epochs`` epochs in
``--minutes`` (the evaluations, measurements and start-ups come on top: keep a margin).
Settings as the paper's CIFAR runs where they apply: SGD with momentum 0.9, learning rate 0.1,
weight decay 1e-4, batch 128, no label smoothing, shifts and flips; 28x28 inputs (Fashion-MNIST's
own size). Prints the compare's table, then the per-epoch training error of each network, and
writes the report under ``--out``.

    .venv/bin/python benchmarks/bench_compare.py [--minutes 15] [--epochs 6] [--out /tmp/imgcls-bench/deg]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_audit import fashion_subset
from common import BENCH, BIN, report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

ARCHS = ("plain20", "plain56", "resnet20", "resnet56")
KEPT = ("name", "accuracy", "balanced_accuracy", "nll", "ece", "throughput", "latency_ms", "params", "macs",
        "train_seconds", "epochs")  # fmt: skip
BATCH = 128
TRAIN = ["--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "1e-4", "--momentum", "0.9", "--batch-size",
         str(BATCH), "--label-smoothing", "0", "--augment", "small", "--image-size", "28", "--pretrained", "none",
         "--seed", "0"]  # fmt: skip


def step_seconds(arch: str, size: int = 28, batch: int = 64, steps: int = 3) -> float:
    """Seconds per training image of ``arch``: forward and backward passes of a batch, timed
    after a warm-up step (as the engine trains: channels-last, float32 on this CPU)."""
    import torch

    from imgcls.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    took = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        took.append(time.perf_counter() - t)
    return min(took[1:]) / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=14.0, help="training time of the four networks together")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--max-per-class", type=int, default=6000)
    ap.add_argument("--out", type=Path, default=BENCH / "compare-degradation")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    per_image = {a: step_seconds(a) for a in ARCHS}
    # the training fifths of a class's images, every epoch, for each network; the engine's own work around
    # the steps (batches, augmentation, validation, the final passes) about 1.3x the probe's
    per_class = int(args.minutes * 60 / (1.3 * args.epochs * 10 * 0.8 * sum(per_image.values())))
    per_class = max(50, min(args.max_per_class, per_class))
    print(f"probe: {', '.join(f'{a} {1e3 * s:.2f} ms' for a, s in per_image.items())} per training image; "
          f"{per_class} images per class ({10 * per_class} in all, a fifth of them held out for validation), "
          f"{args.epochs} epochs", flush=True)  # fmt: skip
    data = fashion_subset(BENCH / f"fashion-compare-{per_class}-{args.test_per_class}", per_class, args.test_per_class)
    shutil.rmtree(args.out, ignore_errors=True)
    cmd = [str(BIN / "imgcls"), "compare", "--data", str(data), "--arch", ",".join(ARCHS), "--epochs",
           str(args.epochs), *TRAIN, "--out", str(args.out)]  # fmt: skip
    print("$ " + " ".join(cmd[0:1] + [c if " " not in c else repr(c) for c in cmd[1:]]), flush=True)
    started = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    sys.stderr.write(r.stderr[-3000:])
    print(r.stdout)
    if r.returncode not in (0, 1):
        raise SystemExit(f"compare failed ({r.returncode})")
    document = json.loads((args.out / "compare.json").read_text())
    curves = {}
    for row in document["configurations"]:
        history = [json.loads(line) for line in (args.out / row["run"] / "metrics.jsonl").read_text().splitlines()]
        curves[row["name"]] = {
            "train_error": [round(1 - h["train_top1"], 4) for h in history],
            "train_loss": [round(h["train_loss"], 4) for h in history],
            "val_error": [round(1 - h["val_top1"], 4) for h in history],
        }
        errors = " ".join(f"{e:.3f}" for e in curves[row["name"]]["train_error"])
        print(f"{row['name']:9s} training error per epoch: {errors}  test error {1 - row['accuracy']:.4f}  "
              f"({row['train_seconds']:.0f} s)")  # fmt: skip
    rows = {
        "command": " ".join(cmd[1:]),
        "wall_seconds": round(wall, 1),
        "per_class": per_class,
        "probe_ms_per_image": {a: round(1e3 * s, 3) for a, s in per_image.items()},
        "configurations": [{k: row.get(k) for k in KEPT} for row in document["configurations"]],
        "curves": curves,
        "pick": document["pick"]["reason"],
        "report": str(args.out / "compare.html"),
    }
    report("compare-degradation", rows, args.json)


if __name__ == "__main__":
    main()
