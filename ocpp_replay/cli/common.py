"""Shared pieces of the command line: options, choice types, one-line errors, output formats.

Light on purpose: every command imports this, so it imports nothing heavy (no aiohttp, no
deepdiff, no store) and rich only when something is printed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from typer.core import TyperGroup

from ocpp_replay.core.text import escape_controls
from ocpp_replay.errors import ConfigError, OcppReplayError

if TYPE_CHECKING:
    from rich.console import Console

    from ocpp_replay.core.window import Window
    from ocpp_replay.store.retention import Retention

DEFAULT_DB = Path("captures/capture.db")
#: The capture every command uses when --db is not given (else captures/capture.db).
DB_ENV = "OCPP_REPLAY_DB"

VERSIONS = ("1.6", "2.0.1", "2.1")
PROFILES = ("v1", "v2")

DbOption = Annotated[
    Path,
    typer.Option(
        "--db",
        envvar=DB_ENV,
        metavar="PATH",
        help="Capture database (SQLite).",
        show_default=True,
    ),
]
FromOption = Annotated[
    str | None,
    typer.Option(
        "--from",
        metavar="TIME",
        help="Replay the frames from this ISO time on, cutting connections open then (primed first).",
    ),
]
ToOption = Annotated[str | None, typer.Option("--to", metavar="TIME", help="End of the --from window.")]
DurationOption = Annotated[
    str | None,
    typer.Option(
        "--duration", metavar="DURATION", help="Length of the --from window: 90s, 15m, 1h, 2d, 1h30m."
    ),
]
NoPrimeFlag = Annotated[
    bool,
    typer.Option(
        "--no-prime", help="Send a window as recorded, without re-establishing the backend's state."
    ),
]
MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        metavar="PORT",
        help="Serve Prometheus metrics of the run on http://HOST:PORT/metrics while it runs.",
    ),
]
MetricsHostOption = Annotated[
    str, typer.Option("--metrics-host", metavar="HOST", help="Address for --metrics-port (0.0.0.0: all).")
]
RetainOption = Annotated[
    str | None,
    typer.Option(
        "--retain",
        metavar="DURATION",
        help="Prune frames older than this (14d, 12h): open connections keep their priming frames, "
        "so every window in the retained time still replays. docs/capture.md.",
    ),
]
MaxSizeOption = Annotated[
    str | None,
    typer.Option(
        "--max-size",
        metavar="SIZE",
        help="Prune the oldest frames while the capture's data is over this (50GB, 500MiB).",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CsvFlag = Annotated[bool, typer.Option("--csv", help="Print CSV (a header row) instead of a table.")]
Version = Literal["1.6", "2.0.1", "2.1"]
Profile = Literal["v1", "v2"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
DirectionName = Literal["to_csms", "to_cp"]
LogLevelOption = Annotated[LogLevel, typer.Option("--log-level", case_sensitive=False, help="What to log.")]


# -- choices that are not a fixed list ------------------------------------------------------

VERSION_LIST_METAVAR = "[" + "|".join(VERSIONS) + "][,...]"
#: simulate.scenario.SCENARIO_NAMES, written out so that --help need not import the simulator
#: (tests/test_cli_capture.py checks they agree).
SCENARIO_METAVAR = "[session|reconnect|commands|faulty|fleet-day|FILE.toml]"


def version_list(value: str) -> str:
    """One OCPP version or several, comma separated (1.6,2.0.1). Raises BadParameter."""
    parts = [p.strip() for p in str(value).split(",")]
    bad = [p for p in parts if p not in VERSIONS]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r} is not one of {', '.join(map(repr, VERSIONS))}")
    return ",".join(parts)


def scenario_names() -> tuple[str, ...]:
    from ocpp_replay.simulate.scenario import SCENARIO_NAMES

    return tuple(SCENARIO_NAMES)


def scenario_choice(value: str) -> str:
    """A built-in scenario name or a TOML file. Raises BadParameter listing the built-in ones."""
    if value in scenario_names() or value.endswith(".toml"):
        return value
    raise typer.BadParameter(
        f"{value!r} is not one of {', '.join(map(repr, scenario_names()))}, or a .toml file"
    )


# -- errors ---------------------------------------------------------------------------------


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


def _click_class(name: str) -> type[Exception]:
    """click's exception class NAME, from whichever click typer runs on (newer typers vendor
    their own copy, so ``import click`` would name other classes)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_UsageError = _click_class("UsageError")
_ClickException = _click_class("ClickException")


class OneLineErrors(TyperGroup):
    """The app's command group: a bad option or value is one ``error:`` line and exit 2, like
    every other bad input, not click's usage block or typer's boxed panel."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except _ClickException as exc:
            ctx: Any = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help is printed already
                sys.exit(2)
            message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
            message = message.replace("Value error, ", "").removesuffix(".")
            hint = f" (see {ctx.command_path} --help)" if isinstance(exc, _UsageError) and ctx else ""
            sys.stderr.write(f"error: {printable(message)}{hint}\n")
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        except typer.Abort:
            sys.stderr.write("error: aborted\n")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


# -- options --------------------------------------------------------------------------------


def iso_option(value: str | None, name: str) -> str | None:
    """An ISO 8601 time from the command line as the capture writes it (UTC, microseconds).

    Raises ConfigError for anything else.
    """
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError as exc:
        raise ConfigError(f"{name}: not an ISO 8601 time: {value!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        dt = dt.astimezone(UTC)
    except OverflowError as exc:  # 9999-12-31T23:59-01:00 is in year 10000 in UTC
        raise ConfigError(f"{name}: out of range: {value!r}") from exc
    # isoformat pads the year to four digits (strftime does not on every platform)
    return dt.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


# -- output ---------------------------------------------------------------------------------


def _make_console(stderr: bool = False) -> Console:
    from rich.console import Console, ConsoleDimensions

    class _Console(Console):
        """On a terminal, its width; anywhere else (a file, a pipe, a CI log) as wide as the
        content, so that tables print every value whole instead of cutting it."""

        @property
        def size(self) -> ConsoleDimensions:
            if self.is_terminal:
                return super().size
            return ConsoleDimensions(1_000_000, 25)

        @size.setter
        def size(self, new_size: tuple[int, int]) -> None:
            self.width, self.height = new_size

    return _Console(stderr=stderr, highlight=False)


class _LazyConsole:
    """A rich console made on first use: importing rich costs ~40 ms that ``--help`` need not pay."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            self._console = _make_console(self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


console: Console = _LazyConsole()  # type: ignore[assignment]
err_console: Console = _LazyConsole(stderr=True)  # type: ignore[assignment]


def real_console(lazy: Console) -> Console:
    """The rich console itself, for rich objects that keep one (Progress, Live)."""
    return lazy.get() if isinstance(lazy, _LazyConsole) else lazy


def print_json(data: Any) -> None:
    """Indented JSON on stdout. Letters stay readable; invisible and control characters
    (bidi overrides, C1) are written as \\u escapes, which JSON readers decode to the same text."""
    import json

    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c == "\n" else json.dumps(c)[1:-1] for c in text)
    sys.stdout.write(text + "\n")


def print_json_line(data: Any) -> None:
    """One JSON object on one line (NDJSON), flushed: for ``tail --json | while read``."""
    import json

    # ensure_ascii: a charger's U+2028 or control character can never split or colour the line
    sys.stdout.write(json.dumps(data, ensure_ascii=True, default=str, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def print_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """CSV on stdout: a header row, then one row per item. Control characters in values are
    escaped as in the tables (a capture's text is a charger's, and may be hostile)."""
    import csv

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else printable(str(row[c])) for c in columns])


def output_format(json_: bool, csv_: bool) -> str:
    """``json``, ``csv`` or ``table`` from a listing's flags. Raises ConfigError for both."""
    if json_ and csv_:
        raise ConfigError("--json and --csv: choose one")
    return "json" if json_ else "csv" if csv_ else "table"


def pretty_payload(raw: str) -> str:
    """A frame's payload indented, for ``--pretty`` (the line above it names the message type,
    action and id): a CALLERROR's code and description first. As it was if it is not JSON."""
    import json

    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    match data:
        case [4, _, code, description, *details]:
            head = f"{code}: {description}"
            return head + ("\n" + json.dumps(details[0], indent=2, ensure_ascii=False) if details else "")
        case [2, _, _, payload] | [3, _, payload]:
            return json.dumps(payload, indent=2, ensure_ascii=False)
    return json.dumps(data, indent=2, ensure_ascii=False)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str = "--duration") -> float:
    """Seconds of ``90``, ``90s``, ``15m``, ``1h30m``, ``2d``. Raises ConfigError naming ``option``."""
    import re

    spec = text.strip().lower()
    parts = (
        re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", spec)
        if re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd]?)+", spec)
        else []
    )
    if not parts:
        raise ConfigError(f"{option}: not a duration: {text!r} (for example 90s, 15m, 1h, 1h30m, 2d)")
    seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if not seconds > 0:
        raise ConfigError(f"{option} must be more than 0, not {text!r}")
    return seconds


def retention_option(retain: str | None, max_size: str | None) -> Retention | None:
    """--retain/--max-size as a Retention (None: keep everything). Raises ConfigError."""
    from ocpp_replay.store.retention import Retention, parse_size

    if retain is None and max_size is None:
        return None
    return Retention(
        max_age=parse_duration(retain, "--retain") if retain is not None else None,
        max_bytes=parse_size(max_size) if max_size is not None else None,
    )


def _window(start: str | None, end: str | None, duration: str | None) -> Window | None:
    """The --from/--to/--duration window, or None. Raises ConfigError."""
    from ocpp_replay.core.correlate import utc_seconds
    from ocpp_replay.core.window import Window

    if start is None:
        if end is not None or duration is not None:
            raise ConfigError(f"{'--to' if end is not None else '--duration'} needs --from")
        return None
    if end is not None and duration is not None:
        raise ConfigError("give --to or --duration, not both")
    t0 = utc_seconds(iso_option(start, "--from") or "")
    t1 = utc_seconds(iso_option(end, "--to") or "") if end is not None else None
    if duration is not None:
        t1 = t0 + parse_duration(duration)
    if t1 is not None and not t1 > t0:
        raise ConfigError(f"--to ({end}) must be after --from ({start})")
    return Window(t0, t1)


def window_option(
    start: str | None,
    end: str | None,
    duration: str | None,
    no_prime: bool,
    since: str | None,
    until: str | None,
) -> Window | None:
    """The --from/--to/--duration window (None without --from), checked against the options
    that do not go with it. Raises ConfigError."""
    window = _window(start, end, duration)
    if window is not None and (since is not None or until is not None):
        raise ConfigError("--since/--until select whole sessions; with --from the window selects frames")
    if no_prime and window is None:
        raise ConfigError("--no-prime needs --from")
    return window
