"""Architectures: the registry, ``create_model``, pretrained weights and per-layer summaries.

Names are imported on first use, so the option names (``NORMS``, ``ATTNS``) are available to
the command line without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgcls._lazy import lazy_getattr

_NAMES = {
    "build_model": "imgcls.models.factory",
    "classifier_name": "imgcls.models.factory",
    "create_model": "imgcls.models.factory",
    "preprocess_config": "imgcls.models.factory",
    "ATTNS": "imgcls.models.options",
    "NORMS": "imgcls.models.options",
    "ModelEntry": "imgcls.models.registry",
    "get_entry": "imgcls.models.registry",
    "list_models": "imgcls.models.registry",
    "register_model": "imgcls.models.registry",
    "ModelSummary": "imgcls.models.summary",
    "summarize": "imgcls.models.summary",
    "summarize_arch": "imgcls.models.summary",
    "LoadReport": "imgcls.models.weights",
    "load_state": "imgcls.models.weights",
    "read_state_dict": "imgcls.models.weights",
}

__all__ = [
    "ATTNS",
    "NORMS",
    "LoadReport",
    "ModelEntry",
    "ModelSummary",
    "build_model",
    "classifier_name",
    "create_model",
    "get_entry",
    "list_models",
    "load_state",
    "preprocess_config",
    "read_state_dict",
    "register_model",
    "summarize",
    "summarize_arch",
]

if TYPE_CHECKING:
    from imgcls.models.factory import build_model, classifier_name, create_model, preprocess_config
    from imgcls.models.options import ATTNS, NORMS
    from imgcls.models.registry import ModelEntry, get_entry, list_models, register_model
    from imgcls.models.summary import ModelSummary, summarize, summarize_arch
    from imgcls.models.weights import LoadReport, load_state, read_state_dict


__getattr__ = lazy_getattr(__name__, _NAMES)
