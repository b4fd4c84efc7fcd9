"""``imgcls train --resume``: which options a resumed run may change, and how.

A resumed run continues the saved configuration. Options given again are compared with what the
run was started with (the options the user gave then, and the resolved ``config.yaml``):

- the same value (the original command line repeated with ``--resume``) changes nothing;
- a different value of an option that only says how long or how the run is carried out
  (:data:`RESUMABLE`: epochs, time budget, workers, threads, checkpoint interval, early
  stopping, the ONNX export, the cache folder) is applied, and the run says so;
- a different value of anything else (data, architecture, learning rate, augmentation...) is
  refused in one line that names the options: the checkpoint was trained with the saved ones,
  and mixing would give a run that no single configuration describes.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from imgcls.config import RunConfig, _coerce
from imgcls.errors import UserError

#: options a resumed run may change
RESUMABLE = (
    "epochs",
    "time_budget",
    "workers",
    "threads",
    "checkpoint_minutes",
    "early_stopping",
    "export_onnx",
    "export_int8",
    "cache_dir",
    "cache_max_gb",
)


def _field(cfg: RunConfig, key: str) -> tuple[Any, Any] | None:
    """(section object, field type) holding ``key``."""
    for section in (cfg.data, cfg.model, cfg.optim, cfg.train):
        hints = typing.get_type_hints(type(section))
        if key in {f.name for f in dataclasses.fields(section)}:
            return section, hints[key]
    return None


def apply_resume_options(cfg: RunConfig, given: dict[str, Any], requested: dict[str, Any] | None) -> list[str]:
    """Apply the options given with ``--resume`` to the saved ``cfg`` (in place); returns a
    description of each change (``epochs 8 -> 10``). ``requested``: the options the run was
    started with (None for checkpoints that did not record them)."""
    changes: list[str] = []
    refused: list[str] = []
    for key, value in sorted(given.items()):
        if value is None or key == "out":
            continue
        found = _field(cfg, key)
        if found is None:
            continue
        section, tp = found
        wanted = _coerce(tp, value, key)
        saved = getattr(section, key)
        if wanted == saved or (
            requested is not None and key in requested and _coerce(tp, requested[key], key) == wanted
        ):
            continue
        if key in RESUMABLE:
            setattr(section, key, wanted)
            changes.append(f"{key.replace('_', '-')} {saved} -> {wanted}")
        else:
            refused.append(f"--{key.replace('_', '-')} (the run has {saved!r}, given {wanted!r})")
    if refused:
        allowed = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE)
        raise UserError(
            f"--resume continues the run with its saved settings; these cannot change: {'; '.join(refused)}. "
            f"A resumed run may change {allowed}; for other settings start a new run (another --out)"
        )
    return changes
