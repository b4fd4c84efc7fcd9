"""``--time-budget``: does the whole command end on time, on a quiet machine and when another
process takes a core halfway through, and does its schedule end where it was planned?

For each budget, ``imgcls train --time-budget B`` on scikit-learn's digits written as PNG files
(Fashion-MNIST with --fashion-mnist) is timed as a whole process: on a quiet machine, and with a
CPU-bound busy loop (a second Python process; ``--pin CORE`` holds it to one core) started at half
the budget and stopped when the run ends. Each run reports its wall time against the budget, the
epochs first planned and trained, the plan's changes (its ``plan: a -> b epochs`` lines), the
last learning rate over the peak, the saved model's validation top-1, and the machine.

    .venv/bin/python benchmarks/bench_budget.py --budgets 30s 2m 10m       # quiet and busy, each
    .venv/bin/python benchmarks/bench_budget.py --budgets 10s --modes quiet  # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from common import BENCH, BIN, fashion_mnist, report, scratch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BUSY_LOOP = "while True:\n    pass\n"
FIRST_PLAN = re.compile(r"^time budget: (\d+) epochs? planned")
CHANGE = re.compile(r"^plan: (\d+) -> (\d+) epochs")


def busy_loop(pin: int | None) -> subprocess.Popen:
    """A process that keeps one core busy (on core ``pin`` when given)."""

    def hold() -> None:
        if pin is not None:
            os.sched_setaffinity(0, {pin})

    return subprocess.Popen([sys.executable, "-c", BUSY_LOOP], preexec_fn=hold)


def train(data: Path, budget: str, mode: str, pin: int | None, work: Path) -> dict[str, Any]:
    """One budgeted run, timed from before its process starts to after it ends."""
    from imgcls.engine.budget import parse_duration

    seconds = parse_duration(budget)
    run, log = work / f"run-{budget}-{mode}", work / f"run-{budget}-{mode}.log"
    cmd = [str(BIN / "imgcls"), "train", "--data", str(data), "--out", str(run), "--time-budget", budget,
           "--pretrained", "none", "--cache-dir", str(work / "cache")]  # fmt: skip
    loop = None
    with log.open("w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            if mode == "busy":
                try:
                    proc.wait(timeout=seconds / 2)
                except subprocess.TimeoutExpired:
                    loop = busy_loop(pin)
            code = proc.wait()
            wall = time.perf_counter() - start
        finally:
            if loop is not None:
                loop.kill()
                loop.wait()
    lines = log.read_text().splitlines()
    if code != 0:
        sys.stderr.write("\n".join(lines[-20:]) + "\n")
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return summarize(run, lines, wall, seconds)


def summarize(run: Path, lines: list[str], wall: float, seconds: float) -> dict[str, Any]:
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    peak = yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"]
    model = json.loads((run / "model" / "config.json").read_text())
    planned = [int(m.group(1)) for line in lines if (m := FIRST_PLAN.match(line))]
    changes = [line for line in lines if CHANGE.match(line)]
    return {
        "wall_seconds": round(wall, 1),
        "budget_seconds": seconds,
        "wall_over_budget": round(wall / seconds, 3),
        "within_5_percent": abs(wall / seconds - 1) <= 0.05,
        "epochs_planned_first": planned[0] if planned else None,
        "epochs_trained": len(history),
        "replans": len(changes),
        "plan_changes": changes,
        "last_lr_over_peak": round(history[-1]["lr"] / peak, 6),
        "val_top1": round(model["provenance"]["metrics"].get("val_top1", float("nan")), 4),
        "chosen": next((line for line in lines if line.startswith("time budget: chose")), None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", nargs="+", default=["30s", "2m", "10m"])
    ap.add_argument("--modes", nargs="+", choices=["quiet", "busy"], default=["quiet", "busy"])
    ap.add_argument("--pin", type=int, help="hold the busy loop to this core")
    ap.add_argument("--fashion-mnist", action="store_true", help="train on /usr/share/datasets/fashion-mnist")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from imgcls.demo import write_digits

    data = fashion_mnist() if args.fashion_mnist else BENCH / "digits"
    if not args.fashion_mnist and not (data / "train").is_dir():
        write_digits(data)
    rows = {}
    with scratch() as work:
        for budget in args.budgets:
            for mode in args.modes:
                rows[f"{budget} {mode}"] = row = train(data, budget, mode, args.pin, work)
                print(f"{budget} {mode}: {row['wall_seconds']} s ({row['wall_over_budget']:.3f} of the budget), "
                      f"{row['epochs_trained']} epochs (planned {row['epochs_planned_first']}, {row['replans']} "
                      f"changes), last lr / peak {row['last_lr_over_peak']:.2g}, val top-1 {row['val_top1']}",
                      file=sys.stderr, flush=True)  # fmt: skip
    busy = {"pinned_to_core": args.pin} if "busy" in args.modes else {}
    report("time_budget", {"data": str(data), "busy_loop": {"starts_at": "half the budget", **busy}, "runs": rows},
           args.json)  # fmt: skip


if __name__ == "__main__":
    main()
