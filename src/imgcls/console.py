"""What a person sees: progress bars (images/s, loss, ETA) and one-line messages on stderr.

Progress bars draw only on a terminal; in logs (CI, ``nohup``) a line is printed every
``log_seconds`` instead, so a long run still shows that it moves.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Progress:
    """``with Progress(total, "epoch 1/10") as bar: bar.update(n, loss=0.3)``."""

    def __init__(
        self,
        total: int,
        description: str,
        *,
        unit: str = "img",
        enabled: bool = True,
        log_seconds: float = 30.0,
    ) -> None:
        self.total = max(0, int(total))
        self.description = description
        self.unit = unit
        self.enabled = enabled
        self.done = 0
        self.fields: dict[str, Any] = {}
        self.started = time.perf_counter()
        self.last_log = self.started
        self.log_seconds = log_seconds
        self._rich: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        self.started = time.perf_counter()
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=Console(file=sys.stderr),
                transient=True,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, rate="", extra="")
        return self

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def _extra(self) -> str:
        return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items())

    def update(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        rate = f"{self.rate:,.1f} {self.unit}/s"
        if self._rich is not None:
            self._rich.update(self._task, advance=n, rate=rate, extra=self._extra())
        elif self.enabled:
            now = time.perf_counter()
            if now - self.last_log >= self.log_seconds:
                self.last_log = now
                left = (self.total - self.done) / self.rate if self.rate > 0 else 0
                info(f"{self.description}: {self.done}/{self.total} {rate}, ETA {left:.0f}s {self._extra()}")

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._rich is not None:
            self._rich.stop()
