"""Pretrained weights: read a state dict safely, load it into a model for new classes, report.

Sources: a model directory (``config.json`` + ``model.safetensors``), a ``.safetensors`` file, a
``.pth/.pt/.bin/.ckpt`` file read with ``torch.load(weights_only=True)`` (never a fallback to
unpickling arbitrary objects, which can execute code), or the published ImageNet weights of timm
or torchvision (their own download and cache).

Transfer learning: every tensor whose name and shape match is copied; the classifier is left
freshly initialised when its shape differs (new classes); any other shape mismatch is an error,
because it means the weights belong to a different architecture.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.errors import UserError
from imgcls.models.registry import ModelEntry

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module", "net", "model_ema")
_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class LoadReport:
    """What a weight load did: tensors copied, tensors left new, source tensors not used."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.new:
            shown = ", ".join(self.new[:6]) + (" ..." if len(self.new) > 6 else "")
            parts.append(f"{len(self.new)} new: {shown}")
        if self.ignored:
            shown = ", ".join(self.ignored[:4]) + (" ..." if len(self.ignored) > 4 else "")
            parts.append(f"{len(self.ignored)} unused: {shown}")
        return "; ".join(parts)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside a training checkpoint ({'model': ..., 'optimizer': ...})."""
    if _is_state_dict(obj):
        state = dict(obj)
    else:
        state = {}
        if isinstance(obj, dict):
            for key in _WRAPPER_KEYS:
                if _is_state_dict(obj.get(key)):
                    state = dict(obj[key])
                    break
        if not state:
            raise UserError(f"{path}: no state dict (a mapping of names to tensors) found in it")
    for prefix in _PREFIXES:  # DDP, torch.compile and Lightning wrappers
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a model directory or a weights file, on the CPU."""
    p = Path(path)
    if p.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin", "model.pth"):
            if (p / name).is_file():
                return read_state_dict(p / name)
        raise UserError(f"{p}: a folder without model.safetensors (not a model directory)")
    if not p.is_file():
        raise UserError(f"no such weights file or model directory: {p}")
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(p), device="cpu"), p)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{p}: not a readable safetensors file ({e})") from e
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"refusing to load {p}: it holds Python objects that only unsafe unpickling could "
            "restore (and unpickling can run code); save a plain state dict or .safetensors"
        ) from e
    except Exception as e:
        raise UserError(f"{p}: cannot read weights ({str(e).splitlines()[0]})") from e
    return _unwrap(obj, p)


def load_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    classifier: str,
    source: str,
    partial: bool = False,
) -> LoadReport:
    """Copy matching tensors into ``model``; a differently shaped classifier stays new.

    Every other tensor of the model must come from ``state`` unless ``partial`` is set (for
    example to add attention blocks to a pretrained backbone): a missing one usually means the
    weights belong to a different architecture (resnet18 weights for a resnet34)."""
    own = model.state_dict()
    head = classifier + "."
    report = LoadReport(source=source)
    usable: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in state.items():
        if key not in own:
            report.ignored.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            if not key.startswith(head):
                mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)} in the model")
        else:
            usable[key] = value
    if mismatched:
        raise UserError(
            f"{source} does not fit this architecture: {len(mismatched)} tensor(s) differ in "
            f"shape, e.g. {mismatched[0]}"
        )
    if not usable:
        first = next(iter(state), "?")
        raise UserError(
            f"none of the {len(state)} tensors in {source} match this architecture "
            f"(file has e.g. {first!r}, model has {next(iter(own))!r}): weights of another model?"
        )
    new = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    missing = [k for k in new if not k.startswith(head)]
    if missing and not partial:
        raise UserError(
            f"{source} does not fit this architecture: {len(missing)} of its tensors are "
            f"missing, e.g. {missing[0]} (weights of a smaller variant?)"
        )
    model.load_state_dict(usable, strict=False)
    report.loaded = list(usable)
    report.new = new
    return report


#: what to do instead, in every error about published weights
INSTEAD = "train from scratch with --pretrained none, or give a weights file or model directory: --pretrained PATH"


def reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` seconds (a machine
    without network answers at once or not at all; a hub client would retry for a minute)."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_file_in_cache(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return found
    return None


def _timm_state_dict(entry: ModelEntry) -> dict[str, torch.Tensor]:
    """timm's published weights: from the Hugging Face cache when they are there, downloaded
    when the Hub answers, else a one-line error at once (no minute of retries)."""
    import logging
    from urllib.parse import urlparse

    import timm
    from huggingface_hub import constants

    assert entry.timm_weights
    name = entry.timm_weights
    overlay: dict[str, Any] = {}
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(pretrained_cfg, "hf_hub_id", None) if pretrained_cfg is not None else None
    cached = _hub_file_in_cache(repo) if repo else None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if cached is not None:
        overlay = {"file": cached}  # read the cached file itself: no request to the Hub at all
    elif constants.HF_HUB_OFFLINE or not reachable(host):
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{host} cannot be reached"
        raise UserError(
            f"cannot get timm's published weights for {name}: {why} and they are not in the cache; {INSTEAD}"
        )
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would precede our one-line error
    try:
        src = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay or None)
    except Exception as e:
        raise UserError(f"cannot get timm's published weights for {name}: {str(e).splitlines()[0]}; {INSTEAD}") from e
    finally:
        hub_log.setLevel(level)
    return src.state_dict()


def _torchvision_weights(entry: ModelEntry) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import os
    from urllib.parse import urlparse

    import torch.hub
    from torchvision.models import get_weight

    assert entry.torchvision_weights
    weights = get_weight(entry.torchvision_weights)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    host = urlparse(weights.url).hostname or "download.pytorch.org"
    if not os.path.isfile(cached) and not reachable(host):
        raise UserError(
            f"cannot get torchvision's weights {entry.torchvision_weights}: {host} cannot be reached and they "
            f"are not in the cache ({cached}); {INSTEAD}"
        )
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:
        raise UserError(
            f"cannot get torchvision's weights {entry.torchvision_weights}: {str(e).splitlines()[0]}; {INSTEAD}"
        ) from e
    tr = weights.transforms()
    cfg = {
        "mean": tuple(tr.mean),
        "std": tuple(tr.std),
        "interpolation": str(tr.interpolation.value),
        "crop_pct": int(tr.crop_size[0]) / int(tr.resize_size[0]),
    }
    return state, cfg


def resolve_source(entry: ModelEntry, pretrained: bool | str | Path) -> str:
    """'timm', 'torchvision' or a path; True/'default' picks the entry's published weights."""
    if pretrained is True or pretrained in ("default", "true", "yes"):
        if entry.timm_weights:
            return "timm"
        if entry.torchvision_weights:
            return "torchvision"
        raise UserError(
            f"{entry.name} has no published pretrained weights; pass a weights file or model "
            "directory, or train from scratch (--pretrained none)"
        )
    src = str(pretrained)
    if src == "timm" and not entry.timm_weights:
        raise UserError(f"timm publishes no weights for {entry.name}")
    if src == "torchvision" and not entry.torchvision_weights:
        raise UserError(f"torchvision publishes no weights for {entry.name}")
    return src


def load_pretrained(
    model: nn.Module,
    entry: ModelEntry,
    pretrained: bool | str | Path,
    *,
    partial: bool = False,
    class_names: list[str] | None = None,
    positive: str | None = None,
) -> LoadReport:
    """Load weights from ``pretrained`` (see :func:`resolve_source`) into a freshly built model
    and update its preprocessing config to the one the weights were trained with. From a model
    directory whose classes are known, with ``class_names`` (the new model's outputs), the
    classifier's rows are matched by class name: a class the model had keeps its row wherever
    it now sits, a new class starts fresh (continuing a model with new labels); a binary model's
    one output is kept for the same ``positive`` class, negated for the other one, else fresh."""
    src = resolve_source(entry, pretrained)
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {})
    classifier = str(cfg.get("classifier", "fc"))
    if src == "timm":
        state = _timm_state_dict(entry)
        source = f"timm {entry.timm_weights}"
    elif src == "torchvision":
        state, tv_cfg = _torchvision_weights(entry)
        cfg.update(tv_cfg)
        source = f"torchvision {entry.torchvision_weights}"
    else:
        path = Path(src).expanduser()
        if not path.exists():
            raise UserError(
                f"pretrained weights not found: {src} (expected a model directory, a weights "
                "file (.safetensors/.pth/.pt/.bin), 'timm' or 'torchvision')"
            )
        if path.is_file() and path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise UserError(f"{path}: not a weights file ({', '.join(WEIGHT_SUFFIXES)})")
        state = read_state_dict(path)
        source = str(path)
        config_file = path / "config.json"
        if path.is_dir() and config_file.is_file():
            whole = json.loads(config_file.read_text(encoding="utf-8"))
            saved = whole.get("pretrained_cfg", {})
            cfg.update({k: saved[k] for k in ("mean", "std", "interpolation", "crop_pct") if k in saved})
            if class_names is not None and whole.get("label_names"):
                old = list(whole["label_names"])
                ends = (whole.get("positive_class") or old[-1], positive or class_names[-1])
                state, source = _head_by_name(model, state, classifier, old, class_names, source, ends)
    return load_state(model, state, classifier=classifier, source=source, partial=partial)


def _head_by_name(
    model: nn.Module, state: dict[str, torch.Tensor], classifier: str, old: list[str], new: list[str], source: str,
    positives: tuple[str, str],
) -> tuple[dict[str, torch.Tensor], str]:  # fmt: skip
    """``state`` with the classifier's rows rearranged from the ``old`` classes' order to the
    ``new`` one's (a new class keeps the fresh model's row); no class shared, the classifier starts
    fresh. A single-output head (binary: the logit of ``positives`` = (old positive, new
    positive)) is kept for the same positive class, negated for the other class of the same two."""
    own = model.state_dict()
    head = [k for k in state if k.startswith(classifier + ".") and k in own]
    if not head or (old == new and positives[0] == positives[1]):
        return state, source
    if all(state[k].shape[0] == 1 and own[k].shape[0] == 1 for k in head):
        return _binary_head(state, head, old, new, positives, source)
    rows = [old.index(n) if n in old else -1 for n in new]
    if any(state[k].shape[0] != len(old) or own[k].shape[0] != len(new) for k in head):
        return state, source
    if all(r < 0 for r in rows):  # nothing in common: not copied by position
        return {k: v for k, v in state.items() if k not in head}, f"{source} (no class in common: a new classifier)"
    out = dict(state)
    for k in head:
        t = own[k].clone()
        for i, r in enumerate(rows):
            if r >= 0:
                t[i] = state[k][r]
        out[k] = t
    kept = sum(r >= 0 for r in rows)
    return out, f"{source} (classifier rows matched by class name: {kept} of {len(new)} classes kept)"


def _binary_head(
    state: dict[str, torch.Tensor], head: list[str], old: list[str], new: list[str], positives: tuple[str, str],
    source: str,
) -> tuple[dict[str, torch.Tensor], str]:  # fmt: skip
    """A binary model's one logit: kept for the same positive class, negated (it is the other
    class's log-odds) when the positive is the old negative of the same two classes, else left
    out (a new classifier)."""
    if positives[0] == positives[1]:
        return state, source
    if sorted(old) == sorted(new) and len(old) == 2:
        said = f"{source} (its one output negated: {positives[1]} is the positive class now)"
        return {**state, **{k: -state[k] for k in head}}, said
    return {k: v for k, v in state.items() if k not in head}, f"{source} (other classes: a new classifier)"
