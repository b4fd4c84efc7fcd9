"""Decode-only throughput: the decode-once store's build (``data.store.build_store``) and
predict's decoding (``predict.decode.decode_stream``, which evaluate and serve share), with 1, 2,
4 ... workers up to the machine's cores, on generated JPEGs of 1024x768 and of 4000x3000 (decoded
in draft mode), and the scaling: N workers' rate over N times one worker's (the target is 0.8).

Nothing is timed while the machine is busy: before each measurement the one-minute load average
must be under ``--max-load`` (default 1.5; it waits up to ``--wait`` seconds, then records the
load it measured at). ``lscpu`` is recorded with the figures.

    .venv/bin/python benchmarks/bench_decode.py                    # 1..cores workers, median of 3
    .venv/bin/python benchmarks/bench_decode.py --json out.json --runs 5
    .venv/bin/python benchmarks/bench_decode.py --decoder cuda     # predict's decoding on the GPU too
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import BENCH, make_dataset, median, report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

SETS = {"1024x768": ((1024, 768), 32), "4000x3000": ((4000, 3000), 8)}  # size, images per class (8 classes)


def worker_counts(cores: int) -> list[int]:
    """1, 2, 4 ... and the core count itself."""
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    return [*out, cores]


def quiet(max_load: float, wait: float) -> float:
    """Wait (up to ``wait`` s) for the one-minute load average to drop under ``max_load``; the load."""
    deadline = time.monotonic() + wait
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(5)
    return round(os.getloadavg()[0], 2)


def rate_store(paths: list[str], workers: int) -> float:
    """Images per second of the store's build (in memory: decoding, not disk writes)."""
    import numpy as np

    from imgcls.config import PreprocessConfig
    from imgcls.data.store import build_store
    from imgcls.data.table import DataTable

    table = DataTable("folder", Path("."), paths, np.zeros(len(paths), dtype=np.int64), ["x"])
    t = time.perf_counter()
    store, skipped = build_store(table, PreprocessConfig(), cache="memory", workers=workers)
    assert not skipped and store.ok.all()
    return len(paths) / (time.perf_counter() - t)


def rate_predict(paths: list[str], workers: int, decoder: str) -> float:
    """Images per second of predict's decoding to model inputs, pool start included (``decoder``
    other than cpu: the GPU's share as predict would plan it, measured once and remembered)."""
    from imgcls.config import PreprocessConfig
    from imgcls.predict.decoders import decode_files

    t = time.perf_counter()
    n = 0
    for _, arr, err in decode_files(paths, PreprocessConfig(), workers=workers, decoder=decoder, say=print):
        assert err is None and arr is not None, err
        n += 1
    return n / (time.perf_counter() - t)


def measure(kind: str, paths: list[str], counts: list[int], args: argparse.Namespace) -> dict[str, object]:
    rates: dict[int, float] = {}
    loads: dict[int, float] = {}
    for w in counts:
        runs = []
        for _ in range(args.runs):
            loads[w] = max(loads.get(w, 0.0), quiet(args.max_load, args.wait))
            runs.append(rate_store(paths, w) if kind == "store" else rate_predict(paths, w, args.decoder))
        rates[w] = round(median(runs), 1)
        print(f"{kind:7s} {w} workers: {rates[w]:7.1f} img/s (load {loads[w]})", flush=True)
    one = rates[counts[0]]
    scaling = {w: round(r / (w * one), 3) for w, r in rates.items()}
    return {"img_per_s": rates, "scaling": scaling, "load_before": loads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--wait", type=float, default=600.0, help="longest wait for a quiet machine, seconds")
    ap.add_argument("--decoder", default="cpu", help="predict's decoder: cpu | cuda | auto")
    ap.add_argument("--sets", default=",".join(SETS), help="which image sets")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    from imgcls.runtime import physical_cores

    counts = worker_counts(physical_cores())
    rows: dict[str, object] = {"workers": counts, "decoder": args.decoder}
    for name in args.sets.split(","):
        size, per_class = SETS[name]
        root = make_dataset(BENCH / f"decode-{name}", {"": per_class}, size)
        paths = sorted(str(p) for p in root.rglob("*.jpg"))
        rows[name] = {kind: measure(kind, paths, counts, args) for kind in ("store", "predict")}
        rows[name]["images"] = len(paths)  # type: ignore[index]
    rows["lscpu"] = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:20]
    report("decode", rows, args.json)


if __name__ == "__main__":
    main()
