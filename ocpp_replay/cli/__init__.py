"""The ocpp-replay command line: one module per command family over the library.

app (the typer app, capture and simulate commands), replay (replay, compare, runs, report),
share (mitm, import, export, redact, merge), common (options, error mapping, safe printing).
"""

from ocpp_replay.cli.app import app, main

__all__ = ["app", "main"]
