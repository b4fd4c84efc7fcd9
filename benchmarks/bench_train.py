"""Training speed: imgcls against the plain torchvision loop, whole processes, same data.

ResNet-18 at 224 px from scratch, 8 classes x 40 JPEGs of 1024x768 (32 train + 8 validation per
class, made from scikit-image's photographs), 3 epochs with a validation pass each, batch 32.
imgcls runs with its defaults (bf16 autocast where the CPU has it, channels-last, decode-once
cache started empty in every run, ONNX export at the end). Prints the medians and the ratio.

    .venv/bin/python benchmarks/bench_train.py --runs 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import BENCH, BIN, ROOT, make_dataset, median, report, scratch, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data", type=Path, default=BENCH / "train-1024x768")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    data = make_dataset(args.data, {"train": 32, "val": 8}, (1024, 768))
    base_t, ours_t, base_acc, ours_acc = [], [], [], []
    for run in range(args.runs):
        with scratch() as work:
            wall, _, out = timed([str(BIN / "python"), str(ROOT / "baselines" / "train_plain.py"), str(data),
                                  str(args.epochs), str(args.batch_size), str(work / "plain.safetensors")])  # fmt: skip
            base_t.append(wall)
            base_acc.append(json.loads(out.strip().splitlines()[-1])["val_top1"])
            wall, _, _ = timed([str(BIN / "imgcls"), "train", "--data", str(data), "--arch", "resnet18", "--pretrained",
                                "none", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                                "--image-size", "224", "--seed", str(run), "--out", str(work / "run"),
                                "--cache-dir", str(work / "cache")])  # fmt: skip
            ours_t.append(wall)
            last = (work / "run" / "metrics.jsonl").read_text().splitlines()[-1]
            ours_acc.append(json.loads(last)["val_top1"])
            print(f"run {run + 1}: baseline {base_t[-1]:.1f}s (top-1 {base_acc[-1]:.3f}), "
                  f"imgcls {ours_t[-1]:.1f}s (top-1 {ours_acc[-1]:.3f})", flush=True)  # fmt: skip
    report(
        "train",
        {
            "baseline_seconds": round(median(base_t), 1),
            "imgcls_seconds": round(median(ours_t), 1),
            "speedup": round(median(base_t) / median(ours_t), 2),
            "baseline_val_top1": round(median(base_acc), 3),
            "imgcls_val_top1": round(median(ours_acc), 3),
            "runs": args.runs,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
