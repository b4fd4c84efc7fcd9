"""The fast numeric path on this CPU: ResNet-18 training steps and inference at 224 px, batch
32, two threads, for fp32 / bf16 autocast and NCHW / channels-last (what --precision auto and
the channels-last default choose between). Model only, no data loading.

    .venv/bin/python benchmarks/bench_precision.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch

from common import report


def step_rate(model: torch.nn.Module, x: torch.Tensor, bf16: bool, train: bool, steps: int = 4) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    y = torch.zeros(len(x), dtype=torch.long)

    def once() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if train:
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        if train:
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(x)

    model.train(train)
    once()
    t = time.perf_counter()
    for _ in range(steps):
        once()
    return steps * len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows: dict[str, object] = {"cpu_bf16_capability": torch.backends.cpu.get_cpu_capability()}
    for layout in ("nchw", "channels_last"):
        for prec in ("fp32", "bf16"):
            model = timm.create_model("resnet18", num_classes=8)
            x = torch.randn(32, 3, 224, 224)
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            rows[f"train_{prec}_{layout}_images_per_second"] = round(step_rate(model, x, prec == "bf16", True), 1)
            rows[f"infer_{prec}_{layout}_images_per_second"] = round(step_rate(model, x, prec == "bf16", False), 1)
            print(
                layout,
                prec,
                rows[f"train_{prec}_{layout}_images_per_second"],
                rows[f"infer_{prec}_{layout}_images_per_second"],
                flush=True,
            )
    rows["train_speedup_bf16_cl_vs_fp32_nchw"] = round(
        rows["train_bf16_channels_last_images_per_second"] / rows["train_fp32_nchw_images_per_second"],
        2,  # type: ignore[operator]
    )
    rows["infer_speedup_bf16_cl_vs_fp32_nchw"] = round(
        rows["infer_bf16_channels_last_images_per_second"] / rows["infer_fp32_nchw_images_per_second"],
        2,  # type: ignore[operator]
    )
    report("precision", rows, args.json)


if __name__ == "__main__":
    main()
