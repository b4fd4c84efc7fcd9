"""The configurations a compare trains: lists on the command line, crossed (every combination)
or listed (the n-th value of each list together), or the entries of a ``--configs`` YAML file.

A configuration is a name and the training options that set it apart; everything else (the data,
its split, the seed, the epochs or the time budget, any other training option given) is common
to all of them, so that the comparison is fair. In a crossed grid an option the architecture
does not take (``--norm`` for ConvNeXt) is dropped for it, and ``--pretrained auto`` for an
architecture without published weights is ``none``: each difference is trained once.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.errors import UserError

#: the options the command line takes as lists, in the order a configuration's name shows them
GRID_KEYS = ("arch", "norm", "attn", "pretrained", "image_size")
#: how a configuration's name shows each option (the architecture stands alone)
SHORT = {"norm": "norm", "attn": "attn", "pretrained": "pretrained", "image_size": "size"}
#: options that are the same for every configuration: the data and its split, the seed, how long
COMMON_ONLY = (
    "data", "val_data", "image_root", "val_split", "max_val", "split_by", "detections", "det_threshold",
    "det_categories", "crop_margin", "corrections", "seed", "epochs", "time_budget", "out", "task", "positive",
)  # fmt: skip


@dataclass
class Configuration:
    """One configuration: its name (its run folder's) and its own training options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """'arch resnet20, norm group' (what sets it apart)."""
        return ", ".join(f"{k.replace('_', '-')} {v}" for k, v in self.options.items()) or "the common settings"


def parse_list(key: str, text: str | None) -> list[Any]:
    """``"resnet20,resnet56"`` -> ``["resnet20", "resnet56"]`` (``image_size``: whole numbers)."""
    if text is None:
        return []
    values = [v.strip() for v in str(text).split(",")]
    flag = "--" + key.replace("_", "-")
    if not all(values):
        raise UserError(f"{flag} {text!r}: an empty name in the list (write them comma-separated: a,b,c)")
    if key == "image_size":
        try:
            return [int(v) for v in values]
        except ValueError:
            raise UserError(f"{flag} {text!r}: expected whole numbers of pixels, e.g. 28,32") from None
    return values


def from_lists(lists: dict[str, list[Any]], *, crossed: bool = True) -> list[dict[str, Any]]:
    """The options of each configuration: every combination of the lists (``crossed``), or the
    n-th value of each list together (lists of one value go with every configuration)."""
    keys = [k for k in GRID_KEYS if lists.get(k)]
    if not keys:
        return []
    if crossed:
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(lists[k] for k in keys))]
    lengths = {len(lists[k]) for k in keys} - {1}
    if len(lengths) > 1:
        said = ", ".join(f"--{k.replace('_', '-')} {len(lists[k])}" for k in keys)
        raise UserError(f"--listed pairs the n-th value of each list, but the lists differ in length ({said})")
    n = max(lengths, default=1)
    return [{k: lists[k][i if len(lists[k]) > 1 else 0] for k in keys} for i in range(n)]


def read_configs(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a ``--configs`` file: a YAML list of mappings of training options (each with
    an optional ``name``), or a mapping whose ``configurations`` key holds that list."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"--configs {path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise UserError(f"--configs {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(raw, dict) and "configurations" in raw:
        raw = raw["configurations"]
    if not isinstance(raw, list) or not raw or not all(isinstance(e, dict) for e in raw):
        raise UserError(f"--configs {path}: expected a list of configurations, each a mapping of training "
                        "options (- arch: resnet20)")  # fmt: skip
    for entry in raw:
        common = sorted(k for k in entry if k in COMMON_ONLY)
        if common:
            raise UserError(f"--configs {path}: {common[0]} is common to every configuration (the same data, split, "
                            "seed and training length for all): give it on the command line")  # fmt: skip
    return [dict(e) for e in raw]


def applicable(options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The options as the architecture takes them, and a note for each one changed: a norm or
    attention the family has no option for is dropped; ``pretrained auto`` without published
    weights is ``none`` (the same training)."""
    from imgcls.engine.plan import resolve_pretrained
    from imgcls.models.registry import get_entry

    arch = options.get("arch")
    if not arch or arch == "auto":
        return dict(options), []
    entry = get_entry(str(arch))
    out, notes = dict(options), []
    for key in ("norm", "attn"):
        if out.get(key) is not None and key not in entry.options:
            out.pop(key)
            notes.append(f"{arch} has no {key} option: it is trained once, with its own {key} layers")
    if out.get("pretrained") == "auto" and resolve_pretrained("auto", str(arch)) is None:
        out["pretrained"] = "none"
        notes.append(f"{arch} has no published weights: --pretrained auto trains it from scratch, as none does (once)")
    return out, notes


def check_options(options: dict[str, Any], where: str) -> None:
    """A configuration's options name what exists, said in one line before anything trains."""
    from imgcls.models.layers import check_attn, check_norm
    from imgcls.models.registry import get_entry

    arch = options.get("arch")
    entry = get_entry(str(arch)) if arch and arch != "auto" else None
    for key, check in (("norm", check_norm), ("attn", check_attn)):
        if options.get(key) is not None:
            check(str(options[key]))
            if entry is not None and key not in entry.options:
                raise UserError(f"{where}: {arch} has no {key} option (ResNet, VGG, LeNet, SmallNet and the CIFAR "
                                "ResNet families have)")  # fmt: skip


def name_of(options: dict[str, Any], varying: list[str]) -> str:
    """'resnet20', 'resnet20-norm_group-size_32': the architecture, then the other options that
    vary between the configurations and this one sets; safe as a folder name."""
    parts = [str(options.get("arch", "auto"))]
    parts += [f"{SHORT.get(k, k)}_{options[k]}" for k in varying if k != "arch" and k in options]
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "-".join(parts)).strip("._") or "config"


def configurations(
    lists: dict[str, list[Any]], *, crossed: bool = True, configs_file: str | Path | None = None
) -> tuple[list[Configuration], list[str]]:
    """The configurations to compare (named, each once) and the notes on what was adjusted."""
    given = [k for k in GRID_KEYS if lists.get(k)]
    if configs_file is not None and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"--configs lists the configurations: put {flags} in its entries, or leave --configs out")
    entries = read_configs(configs_file) if configs_file is not None else from_lists(lists, crossed=crossed)
    if not entries:
        raise UserError("nothing to compare: give the configurations as lists (--arch A,B,C and --norm, --attn, "
                        "--pretrained, --image-size) or as a --configs FILE.yaml")  # fmt: skip
    notes: list[str] = []
    chosen: list[tuple[str | None, dict[str, Any]]] = []
    for k, entry in enumerate(entries):
        name = entry.pop("name", None)
        if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*", str(name)):
            raise UserError(f"--configs entry {k + 1}: name {name!r} is not a folder name (letters, digits, _ . = + -)")
        where = f"--configs entry {k + 1}" if configs_file is not None else f"configuration {entry}"
        if configs_file is not None:
            check_options(entry, where)
            options = entry
        else:
            options, said = applicable(entry)
            notes += [n for n in said if n not in notes]
            check_options(options, where)
        if any(options == o for _, o in chosen) and name is None:
            continue  # the same training twice (a dropped option): once
        chosen.append((None if name is None else str(name), options))
    varying = [
        k for k in dict.fromkeys(k for _, o in chosen for k in o) if len({repr(o.get(k)) for _, o in chosen}) > 1
    ]
    out = [Configuration(n or name_of(o, varying), o) for n, o in chosen]
    seen: dict[str, Configuration] = {}
    for c in out:
        if c.name in seen:
            raise UserError(f"two configurations are named {c.name!r} ({seen[c.name].describe()}; {c.describe()}): "
                            "give them names (name: in --configs)")  # fmt: skip
        seen[c.name] = c
    return out, notes
