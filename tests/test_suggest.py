"""``imgcls suggest``: the ranking (uncertain and diverse first, duplicates collapsed, rare classes
favoured, random seeded), what is left out (training data, labelled), the resumable scoring pass,
skipped files and one-line errors."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgcls.cli import main
from imgcls.suggest import suggest
from imgcls.suggest.rank import centred, select, uncertainty
from imgcls.suggest.score import cache_dir, load_cache
from imgfactory import class_image, image_folder

NAMES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny real run (LeNet, one epoch at 16 px, no ONNX export): its model and splits.csv."""
    import imgcls

    root = tmp_path_factory.mktemp("suggest")
    data = image_folder(root / "data", ("cat", "dog", "fox"), 10, size=(24, 24))
    run = imgcls.train(data, out=root / "run", arch="lenet", epochs=1, batch_size=8, image_size=16,
                       pretrained="none", cache_dir=root / "cache", seed=0, export_onnx=False)  # fmt: skip
    return {"data": data, "model": run / "model"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _probs(margins: list[float]) -> np.ndarray:
    """Rows whose two best classes (cat, dog) are ``margin`` apart."""
    return np.array([[(1 + m) / 2 * 0.98, (1 - m) / 2 * 0.98, 0.02] for m in margins])


# ---------------------------------------------------------------------------------- ranking
def test_the_most_uncertain_images_come_first() -> None:
    probs = _probs([0.9, 0.02, 0.5, 0.1, 0.7])
    emb = np.eye(5, dtype=np.float16)  # all equally far apart: uncertainty decides
    for strategy in ("auto", "margin"):
        picks = select(probs, emb, NAMES, 3, strategy=strategy)
        assert [p.index for p in picks] == [1, 3, 2], strategy
    assert picks[0].reason == "uncertain (margin 0.02) between cat and dog"
    assert np.allclose(uncertainty(probs)[[1, 3]], [0.98 * 0.98 + 0.02, 0.9 * 0.98 + 0.02], atol=1e-9)
    assert [p.index for p in select(probs, emb, NAMES, 2, strategy="entropy")] == [1, 3]


def test_copies_of_one_uncertain_image_are_one_pick_standing_for_the_others() -> None:
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(5, 8))
    copy = rng.normal(size=8)
    emb = np.vstack([np.tile(copy, (10, 1)), distinct])
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)
    probs = _probs([0.01] * 10 + [0.3, 0.4, 0.5, 0.6, 0.7])
    picks = select(probs, emb, NAMES, 10, strategy="auto")  # 10 asked: 6 are not near-duplicates
    copies = [p for p in picks if p.index < 10]
    assert len(copies) == 1 and len(picks) == 6
    assert picks[0].index == 0 and sorted(picks[0].duplicates) == list(range(1, 10))
    assert "distance" in picks[1].reason and "picked before" in picks[1].reason
    hair = probs.copy()
    hair[5] += [-1e-9, 1e-9, 0]  # a later copy a hair more uncertain (another batch's rounding)
    assert select(hair, emb, NAMES, 1, strategy="auto")[0].index == 0  # the first copy is kept
    # uncertainty alone picks the copies again and again: what auto is for
    assert [p.index for p in select(probs, emb, NAMES, 6, strategy="margin")][:6] == [0, 1, 2, 3, 4, 5]


def test_distinct_images_with_similar_relu_features_are_no_duplicates() -> None:
    """Non-negative features (after a ReLU) all have raw cosines near 1; centred on the pool's
    mean, only identical images stay near-duplicates."""
    rng = np.random.default_rng(0)
    raw = 5 + rng.random((20, 16))  # every raw cosine above 0.98
    raw[1] = raw[0]
    raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert (raw @ raw.T).min() > 0.98
    e = centred(raw).astype(np.float32)
    sim = e @ e.T
    assert sim[0, 1] > 0.99 and np.sort(sim, axis=1)[:, -2][2:].max() < 0.9
    picks = select(_probs([0.5] * 20), centred(raw), NAMES, 20)
    assert len(picks) == 19 and sum(len(p.duplicates) for p in picks) == 1


def test_a_rare_predicted_class_is_favoured_and_said() -> None:
    probs = np.vstack([_probs([0.30] * 40), [[0.02, 0.34, 0.64]]])  # one fox among 40 cats
    emb = np.eye(41, dtype=np.float16)
    picks = select(probs, emb, NAMES, 1, strategy="auto")
    assert picks[0].index == 40  # less uncertain (margin 0.30 as well), but of a rare class
    assert "rare predicted class: fox (2.4% of the pool)" in picks[0].reason


def test_a_burst_of_near_frames_yields_few_picks_and_distance_beyond_near_earns_nothing() -> None:
    """100 frames of one uncertain bush, each a little different (similarity 0.91 to 0.98: no
    duplicates), and 50 distinct, less uncertain images: auto takes one or two frames of the
    burst, margin takes only the burst. Among images that are all far from each other the most
    uncertain come first: being farther (an outlier) is no reason to be picked."""
    rng = np.random.default_rng(3)
    bush = rng.normal(size=64)
    frames = bush + rng.normal(scale=0.23, size=(100, 64))
    emb = np.vstack([frames, rng.normal(size=(50, 64))])
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb[:100] @ emb[:100].T
    pairs = sim[np.triu_indices(100, 1)]
    assert pairs.min() > 0.91 and pairs.max() < 0.98
    probs = _probs([0.02] * 100 + list(np.linspace(0.3, 0.6, 50)))
    picks = select(probs, emb.astype(np.float16), NAMES, 10, strategy="auto")
    assert 1 <= sum(p.index < 100 for p in picks) <= 2 and len(picks) == 10
    assert all(p.index < 100 for p in select(probs, emb.astype(np.float16), NAMES, 10, strategy="margin"))
    assert [p.index for p in picks if p.index >= 100] == list(range(100, 100 + sum(p.index >= 100 for p in picks)))
    far = np.eye(6, dtype=np.float16)
    far[5] = -far[0]  # the least uncertain image is the farthest from the first pick
    assert [p.index for p in select(_probs([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), far, NAMES, 3)] == [0, 1, 2]


def test_the_walk_holds_a_bounded_number_of_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Near views of one scene crowding the most uncertain images make the walk take more
    candidates in (twice as many each time), up to HELD_BYTES of embeddings and no further: a
    pool of a million such frames must not be held whole (reviewed: 3.3 GB pinned, 14 s at 100k)."""
    from imgcls.suggest import rank

    rng = np.random.default_rng(5)
    scene = rng.normal(size=16)
    emb = np.vstack([scene + rng.normal(scale=0.15, size=(3000, 16)), rng.normal(size=(100, 16))])
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)
    probs = _probs(list(np.linspace(0.0, 0.05, 3000)) + list(np.linspace(0.3, 0.6, 100)))
    held: list[int] = []
    grow = rank._Walk.grow

    def counted(self: rank._Walk, *a: object) -> None:
        grow(self, *a)  # type: ignore[arg-type]
        held.append(len(self.cand))

    monkeypatch.setattr(rank._Walk, "grow", counted)
    monkeypatch.setattr(rank, "HELD_BYTES", 4 * 16 * 200)  # 200 embeddings of width 16
    picks = select(probs, emb, NAMES, 5)
    assert len(picks) == 5 and held[0] == 50 and max(held) <= 200
    # 3000 copies of one frame: dead once it is picked, never held, so they cannot fill the room
    # and stop the walk short (reviewed: 1 pick of 10 asked, on a static camera's bursts)
    copies = np.vstack([np.tile(emb[0], (3000, 1)), emb[3000:]])
    picks = select(probs, copies, NAMES, 5)
    assert len(picks) == 5 and len(picks[0].duplicates) == 2999 and max(held) <= 200
    monkeypatch.setattr(rank, "HELD_BYTES", 2**30)
    held.clear()
    assert len(select(probs, emb, NAMES, 5)) == 5 and max(held) > 200  # room: it takes in more


def test_a_row_of_nan_probabilities_is_not_picked_first() -> None:
    probs = _probs([0.5, 0.1, 0.3])
    probs[0] = np.nan  # a model that overflowed on one image
    assert [p.index for p in select(probs, np.eye(3, dtype=np.float16), NAMES, 3)] == [1, 2, 0]


def test_a_balanced_spread_of_predictions_changes_no_rank() -> None:
    """Classes predicted for 25 % to 45 % of a three-class pool (at least half their fair share)
    weigh alike: uncertainty alone orders them; below half its fair share a class is favoured."""
    rows = [[0.5 + m / 2, 0.5 - m / 2, 0.0] for m in (0.05, 0.06, 0.07)] * 5  # 15 predicted cat
    rows += [[0.0, 0.5 + m / 2, 0.5 - m / 2] for m in (0.10, 0.11, 0.12)] * 5  # 15 dog
    rows += [[0.5 - m / 2, 0.0, 0.5 + m / 2] for m in (0.2, 0.3, 0.4, 0.5)] * 2  # 8 fox: 21 %
    probs = np.array(rows)
    emb = np.eye(len(probs), dtype=np.float16)
    assert [p.index for p in select(probs, emb, NAMES, 10)] == [
        p.index for p in select(probs, emb, NAMES, 10, strategy="margin")
    ]
    few = np.vstack([probs[:30], probs[30:32]])  # 2 fox of 32: 6 %, under half of 33 %
    assert select(few, np.eye(32, dtype=np.float16), NAMES, 1)[0].index in (30, 31)


def test_random_is_seeded_and_differs_by_seed() -> None:
    probs = _probs(list(np.linspace(0, 1, 50)))
    emb = np.eye(50, dtype=np.float16)
    a = [p.index for p in select(probs, emb, NAMES, 10, strategy="random", seed=1)]
    assert a == [p.index for p in select(probs, emb, NAMES, 10, strategy="random", seed=1)]
    assert a != [p.index for p in select(probs, emb, NAMES, 10, strategy="random", seed=2)]
    assert a != [p.index for p in select(probs, emb, NAMES, 10, strategy="margin")]


# ------------------------------------------------------------------------------- end to end
def _pool(root: Path, n: int = 6) -> Path:
    pool = root / "pool"
    pool.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        class_image(i % 3, rng, (40, 40)).save(pool / f"new_{i}.jpg", quality=92)
    return pool


def test_training_data_and_labelled_images_are_left_out(trained: dict, tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    (tmp_path / "done.csv").write_text("path,label\npool/new_0.jpg,cat\npool/new_1.jpg,dog\n")
    r = suggest(trained["model"], [str(trained["data"]), str(pool)], n=20, out=tmp_path / "next.csv",
                labelled=[str(tmp_path / "done.csv")], strategy="margin", show_progress=False)  # fmt: skip
    assert (r.pool, r.in_training, r.labelled, r.eligible) == (36, 30, 2, 4)
    rows = _rows(tmp_path / "next.csv")
    assert sorted(Path(row["path"]).name for row in rows) == [f"new_{i}.jpg" for i in range(2, 6)]
    assert list(rows[0]) == ["rank", "path", "guess", "p_guess", "guess2", "p_guess2", "uncertainty", "reason",
                             "duplicates"]  # fmt: skip
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    cached = load_cache(cache_dir(tmp_path / "next.csv"))  # the model's own embeddings: L2-normalised
    assert cached.emb.shape[0] == 36 and cached.emb.shape[1] > 3
    assert np.allclose(np.linalg.norm(cached.emb.astype(np.float32), axis=1), 1, atol=1e-2)


def test_a_copy_of_a_training_image_is_left_out_by_auto(trained: dict, tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    shutil.copy(trained["data"] / "dog" / "dog_003.jpg", pool / "same_dog.jpg")
    kw = {"n": 20, "show_progress": False}
    r = suggest(trained["model"], [str(trained["data"]), str(pool)], out=tmp_path / "a.csv", **kw)
    assert r.near_known >= 1 and "same_dog.jpg" not in {Path(row["path"]).name for row in r.rows}
    plain = suggest(
        trained["model"], [str(trained["data"]), str(pool)], out=tmp_path / "m.csv", strategy="margin", **kw
    )
    assert plain.near_known == 0 and "same_dog.jpg" in {Path(row["path"]).name for row in plain.rows}


def test_a_suggestions_csv_is_the_next_rounds_labelled_list(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _pool(tmp_path)
    monkeypatch.chdir(tmp_path)  # a relative pool, the CSV in another folder: paths still match
    first = suggest(trained["model"], ["pool"], n=3, out="round1/next.csv", strategy="margin", show_progress=False)
    second = suggest(trained["model"], ["pool"], n=10, out="round2/next.csv", labelled=["round1/next.csv"],
                     strategy="margin", show_progress=False)  # fmt: skip
    assert second.labelled == 3 and len(second.rows) == 3
    assert {r["path"] for r in first.rows}.isdisjoint(r["path"] for r in second.rows)
    (tmp_path / "elsewhere.csv").write_text("path,label\n/nowhere/a.jpg,cat\n")  # paths of another machine
    assert main(["suggest", "--model", str(trained["model"]), "pool", "--n", "2", "--out", "round3/next.csv",
                 "--labelled", "elsewhere.csv"]) == 0  # fmt: skip
    assert "note: no image --labelled names is in the pool (check its paths: elsewhere.csv)" in capsys.readouterr().out


def test_copies_of_a_file_collapse_with_the_real_model(trained: dict, tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    for i in range(9):
        shutil.copy(pool / "new_0.jpg", pool / f"copy_{i}.jpg")
    r = suggest(trained["model"], [str(pool)], n=15, out=tmp_path / "next.csv", show_progress=False)
    copies = {"new_0.jpg", *(f"copy_{i}.jpg" for i in range(9))}
    assert sum(Path(row["path"]).name in copies for row in r.rows) <= 1  # never two of them
    # every copy not picked stands behind one and the same pick (a copy, or an image this small
    # model cannot tell from them): ten files, one label to give
    same_as = {d["same_as"] for d in _rows(tmp_path / "next.duplicates.csv") if Path(d["path"]).name in copies}
    picked = {row["path"] for row in r.rows}
    assert len(same_as) == 1 and same_as <= picked
    stands_for = next(row for row in r.rows if row["path"] in same_as)
    assert stands_for["duplicates"] >= 9


class _Counting:
    """A scorer with fixed answers (red share -> cat), counting the images it scored; it can
    stop after some batches, as a killed run does."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.scored, self.calls, self.stop_after = 0, 0, stop_after

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt
        self.scored += len(pixels)
        red = pixels[..., 0].mean(axis=(1, 2)) / 255
        probs = np.stack([red, 1 - red, np.zeros_like(red)], axis=1) * 0.99 + 0.0033
        emb = pixels.reshape(len(pixels), -1)[:, :16].astype(np.float32) + 1
        return probs, (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)


def test_a_killed_scoring_pass_continues_and_a_finished_one_rescores_nothing(trained: dict, tmp_path: Path) -> None:
    pool = _pool(tmp_path, 12)
    out = tmp_path / "next.csv"
    kw = {"n": 5, "out": out, "batch_size": 4, "chunk": 4, "strategy": "margin", "show_progress": False}
    first = _Counting(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        suggest(trained["model"], [str(pool)], scorer=first, **kw)
    assert first.scored == 4 and not out.exists()  # one chunk kept
    second = _Counting()
    r = suggest(trained["model"], [str(pool)], scorer=second, **kw)
    assert second.scored == 8 and r.scored_now == 8 and len(r.rows) == 5
    third = _Counting()
    again = suggest(trained["model"], [str(pool)], scorer=third, **{**kw, "n": 3})
    assert third.calls == 0 and again.scored_now == 0
    assert [row["path"] for row in again.rows] == [row["path"] for row in r.rows][:3]
    changed = pool / "new_0.jpg"  # a file replaced since it was scored is scored again, alone
    class_image(1, np.random.default_rng(99), (40, 40)).save(changed, quality=92)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**10))
    fourth = _Counting()
    assert suggest(trained["model"], [str(pool)], scorer=fourth, **kw).scored_now == 1 and fourth.scored == 1
    (cache_dir(out) / "chunk-999999.npz").write_bytes(b"PK\x03\x04 damaged")  # a damaged chunk is passed over
    cached = load_cache(cache_dir(out))  # its newest scores count: now green, no longer red (cat)
    assert len(cached.paths) == 12 and cached.probs[cached.paths.index(str(changed))][0] < 0.5


def test_an_interrupted_suggest_says_how_to_continue(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imgcls.suggest

    def stop(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(imgcls.suggest, "score_pool", stop)
    argv = ["suggest", "--model", str(trained["model"]), str(_pool(tmp_path, 2)), "--n", "1", "--out", "n.csv"]
    assert main(argv) == 130
    assert "run the same command again to continue" in capsys.readouterr().err


def test_an_unreadable_file_is_a_recorded_skip(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pool = _pool(tmp_path, 3)
    (pool / "broken.jpg").write_bytes(b"this is not an image at all\n" * 10)
    out = tmp_path / "next.csv"
    assert main(["suggest", "--model", str(trained["model"]), str(pool), "--n", "10", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped: 1 image that could not be read" in printed
    assert "scored 4 now, 0 from the scores kept" in printed
    assert [Path(r["path"]).name for r in _rows(tmp_path / "next.skipped.csv")] == ["broken.jpg"]
    assert len(_rows(out)) == 3


def test_a_pool_of_only_unreadable_or_known_images_suggests_nothing(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"x")
    out = tmp_path / "next.csv"
    assert (
        main(["suggest", "--model", str(trained["model"]), str(tmp_path / "bad"), "--n", "5", "--out", str(out)]) == 0
    )
    assert "nothing to suggest" in capsys.readouterr().out and _rows(out) == []
    for strategy in ("auto", "margin", "random"):  # every image trained on: nothing eligible
        r = suggest(trained["model"], [str(trained["data"])], n=5, out=tmp_path / "t.csv", strategy=strategy,
                    show_progress=False)  # fmt: skip
        assert r.rows == [] and r.in_training == 30


@pytest.mark.parametrize(
    "change, words",
    [
        ({"--n": "0"}, "--n must be at least 1"),
        ({"--strategy": "greedy"}, "unknown --strategy 'greedy'"),
        ({"--model": "nowhere"}, "model not found: nowhere"),
        ({"pool": "EMPTY"}, "the pool is empty"),
        ({"--labelled": "CONFIG"}, "is not a labels CSV, a .txt list, a folder or an image"),
        ({"--gap": "5"}, "--sequence-gap groups frames into events: it needs --aggregate sequence"),
        ({"--aggregate": "sequence", "--sequence-gap": "0"}, "above 0 (got 0)"),
    ],
)
def test_bad_input_is_one_line(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture, change: dict, words: str
) -> None:
    pool = _pool(tmp_path, 2)
    (tmp_path / "empty").mkdir()
    opts = {"--model": str(trained["model"]), "--n": "3", "--out": str(tmp_path / "next.csv"), "--strategy": "auto"}
    opts.update({k: v for k, v in change.items() if k.startswith("--")})
    if opts.get("--labelled") == "CONFIG":  # a run's config.yaml typed for its labels
        opts["--labelled"] = str(trained["model"].parent / "config.yaml")
    target = str(tmp_path / "empty") if change.get("pool") == "EMPTY" else str(pool)
    argv = ["suggest", target, *(x for kv in opts.items() for x in kv)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_a_long_burst_of_copies_does_not_stop_the_picks_short() -> None:
    """600 copies of one uncertain frame fill every candidate the first window holds; the walk
    goes on to the next candidates instead of returning one pick (reviewed: 1 of 50)."""
    rng = np.random.default_rng(1)
    copy, distinct = rng.normal(size=16), rng.normal(size=(400, 16))
    emb = np.vstack([np.tile(copy, (600, 1)), distinct])
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)
    probs = _probs([0.01] * 600 + list(np.linspace(0.1, 0.9, 400)))
    picks = select(probs, emb, NAMES, 50, strategy="auto")
    assert len(picks) == 50 and sum(p.index < 600 for p in picks) == 1
    assert len(picks[0].duplicates) == 599


def test_the_pool_and_the_labels_are_never_written_over_and_a_typo_is_said(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pool = _pool(tmp_path, 3)
    listing = tmp_path / "pool.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(pool.iterdir())))
    labels = tmp_path / "done.csv"
    labels.write_text("path\n")
    before = listing.read_text()
    for argv, said in (([str(listing), "--out", str(listing)], "is also an input"),
                       ([str(pool), "--labelled", str(labels), "--out", str(labels)], "is also an input"),
                       ([str(tmp_path / "poool"), "--out", str(tmp_path / "n.csv")], "no such file or folder")):  # fmt: skip
        assert main(["suggest", "--model", str(trained["model"]), "--n", "2", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0], err  # failed before: exit 0, the list replaced by the picks
    assert listing.read_text() == before and labels.read_text() == "path\n"


def test_a_file_named_twice_is_one_image(trained: dict, tmp_path: Path) -> None:
    pool = _pool(tmp_path, 4)
    again = str(pool) + "/./" + sorted(p.name for p in pool.iterdir())[0]
    r = suggest(trained["model"], [str(pool), again], n=10, out=tmp_path / "next.csv", strategy="random",
                show_progress=False)  # fmt: skip
    paths = [row["path"] for row in _rows(tmp_path / "next.csv")]
    assert len(paths) == len(set(paths)) == len(list(pool.iterdir())) and r.pool == len(paths)


def test_the_pick_does_not_depend_on_which_chunks_hold_the_scores(trained: dict, tmp_path: Path) -> None:
    """Rows come back in the pool's order (reviewed: newest chunk first, so a seeded random pick
    changed with the chunk size); a file that failed is tried again on the next run."""
    pool = _pool(tmp_path, 10)
    (pool / "zz_broken.jpg").write_bytes(b"not yet an image")
    picks = []
    for chunk in (4, 512):
        out = tmp_path / f"next{chunk}.csv"
        suggest(trained["model"], [str(pool)], n=5, out=out, strategy="random", seed=3, chunk=chunk, batch_size=4,
                show_progress=False)  # fmt: skip
        picks.append([row["path"] for row in _rows(out)])
    assert picks[0] == picks[1]
    shutil.copy(pool / "new_0.jpg", pool / "zz_broken.jpg")  # the copy has finished: readable now
    again = suggest(trained["model"], [str(pool)], n=20, out=tmp_path / "next4.csv", strategy="random",
                    chunk=4, show_progress=False)  # fmt: skip
    assert again.scored_now == 1 and not again.skipped and len(again.rows) == 11


def test_a_binary_models_guess_and_margin_are_at_its_own_threshold() -> None:
    """A binary model deciding at 0.75: p = 0.74 is the image nearest its boundary, and its guess
    is the negative class, as predict says (reviewed: ranked and guessed around 0.5)."""
    from types import SimpleNamespace

    from imgcls.suggest import _rows, at_threshold

    clf = SimpleNamespace(task="binary", info=SimpleNamespace(thresholds=[0.75], positive_index=1))
    shown = np.array([[0.5, 0.5], [0.26, 0.74], [0.05, 0.95], [0.9, 0.1]])
    probs = at_threshold(clf, shown)
    assert np.allclose(probs.sum(axis=1), 1) and probs[1, 1] < 0.5 < probs[2, 1]
    picks = select(probs, np.eye(4, dtype=np.float16), ["empty", "animal"], 2, strategy="margin")
    assert [p.index for p in picks] == [1, 0]  # failed before: 0.5 first
    rows = _rows(picks, ["a", "b", "c", "d"], probs, ["empty", "animal"], "margin", shown)
    assert rows[0]["path"] == "b" and rows[0]["guess"] == "empty" and rows[0]["p_guess"] == "0.2600"
    multi = SimpleNamespace(task="multiclass", info=SimpleNamespace(thresholds=[], positive_index=1))
    assert at_threshold(multi, shown) is shown


def test_by_event_whole_events_are_chosen_each_with_all_its_items(trained: dict, tmp_path: Path) -> None:
    """--aggregate sequence: n counts events (the frames of one trigger: folder and EXIF times
    within --gap), each chosen event lists every item, consecutively, under its event; the most
    uncertain event (by its items' mean probabilities) comes first."""
    from datetime import datetime, timedelta

    from ctfactory import exif_bytes
    from imgcls.suggest.events import pooled

    cam = tmp_path / "cam1"
    cam.mkdir()
    start = datetime(2024, 5, 1, 10, 0, 0)
    rng = np.random.default_rng(0)
    sizes = {"a": 3, "b": 2, "c": 3}
    for e, (name, frames) in enumerate(sizes.items()):
        for f in range(frames):
            img = class_image(e, rng, (24, 24))
            img.save(cam / f"{name}{f}.jpg", exif=exif_bytes(start + timedelta(minutes=10 * e, seconds=2 * f)))
    # the scorer: event b's frames the least sure (margin ~0), a's the surest
    margin = {"a": 0.9, "b": 0.02, "c": 0.5}
    order: list[str] = []

    def scorer(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        names = order[: len(pixels)]
        del order[: len(pixels)]
        return _probs([margin[Path(n).name[0]] for n in names]), np.eye(len(pixels), 8, dtype=np.float32)

    import imgcls.suggest.score as score_module

    real_run = score_module._run

    def run(clf, todo, *a, **k):  # the scorer is told which files it scores, in order
        order.extend(todo)
        return real_run(clf, todo, *a, **k)

    score_module._run = run
    try:
        r = suggest(trained["model"], [str(cam)], n=2, out=tmp_path / "next.csv", aggregate="sequence", scorer=scorer,
                    show_progress=False, workers=0)  # fmt: skip
    finally:
        score_module._run = real_run
    rows = _rows(tmp_path / "next.csv")
    # b (the least sure) first, then c (less sure than a, as far from b): every frame of each
    assert [Path(x["path"]).name for x in rows] == ["b0.jpg", "b1.jpg", "c0.jpg", "c1.jpg", "c2.jpg"]
    events = [x["sequence"] for x in rows]
    assert len(set(events)) == 2 and events[:2] == [events[0]] * 2 and events[2:] == [events[2]] * 3
    assert all("event" in x["reason"] for x in rows) and len(r.rows) == len(rows)
    p, _, groups = pooled(
        np.array([[0.2, 0.8], [0.4, 0.6], [1.0, 0.0]]), np.eye(3, 2, dtype=np.float16), ["x", "x", "y"]
    )
    assert np.allclose(p, [[0.3, 0.7], [1.0, 0.0]]) and groups == [[0, 1], [2]]
