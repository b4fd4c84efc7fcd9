"""Training end to end: every task and data source, transfer learning, resume (time budgets:
test_budget.py, on a simulated clock; DDP over two torchrun nodes: test_multinode.py)."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import torchvision
import yaml
from safetensors.torch import load_file, save_file

import imgcls
from imgcls.artifacts import load_model, read_info
from imgcls.cli import main
from imgcls.config import RunConfig, from_dict
from imgfactory import broken_files, idx_dataset, image_folder, unusual_files

FAST = {"arch": "lenet", "epochs": 2, "batch_size": 8, "image_size": 32, "pretrained": "none"}
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("data") / "imgs", ("cat", "dog", "fox"), 12)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_multiclass_run_directory(folder: Path, tmp_path: Path) -> None:
    run = imgcls.train(folder, out=tmp_path / "run", cache_dir=tmp_path / "c", **FAST)
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml", "metrics.jsonl", "splits.csv", "skipped.csv", "model", "checkpoint", "curves.png",
    }  # fmt: skip
    h = history(run)
    assert [m["epoch"] for m in h] == [1, 2]
    for key in ("lr", "train_loss", "val_loss", "val_top1", "seconds", "images_per_second"):
        assert key in h[0]
    cfg = from_dict(RunConfig, yaml.safe_load((run / "config.yaml").read_text()))
    assert cfg.model.arch == "lenet" and cfg.data.image_size == 32
    assert cfg.optim.lr == pytest.approx(1e-3 * (8 / 64) ** 0.5)  # AdamW: square-root batch scaling
    split = rows(run / "splits.csv")
    assert len(split) == 36 and {r["split"] for r in split} == {"train", "val"}
    assert rows(run / "skipped.csv") == []
    model, info = load_model(run / "model")
    assert info.label_names == ["cat", "dog", "fox"] and info.task == "multiclass"
    assert info.preprocess.input_size == (3, 32, 32)
    best = max(h, key=lambda m: (m["val_top1"], -m["val_loss"]))
    assert info.provenance["epoch"] == best["epoch"]
    assert info.provenance["metrics"]["val_top1"] == pytest.approx(best["val_top1"])
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_broken_files_are_skipped_and_listed_exactly(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "imgs", ("a", "b"), 10)
    expected = broken_files(data / "a")
    odd = unusual_files(data / "b", 1)
    run = imgcls.train(data, out=tmp_path / "run", cache_dir=tmp_path / "c", **FAST)
    skipped = rows(run / "skipped.csv")
    assert sorted(Path(r["path"]).name for r in skipped) == sorted(expected)
    for r in skipped:
        assert expected[Path(r["path"]).name] in r["reason"]
    used = {Path(r["path"]).name for r in rows(run / "splits.csv")}
    assert set(odd) <= used


@pytest.mark.parametrize("kind", ["folder", "split-folders", "idx", "csv", "coco"])
def test_every_data_spec_trains(tmp_path: Path, kind: str) -> None:
    if kind == "folder":
        spec = image_folder(tmp_path / "d", ("a", "b", "c"), 6)
    elif kind == "split-folders":
        image_folder(tmp_path / "d" / "train", ("a", "b", "c"), 6)
        image_folder(tmp_path / "d" / "val", ("a", "b", "c"), 2, seed=1)
        image_folder(tmp_path / "d" / "test", ("a", "b", "c"), 2, seed=2)
        spec = tmp_path / "d"
    elif kind == "idx":
        spec = idx_dataset(tmp_path / "d", 48, 12)
    else:
        image_folder(tmp_path / "d", ("a", "b", "c"), 6)
        files = sorted((tmp_path / "d").rglob("*.jpg"))
        if kind == "csv":
            spec = tmp_path / "m.csv"
            spec.write_text("path,label\n" + "".join(f"d/{f.parent.name}/{f.name},{f.parent.name}\n" for f in files))
        else:
            spec = tmp_path / "cct.json"
            cats = {"a": 0, "b": 1, "c": 2}
            spec.write_text(json.dumps({
                "images": [{"id": i, "file_name": f"d/{f.parent.name}/{f.name}", "location": f"s{i % 4}"} for i, f in enumerate(files)],
                "annotations": [{"id": i, "image_id": i, "category_id": cats[f.parent.name]} for i, f in enumerate(files)],
                "categories": [{"id": v, "name": k} for k, v in cats.items()],
            }))  # fmt: skip
    opts = dict(FAST, epochs=1)
    if kind == "coco":
        opts["split_by"] = "location"
    run = imgcls.train(spec, out=tmp_path / "run", cache_dir=tmp_path / "c", **opts)
    assert len(history(run)) == 1
    split = rows(run / "splits.csv")
    if kind in ("split-folders", "idx"):
        assert "test" in {r["split"] for r in split}  # listed, never trained on
    if kind == "idx":
        assert read_info(run / "model").preprocess.input_size == (3, 32, 32)


def test_binary_task_with_named_positive_class(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "d", ("animal", "blank"), 12)
    run = imgcls.train(data, out=tmp_path / "run", positive="animal", cache_dir=tmp_path / "c", **FAST)
    info = read_info(run / "model")
    assert info.task == "binary" and info.positive_class == "animal" and info.num_outputs == 1
    assert info.thresholds == [0.5]
    assert "val_roc_auc" in history(run)[-1]


def test_multilabel_task_tunes_and_saves_thresholds(tmp_path: Path) -> None:
    image_folder(tmp_path / "d", ("a", "b", "c"), 10)
    lines = ["path,label"]
    for f in sorted((tmp_path / "d").rglob("*.jpg")):
        k = f.parent.name
        labels = {"a": "sky;water", "b": "water", "c": "sky;tree"}[k]
        lines.append(f"d/{k}/{f.name},{labels}")
    (tmp_path / "m.csv").write_text("\n".join(lines))
    opts = dict(FAST, epochs=3, precision="fp32")
    run = imgcls.train(tmp_path / "m.csv", out=tmp_path / "run", cache_dir=tmp_path / "c", **opts)
    info = read_info(run / "model")
    assert info.task == "multilabel" and info.label_names == ["sky", "tree", "water"]
    assert "val_mAP" in history(run)[-1]
    # the saved thresholds are the ones with the best F1 of each label on the validation images
    from imgcls.evaluate import evaluate
    from imgcls.tasks import tune_thresholds

    val = evaluate(run / "model", tmp_path / "m.csv", split="val", precision="fp32")
    assert info.thresholds == pytest.approx(tune_thresholds(val.probs, val.targets), abs=1e-5)
    assert info.thresholds != [0.5, 0.5, 0.5]


def test_transfer_from_torchvision_and_timm_state_dicts(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    tv = tmp_path / "tv_resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tv)
    tm = tmp_path / "timm_resnet18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(tm))
    opts = dict(FAST, arch="resnet18", epochs=1, image_size=32)
    for i, src in enumerate((tv, tm)):
        opts["pretrained"] = str(src)
        imgcls.train(folder, out=tmp_path / f"run{i}", cache_dir=tmp_path / "c", **opts)
        err = capsys.readouterr().err
        assert "pretrained: loaded 120 tensors" in err and "2 new: fc.weight, fc.bias" in err


def test_fine_tuning_a_model_directory_takes_its_architecture(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opts = dict(FAST, arch="lenet", norm="batch", attn="se", epochs=1)
    first = imgcls.train(folder, out=tmp_path / "first", cache_dir=tmp_path / "c", **opts)
    capsys.readouterr()
    two = image_folder(tmp_path / "two", ("owl", "bat"), 8)  # new classes
    second = imgcls.train(two, out=tmp_path / "second", cache_dir=tmp_path / "c", pretrained=str(first / "model"),
                          epochs=1, batch_size=8, image_size=32)  # fmt: skip
    err = capsys.readouterr().err
    cfg = yaml.safe_load((second / "config.yaml").read_text())
    assert (cfg["model"]["arch"], cfg["model"]["norm"], cfg["model"]["attn"]) == ("lenet", "batch", "se")
    assert "pretrained: loaded" in err and "new: fc3.weight, fc3.bias" in err
    assert read_info(second / "model").label_names == ["bat", "owl"]


def test_calibration_fits_a_temperature_that_predict_and_evaluate_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imgcls.evaluate import evaluate

    data = tmp_path / "d"
    image_folder(data / "train", ("cat", "dog", "fox"), 32)
    image_folder(data / "val", ("cat", "dog", "fox"), 8, seed=1)  # 24 validation images
    opts = dict(FAST, epochs=3, label_smoothing=0.2)
    run = imgcls.train(data, out=tmp_path / "sep", cache_dir=tmp_path / "c", **opts)
    err = capsys.readouterr().err  # all 24 right: the NLL falls all the way to T = 0, no fit
    assert "calibration: not fitted: the network classifies all 24 validation images right" in err
    assert read_info(run / "model").temperature == 1.0
    for k in range(3):  # three images labelled as the next class: the network gets them wrong
        cls, nxt = ("cat", "dog", "fox")[k], ("dog", "fox", "cat")[k]
        (data / "val" / cls / f"{cls}_000.jpg").rename(data / "val" / nxt / f"was_{cls}.jpg")
    run = imgcls.train(data, out=tmp_path / "run", cache_dir=tmp_path / "c", **opts)
    err = capsys.readouterr().err
    assert "calibration: temperature" in err
    info = read_info(run / "model")
    assert info.temperature != 1.0 and 0.05 < info.temperature < 20
    raw = imgcls.train(data, out=tmp_path / "raw", cache_dir=tmp_path / "c", calibrate=False, **opts)
    assert read_info(raw / "model").temperature == 1.0  # same seed, same weights, no temperature
    assert sum(r["split"] == "val" for r in rows(run / "splits.csv")) == 24
    # the ONNX export carries the temperature in its metadata
    assert imgcls.load(run / "model" / "model.onnx").info.temperature == info.temperature
    # on the data it was fitted to, the calibrated model's NLL is lower (or equal)
    on_val = evaluate(run / "model", data, split="val", out=tmp_path / "report")
    calibrated = on_val.metrics
    assert calibrated["temperature"] == info.temperature
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Probabilities are calibrated" in page
    # the validation split chose the epoch and the temperature: the report says its figures are optimistic
    assert on_val.selection_split and "<b>Optimistic:</b> measured on the validation split" in page
    assert "split that chose the best epoch" in page  # beside the training curves
    assert "that also chose the best epoch and the temperature, so optimistic" in on_val.selection_note
    raw_on_val = evaluate(raw / "model", data, split="val")
    assert "that also chose the best epoch, so optimistic" in raw_on_val.selection_note  # no temperature
    plain = raw_on_val.metrics
    assert calibrated["nll"] <= plain["nll"] + 1e-6
    assert calibrated["top1"] == plain["top1"]  # the temperature keeps every arg-max


def test_binary_threshold_fixed_or_tuned_on_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image_folder(tmp_path / "d", ("cat", "dog"), 30)  # 12 validation images
    opts = dict(FAST, epochs=2, positive="dog")
    fixed = imgcls.train(data, out=tmp_path / "fixed", cache_dir=tmp_path / "c", binary_threshold="0.7", **opts)
    assert read_info(fixed / "model").thresholds == [0.7]
    capsys.readouterr()
    tuned = imgcls.train(
        data, out=tmp_path / "tuned", cache_dir=tmp_path / "c", binary_threshold="f1", **dict(opts, precision="fp32")
    )
    assert "threshold: dog from p >=" in capsys.readouterr().err
    (cut,) = read_info(tuned / "model").thresholds
    from imgcls.evaluate import evaluate
    from imgcls.tasks import tune_binary_threshold

    val = evaluate(tuned / "model", data, split="val", precision="fp32")
    assert cut == pytest.approx(tune_binary_threshold(val.probs[:, 1], val.targets == 1, "f1"), abs=1e-5)
    from sklearn.metrics import f1_score

    def f1_at(t: float) -> float:
        return float(f1_score(val.targets == 1, val.probs[:, 1] >= t))

    assert all(f1_at(cut) >= f1_at(t) for t in (0.1, 0.3, 0.5, 0.7, 0.9))  # no other cut does better
    with pytest.raises(imgcls.errors.UserError, match="--binary-threshold must be"):
        imgcls.train(data, out=tmp_path / "bad", binary_threshold="always", **opts)


def test_frozen_backbone_keeps_pretrained_weights_and_bn_statistics(folder: Path, tmp_path: Path) -> None:
    src = tmp_path / "r18.safetensors"
    pretrained = timm.create_model("resnet18").state_dict()
    save_file(pretrained, str(src))
    opts = dict(FAST, arch="resnet18", pretrained=str(src), freeze="backbone")
    run = imgcls.train(folder, out=tmp_path / "run", cache_dir=tmp_path / "c", **opts)
    trained = load_file(str(run / "model" / "model.safetensors"))
    for k, v in pretrained.items():
        if not k.startswith("fc."):
            assert torch.equal(trained[k], v), k  # weights and running statistics untouched
    assert trained["fc.weight"].shape == (3, 512)


def test_pickle_that_would_run_code_is_refused_from_the_cli(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    evil = tmp_path / "weights.pth"
    evil.write_bytes(pickle.dumps({"conv1.weight": Exploit()}))
    code = main(
        [
            "train",
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "run"),
            "--arch",
            "resnet18",
            "--pretrained",
            str(evil),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "refusing to load" in err and not marker.exists()


def _train_cmd(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "imgcls"), "train", "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
        "--arch", "resnet20", "--pretrained", "none", "--epochs", "3", "--batch-size", "2",
        "--image-size", "32", "--seed", "5", "--deterministic", "--no-export-onnx", "--tta", "none", *extra,
    ]  # fmt: skip


def _position(ckpt: Path) -> dict | None:
    try:
        return torch.load(ckpt, weights_only=True)["position"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return None


def test_kill_minus_nine_and_resume_ends_with_the_uninterrupted_weights(folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    subprocess.run(_train_cmd(folder, tmp_path / "full", cache), check=True, capture_output=True)
    proc = subprocess.Popen(
        _train_cmd(folder, tmp_path / "killed", cache, "--checkpoint-minutes", "0.0001"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = tmp_path / "killed" / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 120
    # 14 steps an epoch, a checkpoint after every step: kill early in the second epoch
    while time.monotonic() < deadline:
        pos = _position(ckpt) if ckpt.exists() else None
        if pos is not None and pos["epoch"] == 1 and 2 <= pos["step"] <= 6:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    pos = _position(ckpt)
    assert pos is not None and pos["epoch"] == 1 and 0 < pos["step"] < 14  # killed inside an epoch
    r = subprocess.run(
        [str(BIN / "imgcls"), "train", "--out", str(tmp_path / "killed"), "--resume"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert f"resuming {tmp_path / 'killed'} at epoch 2, step {pos['step']}" in r.stderr
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = history(tmp_path / "full"), history(tmp_path / "killed")
    assert [h["val_loss"] for h in ha] == [h["val_loss"] for h in hb]


def test_yaml_config_with_command_line_overrides(folder: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"arch": "lenet", "pretrained": "none"},
        "optim": {"optimizer": "sgd", "lr": 0.05},
        "train": {"epochs": 1, "batch_size": 8},
        "image_size": 32,
    }))  # fmt: skip
    code = main(["train", "--config", str(recipe), "--data", str(folder), "--out", str(tmp_path / "run"),
                 "--lr", "0.02", "--cache-dir", str(tmp_path / "c")])  # fmt: skip
    assert code == 0
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["optim"]["optimizer"] == "sgd" and cfg["optim"]["lr"] == 0.02
    assert cfg["data"]["image_size"] == 32 and cfg["train"]["epochs"] == 1


def test_run_directory_is_protected_and_resume_needs_a_checkpoint(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "busy")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "busy" / "x").read_text() == "keep me"
    assert main(["train", "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "r"), "--arch", "nonet"]) == 2
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 2
    assert "data not found" in capsys.readouterr().err
    # a run inside the class folders would be a class of the next run on them
    own = image_folder(tmp_path / "own", ("cat", "dog"), 3)
    assert main(["train", "--data", str(own), "--out", str(own / "runs" / "a")]) == 2
    assert "is inside the data folder" in capsys.readouterr().err
    assert sorted(p.name for p in own.iterdir()) == ["cat", "dog"]
    # a class none of whose files can be used: named, with one of its files and the reason
    (own / "junk").mkdir()
    for k in range(2):
        (own / "junk" / f"f{k}.jpg").write_text("not an image")
    assert main(["train", "--data", str(own), "--out", str(tmp_path / "r3"), "--cache-dir", str(tmp_path / "c"),
                 "--arch", "lenet", "--pretrained", "none"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no usable image of class junk (2 listed: " in err and "f0.jpg: not an image" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r3").exists()
    # a class only the validation folder has: trained anyway, with a warning that says so
    split = tmp_path / "split"
    image_folder(split / "train", ("cat", "dog"), 4)
    image_folder(split / "val", ("cat", "dog", "fox"), 2)
    assert main(["train", "--data", str(split), "--out", str(tmp_path / "r4"), "--cache-dir", str(tmp_path / "c"),
                 "--arch", "lenet", "--pretrained", "none", "--epochs", "1", "--image-size", "32"]) == 0  # fmt: skip
    assert "warning: no training image of class fox (only in validation)" in capsys.readouterr().err


def test_a_class_too_thin_to_learn_or_to_measure_is_warned_about() -> None:
    """A review's new class: 'unclear' with one training image and none in validation was cut off
    the start line's class list ('7 (133) ...') and nothing said so."""
    from imgcls.engine.fit import thin_classes

    trained = {**{str(k): 108 for k in range(10)}, "unclear": 1}
    validated = {str(k): 27 for k in range(10)}
    assert thin_classes(trained, validated, validating=True) == [
        "warning: fewer than 5 training images of class unclear (1): too few for the network to learn it "
        "(add images of it, or merge it into another class)",
        "warning: no validation image of class unclear (1 in training): the validation figures (top-1, the best "
        "epoch, the temperature) leave it out",
    ]
    assert thin_classes({"a": 40, "b": 3}, {"a": 10, "b": 2}, validating=True) == [
        "warning: fewer than 5 training images of class b (3): too few for the network to learn it "
        "(add images of it, or merge it into another class)"
    ]
    assert thin_classes({"a": 40, "b": 30}, {}, validating=False) == []  # no validation split: nothing to miss
    assert thin_classes({"a": 40, "b": 0}, {"a": 5, "b": 2}, validating=True) == []  # (said: only in validation)


@pytest.mark.parametrize(
    "opts",
    [
        {"balance": "sampler", "mixup": 0.4, "cutmix": 1.0},
        {"ema": 0.9, "optimizer": "sgd", "schedule": "onecycle"},
        {"augment": "strong", "accumulate": 2, "clip_grad": 1.0, "norm": "group", "attn": "se", "tta": "flip"},
    ],
)
def test_engine_options_end_to_end(folder: Path, tmp_path: Path, opts: dict) -> None:
    """Each option's effect is tested on its own in test_fit.py; here they run through fit, are
    recorded in config.yaml, and the model directory holds the weights that were validated."""
    run = imgcls.train(folder, out=tmp_path / "run", cache_dir=tmp_path / "c", **dict(FAST, epochs=2, **opts))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    flat = {k: v for section in cfg.values() for k, v in section.items()}
    assert all(flat[k] == v for k, v in opts.items()), flat
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    evaluated = state["ema"] if opts.get("ema") else state["model"]
    saved = load_file(str(run / "model" / "model.safetensors"))
    best = read_info(run / "model").provenance["epoch"]
    if best == 2:  # the last epoch was the best: the model directory holds the final weights
        assert all(torch.equal(saved[k], evaluated[k]) for k in saved)
    if opts.get("ema"):
        assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in saved)
    if "tta" in opts:
        assert read_info(run / "model").tta == opts["tta"]


def test_early_stopping_on_a_metric_that_does_not_improve(folder: Path, tmp_path: Path) -> None:
    run = imgcls.train(
        folder,
        out=tmp_path / "run",
        cache_dir=tmp_path / "c",
        **dict(FAST, epochs=6, lr=1e-12, early_stopping=1, monitor="val_loss", warmup=0.0),
    )
    assert len(history(run)) == 2


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_every_file_of_a_run_and_its_model_follows_the_umask(
    folder: Path, tmp_path: Path, umask: int, file_mode: int, dir_mode: int
) -> None:
    """model.safetensors came out 0600 under umask 022 (safetensors' own mode) beside a 0644
    config.json: every file imgcls writes (run folder, model directory, decoded-image cache, an
    export) gets what an ordinary ``open`` would give it, and a user's 077 keeps them private."""
    old = os.umask(umask)
    try:
        run = imgcls.train(folder, out=tmp_path / "run", cache_dir=tmp_path / "cache", **{**FAST, "epochs": 1})
        assert main(["export", "--model", str(run / "model"), "--out", str(tmp_path / "out" / "m.onnx")]) == 0
    finally:
        os.umask(old)
    found = {p: stat_mode(p) for p in tmp_path.rglob("*")}
    assert {run / "model" / "model.safetensors", run / "model" / "model.onnx", run / "checkpoint" / "state.pt",
            run / "curves.png", tmp_path / "out" / "m.onnx"} <= set(found)  # fmt: skip
    wrong = {
        str(p.relative_to(tmp_path)): oct(m) for p, m in found.items() if m != (dir_mode if p.is_dir() else file_mode)
    }
    assert not wrong


def stat_mode(path: Path) -> int:
    import stat

    return stat.S_IMODE(path.stat().st_mode)


def test_files_that_are_not_images_are_left_out_alike_by_train_and_predict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A camera card's .xml sidecars beside its images counted as unusable images toward
    --max-skipped and stopped the run, while predict left the same files out by name: both
    commands now leave them out by one rule and count them apart from broken images."""
    data = image_folder(tmp_path / "imgs", ("a", "b"), 8)
    for i in range(20):
        (data / "a" / f"IMG_{i:04d}.XML").write_text("<camera/>")
    (data / "b" / "Thumbs.db").write_bytes(b"\0" * 64)
    (data / "b" / "broken.jpg").write_text("an image's name: tried, and unusable")
    run = imgcls.train(data, out=tmp_path / "run", cache_dir=tmp_path / "c", **{**FAST, "epochs": 1})
    err = capsys.readouterr().err
    assert "skipped 1 unusable, 21 files that are not images (.xml 20, .db 1)" in err
    reasons = {Path(r["path"]).name: r["reason"] for r in rows(run / "skipped.csv")}
    assert len(reasons) == 22 and reasons["IMG_0000.XML"] == "not an image by its name (.xml)"
    assert "not an image" in reasons["broken.jpg"] and "by its name" not in reasons["broken.jpg"]
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(run / "model"), str(data), "--out", str(out)]) == 0
    predicted = {Path(r["path"]).name for r in rows(out)}
    assert predicted == {Path(r["path"]).name for r in rows(run / "splits.csv")} | {"broken.jpg"}
    assert "left out 21 files that are not images (.xml 20, .db 1)" in capsys.readouterr().err
