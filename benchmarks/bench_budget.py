"""``--time-budget``: does the whole command end on time, and does its schedule end where it
was planned (the learning rate at the cosine's end)? Wall time of the whole process against the
budget, for a few budgets, on scikit-learn's digits written as PNG files (and Fashion-MNIST with
--fashion-mnist, where installed).

    .venv/bin/python benchmarks/bench_budget.py --budgets 15s 30s 60s
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import BENCH, BIN, fashion_mnist, report, scratch, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", nargs="+", default=["15s", "30s", "60s"])
    ap.add_argument("--fashion-mnist", action="store_true", help="train on /usr/share/datasets/fashion-mnist")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from imgcls.demo import write_digits
    from imgcls.engine.budget import parse_duration

    data = fashion_mnist() if args.fashion_mnist else BENCH / "digits"
    if not args.fashion_mnist and not (data / "train").is_dir():
        write_digits(data)
    rows = {}
    with scratch() as work:
        for budget in args.budgets:
            run = work / f"run-{budget}"
            wall, _, _ = timed([str(BIN / "imgcls"), "train", "--data", str(data), "--out", str(run), "--time-budget",
                                budget, "--pretrained", "none", "--cache-dir", str(work / "cache")])  # fmt: skip
            history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            peak = max(h["lr"] for h in history)
            rows[budget] = {
                "wall_seconds": round(wall, 1),
                "budget_seconds": parse_duration(budget),
                "wall_over_budget": round(wall / parse_duration(budget), 3),
                "epochs": len(history),
                "last_lr_over_peak": round(history[-1]["lr"] / peak, 4),
                "val_top1": round(history[-1].get("val_top1", float("nan")), 4),
            }
    report("time_budget", {"data": str(data), "runs": rows}, args.json)


if __name__ == "__main__":
    main()
