"""Which pool images to label next, from their probabilities and embeddings (pure NumPy, no model).

``auto`` (the default) combines the two things that make a label worth having:

- **uncertainty** of the calibrated probabilities: the margin, 1 - (p1 - p2), or the entropy
  divided by log K (both 0 for a sure image, 1 for the most uncertain one);
- **diversity**: over the candidates, most uncertain first (``CANDIDATES`` x n of them, and
  more while one not yet held could still win: :class:`_Walk`), a greedy walk in the embedding
  space picks next the candidate with the largest weight x closeness factor,
  the factor being its cosine distance to the nearest image picked before divided by ``NEAR``
  and capped at 1. A candidate ``NEAR`` or farther from every pick keeps its whole weight, so
  the walk takes the most uncertain ones in turn; one closer (another frame of a burst, the
  same bush a little later) counts in proportion (half at similarity 0.95, a fifth just under
  ``dedup``), so the frames of one uncertain bush give way to other uncertain images instead of
  filling the picks (a burst far more uncertain than everything else can still give several:
  ``benchmarks/bench_suggest_bursts.py`` counts them; for camera traps, ``--aggregate sequence``
  chooses whole events). Distance beyond ``NEAR`` earns nothing: an
  unrewarded cap keeps the walk off the outliers a plain farthest-first (k-center) walk seeks,
  which on Fashion-MNIST cost accuracy against margin sampling (BENCHMARKS.md "Label less";
  this rule replaced that walk after that benchmark, and was checked on it again).

A candidate whose cosine similarity to an image already picked is ``dedup`` or more is a
near-duplicate of it: never picked, and counted in that pick's ``duplicates`` (over the whole
eligible pool, not only the candidates). Rare predicted classes are favoured: a class the model
predicts for less than half its fair share of the pool (1 / K) weighs sqrt(half its fair share /
its share), at most ``MAX_RARITY``; the others weigh 1. So a class predicted for 0.3 % of a
ten-class pool counts 4.1 times a common class's equally uncertain image, while the ordinary
spread of a balanced pool's predictions (8 % to 12 % of ten classes) changes nothing (it once did:
a factor of 1.1 outweighed the small differences in margin among the most uncertain images).

``margin`` and ``entropy`` are uncertainty alone (the most uncertain first), ``random`` the
baseline every active-learning figure is measured against (seeded).

Similarities are taken between embeddings centred on the pool's mean and normalised again
(:func:`centred`, which :func:`imgcls.suggest.suggest` applies before :func:`select`): a
network's pooled features after a ReLU are all non-negative, so their raw cosines crowd near 1
(on the demo digits 96 % of the images had a neighbour above 0.98); centred, they spread around 0,
and identical images stay at 1. Cosine similarity of L2-normalised vectors is their dot product:
NumPy's matrix products in blocks do it (scikit-learn's ``pairwise_distances`` would compute the
same product, and it has no such walk to offer); the walk costs held candidates x n x width
multiply-adds: 5000 x 500 x 512 for 500 picks where the first 10 x n candidates suffice (0.1 s on
the label-less benchmark's 20,000-image pool), at most 131,072 x 500 x 512 where near views crowd
them (:class:`_Walk`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("auto", "margin", "entropy", "random")
UNCERTAINTIES = ("margin", "entropy")
CANDIDATES = 10  # auto walks the n x CANDIDATES most uncertain images (weighted)
NEAR = 0.1  # cosine distance (similarity 0.9) below which a candidate is a near view of a pick
MAX_RARITY = 10.0
HELD_BYTES = 256 * 2**20  # the most candidate embeddings (float32) auto's walk holds at once
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
    """Per row: sqrt(0.5 / (K x share of its predicted class)), clipped to [1, MAX_RARITY]: above
    1 for a class predicted for less than half its fair share."""
    shares = class_shares(probs)
    k = probs.shape[1]
    factor = np.sqrt(0.5 / np.maximum(k * shares, 1e-9))
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


class _Walk:
    """The candidates ``auto`` walks: the most uncertain ``step`` first, then more (twice as many
    each time) whenever none of those held could still beat an unseen one (an unseen candidate's
    score is at most its weight, and the weights come sorted). So a long burst of near frames
    that fills the first candidates (their scores cut by the first pick) lets the less uncertain
    distinct images behind it in. Dead candidates (near-duplicates of a pick) are never held: a
    grown set drops them, and the new ones come in only alive. At most ``HELD_BYTES`` of float32
    embeddings of live candidates are held (131,072 images of width 512; the first 10 x n if
    that is more): where that many of the most uncertain images are near views of a few scenes,
    the walk goes on among those held rather than hold the whole pool, and grows again only once
    half of them have died (each grow copies what is held)."""

    def __init__(self, emb: np.ndarray, weight: np.ndarray, step: int) -> None:
        self.emb, self.weight, self.step = emb, weight, step
        self.cap = max(step, HELD_BYTES // (4 * max(1, emb.shape[1])))
        self.order = np.argsort(-weight, kind="stable")  # rounded weights: the first copy first
        self.end = 0
        self.cand = np.empty(0, dtype=np.int64)
        self.e = np.empty((0, emb.shape[1]), dtype=np.float32)
        self.distance = np.empty(0)  # to the nearest pick (cosine distance, at most 2)
        self.alive = np.empty(0, dtype=bool)
        self.full = False  # held as many as it may: no growing until half of those have died

    def next_unseen(self) -> float:
        """The most an unseen candidate could score (-inf: none left, or no room to hold one)."""
        if self.end >= len(self.order) or (self.full and 2 * int(self.alive.sum()) >= self.cap):
            return -np.inf
        return float(self.weight[self.order[self.end]])

    def grow(self, chosen: list[np.ndarray], dedup: float) -> None:
        keep = self.alive
        new = self.order[self.end : self.end + min(self.step, self.cap - int(keep.sum()))]
        self.end += len(new)
        self.step *= 2
        e = self.emb[new].astype(np.float32)
        distance = np.full(len(new), 2.0)
        if chosen:
            nearest = (e @ np.stack(chosen).T).max(axis=1)
            distance, live = np.clip(1.0 - nearest, 0.0, None), nearest < dedup
            new, e, distance = new[live], e[live], distance[live]  # near-duplicates of a pick: never held
        self.cand = np.concatenate([self.cand[keep], new])
        self.e = np.concatenate([self.e[keep], e])
        self.distance = np.concatenate([self.distance[keep], distance])
        self.alive = np.ones(len(self.cand), dtype=bool)
        self.full = len(self.cand) >= self.cap

    def scores(self) -> np.ndarray:
        closeness = np.minimum(self.distance / NEAR, 1.0)
        return np.where(self.alive, self.weight[self.cand] * closeness, -np.inf)

    def take(self, j: int, dedup: float) -> None:
        sim = self.e @ self.e[j]
        self.distance = np.minimum(self.distance, np.clip(1.0 - sim, 0.0, None))
        self.alive &= sim < dedup
        self.alive[j] = False


def _diverse(probs: np.ndarray, emb: np.ndarray, names: list[str], n: int, measure: str, dedup: float) -> list[Pick]:
    """The weighted walk over the most uncertain candidates (``auto``; module docstring)."""
    # rounded: copies scored in different batches differ in the last bits, and the first of them
    # in input order should be the one kept; + 1e-9: a sure pool still yields picks
    weight = np.round(np.nan_to_num(uncertainty(probs, measure) * rarity(probs)), 6) + 1e-9
    walk = _Walk(emb, weight, max(n * CANDIDATES, n))
    shares = class_shares(probs)
    picks: list[Pick] = []
    chosen: list[np.ndarray] = []  # the picks' embeddings
    while len(picks) < n:
        score = walk.scores()
        j = int(np.argmax(score)) if len(score) else -1
        if walk.next_unseen() > (score[j] if j >= 0 else -np.inf):
            walk.grow(chosen, dedup)  # an unseen candidate might beat every one held
            continue
        if j < 0 or not walk.alive[j]:
            break  # every candidate picked or a near-duplicate of a pick
        i = int(walk.cand[j])
        spread = (
            "the first pick" if not picks
            else f"distance {walk.distance[j]:.2f} from the nearest of the {len(picks)} picked before"
        )  # fmt: skip
        note = _rare_note(probs, i, names, shares)
        picks.append(Pick(i, f"{_describe(probs, i, names, measure)}; {spread}{note}", []))
        chosen.append(walk.e[j].copy())  # a copy: a view would keep this generation of walk.e alive
        walk.take(j, dedup)
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
