"""The training baseline a user writes from the torchvision docs: ImageFolder with
RandomResizedCrop / RandomHorizontalFlip / ToTensor / Normalize, DataLoader(num_workers=2),
an fp32 ResNet-18, SGD with momentum, a validation pass per epoch.

    python train_plain.py DATA_DIR EPOCHS BATCH_SIZE OUT.safetensors [DEVICE [WORKERS [SIZE]]]
DATA_DIR holds train/ and val/ class folders. Prints the last validation accuracy as JSON.
DEVICE cuda: the docs' GPU loop (pinned-memory DataLoader, non-blocking copies); WORKERS: the
DataLoader's processes (default 2); SIZE: the crop (default 224; the tiny GPU check uses less).
"""

from __future__ import annotations

import json
import sys

import torch
import torchvision
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    root, epochs, batch, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    extra = sys.argv[5:] + ["cpu", "2", "224"][len(sys.argv[5:]) :]
    device, workers, size = torch.device(extra[0]), int(extra[1]), int(extra[2])
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
         transforms.Normalize(MEAN, STD)]
    )  # fmt: skip
    val_tf = transforms.Compose(
        [transforms.Resize(size * 8 // 7), transforms.CenterCrop(size), transforms.ToTensor(),
         transforms.Normalize(MEAN, STD)]
    )  # fmt: skip
    train = datasets.ImageFolder(f"{root}/train", train_tf)
    val = datasets.ImageFolder(f"{root}/val", val_tf)
    pin = device.type == "cuda"
    train_loader = DataLoader(train, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin)
    val_loader = DataLoader(val, batch_size=batch, num_workers=workers, pin_memory=pin)
    model = torchvision.models.resnet18(num_classes=len(train.classes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    accuracy = 0.0
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val_loader:
                x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        accuracy = correct / total
    save_file(model.state_dict(), out)
    print(json.dumps({"val_top1": accuracy}))


if __name__ == "__main__":
    main()
