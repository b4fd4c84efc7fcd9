"""imgcls: image classification from a folder of labelled images to a validated, portable model
and predictions over millions of images.

The public API is imported lazily (module ``__getattr__``), so ``import imgcls`` is cheap and a
command pays only for what it uses.

>>> import imgcls
>>> "resnet50" in imgcls.list_models()
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgcls._lazy import lazy_getattr

__version__ = "0.1.0"

_API = {
    "create_model": "imgcls.models",
    "list_models": "imgcls.models",
    "summarize_arch": "imgcls.models",
    "train": "imgcls.api",
    "load": "imgcls.api",
}

__all__ = ["__version__", "create_model", "list_models", "load", "summarize_arch", "train"]

if TYPE_CHECKING:
    from imgcls.api import load, train
    from imgcls.models import create_model, list_models, summarize_arch


__getattr__ = lazy_getattr(__name__, _API)
