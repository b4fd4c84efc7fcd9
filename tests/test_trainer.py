"""The training engine's options, each by its observable effect (imgcls.engine.trainer, .loop,
.finish).

A trainer is built exactly as ``fit`` builds it and driven an epoch at a time."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls.api import make_run_config
from imgcls.data.dataset import load_table
from imgcls.data.table import DataTable
from imgcls.engine.distributed import Dist
from imgcls.engine.loop import Trainer, train_one_epoch
from imgcls.engine.plan import resolve_model
from imgcls.engine.trainer import build_trainer, label_pos_weight, make_task, sampler_weights
from imgfactory import image_folder

PLAIN = dict(arch="lenet", pretrained="none", image_size=32, augment="none", precision="fp32", calibrate=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 20 images a class, 16 of them for training: 48 training images, divisible by 8 and 16
    return image_folder(tmp_path_factory.mktemp("fit") / "imgs", ("cat", "dog", "fox"), 20)


def trainer(data: Path, tmp_path: Path, **options: object) -> Trainer:
    cfg = make_run_config(data=str(data), out=str(tmp_path / "run"), cache_dir=str(tmp_path / "c"), **options)
    (tmp_path / "run").mkdir(parents=True, exist_ok=True)
    table = load_table(cfg)
    torch.manual_seed(cfg.train.seed)
    tr, _ = build_trainer(cfg, resolve_model(cfg, table), tmp_path / "run", Dist(), table, time.monotonic())
    return tr


def weights(tr: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tr.raw.state_dict().items()}


def test_accumulating_two_half_batches_is_one_full_batch_step(data: Path, tmp_path: Path) -> None:
    opts = dict(PLAIN, epochs=1, optimizer="sgd", momentum=0.0, lr=0.05, weight_decay=0.0, schedule="constant",
                warmup=0.0)  # fmt: skip
    full = trainer(data, tmp_path / "a", batch_size=16, **opts)
    half = trainer(data, tmp_path / "b", batch_size=8, accumulate=2, **opts)
    assert all(torch.equal(a, b) for a, b in zip(weights(full).values(), weights(half).values(), strict=True))
    train_one_epoch(full, 0, show=False)
    train_one_epoch(half, 0, show=False)
    after, start = weights(full), weights(trainer(data, tmp_path / "c", batch_size=16, **opts))
    moved = max(float((after[k] - start[k]).abs().max()) for k in after)
    assert moved > 1e-3  # the steps did something ...
    for k, v in weights(half).items():  # ... and the same thing
        torch.testing.assert_close(v, after[k], rtol=1e-5, atol=1e-6)
    no_acc = trainer(data, tmp_path / "d", batch_size=8, **opts)
    train_one_epoch(no_acc, 0, show=False)  # twice as many steps of half a batch: another result
    assert any(not torch.allclose(v, after[k], atol=1e-4) for k, v in weights(no_acc).items())


def test_clip_grad_bounds_every_step(data: Path, tmp_path: Path) -> None:
    opts = dict(PLAIN, epochs=1, optimizer="sgd", momentum=0.0, lr=0.1, weight_decay=0.0, schedule="constant",
                warmup=0.0, batch_size=8)  # fmt: skip
    tr = trainer(data, tmp_path / "a", clip_grad=1e-3, **opts)
    before = weights(tr)
    train_one_epoch(tr, 0, show=False)
    delta = torch.cat([(v - before[k]).flatten() for k, v in weights(tr).items() if v.is_floating_point()])
    steps = tr.steps_per_epoch
    assert 0 < float(delta.norm()) <= steps * 0.1 * 1e-3 * 1.0001  # each step moves at most lr * clip
    free = trainer(data, tmp_path / "b", **opts)
    train_one_epoch(free, 0, show=False)
    delta_free = torch.cat([(v - before[k]).flatten() for k, v in weights(free).items() if v.is_floating_point()])
    assert float(delta_free.norm()) > 10 * float(delta.norm())


def test_ema_is_what_gets_evaluated_and_saved(data: Path, tmp_path: Path) -> None:
    tr = trainer(data, tmp_path, **dict(PLAIN, epochs=1, batch_size=8, ema=0.9))
    train_one_epoch(tr, 0, show=False)
    raw, ema = tr.raw.state_dict(), tr.ema.module.state_dict()
    assert tr.eval_model is tr.ema.module
    diff = max(float((raw[k].float() - ema[k].float()).abs().max()) for k in raw)
    assert diff > 1e-4  # an average of the weights along the way, not the last ones


def test_class_balanced_sampler_draws_every_class_equally(tmp_path: Path) -> None:
    cfg = make_run_config(data="x", balance="sampler")
    targets = np.array([0] * 60 + [1] * 30 + [2] * 10)
    table = DataTable("csv", tmp_path, [f"{i}.jpg" for i in range(100)], targets, ["a", "b", "c"])
    w = sampler_weights(cfg, table, np.arange(100))
    from imgcls.data.loaders import epoch_order

    drawn = np.concatenate([epoch_order(np.arange(100), 0, e, weights=w) for e in range(20)])
    share = np.bincount(targets[drawn], minlength=3) / len(drawn)
    assert np.allclose(share, 1 / 3, atol=0.03)  # not 0.6 / 0.3 / 0.1


def test_multilabel_balance_and_rows_without_labels(tmp_path: Path) -> None:
    # 90 rows of "a", 10 of "b" (some with both), 20 with no label at all
    t = np.zeros((120, 2), np.uint8)
    t[:90, 0] = 1
    t[85:95, 1] = 1
    table = DataTable("csv", tmp_path, [f"{i}.jpg" for i in range(120)], t, ["a", "b"], multilabel=True)
    rows = np.arange(120)
    task = make_task(make_run_config(data="x", balance="weights", task="multilabel"), table, rows)
    # pos_weight per label = negatives / positives: 30 / 90 for a, 110 / 10 for b
    assert task.pos_weight is not None and task.pos_weight.tolist() == pytest.approx([30 / 90, 110 / 10])
    assert label_pos_weight(np.zeros((4, 1), np.uint8)).tolist() == [1.0]
    logits, y = torch.zeros(120, 2), torch.from_numpy(t).float()
    expected = (
        torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, pos_weight=torch.tensor([30 / 90, 11.0]), reduction="none"
        )
        .sum(1)
        .mean()
    )
    torch.testing.assert_close(task.loss(logits, y), expected)
    w = sampler_weights(make_run_config(data="x", balance="sampler"), table, rows)
    keys = table.stratify_key()
    totals = {k: float(w[keys == k].sum()) for k in (-1, 0, 1)}  # no label, "a", "b" (the rarer)
    assert totals == pytest.approx({-1: 1.0, 0: 1.0, 1: 1.0})  # the unlabelled rows are their own stratum


def test_mixup_and_cutmix_mix_images_and_labels_alike() -> None:
    from imgcls.engine.trainer import make_mixer
    from imgcls.tasks import Task

    task = Task("multiclass", ["a", "b", "c"])
    x, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    torch.manual_seed(3)
    mix = make_mixer(make_run_config(data="x", mixup=0.4), task)
    assert mix is not None
    xm, ym = mix(x, y)
    lam = float(ym[0, 0])  # each image mixed with the one before it, by the same share
    assert 0 < lam < 1 and torch.allclose(ym.sum(1), torch.ones(6))
    torch.testing.assert_close(ym, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x.roll(1, 0))
    mix = make_mixer(make_run_config(data="x", cutmix=1.0), task)
    assert mix is not None
    xc, yc = mix(x, y)
    pasted = (xc != x).any(1)  # the pixels taken from the neighbouring image
    assert pasted.any() and torch.equal(
        xc[pasted.unsqueeze(1).expand_as(x)], x.roll(1, 0)[pasted.unsqueeze(1).expand_as(x)]
    )
    share = float(pasted[0].float().mean())  # the labels carry the pasted area's share
    torch.testing.assert_close(yc, (1 - share) * one_hot + share * one_hot.roll(1, 0))
    with pytest.raises(Exception, match="multi-class"):
        make_mixer(make_run_config(data="x", mixup=0.2), Task("binary", ["a", "b"]))


def test_small_image_files_get_the_small_image_defaults(tmp_path: Path) -> None:
    from imgcls.engine.plan import SMALL_ARCH

    image_folder(tmp_path / "small", ("a", "b"), 6, size=(28, 28), fmt="PNG")
    tr = trainer(tmp_path / "small", tmp_path / "run", epochs=1)
    assert tr.cfg.model.arch == SMALL_ARCH and tr.preprocess.image_size == 28 and tr.cfg.data.augment == "small"


def test_flip_tta_is_kept_only_where_it_helps_on_validation() -> None:
    from imgcls.engine.finish import choose_tta
    from imgcls.tasks import Task

    task = Task("multiclass", ["a", "b"])
    y = np.array([0, 0, 1, 1])
    plain = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, 2.0]])  # image 2 wrong: 0.75
    helps = np.array([[2.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 2.0]])  # its mirror is right: mean right
    hurts = np.array([[0.0, 5.0], [0.0, 1.0], [0.0, 2.0], [0.0, 2.0]])  # the first one turns wrong
    choice, figures = choose_tta(task, plain, helps, y)
    assert choice == "flip" and figures["flip"]["val_top1"] == 1.0 and figures["none"]["val_top1"] == 0.75
    choice, figures = choose_tta(task, plain, hurts, y)
    assert choice == "none" and figures["flip"]["val_top1"] == 0.5
    sharper = plain * np.array([[1.0], [1.0], [2.0], [2.0]])  # same decisions, more confident where right
    assert choose_tta(task, plain, sharper, y)[0] == "flip"  # same top-1, lower NLL


def test_the_closing_line_and_evaluate_agree_on_the_validation_split(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    import imgcls
    from imgcls.artifacts import read_info
    from imgcls.evaluate import evaluate

    run = imgcls.train(data, out=tmp_path / "run", cache_dir=tmp_path / "c", arch="lenet", pretrained="none",
                       image_size=32, epochs=3, batch_size=8, precision="fp32")  # fmt: skip
    err = capsys.readouterr().err
    info = read_info(run / "model")
    choice = info.provenance["tta_choice"]  # 32-px images trained with flips: decided on validation
    assert set(choice) == {"none", "flip"} and "test-time flip: " in err
    flip_better = choice["flip"]["val_top1"] > choice["none"]["val_top1"] or (
        choice["flip"]["val_top1"] == choice["none"]["val_top1"]
        and choice["flip"]["val_nll"] < choice["none"]["val_nll"]
    )
    assert info.tta == ("flip" if flip_better else "none")
    closing = re.search(r"best: epoch \d+ of 3, val_top1 ([0-9.]+), val_nll ([0-9.]+)", err)
    assert closing is not None, err
    val = evaluate(run / "model", data, split="val", precision="fp32").metrics
    assert val["top1"] == pytest.approx(float(closing.group(1)), abs=1e-4)
    assert val["nll"] == pytest.approx(float(closing.group(2)), abs=2e-3)


def test_an_epoch_records_its_training_top1_as_trained(data: Path, tmp_path: Path) -> None:
    """``train_top1``: the share of the epoch's training images (as trained: the batches the
    steps saw) whose decision was right, for He et al.'s training-error curves."""
    opts = dict(PLAIN, epochs=1, optimizer="sgd", momentum=0.0, lr=1e-12, weight_decay=0.0, schedule="constant",
                warmup=0.0, batch_size=8)  # fmt: skip
    tr = trainer(data, tmp_path, **opts)
    right = seen = 0
    with torch.no_grad():  # the weights barely move at this rate: the decisions are the start's
        for x, y, _ in tr.train_batches.epoch(0):
            right += int((tr.raw(tr.runtime.inputs(x)).argmax(1) == y).sum())
            seen += len(y)
    stats = train_one_epoch(tr, 0, show=False)
    assert seen == stats["images"] and 0 < right < seen
    assert stats["train_top1"] == pytest.approx(right / seen)
