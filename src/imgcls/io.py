"""Atomic file and folder writes: a temporary file in the same folder, fsync, then ``os.replace``.

A reader (or a resumed run) sees either the old file or the complete new one, never half of it,
even when the writer is killed with SIGKILL or the machine loses power after the replace.
:func:`atomic_dir` does the same for a whole folder (a model directory: its config and weights
change together). Files get the permissions an ordinary ``open`` would give them (the user's
umask; an existing file keeps its mode), not the 0600 of a temporary file, so a model written
to a group drive is readable by the group.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from imgcls.errors import UserError


def fsync_dir(folder: Path) -> None:
    """The rename itself lives in the directory entry: sync it too (POSIX only)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else by
    setting and restoring it."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish(tmp: str | Path, target: Path) -> None:
    """Give ``tmp`` the mode ``target`` has (or a new file's under the umask), sync it and
    rename it over ``target``."""
    try:
        mode = os.stat(target).st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~current_umask()
    os.chmod(tmp, mode)
    os.replace(tmp, target)
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; it replaces ``path`` on success only."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


CsvRows = Iterable[Sequence[Any] | Mapping[str, Any]]


def csv_text(header: Sequence[str], rows: CsvRows) -> str:
    """A CSV document: ``header``, then each row (a sequence, or a mapping read by the header's
    names, a missing one empty); ``\\n`` line ends, None written empty."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([row.get(h, "") for h in header] if isinstance(row, Mapping) else row)
    return buf.getvalue()


def atomic_write_csv(
    path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]
) -> None:
    """The one way imgcls writes a whole CSV file (skipped.csv, an audit's and an explanation's
    tables, a report's predictions): :func:`csv_text`, written atomically."""
    atomic_write_text(path, csv_text(header, rows))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_with(path: str | Path, write: Callable[[str], None], *, suffix: str = ".tmp") -> None:
    """For libraries that want a file name (safetensors, torch.save, matplotlib, ONNX): ``write(tmp)``
    fills a temporary sibling (named ``.NAME.XXXX{suffix}``, for readers that go by the suffix),
    which then replaces ``path`` atomically; if ``write`` fails, nothing is left behind."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _publish(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def publish_file(tmp: str | Path, target: str | Path) -> None:
    """Sync a finished temporary file and rename it over ``target`` (see :func:`atomic_open`)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    _publish(tmp, Path(target))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    return bool(done)


def _carry(src: Path, dst: Path) -> None:
    """A file or folder of the old version into the new one (a hard link where possible)."""
    import shutil

    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True)
        return
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _fsync_file(path: Path) -> None:
    """Sync a file to disk: opened for writing, which every system's fsync accepts, or, where
    its writer made it read-only, for reading (Linux and macOS sync through that too)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _settle(tmp: Path, target: Path) -> None:
    """Sync what the writer put in ``tmp`` and give it the modes an ordinary ``open`` and
    ``mkdir`` would (a file the old folder has keeps its mode): libraries choose their own
    (safetensors creates its file 0600 whatever the umask), so a model's weights were private
    beside a world-readable config. Each file is synced before its mode is set: the mode may be
    read-only (an old file's after ``chmod a-w``), and opening it for writing then fails for
    anyone but root (:func:`_fsync_file`)."""
    mask = current_umask()
    for dirpath, dirnames, filenames in os.walk(tmp):
        here = Path(dirpath)
        old = target / here.relative_to(tmp)
        for d in dirnames:
            os.chmod(here / d, 0o777 & ~mask)
        for name in filenames:
            f = here / name
            if f.is_symlink():
                continue
            try:
                mode = os.stat(old / name).st_mode & 0o7777
            except OSError:
                mode = 0o666 & ~mask
            _fsync_file(f)
            os.chmod(f, mode)
    os.chmod(tmp, 0o777 & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write a folder as a whole: the caller fills the temporary folder it is given; on success
    it takes the place of ``path`` in one rename (an exchange where ``path`` exists), so a reader
    sees the old folder or the new one, never new weights beside an old config. Files of the old
    folder that the new one does not have are carried over, except those named in ``replaces``
    (what the writer owns and would otherwise leave stale). On failure the old folder is kept."""
    import shutil

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _settle(tmp, target)
        if target.is_dir():
            for old in target.iterdir():
                if old.name not in replaces and not (tmp / old.name).exists():
                    _carry(old, tmp / old.name)
            fsync_dir(tmp)
            if not _exchange(tmp, target):  # elsewhere: two renames, a moment without the folder
                aside = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, aside)
                os.replace(tmp, target)
                tmp = aside
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def walk_tree(
    folder: str | Path, keep_dir: Callable[[str], bool] = lambda name: not name.startswith(".")
) -> Iterator[tuple[str, list[str]]]:
    """(a folder's path, its file names sorted) for ``folder`` and every folder below it that
    ``keep_dir`` keeps, top-down in sorted order. Symlinked folders are followed, each real
    folder once: a link back to a folder already walked (a loop) is not entered again, so no file
    is listed twice."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if keep_dir(d))
        yield dirpath, sorted(filenames)


def launch_rank() -> int:
    """This process's rank when ``torchrun`` started several (0 otherwise), known before the
    process group is joined."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def check_writable(path: str | Path, *, folder: bool = False, option: str = "--out") -> Path:
    """Refuse at once, in one line naming the path and the reason, an output that could not be
    written: a file where a folder is wanted or the other way round, a parent that is a file, a
    place without write permission. Checked by creating what is missing and a probe file there,
    then removing both, so nothing is left behind and the real write later meets no surprise.

    Under ``torchrun`` only rank 0 checks: the others, probing the same place at the same moment,
    would meet its probe file or lose a folder its clean-up removes; when rank 0 refuses, its
    caller tells the others why (:func:`imgcls.ranks.tell_refusal`)."""
    p = Path(path).expanduser()
    if launch_rank() != 0:
        return p
    if folder and p.exists() and not p.is_dir():
        raise UserError(f"{option} {p}: exists and is not a folder")
    if not folder and p.is_dir():
        raise UserError(f"{option} {p}: is a folder; give a file name")
    where = p if folder else p.parent
    missing: list[Path] = []
    d = where
    while not d.exists() and d.parent != d:
        missing.append(d)
        d = d.parent
    if not d.is_dir():
        raise UserError(f"{option} {p}: {d} is a file, not a folder")
    created: list[Path] = []
    try:
        for m in reversed(missing):
            m.mkdir()
            created.append(m)
        fd, probe = tempfile.mkstemp(prefix=".imgcls-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{option} {p}: cannot write there ({e.strerror or e})") from None
    finally:
        for m in reversed(created):
            with contextlib.suppress(OSError):
                m.rmdir()
    return p
