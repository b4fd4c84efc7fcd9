"""The model directory: ``config.json`` + ``model.safetensors`` in timm's hub layout.

``config.json`` holds ``architecture``, ``num_classes``, ``label_names``, ``model_args`` and a
``pretrained_cfg`` with the preprocessing (``input_size``, ``mean``, ``std``, ``interpolation``,
``crop_pct``) exactly as timm writes them, so for timm architectures
``timm.create_model("local-dir:MODEL", pretrained=True)`` loads the directory unchanged. imgcls
adds its own keys beside them: ``task``, ``positive_class``, ``thresholds``, ``imgcls``
(registry name and options, resize mode) and ``provenance`` (data, run, metrics, time).
The folder is replaced as a whole (config and weights together); weights are read with
safetensors only. The training run's
history (``RUN_DIR/metrics.jsonl``, one JSON line per epoch) is read and written here too.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcls.config import PreprocessConfig
from imgcls.errors import UserError
from imgcls.io import atomic_dir, atomic_write_text

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from imgcls.data.table import DataTable

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
EXPORTS = ("model.onnx", "model.int8.onnx")  # made from the weights: stale once they change


@dataclass
class ModelInfo:
    """What a model directory says about its model."""

    arch: str
    num_outputs: int
    label_names: list[str]
    task: str = "multiclass"
    positive_class: str | None = None
    thresholds: list[float] = field(default_factory=list)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    norm: str | None = None
    attn: str | None = None
    tta: str = "none"  # the test-time augmentation the model was trained for: none | flip
    temperature: float = 1.0  # calibration: logits are divided by it before softmax / sigmoid
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def trained_on(self) -> list[str]:
        """Every data spec the model was trained on (``train --data``, given once or more)."""
        specs = [self.provenance.get("data"), *(self.provenance.get("more_data") or [])]
        return [str(s) for s in specs if s]

    @property
    def positive_index(self) -> int:
        """Binary: the positive class's index in ``label_names`` (the second by default)."""
        return self.label_names.index(self.positive_class) if self.positive_class in self.label_names else 1

    def make_task(self) -> Any:
        from imgcls.tasks import Task

        return Task(
            self.task,
            list(self.label_names),
            positive=self.positive_index,
            thresholds=list(self.thresholds),
            temperature=self.temperature,
        )


def _timm_args(model: nn.Module) -> dict[str, Any] | None:
    """timm's reconstruction arguments when timm can rebuild the model from JSON, else None."""
    try:
        from timm.models._input import get_model_args
    except ImportError:
        return None
    if not hasattr(model, "_model_args") and not hasattr(model, "default_cfg"):
        return None
    try:
        args = get_model_args(model)
        json.dumps(args)
    except (TypeError, ValueError, AttributeError):
        return None
    return args


def save_model(
    model: nn.Module,
    folder: str | Path,
    *,
    label_names: list[str],
    preprocess: PreprocessConfig,
    task: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/config.json`` and ``folder/model.safetensors`` (atomically)."""
    from safetensors.torch import save_file

    from imgcls.models.registry import get_entry

    out = Path(folder)
    arch: dict[str, Any] = dict(getattr(model, "imgcls_arch", {}) or {})
    if "arch" not in arch:
        raise ValueError("save_model needs a model built by imgcls.create_model")
    entry = get_entry(arch["arch"])
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    num_outputs = int(arch["num_classes"])
    timm_args = _timm_args(model) if entry.timm_name else None
    pretrained_cfg = {
        **preprocess.to_pretrained_cfg(),
        "num_classes": num_outputs,
        "classifier": cfg.get("classifier", "fc"),
        "first_conv": cfg.get("first_conv"),
    }
    config: dict[str, Any] = {
        "architecture": entry.timm_name or entry.name,
        "num_classes": num_outputs,
        "label_names": list(label_names),
    }
    if timm_args is not None:
        config["model_args"] = timm_args
    config["pretrained_cfg"] = {k: v for k, v in pretrained_cfg.items() if v is not None}
    config.update(task or {"task": "multiclass"})
    from imgcls import __version__

    config["imgcls"] = {
        "version": __version__,
        "arch": entry.name,
        "norm": arch.get("norm"),
        "attn": arch.get("attn"),
        "resize_mode": preprocess.resize_mode,
        "timm_loadable": timm_args is not None,
    }
    config["provenance"] = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(provenance or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # one folder, swapped in whole: a kill never leaves new weights beside an old config, and an
    # export of the old weights (model.onnx) goes with them
    with atomic_dir(out, replaces=(CONFIG, WEIGHTS, *EXPORTS)) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def info_from_config(cfg: dict[str, Any], path: Path) -> ModelInfo:
    """A :class:`ModelInfo` from the contents of a ``config.json``."""
    try:
        extra = cfg.get("imgcls", {})
        pre = dict(cfg.get("pretrained_cfg", {}))
        pre["resize_mode"] = extra.get("resize_mode", "crop")
        temperature = float(cfg.get("temperature", 1.0))
        if not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be a positive number, not {temperature}")
        return ModelInfo(
            arch=str(extra.get("arch") or cfg["architecture"]),
            num_outputs=int(cfg["num_classes"]),
            label_names=[str(n) for n in cfg.get("label_names") or []],
            task=str(cfg.get("task", "multiclass")),
            positive_class=cfg.get("positive_class"),
            thresholds=[float(t) for t in cfg.get("thresholds", [])],
            preprocess=PreprocessConfig.from_pretrained_cfg(pre),
            norm=extra.get("norm"),
            attn=extra.get("attn"),
            tta=str(cfg.get("test_time_augmentation", "none")),
            temperature=temperature,
            provenance=dict(cfg.get("provenance", {})),
            path=path,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: malformed model config ({e})") from None


def read_config(folder: str | Path) -> dict[str, Any]:
    """The raw ``config.json`` of a model directory."""
    path = Path(folder)
    cfg_file = path / CONFIG
    if not path.exists():
        raise UserError(f"model not found: {folder} (expected a model directory or an .onnx file)")
    if not path.is_dir() or not cfg_file.is_file() or not (path / WEIGHTS).is_file():
        raise UserError(f"{folder}: not a model directory (needs {CONFIG} and {WEIGHTS})")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{cfg_file}: malformed model config ({e})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_file}: malformed model config (not a JSON object)")
    return cfg


def read_info(folder: str | Path) -> ModelInfo:
    return info_from_config(read_config(folder), Path(folder))


def load_model(folder: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo]:
    """Rebuild the network of a model directory and load its weights (strictly)."""
    from safetensors.torch import load_file

    from imgcls.models.factory import build_model

    info = read_info(folder)
    assert info.path is not None
    model, _ = build_model(info.arch, num_classes=info.num_outputs, norm=info.norm, attn=info.attn)
    try:
        state = load_file(str(info.path / WEIGHTS), device=str(device))
    except Exception as e:
        raise UserError(f"{info.path / WEIGHTS}: unreadable weights ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{info.path}: weights do not match {info.arch} ({str(e).splitlines()[0]})") from None
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg.update(info.preprocess.to_pretrained_cfg())
    setattr(model, "pretrained_cfg", cfg)  # noqa: B010
    return model.eval(), info


def model_name(model: str | Path) -> str:
    """A short name for a model directory or file: ``runs/birds/model`` -> ``birds``,
    ``exports/birds.onnx`` -> ``birds``."""
    p = Path(str(model)).resolve()
    if p.suffix == ".onnx":
        return p.stem
    return p.parent.name if p.name == "model" and p.parent.name else p.name


def write_history(run: Path, history: list[dict[str, Any]]) -> None:
    """``RUN_DIR/metrics.jsonl``: one JSON line per epoch, written atomically."""
    atomic_write_text(run / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))


def read_history(run: str | Path) -> list[dict[str, Any]]:
    """The epochs recorded in ``RUN_DIR/metrics.jsonl`` (none when the file is missing)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def model_home(model: str | Path) -> tuple[Path, str]:
    """The folder that holds ``model`` (what goes beside it, an evaluation's report, goes there)
    and a prefix naming the model in it: a model directory's parent (its run folder), the same
    for an ``.onnx`` file inside a model directory; a loose ``.onnx`` file's own folder, named by
    the file (``exports/birds.onnx`` -> ``exports``, ``birds``)."""
    p = Path(str(model)).resolve()
    if p.suffix.lower() == ".onnx" and not (p.parent / CONFIG).is_file():
        return p.parent, p.stem
    return (p.parent.parent if p.suffix.lower() == ".onnx" else p.parent), ""


def run_folder(model: str | Path, info: ModelInfo) -> Path | None:
    """The training run ``model`` belongs to: the run folder holding it (it has ``config.yaml``;
    a copied run is its own, whatever its config's provenance says), else the run its provenance
    names while that is there, else None."""
    home, loose = model_home(model)
    if not loose and (home / "config.yaml").is_file():
        return home
    run = info.provenance.get("run")
    return Path(str(run)) if run and Path(str(run)).is_dir() else None


def run_split_rows(table: DataTable, run: Path, split: str) -> np.ndarray:
    """The rows of ``table`` that the run put in ``split`` (``RUN/splits.csv``: a run carves its
    validation rows out of the data's training rows, so the data's own word is out of date);
    none without the listing."""
    import numpy as np

    from imgcls.data.splits import read_splits_csv, split_lookup

    listing = read_splits_csv(run / "splits.csv")
    if not listing:
        return np.zeros(0, dtype=np.int64)
    listed = split_lookup(table, listing)
    # Images the run skipped (e.g. blanks without a detection) are not listed; when the run
    # split by a group column (location, sequence), they belong to their group's side.
    for column in ("location", "sequence"):
        values = table.columns.get(column)
        if values is None:
            continue
        sides: dict[str, set[str]] = {}
        for side, g in zip(listed, values, strict=True):
            if side is not None and g:
                sides.setdefault(str(g), set()).add(side)
        if sides and all(len(v) == 1 for v in sides.values()):
            listed = [next(iter(sides[str(g)])) if side is None and str(g) in sides else side
                      for side, g in zip(listed, values, strict=True)]  # fmt: skip
            break
    return np.array([i for i, side in enumerate(listed) if side == split], dtype=np.int64)


def int8_path(onnx_file: Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``."""
    return onnx_file.with_name(onnx_file.name.removesuffix(".onnx") + ".int8.onnx")


def current_int8(model_dir: Path) -> Path | None:
    """The directory's ``model.int8.onnx`` when it was made from the directory's current model
    (see :func:`current_export`), else None."""
    return current_export(model_dir, "model.int8.onnx")


def current_export(model_dir: Path, name: str) -> Path | None:
    """``model_dir/name`` (``model.onnx``, ``model.int8.onnx``) when it was made from the model
    the directory holds now, else None. An export carries the ``config.json`` it was made from
    (metadata key ``imgcls_config``; a new model writes a new config: its time, its metrics), and
    that is compared, not modification times, which a copy (``cp -r``, rsync, an unpacked
    archive) can leave in any order."""
    f = Path(model_dir) / name
    if not f.is_file():
        return None
    try:
        return f if export_matches(model_dir, onnx_metadata(f)) else None
    except Exception:  # not readable as ONNX (truncated, no onnx package): no current export
        return None


def export_matches(model_dir: Path, metadata: dict[str, str]) -> bool:
    """Whether an export's metadata carries ``model_dir``'s current ``config.json``."""
    try:
        carried = json.loads(metadata.get("imgcls_config") or "null")
        return isinstance(carried, dict) and carried == read_config(model_dir)
    except (ValueError, UserError):
        return False


def onnx_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's metadata (key -> text), read without building an inference session."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
