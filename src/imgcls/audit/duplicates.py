"""Exact and near-duplicate images, and the ones that leak across splits.

Every image gets a perceptual hash (imagehash's ``phash``: the low frequencies of its 32 x 32
gray-level discrete cosine transform, 64 bits), which survives resizing, recompression and small
edits. Two images whose hashes differ in at most ``max_distance`` bits are near duplicates (0 is
an exact duplicate of the picture, whatever the file). Pairs are found without comparing every
pair: the hash is cut into ``max_distance + 1`` blocks, and two hashes that differ in at most
that many bits agree exactly on at least one block (the pigeonhole principle), so only images
sharing a block are compared.

Two files of identical pixels are exact duplicates. Images under 32 px are compared for exact
duplicates only: at that size the hashes of different pictures collide.

A pair on two sides of a split (a test image with its twin in training) is a leak: the test
score flatters the model. With locations, a leak between two sites is shown as such (a camera
moved, or a file copied between cards).
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgcls.data.table import DataTable

HASH_BITS = 64


MIN_SIDE = 32  # below this, perceptual hashes of different pictures collide: exact duplicates only


@dataclass
class Fingerprints:
    """Per row: its perceptual hash (0 when unreadable), a digest of its pixels (exact
    duplicates), its larger side; and the rows that could not be read."""

    phash: np.ndarray
    digest: list[str]
    side: np.ndarray
    unreadable: list[tuple[str, str]]


def fingerprints(table: DataTable, *, workers: int = 2) -> Fingerprints:
    import hashlib

    import imagehash
    from PIL import Image

    from imgcls.data.image import ImageError, read_image

    def one(i: int) -> tuple[int, str, int, str | None]:
        try:
            img = (
                Image.fromarray(table.pixels[i])
                if table.pixels is not None
                else read_image(table.paths[i], min_size=64)
            )
            digest = hashlib.md5(img.convert("RGB").tobytes(), usedforsecurity=False).hexdigest() + str(img.size)
            return int(str(imagehash.phash(img)), 16), digest, max(img.size), None
        except ImageError as e:
            return 0, "", 0, str(e)

    n = len(table)
    first: dict[str, int] = {}  # detection crops of one image: the image is hashed once
    for i, p in enumerate(table.paths):
        first.setdefault(p, i)
    out = Fingerprints(np.zeros(n, dtype=np.uint64), [""] * n, np.zeros(n, dtype=np.int64), [])
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = dict(zip(first.values(), pool.map(one, first.values()), strict=True))
    for i, p in enumerate(table.paths):
        h, digest, side, err = done[first[p]]
        out.phash[i], out.digest[i], out.side[i] = h, digest, side
        if err is not None and first[p] == i:
            out.unreadable.append((p, err))
    return out


def duplicate_pairs(fp: Fingerprints, max_distance: int = 4) -> list[tuple[int, int, int, str]]:
    """(i, j, bits apart, exact | near) of the duplicate pairs: identical pixels, or perceptual
    hashes within ``max_distance`` bits where both images are at least :data:`MIN_SIDE` px."""
    exact: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(fp.digest):
        if d:
            exact[d].append(i)
    pairs = {(a, b): "exact" for members in exact.values() for k, a in enumerate(members) for b in members[k + 1 :]}
    usable = (fp.side >= MIN_SIDE) & np.array([bool(d) for d in fp.digest])
    for a, b, _ in near_pairs(fp.phash, max_distance, usable):
        pairs.setdefault((a, b), "near")
    return [(a, b, bin(int(fp.phash[a]) ^ int(fp.phash[b])).count("1"), kind) for (a, b), kind in sorted(pairs.items())]


def near_pairs(
    hashes: np.ndarray, max_distance: int = 4, usable: np.ndarray | None = None
) -> list[tuple[int, int, int]]:
    """(i, j, Hamming distance) of every pair i < j within ``max_distance`` bits."""
    n = len(hashes)
    ok = np.ones(n, dtype=bool) if usable is None else usable
    blocks = max_distance + 1
    edges = np.linspace(0, HASH_BITS, blocks + 1).astype(int)
    found: set[tuple[int, int]] = set()
    for b in range(blocks):
        width = edges[b + 1] - edges[b]
        key = (hashes >> np.uint64(edges[b])) & np.uint64((1 << width) - 1)
        buckets: dict[int, list[int]] = defaultdict(list)
        for i in np.flatnonzero(ok):
            buckets[int(key[i])].append(int(i))
        for members in buckets.values():
            for a_pos, a in enumerate(members):
                for c in members[a_pos + 1 :]:
                    found.add((a, c))
    out = []
    for a, c in sorted(found):
        d = bin(int(hashes[a]) ^ int(hashes[c])).count("1")
        if d <= max_distance:
            out.append((a, c, d))
    return out


def duplicate_rows(table: DataTable, splits: list[str], pairs: list[tuple[int, int, int, str]]) -> list[dict[str, Any]]:
    """A row per pair of files: both paths, the distance, exact or near, both splits, a leak when
    the splits differ, both labels and locations where the data has them. Leaks first, then the
    closest. The detection crops of one image share its hash, so two images of N and M crops make
    N x M pairs of rows: they are one pair of files, listed once (with its first crops' labels)."""
    loc = table.columns.get("location")
    rows = []
    for a, b, d, kind in pairs:
        if table.paths[a] == table.paths[b]:
            continue  # two detection crops of one image
        row = {"path_a": table.paths[a], "path_b": table.paths[b], "distance": d, "kind": kind,
               "split_a": splits[a], "split_b": splits[b], "leak": splits[a] != splits[b],
               "label_a": ";".join(table.label_names(a)), "label_b": ";".join(table.label_names(b))}  # fmt: skip
        if loc is not None:
            row.update(location_a=loc[a], location_b=loc[b])
        rows.append(row)
    rows.sort(key=lambda r: (not r["leak"], r["kind"] != "exact", r["distance"], r["path_a"]))
    seen: set[frozenset[str]] = set()
    once = []
    for row in rows:  # the first of a pair of files is its leak, if any, and its closest
        files = frozenset((str(row["path_a"]), str(row["path_b"])))
        if files not in seen:
            seen.add(files)
            once.append(row)
    return once
