"""Memory stays flat however many inputs: peak RSS of ``imgcls predict`` over 20,000 inputs
against 1,000 (the same 1,000 small JPEGs linked 20 times), whole processes, PyTorch backend.
Target: within 10%.

    .venv/bin/python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from common import BENCH, BIN, cached_model, make_dataset, peak_rss_mib, report, scratch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with scratch() as work:
        small = make_dataset(BENCH / "memory-160x120", {"": 125}, (160, 120))
        files = sorted(small.rglob("*.jpg"))[:1000]
        model = cached_model("model-smallnet", ["--data", str(small), "--arch", "smallnet", "--image-size", "32",
                             "--epochs", "2"], work)  # fmt: skip
        few, many = work / "few", work / "many"
        few.mkdir()
        for i, f in enumerate(files):
            os.link(f, few / f"{i:05d}.jpg")
        for k in range(20):
            (many / f"copy{k:02d}").mkdir(parents=True)
            for i, f in enumerate(files):
                os.link(f, many / f"copy{k:02d}" / f"{i:05d}.jpg")
        rows = {}
        for name, folder in (("1000", few), ("20000", many)):
            wall, rss = peak_rss_mib([str(BIN / "imgcls"), "predict", "--model", str(model), str(folder),
                                      "--out", str(work / f"{name}.csv"), "--backend", "torch"])  # fmt: skip
            rows[name] = (wall, rss)
            print(f"{name} inputs: {wall:.1f}s, peak RSS {rss:.0f} MiB", flush=True)
        report(
            "memory",
            {
                "peak_rss_mib_1000": round(rows["1000"][1]),
                "peak_rss_mib_20000": round(rows["20000"][1]),
                "ratio": round(rows["20000"][1] / rows["1000"][1], 3),
            },
            args.json,
        )


if __name__ == "__main__":
    main()
