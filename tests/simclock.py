"""A simulated machine for time-budget tests: a clock that moves only when the networks compute.

Every forward pass of a whole network (the outermost module called) moves the clock by what it
would cost here: per image, the network's parameters times its input's pixels (the arithmetic
of a width-scaled net grows with both), three times that in training (the backward pass and the
optimiser) plus a fixed overhead per training step, all times the machine's slowdown at that
moment (another process started: x2, x4). Forward passes on the ``meta`` device (multiply-add
counts) cost nothing. The runs themselves compute for real, on tiny data; only their clock is
simulated, so a test of a 30-second budget takes a few seconds and gives the same figures on any
machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Machine:
    """``machine()`` is the clock; ``with machine.running():`` makes the networks move it."""

    #: seconds of a training step per image, per million parameters, per 28x28 pixels
    image_seconds: float = 0.01
    step_overhead: float = 0.0  # seconds per training step that do not scale with the images
    slowdowns: list[tuple[float, float]] = field(default_factory=list)  # (from this time, factor)
    now: float = 0.0
    #: extra seconds on a network's training steps, in turn (keyed by its parameter count): a
    #: process that takes the machine while that network is timed
    stalls: dict[int, list[float]] = field(default_factory=dict)
    trace: list[tuple[str, int, int, bool, float]] = field(default_factory=list)  # (net, batch, px, training, s)
    _depth: int = 0

    def __call__(self) -> float:
        return self.now

    def factor(self) -> float:
        out = 1.0
        for since, f in self.slowdowns:
            if self.now >= since:
                out = f
        return out

    def cost(self, module: nn.Module, x: torch.Tensor) -> float:
        params = sum(p.numel() for p in module.parameters()) / 1e6
        pixels = x.shape[-1] * x.shape[-2] / (28 * 28)
        each = self.image_seconds * params * pixels
        if module.training:
            count = sum(p.numel() for p in module.parameters())
            stall = self.stalls[count].pop(0) if self.stalls.get(count) else 0.0
            return (3 * each * x.shape[0] + self.step_overhead) * self.factor() + stall
        return each * x.shape[0] * self.factor()

    def _pre(self, module: nn.Module, args: Any) -> None:
        self._depth += 1

    def _post(self, module: nn.Module, args: Any, out: Any) -> None:
        self._depth -= 1
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if self._depth == 0 and x is not None and x.device.type != "meta":
            took = self.cost(module, x)
            self.trace.append((type(module).__name__, int(x.shape[0]), int(x.shape[-1]), module.training, took))
            self.now += took

    @contextlib.contextmanager
    def running(self) -> Iterator[Machine]:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        hooks = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post)]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the real work's speed does not matter here: one thread, no contention
        try:
            yield self
        finally:
            torch.set_num_threads(threads)
            for h in hooks:
                h.remove()
