"""Why the model says what it says: class-activation maps over the image.

Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization"), computed by captum's ``LayerGradCam``: the gradient of a class's
score with respect to the last convolutional feature map, averaged over the map into one weight
per channel, gives a weighted sum of the channels — where in the image the evidence for that
class lies. The map is upsampled to the model's input and laid over the image the model saw
(its own preprocessing: the center crop, or the letterboxed frame).

The feature map is the model's own: the last entry of timm's feature description
(``model.feature_info``: ``layer4`` of a ResNet, ``stages.3`` of a ConvNeXt, ``blocks.6`` of an
EfficientNet, ``layers.3`` of a Swin), stepping back to an earlier entry only where the last map is
smaller than 2 x 2 at the model's input size. A model without that description (LeNet, SmallNet,
AlexNet, VGG, torchvision's classifiers) is explained at its last convolutional map before the
classifier: the last module whose output is a (batch, channels, height, width) map, leaving out
adaptive pools, which only resize that map to the classifier's fixed grid (AlexNet's and VGG's
7 x 7), and ``nn.Identity`` placeholders. Either way the choice is checked on the output a forward
pass gives: a map laid out channels-last (Swin's NHWC stages) is weighed channels-first, and
tokens (a vision transformer's (batch, tokens, channels), or tokens after a patch embedding) are
refused in one line, as is an exported ``.onnx`` file (no gradients). The layer is named under
each overlay and in ``explanations.csv``; a map of fewer than :data:`FINE_CELLS` cells a side (a
ResNet's 2 x 2 at 64 px) is said to be coarse there, above the picture and on the command's line
(:func:`coarse_note`), since its few blocks cannot show where in the image the evidence lies.
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
CSV_NAME = "explanations.csv"  # the list of an explain's pictures, and the mark of its own files
FINE_CELLS = 4  # a map with fewer cells a side is coarse: its blocks are a third of the image or more
ADVISED_CELLS = 7  # the map a model at its usual input size gives (a ResNet's 7 x 7 at 224 px)


@dataclass
class Explanation:
    """One image: the model input it saw, and per explained class its probability and map."""

    path: str
    pixels: np.ndarray  # uint8 (S, S, 3): the model's input before normalisation
    labels: list[str]
    probabilities: list[float]
    maps: np.ndarray  # float (k, S, S) in [0, 1]
    layer: str = ""  # the module whose map is weighed (see feature_layer)
    grid: tuple[int, int] | None = None  # that map's height and width, in cells


@dataclass
class FeatureMap:
    """The map Grad-CAM weighs (:func:`feature_map`)."""

    name: str
    module: Any  # channels-first (a view of a channels-last map)
    grid: tuple[int, int]  # its height and width at the model's input size


def coarse_note(grid: tuple[int, int] | None, input_size: tuple[int, ...]) -> str:
    """'the map is 2 x 2 at this input size (64 px): coarse, ...' for a map of fewer than
    :data:`FINE_CELLS` cells a side, with the input size that would give :data:`ADVISED_CELLS`
    (its cells stay as many pixels); empty for a finer map."""
    if grid is None or min(grid) >= FINE_CELLS:
        return ""
    size = int(input_size[-1])
    cell = -(-size // max(1, grid[1]))
    n = ADVISED_CELLS
    return (f"the map is {grid[0]} x {grid[1]} at this input size ({size} px): coarse, a cell per {cell} px; "
            f"a model trained at --image-size {n * cell} or more gives {n} x {n}")  # fmt: skip


def feature_layer(model: Any, input_size: tuple[int, ...], *, arch: str | None = None) -> tuple[str, Any]:
    """(name, module) of the map Grad-CAM weighs: :func:`feature_map`'s."""
    found = feature_map(model, input_size, arch=arch)
    return found.name, found.module


def feature_map(model: Any, input_size: tuple[int, ...], *, arch: str | None = None) -> FeatureMap:
    """The map Grad-CAM weighs (see the module docstring), and its size in cells. For a
    channels-last map the module is a channels-first view of it (:func:`_channels_first`), since
    captum takes dimension 1 as the channels. A model without a map raises UserError naming
    ``arch``."""
    who = arch or type(model).__name__
    described = [(str(f["module"]), int(f["num_chs"])) for f in getattr(model, "feature_info", None) or []]
    seen = _output_shapes(model, input_size)
    found = _described_map(who, described, seen) if described else _last_map(who, seen)
    if found is None:
        raise UserError(
            f"explain: {who} has no spatial feature map of at least 2 x 2 at its {input_size[-2]} x "
            f"{input_size[-1]} input; Grad-CAM needs one"
        )
    name, channels_last = found
    module = model.get_submodule(name)
    shape = next(shape for n, _, shape in reversed(seen) if n == name and shape is not None and len(shape) == 4)
    grid = (shape[1], shape[2]) if channels_last else (shape[2], shape[3])
    return FeatureMap(name, _channels_first(module) if channels_last else module, (int(grid[0]), int(grid[1])))


def _output_shapes(model: Any, input_size: tuple[int, ...]) -> list[tuple[str, Any, tuple[int, ...] | None]]:
    """(name, module, output shape or None) of every module of one forward pass, in the order the
    pass ends them (a module called twice, twice)."""
    import torch

    seen: list[tuple[str, Any, tuple[int, ...] | None]] = []
    hooks = []
    for name, module in model.named_modules():
        if name:

            def record(m: Any, _inp: Any, out: Any, name: str = name) -> None:
                seen.append((name, m, tuple(out.shape) if isinstance(out, torch.Tensor) else None))

            hooks.append(module.register_forward_hook(record))
    param = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _described_map(who: str, described: list[tuple[str, int]], seen: list[Any]) -> tuple[str, bool] | None:
    """The last entry of timm's ``feature_info`` whose output is a map of at least 2 x 2, and
    whether it is channels-last: the layout is read off the output, where ``num_chs`` sits."""
    shapes = {name: shape for name, _, shape in seen}  # a module's last call
    last = shapes.get(described[-1][0])
    if last is not None and len(last) == 3:
        _refuse_tokens(who, described[-1][0], last)
    for name, chans in reversed(described):
        shape = shapes.get(name)
        if shape is None or len(shape) != 4:
            continue
        if shape[1] == chans and min(shape[2:]) >= 2:
            return name, False
        if shape[3] == chans and min(shape[1:3]) >= 2:
            return name, True
    return None


def _last_map(who: str, seen: list[Any]) -> tuple[str, bool] | None:
    """Without a feature description: the last (batch, channels, height, width) output of at
    least 2 x 2 that is neither an adaptive pool nor an ``nn.Identity``; tokens after it (a patch
    embedding's map followed by a transformer) mean there is no map the decision rests on."""
    from torch import nn

    skip = (nn.Identity, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    found = None
    for i, (_, module, shape) in enumerate(seen):
        if shape is not None and len(shape) == 4 and min(shape[2:]) >= 2 and not isinstance(module, skip):
            found = i
    if found is None:
        return None
    tokens = [(name, shape) for name, _, shape in seen[found + 1 :] if shape is not None and len(shape) == 3]
    if tokens:
        _refuse_tokens(who, *tokens[-1])
    return str(seen[found][0]), False


def _refuse_tokens(who: str, name: str, shape: tuple[int, ...]) -> None:
    raise UserError(
        f"explain: {who} has no spatial feature map (its last feature, {name}, is a transformer's "
        f"{shape[1]} tokens of {shape[2]} channels); Grad-CAM needs a convolutional network"
    )


def _channels_first(module: Any) -> Any:
    """An ``nn.Identity`` that sees ``module``'s (B, H, W, C) output as (B, C, H, W): a forward
    hook passes the output through it and back, the same values in the same memory, so the model
    computes what it computed and captum's hooks on the view see the map channels-first."""
    from torch import nn

    view = nn.Identity()
    module.register_forward_hook(lambda _m, _inp, out: view(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    return view


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
        found = feature_map(self.model, clf.preprocess.input_size, arch=clf.info.arch)
        self.layer_name, self.grid = found.name, found.grid
        self.note = coarse_note(found.grid, clf.preprocess.input_size)
        self.cam = LayerGradCam(self._scores, found.module)
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
            Explanation(
                path,
                pixels[i],
                [names[k] for k in ks],
                [float(probs[i, k]) for k in ks],
                maps[i],
                self.layer_name,
                self.grid,
            )
            for i, ((path, _), ks) in enumerate(zip(items, order, strict=True))
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


def overlay(pixels: np.ndarray, heat: np.ndarray, *, layer: str = "", alpha: float = 0.45) -> Image.Image:
    """The image with a map laid over it in a colour scale (matplotlib's ``jet``: blue for none,
    red for the strongest evidence), at :data:`PANEL` pixels; the ``layer`` whose map it is
    captioned along the bottom, inside the square (pages show overlays as squares)."""
    from matplotlib import colormaps

    colour = (colormaps["jet"](heat)[..., :3] * 255).astype(np.float32)
    mixed = (1 - alpha) * pixels.astype(np.float32) + alpha * colour
    image = Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8)).resize((PANEL, PANEL), Image.Resampling.BILINEAR)
    if layer:
        draw = ImageDraw.Draw(image)
        text = f"Grad-CAM: {layer}"[:32]
        right = draw.textbbox((4, PANEL - 13), text)[2]
        draw.rectangle((0, PANEL - 14, right + 3, PANEL), fill="white")
        draw.text((4, PANEL - 13), text, fill="black")
    return image


def strip(e: Explanation) -> Image.Image:
    """The image as the model saw it, then its explained classes side by side, captioned (the
    class and its probability above each map, the layer below; above the input, a coarse map's
    size)."""
    panels = [Image.fromarray(e.pixels).resize((PANEL, PANEL), Image.Resampling.BILINEAR)]
    coarse = coarse_note(e.grid, e.pixels.shape[:2])
    captions = [f"input; the map {e.grid[0]}x{e.grid[1]}: coarse" if coarse and e.grid else "input"]
    for label, p, heat in zip(e.labels, e.probabilities, e.maps, strict=True):
        panels.append(overlay(e.pixels, heat, layer=e.layer))
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
    per top class) and ``explanations.csv`` (with the layer explained, and a note where its map is
    coarse); unreadable files get a row with their error."""
    from imgcls.io import atomic_write_with, check_writable
    from imgcls.predict import Classifier, check_inputs, decode_for_model, iter_inputs

    check_inputs(inputs)
    folder = check_writable(out, folder=True)
    if Path(str(model)).suffix.lower() == ".onnx":
        raise UserError(f"{model}: an ONNX model cannot be explained (it has no gradients); give the model directory")
    earlier = earlier_outputs(folder)
    clf = Classifier.load(model, device=device, precision="fp32", backend="torch")
    explainer = Explainer(clf)
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    # a file in --out that explain did not write keeps its name: this run's pictures go around it
    names = {p.name for p in folder.iterdir() if p.name not in earlier}
    _remove_earlier(folder, earlier)
    batch: list[tuple[str, np.ndarray | None, str]] = []  # (path, model input or None, error)

    def flush() -> None:
        done = iter(explainer.explain([(p, px) for p, px, _ in batch if px is not None], top))
        for path, px, error in batch:
            if px is None:
                rows.append({"path": path, "explanation": "", "labels": "", "probabilities": "", "layer": "",
                             "note": "", "error": error})  # fmt: skip
                continue
            e = next(done)
            name = _unique(Path(e.path).stem + ".png", names)
            picture = strip(e)
            atomic_write_with(folder / name, lambda tmp: picture.save(tmp, format="PNG"))  # noqa: B023
            rows.append({"path": e.path, "explanation": name, "labels": ";".join(e.labels),
                         "probabilities": ";".join(f"{p:.6f}" for p in e.probabilities), "layer": e.layer,
                         "note": explainer.note, "error": ""})  # fmt: skip
        batch.clear()
        _write_rows(folder / CSV_NAME, rows)  # the list always names the pictures there are

    for path in iter_inputs(inputs):
        try:
            batch.append((path, decode_for_model(path, clf.preprocess), ""))
        except Exception as exc:  # ImageError and decoder bugs alike: a row with the reason
            batch.append((path, None, str(exc)))
        if len(batch) >= batch_size:
            flush()
    flush()
    return rows


def earlier_outputs(folder: Path) -> set[str]:
    """The pictures an earlier ``imgcls explain`` wrote into ``folder``: those its
    ``explanations.csv`` lists (plain names of ``.png`` files in the folder; nothing else is
    ever taken for explain's). A folder whose ``explanations.csv`` explain did not write is
    refused, since what is explain's own there cannot be told."""
    listing = folder / CSV_NAME
    if not listing.is_file():
        return set()
    try:
        with open(listing, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"path", "explanation"} <= set(reader.fieldnames or ()):
                raise ValueError("not explain's columns")
            listed = {str(r.get("explanation") or "") for r in reader}
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        raise UserError(
            f"{folder} holds an {CSV_NAME} that 'imgcls explain' did not write: choose another --out"
        ) from None
    return {
        n for n in listed
        if n.endswith(".png") and Path(n).name == n and (folder / n).is_file() and not (folder / n).is_symlink()
    }  # fmt: skip


def _remove_earlier(folder: Path, earlier: set[str]) -> None:
    """Remove an earlier explain's pictures (this run writes its own list), saying so."""
    from imgcls.console import info

    for name in earlier:
        (folder / name).unlink(missing_ok=True)
    if earlier:
        what = "picture" if len(earlier) == 1 else f"{len(earlier)} pictures"
        info(f"explain: removed the {what} of the earlier explain in {folder} "
             f"(listed in its {CSV_NAME}); the files explain did not write stay")  # fmt: skip


def _unique(name: str, taken: set[str]) -> str:
    stem, k = name[:-4], 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}.png"
    taken.add(name)
    return name


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    from imgcls.io import atomic_write_csv

    atomic_write_csv(path, ["path", "explanation", "labels", "probabilities", "layer", "note", "error"], rows)
