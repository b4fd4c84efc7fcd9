"""Data sources, splits, the decoded-image store and the transforms."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls.config import PreprocessConfig
from imgcls.data import load_source, make_splits
from imgcls.data.sources.idx import FASHION_MNIST_CLASSES
from imgcls.data.store import build_store
from imgcls.data.transforms import (
    PRESETS,
    BatchAugment,
    Normalize,
    center_batch,
    eval_array,
    prepare_square,
    square_size,
    to_nchw,
)
from imgcls.errors import UserError
from imgfactory import broken_files, idx_dataset, image_folder, write_idx

# ------------------------------------------------------------------------------------ sources


def test_class_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image_folder(tmp_path, ("zebra", "ant"), 3)
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "ant" / "nested" / "deeper").mkdir(parents=True)
    image_folder(tmp_path / "ant" / "nested", ("deeper",), 2)  # nested files belong to 'ant'
    (tmp_path / "zebra" / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "README.md").write_text("about this data")
    with caplog.at_level(logging.WARNING):
        t = load_source(tmp_path)
    assert t.kind == "folder" and t.class_names == ["ant", "zebra"]
    assert t.class_counts() == {"ant": 5, "zebra": 3}
    assert not any(".hidden" in p for p in t.paths)
    assert t.skipped == [(str(tmp_path / "README.md"), "not an image by its name (.md)")]
    assert "empty_class" in caplog.text
    assert t.split is None


def test_files_that_are_not_images_by_name_are_left_out_on_purpose_not_as_unusable(tmp_path: Path) -> None:
    """A class folder's notes.txt, a camera's .xml sidecars and Thumbs.db counted as unusable
    images toward --max-skipped (a card of sidecars stopped a run) while predict left them out
    by name: one rule for both (imgcls.data.image.not_an_image_name). A name with an image
    format's extension, or none, is still tried by its content; hidden files are not listed."""
    from imgcls.data.image import hidden_name, not_an_image_name
    from imgcls.data.table import count_left_out

    image_folder(tmp_path, ("cat", "dog"), 2)
    for name in ("notes.txt", "IMG_0001.XML", "Thumbs.db", "desktop.ini", "clip.MP4"):
        (tmp_path / "cat" / name).write_bytes(b"not pixels")
    (tmp_path / "cat" / "._cat_000.jpg").write_bytes(b"AppleDouble")  # macOS's twin of a real image
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "cat" / "IMG_0002").write_bytes((tmp_path / "dog" / "dog_000.jpg").read_bytes())  # no extension
    (tmp_path / "cat" / "fake.jpg").write_text("an image's name: tried, and unusable")
    (tmp_path / "__MACOSX" / "cat").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "cat" / "._x.jpg").write_bytes(b"AppleDouble")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "labels.csv").write_text("path,label\n")  # no image at all: not a class
    t = load_source(tmp_path)
    assert t.class_names == ["cat", "dog"]
    names = {Path(p).name for p in t.paths}
    assert names == {"cat_000.jpg", "cat_001.jpg", "dog_000.jpg", "dog_001.jpg", "IMG_0002", "fake.jpg"}
    skipped = {Path(p).name: why for p, why in t.skipped}
    assert skipped == {
        "notes.txt": "not an image by its name (.txt)", "IMG_0001.XML": "not an image by its name (.xml)",
        "Thumbs.db": "not an image by its name (.db)", "desktop.ini": "not an image by its name (.ini)",
        "clip.MP4": "not an image by its name (.mp4)", "labels.csv": "not an image by its name (.csv)",
    }  # fmt: skip
    assert count_left_out(t.skipped) == 6  # on purpose: none counts toward --max-skipped
    # the same rule predict's folder walk uses
    assert [not_an_image_name(n) for n in ("a.JPG", "b.png", "c.tif", "IMG_0002", "d.txt", "Thumbs.db")] == [
        None, None, None, None, ".txt", ".db",
    ]  # fmt: skip
    assert hidden_name(".DS_Store") and hidden_name("._x.jpg") and hidden_name("__MACOSX") and not hidden_name("a.jpg")


def test_split_folders(tmp_path: Path) -> None:
    image_folder(tmp_path / "train", ("a", "b"), 4)
    image_folder(tmp_path / "val", ("a", "b"), 2)
    image_folder(tmp_path / "test", ("a", "b"), 1)
    t = load_source(tmp_path)
    assert t.kind == "split-folders" and t.class_names == ["a", "b"]
    assert t.available_splits() == ["train", "val", "test"]
    assert len(t.rows_in_split("val")) == 4 and len(t.rows_in_split("test")) == 2
    s = make_splits(t, val_split=0.5, seed=1)  # given val split is kept, not re-drawn
    assert sorted(s.val.tolist()) == sorted(t.rows_in_split("val").tolist())


def test_idx_directory(tmp_path: Path) -> None:
    idx_dataset(tmp_path, 30, 9)
    t = load_source(tmp_path)
    assert t.kind == "idx" and t.pixels is not None and t.pixels.shape == (39, 28, 28)
    assert t.pixels.dtype == np.uint8 and t.class_names == ["0", "1", "2"]
    assert t.available_splits() == ["train", "test"] and t.paths[0] == "train-images-idx3-ubyte.gz#0"
    (tmp_path / "classes.txt").write_text("left\nmiddle\nright\n")
    assert load_source(tmp_path).class_names == ["left", "middle", "right"]
    fashion = tmp_path / "my-fashion-mnist"
    write_idx(fashion, np.zeros((3, 28, 28)), np.array([0, 9, 2]), "train", gz=False)
    assert load_source(fashion).class_names == FASHION_MNIST_CLASSES
    (fashion / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09\x01")
    with pytest.raises(UserError, match="truncated"):
        load_source(fashion)


def test_csv_manifest(tmp_path: Path) -> None:
    image_folder(tmp_path / "imgs", ("a", "b", "c"), 2)
    rows = [
        "path,label,split,location,camera",
        "imgs/a/a_000.jpg,a,train,site1,c1",
        "imgs\\a\\a_001.jpg,a,Validation,site2,c1",  # written on Windows
        "imgs/b/b_000.jpg,b,,site1,c2",
        "imgs/b/b_001.jpg,b,holdout,site2,c2",
        ",c,train,site3,c3",
        "imgs/c/c_000.jpg,c,test,site3,c3",
        "imgs/c/c_001.jpg,,train,site3,c3",
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    t = load_source(tmp_path / "m.csv")
    assert t.kind == "csv" and not t.multilabel and t.class_names == ["a", "b", "c"]
    assert t.paths[0] == str((tmp_path / "imgs/a/a_000.jpg").resolve())
    assert t.paths[1] == str((tmp_path / "imgs/a/a_001.jpg").resolve())
    assert t.split == ["train", "val", None, "test"]
    assert t.columns["location"] == ["site1", "site2", "site1", "site3"]
    assert t.columns["camera"] == ["c1", "c1", "c2", "c3"]
    reasons = [r for _, r in t.skipped]
    assert reasons == [
        "unknown split 'holdout'",
        "empty path",
        "no label in a single-label manifest",
    ]


def test_a_manifest_lists_each_image_once(tmp_path: Path) -> None:
    """A repeated row would count an image twice and could put it in training and validation
    both; a path given two labels keeps neither."""
    from imgcls.data.table import count_left_out

    image_folder(tmp_path / "imgs", ("a", "b"), 3)
    rows = [
        "path,label",
        "imgs/a/a_000.jpg,a",
        "imgs/a/a_001.jpg,a",
        "imgs/a/a_000.jpg,a",  # the same row again
        "imgs/b/b_000.jpg,b",
        "imgs/b/b_001.jpg,b",
        "imgs/a/a_001.jpg,b",  # the same image, another label
        "imgs/b/b_002.jpg,b",
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    t = load_source(tmp_path / "m.csv")
    names = [Path(x).name for x in t.paths]
    assert names == ["a_000.jpg", "b_000.jpg", "b_001.jpg", "b_002.jpg"]
    assert [r for _, r in t.skipped] == [
        "listed again (first on line 2)",
        "labelled a on line 3 and b on line 7 (for several labels, join them with ';' in one row)",
    ]
    assert count_left_out(t.skipped) == 1  # a repeat is not an unusable file; a clash is a problem


def test_csv_multilabel_and_image_root(tmp_path: Path) -> None:
    image_folder(tmp_path / "imgs", ("x",), 3)
    (tmp_path / "lists").mkdir()
    lines = ["file,labels", "x/x_000.jpg,cat;dog", "x/x_001.jpg,dog", "x/x_002.jpg,"]
    (tmp_path / "lists" / "m.csv").write_text("\n".join(lines))
    t = load_source(tmp_path / "lists" / "m.csv", image_root=tmp_path / "imgs")
    assert t.multilabel and t.class_names == ["cat", "dog"]
    assert t.targets.tolist() == [[1, 1], [0, 1], [0, 0]]
    assert Path(t.paths[0]).is_file()
    (tmp_path / "bad.csv").write_text("image_path,what\nx,y\n")
    with pytest.raises(UserError, match="needs a 'path' and a 'label' column"):
        load_source(tmp_path / "bad.csv")


def _coco(tmp_path: Path) -> Path:
    image_folder(tmp_path / "imgs", ("p",), 5)
    data = {
        "info": {"version": "1"},
        "images": [
            {"id": f"i{i}", "file_name": f"imgs/p/p_{i:03d}.jpg", "location": f"loc{i % 2}", "seq_id": f"s{i // 2}",
             "datetime": f"2024-05-01 10:00:0{i}"}
            for i in range(5)
        ],
        "categories": [{"id": 0, "name": "empty"}, {"id": 1, "name": "deer"}, {"id": 2, "name": "fox"}],
        "annotations": [
            {"id": "a0", "image_id": "i0", "category_id": 0},
            {"id": "a1", "image_id": "i1", "category_id": 1},
            {"id": "a2", "image_id": "i2", "category_id": 2},
            {"id": "a3", "image_id": "i3", "category_id": 1},
            {"id": "a4", "image_id": "i3", "category_id": 2},
        ],
    }  # fmt: skip
    path = tmp_path / "cct.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_camera_traps(tmp_path: Path) -> None:
    path = _coco(tmp_path)
    t = load_source(path, multilabel=False)
    assert t.kind == "coco" and t.class_names == ["deer", "empty", "fox"]
    assert [t.label_names(i)[0] for i in range(len(t))] == ["empty", "deer", "fox"]
    assert t.columns["location"] == ["loc0", "loc1", "loc0"] and t.columns["sequence"] == [
        "s0",
        "s0",
        "s1",
    ]
    reasons = dict((Path(p).name, r) for p, r in t.skipped)
    assert reasons == {
        "p_003.jpg": "several categories (deer, fox) in a single-label task",
        "p_004.jpg": "no annotation",
    }
    multi = load_source(path)  # several categories on one image: multi-label inferred
    assert multi.multilabel and multi.targets.shape == (4, 3)


def test_malformed_inputs_give_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="malformed JSON"):
        load_source(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(UserError, match="not COCO Camera Traps"):
        load_source(tmp_path / "other.json")
    (tmp_path / "cct.json").write_text(
        '{"images": [{"id": 1}], "annotations": [{"image_id": 1, "category_id": 0}], "categories": [{"id": 0, "name": "x"}]}'
    )
    with pytest.raises(UserError, match="missing 'file_name'"):
        load_source(tmp_path / "cct.json")
    with pytest.raises(UserError, match="data not found"):
        load_source(tmp_path / "nothing")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="not a data source"):
        load_source(tmp_path / "x.txt")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        load_source(tmp_path / "emptydir")


# ------------------------------------------------------------------------------------- splits


def test_stratified_split_keeps_class_shares_and_is_fixed_by_seed(tmp_path: Path) -> None:
    image_folder(tmp_path, ("a", "b", "c"), 10)
    image_folder(tmp_path, ("rare",), 1)
    t = load_source(tmp_path)
    s = make_splits(t, val_split=0.2, seed=3)
    val_counts = np.bincount(t.targets[s.val], minlength=4)
    assert val_counts.tolist() == [2, 2, 2, 0]  # the singleton class stays in training
    assert len(s.train) + len(s.val) == len(t) and not set(s.train) & set(s.val)
    assert make_splits(t, val_split=0.2, seed=3).val.tolist() == s.val.tolist()
    assert make_splits(t, val_split=0.2, seed=4).val.tolist() != s.val.tolist()
    assert len(make_splits(t, val_split=0.0).val) == 0
    with pytest.raises(UserError, match="val-split"):
        make_splits(t, val_split=1.5)


def test_grouped_split_never_puts_a_group_on_both_sides(tmp_path: Path) -> None:
    image_folder(tmp_path / "imgs", ("a", "b"), 20)
    lines = ["path,label,location"]
    for k in ("a", "b"):
        for i in range(20):
            lines.append(f"imgs/{k}/{k}_{i:03d}.jpg,{k},site{i % 7}")
    (tmp_path / "m.csv").write_text("\n".join(lines))
    t = load_source(tmp_path / "m.csv")
    for seed in range(4):
        s = make_splits(t, val_split=0.25, split_by="location", seed=seed)
        loc = np.array(t.columns["location"])
        assert not set(loc[s.train]) & set(loc[s.val])
        assert 0 < len(s.val) < len(t)
    with pytest.raises(UserError, match="no such column"):
        make_splits(t, split_by="camera")


def test_max_val_caps_a_grouped_split_by_whole_groups(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from imgcls.data.table import DataTable

    sizes = [5, 8, 10, 12, 20, 30, 40, 60]  # images per location
    loc = [f"site{k}" for k, n in enumerate(sizes) for _ in range(n)]
    n = len(loc)
    t = DataTable("csv", tmp_path, [f"{i}.jpg" for i in range(n)], np.arange(n) % 2, ["a", "b"],
                  columns={"location": loc})  # fmt: skip
    locs = np.array(loc)
    for seed in range(5):
        for cap in (15, 25, 40):
            s = make_splits(t, val_split=0.4, split_by="location", seed=seed, max_val=cap)
            assert 0 < len(s.val) <= cap, (seed, cap, len(s.val))
            assert not set(locs[s.train]) & set(locs[s.val])  # still whole groups
            assert len(s.train) + len(s.val) == n
    # no group fits under the cap: the smallest group of the drawn ones, and a warning
    with caplog.at_level("WARNING"):
        s = make_splits(t, val_split=0.4, split_by="location", seed=0, max_val=3)
    assert len(set(locs[s.val])) == 1 and "--max-val 3" in caplog.text


# -------------------------------------------------------------------------------------- store


def test_store_caches_on_disk_and_invalidates_when_a_file_changes(tmp_path: Path) -> None:
    image_folder(tmp_path / "data", ("a", "b"), 3, size=(80, 60))
    broken = broken_files(tmp_path / "data" / "a")
    t = load_source(tmp_path / "data")
    cfg = PreprocessConfig(input_size=(3, 32, 32), crop_pct=0.875)
    store, skipped = build_store(t, cfg, cache="disk", cache_dir=tmp_path / "cache")
    assert store.array.shape == (len(t), 36, 36, 3) and square_size(cfg) == 36
    assert [Path(p).name for p, _ in t.skipped] == ["drawing.svg"]  # no image by its name: never decoded
    assert sorted(Path(p).name for p, _ in t.skipped + skipped) == sorted(broken)
    assert int(store.ok.sum()) == 6
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    calls: list[int] = []
    again, _ = build_store(t, cfg, cache="disk", cache_dir=tmp_path / "cache", progress=calls.append)
    assert calls == [len(t)] and np.array_equal(np.asarray(again.array), np.asarray(store.array))
    good = next(p for p in t.paths if p.endswith("b_000.jpg"))
    os.utime(good, ns=(1, 1))  # a changed file: new key, new cache
    build_store(t, cfg, cache="disk", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    mem, _ = build_store(t, cfg, cache="memory")
    assert np.array_equal(mem.array, np.asarray(store.array))
    i = t.paths.index(good)
    from imgcls.data import read_image

    assert np.array_equal(store.array[i], prepare_square(read_image(good), cfg))


# --------------------------------------------------------------------------------- transforms


def test_eval_on_stored_squares_equals_the_per_image_eval_transform(tmp_path: Path) -> None:
    image_folder(tmp_path, ("a",), 2, size=(90, 64))
    from imgcls.data import read_image

    cfg = PreprocessConfig(input_size=(3, 40, 40), crop_pct=0.8)
    img = read_image(next(tmp_path.glob("a/*.jpg")))
    square = prepare_square(img, cfg)
    assert square.shape == (50, 50, 3)
    batch = center_batch(to_nchw(square[None]), cfg)
    assert np.array_equal(batch[0].permute(1, 2, 0).numpy(), eval_array(img, cfg))
    pad = PreprocessConfig(input_size=(3, 40, 40), crop_pct=1.0, resize_mode="pad")
    letter = prepare_square(img, pad)
    assert letter.shape == (40, 40, 3) and tuple(letter[0, 0]) == (128, 128, 128)


def test_normalize_and_gray_expansion() -> None:
    cfg = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    out = Normalize(cfg)(x)
    assert out.shape == (1, 3, 2, 2)
    assert out[0, :, 0, 0].tolist() == pytest.approx([2.0, 1.0, 0.5])


def test_batch_augmentation_is_deterministic_per_generator_and_shapes_are_right() -> None:
    cfg = PreprocessConfig(input_size=(3, 32, 32), crop_pct=0.875)
    x = torch.randint(0, 256, (6, 3, 36, 36), dtype=torch.uint8)
    for name, spec in PRESETS.items():
        aug = BatchAugment(cfg, spec)
        a = aug(x, torch.Generator().manual_seed(1))
        b = aug(x, torch.Generator().manual_seed(1))
        assert a.shape == (6, 3, 32, 32) and torch.equal(a, b), name
        if spec.enabled:
            assert not torch.equal(a, aug(x, torch.Generator().manual_seed(2))), name
    none = BatchAugment(cfg, PRESETS["none"])(x, torch.Generator())
    torch.testing.assert_close(none, Normalize(cfg)(center_batch(x, cfg)))


def test_flip_only_preset_mirrors_or_keeps_the_image() -> None:
    cfg = PreprocessConfig(input_size=(3, 16, 16), crop_pct=1.0, mean=(0, 0, 0), std=(1 / 255,) * 3)
    x = torch.arange(16, dtype=torch.uint8).repeat(32, 3, 16, 1)  # 32 copies of a horizontal ramp
    out = BatchAugment(cfg, PRESETS["flip"])(x, torch.Generator().manual_seed(0))
    ramp = x[0, 0, 0].float()
    kept = [torch.allclose(img, ramp.expand(3, 16, 16), atol=1e-3) for img in out]
    mirrored = [torch.allclose(img, ramp.flip(0).expand(3, 16, 16), atol=1e-3) for img in out]
    assert all(k or m for k, m in zip(kept, mirrored, strict=True))  # nothing but the two
    assert 6 <= sum(mirrored) <= 26  # about half mirrored (p = 0.5; 32 draws)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'path,label\na.jpg,cat\n"b.jpg,dog\nc.jpg,fox\nd.jpg,owl\n',
            r"line 3: malformed CSV \(a quote that is never closed\)",
        ),
        ('path,label\na.jpg,cat\n"b.jpg,dog\nc.jpg",fox\nd.jpg,owl\n', "line 3: a quoted value runs over 2 lines"),
        ("path,label\na.jpg,cat\nb.jpg,big,dog\n", "line 3: 3 fields where the header has 2"),
        ('path,label\na.jpg,cat\nb.jpg,"dog" x\n', "line 3: malformed CSV"),
    ],
)
def test_a_malformed_manifest_is_one_line_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(UserError, match=message) as e:
        load_source(tmp_path / "m.csv")
    assert "\n" not in str(e.value)


def test_quoted_values_with_commas_and_blank_lines_are_fine(tmp_path: Path) -> None:
    image_folder(tmp_path / "d", ("a", "b"), 2)
    files = sorted((tmp_path / "d").rglob("*.jpg"))
    lines = ["path,label,note"] + [f'd/{f.parent.name}/{f.name},{f.parent.name},"seen, twice"' for f in files]
    (tmp_path / "m.csv").write_text("\n".join([*lines[:2], "", *lines[2:]]) + "\n")
    t = load_source(tmp_path / "m.csv")
    assert len(t) == 4 and t.columns["note"] == ["seen, twice"] * 4 and t.class_names == ["a", "b"]
