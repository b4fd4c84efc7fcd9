"""Architectures: the registry, ``create_model``, pretrained weights and per-layer summaries."""

from imgcls.models.factory import build_model, classifier_name, create_model, preprocess_config
from imgcls.models.layers import ATTNS, NORMS
from imgcls.models.registry import ModelEntry, get_entry, list_models, register_model
from imgcls.models.summary import ModelSummary, summarize, summarize_arch
from imgcls.models.weights import LoadReport, load_state, read_state_dict

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
