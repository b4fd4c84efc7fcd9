"""What a narrower small-image net buys under a time budget (evidence for issue 17, part 3: a
budget that chooses the network for the machine). Trains Fashion-MNIST with ``--time-budget`` on
``smallnet`` with other stage widths (registered here, in this process, as ``smallnet_x``), then
tests on the 10,000 t10k images. Run it with PyTorch held to AVX2 to see the fp32 tier:

    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_smallnet_width.py --widths 48,96,192
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

from common import fashion_mnist, report, scratch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="48,96,192", help="the three stage widths (smallnet: 64,128,256)")
    ap.add_argument("--budget", default="10m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = fashion_mnist()
    import imgcls
    from imgcls.evaluate import evaluate
    from imgcls.models import smallnet
    from imgcls.models.registry import ModelEntry, register_model

    widths = tuple(int(v) for v in args.widths.split(","))
    build = functools.partial(smallnet._build, widths=widths)
    register_model(ModelEntry(name="smallnet_x", family="smallnet", source="imgcls", build=build,
                              description=f"smallnet, widths {widths}", options=("norm", "attn"),
                              default_norm="batch"))  # fmt: skip
    with scratch() as work:
        t = time.perf_counter()
        run = imgcls.train(data, out=work / "run", arch="smallnet_x", time_budget=args.budget, seed=args.seed,
                           pretrained="none", cache_dir=work / "cache")  # fmt: skip
        wall = time.perf_counter() - t
        epochs = len((run / "metrics.jsonl").read_text().splitlines())
        top1 = evaluate(run / "model", split="test").metrics["top1"]
    report("smallnet_width", {"widths": list(widths), "train_wall_seconds": round(wall, 1), "epochs": epochs,
                              "test_top1": round(top1, 4), "seed": args.seed}, args.json)  # fmt: skip


if __name__ == "__main__":
    main()
