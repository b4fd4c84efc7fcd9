"""Several machines, tried on one: two torchrun agents (``--nnodes 2``, a c10d rendezvous on
127.0.0.1, gloo) train one run and predict into one file; ``--shard K/N`` jobs, as a SLURM job
array runs them, predict into parts that the last one merges."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgcls.cli import main
from imgcls.predict import iter_inputs
from imgfactory import image_folder
from localnet import free_port

BIN = Path(sys.executable).parent


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _two_nodes(args: list[str]) -> list[tuple[int, str, str]]:
    """``imgcls ARGS`` under two torchrun agents, one process each, as two machines would start
    it; (exit code, stdout, stderr) of each agent."""
    cmd = [str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", "imgcls-test", "-m", "imgcls", *args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    agents = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    try:
        outs = [a.communicate(timeout=300) for a in agents]
        return [(a.returncode, out, err) for a, (out, err) in zip(agents, outs, strict=True)]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()


def test_two_nodes_train_one_run_and_predict_into_one_file(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data", ("cat", "dog", "fox"), 8)
    run = tmp_path / "run"
    train = ["train", "--data", str(data), "--out", str(run), "--cache-dir", str(tmp_path / "c"), "--arch", "lenet",
             "--pretrained", "none", "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--no-export-onnx"]  # fmt: skip
    done = _two_nodes(train)
    assert all(code == 0 for code, _, _ in done), done[0][2][-2000:] + done[1][2][-2000:]
    assert sum(out.count("model: ") for _, out, _ in done) == 1  # only rank 0 reports
    (epoch,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = sum(1 for r in _rows(run / "splits.csv") if r["split"] == "train")
    assert epoch["images"] == (train_rows // 2 // 4) * 4 * 2  # every training row once, shared by the nodes
    assert (run / "model" / "model.safetensors").is_file() and (run / "checkpoint").is_dir()
    out = tmp_path / "p.csv"
    done = _two_nodes(["predict", "--model", str(run / "model"), str(data), "--out", str(out), "--workers", "0"])
    assert all(code == 0 for code, _, _ in done), done[0][2][-2000:] + done[1][2][-2000:]
    assert [r["path"] for r in _rows(out)] == list(iter_inputs([str(data)]))  # merged, in input order
    assert not list(tmp_path.glob(".*part*"))
    # the same --out again: rank 0 alone checks it and refuses, and tells the other rank, which
    # stops with its reason (it once waited for rank 0 in the process group until the test's
    # timeout: a torchrun agent does not stop its node when the other node's process fails)
    done = _two_nodes(train)
    assert all(code != 0 for code, _, _ in done)
    errs = "".join(err for _, _, err in done)
    assert errs.count("already exists and is not empty") == 2 and errs.count("rank 0 refused the run: ") == 1
    # predict, likewise: rank 0 alone checks --out's place (here a folder, not a file)
    done = _two_nodes(["predict", "--model", str(run / "model"), str(data), "--out", str(tmp_path), "--workers", "0"])
    errs = "".join(err for _, _, err in done)
    assert all(code != 0 for code, _, _ in done) and errs.count("rank 0 refused the run: ") == 1
    assert errs.count("is a folder; give a file name") == 2


def test_shards_as_a_job_array_runs_them_merge_into_the_one_output(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = str(trained["model"]), str(trained["data"])
    whole, out = tmp_path / "whole.csv", tmp_path / "p.csv"
    assert main(["predict", "--model", model, data, "--out", str(whole), "--workers", "0"]) == 0
    base = ["predict", "--model", model, data, "--out", str(out), "--workers", "0"]
    assert main([*base, "--shard", "1/2"]) == 0  # the tasks of an array may run in any order
    err = capsys.readouterr().err
    assert "1 of 2 shards of" in err and "(shard 1/2)" in err and not out.exists()
    assert len(_rows(out.with_name(".p.csv.part-1-of-2.csv"))) == 15  # every 2nd input from the 2nd
    assert main([*base, "--shard", "0/2"]) == 0
    assert "merged the 2 shards into" in capsys.readouterr().err
    assert _rows(out) == _rows(whole) and sorted(p.name for p in tmp_path.glob(".p.csv*")) == [".p.csv.settings.json"]
    assert main([*base, "--shard", "0/2"]) == 0  # the array again: nothing to do
    assert "is complete (merged from its shards): nothing to do" in capsys.readouterr().err
    assert main([*base, "--shard", "0/2", "--overwrite"]) == 0  # this shard's part afresh; it waits for the other
    assert "1 of 2 shards" in capsys.readouterr().err and _rows(out) == _rows(whole)
    for bad, says in [("2/2", "K must be 0 to 1"), ("x", "expected K/N")]:
        assert main([*base, "--shard", bad]) == 2 and says in capsys.readouterr().err
    assert main(["predict", "--model", model, data, "--shard", "0/2"]) == 2
    assert "--shard needs --out FILE" in capsys.readouterr().err
