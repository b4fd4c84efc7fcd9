"""``imgcls compare``: which architecture, normalisation and start for *this* data on *this*
machine.

Every configuration (:mod:`~imgcls.compare.grid`) trains as an ordinary run in ``DIR/runs/NAME``
on one split drawn once (:mod:`~imgcls.compare.runs`), with the same seed and the same epochs or
time budget; is evaluated on the held-out split and measured with the engine predict would use
here (:mod:`~imgcls.compare.measure`); optionally gets its loss landscape
(:mod:`~imgcls.compare.landscape`). A rule picks the recommended model
(:mod:`~imgcls.compare.pick`), copied to ``DIR/best``; the report is ``DIR/compare.html`` with
``compare.csv`` and ``compare.json`` (:mod:`~imgcls.compare.report`).

Each configuration's outcome is kept in ``DIR/results/NAME.json`` as soon as it is measured, so a
compare that is stopped (Ctrl-C, kill -9, a reboot) and run again continues where it stopped:
finished configurations are not trained again, a half-trained run resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.compare.grid import Configuration, configurations
from imgcls.compare.pick import Pick
from imgcls.errors import UserError

__all__ = ["CompareResult", "Configuration", "compare", "configurations"]

Say = Callable[[str], Any]
#: a configuration's failure is said, recorded and the others go on, whatever it is (torch's
#: RuntimeErrors included: an input too small for an architecture, memory); Ctrl-C still stops it all
FAILURES = (Exception,)


@dataclass
class CompareResult:
    folder: Path
    rows: list[dict[str, Any]]  # a row per configuration measured, in the order given
    failed: list[dict[str, str]]  # name, error
    pick: Pick
    best: Path | None  # DIR/best, the recommended model directory
    report: Path
    notes: list[str] = field(default_factory=list)


def compare(
    configs: list[Configuration],
    out: str | Path,
    *,
    config: str | Path | dict[str, Any] | None = None,
    pick: str = "accuracy",
    landscape: bool = False,
    show: Say | None = None,
    **options: Any,
) -> CompareResult:
    """Train, measure and compare ``configs`` (:func:`~imgcls.compare.grid.configurations`) in
    the folder ``out``. ``config`` (a YAML file or mapping) and ``options`` are the training
    options common to every configuration (``data=``, ``epochs=`` or ``time_budget=``, ``lr=``...)."""
    from imgcls.compare.pick import parse_rule
    from imgcls.compare.runs import claim, shared_split
    from imgcls.console import info

    say = show or info
    parse_rule(pick)  # a mistyped rule is said before hours of training
    folder = Path(out).expanduser()
    common = _absolute({k: v for k, v in options.items() if v is not None})
    base, runs = _checked(configs, config, common)
    for spec in (base.data.data, *base.data.more_data):
        _outside_data(folder, spec)
    claim(folder)
    _same_settings(folder, base)
    earlier = {c.name: _read_result(folder, c) for c in configs}  # (another configuration of the name: refused)
    table, listing = shared_split(base, folder, say)
    results, failed = [], []
    for k, c in enumerate(configs):
        say(f"compare: [{k + 1}/{len(configs)}] {c.name} ({c.describe()})")
        try:
            results.append(_configuration(folder, c, runs[c.name], earlier[c.name], (table, listing), landscape, say))
        except FAILURES as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            reason = first if isinstance(e, UserError) else f"{type(e).__name__}: {first}".rstrip(": ")
            say(f"compare: {c.name} failed: {reason}")
            failed.append({"name": c.name, "error": reason})
            _write_result(folder, c, {"error": reason})
    return _conclude(folder, base, results, failed, listing, pick, say)


def _outside_data(folder: Path, data: str | None) -> None:
    """An --out inside a class-folder tree is refused before anything is written: its runs would
    become a class of the data (each run refused it apart, after loading the data)."""
    from imgcls.engine.fit import inside_class_folders

    if inside_class_folders(folder / "runs", data):
        raise UserError(f"--out {folder} is inside the data folder {data}: the runs' files would become a class "
                        "of the data; choose an --out outside it")  # fmt: skip


def _absolute(options: dict[str, Any]) -> dict[str, Any]:
    """Paths as absolute paths: the runs record them, and a compare continued from another folder
    gives its runs the same options."""
    out = dict(options)
    for key in ("data", "val_data", "image_root", "detections", "cache_dir", "corrections"):
        if out.get(key):
            out[key] = os.path.abspath(os.path.expanduser(str(out[key])))
    if out.get("more_data"):
        out["more_data"] = [os.path.abspath(os.path.expanduser(str(s))) for s in out["more_data"]]
    return out


def _checked(
    configs: list[Configuration], config: str | Path | dict[str, Any] | None, common: dict[str, Any]
) -> tuple[Any, dict[str, tuple[Any, dict[str, Any]]]]:
    """The common configuration and each configuration's run settings (its ``RunConfig`` and the
    options it was given), every one checked before anything trains."""
    from imgcls.api import given_options, make_run_config
    from imgcls.config import check_config
    from imgcls.engine.fit import absolute_paths

    base = make_run_config(config, **common)
    absolute_paths(base)
    if not base.data.data:
        raise UserError("no data given (--data SPEC)")
    if not base.train.epochs and not base.train.time_budget:
        raise UserError("give every configuration the same training: --epochs N or --time-budget DURATION")
    check_config(base)
    runs = {}
    for c in configs:
        given = {**common, **c.options}
        try:
            cfg = make_run_config(config, **given)
            absolute_paths(cfg)
            check_config(cfg)
        except UserError as e:  # which configuration: a --configs file may list many
            raise UserError(f"configuration {c.name!r}: {e}") from None
        runs[c.name] = (cfg, given_options(config, given))
    return base, runs


#: the common settings a continued compare may change: where and how a run is carried out. The
#: others (early stopping, the exports, threads: what trains, and the engine and threads its
#: latency and throughput are measured with) would mix two settings in one table
FREE = frozenset({"workers", "cache_dir", "cache_max_gb", "checkpoint_minutes"})


def _said(value: Any) -> str:
    """A setting as a person writes it (None: the default)."""
    return "the default" if value is None else repr(value) if isinstance(value, str) else str(value)


def _same_settings(folder: Path, base: Any) -> None:
    """The settings every configuration shares (``DIR/settings.json``): written by the first
    compare into the folder; one continuing it must give the same, or its runs would differ. Until
    a run has started, a compare that stopped early (a mistyped option, bad data) is replaced."""
    from imgcls.config import to_dict
    from imgcls.io import atomic_write_text

    now = json.loads(json.dumps(to_dict(base)))
    now["train"].pop("out", None)
    path = folder / "settings.json"
    if not any((folder / "runs").glob("*")):  # nothing trained yet: its settings and split are drawn again
        for stale in (path, folder / "splits.csv"):
            stale.unlink(missing_ok=True)
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = [f"{'data after the first' if k == 'more_data' else k} {_said(before[s].get(k))}, given {_said(v)}"
                   for s in now for k, v in now[s].items()
                   if s in before and k not in FREE and before[s].get(k) != v]  # fmt: skip
        if changed:
            raise UserError(f"{folder} holds a compare with other common settings ({'; '.join(changed[:3])}): run it "
                            "with the settings it started with to continue it, or choose another --out")  # fmt: skip
        return
    atomic_write_text(path, json.dumps(now, indent=1) + "\n")


def _configuration(
    folder: Path, c: Configuration, run: tuple[Any, dict[str, Any]], done: dict[str, Any] | None,
    data: tuple[Any, Any], landscape: bool, say: Say,
) -> dict[str, Any]:  # fmt: skip
    """One configuration's result: ``done``, the one a compare recorded before, else trained (or
    continued) and measured now; its loss landscape added when asked for and missing."""
    from imgcls.compare.measure import measure
    from imgcls.compare.runs import split_hook, train_run

    cfg, requested = run
    table, listing = data
    cfg.train.out = str(folder / "runs" / c.name)
    if done is not None and "error" not in done:
        say(f"compare: {c.name}: trained and measured earlier ({done['measured']['split']} "
            f"{_headline(done)}): not trained again")  # fmt: skip
    else:  # new, or failed before: continued where its run stands (a complete run is not trained again)
        seconds = train_run(cfg, requested, split_hook(listing), say)
        model = Path(cfg.train.out) / "model"
        measured = measure(model, evaluation=_evaluation(cfg, listing), say=say)
        done = {"train_seconds": round(seconds, 2), "measured": measured.as_dict()}
        _write_result(folder, c, done)
    if landscape and ("landscape" not in done or "error" in done["landscape"]):
        try:  # the landscape's failure is its own: the configuration stays trained and measured
            done["landscape"] = _landscape(cfg, c, table, listing, float(done["train_seconds"]), say)
        except FAILURES as e:
            done["landscape"] = {"error": f"{type(e).__name__}: {str(e).strip()[:200]}"}
            say(f"compare: {c.name}: no loss landscape ({done['landscape']['error']})")
        _write_result(folder, c, done)
    return {"configuration": c, **done}


def _headline(done: dict[str, Any]) -> str:
    m = done["measured"]["metrics"]
    key = "top1" if "top1" in m else "mAP"
    return f"{key} {m.get(key, float('nan')):.4f}"


def _evaluation(cfg: Any, listing: Any) -> dict[str, Any]:
    """evaluate's options for the held-out split: the test split, else the validation split (a
    separate ``--val-data`` is evaluated whole); detection crops as trained."""
    d = cfg.data
    test = any(split == "test" for _, _, split in listing)
    where: dict[str, Any] = {"split": "test" if test else "val"}
    if not test and d.val_data:  # the validation data, whole: it chose each run's best epoch too
        where = {"data": d.val_data, "split": "all", "optimistic": True}
    if d.detections:
        where.update(detections=d.detections, det_threshold=d.det_threshold, det_categories=d.det_categories,
                     crop_margin=d.crop_margin)  # fmt: skip
    return {**where, "image_root": d.image_root}


def _landscape(cfg: Any, c: Configuration, table: Any, listing: Any, budget: float, say: Say) -> dict[str, Any]:
    from imgcls.compare.landscape import landscape
    from imgcls.compare.runs import rows_in

    rows = rows_in(table, listing, "train")
    s = landscape(Path(cfg.train.out) / "model", table, rows, budget=budget, seed=cfg.train.seed)
    if "error" not in s:
        say(f"compare: {c.name}: loss landscape on {s['steps']}x{s['steps']} points over {s['images']} training "
            f"images in {s['seconds']:.1f} s (training took {budget:.1f} s)")  # fmt: skip
    return s


def _result_path(folder: Path, c: Configuration) -> Path:
    return folder / "results" / f"{c.name}.json"


def _read_result(folder: Path, c: Configuration) -> dict[str, Any] | None:
    """What a compare recorded of ``c`` before; a record of other options under the same name is refused."""
    path = _result_path(folder, c)
    if not path.is_file():
        return None
    done = json.loads(path.read_text(encoding="utf-8"))
    if done.get("options") != _jsonable(c.options):
        raise UserError(f"{folder} has a configuration {c.name!r} trained with other options ({done.get('options')}, "
                        f"given {c.options}): name it otherwise, or compare in another --out")  # fmt: skip
    return dict(done["result"])


def _write_result(folder: Path, c: Configuration, result: dict[str, Any]) -> None:
    from imgcls.io import atomic_write_text

    path = _result_path(folder, c)
    path.parent.mkdir(exist_ok=True)
    record = {"name": c.name, "options": _jsonable(c.options), "result": result}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(options, default=str))


def _conclude(
    folder: Path, base: Any, results: list[dict[str, Any]], failed: list[dict[str, str]], listing: Any, rule: str,
    say: Say,
) -> CompareResult:  # fmt: skip
    """The rows, the pick, ``DIR/best`` and the report."""
    from imgcls.artifacts import read_history
    from imgcls.compare.pick import pareto_front
    from imgcls.compare.pick import pick as choose
    from imgcls.compare.report import write_report

    rows = [_row(folder, r) for r in results]
    busy = _retime(folder, rows, say)
    front = pareto_front(rows)
    for r in rows:
        r["pareto"] = r["name"] in front
    chosen = choose(rows, rule)
    best = _copy_best(folder, chosen)
    histories = {r["name"]: read_history(folder / r["run"]) for r in rows}
    document = {
        "settings": _settings(base), "machine": _machine(), "split": _split_counts(listing),
        "configurations": rows, "failed": failed, "timing_note": busy,
        "pick": {"rule": rule, "name": chosen.row["name"] if chosen.row else None, "reason": chosen.reason,
                 "model": str(best) if best else None},
    }  # fmt: skip
    page = write_report(folder, document, histories)
    return CompareResult(folder, rows, failed, chosen, best, page)


def _retime(folder: Path, rows: list[dict[str, Any]], say: Say) -> str | None:
    """Latency and throughput of every configuration timed again together, in interleaved rounds
    (:func:`~imgcls.compare.measure.retime`), so that the table compares figures of one moment."""
    from imgcls.compare.measure import busy_note, retime

    if len(rows) < 2:
        return None
    say(f"compare: timing the {len(rows)} models again, in turns")
    timed = retime({r["name"]: folder / r["model"] for r in rows})
    for r in rows:
        r["latency_ms"], r["throughput"] = timed[r["name"]]
    note = busy_note()
    if note:
        say(f"compare: note: {note}")
    return note


def _row(folder: Path, r: dict[str, Any]) -> dict[str, Any]:
    """A configuration's flat row: its options, the held-out metrics, the measures."""
    from imgcls.artifacts import read_history

    c: Configuration = r["configuration"]
    m = r["measured"]
    key = "top1" if "top1" in m["metrics"] else "mAP"
    history = read_history(folder / "runs" / c.name)
    row = {"name": c.name, **c.options, "metric": "top-1" if key == "top1" else key, "accuracy": m["metrics"].get(key),
           **m["metrics"]}  # fmt: skip
    row.update({k: m[k] for k in ("throughput", "latency_ms", "params", "macs", "size_bytes", "engine", "tta",
                                  "split", "optimistic", "batch")})  # fmt: skip
    size = m.get("input_size") or []
    row["input"] = f"{size[1]}x{size[2]}" if len(size) == 3 else None  # throughput and MACs are at this size
    row.update(
        train_seconds=r["train_seconds"], epochs=len(history), run=f"runs/{c.name}", model=f"runs/{c.name}/model"
    )
    if "landscape" in r:
        row["landscape"] = r["landscape"]
    return row


def _copy_best(folder: Path, chosen: Pick) -> Path | None:
    """``DIR/best``: a copy of the recommended model directory (replaced as a whole); removed
    when no configuration meets the rule (a stale best would be mistaken for this one)."""
    import shutil

    from imgcls.io import atomic_dir

    target = folder / "best"
    if chosen.row is None:
        if target.is_dir():
            shutil.rmtree(target)
        return None
    source = folder / chosen.row["model"]
    old = tuple(p.name for p in target.iterdir()) if target.is_dir() else ()
    with atomic_dir(target, replaces=old) as tmp:
        for f in source.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    return target


def _settings(base: Any) -> dict[str, Any]:
    d, t = base.data, base.train
    return {"data": d.data, "val_data": d.val_data, "epochs": t.epochs, "time_budget": t.time_budget, "seed": t.seed}


def _machine() -> dict[str, Any]:
    from imgcls.runtime import cpu_name, cpu_tier, physical_cores

    return {"cpu": cpu_name(), "tier": cpu_tier(), "cores": physical_cores()}


def _split_counts(listing: Any) -> dict[str, int]:
    return {s: sum(1 for _, _, x in listing if x == s) for s in ("train", "val", "test")}
