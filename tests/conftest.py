"""Shared test set-up: no network, a private cache, small deterministic thread settings."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub / torch.hub: tests never download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("cache")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    os.environ["TORCH_HOME"] = str(cache / "torch")
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small model trained once for the prediction / evaluation / export / serve tests:
    LeNet on three colour classes, with the data it was trained on."""
    import imgcls
    from imgfactory import image_folder

    root = tmp_path_factory.mktemp("trained")
    data = image_folder(root / "data", ("cat", "dog", "fox"), 10, size=(64, 48))
    run = imgcls.train(
        data, out=root / "run", arch="lenet", epochs=6, batch_size=8, image_size=32,
        pretrained="none", cache_dir=root / "cache", lr=0.01, seed=0,
    )  # fmt: skip
    return {"data": data, "run": run, "model": run / "model", "root": root}
