"""Bursts in the pool: does ``imgcls suggest`` spend its picks on near-identical frames?

A camera trap takes several frames per trigger, nearly alike; a pool of such bursts is where
uncertainty alone goes wrong (one uncertain bush, twenty picks). This check adds bursts to the
label-less benchmark's Fashion-MNIST pool (``bench_label_less.py``): ``--bursts`` pool images
each get ``--frames`` - 1 near copies (brightness within ``--brightness``, pixel noise of
``--noise`` grey levels, shifted by up to ``--shift`` pixels). Then ``imgcls suggest --n 500``
with ``auto`` and with ``margin`` (the same model: the benchmark's seed-0 start model, trained first if missing; the
scores of the second run come from the kept scores), and counted: how many picks are burst
frames, from how many bursts, at most how many from one burst. The frames' similarity to their
burst's first image (centred embeddings, as suggest measures them) is reported too.

It measures the choice, not the accuracy that follows (``bench_label_less.py`` does that). The
first run writes the copies (under BENCH/label-less/data/bursts-...) and scores the pool (about
75 s on 2 cores); a run again with the same settings re-ranks from the kept scores in seconds, so
two versions of the ranking are compared by running the script under each
(``PYTHONPATH=<other tree>/src``). The figures are in BENCHMARKS.md ("Label less").

    .venv/bin/python benchmarks/bench_suggest_bursts.py [--bursts 200] [--frames 20] [--n 500]
        [--shift 0] [--noise 2] [--brightness 0.03]
        [--seed 0] [--json F]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from bench_label_less import add_data_options, labels_csv, run_tag, train_and_test, write_pngs
from common import BIN, report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def write_bursts(pool: list[str], folder: Path, args: argparse.Namespace) -> dict[str, int]:
    """Burst number by path: ``bursts`` pool images (the first frame of each, left where it is)
    and their ``frames`` - 1 near copies written under ``folder/bNNN/``."""
    rng = np.random.default_rng(args.seed)
    members: dict[str, int] = {}
    for k, i in enumerate(rng.choice(len(pool), size=args.bursts, replace=False)):
        members[pool[i]] = k
        base = np.asarray(Image.open(pool[i]), dtype=np.float32)
        for j in range(1, args.frames):
            p = folder / f"b{k:03d}" / f"f{j:02d}.png"
            if not p.exists():
                dy, dx = rng.integers(-args.shift, args.shift + 1, size=2)
                x = np.roll(base, (int(dy), int(dx)), axis=(0, 1)) * rng.uniform(
                    1 - args.brightness, 1 + args.brightness
                )
                x = np.clip(x + rng.normal(0, args.noise, size=x.shape), 0, 255).astype(np.uint8)
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(x).save(p)
            members[str(p.resolve())] = k
    return members


def similarities(cache: Path, members: dict[str, int], bursts: Path) -> dict[str, float]:
    """Each near copy's cosine similarity to its burst's first frame (centred embeddings)."""
    from imgcls.suggest.rank import centred
    from imgcls.suggest.score import load_cache

    scores = load_cache(cache)
    emb = centred(scores.emb).astype(np.float32)
    at = {p: i for i, p in enumerate(scores.paths)}
    copy = {p: p.startswith(str(bursts.resolve()) + "/") for p in members}  # else the pool image itself
    first = {k: at[p] for p, k in members.items() if not copy[p]}
    sims = np.array([emb[at[p]] @ emb[first[k]] for p, k in members.items() if copy[p]])
    return {"median": round(float(np.median(sims)), 4), "min": round(float(sims.min()), 4),
            "share_at_or_above_0.98": round(float((sims >= 0.98).mean()), 4)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bursts", type=int, default=200)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--shift", type=int, default=0, help="pixels a near copy may be shifted by (default 0)")
    ap.add_argument("--noise", type=float, default=2.0, help="grey levels of pixel noise (default 2)")
    ap.add_argument("--brightness", type=float, default=0.03, help="brightness change, a share (default 0.03)")
    ap.add_argument("--seed", type=int, default=0)
    add_data_options(ap)
    args = ap.parse_args()
    args.seeds = [args.seed]
    pool, truth, starts = write_pngs(args.work / "data", args)
    folder = args.work / run_tag(args, 500) / f"seed{args.seed}"  # bench_label_less's default rounds' start model
    folder.mkdir(parents=True, exist_ok=True)
    start = labels_csv(folder / "start.csv", starts[0], truth)
    test, log = args.work / "data" / "test", args.work / "log.txt"
    train_and_test([start], args.seed, args.epochs, folder / "round0", test, log)  # the start model (kept)
    tag = f"bursts-{args.bursts}x{args.frames}-s{args.shift}-n{args.noise:g}-b{args.brightness:g}-seed{args.seed}"
    bursts = args.work / "data" / tag
    members = write_bursts(pool, bursts, args)
    out = args.work / tag / "next.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, object] = {"settings": {k: str(v) for k, v in vars(args).items()},
                               "pool_images": len(pool) + len(members) - args.bursts}  # fmt: skip
    for strategy in ("auto", "margin"):
        t = time.perf_counter()
        cmd = [str(BIN / "imgcls"), "suggest", "--model", str(folder / "round0" / "run" / "model"), "--n", str(args.n),
               "--strategy", strategy, "--labelled", str(start), "--out", str(out), "--",
               str(args.work / "data" / "pool"), str(bursts)]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(out, newline="") as f:
            picked = [r["path"] for r in csv.DictReader(f)]
        from_bursts = Counter(members[p] for p in picked if p in members)
        rows[strategy] = {"picks": len(picked), "burst_frames_picked": sum(from_bursts.values()),
                          "bursts_picked_from": len(from_bursts),
                          "most_from_one_burst": max(from_bursts.values(), default=0),
                          "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip
    rows["burst_frame_similarity_to_first"] = similarities(out.parent / ".next.csv.scores", members, bursts)
    report("suggest_bursts", rows, args.json)


if __name__ == "__main__":
    main()
