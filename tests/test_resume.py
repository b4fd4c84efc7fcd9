"""``train --resume``: which options may change, finished runs, no second weights fetch, and
the time budget across sessions (imgcls.engine.resume, imgcls.engine.fit)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import save_file

from imgcls.cli import main
from imgfactory import image_folder

ARGS = ["--arch", "lenet", "--pretrained", "none", "--epochs", "2", "--batch-size", "8", "--image-size", "32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("resume") / "imgs", ("cat", "dog"), 12)


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_keeps_the_runs_settings_and_extends_a_finished_run(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    first = ["train", "--data", str(data), "--out", str(run), "--cache-dir", str(tmp_path / "c"), *ARGS]
    assert main([*first, "--no-export-onnx"]) == 0
    out = capsys.readouterr()
    assert "best: epoch " in out.err and " of 2, val_top1 " in out.err
    assert f"--data {data}" in out.out  # the closing hint names the run's data
    state = (run / "checkpoint" / "state.pt").read_bytes()
    # another learning rate or architecture: refused in one line, nothing touched
    assert main(["train", "--out", str(run), "--resume", "--lr", "0.5", "--arch", "resnet18"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--arch (the run has 'lenet', given 'resnet18')" in err and "--lr" in err
    assert (run / "checkpoint" / "state.pt").read_bytes() == state
    # the original command line again, with --resume: the run is complete, nothing is trained
    assert main([*first, "--no-export-onnx", "--resume"]) == 0
    assert "is complete (epoch " in capsys.readouterr().err and len(history(run)) == 2
    # more epochs: trained, and said
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "epochs 2 -> 3" in err
    assert [h["epoch"] for h in history(run)] == [1, 2, 3]
    assert not (run / "model" / "model.onnx").exists()  # the run was made with --no-export-onnx
    assert main(["train", "--out", str(run), "--resume", "--epochs", "1"]) == 2
    assert "already trained 3 epochs" in capsys.readouterr().err


def test_resume_does_not_read_the_pretrained_weights_again(data: Path, tmp_path: Path) -> None:
    weights = tmp_path / "r18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(weights))
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--cache-dir", str(tmp_path / "c"), "--arch", "resnet18",
            "--pretrained", str(weights), "--epochs", "1", "--batch-size", "8", "--image-size", "32"]  # fmt: skip
    assert main([*args, "--no-export-onnx"]) == 0
    weights.unlink()  # moved away, or an offline machine for published weights
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert len(history(run)) == 2


def test_a_time_budget_counts_the_earlier_sessions_of_a_resumed_run() -> None:
    from imgcls.engine.budget import BudgetPlan, Pacer
    from imgcls.engine.loop import Position, Trainer, maybe_replan
    from imgcls.engine.optim import Schedule

    def plan(elapsed_before: float) -> int:
        pacer = Pacer(BudgetPlan(budget=100.0, steps_per_epoch=10, val_images=0, batch_size=8), warmup_share=0.05)
        for _ in range(8):
            pacer.record_step(0.1)
        tr = SimpleNamespace(
            budget=pacer,
            pos=Position(epoch=1, step=0, total_steps=30, elapsed=elapsed_before),
            started=time.monotonic(),
            clock=time.monotonic,
            dist=SimpleNamespace(broadcast=lambda v: v, main=False),
            schedule=Schedule(1.0, total=30, warmup=0),
            steps_done=10,
        )
        tr.elapsed = Trainer.elapsed.fget(tr)  # type: ignore[attr-defined]
        maybe_replan(tr)  # type: ignore[arg-type]
        return int(tr.pos.total_steps)

    fresh, resumed = plan(0.0), plan(60.0)
    # 0.1 s a step: ~980 steps fit in a fresh 100 s budget, ~380 when 60 s were spent before
    assert 900 < fresh < 1000 and 330 < resumed < 400
    assert fresh - resumed == pytest.approx(600, abs=5)


def test_ema_and_everything_else_continue_exactly_after_an_interruption(data: Path, tmp_path: Path) -> None:
    from imgcls.api import make_run_config
    from imgcls.engine.fit import fit

    opts = dict(arch="lenet", pretrained="none", epochs=3, batch_size=8, image_size=32, ema=0.9, seed=2,
                cache_dir=str(tmp_path / "c"), export_onnx=False)  # fmt: skip
    fit(make_run_config(data=str(data), out=str(tmp_path / "full"), **opts))

    def killed_after_epoch_2(run: Path, hist: list) -> None:
        if len(hist) == 2:  # after epoch 2's validation, before its checkpoint: epoch 1's is the last
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(make_run_config(data=str(data), out=str(tmp_path / "cut"), **opts), on_epoch_end=killed_after_epoch_2)

    saved = torch.load(tmp_path / "cut" / "checkpoint" / "state.pt", weights_only=True)
    assert saved["position"]["epoch"] == 1 and saved["ema"] is not None
    fit(make_run_config(out=str(tmp_path / "cut")), resume=True)
    a = torch.load(tmp_path / "full" / "checkpoint" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint" / "state.pt", weights_only=True)
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert [h["val_loss"] for h in a["position"]["history"]] == [h["val_loss"] for h in b["position"]["history"]]


def _split_rows(run: Path, name: str) -> list[str]:
    import csv

    with open(run / "splits.csv", newline="") as f:
        return sorted(r["path"] for r in csv.DictReader(f) if r["split"] == name)


@pytest.fixture(scope="module")
def corrected_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run of 1 epoch trained with --corrections (the file confirming one image)."""
    tmp = tmp_path_factory.mktemp("corrected")
    fixes = tmp / "corrections.csv"
    fixes.write_text(f"path,label,action\n{data / 'cat' / 'cat_000.jpg'},cat,accept\n")
    run = tmp / "run"
    assert main(["train", "--data", str(data), "--corrections", str(fixes), "--out", str(run), "--cache-dir",
                 str(tmp / "c"), "--no-export-onnx", *ARGS, "--epochs", "1"]) == 0  # fmt: skip
    return run, fixes


def _resume_after(corrected_run: tuple[Path, Path], tmp_path: Path, decisions: list[str]) -> tuple[Path, int]:
    """A copy of the run resumed for a second epoch after its corrections file was given
    ``decisions`` more (the file is restored afterwards)."""
    import shutil

    run, fixes = corrected_run
    copy, before = tmp_path / "run", fixes.read_text()
    shutil.copytree(run, copy)
    fixes.write_text(before + "".join(line + "\n" for line in decisions))
    try:
        return copy, main(["train", "--out", str(copy), "--resume", "--epochs", "2", "--corrections", str(fixes)])
    finally:
        fixes.write_text(before)


def test_a_resumed_run_keeps_its_split_when_the_review_relabels_within_its_classes(
    corrected_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Decisions taken after the run started that only move images between its classes: the
    resumed epochs train with them, and the split is the one the run started with (redrawn, a
    stratified split moved images it had trained on into validation)."""
    run, _ = corrected_run
    trained = _split_rows(run, "train")
    moved = [p for p in trained if "/cat/" in p][:3]
    capsys.readouterr()
    copy, code = _resume_after(corrected_run, tmp_path, [f"{p},dog,relabel" for p in moved])
    err = capsys.readouterr().err
    assert code == 0, err
    assert _split_rows(copy, "val") == _split_rows(run, "val") and _split_rows(copy, "train") == trained
    assert "the corrections changed since the run started" in err and len(history(copy)) == 2


@pytest.mark.parametrize(
    "change, said",
    [
        ("lynx", "1 image now labelled 'lynx', a class the run does not have (the network has no output for it)"),
        ("reject", "1 image of the run is left out now ("),
        ("new image", "1 image the run did not have ("),
    ],
)
def test_a_resumed_run_refuses_in_one_line_when_its_images_or_classes_changed(
    corrected_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str, said: str
) -> None:
    """A relabel to a class the network has no output for crashed the weight load with a
    traceback; a rejected or an added image redrew the split. Each is one line, exit 2, and the
    run is left as it was."""
    import shutil

    run, _ = corrected_run
    image = _split_rows(run, "train")[0]
    decisions = {"lynx": [f"{image},lynx,relabel"], "reject": [f"{image},cat,reject"], "new image": []}[change]
    added = Path(image).parent / "extra_001.jpg"
    if change == "new image":
        shutil.copy(image, added)
    try:
        capsys.readouterr()
        copy, code = _resume_after(corrected_run, tmp_path, decisions)
    finally:
        added.unlink(missing_ok=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "".join(lines) and sum("error" in line for line in lines) == 1, lines
    err = lines[-1]  # after the line saying what the corrections did
    assert err.startswith("imgcls: error: --resume: the data changed since the run started: ") and said in err, err
    assert "start a new run (another --out)" in err and len(history(copy)) == 1


def test_resume_and_the_run_split_readers_match_rows_by_one_rule(tmp_path: Path) -> None:
    """splits.csv is read by one reader and matched by one rule (data.splits): a crop by its box
    where the listing names boxes, else, in a listing written before it had a box column, by its
    position among its frame's crops. Resume had its own reader and matched old listings by
    position while evaluate's and the audit's run split matched by path, so a frame that gained a
    crop was 'an image the run did not have' to the one and a validation image to the others."""
    import numpy as np

    from imgcls.config import RunConfig
    from imgcls.data.splits import read_splits_csv, split_lookup
    from imgcls.data.table import DataTable
    from imgcls.engine.resume import keep_split
    from imgcls.errors import UserError

    nan = [np.nan] * 4
    boxes = np.array([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.7, 0.1, 0.2, 0.2], nan])
    table = DataTable("folder", tmp_path, ["/f.jpg", "/f.jpg", "/f.jpg", "/g.jpg"], np.array([0, 1, 1, 0]),
                      ["cat", "dog"], boxes=boxes)  # fmt: skip
    run, state = tmp_path / "run", {"classes": ["cat", "dog"]}
    run.mkdir()
    for header, rows, want in (
        ("path,split", ["/f.jpg,val", "/f.jpg,val", "/g.jpg,train"], ["val", "val", None, "train"]),
        ("path,split,box", ["/f.jpg,val,0.1 0.1 0.2 0.2", '/f.jpg,val,"[0.5, 0.5, 0.2, 0.2]"', "/g.jpg,train,"],
         ["val", "val", None, "train"]),
    ):  # fmt: skip
        (run / "splits.csv").write_text("\n".join([header, *rows]) + "\n")
        assert split_lookup(table, read_splits_csv(run / "splits.csv")) == want
        with pytest.raises(UserError, match=r"1 image the run did not have \(/f\.jpg\)"):
            keep_split(RunConfig(), run, table, state)
        kept, _ = keep_split(RunConfig(), run, table.subset([0, 1, 3]), state)  # the crops the run had
        assert kept.split == ["val", "val", "train"]
