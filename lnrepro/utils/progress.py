"""One progress bar for measurements that take minutes (guideline rounds, runtimes of a profile)."""

from __future__ import annotations

import rich
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def measurement_progress() -> Progress:
    """A transient bar, on a terminal only. It redraws when the caller updates it, not from a refresh thread, so that
    it takes no CPU from what is being timed; the caller passes refresh=True to `update`."""
    console = rich.get_console()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        auto_refresh=False,
        disable=not console.is_terminal,
    )
