"""A tiny camera-trap world for the tests: frames with an animal pasted on a site's background,
bursts of frames with EXIF times, a COCO Camera Traps file and a MegaDetector results file."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

SPECIES = {"deer": (150, 90, 40), "fox": (230, 120, 20), "hare": (120, 110, 100)}
SITES = {"site_a": (60, 120, 50), "site_b": (110, 100, 70), "site_c": (80, 90, 100)}
SIZE = (160, 120)


def exif_bytes(when: datetime) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = when.strftime("%Y:%m:%d %H:%M:%S")
    exif[0x0132] = when.strftime("%Y:%m:%d %H:%M:%S")
    return exif.tobytes()


def frame(
    rng: np.random.Generator,
    site: str,
    species: str | None,
    box: tuple[float, float, float, float] | None,
) -> Image.Image:
    w, h = SIZE
    arr = np.array(SITES[site], dtype=np.float64) + rng.normal(0, 18, (h, w, 3))
    if species is not None and box is not None:
        x, y, bw, bh = box
        x0, y0, x1, y1 = int(x * w), int(y * h), int((x + bw) * w), int((y + bh) * h)
        body = np.array(SPECIES[species], dtype=np.float64) + rng.normal(0, 10, (y1 - y0, x1 - x0, 3))
        stripes = (np.arange(x1 - x0) // (2 + list(SPECIES).index(species) * 2)) % 2 == 0
        body[:, stripes] *= 0.75
        arr[y0:y1, x0:x1] = body
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def build(root: Path, *, bursts_per_site: int = 6, frames: int = 3, seed: int = 0) -> dict[str, Path]:
    """images/<site>/<n>.jpg, cct.json and md.json; every site has every species and blanks."""
    rng = np.random.default_rng(seed)
    images, annotations, md_images = [], [], []
    cats = {"empty": 0, **{s: i + 1 for i, s in enumerate(SPECIES)}}
    t0 = datetime(2024, 5, 1, 6, 0, 0)
    n = 0
    for s_idx, site in enumerate(SITES):
        for b in range(bursts_per_site):
            species = [None, *SPECIES][b % (len(SPECIES) + 1)]
            start = t0 + timedelta(hours=s_idx * 24 + b)
            seq = f"{site}_seq{b}"
            for f in range(frames):
                when = start + timedelta(seconds=2 * f)
                box = None
                if species is not None:
                    bw, bh = rng.uniform(0.25, 0.4), rng.uniform(0.3, 0.45)
                    box = (
                        float(rng.uniform(0, 1 - bw)),
                        float(rng.uniform(0, 1 - bh)),
                        float(bw),
                        float(bh),
                    )
                rel = f"images/{site}/IMG_{n:04d}.JPG"
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                frame(rng, site, species, box).save(path, "JPEG", quality=90, exif=exif_bytes(when))
                images.append({"id": n, "file_name": rel, "location": site, "seq_id": seq, "seq_num_frames": frames,
                               "frame_num": f, "datetime": when.strftime("%Y-%m-%d %H:%M:%S"), "width": SIZE[0], "height": SIZE[1]})  # fmt: skip
                annotations.append({"id": f"a{n}", "image_id": n, "category_id": cats[species or "empty"]})
                dets = []
                if box is not None:
                    jitter = rng.normal(0, 0.01, 4)
                    dets.append({"category": "1", "conf": round(float(rng.uniform(0.7, 0.98)), 3),
                                 "bbox": [round(float(v + j), 4) for v, j in zip(box, jitter, strict=True)]})  # fmt: skip
                elif f == 0:
                    dets.append({"category": "1", "conf": 0.08, "bbox": [0.1, 0.1, 0.2, 0.2]})  # a weak false positive
                md_images.append({"file": rel, "detections": dets})
                n += 1
    cct = {"info": {"version": "1.0"}, "images": images, "annotations": annotations,
           "categories": [{"id": v, "name": k} for k, v in cats.items()]}  # fmt: skip
    md = {"info": {"format_version": "1.4", "detector": "stand-in"},
          "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"}, "images": md_images}  # fmt: skip
    (root / "cct.json").write_text(json.dumps(cct))
    (root / "md.json").write_text(json.dumps(md))
    return {
        "root": root,
        "images": root / "images",
        "cct": root / "cct.json",
        "md": root / "md.json",
    }
