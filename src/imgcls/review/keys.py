"""The review page's keys: one table per mode that the page draws its legend from and dispatches
on, and that the docs print (``tests/test_review.py`` compares the README's and
docs/camera-traps.md's tables with :func:`markdown_table`): :data:`KEYS` to review an audit or
predictions, :data:`LABEL_KEYS` to label suggested images (``imgcls review --label next.csv``).

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


LABEL_KEYS = (
    Key("1–9", tuple("0123456789"), "relabel", "accept / relabel", "the image is the numbered class (the model's "
        "likeliest first: 1 is its guess); where the classes are the digits 0-9, a digit is its own class"),
    Key("A", ("a", "A"), "accept", "accept", "the model's guess is right (as 1)"),
    Key("L", ("l", "L"), "type", "relabel", "type any class, Enter"),
    Key("N", ("n", "N"), "type", "relabel", "none of these: type the class it is (a new one needs a second Enter)"),
    Key("X / Delete", ("x", "X", "Delete"), "reject", "reject", "no usable image: left out of training"),
    Key("S / → / Space", ("s", "S", "ArrowRight", " "), "skip", "", "no decision now; the image stays in the queue"),
    Key("←", ("ArrowLeft",), "back", "", "the previous image (its decision is shown)"),
    Key("U / Backspace", ("u", "U", "Backspace"), "undo", "", "take the last decision back"),
)  # fmt: skip


def public_keys(keys: tuple[Key, ...] = KEYS) -> list[dict[str, Any]]:
    """The table as the page receives it."""
    return [asdict(k) for k in keys]


def markdown_table(keys: tuple[Key, ...] = KEYS, file: str = "corrections.csv") -> str:
    """The keys as the docs show them (``file``: what the decisions are written to)."""
    lines = [f"| key | {file} gets | meaning |", "| --- | --- | --- |"]
    for k in keys:
        shown = " / ".join(f"`{part.strip()}`" for part in k.shown.split("/"))
        records = " / ".join(f"`{r.strip()}`" for r in k.records.split("/")) if k.records else "nothing"
        lines.append(f"| {shown} | {records} | {k.meaning} |")
    return "\n".join(lines)
