"""The catalog behind ``imgcls models``: facts about each registered architecture (parameters and
multiply-adds at its default input size, preprocessing, published weights).

Measuring every entry builds it on the meta device and traces one forward pass (about 8 s for
the whole registry on 2 cores), so the facts are cached per library versions in
``$XDG_CACHE_HOME/imgcls`` (default ``~/.cache/imgcls``); an unwritable cache is simply skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from imgcls.models.registry import get_entry, list_models


@dataclass
class CatalogRow:
    name: str
    family: str
    source: str
    params: int
    macs: int
    input_size: list[int]
    pretrained: list[str]
    options: list[str]
    description: str


def _versions() -> str:
    parts = []
    for pkg in ("imgcls", "torch", "torchvision", "timm"):
        try:
            parts.append(f"{pkg}{version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg}?")
    return "-".join(parts)


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imgcls" / f"catalog-{_versions()}.json"


def _measure(name: str) -> dict[str, Any]:
    from imgcls.models.summary import summarize_arch

    s = summarize_arch(name)
    return {"params": s.total_params, "macs": s.total_macs, "input_size": s.input_size}


def catalog(pattern: str | None = None, *, use_cache: bool = True) -> list[CatalogRow]:
    """One row per registered architecture matching ``pattern``."""
    path = cache_file()
    cached: dict[str, Any] = {}
    if use_cache and path.is_file():
        with contextlib.suppress(OSError, ValueError):
            cached = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    changed = False
    for name in list_models(pattern):
        entry = get_entry(name)
        if name not in cached:
            cached[name] = _measure(name)
            changed = True
        facts = cached[name]
        pretrained = [s for s, w in (("timm", entry.timm_weights), ("torchvision", entry.torchvision_weights)) if w]
        rows.append(
            CatalogRow(
                name=name,
                family=entry.family,
                source=entry.source,
                params=int(facts["params"]),
                macs=int(facts["macs"]),
                input_size=list(facts["input_size"]),
                pretrained=pretrained,
                options=list(entry.options),
                description=entry.description,
            )
        )
    if changed and use_cache:
        with contextlib.suppress(OSError):
            from imgcls.io import atomic_write_text

            atomic_write_text(path, json.dumps(cached, indent=1, sort_keys=True))
    return rows


def rows_as_dicts(rows: list[CatalogRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
