"""benchmarks/gpu_check.py, the prepared GPU check (issue 25), kept working on any machine."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
import time
from pathlib import Path

import pytest


def test_the_gpu_check_runs_end_to_end_at_tiny_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/gpu_check.py --tiny on this machine: every part runs or says why not (no CUDA
    here: the pinned placement and the comparison of placements), the figures are written. Its
    commands run in this process (the whole-process timing is the GPU machine's business)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import gpu_check

    def in_process(args: list[str], timeout: float) -> tuple[float, str]:
        said, t = io.StringIO(), time.perf_counter()
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            if args[1:3] == ["-m", "imgcls"]:
                from imgcls.cli import main

                assert main(args[3:]) == 0
            else:
                monkeypatch.setattr(sys, "argv", args[1:])
                runpy.run_path(args[1], run_name="__main__")
        return time.perf_counter() - t, said.getvalue()

    monkeypatch.setattr(gpu_check, "command", in_process)
    monkeypatch.setattr(gpu_check, "cuda", lambda: False)
    figures = gpu_check.main(["--tiny", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                              "--fashion-mnist", "none"])  # fmt: skip
    assert figures["data"]["photo_jpegs"] == 64 and figures["data"]["big_jpegs"] == 16
    assert figures["ceiling"]["lenet"] > 0 and figures["epochs_lenet_device"]["images_per_second"] > 0
    assert figures["epochs_lenet_pinned"] == {"skipped": "no CUDA"}
    assert figures["same_batches_device_and_pinned"] == {"skipped": "no CUDA"}
    assert figures["whole_train"]["plain_seconds"] > 0 and figures["whole_train"]["imgcls_seconds"] > 0
    assert figures["predict"]["images"] == 16 and figures["predict"]["images_per_second"] > 0
    assert figures["fashion_mnist"] == {"skipped": "no Fashion-MNIST"}
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == json.loads(json.dumps(figures, default=str))
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "epochs_lenet_pinned: skipped: no CUDA" in log and "target: whole train vs plain loop" in log
