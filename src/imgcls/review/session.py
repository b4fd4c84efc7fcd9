"""A review's state, safe against a kill at any moment.

The progress log, ``<out stem>-progress.jsonl`` beside the corrections file, is the record:
every decision is appended to it and flushed to disk (``fsync``) before it is acknowledged;
then ``corrections.csv`` is rewritten whole from the log (a temporary file renamed over the old
one). A restarted review replays the log (a line cut short by a kill is dropped; a blank line is
nothing; any other line that is not a decision is a one-line error naming it) and starts at the
first image without a decision.

The corrections file is read at every start too: a decision in it that the log cannot explain
(the file was there before the review began, or a person edited it) is adopted into the log, so
it stays until the person changes it. A row that only lags the log by its last entry (a kill
between the two writes) is the log's older state, and the log wins. The file lists the standing
decisions in the order they were taken, so "the last decision counts" holds when training
applies it (:mod:`imgcls.data.corrections`), for whole images and their crops alike.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from imgcls.data.corrections import is_data_file_id
from imgcls.errors import UserError
from imgcls.review.queue import Item, item_key

ACTIONS = ("accept", "relabel", "reject", "skip")
UNSET = "unset"  # a decision a person deleted from the corrections file by hand: undecided again
ADOPTED = "adopted"  # the log's mark that a file's decisions were all taken over (``source``)
VIEW_SIDE = 768  # px: the longer side of the image the page shows
FROM_FILE = "corrections file"  # the origin of a decision adopted from the corrections file


@dataclass(frozen=True)
class Entry:
    """One decision: about ``path`` (and crop ``box``), its action and label, when it was taken
    (``seq``: its place among all decisions, which orders the corrections file), and whether the
    person took it on the page (``mine``; else it came from a corrections file)."""

    path: str
    box: str
    action: str
    label: str
    seq: int
    mine: bool = True


class Session:
    def __init__(self, items: list[Item], out: str | Path, *, classes: list[str], data_root: str = "",
                 margin: float = 0.1, multilabel: bool = False, inherit: Path | None = None,
                 mode: str = "review") -> None:  # fmt: skip
        self.items = items
        self.mode = mode  # review (corrections of an audit or predictions) | label (suggested images)
        self.out = Path(out)
        self.log = self.out.with_name(f"{self.out.stem}-progress.jsonl")
        self.classes = list(classes)  # the labels a relabel may take without making a new class
        self.given_classes = list(classes)  # those it opened with (the model's): what the keys are decided on
        self.data_root = data_root
        self.margin = margin
        self.multilabel = multilabel
        self.hint = ""  # the command that retrains with the decisions
        self.hint_note = ""  # a line more about it (labelling: how to start from the model's weights)
        self.lock = threading.Lock()
        self.history: dict[str, list[Entry]] = {}  # key -> its decisions, the last one standing
        self.undo_stack: list[str] = []  # keys of the person's decisions, for U
        self._seq = 0
        self._sources: set[str] = set()  # files whose decisions were all adopted (ADOPTED marks)
        self.adopted = 0  # decisions taken over from a corrections file at this start
        self._written: str | None = None  # the file's text as last written or found: what an edit is told from
        self._load(inherit)
        # U takes back decisions about this queue's images only: a file kept round after round
        # holds earlier rounds' decisions, which are not on any page now
        queued = {it.key for it in items}
        self.undo_stack = [k for k in self.undo_stack if k in queued]

    # ------------------------------------------------------------------ state
    def _load(self, inherit: Path | None) -> None:
        before_last = self._corrections_text()
        if self.log.exists():
            from imgcls.outputs import _truncate_to_last_newline

            _truncate_to_last_newline(self.log)
            entries = _read_log(self.log)
            for k, e in enumerate(entries):
                if k == len(entries) - 1:
                    before_last = self._corrections_text()
                self._replay(e)
        source = str(inherit.resolve()) if inherit is not None else ""
        if inherit is not None and source not in self._sources and inherit.resolve() != self.out.resolve():
            self._adopt_rows(inherit, self._changes(inherit), source)  # the corrections the audit read carry over
        text = _text_or_none(self.out)
        if text is not None and text not in (self._corrections_text(), before_last):
            self._adopt_rows(self.out, self._changes(self.out, deleted=True))  # a person edited the file
        if (self.history or text is not None) and self._corrections_text() != text:
            self._write_corrections()  # a kill came between the log and the file: the file catches up
        else:
            self._written = text  # (adopting writes only the log: the file is as it was read)

    def _replay(self, e: dict[str, Any]) -> None:
        if e["action"] == "undo":
            self._undo(e["key"])
        elif e["action"] == ADOPTED:
            self._sources.add(str(e.get("source", "")))
        else:
            mine = e.get("origin") != FROM_FILE
            self._record(e["key"], e["path"], e.get("box", ""), e["action"], e.get("label", ""), mine=mine)

    def _changes(self, source: Path, *, deleted: bool = False) -> list[dict[str, Any]]:
        """The decisions of a corrections file that differ from the standing ones, as log entries;
        with ``deleted``, a standing decision the file no longer has is unset."""
        found = _decisions_in(source)
        out = [{"key": k, **d} for k, d in found.items() if (d["action"], d["label"]) != self.decision(k)]
        if deleted:
            for key, entries in self.history.items():
                e = entries[-1] if entries else None
                if e is not None and e.action not in ("skip", UNSET) and key not in found:
                    out.append({"key": key, "path": e.path, "box": e.box, "action": UNSET, "label": ""})
        return out

    def _adopt_rows(self, source: Path, changes: list[dict[str, Any]], mark: str = "") -> None:
        """Take ``changes`` (from the file ``source``) into the log in one synced write, with the
        mark that the file is done where ``mark`` names it (a kill before then adopts it again)."""
        entries = [{**c, "origin": FROM_FILE, "time": _now()} for c in changes]
        if mark:
            entries.append({"key": str(source), "action": ADOPTED, "source": mark, "time": _now()})
        if not entries:
            return
        self._append(*entries)
        for c in changes:
            self._record(c["key"], c["path"], c["box"], c["action"], c["label"], mine=False)
        self._sources.add(mark)
        self.adopted += sum(1 for c in changes if c["action"] != UNSET)

    def _record(self, key: str, path: str, box: str, action: str, label: str, *, mine: bool = True) -> None:
        """Add a decision; a label it gives that is not a class yet is one from now on (after a
        restart too: the log replays it)."""
        if action == "relabel":
            self.classes += [n for n in label.split(";") if n and n not in self.classes]
        self._seq += 1
        self.history.setdefault(key, []).append(Entry(path, box, action, label, self._seq, mine))
        if mine:
            self.undo_stack.append(key)

    def _undo(self, key: str) -> None:
        """Take back the person's last decision about ``key`` (a decision adopted from the file
        after it stays)."""
        entries = self.history.get(key, [])
        mine = [k for k, e in enumerate(entries) if e.mine]
        if mine:
            entries.pop(mine[-1])
        if self.undo_stack and self.undo_stack[-1] == key:
            self.undo_stack.pop()

    def decision(self, key: str) -> tuple[str, str] | None:
        """(action, label) of the last decision about ``key`` (a skip included), None when undecided."""
        entries = self.history.get(key)
        if not entries or entries[-1].action == UNSET:
            return None
        return entries[-1].action, entries[-1].label

    def decided(self, key: str) -> bool:
        """A decision stands (a skip is none: the image stays in the queue)."""
        d = self.decision(key)
        return d is not None and d[0] != "skip"

    def position(self) -> int:
        """Where a (re)started review begins: the first item without a decision, else the first
        one skipped (skipped images stay in the queue), else len(items): all decided."""
        undecided = [i for i, it in enumerate(self.items) if not self.decided(it.key)]
        fresh = [i for i in undecided if self.decision(self.items[i].key) is None]
        return (fresh or undecided or [len(self.items)])[0]

    def counts(self) -> dict[str, int]:
        c = Counter(d[0] for it in self.items if (d := self.decision(it.key)) is not None)
        decided = sum(v for a, v in c.items() if a != "skip")
        return {a: c.get(a, 0) for a in ACTIONS} | {"decided": decided, "total": len(self.items)}

    # ---------------------------------------------------------------- changes
    def decide(self, index: int, action: str, label: str = "", *, new_class: bool = False,
               key: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Record a decision about item ``index`` (``key``: the item the page showed, refused if it
        is not that item's); a relabel to a label that is not one of the classes is refused unless
        ``new_class`` says the person means to make one."""
        if not 0 <= index < len(self.items):
            raise UserError(f"no item {index} (0..{len(self.items) - 1})")
        if key is not None and key != self.items[index].key:
            raise UserError(f"item {index} is not the image the decision was made on: reload the page")
        if action not in ACTIONS:
            raise UserError(f"unknown action {action!r} ({', '.join(ACTIONS)})")
        item = self.items[index]
        label = label.strip() if action == "relabel" else item.label
        if action == "relabel":
            self._check_label(label, new_class)
        entry = {"key": item.key, "path": item.path, "box": item.box, "action": action, "label": label,
                 "time": _now()}  # fmt: skip
        with self.lock:
            edited = self._adopt_edits()
            if action == "skip" and self.decision(item.key) is not None:
                return {**self.state_after(index), "edited": edited}  # a skip of a decided image keeps it
            self._append(entry)
            self._record(item.key, item.path, item.box, action, label)
            if action != "skip":
                self._write_corrections()
        return {**self.state_after(index), "edited": edited}

    def _check_label(self, label: str, new_class: bool) -> None:
        if not label:
            raise UserError("relabel needs the new label")
        if not self.multilabel and ";" in label:
            raise UserError("one label per image: the data is single-label")
        unknown = [n.strip() for n in label.split(";") if n.strip() and n.strip() not in self.classes]
        if unknown and not new_class:
            raise UserError(f"{unknown[0]!r} is not one of the data's {len(self.classes)} classes: relabelling to it "
                            "makes a new class (confirm it to do so)")  # fmt: skip

    def undo(self) -> dict[str, Any]:
        """Take back the last decision; the page goes back to its image."""
        with self.lock:
            edited = self._adopt_edits()
            if not self.undo_stack:
                raise UserError("nothing to undo")
            key = self.undo_stack[-1]
            self._append({"key": key, "action": "undo", "time": _now()})
            self._undo(key)
            self._write_corrections()
        index = next((i for i, it in enumerate(self.items) if it.key == key), self.position())
        return {**self.state_after(index), "position": index, "edited": edited}

    def state_after(self, index: int) -> dict[str, Any]:
        """The next item after ``index`` (wrapping to the first) with no decision and not skipped
        (len(items) when none is left: the page's end, which counts the skipped ones), the counts,
        and the decision now standing for ``index``."""
        n = len(self.items)
        after = [(index + 1 + k) % n for k in range(n)] if n else []
        fresh = (i for i in after if self.decision(self.items[i].key) is None)
        nxt = next(fresh, n)  # images skipped before come back when the page is reloaded or the person goes back
        key = self.items[index].key if 0 <= index < len(self.items) else ""
        d = self.decision(key) if key else None
        return {"position": nxt, "counts": self.counts(), "key": key, "decision": list(d) if d else None}

    def decisions(self) -> dict[str, list[str]]:
        return {it.key: list(d) for it in self.items if (d := self.decision(it.key)) is not None}

    def _append(self, *entries: dict[str, Any]) -> None:
        """Add ``entries`` to the log in one write, on disk before this returns."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(e) + "\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())

    def _corrections_text(self) -> str:
        """``corrections.csv`` as the standing decisions make it: one row per decided image or
        crop (skips are no decision), in the order the decisions were taken."""
        from imgcls.io import csv_text

        standing = sorted((e[-1] for e in self.history.values() if e and e[-1].action not in ("skip", UNSET)),
                          key=lambda e: e.seq)  # fmt: skip
        boxes = any(e.box for e in standing)
        header = ["path", "label", "action"] + (["box"] if boxes else [])
        return csv_text(header, ([e.path, e.label, e.action] + ([e.box] if boxes else []) for e in standing))

    def _adopt_edits(self) -> int:
        """Rows a person changed, added or deleted in the file while the page runs are taken over
        before the next decision rewrites it (they were lost: the file was rewritten from the log);
        how many. An edit is what differs from the text this session last wrote or found (not from
        its decisions: a write that failed leaves the file behind them, which is no edit), and only
        the rows the edit changed count; the file is rewritten at once, so a kill next loses nothing."""
        text = _text_or_none(self.out)
        if text is None or self._written is None or text == self._written:
            return 0
        base, now = _decisions_of_text(self.out, self._written), _decisions_in(self.out)
        changes = [{"key": k, **d} for k, d in now.items()
                   if base.get(k) != d and (d["action"], d["label"]) != self.decision(k)]  # fmt: skip
        for k, d in base.items():
            if k not in now and (e := self.decision(k)) is not None and e[0] not in ("skip", UNSET):
                changes.append({"key": k, "path": d["path"], "box": d["box"], "action": UNSET, "label": ""})
        self._adopt_rows(self.out, changes)
        self._write_corrections()
        return len(changes)

    def _write_corrections(self) -> None:
        from imgcls.io import atomic_write_text

        text = self._corrections_text()
        atomic_write_text(self.out, text)
        self._written = text

    # ----------------------------------------------------------------- images
    def image(self, index: int, which: str = "a") -> bytes:
        """The item's image as a JPEG: ``a`` the image (a crop's square, as training saw it),
        ``b`` the training image a leak copies, ``frame`` a crop's whole frame with its box drawn."""
        from PIL import Image

        from imgcls.data.image import read_view

        item = self.items[index]
        path = item.other if which == "b" else item.path
        box = [float(v) for v in item.box.split()] if item.box and which != "b" else None
        if is_data_file_id(path):
            name, _, row = path.rpartition("#")
            img = Image.fromarray(_idx_images(str(Path(self.data_root) / name))[int(row)]).convert("RGB")
        elif which == "frame" and box is not None:
            img = _with_box(read_view(path, need=VIEW_SIDE), box)
        else:
            img = read_view(path, box if which == "a" else None, margin=self.margin, need=VIEW_SIDE // 2)
        img.thumbnail((VIEW_SIDE, VIEW_SIDE))
        if max(img.size) < 256:  # a tiny image (digits, MNIST): pixels shown as crisp squares
            k = 256 // max(img.size)
            img = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=88)
        return buf.getvalue()


def _with_box(img: Any, box: list[float]) -> Any:
    """The frame with the crop's box (x, y, w, h, normalised) drawn on it."""
    from PIL import ImageDraw

    img = img.copy()
    x, y, w, h = box
    width = max(2, round(max(img.size) / 250))
    ImageDraw.Draw(img).rectangle(
        [x * img.width, y * img.height, (x + w) * img.width, (y + h) * img.height], outline=(255, 40, 40), width=width
    )
    return img


def _read_log(log: Path) -> list[dict[str, Any]]:
    """The log's decisions; a line that is not one is a one-line error naming it."""
    out = []
    with open(log, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                e = None
            why = _not_a_decision(e)
            if why:
                raise UserError(f"{log}, line {n}: {why}, not a decision imgcls review wrote; correct or delete that "
                                "line (the other lines hold the decisions)")  # fmt: skip
            out.append(e)
    return out


def _not_a_decision(e: Any) -> str:
    if not isinstance(e, dict):
        return "not a JSON object"
    if not isinstance(e.get("key"), str) or not e["key"]:
        return "no 'key'"
    if e.get("action") not in (*ACTIONS, UNSET, "undo", ADOPTED):
        return f"unknown action {e.get('action')!r}"
    if e["action"] in ("undo", ADOPTED):
        return ""
    if not all(isinstance(e.get(k, ""), str) for k in ("path", "box", "label")):
        return "'path', 'box' and 'label' must be text"
    return "" if e.get("path") else "no 'path'"


def _text_or_none(path: Path) -> str | None:
    """The file's text, None if there is none; a file that is not UTF-8 (a spreadsheet's save) is
    a one-line error rather than a file the next decision would write over."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise UserError(
            f"{path} is not UTF-8 text (saved by a spreadsheet?): save it as CSV UTF-8, then go on; nothing was changed"
        ) from None


def _decisions_in(path: Path) -> dict[str, dict[str, Any]]:
    """A corrections (or labels) file's standing decisions by item key."""
    from imgcls.data.corrections import read_corrections

    return {item_key(p, box): {"path": p, "box": box, "action": action, "label": ";".join(labels)}
            for (p, box), (action, labels) in read_corrections(path).items()}  # fmt: skip


def _decisions_of_text(out: Path, text: str) -> dict[str, dict[str, Any]]:
    """:func:`_decisions_in` of ``text`` as if it were ``out`` (read beside it: relative paths
    resolve alike)."""
    base = out.with_name(f".{out.name}.written")
    base.write_text(text, encoding="utf-8")
    try:
        return _decisions_in(base)
    finally:
        base.unlink(missing_ok=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@lru_cache(maxsize=4)
def _idx_images(path: str) -> Any:
    from imgcls.data.sources.idx import read_idx_file

    return read_idx_file(Path(path))
