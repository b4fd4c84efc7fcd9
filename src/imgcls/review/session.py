"""A review's state, safe against a kill at any moment.

Every decision is appended to ``<out stem>-progress.jsonl`` beside the corrections file and
flushed to disk (``fsync``) before it is acknowledged; then ``corrections.csv`` is rewritten
whole (write a temporary file, rename it over the old one). A restarted review replays the log
(a line cut short by a kill is dropped) and starts at the first image without a decision. A
corrections file that was there before the review started keeps its decisions: they count as
decided, and they stay in the file.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from imgcls.errors import UserError
from imgcls.review.queue import Item

ACTIONS = ("accept", "relabel", "reject", "skip")
VIEW_SIDE = 768  # px: the longer side of the image the page shows


class Session:
    def __init__(self, items: list[Item], out: str | Path, *, classes: list[str], data_root: str = "",
                 margin: float = 0.1, multilabel: bool = False) -> None:  # fmt: skip
        self.items = items
        self.out = Path(out)
        self.log = self.out.with_name(f"{self.out.stem}-progress.jsonl")
        self.classes = list(classes)
        self.data_root = data_root
        self.margin = margin
        self.multilabel = multilabel
        self.data_spec = ""  # what the audit read (--data), for the retraining hint
        self.lock = threading.Lock()
        # key -> the decisions taken, last one counting ((path, box, action, label) each)
        self.history: dict[str, list[tuple[str, str, str, str]]] = {}
        self.order: list[str] = []  # keys in the order they were first decided (the file's row order)
        self.undo_stack: list[str] = []
        self._load()

    # ------------------------------------------------------------------ state
    def _load(self) -> None:
        from imgcls.data.corrections import read_corrections

        if self.out.exists() and not self.log.exists():  # a file from before: its decisions stay
            for (path, box), (action, labels) in read_corrections(self.out).items():
                self._record(f"{path}|{box}" if box else path, path, box, action, ";".join(labels))
        if self.log.exists():
            from imgcls.outputs import _truncate_to_last_newline

            _truncate_to_last_newline(self.log)
            with open(self.log, encoding="utf-8") as f:
                for line in f:
                    e = json.loads(line)
                    if e["action"] == "undo":
                        self._undo(e["key"])
                    else:
                        self._record(e["key"], e["path"], e.get("box", ""), e["action"], e.get("label", ""))

    def _record(self, key: str, path: str, box: str, action: str, label: str) -> None:
        if key not in self.history:
            self.order.append(key)
        self.history.setdefault(key, []).append((path, box, action, label))
        self.undo_stack.append(key)

    def _undo(self, key: str) -> None:
        entries = self.history.get(key)
        if entries:
            entries.pop()
        if self.undo_stack and self.undo_stack[-1] == key:
            self.undo_stack.pop()

    def decision(self, key: str) -> tuple[str, str] | None:
        """(action, label) of the last decision about ``key``, None when undecided."""
        entries = self.history.get(key)
        return (entries[-1][2], entries[-1][3]) if entries else None

    def position(self) -> int:
        """The first item without a decision (len(items) when all are done)."""
        return next((i for i, it in enumerate(self.items) if self.decision(it.key) is None), len(self.items))

    def counts(self) -> dict[str, int]:
        c = Counter(d[0] for it in self.items if (d := self.decision(it.key)) is not None)
        return {a: c.get(a, 0) for a in ACTIONS} | {"decided": sum(c.values()), "total": len(self.items)}

    # ---------------------------------------------------------------- changes
    def decide(self, index: int, action: str, label: str = "") -> dict[str, Any]:
        if not 0 <= index < len(self.items):
            raise UserError(f"no item {index} (0..{len(self.items) - 1})")
        if action not in ACTIONS:
            raise UserError(f"unknown action {action!r} ({', '.join(ACTIONS)})")
        item = self.items[index]
        label = label.strip() if action == "relabel" else item.label
        if action == "relabel" and not label:
            raise UserError("relabel needs the new label")
        if action == "relabel" and not self.multilabel and ";" in label:
            raise UserError("one label per image: the data is single-label")
        entry = {"key": item.key, "path": item.path, "box": item.box, "action": action, "label": label,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        with self.lock:
            if action == "skip" and self.decision(item.key) not in (None, ("skip", item.label)):
                return self.state_after(index)  # skipping a decided image keeps its decision
            self._append(entry)
            self._record(item.key, item.path, item.box, action, label)
            if action != "skip":
                self._write_corrections()
            if action == "relabel":
                self.classes += [n for n in label.split(";") if n and n not in self.classes]
        return self.state_after(index)

    def undo(self) -> dict[str, Any]:
        """Take back the last decision; the page goes back to its image."""
        with self.lock:
            if not self.undo_stack:
                raise UserError("nothing to undo")
            key = self.undo_stack[-1]
            self._append({"key": key, "action": "undo", "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
            self._undo(key)
            self._write_corrections()
        index = next((i for i, it in enumerate(self.items) if it.key == key), self.position())
        return {**self.state_after(index), "position": index}

    def state_after(self, index: int) -> dict[str, Any]:
        """The next undecided item after ``index`` (wrapping to the first), the counts, and the
        decision now standing for ``index``."""
        following = range(index + 1, len(self.items))
        nxt = next((i for i in following if self.decision(self.items[i].key) is None), self.position())
        key = self.items[index].key if 0 <= index < len(self.items) else ""
        d = self.decision(key) if key else None
        return {"position": nxt, "counts": self.counts(), "key": key, "decision": list(d) if d else None}

    def decisions(self) -> dict[str, list[str]]:
        return {it.key: list(d) for it in self.items if (d := self.decision(it.key)) is not None}

    def _append(self, entry: dict[str, Any]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _write_corrections(self) -> None:
        import csv

        from imgcls.io import atomic_write_text

        rows = [e[-1] for k in self.order if (e := self.history.get(k)) and e[-1][2] != "skip"]
        boxes = any(box for _, box, _, _ in rows)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label", "action"] + (["box"] if boxes else []))
        for path, box, action, label in rows:
            w.writerow([path, label, action] + ([box] if boxes else []))
        atomic_write_text(self.out, buf.getvalue())

    # ----------------------------------------------------------------- images
    def image(self, index: int, which: str = "a") -> bytes:
        """The item's image (``which="b"``: the training image a leak copies) as a JPEG."""
        from PIL import Image

        from imgcls.data.image import read_view

        item = self.items[index]
        path = item.other if which == "b" else item.path
        if "#" in path and not os.path.exists(path):
            name, _, row = path.rpartition("#")
            img = Image.fromarray(_idx_images(str(Path(self.data_root) / name))[int(row)]).convert("RGB")
        else:
            box = [float(v) for v in item.box.split()] if item.box and which == "a" else None
            img = read_view(path, box, margin=self.margin, need=VIEW_SIDE // 2)
        img.thumbnail((VIEW_SIDE, VIEW_SIDE))
        if max(img.size) < 256:  # a tiny image (digits, MNIST): pixels shown as crisp squares
            k = 256 // max(img.size)
            img = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=88)
        return buf.getvalue()


@lru_cache(maxsize=4)
def _idx_images(path: str) -> Any:
    from imgcls.data.sources.idx import read_idx_file

    return read_idx_file(Path(path))
