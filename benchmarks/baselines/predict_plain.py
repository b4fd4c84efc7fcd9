"""The prediction baseline a user writes from the torchvision docs: PIL decode,
Resize(256) / CenterCrop(224) / ToTensor / Normalize, an fp32 ResNet-18, softmax, CSV.

    python predict_plain.py WEIGHTS.safetensors NUM_CLASSES OUT.csv IMAGE_OR_FOLDER...
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

TRANSFORM = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ]
)


class Files(Dataset):
    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return TRANSFORM(Image.open(self.paths[i]).convert("RGB"))


def main() -> None:
    weights, classes, out, *inputs = sys.argv[1:]
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        paths += sorted(str(f) for f in p.rglob("*.jpg")) if p.is_dir() else [item]
    model = torchvision.models.resnet18(num_classes=int(classes))
    model.load_state_dict(load_file(weights))
    model.eval()
    workers = 2 if len(paths) > 1 else 0
    loader = DataLoader(Files(paths), batch_size=32, num_workers=workers)
    rows = []
    with torch.no_grad():
        for x in loader:
            p = torch.softmax(model(x), dim=1)
            top = p.topk(min(2, p.shape[1]), dim=1)
            rows += [(int(k[0]), float(v[0]), float(v[-1])) for v, k in zip(top.values, top.indices, strict=True)]
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "probability", "second_probability"])
        w.writerows((path, k, f"{v:.6f}", f"{v2:.6f}") for path, (k, v, v2) in zip(paths, rows, strict=True))


if __name__ == "__main__":
    main()
