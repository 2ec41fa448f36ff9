"""Rich progress bars that stay out of CI logs.

A bar is shown only when stderr is a terminal and ``quiet`` is False; otherwise the
returned object accepts the same calls and draws nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
"""Console for progress and status lines (stderr, so stdout stays parseable)."""

out = Console()
"""Console for tables and results (stdout)."""


def progress(quiet: bool = False) -> Progress:
    """A rich Progress with points done/total and ETA; silent when quiet or not a TTY."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=False,
    )


def table_console() -> Console:
    """The stdout console for wide tables: the terminal's width, or 160 columns in logs.

    Without a terminal rich assumes 80 columns, which folds every cell of a wide table in
    CI logs.
    """
    return out if out.is_terminal else Console(width=160, highlight=False)


def print_figures(paths: Sequence[Path]) -> None:
    """One ``figure: <absolute path>`` line per figure written (stderr, like other status lines)."""
    for path in paths:
        console.print(f"figure: {Path(path).absolute()}", soft_wrap=True, markup=False, highlight=False)
