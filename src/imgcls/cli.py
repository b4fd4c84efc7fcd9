"""The ``imgcls`` command line: parses arguments, fills configs, calls the library.

Nothing else imports this module. Each subcommand imports what it needs when it runs, so
``imgcls --help`` and a single-image ``imgcls predict`` start quickly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from imgcls.errors import UserError

Handler = Callable[[argparse.Namespace], int]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks; show defaults."""


def _parser_error(parser: argparse.ArgumentParser) -> Callable[[str], Any]:
    def error(message: str) -> None:
        # One line, non-zero exit: argparse's usage dump stays available through --help.
        sys.stderr.write(f"imgcls {parser.prog.split()[-1]}: error: {message} (see --help)\n")
        raise SystemExit(2)

    return error


def _add(
    sub: Any, name: str, help_text: str, examples: str, handler: Handler
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=f"{help_text}\n\nexamples:\n{examples}",
        formatter_class=_Formatter,
    )
    p.error = _parser_error(p)  # type: ignore[method-assign,assignment]
    p.set_defaults(handler=handler)
    return p


# ---------------------------------------------------------------------------------------- models
def _cmd_models(args: argparse.Namespace) -> int:
    from imgcls.models.catalog import catalog, rows_as_dicts
    from imgcls.models.summary import human

    rows = catalog(args.pattern)
    if not rows:
        raise UserError(f"no registered architecture matches {args.pattern!r}")
    if args.json:
        print(json.dumps(rows_as_dicts(rows), indent=2))
        return 0
    head = ("name", "family", "source", "params", "MACs", "input", "pretrained", "options")
    table = [
        (
            r.name,
            r.family,
            r.source,
            f"{r.params / 1e6:.2f}M",
            human(r.macs),
            "x".join(str(d) for d in r.input_size[1:]),
            ",".join(r.pretrained) or "-",
            ",".join(r.options) or "-",
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *table, strict=True)]
    for line in (head, *table):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    print(
        f"\n{len(rows)} architectures; MACs = multiply-adds of one forward pass at the input size."
        "\nAny timm or torchvision classifier also works as timm/NAME or torchvision/NAME."
    )
    return 0


# --------------------------------------------------------------------------------------- summary
def _cmd_summary(args: argparse.Namespace) -> int:
    from imgcls.models.summary import summarize_arch

    size = tuple(args.input_size) if args.input_size else None
    if size is not None and (min(size) < 1 or size[0] != 3):
        raise UserError(f"--input-size must be 3 H W with positive H and W, not {size}")
    try:
        s = summarize_arch(
            args.arch, input_size=size, num_classes=args.num_classes, norm=args.norm, attn=args.attn
        )
    except RuntimeError as e:
        if size is None:
            raise
        reason = str(e).splitlines()[0]
        raise UserError(f"{args.arch} cannot run at input size {size}: {reason}") from None
    print(json.dumps(s.to_dict(), indent=2) if args.json else s.table())
    return 0


# ------------------------------------------------------------------------------------------ demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from imgcls.demo import run_demo

    run_demo(out=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from imgcls import __version__

    parser = argparse.ArgumentParser(
        prog="imgcls",
        description="Image classification: train, evaluate, predict at scale, export and serve.",
        formatter_class=_Formatter,
        epilog="Run 'imgcls COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _add(
        sub,
        "models",
        "List the registered architectures with parameters and multiply-adds.",
        "  imgcls models\n  imgcls models 'vgg*'\n  imgcls models resnet --json",
        _cmd_models,
    )
    p.add_argument("pattern", nargs="?", help="shell pattern or substring of the name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    from imgcls.models.layers import ATTNS, NORMS

    p = _add(
        sub,
        "summary",
        "Per-layer table of an architecture: output shape, parameters, memory, multiply-adds.",
        "  imgcls summary alexnet\n  imgcls summary lenet --input-size 3 32 32 --num-classes 10"
        "\n  imgcls summary resnet18 --norm group --attn se --json",
        _cmd_summary,
    )
    p.add_argument(
        "arch", help="architecture name (see 'imgcls models'), timm/NAME, torchvision/NAME"
    )
    p.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"))
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--norm", choices=NORMS, help="normalization (ResNet, VGG, LeNet families)")
    p.add_argument("--attn", choices=ATTNS, help="channel attention (ResNet, VGG, LeNet families)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = _add(
        sub,
        "demo",
        "The main job on an embedded dataset (scikit-learn's handwritten digits).",
        "  imgcls demo\n  imgcls demo --out demo-run",
        _cmd_demo,
    )
    p.add_argument("--out", default="demo-run", help="folder for the demo's outputs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        sys.stderr.write(f"imgcls: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("imgcls: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
