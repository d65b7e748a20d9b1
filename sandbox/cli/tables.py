"""CLI tables through rich (plain text when not a terminal, so output stays greppable)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import click
from rich import box
from rich.console import Console
from rich.table import Table


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Sequence[str] = ()) -> None:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in headers:
        table.add_column(name, justify="right" if name in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console = Console(width=200, highlight=False, soft_wrap=True, force_terminal=False, no_color=True)
    with console.capture() as capture:
        console.print(table)
    click.echo("\n".join(line.rstrip() for line in capture.get().rstrip("\n").splitlines()))
