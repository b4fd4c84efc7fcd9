"""The rule that picks the recommended model (``--pick``), and the Pareto front of the report.

``--pick accuracy`` (the default) takes the most accurate configuration (on a tie, the one with
the higher throughput). A constraint, ``latency<=20ms``, ``size<=10MB``, ``params<=1M``,
``macs<=500M``, ``throughput>=1000``, ``train_time<=10m``, ``accuracy>=0.9`` (several
comma-separated: all must hold), takes the most accurate of the configurations that meet it.
Sizes are decimal (1 MB = 1,000,000 bytes; KiB, MiB, GiB are binary); latency is in
milliseconds and training time in seconds unless a unit says otherwise. The pick comes with its
reason, in one line.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from imgcls.errors import UserError

#: the metric a rule names -> (the row's key, how it is shown, the units it may be written in)
METRICS: dict[str, tuple[str, Callable[[float], str], dict[str, float]]] = {
    "latency": ("latency_ms", lambda v: f"{v:.2f} ms", {"": 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}),
    "size": ("size_bytes", lambda v: f"{v / 1e6:.2f} MB",
             {"": 1e6, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}),
    "params": ("params", lambda v: f"{v / 1e6:.3g}M params", {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}),
    "macs": ("macs", lambda v: f"{v / 1e6:.4g}M MACs", {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}),
    "throughput": ("throughput", lambda v: f"{v:.0f} img/s", {"": 1.0, "img/s": 1.0, "k": 1e3}),
    "train_time": ("train_seconds", lambda v: f"{v:.0f} s of training",
                   {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}),
    "accuracy": ("accuracy", lambda v: f"{v:.4f}", {"": 1.0, "%": 0.01}),
}  # fmt: skip
ALIASES = {"time": "train_time", "training_time": "train_time", "top1": "accuracy", "mac": "macs"}
OPS: dict[str, Callable[[Any, Any], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class Constraint:
    metric: str  # a key of METRICS
    op: str
    value: float  # in the row's unit (ms, bytes, count, img/s, seconds, share)
    text: str  # as written

    def holds(self, row: dict[str, Any]) -> bool:
        v = row.get(METRICS[self.metric][0])
        return isinstance(v, (int, float)) and OPS[self.op](v, self.value)

    def shown(self, row: dict[str, Any]) -> str:
        v = row.get(METRICS[self.metric][0])
        return METRICS[self.metric][1](float(v)) if isinstance(v, (int, float)) else "not measured"


def parse_rule(text: str) -> list[Constraint]:
    """``accuracy`` -> [] (the most accurate); ``latency<=20ms,size<=10MB`` -> its constraints."""
    rule = text.strip()
    if rule.lower() in ("accuracy", "top1", "best", ""):
        return []
    out = []
    for part in rule.split(","):
        found = re.fullmatch(
            r"\s*([A-Za-z_][A-Za-z_0-9]*)\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([A-Za-zµ/%]*)\s*", part
        )
        if not found:
            raise UserError(f"--pick {text!r}: write 'accuracy' or constraints like latency<=20ms, size<=10MB, "
                            f"params<=1M, throughput>=500 (comma-separated)")  # fmt: skip
        name, op, number, unit = found.groups()
        metric = ALIASES.get(name.lower(), name.lower())
        if metric not in METRICS:
            raise UserError(f"--pick {text!r}: unknown measure {name!r} (one of: {', '.join(METRICS)})")
        units = METRICS[metric][2]
        if unit.lower() not in units:
            known = ", ".join(u for u in units if u) or "none"
            raise UserError(f"--pick {text!r}: {metric} in {unit!r}? (units: {known})")
        out.append(Constraint(metric, op, float(number) * units[unit.lower()], part.strip()))
    return out


@dataclass
class Pick:
    row: dict[str, Any] | None  # the chosen configuration's row; None when none meets the rule
    reason: str


def ranked(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with an accuracy, most accurate first; on a tie, the higher throughput first."""
    usable = [r for r in rows if isinstance(r.get("accuracy"), (int, float))]
    return sorted(usable, key=lambda r: (r["accuracy"], r.get("throughput") or 0.0), reverse=True)


def pick(rows: Sequence[dict[str, Any]], rule: str = "accuracy") -> Pick:
    """The configuration ``rule`` recommends among ``rows`` (each with ``name``, ``accuracy``, the
    metric's name ``metric`` and the measures of :data:`METRICS`), with its reason."""
    constraints = parse_rule(rule)
    order = ranked(rows)
    if not order:
        return Pick(None, "no configuration has an accuracy to compare")
    metric = str(order[0].get("metric", "accuracy"))
    meeting = [r for r in order if all(c.holds(r) for c in constraints)]
    if not meeting:  # the closest on each constraint some configuration misses
        missed = [c for c in constraints if not all(c.holds(r) for r in order)]
        closest = [(c, min(order, key=partial(_distance, c))) for c in missed]
        if len(closest) == 1:
            said = f"{closest[0][1]['name']}, {closest[0][0].shown(closest[0][1])}"
        else:
            said = "; ".join(f"on {c.metric} {r['name']}, {c.shown(r)}" for c, r in closest)
        return Pick(None, f"none of the {len(order)} configurations has {rule} (the closest: {said})")
    best = meeting[0]
    said = f"{best['name']}: the highest {metric} ({best['accuracy']:.4f})"
    if constraints:
        own = ", ".join(c.shown(best) for c in constraints)
        said += f" of the {len(meeting)} of {len(order)} configurations with {rule} ({own})"
        left = [r for r in order if r not in meeting]
        if left:
            said += "; left out: " + ", ".join(f"{r['name']} ({_failed(constraints, r)})" for r in left[:4])
            said += f" and {len(left) - 4} more" if len(left) > 4 else ""
    elif len(order) > 1:
        nxt = order[1]
        if nxt["accuracy"] == best["accuracy"]:
            said += f", tied with {nxt['name']}; the faster ({best.get('throughput', 0):.0f} img/s against "
            said += f"{nxt.get('throughput', 0):.0f})"
        else:
            said += f"; next {nxt['name']} ({nxt['accuracy']:.4f})"
    return Pick(best, said)


def _failed(constraints: list[Constraint], row: dict[str, Any]) -> str:
    return ", ".join(c.shown(row) for c in constraints if not c.holds(row))


def _distance(c: Constraint, row: dict[str, Any]) -> float:
    v = row.get(METRICS[c.metric][0])
    return abs(float(v) - c.value) if isinstance(v, (int, float)) else float("inf")


def pareto_front(rows: Sequence[dict[str, Any]], x: str = "throughput", y: str = "accuracy") -> set[str]:
    """The names of the rows no other row beats on both ``x`` and ``y`` (higher is better on
    both): the configurations worth choosing between on accuracy against speed."""
    usable = [r for r in rows if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]
    front = set()
    for r in usable:
        beaten = any(o[x] >= r[x] and o[y] >= r[y] and (o[x] > r[x] or o[y] > r[y]) for o in usable)
        if not beaten:
            front.add(str(r["name"]))
    return front
