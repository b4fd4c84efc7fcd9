"""``imgcls compare``: the configurations (grids, lists, --configs), the pick rule, the loss
landscape, and a whole compare killed with SIGKILL half-way and continued: one split for every
run, finished configurations not trained again, the report and DIR/best."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
import torch
from torch import nn

from imgcls.compare.grid import configurations, parse_list
from imgcls.compare.landscape import filter_normalised_direction, loss_surface, mean_loss, plan, refined_surface
from imgcls.compare.pick import pareto_front, parse_rule, pick
from imgcls.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ the grid
def test_lists_are_crossed_or_listed_and_named_by_what_varies() -> None:
    lists = {"arch": parse_list("arch", "resnet20, plain20"), "norm": parse_list("norm", "batch,group")}
    crossed, _ = configurations(lists)
    assert [c.name for c in crossed] == ["resnet20-norm_batch", "resnet20-norm_group", "plain20-norm_batch",
                                         "plain20-norm_group"]  # fmt: skip
    assert crossed[1].options == {"arch": "resnet20", "norm": "group"}
    listed, _ = configurations(lists, crossed=False)
    assert [c.name for c in listed] == ["resnet20-norm_batch", "plain20-norm_group"]
    one, _ = configurations({"arch": ["lenet", "resnet20"], "image_size": parse_list("image_size", "32")})
    assert [c.name for c in one] == ["lenet", "resnet20"]  # an option all share is not in the names
    with pytest.raises(UserError, match="differ in length"):
        configurations({"arch": ["a", "b", "c"], "norm": ["batch", "group"]}, crossed=False)
    with pytest.raises(UserError, match="whole numbers"):
        parse_list("image_size", "32,big")
    with pytest.raises(UserError, match="empty name"):
        parse_list("arch", "lenet,,resnet20")
    with pytest.raises(UserError, match="nothing to compare"):
        configurations({})


def test_a_crossed_grid_trains_each_difference_once() -> None:
    """An option the architecture has not (ConvNeXt's norm) is dropped for it, and ``pretrained
    auto`` without published weights is ``none``: one configuration, and a note says why."""
    c, notes = configurations({"arch": ["lenet", "convnext_tiny"], "norm": ["batch", "group"]})
    assert [x.name for x in c] == ["lenet-norm_batch", "lenet-norm_group", "convnext_tiny"]
    assert notes == ["convnext_tiny has no norm option: it is trained once, with its own norm layers"]
    c, notes = configurations({"arch": ["resnet20", "resnet18"], "pretrained": ["none", "auto"]})
    assert [x.name for x in c] == ["resnet20-pretrained_none", "resnet18-pretrained_none", "resnet18-pretrained_auto"]
    assert "resnet20 has no published weights" in notes[0]
    with pytest.raises(UserError, match="unknown architecture 'resnet21'"):
        configurations({"arch": ["resnet21"]})
    with pytest.raises(UserError, match="unknown norm"):
        configurations({"arch": ["lenet"], "norm": ["bacth"]})


def test_configs_file(tmp_path: Path) -> None:
    f = tmp_path / "configs.yaml"
    f.write_text("- {arch: resnet20, lr: 0.05}\n- {arch: resnet20, lr: 0.01, name: slow}\n- {arch: lenet}\n")
    c, _ = configurations({}, configs_file=f)
    assert [(x.name, x.options) for x in c] == [
        ("resnet20-lr_0.05", {"arch": "resnet20", "lr": 0.05}),
        ("slow", {"arch": "resnet20", "lr": 0.01}),
        ("lenet", {"arch": "lenet"}),
    ]
    f.write_text("configurations:\n- {arch: lenet, epochs: 3}\n")
    with pytest.raises(UserError, match="epochs is common to every configuration"):
        configurations({}, configs_file=f)
    f.write_text("- {arch: lenet, name: a}\n- {arch: resnet20, name: a}\n")
    with pytest.raises(UserError, match="two configurations are named 'a'"):
        configurations({}, configs_file=f)
    f.write_text("- {arch: convnext_tiny, norm: group}\n")
    with pytest.raises(UserError, match="convnext_tiny has no norm option"):
        configurations({}, configs_file=f)
    with pytest.raises(UserError, match="--configs lists the configurations"):
        configurations({"arch": ["lenet"]}, configs_file=f)


# ------------------------------------------------------------------------------- the pick rule
ROWS = [
    {"name": "big", "metric": "top-1", "accuracy": 0.95, "latency_ms": 35.0, "size_bytes": 90e6, "params": 23e6,
     "macs": 4e9, "throughput": 40.0, "train_seconds": 600.0},
    {"name": "mid", "metric": "top-1", "accuracy": 0.93, "latency_ms": 12.0, "size_bytes": 11e6, "params": 2.8e6,
     "macs": 3e8, "throughput": 300.0, "train_seconds": 200.0},
    {"name": "small", "metric": "top-1", "accuracy": 0.90, "latency_ms": 2.5, "size_bytes": 0.3e6, "params": 6e4,
     "macs": 7e5, "throughput": 4000.0, "train_seconds": 40.0},
    {"name": "worse", "metric": "top-1", "accuracy": 0.90, "latency_ms": 4.0, "size_bytes": 1e6, "params": 1e5,
     "macs": 1e6, "throughput": 900.0, "train_seconds": 50.0},
]  # fmt: skip


def test_pick_the_most_accurate_or_the_most_accurate_within_a_budget() -> None:
    p = pick(ROWS, "accuracy")
    assert p.row is not None and p.row["name"] == "big"
    assert p.reason == "big: the highest top-1 (0.9500); next mid (0.9300)"
    p = pick(ROWS, "latency<=20ms")
    assert p.row is not None and p.row["name"] == "mid"
    assert p.reason.startswith("mid: the highest top-1 (0.9300) of the 3 of 4 configurations with latency<=20ms")
    assert "left out: big (35.00 ms)" in p.reason
    assert pick(ROWS, "size<=10MB").row["name"] == "small"  # type: ignore[index]  # ties: the faster
    assert pick(ROWS, "size <= 12 MiB").row["name"] == "mid"  # type: ignore[index]  # 12.6 MB
    assert pick(ROWS, "params<=1M, throughput>=1000").row["name"] == "small"  # type: ignore[index]
    assert pick(ROWS, "latency<=0.003s").row["name"] == "small"  # type: ignore[index]
    assert pick(ROWS, "train_time<=1m").row["name"] == "small"  # type: ignore[index]
    none = pick(ROWS, "latency<=1ms")
    assert none.row is None and none.reason == (
        "none of the 4 configurations has latency<=1ms (the closest: small, 2.50 ms)"
    )
    # the closest on each constraint missed, not on the first one given (which every configuration met)
    both = pick(ROWS, "size<=100MB,latency<=1ms")
    assert both.row is None and both.reason.endswith("(the closest: small, 2.50 ms)")
    two = pick(ROWS, "accuracy>=0.96,latency<=1ms")
    assert two.reason.endswith("(the closest: on accuracy big, 0.9500; on latency small, 2.50 ms)")
    tie = pick([ROWS[2], ROWS[3]], "accuracy")
    assert tie.row["name"] == "small" and "tied with worse; the faster" in tie.reason  # type: ignore[index]


def test_pick_rules_are_checked() -> None:
    assert parse_rule("accuracy") == []
    assert parse_rule("size<=10MB")[0].value == 10e6
    assert parse_rule("top1>=0.9")[0].metric == "accuracy"  # failed before: a digit in the name was refused
    assert parse_rule("throughput>=1k")[0].value == 1000.0
    for bad, said in (("fastest", "write 'accuracy'"), ("speed<=3", "unknown measure 'speed'"),
                      ("latency<=3kg", "latency in 'kg'")):  # fmt: skip
        with pytest.raises(UserError, match=said):
            parse_rule(bad)


def test_pareto_front_of_accuracy_against_throughput() -> None:
    assert pareto_front(ROWS) == {"big", "mid", "small"}  # 'worse' is beaten by 'small' on both


# ------------------------------------------------------------------------------- the landscape
def _tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x, y = torch.randn(12, 3, 8, 8), torch.randint(0, 3, (12,))
    for _ in range(5):  # trained a little (plain gradient steps): the centre is a trained model, its BN statistics too
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(0.1 * p.grad)  # type: ignore[operator]
    return model, x, y


def test_loss_surface_around_the_trained_weights() -> None:
    model, x, y = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = mean_loss(model.eval(), [(x, y)], nn.functional.cross_entropy)
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    s = loss_surface(model.train(), batches, nn.functional.cross_entropy, steps=5, seed=1)
    assert s.losses.shape == (5, 5) and list(s.alphas) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert s.centre == pytest.approx(trained, abs=1e-6)  # the trained weights, in evaluation mode
    assert np.all(np.isfinite(s.losses)) and s.losses.max() > trained
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    again = loss_surface(model, batches, nn.functional.cross_entropy, steps=5, seed=1)
    assert np.array_equal(again.losses, s.losses)  # seeded directions
    with pytest.raises(ValueError, match="odd"):
        loss_surface(model, batches, nn.functional.cross_entropy, steps=4)


def test_directions_are_filter_normalised() -> None:
    model, _, _ = _tiny()
    d = filter_normalised_direction(model, torch.Generator().manual_seed(0))
    for p, v in zip(model.parameters(), d, strict=True):
        if p.dim() <= 1:  # biases and normalisation parameters stay where they are
            assert not v.any()
        else:  # each filter (output row) as long as the trained one
            assert torch.allclose(v.reshape(len(v), -1).norm(dim=1), p.detach().reshape(len(p), -1).norm(dim=1))


def test_landscape_refined_while_it_fits_the_training_time() -> None:
    """The subset is sized for a 9x9 grid in half the time; the grid is refined (5, 9, 17, 33
    points a side, nested) while the next level, at the measured price per point, fits."""
    assert plan(100.0, 1e-3, 1e-5, 50_000) == 1024  # cheap: the image cap
    images = plan(10.0, 1e-3, 1e-4, 50_000)
    assert images * (1e-3 + 81 * 1e-4) <= 5.0 and images >= 128
    assert plan(0.5, 1e-3, 1e-4, 50_000) == int(0.5 / (1e-3 + 81e-4))  # dear: what fits, fewer than 128
    assert plan(0.01, 1e-3, 1e-4, 50_000) == 8  # (and never fewer than 8)
    assert plan(100.0, 1e-3, 1e-5, 30) == 30
    model, x, y = _tiny()
    loss, points = nn.functional.cross_entropy, []

    def counted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        points.append(1)  # one batch: one call per point
        return loss(logits, target)

    s = refined_surface(model, [(x, y)], counted, budget=81 + 10, seed=1, clock=lambda: float(len(points)))
    assert s.losses.shape == (9, 9)  # a simulated second a point: 25 + 56 fit in 91 s, 17x17's 208 more do not
    assert len(points) == 81  # each point once: the 5x5 ones reused
    coarse = loss_surface(model, [(x, y)], loss, steps=5, seed=1)
    assert np.array_equal(s.losses[::2, ::2], coarse.losses)
    assert refined_surface(model, [(x, y)], loss, budget=0, seed=1).losses.shape == (5, 5)  # at least 5x5


# --------------------------------------------------------------- a compare, killed and continued
def test_compare_killed_then_continued(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compare of one configuration (--configs), then of two: the second compare, in its own
    process, skips the first configuration and is killed with SIGKILL once the second has a
    checkpoint. Run again (with --landscape), it reuses the first (its run folder untouched, its
    landscape added), continues the second from its checkpoint, and every run trained on the
    compare's one split."""
    from imgcls.cli import main
    from imgcls.compare import landscape
    from imgfactory import image_folder

    monkeypatch.setattr(landscape, "LEVELS", (5,))  # the smallest slice: the test is about the compare
    data = image_folder(tmp_path / "data", ("cat", "dog", "fox"), 10, size=(40, 36))
    out, configs = tmp_path / "cmp", tmp_path / "configs.yaml"
    argv = ["compare", "--data", str(data), "--configs", str(configs), "--epochs", "3", "--batch-size", "8",
            "--no-export-onnx", "--cache-dir", str(tmp_path / "cache"), "--workers", "1", "--out", str(out)]  # fmt: skip
    configs.write_text("- {name: plain, arch: lenet, norm: none, pretrained: none}\n")
    assert main(argv) == 0
    first, second = out / "results" / "plain.json", out / "runs" / "bn"
    kept = {p: p.stat().st_mtime_ns for p in (out / "runs" / "plain").rglob("*") if p.is_file()}
    measured = json.loads(first.read_text())["result"]
    configs.write_text(
        "- {name: plain, arch: lenet, norm: none, pretrained: none}\n- {name: bn, arch: lenet, norm: batch}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "imgcls", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (second / "checkpoint" / "state.pt").is_file():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the compare did not reach its second configuration"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    capsys.readouterr()

    assert main([*argv, "--landscape"]) == 0  # continued, with the landscapes added
    said = capsys.readouterr()
    assert "plain: trained and measured earlier" in said.err
    resumed = f"continuing {second} from its last checkpoint" in said.err and " at epoch " in said.err
    assert resumed or "bn: trained and measured earlier" in said.err  # (it was done at the kill)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the finished configuration: not trained again
    assert json.loads(first.read_text())["result"] == {**measured, "landscape": ANY}
    assert "pick (accuracy): " in said.out
    shared = (out / "splits.csv").read_text()
    for run in (out / "runs").iterdir():
        assert (run / "splits.csv").read_text() == shared  # one split, drawn once
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(history) == 3 and all(0 <= h["train_top1"] <= 1 for h in history)
    document = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in document["configurations"]] == ["plain", "bn"]
    row = document["configurations"][0]
    assert row["split"] == "val" and row["optimistic"] and row["engine"] == "torch fp32"
    assert row["params"] > 0 and row["macs"] > 0 and row["latency_ms"] > 0 and row["throughput"] > 0
    assert len((out / "compare.csv").read_text().splitlines()) == 3
    assert (out / "best" / "config.json").is_file() and (out / "best" / "model.safetensors").is_file()
    page = (out / "compare.html").read_text()
    assert "Optimistic" in page and "Loss landscapes" in page
    for row in document["configurations"]:
        s = row["landscape"]
        assert np.asarray(s["losses"]).shape == (5, 5) and s["centre"] == s["losses"][2][2]


def test_compare_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imgcls.cli import main

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    (tmp_path / "d").mkdir()
    base = ["compare", "--data", str(tmp_path / "d"), "--arch", "lenet"]
    for extra, said in (([], "--epochs N or --time-budget"), (["--epochs", "1", "--pick", "fast"], "write 'accuracy'"),
                        (["--epochs", "1", "--out", str(tmp_path / "other")], "not a compare's folder")):  # fmt: skip
        out = [] if "--out" in extra else ["--out", str(tmp_path / "new")]
        assert main(base + extra + out) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    from imgfactory import image_folder

    data = image_folder(tmp_path / "imgs", ("cat", "dog"), 3)
    assert main(["compare", "--data", str(data), "--arch", "lenet", "--epochs", "1", "--out", str(data / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "is inside the data folder" in err and len(err.strip().splitlines()) == 1  # failed before: a run each
    assert not (data / "cmp").exists()
    (tmp_path / "c.yaml").write_text("- {name: fast, arch: lenet, optim: {lr: fast}}\n")
    assert main(["compare", "--data", str(data), "--configs", str(tmp_path / "c.yaml"), "--epochs", "1", "--out",
                 str(tmp_path / "new2")]) == 2  # fmt: skip
    assert "configuration 'fast': " in capsys.readouterr().err


def test_a_landscape_with_overflowed_losses_is_drawn(tmp_path: Path) -> None:
    from imgcls.compare.report import plot_surface

    losses = np.full((5, 5), 2.0)
    losses[2, 2], losses[0, 0], losses[4, 4] = 0.3, np.inf, np.nan  # far from the minimum the loss overflowed
    s = {"losses": losses.tolist(), "alphas": np.linspace(-1, 1, 5).tolist(), "betas": np.linspace(-1, 1, 5).tolist(),
         "centre": 0.3, "steps": 5, "images": 8}  # fmt: skip
    assert plot_surface("x", s, tmp_path / "x.png").stat().st_size > 1000  # failed before: ValueError from contourf


def test_every_model_is_timed_again_in_turns_and_its_best_round_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgcls.compare import measure
    from imgcls.predict import Classifier, choose

    monkeypatch.setattr(choose, "engine", lambda model, **kw: ("torch", "fp32"))
    monkeypatch.setattr(Classifier, "load", classmethod(lambda cls, model, **kw: str(model)))
    order: list[str] = []
    slow = {("a", 0): 100.0}  # a's first round meets a busy machine

    def timed(clf: str, seconds: float) -> tuple[float, float]:
        k = sum(1 for o in order if o == clf)
        order.append(clf)
        factor = slow.get((clf, k), 1.0)
        return 0.002 * factor, 500.0 / factor

    monkeypatch.setattr(measure, "speed", timed)
    got = measure.retime({"a": Path("a"), "b": Path("b")}, rounds=3)
    assert order == ["a", "b"] * 3  # in turns
    assert got == {"a": (2.0, 500.0), "b": (2.0, 500.0)}  # the busy round is not the figure


def test_a_failed_configuration_or_landscape_loses_no_finished_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configuration that fails with any error (torch's RuntimeError too) is recorded and the
    others go on; a landscape that fails leaves its configuration trained and measured, and the
    next compare does not train it again; a continued compare may not change what the runs
    are measured with; a separate validation set is said to be optimistic."""
    import imgcls.compare as cmp_module
    from imgcls.cli import main
    from imgcls.compare import runs
    from imgfactory import image_folder

    data = image_folder(tmp_path / "data", ("cat", "dog"), 8, size=(36, 36))
    val = image_folder(tmp_path / "val", ("cat", "dog"), 3, size=(36, 36))
    out = tmp_path / "cmp"
    argv = ["compare", "--data", str(data), "--val-data", str(val), "--arch", "lenet,smallnet_050", "--epochs", "1",
            "--batch-size", "8", "--image-size", "32", "--no-export-onnx", "--cache-dir", str(tmp_path / "cache"),
            "--workers", "0", "--out", str(out)]  # fmt: skip
    real = runs.train_run

    def flaky(cfg: object, *a: object, **kw: object) -> float:
        if str(cfg.train.out).endswith("smallnet_050"):  # type: ignore[attr-defined]
            raise RuntimeError("Given input size: (8x1x1). Output size is too small")
        return real(cfg, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(runs, "train_run", flaky)
    assert main(argv) == 1
    said = capsys.readouterr()
    assert "failed: smallnet_050: RuntimeError: Given input size" in said.out  # failed before: a traceback
    assert json.loads((out / "results" / "lenet.json").read_text())["result"]["measured"]["optimistic"]
    document = json.loads((out / "compare.json").read_text())
    assert document["configurations"][0]["split"] == "val" and "Optimistic" in (out / "compare.html").read_text()
    assert "top-1 (val, optimistic)" in said.out and document["configurations"][0]["input"] == "32x32"
    monkeypatch.setattr(runs, "train_run", real)
    kept = {p: p.stat().st_mtime_ns for p in (out / "runs" / "lenet").rglob("*") if p.is_file()}

    def broken(*a: object, **kw: object) -> dict:
        raise RuntimeError("no memory for the slice")

    monkeypatch.setattr(cmp_module, "_landscape", broken)
    assert main([*argv, "--landscape"]) == 0  # the failed configuration trains now; the landscapes fail apart
    said = capsys.readouterr()
    assert "lenet: trained and measured earlier" in said.err and "lenet: no loss landscape (RuntimeError" in said.err
    monkeypatch.undo()
    assert main(argv) == 0
    said = capsys.readouterr()
    assert (
        "lenet: trained and measured earlier" in said.err and "smallnet_050: trained and measured earlier" in said.err
    )
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # failed before: the finished run deleted and trained again
    assert main([*argv[:-2], "--export-onnx", "--out", str(out)]) == 2  # what the runs are measured with may not change
    err = capsys.readouterr().err
    assert "other common settings (export_onnx False, given True)" in err, err
