"""The ocpp-replay command line: thin commands over the library.

Each command parses its options, calls one library function and maps an
:class:`~ocpp_replay.errors.OcppReplayError` to one line on stderr and exit status 2.
Heavy libraries (aiohttp, deepdiff, the store) are imported inside the commands that use them:
``ocpp-replay --help`` and ``sessions`` start in a fraction of the time (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from ocpp_replay import __version__
from ocpp_replay.cli.common import (
    DB_ENV,
    DEFAULT_DB,
    SCENARIO_METAVAR,
    VERSION_LIST_METAVAR,
    CsvFlag,
    DbOption,
    DirectionName,
    JsonFlag,
    LogLevelOption,
    MaxSizeOption,
    MetricsHostOption,
    MetricsPortOption,
    OneLineErrors,
    Profile,
    RetainOption,
    Version,
    console,
    err_console,
    fail,
    iso_option,
    output_format,
    pretty_payload,
    print_csv,
    print_json,
    print_json_line,
    printable,
    real_console,
    retention_option,
    scenario_choice,
    version_list,
)
from ocpp_replay.errors import ConfigError, OcppReplayError

if TYPE_CHECKING:
    import asyncio

    from ocpp_replay.capture.proxy import ProxyServer
    from ocpp_replay.capture.shadow import ShadowProcess
    from ocpp_replay.core.filters import FrameFilter
    from ocpp_replay.store import FrameRecord, Store

#: capture.proxy's defaults, written out so that --help need not import aiohttp
#: (tests/test_cli_capture.py checks they agree).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
DEFAULT_HANDSHAKE_TIMEOUT = 20.0
DEFAULT_MAX_HANDSHAKES = 1000

app = typer.Typer(
    name="ocpp-replay",
    help="Capture, replay, diff and simulate OCPP-J traffic between chargers and a CSMS.",
    cls=OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"ocpp-replay {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Capture, replay, diff and simulate OCPP-J traffic between chargers and a CSMS.

    Every command that reads a capture takes --db, or $OCPP_REPLAY_DB when --db is not given.
    """


def setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def _settle_gc() -> None:
    """Keep garbage collection out of the relay's tail latency, for as long as the proxy runs.

    Everything alive once the proxy listens (modules, the web app: most of the heap) is frozen,
    never scanned again, and young collections run every 10,000 allocations instead of 700.
    Full collections still happen, over what connections created since, so memory stays
    bounded over weeks. Measured under flood (50 chargers, closed loop): the worst round trip
    through the proxy 48-55 ms -> 12-18 ms, the same throughput (docs/performance.md).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def _serve_proxy(proxy: ProxyServer, ui: tuple[Path, int] | None = None) -> None:
    import asyncio
    import signal

    from ocpp_replay.ui.process import start_ui_process, stop_ui_process

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await proxy.start()
    # The web UI runs in a process of its own, reading the capture: nothing of it on the relay path.
    ui_process = start_ui_process(*ui) if ui is not None else None
    _settle_gc()
    try:  # its start-up lines (what it does with a charger's path, its limits) are logged
        await stop.wait()
        console.print("proxy: stopping (closing connections, flushing the capture)")
    finally:
        if ui_process is not None:
            await asyncio.to_thread(stop_ui_process, ui_process)
        await proxy.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The proxy's event loop. uvloop's early timers (up to 1.4 ms) do not matter to a relay,
    which has none; the replay keeps asyncio's loop for its schedule."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None  # not installed here (Windows, PyPy): asyncio's loop does the same job
    return uvloop.new_event_loop


@app.command()
def proxy(
    upstream: Annotated[
        str, typer.Option(help="ws:// or wss:// URL of the CSMS, without the charge point id.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9000,
    db: DbOption = DEFAULT_DB,
    tls_cert: Annotated[Path | None, typer.Option(help="Serve wss with this certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Private key of --tls-cert (PEM).")] = None,
    upstream_ca: Annotated[Path | None, typer.Option(help="CA bundle to verify a wss upstream.")] = None,
    upstream_client_cert: Annotated[
        Path | None, typer.Option(help="Client certificate to present upstream (security profile 3).")
    ] = None,
    upstream_client_key: Annotated[Path | None, typer.Option(help="Key of --upstream-client-cert.")] = None,
    insecure_upstream: Annotated[
        bool, typer.Option(help="Do not verify the upstream's certificate (lab use only).")
    ] = False,
    max_message_size: Annotated[
        int, typer.Option(help="Largest websocket message accepted, in bytes.")
    ] = DEFAULT_MAX_MESSAGE_SIZE,
    flush_interval: Annotated[
        float, typer.Option(help="Seconds between capture writes (frames reach disk within this).")
    ] = 0.05,
    capture_buffer: Annotated[
        int,
        typer.Option(
            metavar="MIB",
            help="Frame data held in memory while the capture cannot be written (disk full, locked), "
            "in MiB; past it frames are forwarded but not recorded, counted and marked in the capture.",
        ),
    ] = 128,
    retain: RetainOption = None,
    max_size: MaxSizeOption = None,
    path_prefix: Annotated[
        str | None,
        typer.Option(
            help="Path chargers dial before the part forwarded upstream (default: the upstream URL's "
            "path, else all but the last segment)."
        ),
    ] = None,
    id_from: Annotated[
        str, typer.Option(help="Charge point id: the last or first segment of the forwarded path, or suffix.")
    ] = "last",
    forwarded: Annotated[
        bool,
        typer.Option(
            help="Tell the CSMS the charger's address and scheme (Forwarded, X-Forwarded-For/-Proto). "
            "Off: the proxy stays invisible."
        ),
    ] = False,
    handshake_timeout: Annotated[
        float, typer.Option(help="Seconds a charger has for its whole websocket upgrade.")
    ] = DEFAULT_HANDSHAKE_TIMEOUT,
    connect_timeout: Annotated[
        float,
        typer.Option(help="Seconds for the CSMS to accept the connection, and again to answer the upgrade."),
    ] = 10.0,
    max_handshakes: Annotated[
        int, typer.Option(help="Unfinished handshakes held at once; past it the oldest is dropped.")
    ] = DEFAULT_MAX_HANDSHAKES,
    max_connections_per_address: Annotated[
        int, typer.Option(help="Connections from one remote address (0: no limit; sites behind NAT).")
    ] = 0,
    event_loop: Annotated[
        Literal["uvloop", "asyncio"],
        typer.Option(
            help="uvloop (the default where it is installed; less CPU per frame, see "
            "docs/performance.md) or asyncio.",
        ),
    ] = "uvloop",
    shadow: Annotated[
        list[str] | None,
        typer.Option(
            help="Also mirror every charger to this ws:// URL and diff its answers with production's "
            "(a run of kind shadow; give it twice for two backends). docs/shadow.md.",
        ),
    ] = None,
    shadow_rules: Annotated[
        Path | None, typer.Option(help="Diff rules (TOML, as for replay) for the shadow comparison.")
    ] = None,
    shadow_auth_file: Annotated[
        Path | None,
        typer.Option(help="CHARGE_POINT_ID:PASSWORD lines: Basic auth to the shadow (never the charger's)."),
    ] = None,
    shadow_queue: Annotated[
        int,
        typer.Option(help="Messages of one charger waiting for its shadow; past it they are not mirrored."),
    ] = 256,
    shadow_priority: Annotated[
        str,
        typer.Option(
            metavar="idle|normal",
            help="The shadow's process: idle (default) takes a core only when the relay does not want "
            "one; normal runs at the proxy's priority (docs/shadow.md).",
        ),
    ] = "idle",
    log_level: LogLevelOption = "INFO",
    ui: Annotated[
        int | None,
        typer.Option(
            "--ui", help="Also serve the web UI on this port of 127.0.0.1, in its own process (docs/ui.md)."
        ),
    ] = None,
) -> None:
    """Run the capture proxy between chargers and a CSMS, recording every frame."""
    import asyncio

    from ocpp_replay.capture.proxy import ProxyServer, TlsOptions

    setup_logging(log_level)
    tls = TlsOptions(
        cert=tls_cert,
        key=tls_key,
        upstream_ca=upstream_ca,
        upstream_client_cert=upstream_client_cert,
        upstream_client_key=upstream_client_key,
        insecure_upstream=insecure_upstream,
    )
    try:
        if capture_buffer < 1:
            raise ConfigError(f"--capture-buffer must be 1 MiB or more, not {capture_buffer}")
        retention = retention_option(retain, max_size)
        mirror = _shadow(
            shadow, upstream, shadow_rules, shadow_auth_file, shadow_queue, log_level, shadow_priority
        )
        server = ProxyServer(
            upstream,
            db,
            host=host,
            port=port,
            tls=tls,
            max_message_size=max_message_size,
            flush_interval=flush_interval,
            capture_buffer=capture_buffer * 1024 * 1024,
            handshake_timeout=handshake_timeout,
            connect_timeout=connect_timeout,
            max_handshakes=max_handshakes,
            max_connections_per_address=max_connections_per_address,
            path_prefix=path_prefix,
            id_from=id_from,
            forwarded=forwarded,
            check_upstream=True,
            shadow=mirror,
            retention=retention,
        )
        with asyncio.Runner(loop_factory=_loop_factory(event_loop)) as runner:
            runner.run(_serve_proxy(server, (db, ui) if ui is not None else None))
    except OcppReplayError as exc:
        fail(exc)
    except KeyboardInterrupt:
        pass


def _shadow(
    urls: list[str] | None,
    production: str,
    rules: Path | None,
    auth_file: Path | None,
    queue: int,
    log_level: str,
    priority: str = "idle",
) -> ShadowProcess | None:
    """The proxy's --shadow tap (a child process), or None. Raises ConfigError."""
    if not urls:
        if rules is not None or auth_file is not None:
            raise ConfigError("--shadow-rules and --shadow-auth-file need --shadow")
        return None
    from ocpp_replay.capture.shadow import ShadowProcess
    from ocpp_replay.replay import load_auth_file
    from ocpp_replay.store.files import load_rules

    load_rules(rules)  # read here too: a bad file is one error line before anything starts
    if auth_file is not None:
        load_auth_file(auth_file)
    return ShadowProcess(
        urls,
        production.rstrip("/"),
        rules_file=str(rules) if rules is not None else None,
        auth_file=str(auth_file) if auth_file is not None else None,
        queue_limit=queue,
        log_level=log_level,
        priority=priority,
    )


def _open(db: Path) -> Store:
    from ocpp_replay.store.reader import Store

    try:
        return Store.open(db, read_only=True)  # sessions, show, tail, validate only read
    except OcppReplayError as exc:
        if not db.exists() and db == DEFAULT_DB:
            fail(f"{exc} (give --db, or set {DB_ENV})")
        fail(exc)


# -- inspecting a capture: sessions, show, tail ----------------------------------------------------

ActionFilter = Annotated[
    list[str] | None,
    typer.Option(
        "--action",
        metavar="ACTION",
        help="Only frames of this action; an answer has its CALL's (repeatable).",
    ),
]
DirectionFilter = Annotated[
    DirectionName | None,
    typer.Option(
        "--direction",
        help="Only frames in this direction: to_csms (charger to CSMS) or to_cp.",
    ),
]
GrepFilter = Annotated[
    str | None, typer.Option("--grep", metavar="TEXT", help="Only frames whose text contains TEXT.")
]
PrettyFlag = Annotated[bool, typer.Option("--pretty", help="Print each frame's JSON indented.")]
ChargePointFilter = Annotated[
    list[str] | None,
    typer.Option("--charge-point", metavar="ID", help="Only this charge point (repeatable)."),
]


def _frame_filter(
    action: list[str] | None,
    direction: str | None,
    grep: str | None,
    since: str | None = None,
    until: str | None = None,
) -> FrameFilter:
    from ocpp_replay.core.filters import FrameFilter
    from ocpp_replay.core.frames import Direction

    return FrameFilter(
        actions=frozenset(action or ()),
        direction=Direction(direction) if direction else None,
        since=iso_option(since, "--since"),
        until=iso_option(until, "--until"),
        grep=grep,
    )


def _matches(rule: FrameFilter, frame: FrameRecord) -> bool:
    return rule.matches(
        action=frame.action, direction=frame.direction, timestamp=frame.timestamp, raw=frame.raw
    )


def _table(title: str, columns: Iterable[str], right: Iterable[str] = ()) -> Any:
    """A rich table whose columns fold long values on a terminal instead of cutting them."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), title_justify="left")
    aligned = set(right)
    for col in columns:
        table.add_column(col, justify="right" if col in aligned else "left", overflow="fold")
    return table


SESSION_COLUMNS = (
    "id", "charge_point_id", "subprotocol", "started_at", "ended_at", "frames", "frames_lost",
    "close_code", "close_reason", "closed_by", "error", "upstream_status", "remote_addr", "path",
    "pruned_before",
)  # fmt: skip


@app.command()
def sessions(
    db: DbOption = DEFAULT_DB,
    charge_point: ChargePointFilter = None,
    since: Annotated[
        str | None, typer.Option(metavar="TIME", help="Sessions started at or after this ISO time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(metavar="TIME", help="Sessions started at or before this ISO time.")
    ] = None,
    action: ActionFilter = None,
    direction: DirectionFilter = None,
    grep: GrepFilter = None,
    json_: JsonFlag = False,
    csv_: CsvFlag = False,
) -> None:
    """List the sessions (websocket connections) of a capture.

    With --action, --direction or --grep: only the sessions with a frame that matches.
    """
    from rich.text import Text

    try:
        fmt = output_format(json_, csv_)
        rule = _frame_filter(action, direction, grep)
        window = iso_option(since, "--since"), iso_option(until, "--until")
        store = _open(db)
        rows = store.sessions(charge_points=charge_point or (), since=window[0], until=window[1])
        if not rule.empty:
            rows = [r for r in rows if any(_matches(rule, f) for f in store.frames(r.id))]
    except OcppReplayError as exc:
        fail(exc)
    if fmt == "json":
        print_json([r.as_dict() for r in rows])
        return
    if fmt == "csv":
        print_csv((r.as_dict() for r in rows), SESSION_COLUMNS)
        return
    table = _table(
        f"{len(rows)} sessions in {printable(str(db))}",
        ("id", "charge point", "subprotocol", "started", "ended", "frames", "close", "by"),
        right=("id", "frames"),
    )
    for r in rows:
        close = "" if r.close_code is None else str(r.close_code)
        if r.upstream_status:
            close = f"refused {r.upstream_status}"
        elif r.error:
            close = printable(r.error)
        lost = f" ({r.frames_lost} lost)" if r.frames_lost else ""
        table.add_row(
            str(r.id),
            Text(printable(r.charge_point_id)),
            Text(printable(r.subprotocol) or "-"),
            r.started_at,
            r.ended_at or "(open)",
            f"{r.frames}{lost}",
            Text(close),
            r.closed_by or "",
        )
    console.print(table)


def _describe(frame: FrameRecord) -> str:
    arrow = "CP → CSMS" if frame.direction == "to_csms" else "CSMS → CP"
    kind = {2: "CALL", 3: "RESULT", 4: "ERROR"}.get(frame.message_type or 0, "?")
    return f"{arrow}  {kind:<6} {printable(frame.action or '-'):<28} id={printable(frame.unique_id or '-')}"


def _body(frame: FrameRecord, pretty: bool) -> str:
    """A frame's text for a terminal: escaped, on one line, or indented over several (--pretty)."""
    if frame.raw is None:
        return f"<binary {len(frame.raw_bytes or b'')} bytes>"
    if not pretty:
        return printable(frame.raw)
    # indented JSON has no raw newline inside a string: each line is escaped on its own
    return "\n".join(printable(line) for line in pretty_payload(frame.raw).split("\n"))


FRAME_COLUMNS = (
    "session_id", "seq", "timestamp", "elapsed", "direction", "message_type", "unique_id", "action",
    "raw", "parse_error",
)  # fmt: skip


@app.command()
def show(
    session_id: Annotated[int, typer.Argument(help="Session id (see `ocpp-replay sessions`).")],
    db: DbOption = DEFAULT_DB,
    action: ActionFilter = None,
    direction: DirectionFilter = None,
    since: Annotated[
        str | None, typer.Option(metavar="TIME", help="Frames at or after this ISO time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(metavar="TIME", help="Frames at or before this ISO time.")
    ] = None,
    grep: GrepFilter = None,
    pretty: PrettyFlag = False,
    json_: JsonFlag = False,
    csv_: CsvFlag = False,
) -> None:
    """Show the frames of one session as a timeline."""
    store = _open(db)
    try:
        fmt = output_format(json_, csv_)
        rule = _frame_filter(action, direction, grep, since, until)
        info = store.session(session_id)
        frames = [f for f in store.frames(session_id) if _matches(rule, f)]
    except OcppReplayError as exc:
        fail(exc)
    if fmt == "json":
        print_json([f.as_dict() for f in frames])
        return
    if fmt == "csv":
        print_csv((f.as_dict() for f in frames), FRAME_COLUMNS)
        return
    console.print(
        f"session {info.id}  {printable(info.charge_point_id)}  {printable(info.subprotocol) or '-'}  "
        f"{info.started_at} → {info.ended_at or '(open)'}  close={info.close_code} by={info.closed_by}",
        markup=False,
    )
    for f in frames:
        err = f"  !! {printable(f.parse_error)}" if f.parse_error else ""
        console.print(f"{f.seq:>5} +{f.elapsed:10.3f}s  {_describe(f)}{err}", markup=False)
        body = _body(f, pretty)
        console.print("      " + body.replace("\n", "\n      "), markup=False, soft_wrap=True)
    if not rule.empty:
        console.print(f"({len(frames)} frames match)", markup=False)


@app.command()
def tail(
    db: DbOption = DEFAULT_DB,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 0.2,
    from_start: Annotated[bool, typer.Option(help="Print the frames already recorded first.")] = False,
    charge_point: ChargePointFilter = None,
    action: ActionFilter = None,
    direction: DirectionFilter = None,
    since: Annotated[
        str | None, typer.Option(metavar="TIME", help="Frames at or after this ISO time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(metavar="TIME", help="Frames at or before this ISO time.")
    ] = None,
    grep: GrepFilter = None,
    pretty: PrettyFlag = False,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per line (NDJSON).")] = False,
    diffs: Annotated[
        bool, typer.Option("--diffs", help="Follow the differences of live shadow runs instead of frames.")
    ] = False,
) -> None:
    """Follow frames live as the proxy records them (Ctrl-C stops)."""
    store = _open(db)
    last = 0
    if diffs:
        _tail_diffs(store, db, interval, from_start, set(charge_point or ()), json_)
        return
    try:
        rule = _frame_filter(action, direction, grep, since, until)
        if not from_start:
            row = store.db.execute("SELECT coalesce(max(rowid), 0) FROM frames").fetchone()
            last = row[0]
        # On stderr, so that scripts reading stdout get frames only; tests wait for it.
        err_console.print(
            f"tail: following {printable(str(db))} after frame {last} (Ctrl-C stops)", markup=False
        )
        wanted = set(charge_point or ())
        cp_ids: dict[int, str] = {}
        while True:
            batch = store.frames_since(last)
            for rowid, f in batch:
                last = rowid
                cp = cp_ids.get(f.session_id)
                if cp is None:
                    cp = cp_ids[f.session_id] = store.charge_point_of(f.session_id)
                if (wanted and cp not in wanted) or not _matches(rule, f):
                    continue
                if json_:
                    print_json_line({"charge_point_id": cp, **f.as_dict()})
                    continue
                body = _body(f, pretty)
                sep = "\n      " if pretty else "  "
                console.print(
                    f"{f.timestamp} {printable(cp)} s{f.session_id}#{f.seq} {_describe(f)}{sep}"
                    + body.replace("\n", "\n      "),
                    markup=False,
                    soft_wrap=True,
                )
            if not batch:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    except OcppReplayError as exc:
        fail(exc)


def _tail_diffs(
    store: Store, db: Path, interval: float, from_start: bool, wanted: set[str], json_: bool
) -> None:
    """``tail --diffs``: each difference as a shadow run stores it."""
    from ocpp_replay.store.runs import diffs_since

    try:
        last = (
            0 if from_start else store.db.execute("SELECT coalesce(max(id), 0) FROM run_diffs").fetchone()[0]
        )
        err_console.print(
            f"tail: following the differences in {printable(str(db))} after {last} (Ctrl-C stops)",
            markup=False,
        )
        while True:
            batch = diffs_since(store, last)
            for rowid, run_id, d in batch:
                last = rowid
                if wanted and d.charge_point_id not in wanted:
                    continue
                if json_:
                    print_json_line(
                        {"run_id": run_id, "charge_point_id": d.charge_point_id, "session_id": d.session_id}
                        | d.as_dict()
                    )
                    continue
                seq = d.seq if d.seq is not None else "-"
                console.print(
                    f"run {run_id} {printable(d.charge_point_id)} s{d.session_id}#{seq} "
                    f"{printable(d.action or '-')} {d.kind} {printable(d.path or '(message)')}: "
                    f"{printable(repr(d.expected))} -> {printable(repr(d.actual))}",
                    markup=False,
                    soft_wrap=True,
                )
            if not batch:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    except OcppReplayError as exc:
        fail(exc)


@app.command()
def validate(
    db: DbOption = DEFAULT_DB,
    session: Annotated[
        list[int] | None, typer.Option("--session", help="Only this session (repeatable).")
    ] = None,
    charge_point: ChargePointFilter = None,
    version: Annotated[
        Version | None, typer.Option(help="OCPP version for sessions without a known subprotocol.")
    ] = None,
    allow_skip: Annotated[
        bool,
        typer.Option(
            "--allow-skip", help="Exit 0 even if some sessions could not be checked (their version unknown)."
        ),
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Check every captured frame against the official OCPP JSON schemas.

    Exit status: 0 no violations, 1 violations, 2 a session could not be checked or nothing was.
    """
    from rich.text import Text

    from ocpp_replay.core.validate import check_sessions, summarize

    store = _open(db)
    try:
        selected = store.sessions(ids=session or (), charge_points=charge_point or ())
        report = check_sessions(((s, store.frames(s.id)) for s in selected), version)
    except OcppReplayError as exc:
        fail(exc)
    findings = report.findings
    if json_:
        print_json(
            {
                "summary": report.summary(),
                "violations": [f.as_dict() for f in findings],
                "skipped": [s.as_dict() for s in report.skipped],
            }
        )
    else:
        for skipped in report.skipped:
            console.print(
                f"skipped {printable(str(skipped))} ({skipped.frames} frames)", markup=False, soft_wrap=True
            )
        if findings:
            table = _table(
                f"{len(findings)} schema violations",
                ("side", "action", "message", "path", "count"),
                ("count",),
            )
            for side, action, kind, path, n in summarize(findings):
                table.add_row(
                    side, Text(printable(action)), kind, Text(printable(path) or "(payload)"), str(n)
                )
            console.print(table)
            for f in findings[:20]:
                console.print(
                    f"  session {f.session_id} {printable(f.charge_point_id)} #{f.seq} {f.side} "
                    f"{printable(f.action)} {printable(f.path) or '(payload)'}: {printable(f.message)}",
                    markup=False,
                    soft_wrap=True,
                )
            if len(findings) > 20:
                console.print(f"  ... and {len(findings) - 20} more (--json lists all)")
        console.print(report.summary_line(), markup=False, soft_wrap=True)
        if not findings and report.tally.checked:
            console.print("no schema violations" + (" in the frames checked" if report.skipped else ""))
    code = report.exit_code(allow_skip=allow_skip)
    if code == 2:
        if report.skipped and not allow_skip:
            n = len(report.skipped)
            fail(
                f"{n} session{'s' if n != 1 else ''} not checked (OCPP version unknown): "
                "pass --version, or --allow-skip to accept that"
            )
        fail("no frame was checked against a schema" + ("" if report.sessions else ": no session to check"))
    raise typer.Exit(code)


# -- simulate, csms, demo ----------------------------------------------------------------------


@app.command()
def simulate(
    target: Annotated[str, typer.Option(help="ws:// URL of the CSMS (or of the proxy, to capture).")],
    chargers: Annotated[int, typer.Option(help="Number of virtual chargers.")] = 1,
    id_prefix: Annotated[str, typer.Option(help="Charge point ids are PREFIX0001, PREFIX0002, ...")] = "ALF-",
    version: Annotated[
        str,
        typer.Option(
            parser=version_list,
            metavar=VERSION_LIST_METAVAR,
            help="OCPP version; several comma separated spread the chargers over them.",
        ),
    ] = "1.6",
    scenario: Annotated[
        str,
        typer.Option(
            parser=scenario_choice,
            metavar=SCENARIO_METAVAR,
            help="A built-in scenario or a scenario TOML file.",
        ),
    ] = "session",
    cycles: Annotated[int, typer.Option(help="How many times each charger repeats its session cycle.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same fleet.")] = 0,
    time_scale: Annotated[
        float, typer.Option(help="Real seconds per virtual second (1: real time; 0.01: 100x faster).")
    ] = 1.0,
    password: Annotated[
        str | None, typer.Option(help="Basic auth password (the user is the charge point id).")
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="A live display on stderr (default: when it is a terminal)."
        ),
    ] = None,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = "127.0.0.1",
) -> None:
    """Run virtual Alfen chargers against a CSMS (exit 1 if a charger could not play its scenario)."""
    import asyncio

    from ocpp_replay.cli.live import FleetDisplay
    from ocpp_replay.cli.metrics import FleetCollector, serve_metrics, tee
    from ocpp_replay.simulate import print_summary, run_fleet

    live = err_console.is_terminal if progress is None else progress
    collector: FleetCollector | None = None
    stop_metrics: Callable[[], None] = lambda: None  # noqa: E731
    try:
        if metrics_port is not None:
            collector = FleetCollector(chargers)
            stop_metrics = serve_metrics(metrics_port, metrics_host, collector)
        # the display is gone before the summary prints: stdout and stderr share the terminal
        with FleetDisplay(real_console(err_console), chargers, live) as display:
            result = asyncio.run(
                run_fleet(
                    target,
                    chargers=chargers,
                    id_prefix=id_prefix,
                    version=version,
                    scenario=scenario,
                    cycles=cycles,
                    seed=seed,
                    time_scale=time_scale,
                    password=password,
                    progress=tee(display.update if live else None, collector.update if collector else None),
                )
            )
    except OcppReplayError as exc:
        fail(exc)
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    finally:
        stop_metrics()
    print_summary(result, real_console(console))
    raise typer.Exit(1 if result.broken else 0)


@app.command()
def csms(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9000,
    profile: Annotated[
        Profile, typer.Option(help="v1, or v2: blocks one card, other heartbeat interval.")
    ] = "v1",
    password: Annotated[
        str | None, typer.Option(help="Require Basic auth with this password (user: charge point id).")
    ] = None,
    remote_stop_after: Annotated[
        int | None, typer.Option(help="Stop every transaction remotely after its Nth MeterValues.")
    ] = None,
    exercise: Annotated[
        str | None, typer.Option(help="Charger id pattern (e.g. 'ALF-*') to send a tour of backend commands.")
    ] = None,
    log_level: LogLevelOption = "INFO",
) -> None:
    """Run the embedded reference CSMS (OCPP 1.6, 2.0.1 and 2.1) until Ctrl-C.

    Logs every connection and every command it sends (with the charger's answer) at INFO on
    stderr; DEBUG adds every frame; WARNING keeps it quiet.
    """
    from ocpp_replay.csms import run_csms

    setup_logging(log_level)
    options: dict[str, object] = {"password": password, "exercise": exercise}
    if remote_stop_after is not None:
        options["remote_stop_after"] = {"*": remote_stop_after}
    try:
        raise typer.Exit(run_csms(host, port, profile, **options))
    except OcppReplayError as exc:
        fail(exc)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo capture and reports go.")] = Path("captures"),
) -> None:
    """Show the whole loop on this machine: reference CSMS, proxy, virtual chargers, replay, diff."""
    import asyncio
    import shlex

    from ocpp_replay.demo import run_demo

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False)

    try:
        result = asyncio.run(run_demo(out, say))
    except OcppReplayError as exc:
        fail(exc)
    except KeyboardInterrupt:
        fail("interrupted; everything the demo started is stopped", code=130)
    from ocpp_replay.report.terminal import differences_table, summary_table

    console.print(summary_table(result.changed))
    console.print(differences_table(result.changed.differences, limit=20, whole=not console.is_terminal))
    db = shlex.quote(str(result.db))
    run_id = result.changed.run_id
    console.print(
        "\nNext, each line as printed (the export spares the --db):\n"
        f"  export {DB_ENV}={db}\n"
        "  ocpp-replay sessions\n"
        "  ocpp-replay runs\n"
        + (f"  ocpp-replay report {run_id} --html report.html\n" if run_id is not None else "")
        + "  ocpp-replay csms --port 9100 --profile v2 --exercise ALF-16-0004 --log-level WARNING &\n"
        "  ocpp-replay replay --target ws://127.0.0.1:9100/ocpp --speed 4 --timeout 2 --grace 1"
        "    # or your CSMS's URL\n"
        "  kill %1",
        markup=False,
    )


def _register_commands() -> None:
    """Commands that live in their own modules, each adding itself to the app."""
    from ocpp_replay.cli import distributed, replay, share, ui

    distributed.register(app)
    replay.register(app)
    share.register(app)
    ui.register(app)


_register_commands()


def main() -> None:
    with contextlib.suppress(BrokenPipeError):
        app(prog_name="ocpp-replay")  # also as python -m ocpp_replay.cli


if __name__ == "__main__":
    main()
