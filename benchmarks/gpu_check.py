"""The GPU check (issue 25): one script that builds its own data on the machine and measures, in
one run, everything the GPU path promises. On one H100 it takes under 8 minutes:

- the model-only ceiling: a training step of ResNet-18 and ResNet-50 at 224 px (bf16 autocast,
  channels-last, AdamW as imgcls builds it) on a synthetic batch already on the device;
- imgcls training epochs on the same models (``imgcls.train``, metrics.jsonl's img/s of the
  epochs after the first) with the decoded store on the device and in pinned host memory
  (``IMGCLS_STORE``), as a share of the ceiling, and the GPU's utilisation meanwhile; the
  batches of both placements compared bit for bit;
- the whole ``imgcls train`` command against the plain torchvision loop (16 DataLoader workers,
  pinned memory; ``baselines/train_plain.py``) on 4,000 JPEGs of 1024x768, whole processes;
- ``imgcls predict`` on 1,024 JPEGs of 4000x3000 (128 made, each copied 8 times), img/s;
- Fashion-MNIST: ``imgcls train --time-budget 30s``, then the test split's top-1.

Every figure goes to ``OUT/gpu_check.json`` and every line to ``OUT/gpu_check.log`` as it is
measured (``--out``, else ``$OUT``, else ./gpu-check-out), so a run cut short keeps what it had.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out $OUT
    PYTHONPATH=src python3 benchmarks/gpu_check.py --tiny --out /tmp/gc   # any machine: small sizes

``--tiny`` runs every part at toy sizes (64 JPEGs, 32 px, LeNet, one or two epochs) on whatever device
there is, and says ``skipped: no CUDA`` for what only a GPU can do (pinned host memory, the
placements compared, utilisation); Fashion-MNIST (60,000 images at any size) only when named.
Fashion-MNIST is read from ``--fashion-mnist DIR``, else ``.gpu_data/fashion-mnist`` in the
repository (a copy carried to the GPU machine), else ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PHOTOS, ROOT, _write_class

REPO = ROOT.parent
FASHION_PLACES = (REPO / ".gpu_data" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))


@dataclass(frozen=True)
class Sizes:
    per_class: dict[str, int]  # the photographs' splits, images per class
    photo: tuple[int, int]
    big_made: int  # 12-MP JPEGs made per class, each copied big_copies times
    big_copies: int
    big: tuple[int, int]
    arches: tuple[str, ...]  # of the ceiling and the epochs
    whole_arch: str  # of the whole-command comparison (the plain loop's is ResNet-18)
    image: int  # training input size
    batch: int
    epochs: int  # of each epoch-throughput run (the first is a warm-up)
    whole_epochs: int  # of the whole-command comparison
    steps: int  # timed steps of the model-only ceiling
    budget: str  # Fashion-MNIST's time budget
    workers: int  # the plain loop's DataLoader workers


FULL = Sizes({"train": 400, "val": 100}, (1024, 768), 16, 8, (4000, 3000), ("resnet18", "resnet50"), "resnet18", 224,
             256, 4, 5, 30, "30s", 16)  # fmt: skip
TINY = Sizes({"train": 6, "val": 2}, (128, 96), 1, 2, (320, 240), ("lenet",), "lenet", 32, 16, 2, 1, 2, "5s", 0)


class Report:
    """The log (printed and written line by line) and the figures (rewritten as they come)."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.json, self.log = out / "gpu_check.json", out / "gpu_check.log"
        self.log.write_text("")
        self.figures: dict[str, Any] = {}

    def say(self, line: str) -> None:
        print(line, flush=True)
        with open(self.log, "a") as f:
            f.write(line + "\n")

    def put(self, key: str, value: Any) -> None:
        self.figures[key] = value
        self.json.write_text(json.dumps(self.figures, indent=2, default=str) + "\n")


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def machine() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "cuda": cuda(), "cpus": os.cpu_count()}
    if cuda():
        out["gpu"] = torch.cuda.get_device_name()
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    with open("/proc/cpuinfo") as f:
        out["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return out


def make_photos(root: Path, per_class: dict[str, int], size: tuple[int, int], flat: bool = False) -> Path:
    """``root/<split>/<class>/*.jpg`` (``flat``: ``root/<class>``) from scikit-image's photographs
    (benchmarks/common.py), written by every core in chunks of 25 images (idempotent)."""
    jobs = []
    for k, name in enumerate(PHOTOS):
        start = 0
        for s, (split, count) in enumerate(per_class.items()):
            folder = root / name if flat else root / split / name
            for c in range(0, count, 25):
                jobs.append((name, folder, min(25, count - c), size, k * 1000 + s * 100 + c, start + c))
            start += count
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(_write_class, jobs))
    return root


def build_data(work: Path, sz: Sizes) -> dict[str, Any]:
    t0 = time.perf_counter()
    photos = make_photos(work / "photos", sz.per_class, sz.photo)
    made = make_photos(work / "big-made", {"": sz.big_made}, sz.big, flat=True)
    big = work / "big"
    for f in sorted(made.rglob("*.jpg")):
        for k in range(sz.big_copies):
            target = big / f.parent.name / f"{f.stem}_{k}.jpg"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
    return {"photos": photos, "photo_jpegs": len(list(photos.rglob("*.jpg"))), "photo_size": sz.photo, "big": big,
            "big_jpegs": len(list(big.rglob("*.jpg"))), "big_size": sz.big,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


class Utilisation:
    """The GPU's utilisation sampled every 0.1 s in a thread (``torch.cuda.utilization``, which
    reads NVML; else ``nvidia-smi``) while the ``with`` block runs: the mean over the block, and
    over the span from the first to the last busy sample (the training, not the start-up)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.stop = threading.Event()

    def read(self) -> float | None:
        import torch

        try:
            return float(torch.cuda.utilization())
        except Exception:
            r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True)  # fmt: skip
            return float(r.stdout.split()[0]) if r.returncode == 0 and r.stdout.strip() else None

    def run(self) -> None:
        while not self.stop.wait(0.1):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> Utilisation:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def figures(self) -> dict[str, float]:
        s = self.samples
        busy = [i for i, v in enumerate(s) if v >= 5]
        span = s[busy[0] : busy[-1] + 1] if busy else []
        return {"mean_percent": round(statistics.fmean(s), 1) if s else 0.0,
                "busy_span_mean_percent": round(statistics.fmean(span), 1) if span else 0.0,
                "samples": len(s)}  # fmt: skip


def ceiling(arch: str, sz: Sizes) -> float:
    """img/s of imgcls's training step alone (the model as imgcls builds it, bf16 on a GPU,
    channels-last, fused AdamW, cross-entropy) on a synthetic batch already on the device."""
    import torch
    import torch.nn.functional as F

    from imgcls.engine.optim import build_optimizer, param_groups
    from imgcls.models.factory import build_model, classifier_name
    from imgcls.runtime import make_runtime

    model, _ = build_model(arch, num_classes=8, pretrained=None)
    runtime = make_runtime(model, device="auto", precision="bf16" if cuda() else "auto")
    net = runtime.prepare(model).train()
    groups = param_groups(net, classifier=classifier_name(net), weight_decay=0.05, backbone_lr_mult=1.0)
    opt = build_optimizer("adamw", groups, lr=1e-3)
    x = runtime.inputs(torch.randn(sz.batch, 3, sz.image, sz.image, device=runtime.device))
    y = torch.randint(0, 8, (sz.batch,), device=runtime.device)

    def step() -> None:
        with runtime.autocast():
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(sz.steps):
        step()
    sync()
    return sz.batch * sz.steps / (time.perf_counter() - t)


def epochs(arch: str, where: str, data: Path, sz: Sizes, work: Path) -> dict[str, Any]:
    """``imgcls.train`` with the store placed ``where`` (``IMGCLS_STORE``): the median img/s of
    its epochs after the first (metrics.jsonl: training steps only), and the GPU's utilisation."""
    import imgcls

    os.environ["IMGCLS_STORE"] = where
    try:
        with Utilisation() if cuda() else _nothing() as busy:
            run = imgcls.train(data, out=work / f"run-{arch}-{where}", arch=arch, pretrained="none",
                               epochs=sz.epochs, batch_size=sz.batch, image_size=sz.image, seed=0,
                               cache_dir=work / "cache", export_onnx=False, calibrate=False)  # fmt: skip
    finally:
        del os.environ["IMGCLS_STORE"]
    rates = [json.loads(line)["images_per_second"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    out: dict[str, Any] = {"images_per_second": round(statistics.median(rates[1:] or rates), 1),
                           "per_epoch": [round(r, 1) for r in rates]}  # fmt: skip
    if busy is not None:
        out["gpu_utilisation"] = busy.figures()
    return out


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def same_batches(data: Path, sz: Sizes, work: Path) -> bool:
    """One epoch of training batches from the store on the device and in pinned host memory:
    bit for bit the same (the placements differ in where pixels wait, never in what they are)."""
    import numpy as np
    import torch

    from imgcls.config import PreprocessConfig
    from imgcls.data import load_source
    from imgcls.data.loaders import PixelSource, TrainBatches
    from imgcls.data.store import build_store
    from imgcls.data.transforms import PRESETS, BatchAugment, square_size

    table = load_source(str(data / "train"))
    cfg = PreprocessConfig(input_size=(3, sz.image, sz.image))
    store, _ = build_store(table, cfg, cache_dir=work / "cache", workers=os.cpu_count() or 2)
    streams = []
    for where in ("device", "pinned"):
        src = PixelSource(table=table, store=store, cfg=cfg, size=square_size(cfg))
        src.place("cuda", override=where)
        batches = TrainBatches(src, torch.from_numpy(table.targets), np.arange(len(table)), sz.batch,
                               BatchAugment(cfg, PRESETS["standard"]), seed=3)  # fmt: skip
        streams.append(batches.epoch(0))
    pairs = [
        (a[0].device.type, torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])) for a, b in zip(*streams, strict=True)
    ]
    return bool(pairs) and all(device == "cuda" and same for device, same in pairs)


def command(args: list[str], timeout: float) -> tuple[float, str]:
    """(wall seconds, stdout + stderr) of a whole process; imgcls from this checkout's src/."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}... failed ({r.returncode}): {(r.stdout + r.stderr)[-800:]}")
    return wall, r.stdout + r.stderr


def whole_train(data: Path, sz: Sizes, work: Path) -> dict[str, Any]:
    """The whole ``imgcls train`` (empty decode cache) against the plain loop: same data, model,
    epochs and batch; both whole processes."""
    device = "cuda" if cuda() else "cpu"
    plain_cmd = [sys.executable, str(ROOT / "baselines" / "train_plain.py"), str(data), str(sz.whole_epochs),
                 str(sz.batch), str(work / "plain.safetensors"), device, str(sz.workers), str(sz.image)]  # fmt: skip
    plain, out = command(plain_cmd, timeout=300)
    plain_top1 = json.loads(out.strip().splitlines()[-1])["val_top1"] if out.strip() else None
    ours_cmd = [sys.executable, "-m", "imgcls", "train", "--data", str(data), "--arch", sz.whole_arch, "--pretrained",
                "none", "--epochs", str(sz.whole_epochs), "--batch-size", str(sz.batch), "--image-size",
                str(sz.image), "--seed", "0", "--out", str(work / "whole"),
                "--cache-dir", str(work / "whole-cache")]  # fmt: skip
    with Utilisation() if cuda() else _nothing() as busy:
        ours, _ = command(ours_cmd, timeout=300)
    last = json.loads((work / "whole" / "metrics.jsonl").read_text().splitlines()[-1])
    out_: dict[str, Any] = {"plain_seconds": round(plain, 1), "imgcls_seconds": round(ours, 1),
                            "speedup": round(plain / ours, 2), "plain_val_top1": plain_top1,
                            "imgcls_val_top1": round(last["val_top1"], 3), "epochs": sz.whole_epochs,
                            "batch": sz.batch, "plain_workers": sz.workers}  # fmt: skip
    if busy is not None:
        out_["gpu_utilisation"] = busy.figures()
    return out_


def predict(model: Path, images: Path, work: Path) -> dict[str, Any]:
    """``imgcls predict`` over the 12-MP set: the whole process, and the rate it reports
    (decoding and the model, start-up left out)."""
    n = len(list(images.rglob("*.jpg")))
    wall, said = command([sys.executable, "-m", "imgcls", "predict", "--model", str(model), str(images), "--out",
                          str(work / "predictions.csv")], timeout=300)  # fmt: skip
    rate = re.findall(r"\(([\d.]+) img/s", said)
    return {"images": n, "seconds": round(wall, 1), "whole_process_images_per_second": round(n / wall, 1),
            "images_per_second": float(rate[-1]) if rate else None,
            "closing_line": said.strip().splitlines()[-1]}  # fmt: skip


def fashion(data: Path, budget: str, work: Path) -> dict[str, Any]:
    """``imgcls train --time-budget`` on Fashion-MNIST with the defaults, then the test top-1."""
    run = work / "fashion"
    wall, _ = command([sys.executable, "-m", "imgcls", "train", "--data", str(data), "--time-budget", budget,
                       "--seed", "0", "--out", str(run), "--cache-dir", str(work / "cache")], timeout=300)  # fmt: skip
    command([sys.executable, "-m", "imgcls", "evaluate", "--model", str(run / "model"), "--split", "test",
             "--out", str(work / "fashion-eval")], timeout=120)  # fmt: skip
    m = json.loads((work / "fashion-eval" / "metrics.json").read_text())
    epochs_ = len((run / "metrics.jsonl").read_text().splitlines())
    return {"budget": budget, "train_wall_seconds": round(wall, 1), "epochs": epochs_,
            "test_top1": round(m["top1"], 4), "test_images": m["num_images"]}  # fmt: skip


def fashion_dir(given: str | None) -> Path | None:
    if given:
        return None if given == "none" else Path(given)
    return next((p for p in FASHION_PLACES if p.is_dir()), None)


class Sections:
    """Runs each part in turn: one that fails is said and recorded, the others still run; past
    the deadline the rest are skipped (the check must end inside its time on the machine)."""

    def __init__(self, report: Report, deadline: float) -> None:
        self.report, self.deadline = report, deadline

    def run(self, key: str, work: Any, skip: str | None = None) -> Any:
        if skip is None and time.monotonic() > self.deadline:
            skip = "out of time"
        if skip is not None:
            self.report.say(f"{key}: skipped: {skip}")
            self.report.put(key, {"skipped": skip})
            return None
        t = time.monotonic()
        try:
            value = work()
        except Exception as e:  # recorded, and the next part runs
            self.report.say(f"{key}: failed: {type(e).__name__}: {e}")
            self.report.put(key, {"failed": f"{type(e).__name__}: {e}"})
            return None
        self.report.say(f"{key} ({time.monotonic() - t:.0f}s): {json.dumps(value, default=str)}")
        self.report.put(key, value)
        return value


def targets(figures: dict[str, Any]) -> list[str]:
    """Issue 25's targets against the figures measured: met / not met, one line each."""
    lines = []
    for arch, ceiling_rate in (figures.get("ceiling") or {}).items():
        for where, want in (("device", 0.85), ("pinned", 0.80)):
            got = (figures.get(f"epochs_{arch}_{where}") or {}).get("images_per_second")
            if got and ceiling_rate:
                share = got / ceiling_rate
                lines.append(f"{arch} epochs, store {where}: {share:.0%} of the ceiling (target >= {want:.0%}): "
                             f"{'met' if share >= want else 'NOT met'}")  # fmt: skip
    checks = (("whole_train", "speedup", 2.0, "whole train vs plain loop", "x"),
              ("predict", "images_per_second", 600, "predict on 12-MP JPEGs", " img/s"),
              ("fashion_mnist", "test_top1", 0.95, "Fashion-MNIST test top-1 in 30 s", ""))  # fmt: skip
    for key, field, want, what, unit in checks:
        got = (figures.get(key) or {}).get(field)
        if got is not None:
            lines.append(f"{what}: {got}{unit} (target >= {want}{unit}): {'met' if got >= want else 'NOT met'}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    ap.add_argument("--work", type=Path, help="where the data and runs go (default: a folder under /tmp)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes, any machine: to check the script itself")
    ap.add_argument("--fashion-mnist", help="Fashion-MNIST's IDX folder ('none': skip that part)")
    ap.add_argument("--deadline", type=float, default=450, help="seconds after which the parts left are skipped")
    args = ap.parse_args(argv)
    sz = TINY if args.tiny else FULL
    work = args.work or Path("/tmp") / ("imgcls-gpu-check-tiny" if args.tiny else "imgcls-gpu-check")
    report = Report(args.out)
    part = Sections(report, time.monotonic() + args.deadline)
    report.put("machine", machine())
    report.say(f"machine: {json.dumps(report.figures['machine'])}")
    data = part.run("data", lambda: build_data(work, sz))
    no_cuda = None if cuda() else "no CUDA"
    part.run("ceiling", lambda: {arch: round(ceiling(arch, sz), 1) for arch in sz.arches})
    for arch in sz.arches:
        for where in ("device", "pinned"):
            part.run(f"epochs_{arch}_{where}", lambda a=arch, w=where: epochs(a, w, data["photos"], sz, work),
                     skip="no data" if data is None else (no_cuda if where == "pinned" else None))  # fmt: skip
    part.run("same_batches_device_and_pinned", lambda: {"equal": same_batches(data["photos"], sz, work)},
             skip=no_cuda or ("no data" if data is None else None))  # fmt: skip
    part.run("whole_train", lambda: whole_train(data["photos"], sz, work), skip="no data" if data is None else None)
    model = work / "whole" / "model"
    part.run("predict", lambda: predict(model, data["big"], work), skip=None if model.is_dir() else "no model")
    fm = fashion_dir(args.fashion_mnist)
    why = (
        "no Fashion-MNIST"
        if fm is None
        else ("--tiny (name --fashion-mnist DIR)" if args.tiny and not args.fashion_mnist else None)
    )
    part.run("fashion_mnist", lambda: fashion(fm or Path(), sz.budget, work), skip=why)
    lines = targets(report.figures)
    report.put("targets", lines)
    for line in lines:
        report.say(f"target: {line}")
    return report.figures


if __name__ == "__main__":
    main()
