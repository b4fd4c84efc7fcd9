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

The data is read again (the source and the corrections file as they are now) and keeps the split
the run started with (:func:`keep_split`): labels that moved between the run's classes are used;
an image added or left out, or a class added or gone, is refused in one line.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from imgcls.config import RunConfig, _coerce
from imgcls.data.table import DataTable, make_targets
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
            was, now = _shown(saved, wanted, quote=False)
            changes.append(f"{key.replace('_', '-')} {was} -> {now}")
        else:
            was, now = _shown(saved, wanted, quote=True)
            flag = "--data after the first" if key == "more_data" else f"--{key.replace('_', '-')}"
            refused.append(f"{flag} (the run has {was}, given {now})")
    if refused:
        allowed = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE)
        raise UserError(
            f"--resume continues the run with its saved settings; these cannot change: {'; '.join(refused)}. "
            f"A resumed run may change {allowed}; for other settings start a new run (another --out)"
        )
    return changes


def _shown(saved: Any, wanted: Any, *, quote: bool) -> tuple[str, str]:
    """Two values of an option as a person writes them: numbers to 4 significant digits, more
    only where those do not tell the two apart (a square-root scaled rate is 0.0007071, not
    0.0007071067811865476); anything else as its ``repr`` with ``quote`` (names quoted), else as
    text."""
    if not all(isinstance(v, float) for v in (saved, wanted)):
        show = repr if quote else str
        return show(saved), show(wanted)
    for digits in range(4, 18):
        a, b = f"{saved:.{digits}g}", f"{wanted:.{digits}g}"
        if a != b:
            break
    return a, b


# ----------------------------------------------------------------------- the data of a resumed run
def keep_split(cfg: RunConfig, run: Path, table: DataTable, state: dict[str, Any]) -> tuple[DataTable, list[str]]:
    """The data a resumed run continues on: ``table`` (read again, with the corrections file as
    it is now) given the split the run started with (``RUN/splits.csv``), so that no image it
    trained on becomes a validation image; and a note for the resume line when the corrections
    file changed.

    The split cannot stay where the images or the classes changed, so a resumed run refuses in
    one line naming the change: an image now labelled with a class the network has no output
    for (a relabel to a new class), a class gone, an image of the run left out (a review's
    reject) or an image it did not have. Labels that moved between the run's own classes (a
    review's relabels) are used: the epochs still to train learn from the corrected labels, on
    the images of the split it started with. Rows are matched as evaluate and the audit match
    them (:func:`~imgcls.data.splits.split_keys`: by path and crop box, or, in a listing written
    before it had boxes, by path and position among a frame's crops). ``cfg.data.val_split``
    becomes 0 when the run had no validation rows, so none is carved now.
    """
    from imgcls.data.splits import split_keys

    listing = _saved_split(run)
    classes = _saved_classes(run, state)
    problems = _class_changes(table, classes) if classes is not None else []
    keys, saved = split_keys(table, listing)
    split_of = {k: s for k, (_, _, s) in zip(saved, listing, strict=True)}
    problems += _row_changes(table, keys, saved, split_of)
    if problems:
        raise UserError(
            f"--resume: the data changed since the run started: {'; '.join(problems)}; start a new run (another "
            "--out) to train on it, or resume with the data and corrections the run started with"
        )
    if classes is not None and classes != table.class_names:  # the same classes, another order
        labels = [table.label_names(i) for i in range(len(table))]
        table = dataclasses.replace(
            table, targets=make_targets(labels, classes, table.multilabel), class_names=list(classes)
        )
    table = dataclasses.replace(table, split=[split_of[k] for k in keys])
    if "val" not in split_of.values():
        cfg.data.val_split = 0.0
    return table, _corrections_note(run, cfg.data.corrections)


def _saved_split(run: Path) -> list[tuple[str, str, str]]:
    """``RUN/splits.csv`` (:func:`~imgcls.data.splits.read_splits_csv`), refused where missing."""
    from imgcls.data.splits import read_splits_csv

    path = run / "splits.csv"
    if not path.is_file():
        raise UserError(f"--resume: {path} is missing, so the split the run started with is unknown; "
                        "start a new run (another --out)")  # fmt: skip
    return read_splits_csv(path)


def _saved_classes(run: Path, state: dict[str, Any]) -> list[str] | None:
    """The classes the network has outputs for: the checkpoint's, else (checkpoints written
    before it kept them) its model directory's."""
    import json

    if state.get("classes") is not None:
        return [str(c) for c in state["classes"]]
    try:
        names = json.loads((run / "model" / "config.json").read_text(encoding="utf-8")).get("label_names")
    except (OSError, ValueError):
        return None
    return [str(c) for c in names] if isinstance(names, list) else None


def _class_changes(table: DataTable, classes: list[str]) -> list[str]:
    counts = table.class_counts()
    out = []
    for name in table.class_names:
        if name not in classes:
            n = counts.get(name, 0)
            out.append(f"{_images(n)} now labelled {name!r}, a class the run does not have "
                       "(the network has no output for it)")  # fmt: skip
    out += [f"class {name!r} has no image any more" for name in classes if name not in table.class_names]
    return out


def _row_changes(
    table: DataTable, keys: list[tuple[str, str]], saved: list[tuple[str, str]], split_of: dict[tuple[str, str], str]
) -> list[str]:
    now = set(keys)
    gone = [k for k in saved if k not in now]
    new = [k for k in keys if k not in split_of]
    out = []
    if gone:
        why = dict(table.skipped)
        path = gone[0][0]
        out.append(f"{_images(len(gone))} of the run {'is' if len(gone) == 1 else 'are'} left out now "
                   f"({path}: {why.get(path, 'no longer in the data')})")  # fmt: skip
    if new:
        out.append(f"{_images(len(new))} the run did not have ({new[0][0]})")
    return out


def _images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"


def _corrections_note(run: Path, corrections: str | None) -> list[str]:
    """A note when the corrections file differs from the copy the run keeps (``RUN/corrections.csv``)."""
    if not corrections:
        return []
    kept = run / "corrections.csv"
    try:
        same = kept.read_bytes() == Path(corrections).read_bytes()
    except OSError:
        return []
    if same:
        return []
    return ["the corrections changed since the run started: the epochs still to train use the labels they give, "
            "on the split the run started with"]  # fmt: skip
