"""Prediction outputs: one row per input, appended as results come, resumable.

Built-in formats: ``csv`` (``path,label,score,top_k,error``; ``top_k`` is JSON of
label -> probability), ``jsonl`` (one JSON object per line) and ``json`` (one document, assembled
from a JSON-lines part file when the run completes). Other formats register a :class:`Writer`
subclass with :func:`register_writer` (the camera-trap writers do), so prediction never imports
them.

Resuming: a writer opened on an existing output first cuts it back to its last complete row
(a run killed mid-write leaves at most one partial line), then reports which inputs are done, so
the restarted run writes every input exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

from imgcls.errors import UserError

CSV_COLUMNS = ["path", "label", "score", "top_k", "error"]


def _truncate_to_last_newline(path: Path) -> None:
    """Drop a trailing partial line (a write cut short by a kill)."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as f:
        step = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - step)
            f.seek(start)
            chunk = f.read(end - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                f.truncate(start + i + 1)
                return
            end = start
        f.truncate(0)


class Writer:
    """Base class: ``open`` (returns the paths already done), ``write`` rows, ``close``."""

    name: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path | None, *, options: dict[str, Any] | None = None) -> None:
        self.path = path
        self.options = options or {}
        self.stream: IO[str] | None = None

    def open(self, resume: bool) -> set[str]:
        raise NotImplementedError

    def files(self) -> list[Path]:
        """Every file this output keeps its rows in, finished or in progress (whether it exists
        yet or not): what a resumed run continues and what ``--overwrite`` removes."""
        return [] if self.path is None else [self.path]

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        raise NotImplementedError

    def records(self, path: Path) -> Iterator[Any]:
        """The rows of one of this format's files, as opaque records for :meth:`merge`."""
        raise NotImplementedError

    def write_records(self, records: Iterable[Any]) -> None:
        raise NotImplementedError

    def merge(self, parts: list[Path]) -> None:
        """Interleave per-process part files (process r holds inputs r, r + W, ...) into this
        writer's output in input order: written to a synced sibling renamed over the output, so it
        is never half-written (a merge cut short, by a full disk or a kill, leaves the output as it
        was and the parts to merge again). The caller removes the parts."""
        import itertools

        from imgcls.io import fsync_dir

        final = getattr(self, "final", None) or self.path
        assert final is not None
        into = type(self)(final.with_name(f".{final.name}.merge-tmp{final.suffix}"), options=self.options)
        streams = [self.records(p) for p in parts]
        try:
            into.open(resume=False)
            try:
                for records in itertools.zip_longest(*streams):
                    into.write_records([r for r in records if r is not None])
                into.flush()  # synced
            finally:
                into.close()
            if hasattr(into, "finalize"):
                into.finalize()
            os.replace(into.files()[0], final)
        except BaseException:
            for f in into.files():
                f.unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)
        for p in parts:
            p.unlink(missing_ok=True)

    def flush(self) -> None:
        if self.stream is not None:
            self.stream.flush()
            if _is_file(self.stream):
                os.fsync(self.stream.fileno())

    def close(self) -> None:
        if self.stream is not None and _is_file(self.stream):
            self.stream.close()
        self.stream = None


def _is_file(stream: IO[str]) -> bool:
    """A file of ours (to sync and close), not stdout or an in-memory stream."""
    try:
        return stream.fileno() > 2
    except (OSError, ValueError, AttributeError):
        return False


def _open_append(path: Path | None, resume: bool) -> tuple[IO[str], bool]:
    """(stream, whether it already had content)."""
    if path is None:
        import sys

        return sys.stdout, False
    path.parent.mkdir(parents=True, exist_ok=True)
    had = resume and path.exists() and path.stat().st_size > 0
    if had:
        _truncate_to_last_newline(path)
        had = path.stat().st_size > 0
    return open(path, "a" if had else "w", encoding="utf-8", newline=""), had


class CsvWriter(Writer):
    name = "csv"
    suffixes: ClassVar[tuple[str, ...]] = (".csv",)

    def open(self, resume: bool) -> set[str]:
        done: set[str] = set()
        if resume and self.path is not None and self.path.exists():
            _truncate_to_last_newline(self.path)
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is not None and header[: len(CSV_COLUMNS)] != CSV_COLUMNS:
                    raise UserError(f"{self.path}: exists and is not an imgcls prediction CSV")
                done = {row[0] for row in reader if row}
        self.stream, had = _open_append(self.path, resume)
        self.extra = list(self.options.get("extra_columns", []))
        if not had:
            self._emit([CSV_COLUMNS + self.extra])
        return done

    def _emit(self, rows: list[list[Any]]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        assert self.stream is not None
        self.stream.write(buf.getvalue())

    def records(self, path: Path) -> Iterator[Any]:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            next(reader, None)
            yield from reader

    def write_records(self, records: Iterable[Any]) -> None:
        self._emit(list(records))

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        out = []
        for r in rows:
            score = r.get("score")
            line = [
                r["path"],
                r.get("label", ""),
                "" if score is None else f"{score:.6g}",
                json.dumps(r["top_k"]) if r.get("top_k") is not None else "",
                r.get("error") or "",
            ]
            out.append(line + [r.get(c, "") for c in self.extra])
        self._emit(out)


class JsonlWriter(Writer):
    name = "jsonl"
    suffixes: ClassVar[tuple[str, ...]] = (".jsonl", ".ndjson")

    def open(self, resume: bool) -> set[str]:
        done = self._read_done(self.path) if resume else set()
        self.stream, _ = _open_append(self.path, resume)
        return done

    @staticmethod
    def _read_done(path: Path | None) -> set[str]:
        done: set[str] = set()
        if path is None or not path.exists():
            return done
        _truncate_to_last_newline(path)
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    done.add(json.loads(line)["path"])
        return done

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        assert self.stream is not None
        self.stream.write("".join(json.dumps(clean_row(r)) + "\n" for r in rows))

    def records(self, path: Path) -> Iterator[Any]:
        with open(path, encoding="utf-8") as f:
            yield from (line for line in f if line.strip())

    def write_records(self, records: Iterable[Any]) -> None:
        assert self.stream is not None
        self.stream.write("".join(records))


class PartialJsonlWriter(JsonlWriter):
    """A document written at the end (:meth:`finalize`) from a JSON-lines part file beside it,
    ``.NAME.partial.jsonl``, which is what a resumed run continues."""

    final: Path

    def open(self, resume: bool) -> set[str]:
        if self.path is None:
            raise UserError(f"--format {self.name} needs --out FILE.json")
        self.final = self.path
        self.path = partial_path(self.path)
        return super().open(resume)

    def files(self) -> list[Path]:
        final = getattr(self, "final", None) or self.path
        return [] if final is None else [final, partial_path(final)]

    def records(self, path: Path) -> Iterator[Any]:
        return super().records(partial_path(path))

    def merge(self, parts: list[Path]) -> None:
        super().merge(parts)
        for p in parts:
            partial_path(p).unlink(missing_ok=True)


def partial_path(path: Path) -> Path:
    """The JSON-lines file a document output (``.json``, MegaDetector) is assembled from."""
    return path.with_name(f".{path.name}.partial.jsonl")


class JsonWriter(PartialJsonlWriter):
    """One JSON document ``{"model": ..., "predictions": [...]}``."""

    name = "json"
    suffixes: ClassVar[tuple[str, ...]] = (".json",)

    def finalize(self) -> None:
        from imgcls.io import atomic_open

        assert self.path is not None
        with open(self.path, encoding="utf-8") as f, atomic_open(self.final) as out:
            out.write('{"model": ' + json.dumps(self.options.get("model", {})) + ', "predictions": [\n')
            first = True
            for line in f:
                if line.strip():
                    out.write(("" if first else ",\n") + line.rstrip("\n"))
                    first = False
            out.write("\n]}\n")
        self.path.unlink()


def clean_row(r: dict[str, Any]) -> dict[str, Any]:
    """The row without private keys (``_probs``...), its score to six places as in ``top_k``."""
    out = {k: v for k, v in r.items() if not k.startswith("_")}
    if isinstance(out.get("score"), float):
        out["score"] = round(out["score"], 6)
    return out


WRITERS: dict[str, type[Writer]] = {}


def register_writer(cls: type[Writer]) -> type[Writer]:
    if cls.name in WRITERS:
        raise ValueError(f"output format {cls.name!r} is already registered")
    WRITERS[cls.name] = cls
    return cls


for _cls in (CsvWriter, JsonlWriter, JsonWriter):
    register_writer(_cls)


def writer_for(path: str | Path | None, fmt: str | None, options: dict[str, Any] | None = None) -> Writer:
    """The writer named by ``fmt``, or chosen by the file's suffix (CSV by default)."""
    p = Path(path) if path else None
    if fmt:
        if fmt not in WRITERS:
            raise UserError(f"unknown output format {fmt!r}; choose one of: {', '.join(sorted(WRITERS))}")
        return WRITERS[fmt](p, options=options)
    if p is not None:
        for cls in WRITERS.values():
            if p.suffix.lower() in cls.suffixes:
                return cls(p, options=options)
        if p.suffix:
            raise UserError(f"{p}: unknown output suffix {p.suffix!r} (use .csv, .jsonl or .json, or --format)")
    return CsvWriter(p, options=options)


# ------------------------------------------------------------------------------ resume guard
def model_fingerprint(path: str | Path | None) -> str:
    """A short hash of a model directory's config and weights (or an ONNX file): changes when
    the model does. Reads at most the first and last MiB of the weights."""
    import hashlib

    if path is None:
        return ""
    p = Path(path)
    files = [p / "config.json", p / "model.safetensors"] if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        if not f.is_file():
            continue
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(size - (1 << 20))
                h.update(fh.read())
    return h.hexdigest()[:16]


def resume_record(out: str | Path) -> Path:
    p = Path(out)
    return p.with_name(f".{p.name}.settings.json")


def discard_output(writer: Writer, extra: Iterable[Path] = ()) -> None:
    """``--overwrite``: remove the files this output keeps its rows in (and ``extra`` files of
    the same run), never a folder or anything else in it."""
    for f in [*writer.files(), *extra]:
        if f.is_file() or f.is_symlink():
            f.unlink()


#: settings a record gained in a later imgcls: an output recorded before has none, and continues
#: (its record gains the key; the prediction runner says so)
ADDED_LATER = ("engine",)


def guard_resume(
    out: str | Path | None, settings: dict[str, Any], resume: bool, write: bool = True, writer: Writer | None = None
) -> None:
    """Refuse to continue an output written with another model or other settings (its rows
    would be mixed with this run's), then record this run's settings beside the output. Every
    file the output keeps rows in counts (``writer.files()``: the in-progress part of a JSON or
    MegaDetector document, a Camtrap DP folder's files) and torchrun's part files, not only the
    final file. With ``resume`` False (``--overwrite``) the output's files are removed first."""
    if out is None:
        return
    from imgcls.io import atomic_write_text

    record = resume_record(out)
    settings = json.loads(json.dumps(settings, default=str))  # the form it is stored in
    files = writer.files() if writer is not None else [Path(out)]
    if not resume and writer is not None and write:
        discard_output(writer, [record])
    import glob

    out_path = Path(out)  # torchrun's per-process parts (each rank truncates its own when starting afresh)
    files += out_path.parent.glob(f".{glob.escape(out_path.name)}.part-*")
    if resume and any(f.exists() for f in files) and record.is_file():
        try:
            before = json.loads(record.read_text(encoding="utf-8"))
        except ValueError:
            before = None
        if isinstance(before, dict):
            before = {**{k: settings[k] for k in ADDED_LATER if k in settings and k not in before}, **before}
        if isinstance(before, dict) and before != settings:
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            what = "; ".join(
                "another model" if k == "model" else f"{k} was {before.get(k)!r}, now {settings.get(k)!r}"
                for k in changed
            )
            raise UserError(
                f"{out} holds predictions made with other settings ({what}): "
                "add --overwrite to start it afresh, or choose another --out"
            )
    if write:
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(settings, indent=1, sort_keys=True) + "\n")
