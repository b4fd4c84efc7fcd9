"""Data sources, detected from the ``--data SPEC``: one reader per kind.

- a folder of class sub-folders, or one holding ``train/ val/ test/`` class-folder trees;
- a folder of MNIST-format IDX files;
- a ``.csv`` manifest;
- a ``.json`` in COCO Camera Traps format;
- a Camera Trap Data Package (Camtrap DP: its folder or its ``datapackage.json``);

and, on top of any of them, MegaDetector detections (:mod:`imgcls.data.sources.detections`):
a row per detection crop, for training, evaluation and prediction.
"""

from __future__ import annotations

from pathlib import Path

from imgcls.data.sources.camtrapdp import is_camtrapdp, read_camtrapdp
from imgcls.data.sources.coco import is_coco_camera_traps, load_json, read_coco
from imgcls.data.sources.folder import read_folder
from imgcls.data.sources.idx import is_idx_dir, read_idx
from imgcls.data.sources.manifest import read_manifest
from imgcls.data.table import DataTable
from imgcls.errors import UserError

__all__ = ["is_class_folders", "load_source"]


def is_class_folders(path: Path) -> bool:
    """A folder :func:`load_source` reads as class folders (not a Camtrap DP package, not IDX
    files): every folder in it can become a class."""
    return path.is_dir() and not is_camtrapdp(path) and not is_idx_dir(path)


def load_source(spec: str | Path, *, multilabel: bool | None = None, image_root: str | Path | None = None) -> DataTable:
    """Index the labelled images named by ``spec`` (see the module docstring).

    ``multilabel``: force (True) or forbid (False) multi-label reading of CSV / COCO sources;
    None infers it from the data. ``image_root``: base folder for relative paths in CSV / JSON
    files (default: the file's own folder).
    """
    path = Path(spec).expanduser()
    root = Path(image_root).expanduser() if image_root else None
    if not path.exists():
        raise UserError(f"data not found: {spec}")
    if is_camtrapdp(path):
        return read_camtrapdp(path, multilabel=multilabel, image_root=root)
    if path.is_dir():
        return read_folder(path) if is_class_folders(path) else read_idx(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_manifest(path, multilabel=multilabel, image_root=root)
    if suffix == ".json":
        data = load_json(path)
        if is_coco_camera_traps(data):
            return read_coco(path, multilabel=multilabel, image_root=root, data=data)
        raise UserError(f"{path}: a JSON file that is not COCO Camera Traps (images/annotations/categories)")
    raise UserError(
        f"{spec}: not a data source (expected a folder, a .csv manifest, COCO Camera Traps .json, a Camtrap DP package)"
    )
