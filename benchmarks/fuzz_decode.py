"""A longer fuzz run of image decoding than the bounded one in ``make test``.

    python benchmarks/fuzz_decode.py --minutes 10

Mutates real files of every kind imgcls reads (tests/fuzzing.py) and decodes each with
``read_image``; any exception other than ``ImageError`` is a bug, printed with the input that
caused it (saved under --crashes). Prints how many inputs ran and how many were refused.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the run")
    parser.add_argument("--crashes", default="fuzz-crashes", help="folder for inputs that crash")
    args = parser.parse_args()

    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    from fuzzing import decode_once, mutated_files, seed_corpus

    corpus = seed_corpus()
    deadline = time.monotonic() + 60 * args.minutes
    counts = {"inputs": 0, "crashes": 0}
    crashes = Path(args.crashes)

    def check(data: bytes, min_size: int | None) -> None:
        counts["inputs"] += 1
        try:
            decode_once(data, min_size)
        except Exception:
            counts["crashes"] += 1
            crashes.mkdir(parents=True, exist_ok=True)
            name = crashes / f"crash-{counts['crashes']:04d}.bin"
            name.write_bytes(data)
            print(f"CRASH ({name}, min_size={min_size}):\n{traceback.format_exc()}", flush=True)

    t0 = time.monotonic()
    chunk = 0
    while time.monotonic() < deadline:  # rounds of 2,000 inputs, each from its own seed
        run = given(data=mutated_files(corpus), min_size=st.sampled_from([None, 8, 16, 224]))(check)
        run = settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))(run)
        seed(args.seed * 100_003 + chunk)(run)()
        chunk += 1
    seconds = time.monotonic() - t0
    print(f"{counts['inputs']} mutated files decoded in {seconds:.0f}s ({counts['inputs'] / seconds:.0f}/s), "
          f"{counts['crashes']} crashes (exceptions other than ImageError)")  # fmt: skip
    return 1 if counts["crashes"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
