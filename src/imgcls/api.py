"""The Python API behind ``imgcls.train``, ``imgcls.load`` ...: composes the library's parts the
way the command line does, for notebooks and scripts."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from imgcls.artifacts import read_history
from imgcls.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    load_yaml,
)
from imgcls.errors import UserError

_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}


def _owner(key: str) -> str:
    for section, cls in _SECTIONS.items():
        if key in {f.name for f in dataclasses.fields(cls)}:
            return section
    raise UserError(f"unknown training option {key!r}")


def make_run_config(config: str | Path | dict[str, Any] | None = None, **options: Any) -> RunConfig:
    """A :class:`RunConfig` from a YAML file (or mapping) with keyword overrides
    (``epochs=3``, ``arch="resnet18"``, ``lr=0.01`` ...; each goes to its section)."""
    base: dict[str, Any] = {}
    if config is not None:
        base = dict(load_yaml(config)) if not isinstance(config, dict) else dict(config)
    if "data" in base and not isinstance(base["data"], dict):  # the flat key `data: x` (or a list), not the section
        flat_data = base.pop("data")
        base.setdefault("data_flat", flat_data)
    sections: dict[str, dict[str, Any]] = {s: dict(base.pop(s, {}) or {}) for s in _SECTIONS}
    if "data_flat" in base:
        sections["data"]["data"] = base.pop("data_flat")
    for key, value in base.items():  # flat keys in the YAML are allowed too
        sections[_owner(key)][key] = value
    for key, value in options.items():
        if value is not None:
            sections[_owner(key)][key] = value
    data = sections["data"].get("data")
    if isinstance(data, (list, tuple)):  # several specs: the first is --data, the others more_data
        if not data:
            raise UserError("no training data given (--data SPEC)")
        if sections["data"].get("more_data") and (options.get("data") is None or options.get("more_data") is not None):
            raise UserError("data is a list of specs and more_data is given too: list every spec in data")
        sections["data"]["data"], sections["data"]["more_data"] = str(data[0]), [str(s) for s in data[1:]]
    elif options.get("data") is not None and options.get("more_data") is None:
        sections["data"]["more_data"] = []  # data given as an option replaces every spec of the file
    return RunConfig(**{s: from_dict(cls, sections[s], s) for s, cls in _SECTIONS.items()})


def train(
    data: str | Path | list[str | Path] | None = None,
    *,
    out: str | Path | None = None,
    config: str | Path | dict[str, Any] | None = None,
    resume: bool = False,
    started: float | None = None,
    **options: Any,
) -> Path:
    """Train a classifier and return the run directory (``RUN_DIR/model`` is the best model).

    Takes the options of ``imgcls train`` as keywords: ``imgcls.train("photos/", out="runs/a",
    arch="resnet18", epochs=5, pretrained="none")``.
    """
    from imgcls.data.sources.detections import detection_crops
    from imgcls.engine.fit import fit
    from imgcls.report.plots import plot_curves

    if data is not None:
        options["data"] = [str(s) for s in data] if isinstance(data, (list, tuple)) else str(data)
    cfg = make_run_config(config, out=str(out) if out is not None else None, **options)
    if not cfg.data.data and not resume:
        raise UserError("no training data given (--data SPEC)")
    requested = given_options(config, options)

    last_plot = [0.0]

    def curves(run: Path, history: list[dict[str, Any]]) -> None:
        # matplotlib costs about a second: redraw at most once a minute (and once at the end)
        if time.monotonic() - last_plot[0] > 60:
            plot_curves(history, run / "curves.png")
            last_plot[0] = time.monotonic()

    last_plot[0] = time.monotonic()  # the first epochs of a long run draw at one minute
    run = fit(cfg, resume=resume, started=started, on_epoch_end=curves, table_hook=detection_crops, requested=requested)
    if os.environ.get("RANK", "0") == "0":
        from imgcls.predict import exported_onnx

        history = read_history(run)
        if history:
            plot_curves(history, run / "curves.png")
        saved = run_config(run)  # what the run was made with (a resumed run's own settings)
        if (saved.train.export_onnx or saved.train.export_int8) and exported_onnx(run / "model") is None:
            export_quietly(run / "model")
        if saved.train.export_int8 and exported_onnx(run / "model") is not None:
            quantize_quietly(run / "model")
    return run


def given_options(config: str | Path | dict[str, Any] | None, options: dict[str, Any]) -> dict[str, Any]:
    """The options a user gave, flat (``--config`` file keys, then keyword options): what a
    resumed run compares with the options its run was started with."""
    base: dict[str, Any] = {}
    if config is not None:
        raw = dict(load_yaml(config)) if not isinstance(config, dict) else dict(config)
        for key, value in raw.items():
            if key in _SECTIONS and isinstance(value, dict):
                base.update(value)
            else:
                base[key] = value
    base.update({k: v for k, v in options.items() if v is not None})
    return {k: v for k, v in base.items() if isinstance(v, (str, int, float, bool)) or _texts(v)}


def _texts(value: Any) -> bool:
    """A list of text (``more_data``: the specs after the first ``--data``)."""
    return isinstance(value, list) and all(isinstance(s, str) for s in value)


def run_config(run: str | Path) -> RunConfig:
    """The resolved configuration of a training run (``RUN_DIR/config.yaml``)."""
    return from_dict(RunConfig, load_yaml(Path(run) / "config.yaml"), "config.yaml")


def quantize_quietly(model_dir: Path) -> None:
    """``model.int8.onnx`` beside ``model.onnx`` (``--export-int8``); a refusal (accuracy) or a
    graph ONNX Runtime cannot quantise is said, and the run stays complete."""
    from imgcls.artifacts import current_int8
    from imgcls.console import info

    if current_int8(model_dir) is not None:
        return
    try:
        from imgcls.quantize import quantize_int8

        r = quantize_int8(model_dir, model_dir / "model.onnx")
        info(
            f"wrote {r.path}: validation {r.metric} {r.fp32:.4f} (fp32) -> {r.int8:.4f} (int8), "
            f"decisions agree on {100 * r.agreement:.1f}% of {r.validation_images} images"
        )
    except Exception as e:  # the float32 model is complete and usable
        info(f"not quantised to int8 ({str(e).splitlines()[0]})")


def export_quietly(model_dir: Path) -> None:
    """``model.onnx`` beside the weights, so ``imgcls predict`` can start without torch; a model
    ONNX cannot express, or a missing onnx install, only costs that speed-up."""
    from imgcls.console import info

    try:
        from imgcls.export import export_onnx

        report, _ = export_onnx(model_dir)
        info(f"exported {report.path} (ONNX Runtime agrees within {report.max_prob_diff:.1e})")
    except ImportError:
        info("not exported to ONNX: install imgcls[onnx] for fast-starting predictions")
    except Exception as e:  # the model stays usable through PyTorch
        info(f"not exported to ONNX ({str(e).splitlines()[0]}); predictions run on PyTorch")


def load(model: str | Path, **kwargs: Any) -> Any:
    """A :class:`~imgcls.predict.Classifier` for a model directory or an exported ``.onnx``."""
    from imgcls.predict import Classifier

    return Classifier.load(model, **kwargs)
