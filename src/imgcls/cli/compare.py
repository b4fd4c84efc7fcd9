"""``imgcls compare``: its grammar and its handler."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imgcls.cli.commands import _allow_train_pixels
from imgcls.cli.options import _add, _add_config_options

#: the options given as comma-separated lists: the configurations
LISTS = {
    "arch": "architectures, comma-separated: lenet,resnet18,convnext_tiny (see 'imgcls models')",
    "norm": "normalisations to compare: batch,group,layer,instance,none (ResNet, VGG, LeNet, SmallNet families)",
    "attn": "channel attentions to compare: none,se,eca,cbam",
    "pretrained": "starting weights to compare: none,auto (auto: the published weights where there are)",
    "image_size": "input sizes to compare in pixels: 28,32",
}
COMPARE_ONLY = ("handler", "config", "command", "out", "_started", "configs", "listed", "pick", "landscape", *LISTS)


def add_compare(sub: Any) -> None:
    """``imgcls compare``."""
    p = _add(
        sub,
        "compare",
        "Train several configurations on one split and compare accuracy and cost on this machine.",
        "  imgcls compare --data photos/ --arch resnet18,convnext_tiny --pretrained none,auto --epochs 5 --out cmp/\n"
        "  imgcls compare --data demo-run/digits --arch lenet,smallnet,resnet20,plain20 --epochs 8 --out cmp/\n"
        "  imgcls compare --data fashion-mnist/ --arch plain20,plain56,resnet20,resnet56 --time-budget 5m --out deg/\n"
        "  imgcls compare --data photos/ --arch resnet18 --norm batch,group --epochs 5 --pick 'latency<=20ms' --out n\n"
        "  imgcls compare --data photos/ --configs configs.yaml --epochs 5 --landscape --out cmp/\n"
        "  imgcls compare ... --out cmp/    # the same command again: continues where it stopped",
        _cmd_compare,
    )
    p.add_argument("--config", help="YAML with the training settings every configuration shares")
    p.add_argument("--configs", help="YAML list of configurations, each a mapping of training options "
                   "(- {name: small, arch: resnet20, lr: 0.05}); instead of the lists")  # fmt: skip
    p.add_argument("--listed", action="store_true",
                   help="pair the n-th values of the lists (--arch a,b --norm batch,group: 2 configurations) "
                   "instead of crossing them (4)")  # fmt: skip
    p.add_argument("--pick", default="accuracy",
                   help="the rule that picks DIR/best: accuracy (default), or constraints such as 'latency<=20ms', "
                   "'size<=10MB', 'params<=1M', 'macs<=500M', 'throughput>=500', 'train_time<=10m', 'accuracy>=0.9', "
                   "several joined by commas (the most accurate that meets them all)")  # fmt: skip
    p.add_argument("--landscape", action="store_true",
                   help="also the loss landscape of each configuration (Li et al. 2018: a filter-normalised 2-D "
                   "slice around the trained weights; sized to cost about its training time)")  # fmt: skip
    _add_config_options(p)
    for action in p._actions:
        if action.dest in LISTS:  # lists of values: the configurations
            action.type, action.metavar, action.help = None, "A,B", LISTS[action.dest]
        elif action.dest == "out":  # --out is the compare's folder
            action.help, action.required = "folder for the runs, the report and best/ (required)", True
            action.metavar = "DIR"


def _cmd_compare(args: argparse.Namespace) -> int:
    from imgcls.compare import compare, configurations
    from imgcls.compare.grid import parse_list

    lists = {key: parse_list(key, getattr(args, key)) for key in LISTS}
    configs, notes = configurations(lists, crossed=not args.listed, configs_file=args.configs)
    for note in notes:
        sys.stderr.write(f"compare: {note}\n")
    from imgcls.cli.options import data_specs

    options = data_specs({k: v for k, v in vars(args).items() if k not in COMPARE_ONLY})
    _allow_train_pixels(args, options)
    r = compare(configs, args.out, config=args.config, pick=args.pick, landscape=args.landscape, **options)
    print(summary_table(r.rows))
    for f in r.failed:
        print(f"failed: {f['name']}: {f['error']}")
    print(f"pick ({args.pick}): {r.pick.reason}")
    best = f"; best model: {r.best}" if r.best else ""
    print(f"report: {r.report} (compare.csv, compare.json beside it){best}")
    return 1 if r.failed or r.best is None else 0


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The report's table as text: a line per configuration."""
    if not rows:
        return "no configuration finished"
    metric = str(rows[0].get("metric", "top1"))
    split = str(rows[0].get("split", ""))
    split += ", optimistic" if rows[0].get("optimistic") else ""
    head = ("configuration", f"{metric} ({split})", "img/s", "latency", "params", "MACs", "size", "input", "train")
    lines = [
        (
            str(r["name"]) + (" *" if r.get("pareto") else ""),
            _num(r.get("accuracy"), "{:.4f}"),
            _num(r.get("throughput"), "{:,.0f}"),
            _num(r.get("latency_ms"), "{:.2f} ms"),
            _num(r.get("params"), "{:.2f}M", 1e-6),
            _num(r.get("macs"), "{:.1f}M", 1e-6),
            _num(r.get("size_bytes"), "{:.2f} MB", 1e-6),
            str(r.get("input") or "-"),
            _num(r.get("train_seconds"), "{:.1f} s" if (r.get("train_seconds") or 0) < 10 else "{:,.0f} s"),
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *lines, strict=True)]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
            for line in (head, *lines)]  # fmt: skip
    return "\n".join(text) + "\n(* on the Pareto front of accuracy against throughput)"


def _num(v: Any, fmt: str, scale: float = 1.0) -> str:
    return fmt.format(v * scale) if isinstance(v, (int, float)) else "-"
