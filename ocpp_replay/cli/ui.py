"""``ocpp-replay ui``: the web UI over a capture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ocpp_replay.cli.common import DEFAULT_DB, DbOption, console, err_console, fail
from ocpp_replay.errors import OcppReplayError

RulesOption = Annotated[
    Path | None,
    typer.Option(
        "--rules",
        help="Rules file that 'mark as expected noise' writes (default: beside the capture, "
        "site.db -> site.rules.toml).",
    ),
]


def ui(
    db: DbOption = DEFAULT_DB,
    host: Annotated[
        str, typer.Option(help="Address to serve on (captures hold personal data).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on (0: any free port).")] = 8800,
    rules: RulesOption = None,
) -> None:
    """Serve a web UI over a capture: sessions live, sequence diagrams, runs and triage."""
    import asyncio  # here, not at the top: every command's start-up imports this module
    import os

    from ocpp_replay.priority import lower_priority
    from ocpp_replay.ui.process import IDLE_ENV
    from ocpp_replay.ui.server import UiServer, is_loopback, serve

    if not is_loopback(host):
        err_console.print(
            f"warning: serving the UI on {host}: anyone who can reach it can read the capture, and "
            "captures hold personal data (idTags, addresses). Prefer 127.0.0.1 and an SSH tunnel.",
            markup=False,
        )

    def ready(url: str) -> None:
        console.print(f"ui: {url} (capture {db}, read-only)", markup=False)
        nice = os.environ.get(IDLE_ENV)
        if nice is not None:  # beside a proxy (ui/process.py): behind the relay from now on
            lower_priority(int(nice))

    try:
        server = UiServer(db, rules=rules, host=host, port=port)
        asyncio.run(serve(server, ready))
    except OcppReplayError as exc:
        fail(exc)
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    """Add the ui command to ``app``."""
    app.command("ui")(ui)
