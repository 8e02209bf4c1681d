"""Rendering helpers shared by commands: JSON and rich tables."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def dumps(obj: Any) -> str:
    """Deterministic JSON (sorted keys, fixed separators)."""
    return json.dumps(obj, indent=2, sort_keys=True)


def console() -> Console:
    tty = sys.stdout.isatty()
    return Console(file=sys.stdout, highlight=False, soft_wrap=True,
                   width=None if tty else 160)


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t
