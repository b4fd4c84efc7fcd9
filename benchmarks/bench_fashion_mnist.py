"""Fashion-MNIST (Debian package dataset-fashion-mnist): ``imgcls train --data
/usr/share/datasets/fashion-mnist --time-budget 10m`` with otherwise default settings, then
``imgcls evaluate --split test`` on the 10,000 t10k images. Target: >= 94% top-1, the train
command inside 10 minutes of wall time. The budget chooses the network for the machine
(``budget.json``: reported); ``--arch`` / ``--progressive-resize`` fix a setting instead, to
measure what the other candidates would have reached.

    .venv/bin/python benchmarks/bench_fashion_mnist.py [--seed 0] [--arch smallnet_075]
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_fashion_mnist.py  # the fp32 tier
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import BIN, fashion_mnist, report, scratch, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="10m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", help="train this network (default: the budget chooses)")
    ap.add_argument("--progressive-resize", help="on, off or a starting size (default: the budget chooses)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = fashion_mnist()
    fixed = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in ("arch", "progressive_resize") and v]
    with scratch() as work:
        wall, _, _ = timed([str(BIN / "imgcls"), "train", "--data", str(data), "--time-budget", args.budget,
                            "--seed", str(args.seed), "--out", str(work / "run"), *fixed])  # fmt: skip
        epochs = len((work / "run" / "metrics.jsonl").read_text().splitlines())
        config = (work / "run" / "config.yaml").read_text()
        arch = next(line.split(":", 1)[1].strip() for line in config.splitlines() if line.strip().startswith("arch:"))
        budget = work / "run" / "budget.json"
        reason = json.loads(budget.read_text())["reason"] if budget.exists() else "fixed by the command line"
        timed([str(BIN / "imgcls"), "evaluate", "--model", str(work / "run" / "model"), "--split", "test",
                           "--out", str(work / "report")])  # fmt: skip
        m = json.loads((work / "report" / "metrics.json").read_text())
        report(
            "fashion_mnist",
            {
                "arch": arch,
                "chosen_because": reason,
                "train_wall_seconds": round(wall, 1),
                "epochs": epochs,
                "test_top1": round(m["top1"], 4),
                "test_nll": round(m["nll"], 4),
                "test_ece": round(m["ece"], 4),
                "test_images": m["num_images"],
                "seed": args.seed,
            },
            args.json,
        )


if __name__ == "__main__":
    main()
