"""The training baseline a user writes from the torchvision docs: ImageFolder with
RandomResizedCrop / RandomHorizontalFlip / ToTensor / Normalize, DataLoader(num_workers=2),
an fp32 ResNet-18, SGD with momentum, a validation pass per epoch.

    python train_plain.py DATA_DIR EPOCHS BATCH_SIZE OUT.safetensors
DATA_DIR holds train/ and val/ class folders. Prints the last validation accuracy as JSON.
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
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
         transforms.Normalize(MEAN, STD)]
    )  # fmt: skip
    val_tf = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    train = datasets.ImageFolder(f"{root}/train", train_tf)
    val = datasets.ImageFolder(f"{root}/val", val_tf)
    train_loader = DataLoader(train, batch_size=batch, shuffle=True, num_workers=2)
    val_loader = DataLoader(val, batch_size=batch, num_workers=2)
    model = torchvision.models.resnet18(num_classes=len(train.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    accuracy = 0.0
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        accuracy = correct / total
    save_file(model.state_dict(), out)
    print(json.dumps({"val_top1": accuracy}))


if __name__ == "__main__":
    main()
