"""Shared pieces of the command line: options, error mapping, safe printing of charger text."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from ocpp_replay.errors import OcppReplayError

DEFAULT_DB = Path("captures/capture.db")

DbOption = Annotated[
    Path,
    typer.Option("--db", help="Capture database (SQLite).", show_default=True),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if c not in (9,)}
_CONTROL[0x7F] = "\\x7f"


def printable(text: str | None) -> str:
    """Text from charger traffic with control characters escaped, safe for a terminal."""
    if text is None:
        return ""
    return text.translate(_CONTROL)


def fail(exc: OcppReplayError | str, code: int = 2) -> NoReturn:
    """Print one clear line on stderr and exit (2 by default: an error, not a difference)."""
    message = str(exc) if str(exc) else type(exc).__name__
    # Plain write, not rich: one line however narrow the terminal, nothing to wrap.
    sys.stderr.write(f"error: {printable(message)}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
