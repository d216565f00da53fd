"""Tables printed to the terminal (rich) and written as Markdown: one place for both, used by lnrepro-profile,
lnrepro-eval and lnrepro-report."""

from __future__ import annotations

from collections.abc import Sequence

import rich.console
import rich.table

#: (header, left-aligned) of one column; numbers are right-aligned.
Column = tuple[str, bool]


def wide_console() -> rich.console.Console:
    # Piped output (logs, CI) would otherwise be cut to 80 columns.
    console = rich.console.Console()
    return console if console.width >= 160 else rich.console.Console(width=160)


def print_table(
    title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], caption: str | None = None
) -> None:
    table = rich.table.Table(title=title, caption=caption)
    for header, left in columns:
        table.add_column(header, justify="left" if left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    wide_console().print(table)


def markdown_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a GitHub Markdown table."""
    return [
        "| " + " | ".join(header for header, _ in columns) + " |",
        "| " + " | ".join("---" if left else "---:" for _, left in columns) + " |",
    ] + ["| " + " | ".join(row) + " |" for row in rows]
