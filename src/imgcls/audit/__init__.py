"""``imgcls audit``: what is wrong with a data set before a model learns it.

- likely **label errors** (:mod:`~imgcls.audit.labels`: out-of-sample probabilities from K-fold
  cross-validation or a given model, then cleanlab's confident learning), ranked;
- exact and near **duplicates**, and the **leaks** among them — the same picture on both sides of
  a split (:mod:`~imgcls.audit.duplicates`: perceptual hashes);
- the **class balance** per split, and the **unusable files** with their reasons (the images
  the data leaves out on purpose — frames without a detection to crop, a review's rejections —
  are listed apart, in ``left_out.csv``).

Written to the audit folder: ``label_issues.csv``, ``duplicates.csv``, ``balance.csv``,
``unusable.csv``, ``left_out.csv``, ``summary.json`` and ``audit.html`` (thumbnails of every finding).
``imgcls review`` walks the findings and writes the corrections training applies.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.audit.duplicates import duplicate_pairs, duplicate_rows, fingerprints
from imgcls.audit.labels import OutOfSample, Trust, cross_validated, from_model, label_issues, trust
from imgcls.config import DataConfig, RunConfig
from imgcls.data.table import DataTable, left_out_on_purpose
from imgcls.errors import UserError

__all__ = ["AuditResult", "audit"]


@dataclass
class AuditResult:
    folder: Path
    images: int
    issues: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    balance: list[dict[str, Any]] = field(default_factory=list)
    unusable: list[tuple[str, str]] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # on purpose: blanks, a review's rejections
    how: str = ""
    checked: int = 0  # labels checked: rows with out-of-sample probabilities
    trust: Trust | None = None  # their top-1 against the labels, and a warning
    data_args: list[str] = field(default_factory=list)  # the data options read (see data_args)
    corrections: str | None = None  # the corrections file applied, absolute
    config: str | None = None  # the --config the audit's training settings came from, absolute

    @property
    def leaks(self) -> int:
        return sum(1 for d in self.duplicates if d["leak"])


def audit(
    cfg: RunConfig,
    *,
    out: str | Path,
    model: str | Path | None = None,
    split: str | None = None,
    folds: int = 4,
    max_distance: int = 4,
    labels: bool = True,
    duplicates: bool = True,
    show: Any = print,
    config_file: str | Path | None = None,
) -> AuditResult:
    """Audit the data ``cfg.data`` names (see the module docstring); the folds are trained with
    ``cfg``'s settings, or ``model``'s probabilities of ``split`` (default: its validation split)
    are used. Returns the findings, also written to ``out``. ``config_file``: the YAML ``cfg``
    came from, recorded so that a review's retraining command trains with the same recipe."""
    from imgcls.data.dataset import load_table
    from imgcls.data.sources.detections import detection_crops
    from imgcls.io import check_writable
    from imgcls.runtime import physical_cores

    if split is not None and model is None:
        raise UserError("--split needs --model: cross-validation checks every image")
    folder = check_writable(out, folder=True)
    read = data_args(cfg.data)  # before load_table, which resolves --split-by auto in place
    split_by = cfg.data.split_by  # as asked: the folds need as many groups as folds, a split two
    corrections = str(Path(cfg.data.corrections).resolve()) if cfg.data.corrections else None
    table = load_table(cfg, detection_crops)
    splits = given_splits(table, model)
    unread: set[int] = set()  # rows that could not be read (the table's own skips are no rows)
    result = AuditResult(folder, len(table), unusable=[s for s in table.skipped if not left_out_on_purpose(s[1])],
                         left_out=[s for s in table.skipped if left_out_on_purpose(s[1])],
                         data_args=read, corrections=corrections,
                         config=str(Path(config_file).resolve()) if config_file else None)  # fmt: skip
    if labels:
        if model is not None and split in ("train", "all"):
            show(f"warning: --split {split}: the model trained on these images, so their probabilities are not out "
                 "of sample and agree with their labels, wrong ones included: few errors are found")  # fmt: skip
        oos: OutOfSample = from_model(model, table, split) if model else cross_validated(
            cfg, table, folds=folds, work=folder / "folds", show=show, split_by=split_by
        )  # fmt: skip
        _label_findings(result, table, oos, splits, show)
        unread = set(oos.unread.tolist()) if oos.unread is not None else set()
    if duplicates:
        fp = fingerprints(table, workers=cfg.data.workers or physical_cores())
        result.duplicates = duplicate_rows(table, splits, duplicate_pairs(fp, max_distance))
        result.unusable += [s for s in fp.unreadable if s not in result.unusable]
        unread |= {i for i, digest in enumerate(fp.digest) if not digest}
    result.balance = class_balance(table, splits, unread)
    spec = cfg.data.data or ""
    write(result, table, spec=str(Path(spec).resolve()) if spec and Path(spec).exists() else spec)
    return result


def _label_findings(result: AuditResult, table: DataTable, oos: OutOfSample, splits: list[str], show: Any) -> None:
    """The flagged rows, how many labels were checked, and how far the flags can be trusted."""
    result.how = oos.how
    result.checked = len(oos.rows)
    result.issues = [{**issue, "split": splits[issue["row"]], **_location(table, issue["row"])}
                     for issue in label_issues(table, oos)]  # fmt: skip
    result.unusable += [s for s in oos.skipped if s not in result.unusable]
    result.trust = trust(table, oos, result.issues)
    if result.trust.warning:
        show(f"warning: {result.trust.warning}")


#: the options that choose which rows an audit reads (a review's retraining hint repeats them)
DATA_OPTIONS = ("data", "val_data", "image_root", "detections", "det_threshold", "det_categories", "crop_margin",
                "split_by", "val_split", "max_val")  # fmt: skip
PATH_OPTIONS = ("data", "val_data", "image_root", "detections")


def data_args(data: DataConfig) -> list[str]:
    """The command-line options that reproduce the data selection of ``data``: those of
    :data:`DATA_OPTIONS` that differ from :class:`DataConfig`'s defaults, paths made absolute, so
    that ``imgcls review``'s retraining hint (``imgcls train ...``) reads the same rows from any
    folder. ``--corrections`` is not among them: the review writes a new corrections file."""
    default = DataConfig()
    out: list[str] = []
    for name in DATA_OPTIONS:
        value = getattr(data, name)
        if value == getattr(default, name) or (value is None and name != "split_by"):
            continue  # (max_val None, from a YAML file, has no command-line spelling)
        text = "none" if value is None else str(value)
        if name in PATH_OPTIONS and Path(text).expanduser().exists():
            text = str(Path(text).expanduser().resolve())
        out += ["--" + name.replace("_", "-"), text]
        if name == "data":  # every spec the audit read, each its own --data
            out += [a for s in data.more_data for a in ("--data", str(Path(s).expanduser().resolve()))]
    return out


def given_splits(table: DataTable, model: str | Path | None) -> list[str]:
    """Each row's split. With ``model``, its run's (``splits.csv``) decides which rows it trained
    on and which it held out for validation (a run carves its validation rows out of the data's
    training rows, so the data's own word is out of date there); the data's test rows stay test,
    and rows the run did not list keep the data's split. Without, the data's split, else
    ``train`` (then no pair can leak). The run is the one holding the model (a copied run is its
    own: :func:`~imgcls.artifacts.run_folder`, as evaluate and quantize read it)."""
    from imgcls.artifacts import read_info, run_folder
    from imgcls.data.splits import read_splits_csv, split_lookup

    own: list[str] = [s or "train" for s in table.split] if table.split is not None else ["train"] * len(table)
    run = run_folder(model, read_info(model)) if model is not None else None
    listing = read_splits_csv(run / "splits.csv") if run else []
    if not listing:
        return own
    return [s if s == "test" else side or s for s, side in zip(own, split_lookup(table, listing), strict=True)]


def class_balance(table: DataTable, splits: list[str], unread: set[int] | None = None) -> list[dict[str, Any]]:
    """Usable images per class and split, and each class's share; ``unread``: the rows that could
    not be read (by row: a frame's file named among the table's skips, for an observation no crop
    holds, still has usable crops)."""
    counts: Counter[tuple[str, str]] = Counter()
    for i, split in enumerate(splits):
        if unread and i in unread:
            continue
        for name in table.label_names(i):
            counts[(name, split)] += 1
    names = sorted(set(splits))
    total = max(1, len(table))
    rows = []
    for c in table.class_names:
        per_split = {s: counts[(c, s)] for s in names}
        rows.append({"class": c, **per_split, "share": round(sum(per_split.values()) / total, 4)})
    return rows


def _location(table: DataTable, row: int) -> dict[str, str]:
    """The row's location, and its detection box, where the data has them."""
    from imgcls.data.corrections import format_box

    out = {"location": table.columns["location"][row]} if "location" in table.columns else {}
    if table.boxes is not None:
        out["box"] = format_box(table.boxes[row])
    return out


def write(result: AuditResult, table: DataTable, *, spec: str = "") -> None:
    """The CSV files, ``summary.json`` and ``audit.html``."""
    from imgcls.audit.page import write_page
    from imgcls.io import atomic_write_text

    folder = result.folder
    folder.mkdir(parents=True, exist_ok=True)
    issues = [{"rank": k + 1, **{c: v for c, v in i.items() if c != "row"}} for k, i in enumerate(result.issues)]
    _csv(folder / "label_issues.csv", issues, ["rank", "path", "given", "suggested", "quality", "p_suggested", "split"])
    _csv(folder / "duplicates.csv", result.duplicates, ["path_a", "path_b", "distance", "kind", "split_a", "split_b"])
    _csv(folder / "balance.csv", result.balance, ["class"])
    _csv(folder / "unusable.csv", [{"path": p, "reason": r} for p, r in result.unusable], ["path", "reason"])
    _csv(folder / "left_out.csv", [{"path": p, "reason": r} for p, r in result.left_out], ["path", "reason"])
    summary = {"images": result.images, "label_issues": len(result.issues), "duplicate_pairs": len(result.duplicates),
               "leaks": result.leaks, "unusable": len(result.unusable), "left_out": len(result.left_out),
               "probabilities_from": result.how, "labels_checked": result.checked,
               "trust": result.trust.as_dict() if result.trust else None,
               "classes": list(table.class_names), "multilabel": table.multilabel, "data": str(table.root),
               "spec": spec, "crop_margin": table.crop_margin, "data_args": result.data_args,
               "corrections": result.corrections, "config": result.config}  # fmt: skip
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_page(result, table, folder / "audit.html")


def _csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    from imgcls.io import atomic_write_csv

    atomic_write_csv(path, list(rows[0]) if rows else columns, rows)
