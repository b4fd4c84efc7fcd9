"""The review page's keys: one table that the page draws its legend from and dispatches on, and
that the docs print (``tests/test_review.py`` compares the README's and docs/camera-traps.md's
table with :func:`markdown_table`).

What a decision records is the corrections file's vocabulary (:mod:`imgcls.data.corrections`):
``accept`` confirms the label the page shows for the image (the data's label for an audit's
suspect, the model's guess for a prediction), ``relabel`` gives it another, ``reject`` leaves the
image out of training. Enter is deliberately not a decision key: on an audit's suspect the label
shown is the one the audit doubts, so a reflex Enter must not confirm it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    shown: str  # as the legend and the docs name it ("X / Delete")
    keys: tuple[str, ...]  # KeyboardEvent.key values
    action: str  # accept | relabel | type | reject | skip | back | undo
    records: str  # what corrections.csv gets ("" for none)
    meaning: str


KEYS = (
    Key("A", ("a", "A"), "accept", "accept",
        "the label shown is right: for an audit's suspect the data's label (the one the audit doubts), for a "
        "prediction the model's guess"),
    Key("1–9", tuple("123456789"), "relabel", "relabel", "the image takes the numbered label (first the audit's "
        "suggestion, or a prediction's next guesses)"),
    Key("L", ("l", "L"), "type", "relabel", "type a label, Enter; one that is not a class yet needs a second Enter"),
    Key("X / Delete", ("x", "X", "Delete"), "reject", "reject", "leave the image out of training"),
    Key("S / → / Space", ("s", "S", "ArrowRight", " "), "skip", "", "no decision now; the image stays in the queue"),
    Key("←", ("ArrowLeft",), "back", "", "the previous image (its decision is shown)"),
    Key("U / Backspace", ("u", "U", "Backspace"), "undo", "", "take the last decision back"),
)  # fmt: skip


def public_keys() -> list[dict[str, Any]]:
    """The table as the page receives it."""
    return [asdict(k) for k in KEYS]


def markdown_table() -> str:
    """The keys as the docs show them."""
    lines = ["| key | corrections.csv gets | meaning |", "| --- | --- | --- |"]
    for k in KEYS:
        shown = " / ".join(f"`{part.strip()}`" for part in k.shown.split("/"))
        lines.append(f"| {shown} | {f'`{k.records}`' if k.records else 'nothing'} | {k.meaning} |")
    return "\n".join(lines)
