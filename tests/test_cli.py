"""The command line: output contracts and one-line errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imgcls.cli import main
from imgcls.models import create_model


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_models_json_lists_every_architecture_with_real_counts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert {
        "lenet",
        "alexnet",
        "vgg16_c",
        "seresnet50",
        "convnextv2_tiny",
        "efficientnet_b3",
    } <= set(rows)
    lenet = rows["lenet"]
    assert lenet["params"] == sum(p.numel() for p in create_model("lenet").parameters())
    assert lenet["input_size"] == [3, 32, 32] and lenet["macs"] > 0
    assert rows["resnet50"]["pretrained"] == ["timm", "torchvision"]
    assert rows["vgg16_c"]["pretrained"] == []


def test_models_table_and_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "vgg1?_bn")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[1:] if line.startswith("vgg")]
    assert names == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
    code, _, err = run(capsys, "models", "nothing-like-this")
    assert code == 2 and err.startswith("imgcls: error:")


def test_summary_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "lenet", "--input-size", "3", "32", "32", "--num-classes", "10", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["total_params"] == 62_006 and d["arch"] == "lenet"


def test_summary_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "vgg11_lrn")
    assert code == 0
    assert "LocalResponseNorm" in out and "Total params: 132,863,336" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["summary", "resnet19"], "unknown architecture"),
        (["summary", "alexnet", "--norm", "batch"], "no norm option"),
        (["summary", "alexnet", "--input-size", "3", "8", "8"], "cannot run at input size"),
        (["summary", "resnet18", "--input-size", "1", "32", "32"], "--input-size"),
        (["summary"], "required"),
        (["summary", "resnet18", "--norm", "weird"], "invalid choice"),
        (["train", "--data", "d", "--out", "r", "--epochs", "0"], "--epochs must be at least 1, not 0"),
        (["train", "--data", "d", "--out", "r", "--lr", "-1"], "--lr must be positive"),
        (["train", "--data", "d", "--out", "r", "--val-split", "1.5"], "--val-split must be"),
        (["train", "--data", "d", "--out", "r", "--time-budget", "soon"], "cannot read the duration"),
        (["train", "--data", "d", "--out", "r", "--cache", "ram"], "--cache must be one of disk, memory, none"),
        (["train", "--data", "d", "--out", "r", "--ema", "1.5"], "--ema must be"),
        (["serve", "--model", "m", "--port", "99999"], "--port must be between 0 and 65535"),
        (["serve", "--model", "m", "--max-upload-mb", "-1"], "--max-upload-mb must be at least"),
        (["serve", "--model", "m", "--max-files", "0"], "--max-files must be at least 1"),
        (["predict", "--model", "m", "x.jpg", "--batch-size", "0"], "--batch-size: must be at least 1, not 0"),
        (["evaluate", "--model", "m", "--workers", "-1"], "--workers: must be at least 0, not -1"),
        (["predict", "--model", "m", "x.jpg", "--batch-size", "8.5"], "expected a whole number, not '8.5'"),
        (["predict", "--model", "m", "x.jpg", "--sequence-gap", "60"], "it needs --aggregate sequence"),
    ],
)
def test_errors_are_one_line_and_non_zero(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_failed_train_leaves_no_empty_run_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(one / "a.png")
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "one"), "--out", str(tmp_path / "run"))
    assert code == 2 and "only one class (cat)" in err  # found before any weights are fetched
    assert not (tmp_path / "run").exists()


def test_serve_refuses_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = run(capsys, "serve", "--model", "no-model-needed", "--port", str(port))
    assert code == 2 and "Address already in use" in err and "--port" in err


def test_python_dash_m_and_help() -> None:
    r = subprocess.run([sys.executable, "-m", "imgcls", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "summary" in r.stdout
    r = subprocess.run([sys.executable, "-m", "imgcls", "summary", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "examples:" in r.stdout


def test_every_option_of_every_command_has_help() -> None:
    from imgcls.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {a.option_strings[0]}"
        for name, sub in commands.choices.items()
        for a in sub._actions
        if a.option_strings and a.dest != "help" and not a.help
    ]
    assert not missing, missing


def test_train_raises_pillows_limit_to_its_max_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgcls.cli import _allow_train_pixels, build_parser

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  max_pixels: 400000000\n")
    args = build_parser().parse_args(["train", "--config", str(recipe), "--out", str(tmp_path / "run")])
    _allow_train_pixels(args, {"max_pixels": None})
    assert Image.MAX_IMAGE_PIXELS == 400_000_000
    args = build_parser().parse_args(["train", "--max-pixels", "500000000", "--out", str(tmp_path / "run")])
    _allow_train_pixels(args, {"max_pixels": 500_000_000})
    assert Image.MAX_IMAGE_PIXELS == 500_000_000


def test_every_output_location_is_checked_before_the_work(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line naming the path and the reason, before a model is loaded or an image read."""
    import imgcls.predict.runner

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("the command started working before checking its output")

    monkeypatch.setattr(imgcls.predict.Classifier, "load", no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    model, data = str(trained["model"]), str(trained["data"])
    cases = [
        (["predict", "--model", model, data, "--out", str(blocker / "p.csv")], f"{blocker} is a file, not a folder"),
        (["predict", "--model", model, data, "--out", str(tmp_path)], "is a folder; give a file name"),
        (["predict", "--model", model, data, "--format", "camtrapdp", "--out", str(blocker)], "is not a folder"),
        (["evaluate", "--model", model, "--data", data, "--out", str(blocker / "rep")], "is a file, not a folder"),
        (["train", "--data", data, "--out", str(blocker / "run")], "is a file, not a folder"),
        (["demo", "--out", str(blocker / "demo")], "is a file, not a folder"),
    ]
    import os

    if os.geteuid() != 0:  # root writes anywhere
        cases.append((["predict", "--model", model, data, "--out", str(locked / "p.csv")], "cannot write there"))
    for argv, reason in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and reason in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert ".tmp" not in err and ".imgcls-probe" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "locked"]  # nothing left behind
    locked.chmod(0o700)


def test_evaluate_without_out_writes_its_report_beside_the_model(
    trained: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "evaluate", "--model", str(trained["model"]))
    report = trained["run"] / "eval-val" / "report.html"  # the run's own data, its validation split
    assert code == 0 and f"report: {report}" in out and report.is_file()
    assert "optimistic" in out  # the split that chose the epoch


def test_typos_in_options_are_said_with_the_option_meant(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, said in [
        (["predict", "--model", "m", "a.jpg", "--topk", "2"], "imgcls predict: error: unknown option --topk (did you mean --top-k?)"),
        (["train", "--dat", "photos", "--epoch", "3"], "imgcls train: error: unknown option --dat (did you mean --data?)"),
        (["evaluate", "--model", "m", "--split=test", "--outt", "r"], "unknown option --outt (did you mean --out?)"),
        (["trian"], "imgcls: error: argument COMMAND: invalid choice: 'trian'"),
    ]:  # fmt: skip
        code, _, err = run(capsys, *argv)
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    # no abbreviations: --epoch is not taken for --epochs
    from imgcls.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--epoch", "3"])
    capsys.readouterr()


def test_python_api_rows_hold_no_private_keys(trained: dict) -> None:
    import imgcls

    rows = imgcls.load(trained["model"]).predict(sorted((trained["data"] / "dog").iterdir())[:2], top_k=2)
    assert all(set(r) == {"path", "label", "score", "top_k", "error"} for r in rows)


def test_an_interrupted_predict_says_how_to_continue(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import imgcls.predict.runner

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(imgcls.predict.runner, "stream", interrupted)
    out = tmp_path / "p.csv"
    code, _, err = run(capsys, "predict", "--model", str(trained["model"]), str(trained["data"]), "--out", str(out))
    assert code == 130
    assert (
        err.strip()
        == f"imgcls: interrupted; run the same command again to continue where it stopped ({out} keeps every row)"
    )


def test_evaluate_says_when_the_models_own_data_is_gone(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import shutil

    from imgfactory import image_folder

    data = image_folder(tmp_path / "imgs", ("cat", "dog"), 6)
    code, _, _ = run(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"), "--arch", "lenet",
                     "--pretrained", "none", "--epochs", "1", "--image-size", "32", "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert code == 0
    shutil.rmtree(data)
    code, _, err = run(capsys, "evaluate", "--model", str(tmp_path / "run" / "model"))
    assert code == 2 and f"the model's training data {data} is no longer there" in err and "--data" in err


def test_only_train_and_predict_run_under_torchrun(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun every process would run the whole command and write the same files."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for argv in (["audit", "--model", "m", "--out", "a"], ["summary", "lenet"],
                 ["suggest", "--model", "m", "p", "--n", "1", "--out", "o.csv"]):  # fmt: skip
        code, _, err = run(capsys, *argv)
        assert code == 2 and f"imgcls {argv[0]} runs in one process: under torchrun only train and predict" in err
