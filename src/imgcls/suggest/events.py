"""``imgcls suggest --aggregate sequence``: the event (the frames one trigger of a camera took) is
what is chosen. A burst of frames of one animal is one decision's worth of information, and
labelled together it costs a person little more than one frame: events are ranked as
:mod:`~imgcls.suggest.rank` ranks images, on the mean of their items' calibrated probabilities
and the mean of their embeddings (as predict's ``--aggregate sequence`` pools an event's
probabilities), and each chosen event lists all its items (images, or detection crops), one row
each, consecutive, so the labelling page walks an event's crops one after another and every
decision stays the one crop's own.

Events come from :func:`imgcls.cameratrap.sequences.assign_events` (the camera's folder and the
EXIF times, ``gap`` seconds apart at most), as ``imgcls predict --aggregate sequence`` groups
frames.
"""

from __future__ import annotations

import numpy as np

from imgcls.suggest.rank import Pick, select
from imgcls.suggest.score import split_key


def event_ids(names: list[str], gap: float) -> list[str]:
    """The event of each item (a file, or a crop key: its image's event)."""
    from imgcls.cameratrap.sequences import assign_events

    images = [split_key(n)[0] for n in names]
    unique = list(dict.fromkeys(images))
    of = dict(zip(unique, assign_events(unique, gap=gap), strict=True))
    return [of[i] for i in images]


def pooled(probs: np.ndarray, emb: np.ndarray, events: list[str]) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Per event (in order of first appearance): the mean probabilities, the mean embedding
    (L2-normalised again), and the rows that are its items."""
    members: dict[str, list[int]] = {}
    for row, e in enumerate(events):
        members.setdefault(e, []).append(row)
    groups = list(members.values())
    p = np.stack([probs[g].mean(axis=0) for g in groups])
    m = np.stack([emb[g].astype(np.float32).mean(axis=0) for g in groups])
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    return p, m.astype(np.float16), groups


def select_by(
    probs: np.ndarray, emb: np.ndarray, names: list[str], n: int, events: list[str] | None, *, strategy: str,
    measure: str, dedup: float, seed: int,
) -> list[Pick]:  # fmt: skip
    """:func:`~imgcls.suggest.rank.select`'s ``n`` rows; with ``events``, ``n`` events chosen the
    same way, as the rows of their items in labelling order: each event's items together, the
    event's reason on each, the items of the events it stands for (near-duplicate events) on its
    first item."""
    if events is None or len(probs) == 0:
        return select(probs, emb, names, n, strategy=strategy, measure=measure, dedup=dedup, seed=seed)
    p, m, groups = pooled(probs, emb, events)
    out: list[Pick] = []
    for pick in select(p, m, names, n, strategy=strategy, measure=measure, dedup=dedup, seed=seed):
        items = groups[pick.index]
        said = f"{pick.reason}; event {events[items[0]]} ({len(items)} item{'s' if len(items) != 1 else ''})"
        stands_for = [row for d in pick.duplicates for row in groups[d]]
        out += [Pick(row, said, stands_for if k == 0 else []) for k, row in enumerate(items)]
    return out
