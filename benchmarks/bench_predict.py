"""Prediction speed on camera-trap-sized photographs: imgcls against the plain PyTorch loop.

1,000 JPEGs of 4000x3000 (made from scikit-image's photographs, 8 classes) classified by the
same ResNet-18 (trained on the training benchmark's images, so its labels mean something).
Baseline: PIL decode, Resize(256) / CenterCrop(224) / ToTensor / Normalize, fp32 model,
DataLoader(num_workers=2), softmax, CSV. imgcls: ``imgcls predict`` with its defaults (JPEG
draft decoding in worker processes, bf16 autocast where the CPU has it, channels-last). Reports
whole-process times (medians), the ratio, and how often imgcls's top-1 label equals the fp32
reference's.

    .venv/bin/python benchmarks/bench_predict.py --runs 3
    .venv/bin/python benchmarks/bench_predict.py --runs 3 --precision int8   # the int8 ONNX model
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_predict.py --precision fp32  # AVX2 tier
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from common import BENCH, BIN, ROOT, cached_model, make_dataset, median, report, scratch, timed


def trained_model(work: Path) -> Path:
    """A ResNet-18 trained by imgcls on the training benchmark's data (cached)."""
    data = make_dataset(BENCH / "train-1024x768", {"train": 32, "val": 8}, (1024, 768))
    # the baseline's preprocessing (Resize 256, CenterCrop 224, bilinear) is the model's own
    return cached_model("model-resnet18", ["--data", str(data), "--arch", "resnet18", "--pretrained", "none",
                        "--epochs", "6", "--batch-size", "32", "--crop-pct", "0.875", "--interpolation", "bilinear"],
                        work)  # fmt: skip


def rows_by_path(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


TIE = 0.02  # a reference whose top two probabilities are closer than this is a near-tie


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--precision", default="auto", help="imgcls predict --precision (int8: the model's int8 ONNX)")
    args = ap.parse_args()
    with scratch() as work:
        model = trained_model(work)
        if args.precision == "int8":  # quantised once, its cost measured on the run's validation split
            timed([str(BIN / "imgcls"), "export", "--model", str(model), "--quantize", "int8"])
        per_class = -(-args.images // 8)
        data = make_dataset(BENCH / "predict-4000x3000", {"": per_class}, (4000, 3000))
        names = json.loads((model / "config.json").read_text())["label_names"]
        base_t, ours_t, agree, clear_agree = [], [], [], []
        for run in range(args.runs):
            plain = [str(BIN / "python"), str(ROOT / "baselines" / "predict_plain.py"),
                     str(model / "model.safetensors"), str(len(names)), str(work / "plain.csv"), str(data)]  # fmt: skip
            wall, _, _ = timed(plain)
            base_t.append(wall)
            out = work / "imgcls.csv"
            out.unlink(missing_ok=True)
            wall, _, _ = timed([str(BIN / "imgcls"), "predict", "--model", str(model), str(data), "--out", str(out),
                                "--precision", args.precision])  # fmt: skip
            ours_t.append(wall)
            ref = rows_by_path(work / "plain.csv")
            ours = rows_by_path(out)
            same = {p: ours[p]["label"] == names[int(r["class"])] for p, r in ref.items()}
            clear = [p for p, r in ref.items() if float(r["probability"]) - float(r["second_probability"]) >= TIE]
            agree.append(sum(same.values()) / len(same))
            clear_agree.append(sum(same[p] for p in clear) / max(1, len(clear)))
            print(
                f"run {run + 1}: baseline {base_t[-1]:.1f}s, imgcls {ours_t[-1]:.1f}s, top-1 agreement "
                f"{agree[-1]:.4f} ({clear_agree[-1]:.4f} where the reference's margin is >= {TIE})",
                flush=True,
            )
        report(
            "predict",
            {
                "images": args.images,
                "baseline_seconds": round(median(base_t), 1),
                "imgcls_seconds": round(median(ours_t), 1),
                "speedup": round(median(base_t) / median(ours_t), 2),
                "top1_agreement_with_fp32_reference": round(min(agree), 4),
                f"top1_agreement_where_reference_margin_ge_{TIE}": round(min(clear_agree), 4),
                "runs": args.runs,
                "precision": args.precision,
            },
            args.json,
        )


if __name__ == "__main__":
    main()
