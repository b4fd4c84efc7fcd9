"""``--shard K/N``: one of N separate jobs (a SLURM job array's tasks, commands started by hand on
several machines) predicts every N-th input starting at the K-th (0-based: the inputs torchrun's
rank K of N would take) into its own part beside ``--out``; the job that completes the last part
merges the parts into ``--out`` in input order. The jobs share nothing but the file system: no
rendezvous, no network between them, and they need not run at the same time (torchrun's processes
must, see :func:`imgcls.predict.runner.run_predict`).

Each part is an output of its own: resumable (a task that is killed and run again continues its
part), guarded by its own settings record (``--overwrite`` starts only this task's part afresh).
A finished part is marked (``.OUT.part-K-of-N.done``); the task that finds every mark present
merges, under a lock file created exclusively (``.OUT.merging``), so two tasks finishing together
do not both write ``--out`` (the one holding the lock looks at the marks again: the other may have
merged just before), and refuses parts whose settings records differ (tasks on different kinds
of machine choosing different engines), keeping them. The merge writes a synced sibling renamed
over ``--out``, and removes the parts after: a merge that was killed leaves ``--out`` as it was,
the lock and the parts, and says so when the next task finds it. Once merged, a task run again
with the same settings finds ``--out`` complete and predicts nothing (it counts its inputs that
``--out`` lacks; ``--overwrite`` predicts its shard again); with other settings it is refused, as
plain predict refuses.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcls.errors import UserError

if TYPE_CHECKING:
    from imgcls.outputs import Writer
    from imgcls.predict.runner import PredictSummary


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N), 0 <= K < N; the message names the mistake (a SLURM array from 1)."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected K/N, e.g. 0/8 (this is shard K of N, counted from 0)") from None
    if n >= 1 and k == n:  # the last task of an array counted from 1; its others ran as shards 1 to N-1
        raise UserError(f"--shard {text}: K must be 0 to {n - 1}; an array counted from 1 never runs shard 0: "
                        f"run --shard 0/{n} once to finish it (then --array=0-{n - 1}, or "
                        f"--shard $((SLURM_ARRAY_TASK_ID - 1))/{n})")  # fmt: skip
    if n < 1 or not 0 <= k < n:
        raise UserError(f"--shard {text}: K must be 0 to {max(n, 1) - 1} (a SLURM array counted from 1: "
                        "--array=0-N-1, or --shard $((SLURM_ARRAY_TASK_ID - 1))/N)")  # fmt: skip
    return k, n


def _mark(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f".{out.name}.part-{rank}-of-{world}.done")


def predict_shard(
    clf: Any, inputs: Any, *, out: str | Path, shard: tuple[int, int], fmt: str | None = None, resume: bool = True,
    **kwargs: Any,
) -> PredictSummary:  # fmt: skip
    """Shard ``shard`` = (K, N) of the whole-file prediction of ``inputs`` into its part beside
    ``out``, then the merge when it completes the last part; ``kwargs`` as
    :func:`imgcls.predict.runner.run_predict`'s."""
    from imgcls.console import info
    from imgcls.io import atomic_write_text
    from imgcls.outputs import guard_resume, resume_record, writer_for
    from imgcls.predict.runner import Files, PredictSummary, part_path, run_settings, stream

    k, n = shard
    final = Path(out)
    options = {"model": clf.describe()}
    writer = writer_for(final, fmt, options)
    settings = run_settings(clf, writer.name, kwargs)
    source = Files(kwargs.pop("top_k", 5), kwargs.pop("threshold", None))
    part = part_path(final, k, n)
    started = part.exists() or _mark(final, k, n).exists() or resume_record(part).exists()
    if resume and final.exists() and not started:  # merged: only if by the same settings, as plain predict
        guard_resume(final, settings, resume, write=False, writer=writer)
        info(_complete_line(final, writer.name, inputs, k, n))
        return PredictSummary(0, 0, 0, 0, 0.0, final)
    part_writer = writer_for(part, writer.name, options)
    if not resume:
        _mark(final, k, n).unlink(missing_ok=True)
    guard_resume(part, settings, resume, writer=part_writer)
    summary = stream(clf, inputs, part_writer, source, resume=resume, rank=k, world=n, **kwargs)
    atomic_write_text(_mark(final, k, n), json.dumps({"rows": summary.written + summary.skipped_done}) + "\n")
    info(merge_if_complete(final, n, writer, settings))
    return summary


def _complete_line(final: Path, fmt: str, inputs: Any, k: int, n: int) -> str:
    """What a task finds in a merged ``final``: complete, or lacking some of its inputs (files
    added to a folder since the merge), counted and not predicted: a shard alone cannot add rows
    to a merged output, plain predict continuing it can."""
    from imgcls.predict.inputs import iter_inputs

    held = _paths_in(final, fmt)
    if held is None:
        return (f"{final} is complete (merged from its shards): nothing to do (its inputs are not checked again; "
                f"--overwrite predicts shard {k}/{n} again)")  # fmt: skip
    mine = [p for i, p in enumerate(iter_inputs(inputs)) if i % n == k]
    missing = sum(1 for p in mine if p not in held)
    if not missing:
        return f"{final} is complete (merged from its shards): nothing to do (--overwrite predicts shard {k}/{n} again)"
    return (f"{final} was merged from its shards, but {missing} of shard {k}/{n}'s {len(mine)} inputs are not in it "
            "(added since?): predicted none; the same command without --shard adds them to it, or run every shard "
            "again with --overwrite")  # fmt: skip


def _paths_in(final: Path, fmt: str) -> set[str] | None:
    """The inputs a merged output has rows for (None: a format or a file this cannot read)."""
    import csv

    try:
        if fmt == "csv":
            with open(final, newline="", encoding="utf-8") as f:
                return {row[0] for i, row in enumerate(csv.reader(f)) if i and row}
        text = final.read_text(encoding="utf-8")
        if fmt == "jsonl":
            return {json.loads(line)["path"] for line in text.splitlines() if line.strip()}
        if fmt == "json":
            return {row["path"] for row in json.loads(text)["predictions"]}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return None


def merge_if_complete(final: Path, world: int, writer: Writer, settings: dict[str, Any]) -> str:
    """Merge the ``world`` parts into ``final`` if every one is marked finished and no other task
    is merging; what happened, in a line. What was seen before the lock is seen again under it:
    a task finishing with another may find the lock free only because the other has merged."""
    from imgcls.io import atomic_write_text
    from imgcls.outputs import resume_record
    from imgcls.predict.runner import part_path

    waiting = [r for r in range(world) if not _mark(final, r, world).exists()]
    if waiting:  # named: an array counted from 1 never runs shard 0, and its tasks say they wait for it
        shards = f"shard{'s' * (len(waiting) > 1)} {_ranges(waiting)} of {world}"
        return f"{world - len(waiting)} of {world} shards of {final} done; waiting for {shards} (the last merges them)"
    lock = final.with_name(f".{final.name}.merging")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return (f"another shard is merging {final} ({lock}: if no job is, a merge was cut short; remove it and run "
                "any shard again)")  # fmt: skip
    try:
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        os.close(fd)
        parts = [part_path(final, r, world) for r in range(world)]
        gone = [r for r, p in enumerate(parts) if not (_mark(final, r, world).exists() and _has_rows(writer, p))]
        if gone:
            return _gone_line(final, world, gone)
        _check_alike(final, parts)
        writer.merge(parts)
        atomic_write_text(resume_record(final), json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n")
        for r, p in enumerate(parts):
            for f in _part_files(writer, p):
                f.unlink(missing_ok=True)
            resume_record(p).unlink(missing_ok=True)
            _mark(final, r, world).unlink(missing_ok=True)
    finally:
        lock.unlink(missing_ok=True)
    return f"merged the {world} shards into {final}"


def _check_alike(final: Path, parts: list[Path]) -> None:
    """Refuse parts whose settings records differ (tasks on different kinds of machine choose
    different engines; a model changed between tasks): their rows would not be one prediction.
    The parts stay, so one shard run again with the others' options can complete the merge."""
    from imgcls.outputs import resume_record

    records = []
    for p in parts:
        try:
            record = json.loads(resume_record(p).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        records.append(record if isinstance(record, dict) else {})
    differ = []
    for key in sorted({k for r in records for k in r}):
        shards: dict[str, list[int]] = {}
        for r, record in enumerate(records):
            value = record.get(key)
            shown = "not recorded" if value is None else value if isinstance(value, str) else json.dumps(value)
            shards.setdefault(f"{key} {shown}" if key in ("engine", "model") else f"{key}={shown}", []).append(r)
        if len(shards) > 1:
            differ.append(" vs ".join(f"{v} (shard{'s' * (len(rs) > 1)} {_ranges(rs)})" for v, rs in shards.items()))
    if differ:
        raise UserError(
            f"{final}: not merged: its {len(parts)} parts were made with different settings ({'; '.join(differ)}); "
            "run the shards that differ again with the others' options (--backend, --precision), or with "
            "--overwrite; the parts are kept"
        )


def _part_files(writer: Writer, part: Path) -> list[Path]:
    """The files a part keeps its rows in (a JSON document's part has its JSON-lines file)."""
    return type(writer)(part, options=writer.options).files()


def _has_rows(writer: Writer, part: Path) -> bool:
    return any(f.exists() for f in _part_files(writer, part))


def _gone_line(final: Path, world: int, gone: list[int]) -> str:
    """Under the lock, some part or mark is no longer there: merged by another task (which
    removes them all), or lost; either way, nothing to merge."""
    if len(gone) == world and final.exists():
        return f"the {world} shards of {final} were merged by another task: nothing to merge"
    return (f"nothing to merge into {final}: shard(s) {_ranges(gone)} of {world} lack their part or its mark "
            "(run them again with --overwrite)")  # fmt: skip


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 3, 4, 5, 7] -> '0-1, 3-5, 7' (a thousand-task array's missing shards in a line)."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
