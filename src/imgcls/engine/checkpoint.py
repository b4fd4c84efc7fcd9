"""``RUN_DIR/checkpoint/``: everything needed to resume a run exactly.

One file, ``state.pt``: model, EMA, optimiser, gradient scaler, the position (epoch, step), the
time-budget plan, the metrics history, the best score so far, every RNG state and the resolved
config. It is written to a temporary file, synced, then renamed over the previous one, so a run
killed at any instant (``kill -9`` included) leaves either the old checkpoint or the new one,
never half of one. It is read back with ``torch.load(weights_only=True)``: tensors and plain
Python values only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imgcls.errors import UserError
from imgcls.io import atomic_write_with

FORMAT = 1
FILE = "state.pt"


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
