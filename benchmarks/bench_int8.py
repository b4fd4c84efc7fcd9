"""INT8 against the float paths, model only: ResNet-18 and ResNet-50 at 224 px, batch 32, as many
threads as the machine has cores, on ready tensors (no decoding).

Rows, each in images per second: PyTorch fp32 channels-last (what imgcls runs where the CPU has
no bf16 units: the baseline of issue 17's target), PyTorch bf16 autocast channels-last (where the
CPU has bf16 units), ONNX Runtime fp32 on imgcls's exported graph, and ONNX Runtime int8 on the
graph ``imgcls.quantize`` makes from it (static QDQ quantisation, per-channel weights, calibrated
on 64 real photographs). The ResNet-18 is the one ``bench_predict.py`` trains (cached), so the
int8 model's top-1 agreement with fp32 is measured on 128 other photographs (not the
calibration ones); the ResNet-50 has random
weights (speed only). Target (issue 17): int8 >= 2x PyTorch fp32.

    .venv/bin/python benchmarks/bench_int8.py [--models resnet18 resnet50] [--json out.json]
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_int8.py   # PyTorch held to AVX2

ONNX Runtime's own kernels (MLAS) ignore ``ONEDNN_MAX_CPU_ISA``: with it, only PyTorch's rows are
held to the lower tier, and the machine's real tier is printed beside it. To hold every row to
AVX2 (no VNNI for the int8 kernels either), run it under ``benchmarks/avx2_only.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import BENCH, make_dataset, report, scratch


def rate(fn: object, x: np.ndarray, seconds: float = 6.0) -> float:
    """Images per second of ``fn(x)`` (after two warm-up calls), over at least ``seconds``."""
    fn(x)  # type: ignore[operator]
    fn(x)  # type: ignore[operator]
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds or n < 3:
        fn(x)  # type: ignore[operator]
        n += 1
    return n * len(x) / (time.perf_counter() - t)


def photos(pre: object, data: Path) -> np.ndarray:
    """The JPEGs of ``data`` through the model's eval transform, normalised."""
    from imgcls.data.image import read_image
    from imgcls.data.preprocess import eval_array, normalize_np

    files = sorted(data.rglob("*.jpg"))
    return normalize_np(np.stack([eval_array(read_image(f), pre) for f in files]), pre).astype(np.float32)


def measure(name: str, model_dir: Path | None, batch: int, work: Path) -> dict[str, object]:
    import onnxruntime as ort

    import imgcls
    from imgcls.export import export_onnx
    from imgcls.quantize import quantize_graph
    from imgcls.runtime import cpu_has_fast_bf16, physical_cores

    if model_dir is None:  # random weights: a model directory of its own
        model_dir = work / name / "model"
        from imgcls.artifacts import save_model
        from imgcls.config import PreprocessConfig

        net = imgcls.create_model(name, num_classes=8)
        save_model(net, model_dir, label_names=[str(i) for i in range(8)], preprocess=PreprocessConfig())
    onnx_file = work / f"{name}.onnx"
    export_onnx(model_dir, onnx_file)
    clf = imgcls.load(model_dir, precision="fp32")
    # calibration: 64 of the training photos (8 per class); agreement: 128 other variants of them
    calib = photos(clf.preprocess, make_dataset(BENCH / "int8-calibration", {"": 8}, (1024, 768)))
    x = photos(clf.preprocess, make_dataset(BENCH / "int8-agreement", {"": 16}, (1024, 768), seed=7))
    int8 = work / f"{name}.int8.onnx"
    batches = [calib[k : k + 16] for k in range(0, len(calib) // 16 * 16, 16)]
    quantize_graph(onnx_file, int8, batches, reduce_range=False)
    xb = np.concatenate([x] * (-(-batch // len(x))))[:batch]
    model = clf.model.eval().to(memory_format=torch.channels_last)

    def torch_run(bf16: bool) -> object:
        def run(a: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(a).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(t).float().numpy()

        return run

    def ort_run(path: Path) -> object:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = physical_cores()
        s = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        return lambda a: s.run(None, {"input": a})[0]

    runs = {"torch_fp32": torch_run(False), "onnxruntime_fp32": ort_run(onnx_file), "onnxruntime_int8": ort_run(int8)}
    if cpu_has_fast_bf16():
        runs["torch_bf16"] = torch_run(True)
    out: dict[str, object] = {k: round(rate(fn, xb), 1) for k, fn in runs.items()}
    ref = runs["torch_fp32"](x)  # type: ignore[operator]
    got = runs["onnxruntime_int8"](x)  # type: ignore[operator]
    out["int8_top1_agreement_with_fp32"] = round(float((ref.argmax(1) == got.argmax(1)).mean()), 4)
    out["agreement_images"] = len(x)
    out["int8_over_torch_fp32"] = round(float(out["onnxruntime_int8"]) / float(out["torch_fp32"]), 2)  # type: ignore[arg-type]
    print(name, json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from bench_predict import trained_model
    from imgcls.runtime import set_threads

    set_threads(None)
    rows: dict[str, object] = {"batch": args.batch, "image_size": 224}
    with scratch() as work:
        for name in args.models:
            trained = trained_model(work) if name == "resnet18" else None
            rows[name] = measure(name, trained, args.batch, Path(tempfile.mkdtemp(dir=work)))
    report("int8", rows, args.json)


if __name__ == "__main__":
    main()
