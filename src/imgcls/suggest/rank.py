"""Which pool images to label next, from their probabilities and embeddings (pure NumPy, no model).

``auto`` (the default) combines the two things that make a label worth having:

- **uncertainty** of the calibrated probabilities: the margin, 1 - (p1 - p2), or the entropy
  divided by log K (both 0 for a sure image, 1 for the most uncertain one);
- **diversity**: of the most uncertain candidates (``CANDIDATES`` x n of them), a greedy
  farthest-first (k-center) walk in the embedding space picks next the candidate whose weight x
  distance to the nearest image picked before is the largest, so that a hundred frames of one
  uncertain bush yield one pick, not a hundred.

A candidate whose cosine similarity to an image already picked is ``dedup`` or more is a
near-duplicate of it: never picked, and counted in that pick's ``duplicates`` (over the whole
eligible pool, not only the candidates). Rare predicted classes are favoured: the weight is the
uncertainty times sqrt(1 / (K x the class's share of the pool's predictions)), at least 1 and at
most ``MAX_RARITY``, so a class the model predicts for 0.3 % of a ten-class pool counts 5.8 times
a common class's equally uncertain image.

``margin`` and ``entropy`` are uncertainty alone (the most uncertain first), ``random`` the
baseline every active-learning figure is measured against (seeded).

Similarities are taken between embeddings centred on the pool's mean and normalised again
(:func:`centred`, which :func:`imgcls.suggest.suggest` applies before :func:`select`): a
network's pooled features after a ReLU are all non-negative, so their raw cosines crowd near 1
(on the demo digits 96 % of the images had a neighbour above 0.98); centred, they spread around 0,
and identical images stay at 1. Cosine similarity of L2-normalised vectors is their dot product:
NumPy's matrix products in blocks do it (scikit-learn's ``pairwise_distances`` would compute the
same product, and it has no k-center greedy to offer); the walk costs candidates x n x width
multiply-adds, 5000 x 500 x 512 for 500 picks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("auto", "margin", "entropy", "random")
UNCERTAINTIES = ("margin", "entropy")
CANDIDATES = 10  # auto walks the n x CANDIDATES most uncertain images (weighted)
MAX_RARITY = 10.0
_BLOCK = 4096


@dataclass
class Pick:
    """One image to label, in labelling order."""

    index: int  # into the eligible rows
    reason: str
    duplicates: list[int]  # eligible rows it stands for


def uncertainty(probs: np.ndarray, measure: str = "margin") -> np.ndarray:
    """Per row: margin 1 - (p1 - p2) or normalised entropy; both in [0, 1], higher = less sure."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[1] < 2:
        return np.zeros(len(p))
    if measure == "entropy":
        q = np.clip(p, 1e-12, 1.0)
        return np.asarray(-(p * np.log(q)).sum(axis=1) / np.log(p.shape[1]))
    top = -np.sort(-p, axis=1)
    return np.asarray(1.0 - (top[:, 0] - top[:, 1]))


def class_shares(probs: np.ndarray) -> np.ndarray:
    """Each class's share of the rows it is the arg-max of."""
    k = probs.shape[1]
    return np.bincount(probs.argmax(axis=1), minlength=k) / max(1, len(probs))


def rarity(probs: np.ndarray) -> np.ndarray:
    """Per row: sqrt(1 / (K x share of its predicted class)), clipped to [1, MAX_RARITY]."""
    shares = class_shares(probs)
    k = probs.shape[1]
    factor = np.sqrt(1.0 / np.maximum(k * shares, 1e-9))
    return np.asarray(np.clip(factor, 1.0, MAX_RARITY)[probs.argmax(axis=1)])


def centred(emb: np.ndarray) -> np.ndarray:
    """The embeddings minus their mean, L2-normalised again (float16; see the module docstring)."""
    if len(emb) < 2:
        return np.asarray(emb, dtype=np.float16)
    mean = np.asarray(emb).mean(axis=0, dtype=np.float32)
    out = np.empty(np.shape(emb), dtype=np.float16)
    for start in range(0, len(emb), _BLOCK):  # float32 a block at a time: memory stays float16's
        x = np.asarray(emb[start : start + _BLOCK], dtype=np.float32) - mean
        out[start : start + _BLOCK] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return out


def _describe(probs: np.ndarray, i: int, names: list[str], measure: str) -> str:
    p = probs[i]
    order = np.argsort(-p, kind="stable")
    a, b = names[order[0]], names[order[1]] if len(order) > 1 else names[order[0]]
    if measure == "entropy":
        return f"uncertain (entropy {uncertainty(p[None], 'entropy')[0]:.2f}) between {a} and {b}"
    return f"uncertain (margin {p[order[0]] - p[order[1]]:.2f}) between {a} and {b}"


def _rare_note(probs: np.ndarray, i: int, names: list[str], shares: np.ndarray) -> str:
    c = int(probs[i].argmax())
    if shares[c] * len(names) >= 0.5:  # at least half its fair share: not rare
        return ""
    return f"; rare predicted class: {names[c]} ({100 * shares[c]:.1f}% of the pool)"


def select(
    probs: np.ndarray,
    emb: np.ndarray,
    names: list[str],
    n: int,
    *,
    strategy: str = "auto",
    measure: str = "margin",
    dedup: float = 0.98,
    seed: int = 0,
) -> list[Pick]:
    """The ``n`` rows to label first (fewer when the pool is smaller), in labelling order, each
    with its reason and the rows it stands for (see the module docstring)."""
    if len(probs) == 0:  # every image unreadable, trained on or labelled
        return []
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(len(probs))[:n]
        picks = [Pick(int(i), f"random (seed {seed})", []) for i in order]
    elif strategy in UNCERTAINTIES:
        u = uncertainty(probs, strategy)
        order = np.argsort(-u, kind="stable")[:n]
        picks = [Pick(int(i), _describe(probs, int(i), names, strategy), []) for i in order]
    else:
        picks = _diverse(probs, emb, names, n, measure, dedup)
    _count_duplicates(picks, emb, dedup)
    return picks


def _diverse(probs: np.ndarray, emb: np.ndarray, names: list[str], n: int, measure: str, dedup: float) -> list[Pick]:
    """Weighted farthest-first over the most uncertain candidates (``auto``)."""
    # rounded: copies scored in different batches differ in the last bits, and the first of them
    # in input order should be the one kept; + 1e-9: a sure pool still yields picks
    weight = np.round(uncertainty(probs, measure) * rarity(probs), 6) + 1e-9
    order = np.argsort(-weight, kind="stable")
    size = max(n * CANDIDATES, n)
    shares = class_shares(probs)
    picks: list[Pick] = []
    chosen: list[np.ndarray] = []  # the picks' embeddings
    # the candidates a window at a time, most uncertain first: when a window's live candidates run
    # out (near-duplicates of the picks: a long burst of one frame), the walk goes on in the next
    for start in range(0, len(order), size):
        if len(picks) >= n:
            break
        cand = order[start : start + size]
        e = emb[cand].astype(np.float32)
        w = weight[cand]
        distance = np.full(len(cand), 2.0)  # to the nearest pick (cosine distance, at most 2): none yet
        alive = np.ones(len(cand), dtype=bool)
        if chosen:
            nearest = (e @ np.stack(chosen).T).max(axis=1)
            distance, alive = np.clip(1.0 - nearest, 0.0, None), nearest < dedup
        while len(picks) < n and alive.any():
            j = int(np.argmax(np.where(alive, w * distance, -np.inf)))
            i = int(cand[j])
            spread = (
                "the first pick" if not picks
                else f"distance {distance[j]:.2f} from the nearest of the {len(picks)} picked before"
            )  # fmt: skip
            note = _rare_note(probs, i, names, shares)
            picks.append(Pick(i, f"{_describe(probs, i, names, measure)}; {spread}{note}", []))
            chosen.append(e[j])
            sim = e @ e[j]
            distance = np.minimum(distance, np.clip(1.0 - sim, 0.0, None))
            alive &= sim < dedup
            alive[j] = False
    return picks


def near_any(rows: np.ndarray, others: np.ndarray, dedup: float) -> np.ndarray:
    """Per row of ``rows``: whether some row of ``others`` has cosine similarity ``dedup`` or more."""
    found = np.zeros(len(rows), dtype=bool)
    for start in range(0, len(rows), _BLOCK):
        block = rows[start : start + _BLOCK].astype(np.float32)
        for at in range(0, len(others), _BLOCK):
            found[start : start + _BLOCK] |= (block @ others[at : at + _BLOCK].astype(np.float32).T >= dedup).any(
                axis=1
            )
    return found


def _count_duplicates(picks: list[Pick], emb: np.ndarray, dedup: float) -> None:
    """Every other row whose most similar pick has cosine similarity ``dedup`` or more is that
    pick's duplicate (rows picked themselves are nobody's)."""
    if not picks or emb.size == 0:
        return
    chosen = np.array([p.index for p in picks])
    e_pick = emb[chosen].astype(np.float32)
    picked = np.zeros(len(emb), dtype=bool)
    picked[chosen] = True
    for start in range(0, len(emb), _BLOCK):
        sim = emb[start : start + _BLOCK].astype(np.float32) @ e_pick.T
        best, where = sim.max(axis=1), sim.argmax(axis=1)
        for r in np.nonzero((best >= dedup) & ~picked[start : start + _BLOCK])[0]:
            picks[int(where[r])].duplicates.append(start + int(r))
