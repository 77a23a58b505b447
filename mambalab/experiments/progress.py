"""Progress of `mambalab compare`: a live bar on a terminal, plain flushed lines everywhere else.

On a terminal, one rich bar counts the work items and names those in progress. When the output is a pipe or a
file (`compare | tee log`, a batch job), a live bar would show nothing until the end; instead every item's
start and finish is a line with the elapsed time, and while items run a "still running" line appears every
HEARTBEAT_S seconds, so the output is never silent for long.
"""

from __future__ import annotations

import threading
import time
from typing import Self

from rich.console import Console

HEARTBEAT_S = 30.0


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _shown(labels: list[str], at_most: int = 3) -> str:
    return ", ".join(labels[:at_most]) + (f" (+{len(labels) - at_most})" if len(labels) > at_most else "")


class CompareProgress:
    """Context manager: `started(label)`, `finished(label, record)` for each work item, `running(labels)` for
    the set in progress. `enabled=False` shows nothing; `console` (default: stdout) decides bar or lines."""

    def __init__(
        self,
        total: int,
        enabled: bool = True,
        console: Console | None = None,
        heartbeat_s: float = HEARTBEAT_S,
    ):
        self.total, self.enabled, self.heartbeat_s = total, enabled, heartbeat_s
        self.console = console or Console(highlight=False)
        self.lines = enabled and not self.console.is_terminal
        self.count, self.start, self.active = 0, time.perf_counter(), []
        self._bar = self._task = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self.start = time.perf_counter()
        if self.enabled and not self.lines:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (
                TextColumn("[bold]compare"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
            )
            self._bar = Progress(*columns, console=self.console, transient=False).__enter__()
            self._task = self._bar.add_task("", total=self.total)
        elif self.lines:
            self._say(f"{self.total} work items")
            threading.Thread(target=self._heartbeat, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def _say(self, text: str) -> None:
        with self._lock:
            self.console.print(
                f"[{self.count}/{self.total} {_clock(time.perf_counter() - self.start)}] {text}",
                markup=False,
                soft_wrap=True,
            )
            self.console.file.flush()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if self.active:
                self._say(f"still running: {_shown(self.active)}")

    def started(self, label: str) -> None:
        self.running([*self.active, label])
        if self.lines:
            self._say(f"start {label}")

    def finished(self, label: str, record: dict) -> None:
        self.count += 1
        self.active = [a for a in self.active if a != label]
        status = record["status"] + (" (cached)" if record.get("cached") else "")
        if self.lines:
            self._say(f"done  {label}: {status} in {record.get('wall_s', 0.0):.1f} s")
        elif self._bar is not None:
            self._bar.advance(self._task)
            self._describe()

    def running(self, labels: list[str]) -> None:
        self.active = list(dict.fromkeys(labels))  # unique, in order
        self._describe()

    def _describe(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=f"running: {_shown(self.active)}" if self.active else "")
