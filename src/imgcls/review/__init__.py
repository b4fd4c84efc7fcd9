"""``imgcls review``: a person decides, image by image, what an audit or a model doubts.

The queue (:mod:`~imgcls.review.queue`): an audit's likely label errors and leaks, and the least
confident predictions of a ``predict`` output; or (``--label next.csv``) the unlabelled images
``imgcls suggest`` chose, to label: the decisions then make a labels file, an ordinary ``--data``
spec to train on beside the old data (:func:`train_hint`). The page (:mod:`~imgcls.review.app`, served on
loopback) is driven by the keyboard: accept, relabel, reject, skip, undo. Every decision is on
disk before the page moves on (:mod:`~imgcls.review.session`), in ``corrections.csv``, which
``imgcls train --corrections`` applies (and which is itself a manifest of the reviewed images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgcls.errors import UserError
from imgcls.review.queue import Item, from_audit, from_predictions, from_suggestions, read_predictions
from imgcls.review.session import Session

__all__ = [
    "Item",
    "Session",
    "from_predictions",
    "open_label_session",
    "open_session",
    "retrain_hint",
    "serve_review",
    "train_hint",
]


def open_session(
    *,
    audit: str | Path | None = None,
    predictions: str | Path | None = None,
    out: str | Path | None = None,
    limit: int = 200,
    classes: list[str] | None = None,
    model: str | Path | None = None,
    below: float = 0.9,
) -> Session:
    """The review of an audit folder and/or a predictions file (its ``limit`` least confident rows
    or crops below probability ``below``), resumed from ``out``'s progress."""
    if audit is None and predictions is None:
        raise UserError("nothing to review: give --audit AUDIT_FOLDER and/or --predictions FILE")
    items: list[Item] = []
    summary: dict = {}
    names: list[str] = []  # the classes a relabel may take without making a new one
    if audit is not None:
        items, summary = from_audit(audit)
        names += summary.get("classes", [])
    if predictions is not None:
        found, seen = read_predictions(predictions, limit, below)
        items += found
        names += seen if model is None else []
    if model is not None:
        from imgcls.artifacts import read_info

        names += read_info(model).label_names
    names += list(classes or [])
    target = Path(out) if out else Path(audit or Path(predictions).parent) / "corrections.csv"  # type: ignore[arg-type]
    from imgcls.io import check_writable

    check_writable(target)
    earlier = summary.get("corrections")  # the audit read the data with these: the new file keeps them
    session = Session(items, target, classes=list(dict.fromkeys(n for n in names if n)),
                      data_root=summary.get("data", ""), margin=float(summary.get("crop_margin", 0.1)),
                      multilabel=bool(summary.get("multilabel", False)),
                      inherit=Path(earlier) if earlier and Path(earlier).is_file() else None)  # fmt: skip
    session.hint = retrain_hint(summary, target.resolve())
    return session


def open_label_session(
    suggestions: str | Path, *, out: str | Path | None = None, model: str | Path | None = None,
    classes: list[str] | None = None,
) -> Session:  # fmt: skip
    """Labelling the images of an ``imgcls suggest`` output (``next.csv``): the number keys offer
    the model's classes, its guess first; every decision is saved at once to ``out`` (default
    ``next-labels.csv`` beside it), a manifest (``path,label,action[,box]``; rejected rows are left
    out when it is read) that ``imgcls train --data`` takes beside the old data."""
    from imgcls.io import check_writable

    items, about = from_suggestions(suggestions)
    if model is not None and not Path(str(model)).is_dir():
        raise UserError(f"--model {model}: not a model directory")
    recorded = about.get("model")
    if model is None and recorded and not Path(str(recorded)).is_dir():
        from imgcls.console import info

        info(f"note: the model suggest ranked with ({recorded}) is gone: its classes as recorded are offered")
    model = model or (recorded if recorded and Path(str(recorded)).is_dir() else None)
    names: list[str] = []
    if model is not None:
        from imgcls.artifacts import read_info

        names += read_info(model).label_names
    else:
        names += [str(c) for c in about.get("classes") or []] + [c for it in items for c in it.candidates]
    names += list(classes or [])
    source = Path(suggestions)
    target = Path(out) if out else source.with_name(f"{source.stem}-labels.csv")
    if target.resolve() == source.resolve():
        raise UserError(f"--out {target} is the suggestions file itself: choose another labels file")
    check_writable(target)
    session = Session(items, target, classes=list(dict.fromkeys(n for n in names if n)), mode="label")
    session.hint, session.hint_note = train_hint(model, target.resolve())
    return session


def train_hint(model: str | Path | None, labels: Path) -> tuple[str, str]:
    """The command that trains on the old data and the new labels, ready to run (the recipe of the
    model's run, its ``config.yaml``; every data spec the model was trained on, then the labels
    file; a new run folder), and a note on how to start from the model's weights instead."""
    import shlex

    from imgcls.artifacts import read_info, run_folder

    out = ["--out", str(fresh_folder(labels.parent / "trained"))]
    if model is None or not Path(str(model)).is_dir():
        alone = shlex.join(["imgcls", "train", "--data", str(labels), *out])
        return alone, "the model is not known: add --data OLD_DATA before the labels to train on the old data too"
    info = read_info(model)
    specs = [s for s in info.trained_on if Path(s).resolve() != labels]  # a labels file grown round after round: once
    run = run_folder(model, info)
    recipe = ["--config", str(run / "config.yaml")] if run is not None and (run / "config.yaml").is_file() else []
    data = [a for s in [*specs, str(labels)] for a in ("--data", s)]
    note = f"add --pretrained {shlex.quote(str(Path(model).resolve()))} to start from the model's weights"
    return shlex.join(["imgcls", "train", *recipe, *data, *out]), note


def retrain_hint(summary: dict[str, Any], corrections: Path) -> str:
    """The command that trains on the reviewed data, ready to run: the recipe the audit trained
    with (its ``--config``), every data option it read (``--detections`` and the rest), the
    corrections file, and a new run folder beside the review's folder."""
    import shlex

    args = list(summary.get("data_args") or [])
    if not args and summary.get("spec"):  # an audit written before it recorded its options
        args = ["--data", str(summary["spec"])]
    if summary.get("config"):
        args = ["--config", str(summary["config"]), *args]
    out = ["--out", str(fresh_folder(corrections.parent.parent / "retrained"))]
    if args:
        return shlex.join(["imgcls", "train", *args, "--corrections", str(corrections), *out])
    alone = shlex.join(["imgcls", "train", "--data", str(corrections), *out])
    with_data = shlex.join(["imgcls", "train", "--data", "DATA", "--corrections", str(corrections), *out])
    return f"{alone} (the reviewed images), or {with_data}"


def fresh_folder(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3`` ... : the first that does not exist yet."""
    k = 1
    candidate = path
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.name}-{k}")
    return candidate


def serve_review(session: Session, *, host: str = "127.0.0.1", port: int = 8765, hint: str = "",
                 allowed_hosts: list[str] | tuple[str, ...] = ()) -> None:  # fmt: skip
    """Serve the page until Ctrl-C, answering to the names of ``host`` and ``allowed_hosts``
    (``--allowed-host``; bound to every interface: this machine's names and addresses)."""
    import uvicorn

    from imgcls.console import info
    from imgcls.review.app import create_review_app
    from imgcls.serve.app import check_address
    from imgcls.serve.http import exposure_note

    check_address(host, port)
    app = create_review_app(session, hint=hint, host=host, port=port, allowed=allowed_hosts)
    note = exposure_note(host, allowed_hosts)
    if note:
        info(f"imgcls review: {note}")
    uvicorn.run(app, host=host, port=port, log_level="warning")
