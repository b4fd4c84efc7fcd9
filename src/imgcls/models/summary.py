"""Per-layer tables in the style of the classic AlexNet table: for every leaf module, its output
shape, parameters, activation memory and multiply-accumulates (MACs).

Shapes and parameters come from forward hooks; MACs from ``torch.utils.flop_counter`` (which
counts 2 FLOPs per multiply-accumulate of convolutions and matrix products; element-wise ops,
pooling and activations count 0, as in the papers' tables). The forward pass runs on the ``meta``
device by default: no memory is allocated and no arithmetic is done, so even a 600M-parameter
model is summarised in well under a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

BYTES_PER_FLOAT32 = 4


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int]
    params: int
    memory_kb: float
    macs: int


@dataclass
class ModelSummary:
    arch: str
    input_size: list[int]
    total_params: int
    trainable_params: int
    total_macs: int
    layers: list[LayerRow] = field(default_factory=list)

    @property
    def layer_macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def activation_kb(self) -> float:
        return sum(r.memory_kb for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "input_size": list(self.input_size),
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "total_macs": self.total_macs,
            "layers": [asdict(r) for r in self.layers],
        }

    def table(self) -> str:
        """The table as text, with totals."""
        head = ("Layer", "Type", "Output shape", "Params", "Memory (KB)", "MACs")
        rows = [
            (
                r.name,
                r.type,
                "x".join(str(d) for d in r.output_shape),
                f"{r.params:,}",
                f"{r.memory_kb:,.1f}",
                f"{r.macs:,}",
            )
            for r in self.layers
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
        right = (False, False, True, True, True, True)

        def fmt(cells: tuple[str, ...]) -> str:
            out = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
            return "  ".join(out).rstrip()

        rule = "-" * len(fmt(head))
        size = "x".join(str(d) for d in self.input_size)
        lines = [f"{self.arch}: input {size}", rule, fmt(head), rule]
        lines += [fmt(r) for r in rows]
        lines.append(rule)
        lines.append(
            f"Total params: {self.total_params:,} ({self.total_params * 4 / 2**20:,.1f} MiB "
            f"as float32); trainable: {self.trainable_params:,}"
        )
        lines.append(f"Total multiply-adds: {self.total_macs:,} ({human(self.total_macs)})")
        other = self.total_macs - self.layer_macs
        if other:
            lines.append(f"  of which outside leaf modules (functional ops): {other:,}")
        lines.append(f"Activation memory (forward, one image, float32): {self.activation_kb / 1024:,.1f} MiB")
        return "\n".join(lines)


def human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _numel(out: Any) -> tuple[list[int], int]:
    """Shape (without batch) and element count of a module output (tensor or tuple of them)."""
    if isinstance(out, torch.Tensor):
        return list(out.shape[1:]), out[0].numel() if out.ndim else 1
    if isinstance(out, (list, tuple)):
        tensors = [o for o in out if isinstance(o, torch.Tensor)]
        if tensors:
            return list(tensors[0].shape[1:]), sum(t[0].numel() for t in tensors)
    return [], 0


class _Recorder:
    """Forward hooks that record a row per leaf-module call (its output, its own parameters the
    first time, the multiply-adds inside it), plus a row for a container's own parameters."""

    def __init__(self, model: nn.Module) -> None:
        self.rows: list[LayerRow] = []
        self.counters: list[FlopCounterMode] = []
        self.seen: set[int] = set()
        self.names = {id(m): n for n, m in model.named_modules()}
        self.handles: list[Any] = []
        for m in model.modules():
            if isinstance(m, nn.Identity):
                continue  # placeholders for switched-off options (no norm, no attention, no dropout)
            if not any(True for _ in m.children()):
                self.handles.append(m.register_forward_pre_hook(self.pre))
                self.handles.append(m.register_forward_hook(self.post))
            elif _direct_params(m):
                self.handles.append(m.register_forward_hook(self.post_container))

    def pre(self, m: nn.Module, _inp: Any) -> None:
        counter = FlopCounterMode(display=False)
        counter.__enter__()
        self.counters.append(counter)

    def post(self, m: nn.Module, _inp: Any, out: Any) -> None:
        counter = self.counters.pop()
        counter.__exit__(None, None, None)
        first = id(m) not in self.seen
        self.seen.add(id(m))
        self._row(m, out, _direct_params(m) if first else 0, counter.get_total_flops() // 2, type(m).__name__)

    def post_container(self, m: nn.Module, _inp: Any, out: Any) -> None:
        # A non-leaf module with its own parameters (ConvNeXt's layer scale, a ViT's position
        # embedding): a row for those parameters, so the column adds up to the total.
        if id(m) in self.seen:
            return
        self.seen.add(id(m))
        self._row(m, out, _direct_params(m), 0, "")

    def _row(self, m: nn.Module, out: Any, params: int, macs: int, unnamed: str) -> None:
        shape, numel = _numel(out)
        name = self.names.get(id(m), unnamed) or type(m).__name__
        self.rows.append(LayerRow(name=name, type=type(m).__name__, output_shape=shape, params=params,
                                  memory_kb=numel * BYTES_PER_FLOAT32 / 1024, macs=macs))  # fmt: skip

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        # a forward pass that failed inside a leaf left its counter on torch's dispatch-mode
        # stack; a mode left there would count (and slow down) every later op of the process
        while self.counters:
            self.counters.pop().__exit__(None, None, None)


def _direct_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters(recurse=False))


def summarize(model: nn.Module, input_size: tuple[int, ...], arch: str = "") -> ModelSummary:
    """Run one forward pass of a single example of ``input_size`` (C, H, W) on the model's device
    and collect a row per leaf-module call (plus modules that hold parameters directly)."""
    recorder = _Recorder(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    total = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), total:
            model(torch.zeros((1, *input_size), device=device))
    finally:
        recorder.close()
        model.train(was_training)
    return ModelSummary(
        arch=arch,
        input_size=list(input_size),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_macs=total.get_total_flops() // 2,
        layers=recorder.rows,
    )


def summarize_arch(
    name: str,
    *,
    input_size: tuple[int, int, int] | None = None,
    num_classes: int = 1000,
    norm: str | None = None,
    attn: str | None = None,
) -> ModelSummary:
    """Build ``name`` on the meta device and summarise it at ``input_size`` (default: its own)."""
    from imgcls.models.factory import create_model, preprocess_config

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, norm=norm, attn=attn)
    size = input_size or preprocess_config(model).input_size
    return summarize(model, tuple(size), arch=name)
