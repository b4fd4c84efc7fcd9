"""``RUN_DIR/checkpoint/``: everything needed to resume a run exactly.

One file, ``state.pt``: model, EMA, optimiser, gradient scaler, the position (epoch, step), the
time-budget plan, the metrics history, the best score so far, every RNG state and the resolved
config. It is written to a temporary file, synced, then renamed over the previous one, so a run
killed at any instant (``kill -9`` included) leaves either the old checkpoint or the new one,
never half of one. It is read back with ``torch.load(weights_only=True)``: tensors and plain
Python values only.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from imgcls.errors import UserError
from imgcls.io import atomic_write_with

FORMAT = 1
FILE = "state.pt"


def _detach(obj: Any) -> Any:
    """A copy whose tensors training can no longer change (for a write in the background)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_detach(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_detach(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints in a background thread: the state is copied (milliseconds), training
    goes on while the file is written and synced (about half a second for a ResNet-18 with
    AdamW). One write at a time; ``wait`` joins it and re-raises its error."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def save(self, state: dict[str, Any]) -> None:
        self.wait()
        snapshot = _detach(state)

        def run() -> None:
            try:
                save_checkpoint(self.folder, snapshot)
            except BaseException as e:  # reported by the next save or wait
                self.error = e

        self.thread = threading.Thread(target=run, name="imgcls-checkpoint", daemon=False)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    state = {"format": FORMAT, **state}
    state["rng"] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path = folder / FILE
    atomic_write_with(path, lambda tmp: torch.save(state, tmp))
    return path


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none yet."""
    path = folder / FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not an imgcls checkpoint of format {FORMAT}")
    rng = state.get("rng") or {}
    if isinstance(rng.get("torch"), torch.Tensor):
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state
