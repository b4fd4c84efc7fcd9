"""Lazy package attributes: ``imgcls``, ``imgcls.models`` and ``imgcls.data`` name their public
API up front but import each module on first use, so ``import imgcls`` (and the command line's
start-up) does not pay for torch, timm or PIL until something needs them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``names[attr]`` (a module path) on
    first access and keeps the value in the package."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
