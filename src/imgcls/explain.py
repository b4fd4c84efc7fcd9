"""Why the model says what it says: class-activation maps over the image.

Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization"), computed by captum's ``LayerGradCam``: the gradient of a class's
score with respect to the last convolutional feature map, averaged over the map into one weight
per channel, gives a weighted sum of the channels — where in the image the evidence for that
class lies. The map is upsampled to the model's input and laid over the image the model saw
(its own preprocessing: the center crop, or the letterboxed frame).

The feature map is found, not configured: the last module, in the order the forward pass ends
them, whose output is a (batch, channels, height, width) map at least 2 x 2 — ``layer4`` of a
ResNet, the last stage of a ConvNeXt, ``conv_head`` of an EfficientNet, the feature stack of
AlexNet and VGG, the last convolutional block of LeNet and SmallNet, and the same for any timm
or torchvision classifier with convolutions. A model without one (a vision transformer), or an
exported ``.onnx`` file (no gradients), cannot be explained and says so.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from imgcls.errors import UserError

PANEL = 192  # pixels per side of each picture in an explanation


@dataclass
class Explanation:
    """One image: the model input it saw, and per explained class its probability and map."""

    path: str
    pixels: np.ndarray  # uint8 (S, S, 3): the model's input before normalisation
    labels: list[str]
    probabilities: list[float]
    maps: np.ndarray  # float (k, S, S) in [0, 1]


def feature_layer(model: Any, input_size: tuple[int, int, int]) -> tuple[str, Any]:
    """(name, module) of the last feature map of at least 2 x 2 (see the module docstring)."""
    import torch

    seen: list[tuple[str, Any]] = []
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(m: Any, _inp: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] >= 2 and out.shape[-2] >= 2:
                seen.append((name, m))

        hooks.append(module.register_forward_hook(record))
    param = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise UserError("this architecture has no convolutional feature map to explain (Grad-CAM needs one)")
    return seen[-1]


class Explainer:
    """Grad-CAM maps of a model directory's model (PyTorch, float32)."""

    def __init__(self, clf: Any) -> None:
        try:
            from captum.attr import LayerGradCam
        except ImportError as e:
            raise UserError("explanations need captum: pip install 'imgcls[explain]'") from e
        if not hasattr(clf.backend, "runtime"):
            raise UserError(
                f"{clf.info.path}: an ONNX model cannot be explained (it has no gradients); give the model directory"
            )
        import torch

        self.clf = clf
        self.model = clf.backend.model.float().eval()
        self.device = next(self.model.parameters()).device
        self.layer_name, layer = feature_layer(self.model, clf.preprocess.input_size)
        self.cam = LayerGradCam(self._scores, layer)
        self.torch = torch

    def _scores(self, x: Any) -> Any:
        """The model's evidence per class: its logits (for a binary model, -z and z in class order)."""
        z = self.model(x)
        if self.clf.task == "binary":
            z = self.torch.cat([-z, z] if self.clf.info.positive_index == 1 else [z, -z], dim=1)
        return z

    def maps(self, pixels: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """uint8 (B, S, S, 3) images and (B, k) class indices -> float (B, k, S, S) maps in [0, 1]."""
        from imgcls.data.preprocess import normalize_np

        x = self.torch.from_numpy(normalize_np(pixels, self.clf.preprocess)).to(self.device)
        return grad_cam(self.cam, x, classes)

    def explain(self, items: list[tuple[str, np.ndarray]], top: int = 3) -> list[Explanation]:
        """(path, uint8 model input) -> an explanation of its ``top`` most probable classes."""
        if not items:
            return []
        pixels = np.stack([p for _, p in items])
        probs = self.clf.probabilities(pixels)  # as predict gives them (test-time flip included)
        order = np.argsort(-probs, axis=1, kind="stable")[:, : max(1, min(top, probs.shape[1]))]
        maps = self.maps(pixels, order)
        if self.clf.info.tta == "flip":  # the model also looks at the mirror image: its map, mirrored back
            mirrored = np.ascontiguousarray(pixels[:, :, ::-1])
            maps = (maps + self.maps(mirrored, order)[..., ::-1]) / 2
        names = self.clf.label_names
        return [
            Explanation(path, pixels[i], [names[k] for k in order[i]], [float(probs[i, k]) for k in order[i]], maps[i])
            for i, (path, _) in enumerate(items)
        ]


def grad_cam(cam: Any, x: Any, classes: np.ndarray) -> np.ndarray:
    """A captum ``LayerGradCam`` over a normalised batch ``x`` (B, 3, S, S) for (B, k) class
    indices -> float (B, k, S, S) maps, each scaled to a peak of 1 (0 where no evidence)."""
    import torch
    from captum.attr import LayerAttribution

    size = tuple(x.shape[-2:])
    out = np.zeros((x.shape[0], classes.shape[1], *size), dtype=np.float32)
    for j in range(classes.shape[1]):
        target = torch.from_numpy(classes[:, j].astype(np.int64)).to(x.device)
        attr = cam.attribute(x, target=target, relu_attributions=True)
        m = LayerAttribution.interpolate(attr, size, interpolate_mode="bilinear")[:, 0].detach().float().cpu().numpy()
        peak = m.reshape(len(m), -1).max(axis=1)
        out[:, j] = m / np.where(peak > 0, peak, 1.0)[:, None, None]
    return np.clip(out, 0.0, 1.0)


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with a map laid over it in a colour scale (matplotlib's ``jet``: blue for none,
    red for the strongest evidence), at :data:`PANEL` pixels."""
    from matplotlib import colormaps

    colour = (colormaps["jet"](heat)[..., :3] * 255).astype(np.float32)
    mixed = (1 - alpha) * pixels.astype(np.float32) + alpha * colour
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8)).resize((PANEL, PANEL), Image.Resampling.BILINEAR)


def strip(e: Explanation) -> Image.Image:
    """The image as the model saw it, then its explained classes side by side, captioned."""
    panels = [Image.fromarray(e.pixels).resize((PANEL, PANEL), Image.Resampling.BILINEAR)]
    captions = ["input"]
    for label, p, heat in zip(e.labels, e.probabilities, e.maps, strict=True):
        panels.append(overlay(e.pixels, heat))
        captions.append(f"{label}: {'<0.1' if p < 0.001 else f'{100 * p:.1f}'}%")
    out = Image.new("RGB", (PANEL * len(panels), PANEL + 18), "white")
    draw = ImageDraw.Draw(out)
    for i, (panel, caption) in enumerate(zip(panels, captions, strict=True)):
        out.paste(panel, (i * PANEL, 18))
        draw.text((i * PANEL + 4, 3), caption[:30], fill="black")
    return out


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def explain_files(
    model: str | Path, inputs: list[str], out: str | Path, *, top: int = 3, device: str = "auto", batch_size: int = 16
) -> list[dict[str, Any]]:
    """``imgcls explain``: a PNG per input image in ``out`` (the input, then a Grad-CAM overlay
    per top class) and ``explanations.csv``; unreadable files get a row with their error."""
    from imgcls.io import atomic_write_with, check_writable
    from imgcls.predict import Classifier, check_inputs, decode_for_model, iter_inputs

    check_inputs(inputs)
    folder = check_writable(out, folder=True)
    if Path(str(model)).suffix.lower() == ".onnx":
        raise UserError(f"{model}: an ONNX model cannot be explained (it has no gradients); give the model directory")
    clf = Classifier.load(model, device=device, precision="fp32", backend="torch")
    explainer = Explainer(clf)
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    names: set[str] = set()
    batch: list[tuple[str, np.ndarray | None, str]] = []  # (path, model input or None, error)

    def flush() -> None:
        done = iter(explainer.explain([(p, px) for p, px, _ in batch if px is not None], top))
        for path, px, error in batch:
            if px is None:
                rows.append({"path": path, "explanation": "", "labels": "", "probabilities": "", "error": error})
                continue
            e = next(done)
            name = _unique(Path(e.path).stem + ".png", names)
            picture = strip(e)
            atomic_write_with(folder / name, lambda tmp: picture.save(tmp, format="PNG"))  # noqa: B023
            rows.append({"path": e.path, "explanation": name, "labels": ";".join(e.labels),
                         "probabilities": ";".join(f"{p:.6f}" for p in e.probabilities), "error": ""})  # fmt: skip
        batch.clear()

    for path in iter_inputs(inputs):
        try:
            batch.append((path, decode_for_model(path, clf.preprocess), ""))
        except Exception as exc:  # ImageError and decoder bugs alike: a row with the reason
            batch.append((path, None, str(exc)))
        if len(batch) >= batch_size:
            flush()
    flush()
    _write_rows(folder / "explanations.csv", rows)
    return rows


def _unique(name: str, taken: set[str]) -> str:
    stem, k = name[:-4], 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}.png"
    taken.add(name)
    return name


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    from imgcls.io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["path", "explanation", "labels", "probabilities", "error"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
