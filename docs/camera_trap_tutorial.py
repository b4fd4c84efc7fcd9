"""The camera-trap tutorial, runnable: builds a small camera-trap dataset from real photographs
and walks the whole path with the imgcls command line. See docs/camera-traps.md.

    .venv/bin/python docs/camera_trap_tutorial.py --out ct-tutorial

The photographs are scikit-image's bundled ones (no download): Chelsea the cat, the astronaut
Eileen Collins (a person walking past the camera) and the horse silhouette (filled with a coat
texture), placed at random positions, sizes and mirror sides on backgrounds made from real
texture photographs (grass, gravel, brick, the moon's surface as rocky ground), one per site.
Each trigger takes a burst of three frames two seconds apart, with EXIF times. Some triggers
are empty (wind, heat).

A real project runs MegaDetector first (``python -m megadetector.detection.run_detector_batch
MDV5A images/ md.json``). No detector runs offline here, so the script writes ``md.json`` from
the known positions instead, with the detector's typical faults added: slightly loose boxes,
confidences between 0.55 and 0.98, weak false detections on some empty frames, and a few
missed animals.

Steps: train on the crops split by site, evaluate per site, predict with sequence decisions (CSV,
MegaDetector JSON, Camtrap DP), then audit the labelled crops with the model's held-out sites
(likely label errors, duplicates and leaks across the split) and print the ``imgcls review``
command that walks them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

SITES = {"meadow": "grass", "quarry": "gravel", "farmyard": "brick", "ridge": "moon"}
FRAME = (640, 480)
TINTS = {"grass": (0.75, 1.05, 0.6), "gravel": (1.0, 0.95, 0.85), "brick": (1.05, 0.8, 0.7), "moon": (0.95, 0.9, 0.8)}


def _photos() -> dict[str, Image.Image]:
    from skimage import data

    cat = Image.fromarray(data.chelsea()).crop((70, 20, 440, 300))  # the cat, little background
    person = Image.fromarray(data.astronaut()).crop((120, 0, 400, 512))
    silhouette = data.horse() == 0  # True where the horse is
    coat = np.asarray(Image.fromarray(data.coffee()).resize(silhouette.shape[::-1]), dtype=np.float64)
    coat = coat * np.array([0.8, 0.55, 0.35])  # a bay coat
    horse = np.zeros((*silhouette.shape, 4), dtype=np.uint8)
    horse[..., :3] = np.clip(coat, 0, 255).astype(np.uint8)
    horse[..., 3] = silhouette * 255
    return {
        "cat": cat.convert("RGBA"),
        "person": person.convert("RGBA"),
        "horse": Image.fromarray(horse, "RGBA"),
    }


def _background(texture: str, rng: np.random.Generator) -> Image.Image:
    from skimage import data

    gray = getattr(data, texture)()
    tile = np.asarray(Image.fromarray(gray).resize((FRAME[0], FRAME[1])), dtype=np.float64)
    rgb = np.stack([tile * t for t in TINTS[texture]], axis=-1)
    shade = np.linspace(1.1, 0.8, FRAME[1])[:, None, None]  # sky light from above
    return Image.fromarray(np.clip(rgb * shade + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8))


def _exif(when: datetime) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = when.strftime("%Y:%m:%d %H:%M:%S")
    return exif.tobytes()


def build(out: Path, bursts_per_site: int = 24, seed: int = 0) -> dict[str, Path]:
    """images/<site>/*.JPG, cct.json (COCO Camera Traps labels) and md.json (detections)."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    labels = ["cat", "person", "horse", "empty"]
    cats = {name: i for i, name in enumerate(labels)}
    images, annotations, md_images = [], [], []
    n = 0
    for s, (site, texture) in enumerate(SITES.items()):
        background = _background(texture, rng)
        start = datetime(2024, 6, 1 + s, 5, 30)
        for b in range(bursts_per_site):
            label = labels[b % len(labels)]
            when = start + timedelta(minutes=int(rng.integers(20, 90)) * (b + 1))
            height = rng.uniform(0.35, 0.7) if label != "empty" else 0
            flip = rng.random() < 0.5
            x = rng.uniform(0.05, 0.6)
            for f in range(3):
                img = ImageEnhance.Brightness(background).enhance(rng.uniform(0.85, 1.1)).copy()
                box = None
                if label != "empty":
                    animal = photos[label]
                    h = int(height * FRAME[1])
                    w = int(animal.width * h / animal.height)
                    sprite = animal.resize((w, h))
                    if flip:
                        sprite = sprite.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                    left = int((x + 0.04 * f) * FRAME[0])
                    left = min(left, FRAME[0] - w)
                    top = FRAME[1] - h - int(rng.uniform(0.02, 0.2) * FRAME[1])
                    img.paste(sprite, (left, top), sprite)
                    box = (left / FRAME[0], top / FRAME[1], w / FRAME[0], h / FRAME[1])
                rel = f"images/{site}/RCNX{n:04d}.JPG"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                stamp = when + timedelta(seconds=2 * f)
                img.save(out / rel, "JPEG", quality=88, exif=_exif(stamp))
                images.append({"id": f"{site}_{n:04d}", "file_name": rel, "location": site, "seq_id": f"{site}_{b:03d}",
                               "seq_num_frames": 3, "frame_num": f,
                               "datetime": stamp.strftime("%Y-%m-%d %H:%M:%S")})  # fmt: skip
                annotations.append({"id": f"ann_{n}", "image_id": f"{site}_{n:04d}", "category_id": cats[label]})
                md_images.append({"file": rel, "detections": _detections(box, label, rng)})
                n += 1
    (out / "cct.json").write_text(json.dumps({
        "info": {"version": "1.0", "description": "imgcls camera-trap tutorial"},
        "images": images, "annotations": annotations,
        "categories": [{"id": i, "name": name} for name, i in cats.items()],
    }, indent=1))  # fmt: skip
    (out / "md.json").write_text(json.dumps({
        "info": {"format_version": "1.4", "detector": "simulated (see docs/camera_trap_tutorial.py)"},
        "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "images": md_images,
    }, indent=1))  # fmt: skip
    return {"images": out / "images", "cct": out / "cct.json", "md": out / "md.json"}


def _detections(box: tuple[float, float, float, float] | None, label: str, rng: np.random.Generator) -> list[dict]:
    if box is None:
        if rng.random() < 0.3:  # a weak false detection: a shadow, a leaf
            return [
                {
                    "category": "1",
                    "conf": round(float(rng.uniform(0.05, 0.3)), 3),
                    "bbox": [0.3, 0.5, 0.2, 0.2],
                }
            ]
        return []
    if rng.random() < 0.04:  # a missed animal
        return []
    x, y, w, h = box
    pad = rng.uniform(0, 0.02, 4)
    loose = [
        max(0.0, x - pad[0]),
        max(0.0, y - pad[1]),
        min(1 - x, w + pad[0] + pad[2]),
        min(1 - y, h + pad[1] + pad[3]),
    ]
    category = "2" if label == "person" else "1"
    return [
        {
            "category": category,
            "conf": round(float(rng.uniform(0.55, 0.98)), 3),
            "bbox": [round(v, 4) for v in loose],
        }
    ]


def run(cmd: list[str]) -> None:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="ct-tutorial", help="folder for the data and every output")
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} exists and is not empty: choose another --out")
    files = build(out)
    print(f"built {len(list(files['images'].rglob('*.JPG')))} frames at {len(SITES)} sites in {files['images']}")
    imgcls = str(Path(sys.executable).parent / "imgcls")
    run([imgcls, "train", "--data", str(files["cct"]), "--detections", str(files["md"]),
         "--det-categories", "animal,person",
         "--arch", "resnet18", "--pretrained", "none", "--image-size", "96", "--batch-size", "16",
         "--epochs", str(args.epochs), "--val-split", "0.4",
         "--out", str(out / "run")])  # fmt: skip
    model = str(out / "run" / "model")
    run([imgcls, "evaluate", "--model", model, "--data", str(files["cct"]),
         "--detections", str(files["md"]),
         "--det-categories", "animal,person", "--out", str(out / "report")])  # fmt: skip
    common = [str(files["images"]), "--detections", str(files["md"]), "--det-categories", "animal,person",
              "--aggregate", "sequence", "--metadata", str(files["cct"])]  # fmt: skip
    run([imgcls, "predict", "--model", model, *common, "--out", str(out / "predictions.csv")])
    run(
        [
            imgcls,
            "predict",
            "--model",
            model,
            *common,
            "--format",
            "megadetector",
            "--out",
            str(out / "md_classified.json"),
        ]
    )
    run([imgcls, "predict", "--model", model, *common, "--format", "camtrapdp", "--utc-offset", "+02:00",
         "--out", str(out / "camtrapdp")])  # fmt: skip
    run([imgcls, "audit", "--data", str(files["cct"]), "--detections", str(files["md"]),
         "--det-categories", "animal,person", "--model", model, "--out", str(out / "audit")])  # fmt: skip
    print(
        f"\nopen {out / 'report' / 'report.html'}; load {out / 'md_classified.json'} in Timelapse; "
        f"publish {out / 'camtrapdp'} (add coordinates with --deployments); review the audit's suspects "
        f"and the least confident crops: imgcls review --audit {out / 'audit'} "
        f"--predictions {out / 'md_classified.json'} --out {out / 'corrections.csv'}"
    )


if __name__ == "__main__":
    main()
