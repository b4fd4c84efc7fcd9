"""Is the data pipeline the bottleneck? End-to-end prediction throughput (decode in worker
processes, preprocessing, model, CSV) against the model alone on ready-made tensors, same model
(ResNet-18), same batch size (32), same precision, on 512 JPEGs of 1024x768. Model loading and
process start-up are left out of both figures. Target: end to end >= 70% of model-only.

    .venv/bin/python benchmarks/bench_pipeline.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench_predict import trained_model
from common import BENCH, make_dataset, report, scratch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from imgcls.outputs import writer_for
    from imgcls.predict import Classifier, predict_files

    with scratch() as work:
        model = trained_model(work)
        data = make_dataset(BENCH / "pipeline-1024x768", {"": 64}, (1024, 768))
        clf = Classifier.load(model, backend="torch")
        size = clf.preprocess.image_size
        x = np.random.default_rng(0).integers(0, 256, (args.batch_size, size, size, 3), dtype=np.uint8)
        clf.probabilities(x)  # warm-up (and the model's loading)
        n = 8
        t = time.perf_counter()
        for _ in range(n):
            clf.probabilities(x)
        model_only = n * args.batch_size / (time.perf_counter() - t)
        summary = predict_files(
            clf, [str(data)], writer_for(work / "p.csv", None), batch_size=args.batch_size, show_progress=False
        )
        end_to_end = summary.images_per_second
        report(
            "pipeline",
            {
                "images": summary.written,
                "model_only_images_per_second": round(model_only, 1),
                "end_to_end_images_per_second": round(end_to_end, 1),
                "share_of_model_only": round(end_to_end / model_only, 3),
            },
            args.json,
        )


if __name__ == "__main__":
    main()
