"""Progress bars (rich, on stderr) for downloads, job polling and parsing; silent when disabled."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)


class Reporter:
    """Thin wrapper over :class:`rich.progress.Progress`; every method is a no-op when disabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._p: Progress | None = None
        if enabled:
            self._p = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                               DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn(),
                               console=Console(stderr=True), transient=False)

    def __enter__(self) -> Reporter:
        if self._p:
            self._p.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._p:
            self._p.stop()

    def add(self, description: str, total: float | None = None) -> TaskID | None:
        """Start a task (bytes); returns a handle for :meth:`advance` / :meth:`update`."""
        return self._p.add_task(description, total=total) if self._p else None

    def advance(self, task: TaskID | None, n: float) -> None:
        """Advance ``task`` by ``n`` bytes."""
        if self._p and task is not None:
            self._p.advance(task, n)

    def update(self, task: TaskID | None, **kwargs) -> None:
        """Update a task's ``description``, ``total`` or ``completed``."""
        if self._p and task is not None:
            self._p.update(task, **kwargs)

    def log(self, message: str) -> None:
        """Print a status line above the bars."""
        if self._p:
            self._p.console.log(message)
