"""Progress of long command-line operations on a terminal (rich), and nothing otherwise.

Shown on stderr only when stderr is a terminal and the command was not asked for
``--json``: piped, captured or scripted runs see exactly what the command prints on
stdout, and stderr carries only errors. ``rich`` is imported only when progress is shown.

- ``Steps``: a spinner naming the current step with the elapsed time; finished steps are
  left as ``✓ step (1.2 s)`` lines (building a bundle, quantising, the demo's start-up).
- ``Transfer``: a byte progress bar with speed and time left (uploading a bundle); its
  instance is the ``progress(sent, total)`` callback ``FleetClient.upload_bundle`` takes.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Steps", "Transfer", "wanted"]


def wanted(json_mode: bool = False, stream: TextIO | None = None) -> bool:
    """True when progress should be shown: not ``--json``, and ``stream`` (stderr) is a TTY."""
    stream = sys.stderr if stream is None else stream
    try:
        return not json_mode and stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


class Steps:
    """``with Steps("building", enabled=wanted()) as steps: steps.step("hashing")``."""

    def __init__(self, title: str, *, enabled: bool) -> None:
        self.title = title
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None
        self._current: str | None = None
        self._since = 0.0

    def __enter__(self) -> Steps:
        if self.enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                      TimeElapsedColumn(), console=_console(), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=None)
        return self

    def step(self, text: str) -> None:
        """Mark the previous step done and show ``text`` as the current one."""
        if self._progress is None:
            return
        self._finish_current()
        self._current, self._since = text, time.monotonic()
        self._progress.update(self._task, description=f"{self.title}: {text}")

    def _finish_current(self) -> None:
        if self._current is not None:
            took = time.monotonic() - self._since
            self._progress.console.print(f"[green]✓[/green] {self._current} ({took:.1f} s)",
                                         highlight=False)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._progress is None:
            return
        if exc_type is None:
            self._finish_current()
        self._progress.stop()
        self._progress = None


class Transfer:
    """``with Transfer("uploading x.efb", enabled=wanted()) as t: upload(progress=t)``."""

    def __init__(self, title: str, *, enabled: bool) -> None:
        self.title = title
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Transfer:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      DownloadColumn(), TransferSpeedColumn(),
                                      TimeRemainingColumn(), console=_console())
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=None)
        return self

    def __call__(self, sent: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=sent, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
