"""The ``imgcls`` command line: parses arguments, fills configs, calls the library.

Nothing else imports this package. :mod:`~imgcls.cli.parser` holds every command's options,
:mod:`~imgcls.cli.commands` the handlers; here: :func:`main` (one-line errors, exit codes) and
the ``imgcls`` program itself (:func:`entry`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from imgcls.cli.commands import _allow_train_pixels
from imgcls.cli.options import TRAIN_HELP
from imgcls.cli.parser import build_parser
from imgcls.errors import UserError

__all__ = ["TRAIN_HELP", "_allow_train_pixels", "build_parser", "entry", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    from imgcls.runtime import process_started

    started = process_started()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unknown_options(parser, args, unknown)
    args._started = started
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.command not in ("train", "predict"):
            raise UserError(f"imgcls {args.command} runs in one process: under torchrun only train and predict "
                            "share the work")  # fmt: skip
        return int(args.handler(args) or 0)
    except UserError as e:
        sys.stderr.write(f"imgcls: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"imgcls: interrupted{_how_to_continue(args)}\n")
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # a file that cannot be written or read where the command needs it
        if os.environ.get("IMGCLS_DEBUG"):
            raise
        where = f": {_shown_path(e.filename)}" if e.filename else ""
        sys.stderr.write(f"imgcls: error: {e.strerror or e}{where}\n")
        return 2


def _how_to_continue(args: argparse.Namespace) -> str:
    """For an interrupted command that can be continued: how."""
    import shlex

    if args.command == "predict" and args.out:
        return f"; run the same command again to continue where it stopped ({shlex.quote(args.out)} keeps every row)"
    if args.command == "compare":
        return "; run the same command again to continue where it stopped (finished configurations are kept)"
    if args.command == "suggest":
        return "; run the same command again to continue where it stopped (the images scored are kept beside --out)"
    if args.command == "train" and args.out:
        from pathlib import Path

        if (Path(args.out) / "checkpoint" / "state.pt").is_file():
            return f"; continue from its last checkpoint with: imgcls train --out {shlex.quote(args.out)} --resume"
    return ""


def _unknown_options(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]) -> None:
    """One line for arguments the command does not know, with the option meant where one is
    close (``--topk``: did you mean --top-k?)."""
    import difflib

    command = getattr(args, "command", None)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    target = sub.choices.get(command) if sub is not None and command else None
    known = [o for a in (target or parser)._actions for o in a.option_strings if o.startswith("--")]
    word = unknown[0].split("=")[0]
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.75) if word.startswith("-") else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    what = "option" if word.startswith("-") else "argument"
    name = f"imgcls {command}" if command else "imgcls"
    sys.stderr.write(f"{name}: error: unknown {what} {word}{hint} (see {name} --help)\n")
    raise SystemExit(2)


def _shown_path(name: Any) -> str:
    """The file a user named, not the temporary sibling it is written through
    (``.preds.csv.k3j2.tmp`` -> ``preds.csv``)."""
    import re
    from pathlib import Path

    p = Path(str(name))
    found = re.fullmatch(r"\.(.+)\.[A-Za-z0-9_]+\.tmp(\.onnx)?", p.name)
    return str(p.with_name(found.group(1))) if found else str(name)


def entry() -> None:
    """The ``imgcls`` program: :func:`main`, then a fast exit. Unloading torch, timm and
    friends at interpreter shutdown takes over a second on two cores and serves no purpose
    once every file is closed and synced (all writes here are), so the process ends at once."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if "torch" in sys.modules:
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
