"""``imgcls demo``: the main job on an embedded dataset.

scikit-learn ships 1,797 real 8x8 handwritten digits (UCI optdigits), so nothing is downloaded.
The demo writes them as PNG files in class folders with a held-out test split, then runs the
path a user runs on their own images: look at the architecture, train, evaluate on the test
split (metrics, plots, HTML report), predict files to CSV, and export to ONNX.
"""

from __future__ import annotations

import time
from pathlib import Path

DEMO_ARCH = "lenet"
#: Small images get the 'small' augmentation by default: shifts and horizontal flips. imgcls cannot
#: know that a class is not mirror-symmetric, but a mirrored 2, 3, 5 or 7 is not that digit, so the
#: demo names the shifts without flips (and with no flips trained, no test-time flip is tried).
DEMO_AUGMENT = "shift"
SHOWN = (
    "lenet",
    "alexnet",
    "vgg16_c",
    "resnet50",
    "seresnet50",
    "convnext_tiny",
    "efficientnet_b0",
)


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 74 - len(title)), flush=True)


def write_digits(folder: Path, test_share: float = 0.25, seed: int = 0) -> Path:
    """The digits as 8-bit grayscale PNGs: folder/{train,test}/<digit>/<n>.png."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    test = rng.random(len(digits.target)) < test_share
    for i, (img, y) in enumerate(zip(digits.images, digits.target, strict=True)):
        split = "test" if test[i] else "train"
        d = folder / split / str(y)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype(np.uint8), mode="L").save(d / f"{i:04d}.png")
    return folder


#: The file that marks a folder as the demo's own: only such a folder is ever emptied.
MARKER = ".imgcls-demo"


def claim_folder(out_dir: Path) -> None:
    """Make ``out_dir`` an empty folder the demo owns. A folder from an earlier demo (it holds
    the marker file) is cleared; an empty folder is taken; anything else is refused, so
    ``imgcls demo --out ~`` deletes nothing."""
    import shutil

    from imgcls.errors import UserError
    from imgcls.io import check_writable

    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise UserError(f"{out_dir} exists and is not a folder: choose another --out")
    check_writable(out_dir, folder=True)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / MARKER).is_file():
            raise UserError(
                f"{out_dir} already exists and was not made by 'imgcls demo': choose another --out "
                "(the demo only replaces its own folders)"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("made by 'imgcls demo'; the next demo run with this --out replaces this folder\n")


def run_demo(out: str | Path = "demo-run", epochs: int = 15) -> Path:
    """The demo's seven steps (see the module docstring), printed as a user would run them."""
    from imgcls.api import train

    out_dir = Path(out)
    claim_folder(out_dir)
    t0 = time.perf_counter()
    show_architectures()
    _section("3. Data: scikit-learn's 1,797 handwritten digits as PNG files")
    data = write_digits(out_dir / "digits")
    n_train = sum(1 for _ in (data / "train").rglob("*.png"))
    n_test = sum(1 for _ in (data / "test").rglob("*.png"))
    print(f"{data}/train: {n_train} images, {data}/test: {n_test} images, classes 0-9")

    _section(f"4. Train (imgcls train --data {data} --arch {DEMO_ARCH} --augment {DEMO_AUGMENT} --epochs {epochs} ...)")
    run = train(
        data, out=out_dir / "run", arch=DEMO_ARCH, pretrained="none", epochs=epochs, image_size=32,
        batch_size=32, lr=3e-3, augment=DEMO_AUGMENT, cache="memory", seed=0,
    )  # fmt: skip
    use_model(run / "model", data, out_dir)
    print(f"\ndone in {time.perf_counter() - t0:.0f}s; everything is in {out_dir}/")
    return out_dir


def show_architectures() -> None:
    """Steps 1 and 2: the registry and one model, layer by layer."""
    from imgcls.models import summarize_arch
    from imgcls.models.catalog import catalog

    _section("1. The architecture registry (imgcls models)")
    rows = catalog()
    print(f"{len(rows)} architectures, e.g.:")
    for row in rows:
        if row.name in SHOWN:
            print(
                f"  {row.name:16s} {row.params / 1e6:8.2f}M params {row.macs / 1e9:7.2f}G MACs at {row.input_size[1]}px"
            )
    _section(f"2. The model, layer by layer (imgcls summary {DEMO_ARCH} --num-classes 10)")
    print(summarize_arch(DEMO_ARCH, num_classes=10).table())


def use_model(model: Path, data: Path, out_dir: Path) -> None:
    """Steps 5 to 7: evaluate on the test split, predict files, export to ONNX."""
    from imgcls.evaluate import evaluate
    from imgcls.outputs import writer_for
    from imgcls.predict import Classifier, predict_files

    _section(f"5. Evaluate on the held-out test split (imgcls evaluate --model {model} --split test)")
    report = out_dir / "report"
    m = evaluate(model, data, split="test", out=report).metrics
    print(f"top-1 {m['top1']:.4f}  balanced accuracy {m['balanced_accuracy']:.4f}  macro F1 {m['macro_f1']:.4f}")
    print(
        f"mean NLL (cross-entropy) {m['nll']:.4f}  "
        f"log-likelihood of the {m['num_images']} labels {m['log_likelihood']:.1f}"
    )
    print(f"expected calibration error {m['ece']:.4f}")
    print(f"report: {report / 'report.html'}")

    _section("6. Predict files (imgcls predict --model ... digits/test --out predictions.csv)")
    preds = out_dir / "predictions.csv"
    summary = predict_files(Classifier.load(model), [str(data / "test")], writer_for(preds, None), top_k=3,
                            show_progress=False)  # fmt: skip
    print(f"{summary.written} rows -> {preds}")
    for line in preds.read_text().splitlines()[:4]:
        print("  " + line)

    _section("7. Export to ONNX (imgcls export --model ... --format onnx)")
    try:
        from imgcls.export import export_onnx

        rep, source = export_onnx(model, out_dir / "digits.onnx")
        print(
            f"wrote {rep.path}; ONNX Runtime vs PyTorch on {rep.images} {source}: "
            f"max |probability diff| {rep.max_prob_diff:.1e}"
        )
    except ImportError:
        print("skipped: install the onnx extra (pip install 'imgcls[onnx]')")
