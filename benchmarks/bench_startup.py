"""Start-up: one image, whole process, ``imgcls predict`` (its defaults: a model directory with
the ONNX export training writes, so ONNX Runtime runs it without importing torch) against the
plain PyTorch script. Medians of several runs.

    .venv/bin/python benchmarks/bench_startup.py --runs 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_predict import trained_model
from common import BENCH, BIN, ROOT, make_dataset, median, report, scratch, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with scratch() as work:
        model = trained_model(work)
        image = sorted(make_dataset(BENCH / "train-1024x768", {"train": 32, "val": 8}, (1024, 768)).rglob("*.jpg"))[0]
        base, ours, ours_torch = [], [], []
        for _ in range(args.runs):
            base.append(timed([str(BIN / "python"), str(ROOT / "baselines" / "predict_plain.py"),
                               str(model / "model.safetensors"), "8", str(work / "b.csv"), str(image)])[0])  # fmt: skip
            ours.append(timed([str(BIN / "imgcls"), "predict", "--model", str(model), str(image)])[0])
            ours_torch.append(
                timed([str(BIN / "imgcls"), "predict", "--model", str(model), str(image), "--backend", "torch"])[0]
            )
        report(
            "startup",
            {
                "baseline_seconds": round(median(base), 2),
                "imgcls_seconds": round(median(ours), 2),
                "imgcls_torch_backend_seconds": round(median(ours_torch), 2),
                "speedup": round(median(base) / median(ours), 2),
                "runs": args.runs,
            },
            args.json,
        )


if __name__ == "__main__":
    main()
