"""Resolving every default of a run, without training (imgcls.engine.plan)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from imgcls.api import make_run_config
from imgcls.config import PreprocessConfig
from imgcls.data import load_source
from imgcls.data.table import DataTable
from imgcls.engine.plan import (
    SMALL_ARCH,
    default_batch_size,
    image_side,
    resolve,
    resolve_model,
)
from imgcls.errors import UserError
from imgcls.runtime import DeviceFacts
from imgfactory import image_folder

IMAGENET = PreprocessConfig()  # 224 px, ImageNet mean/std, crop 0.875
SMALLNET = PreprocessConfig(input_size=(3, 28, 28), mean=(0.5,) * 3, std=(0.25,) * 3)


def table(n: int = 40, classes: tuple[str, ...] = ("a", "b", "c"), *, pixels: int | None = None) -> DataTable:
    targets = np.arange(n) % len(classes)
    px = np.zeros((n, pixels, pixels), np.uint8) if pixels else None
    return DataTable("idx" if px is not None else "csv", Path("."), [f"{i}.png" for i in range(n)], targets,
                     list(classes), pixels=px)  # fmt: skip


def test_model_choice_follows_the_images_and_the_task(tmp_path: Path) -> None:
    small = table(pixels=28)
    m = resolve_model(make_run_config(data="x"), small)
    assert (m.arch, m.task, m.num_outputs, m.image_side, m.pretrained) == (SMALL_ARCH, "multiclass", 3, 28, None)
    big = load_source(image_folder(tmp_path / "big", ("a", "b"), 3, size=(160, 120)))
    m = resolve_model(make_run_config(data="x"), big)
    assert (m.arch, m.task, m.num_outputs, m.image_side, m.pretrained) == ("resnet18", "binary", 1, None, "default")
    assert resolve_model(make_run_config(data="x", pretrained="none"), big).pretrained is None
    assert resolve_model(make_run_config(data="x", arch="vgg16_c"), big).pretrained is None  # nothing published
    assert (
        image_side(table(pixels=96)) == 96
        and resolve_model(make_run_config(data="x"), table(pixels=96)).arch == "resnet18"
    )
    with pytest.raises(UserError, match="only one class"):
        resolve_model(make_run_config(data="x"), table(classes=("a",)))


def test_fine_tuning_a_model_directory_takes_its_architecture(tmp_path: Path) -> None:
    saved = tmp_path / "model"
    saved.mkdir()
    (saved / "config.json").write_text(
        json.dumps({"architecture": "vgg11", "imgcls": {"arch": "vgg11", "norm": "group", "attn": "se"}})
    )
    m = resolve_model(make_run_config(data="x", pretrained=str(saved)), table(pixels=28))
    assert (m.arch, m.norm, m.attn, m.pretrained) == ("vgg11", "group", "se", str(saved))
    m = resolve_model(make_run_config(data="x", pretrained=str(saved), norm="batch"), table(pixels=28))
    assert (m.arch, m.norm) == ("vgg11", "batch")  # what the user gives wins


def test_every_remaining_default_is_decided_and_the_config_is_not_touched() -> None:
    cfg = make_run_config(data="x", epochs=6)
    before = copy.deepcopy(cfg)
    small = resolve_model(cfg, table(pixels=28))
    plan = resolve(cfg, small, SMALLNET, train_images=55_000)
    assert cfg == before  # nothing mutated
    assert plan.preprocess.image_size == 28 and plan.preprocess.crop_pct == 1.0  # every pixel kept
    for side, size in ((32, 32), (48, 48), (8, 28)):  # small images are not downsampled
        assert (
            resolve(cfg, resolve_model(cfg, table(pixels=side)), SMALLNET, train_images=500).preprocess.image_size
            == size
        )
    assert (plan.augment, plan.tta, plan.batch_size) == ("small", "auto", 256)
    assert plan.lr == pytest.approx(1e-3 * 2) and plan.weight_decay == 0.05  # AdamW: sqrt(256 / 64)
    assert (plan.head_epochs, plan.backbone_lr_mult) == (0, 1.0)  # from scratch
    resolved = plan.config(cfg)
    assert resolved.model.arch == SMALL_ARCH and resolved.train.batch_size == 256 and resolved.train.tta == "auto"
    assert resolved.model.pretrained == "none" and cfg.model.arch == "auto"
    # large images, fine-tuning, few of them, two processes, SGD
    big = resolve_model(make_run_config(data="x", arch="resnet18"), table())
    plan = resolve(make_run_config(data="x", optimizer="sgd", epochs=6), big, IMAGENET, train_images=900, world=2)
    assert plan.preprocess == IMAGENET and (plan.augment, plan.tta) == ("standard", "none")
    assert plan.batch_size == 16  # 450 images a process: 28 steps of 16
    assert plan.lr == pytest.approx(0.1 * 16 * 2 / 256) and plan.weight_decay == 5e-4
    assert (plan.head_epochs, plan.backbone_lr_mult) == (1, 0.1)  # fine-tuning: the head first
    given = resolve(make_run_config(data="x", batch_size=8, lr=0.5, image_size=96, augment="flip", tta="flip",
                                    head_epochs=0, backbone_lr_mult=1.0), big, IMAGENET, train_images=900)  # fmt: skip
    assert (given.batch_size, given.lr, given.preprocess.image_size, given.augment, given.tta) == (
        8,
        0.5,
        96,
        "flip",
        "flip",
    )
    assert (given.head_epochs, given.backbone_lr_mult) == (0, 1.0)


def test_default_batch_sizes() -> None:
    assert default_batch_size(28, 55_000) == 256 and default_batch_size(224, 55_000) == 64
    assert default_batch_size(224, 1084) == 32 and default_batch_size(32, 300) == 16 and default_batch_size(32, 0) == 16


def test_the_default_batch_on_a_gpu_follows_its_memory_and_the_rate_follows_the_batch() -> None:
    """A fake GPU's free memory and the model's activation memory per image (summary's float32 KB)
    decide the default batch; the learning rate is scaled to it as on a CPU."""
    gib = 1 << 30

    def gpu(free_gib: int) -> DeviceFacts:
        return DeviceFacts("cuda", "a GPU", free_gib * gib, 80 * gib)

    r18, r50 = 29_212.0, 125_166.0  # ResNet-18 / ResNet-50 at 224 px (imgcls summary)
    assert (
        default_batch_size(224, 100_000, gpu(70), r18) == 256 and default_batch_size(224, 100_000, gpu(70), r50) == 256
    )
    assert default_batch_size(224, 100_000, gpu(8), r18) == 128  # 256 x 29.9 MB > half of 8 GiB; 128 fits
    assert default_batch_size(224, 100_000, gpu(40), r50) == 128 and default_batch_size(224, 100_000, gpu(1), r50) == 16
    assert default_batch_size(28, 100_000, gpu(70), 1_138.0) == 512  # small images
    assert default_batch_size(224, 3_200, gpu(70), r18) == 64  # still 32 steps an epoch at least
    assert default_batch_size(224, 100_000, gpu(70)) == 64  # activation memory unknown: the CPU's size
    assert default_batch_size(224, 100_000, DeviceFacts("cpu", "a CPU", 70 * gib, 80 * gib), r18) == 64
    big = resolve_model(make_run_config(data="x", arch="resnet18"), table())
    for optimizer, lr in (("sgd", 0.1), ("adamw", 1e-3 * 2)):  # 0.1 per 256; AdamW sqrt(256 / 64) x 1e-3
        plan = resolve(make_run_config(data="x", optimizer=optimizer), big, IMAGENET, train_images=100_000,
                       device=gpu(70), activation_kb=r18)  # fmt: skip
        assert plan.batch_size == 256 and plan.lr == pytest.approx(lr)
    given = resolve(make_run_config(data="x", batch_size=32), big, IMAGENET, train_images=100_000, device=gpu(70),
                    activation_kb=r18)  # fmt: skip
    assert given.batch_size == 32


def test_the_trainer_measures_the_activation_memory_only_for_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgcls.engine import trainer
    from imgcls.models.summary import summarize_arch

    monkeypatch.setattr(trainer, "resolve_device", lambda device: device)
    monkeypatch.setattr(trainer, "device_facts", lambda device: DeviceFacts(device, device, 1 << 33, 1 << 34))
    mp = resolve_model(make_run_config(data="x", arch="resnet18"), table())
    expected = summarize_arch("resnet18", input_size=(3, 160, 160), num_classes=3).activation_kb
    on_gpu = trainer.batch_device(make_run_config(data="x", device="cuda"), mp, IMAGENET.with_size(160))
    assert on_gpu["device"].type == "cuda" and on_gpu["activation_kb"] == pytest.approx(expected)
    assert set(trainer.batch_device(make_run_config(data="x", device="cpu"), mp, IMAGENET)) == {"device"}
    assert trainer.batch_device(make_run_config(data="x", device="cuda", batch_size=8), mp, IMAGENET) == {}
