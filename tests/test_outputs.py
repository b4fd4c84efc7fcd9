"""Prediction writers: formats, resuming after a cut, merging parts, the resume guard
(imgcls.outputs), without a model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from imgcls.errors import UserError
from imgcls.outputs import (
    CsvWriter,
    JsonlWriter,
    JsonWriter,
    discard_output,
    guard_resume,
    resume_record,
    writer_for,
)


def rows(*paths: str) -> list[dict]:
    return [{"path": p, "label": "cat", "score": 0.91234567, "top_k": {"cat": 0.912346}, "error": None} for p in paths]


def test_csv_rows_and_a_resume_after_a_cut(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    w = CsvWriter(out, options={"extra_columns": ["sequence"]})
    assert w.open(resume=True) == set()
    w.write([{**r, "sequence": "s1"} for r in rows("a.jpg", "b.jpg")])
    w.close()
    text = out.read_text()
    assert text.splitlines()[0] == "path,label,score,top_k,error,sequence"
    assert text.splitlines()[1] == 'a.jpg,cat,0.912346,"{""cat"": 0.912346}",,s1'
    out.write_text(text + "c.jpg,ca")  # a kill in the middle of a row
    w = CsvWriter(out, options={"extra_columns": ["sequence"]})
    assert w.open(resume=True) == {"a.jpg", "b.jpg"}  # the cut row is dropped, to be written again
    w.write([{**r, "sequence": "s2"} for r in rows("c.jpg")])
    w.close()
    with open(out, newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == ["a.jpg", "b.jpg", "c.jpg"]
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not an imgcls prediction CSV"):
        CsvWriter(tmp_path / "other.csv").open(resume=True)


def test_a_json_document_is_assembled_from_its_part_file(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    w = JsonWriter(out, options={"model": {"label_names": ["cat"]}})
    assert w.files() == [out, tmp_path / ".p.json.partial.jsonl"]
    w.open(resume=True)
    w.write(rows("a.jpg"))
    w.close()
    assert not out.exists() and (tmp_path / ".p.json.partial.jsonl").is_file()
    w = JsonWriter(out, options={"model": {"label_names": ["cat"]}})
    assert w.open(resume=True) == {"a.jpg"}  # a resumed run continues the part file
    w.write(rows("b.jpg"))
    w.close()
    w.finalize()
    doc = json.loads(out.read_text())
    assert doc["model"] == {"label_names": ["cat"]} and [r["path"] for r in doc["predictions"]] == ["a.jpg", "b.jpg"]
    assert doc["predictions"][0]["score"] == 0.912346 and sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


def test_parts_of_several_processes_merge_in_input_order(tmp_path: Path) -> None:
    parts = [tmp_path / ".p.jsonl.part-0-of-2.jsonl", tmp_path / ".p.jsonl.part-1-of-2.jsonl"]
    for part, paths in zip(parts, (["0.jpg", "2.jpg", "4.jpg"], ["1.jpg", "3.jpg"]), strict=True):
        w = JsonlWriter(part)
        w.open(resume=False)
        w.write(rows(*paths))
        w.close()
    JsonlWriter(tmp_path / "p.jsonl").merge(parts)
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == [f"{i}.jpg" for i in range(5)]
    assert not any(p.exists() for p in parts)


def test_the_guard_refuses_other_settings_and_overwrite_removes_only_the_outputs_files(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    w = writer_for(out, None)
    (tmp_path / ".p.json.partial.jsonl").write_text('{"path": "a.jpg"}\n')  # an interrupted run's rows
    (tmp_path / "notes.txt").write_text("the user's")
    guard_resume(out, {"model": "abc", "top_k": 5}, resume=True, writer=w)
    assert json.loads(resume_record(out).read_text()) == {"model": "abc", "top_k": 5}
    with pytest.raises(UserError, match="top_k was 5, now 1"):
        guard_resume(out, {"model": "abc", "top_k": 1}, resume=True, writer=w)
    with pytest.raises(UserError, match="another model"):
        guard_resume(out, {"model": "xyz", "top_k": 5}, resume=True, writer=w)
    guard_resume(out, {"model": "xyz", "top_k": 1}, resume=False, writer=w)  # --overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == [".p.json.settings.json", "notes.txt"]
    discard_output(w, [resume_record(out)])
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_the_format_follows_the_suffix_or_is_named() -> None:
    assert type(writer_for("p.csv", None)) is CsvWriter and type(writer_for("p.ndjson", None)) is JsonlWriter
    assert type(writer_for("p.json", None)) is JsonWriter and type(writer_for(None, None)) is CsvWriter
    assert type(writer_for("p.txt.gz", "jsonl")) is JsonlWriter
    with pytest.raises(UserError, match=r"unknown output suffix '\.xyz'"):
        writer_for("p.xyz", None)
    with pytest.raises(UserError, match="unknown output format 'parquet'"):
        writer_for("p.csv", "parquet")
