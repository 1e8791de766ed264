"""``ocpp-replay locust ...``: Locust with the packaged locustfile (docs/distributed.md)."""

from __future__ import annotations

import importlib.util
import os
import sys

import typer

from ocpp_replay.cli.common import fail


def locustfile_path() -> str:
    """The installed locustfile's path (Locust's ``-f`` takes a file, not a module name)."""
    spec = importlib.util.find_spec("ocpp_replay.distributed.locustfile")
    assert spec is not None and spec.origin is not None
    return spec.origin


def locust(ctx: typer.Context) -> None:
    """Run Locust with ocpp-replay's locustfile: every argument goes to locust
    (--master, --worker, --headless, --capture, --target, --speed, ...; see docs/distributed.md)."""
    if importlib.util.find_spec("locust") is None:
        fail("locust is not installed: pip install 'ocpp-replay[locust]'")
    args = [sys.executable, "-m", "locust", "-f", locustfile_path(), *ctx.args]
    sys.stdout.flush()
    os.execv(sys.executable, args)


def register(app: typer.Typer) -> None:
    """Add the locust command to ``app``."""
    app.command(
        "locust",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    )(locust)
