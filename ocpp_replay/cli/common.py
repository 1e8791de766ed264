"""Shared pieces of the command line: options, error mapping, safe printing of charger text."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from ocpp_replay.core.text import escape_controls
from ocpp_replay.errors import OcppReplayError

DEFAULT_DB = Path("captures/capture.db")

DbOption = Annotated[
    Path,
    typer.Option("--db", help="Capture database (SQLite).", show_default=True),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def printable(text: str | None) -> str:
    """Text from charger traffic with control characters escaped, safe for a terminal.

    C0, DEL and C1 controls, separators and bidi overrides become Python escapes. Not rich
    markup: print it with ``markup=False`` or inside a ``rich.text.Text``.
    """
    if text is None:
        return ""
    return escape_controls(text)


def fail(exc: OcppReplayError | str, code: int = 2) -> NoReturn:
    """Print one clear line on stderr and exit (2 by default: an error, not a difference)."""
    message = str(exc) if str(exc) else type(exc).__name__
    # Plain write, not rich: one line however narrow the terminal, nothing to wrap.
    sys.stderr.write(f"error: {printable(message)}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """Indented JSON on stdout. Letters stay readable; invisible and control characters
    (bidi overrides, C1) are written as \\u escapes, which JSON readers decode to the same text."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c == "\n" else json.dumps(c)[1:-1] for c in text)
    sys.stdout.write(text + "\n")
