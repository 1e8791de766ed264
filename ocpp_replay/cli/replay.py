"""The ``replay``, ``compare``, ``report`` and ``runs`` commands. ``register(app)`` adds them.

Thin: parse options, call :func:`ocpp_replay.replay.runner.run_replay` (or ``run_compare``,
``load_run``) and :func:`ocpp_replay.replay.runner.store_run`, render with :mod:`ocpp_replay.report`,
map errors to one line and exit 2. Exit 0 when nothing differs, 1 when something does.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ocpp_replay.cli.common import (
    DEFAULT_DB,
    CsvFlag,
    DbOption,
    DurationOption,
    FromOption,
    JsonFlag,
    MetricsHostOption,
    MetricsPortOption,
    NoPrimeFlag,
    ToOption,
    console,
    err_console,
    fail,
    iso_option,
    output_format,
    print_csv,
    print_json,
    printable,
    real_console,
    window_option,
)
from ocpp_replay.errors import ConfigError, OcppReplayError, ReplayError

if TYPE_CHECKING:
    import asyncio

    from rich.progress import Progress, TaskID

    from ocpp_replay.core.results import RunResult
    from ocpp_replay.core.rewrite import Hook, Rewriter
    from ocpp_replay.core.rules import RuleSet
    from ocpp_replay.core.window import Window
    from ocpp_replay.replay import Progress as ReplayProgress
    from ocpp_replay.replay import Selection
    from ocpp_replay.replay.runner import ResultSpool
    from ocpp_replay.store import FrameRecord, SessionInfo, Store

__all__ = ["register"]


_iso_option = iso_option  # the name tests and older callers use


def _progress_bar(label: str) -> Progress:
    """The live bar of a replay on stderr; ``label`` is its first column."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sessions · {task.fields[frames]} frames sent · {task.fields[diffs]} differences"),
        TimeElapsedColumn(),
        console=real_console(err_console),
        transient=True,
    )


def _session_line(prefix: str, p: ReplayProgress, suffix: str = "") -> None:
    """One quiet line on stderr for a finished session (when stderr is not a terminal)."""
    s = p.finished
    assert s is not None
    n = len(s.differences)
    err_console.print(
        f"{prefix}[{p.sessions_done}/{p.sessions_total}] session {s.session_id} "
        f"({printable(s.charge_point_id)}): {s.messages} messages, "
        f"{n} difference{'s' if n != 1 else ''}{suffix}",
        markup=False,
        highlight=False,
    )


class _Display:
    """A rich progress bar on a terminal; one quiet line per finished session otherwise."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> _Display:
        if self.live:
            self.bar = _progress_bar("replay")
            self.bar.__enter__()
            self.task = self.bar.add_task("replay", total=None, frames=0, diffs=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def __call__(self, p: ReplayProgress) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(
                self.task,
                total=p.sessions_total,
                completed=p.sessions_done,
                frames=p.frames_sent,
                diffs=p.diffs,
            )
        elif p.finished is not None:
            _session_line("", p)


class _CompareDisplay:
    """Progress of the replays of a compare: a bar per side on a terminal, quiet lines otherwise."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _CompareDisplay:
        if self.live:
            self.bar = _progress_bar("{task.description:>10}")
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def __call__(self, side: str, p: ReplayProgress) -> None:
        if self.bar is not None:
            task = self.tasks.get(side)
            if task is None:
                task = self.tasks[side] = self.bar.add_task(side, total=None, frames=0, diffs=0)
            self.bar.update(
                task, total=p.sessions_total, completed=p.sessions_done, frames=p.frames_sent, diffs=p.diffs
            )
        elif p.finished is not None:
            _session_line(f"{side} ", p, " from the recording")


def _print_result(result: RunResult) -> None:
    from ocpp_replay.report.terminal import differences_table, noise_table, summary_line, summary_table

    if result.by_action():
        console.print(summary_table(result))
    if result.gating:
        title = "Differences of the candidate from the baseline" if result.kind == "compare" else None
        table = differences_table(result.gating, whole=not console.is_terminal)
        if title:
            table.title = title
        console.print(table)
    if result.noise:
        console.print(noise_table(result))
    rewritten = result.options.get("rewritten") or ()
    if rewritten:
        console.print(
            f"{len(rewritten)} charger frames rewritten before sending "
            "(the JSON and HTML reports show each beside the recorded one)",
            markup=False,
        )
    information = result.information
    if information:
        counts = Counter(str(d.kind) for d in information)
        console.print(
            "information (not counted as differences): "
            + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())),
            markup=False,
            highlight=False,
        )
    errors = Counter(s.error for s in result.sessions if s.error)
    for error, n in list(errors.items())[:_MAX_ERRORS]:
        where = f"{n} sessions" if n > 1 else "1 session"
        console.print(f"{where}: {printable(error)}", markup=False, highlight=False)
    if len(errors) > _MAX_ERRORS:
        console.print(f"... and {len(errors) - _MAX_ERRORS} more session errors in the report", markup=False)
    console.print(summary_line(result), markup=False)


_MAX_ERRORS = 5  # distinct session errors printed under the tables


def _check_outputs(force: bool, **paths: Path | None) -> None:
    """Refuse at once what could not be written after a replay that may take hours, and files
    that exist (unless ``force``: the rule for every file the tool writes).

    ``paths`` maps option names (``report``, ``save_rules``, ...) to the files asked for.
    """
    for name, path in paths.items():
        if path is None or str(path) == "-":
            continue
        option = "--" + name.replace("_", "-")
        if path.is_dir():
            raise ConfigError(f"{option}: {path} is a directory")
        if not force and (path.exists() or path.is_symlink()):
            raise ConfigError(f"{option}: {path} exists; choose another file or pass --force")
        parent = path.parent
        if not parent.is_dir():
            raise ConfigError(f"{option}: cannot write {path}: no directory {parent}")
        if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise ConfigError(f"{option}: cannot write {path}: permission denied")


def _finish(
    result: RunResult,
    report: Path | None,
    junit: Path | None,
    html: Path | None,
    extra: Callable[[], None] | None = None,
    *,
    force: bool = False,
) -> NoReturn:
    """Print the result, write the files asked for, exit with the run's status.

    The run is stored by now: a file that cannot be written is an error (exit 2) that says so,
    after the result was printed, so that hours of replay are not lost to a full disk.
    """
    if report is None or str(report) != "-":
        _print_result(result)
    try:
        _write_reports(result, report, junit, html, force=force)
        if extra is not None:
            extra()
    except OcppReplayError as exc:
        fail(
            f"{exc}; the run is stored as run {result.run_id} "
            f"(ocpp-replay report {result.run_id} writes its reports again)"
        )
    raise typer.Exit(result.exit_code)


def _write_reports(
    result: RunResult, report: Path | None, junit: Path | None, html: Path | None, *, force: bool = False
) -> None:
    from ocpp_replay.report import report_dict, write_html, write_json, write_junit

    if report is not None:
        if str(report) == "-":
            print_json(report_dict(result))
        else:
            write_json(result, report, force=force)
    if junit is not None:
        write_junit(result, junit, force=force)
    if html is not None:
        write_html(result, html, force=force)


SessionOption = Annotated[
    list[int] | None, typer.Option("--session", metavar="ID", help="Only this session (repeatable).")
]
ChargePointOption = Annotated[
    list[str] | None,
    typer.Option("--charge-point", metavar="ID", help="Only sessions of this charger (repeatable)."),
]
SinceOption = Annotated[
    str | None, typer.Option(metavar="TIME", help="Sessions started at or after this ISO time.")
]
UntilOption = Annotated[
    str | None, typer.Option(metavar="TIME", help="Sessions started at or before this ISO time.")
]
SpeedOption = Annotated[float, typer.Option(help="Play faster (2 = twice as fast) or slower.")]
MaxGapOption = Annotated[float | None, typer.Option("--max-gap", help="Cap idle gaps at this many seconds.")]
RulesOption = Annotated[
    Path | None, typer.Option("--rules", metavar="FILE.toml", help="TOML rules file (see docs/replay.md).")
]
ResultsOption = Annotated[
    Path | None,
    typer.Option(
        "--results",
        metavar="FILE.db",
        help="Store the run in this results file (created 0600; more runs of the same capture append) "
        "instead of the capture, which is then only read. runs/report/ui read it with --db.",
    ),
]
ReportOption = Annotated[
    Path | None,
    typer.Option("--report", metavar="FILE.json", help="Write the JSON report here ('-': stdout)."),
]
JunitOption = Annotated[
    Path | None, typer.Option("--junit", metavar="FILE.xml", help="Write JUnit XML here.")
]
HtmlOption = Annotated[
    Path | None, typer.Option("--html", metavar="FILE.html", help="Write the HTML report here.")
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Overwrite report (and rules) files that exist; refused by default.")
]
RewriteOption = Annotated[
    str | None,
    typer.Option(
        "--rewrite",
        metavar="MODULE:FUNCTION",
        help="Python hook that rewrites each outgoing payload (after the rules file's rewrite entries).",
    ),
]
AuthOption = Annotated[
    Path | None,
    typer.Option("--auth-file", metavar="FILE", help="Basic auth passwords: CHARGE_POINT_ID:PASSWORD lines."),
]
KeepOption = Annotated[bool, typer.Option("--keep-timestamps", help="Send payload timestamps as recorded.")]
TimeoutOption = Annotated[float, typer.Option(help="Seconds to wait for each answer of the backend.")]
GraceOption = Annotated[
    float, typer.Option(help="Seconds to wait at a session's end for recorded backend calls.")
]
ConnectAheadOption = Annotated[
    float,
    typer.Option(
        "--connect-ahead",
        metavar="SECONDS",
        help="Dial each session this long before its recorded start (0: at its start), so that its "
        "first frame does not wait for its handshake.",
    ),
]
MaxConnectingOption = Annotated[
    int,
    typer.Option(
        "--max-connecting", metavar="N", help="Handshakes in flight at once; the others wait in start order."
    ),
]
WorkersOption = Annotated[
    str,
    typer.Option(
        "--workers",
        metavar="N|auto",
        help="Worker processes the charge points are sharded over (auto: one per core from 500 charge "
        "points on, else 1).",
    ),
]
FaithfulOption = Annotated[
    bool,
    typer.Option(
        "--faithful/--well-behaved",
        help="Send the charger's traffic as recorded, misbehaviour included (default), or as a "
        "well-behaved charger: one CALL at a time, no answers to calls the capture lacks.",
    ),
]
OptionalCallOption = Annotated[
    list[str] | None,
    typer.Option(
        "--optional-call",
        help="A recorded backend call (action) that may not recur: never waited for, reported as "
        "information when missing (repeatable).",
    ),
]
OperatorCallsOption = Annotated[
    bool,
    typer.Option(
        "--optional-operator-calls",
        help="Make the backend calls an operator typically sends by hand optional (docs/replay.md).",
    ),
]
StrictEndOption = Annotated[
    bool,
    typer.Option("--strict-end", help="Backend calls after a session's recorded end count as differences."),
]


def _optional_calls(actions: list[str] | None) -> tuple[str, ...]:
    out = tuple(a.strip() for a in actions or ())
    if any(not a for a in out):
        raise ConfigError("--optional-call needs an action name, e.g. ChangeConfiguration")
    return out


def _workers(value: str) -> int:
    """--workers: a number of processes, or auto (0 here: decided by the number of charge points)."""
    if value == "auto":
        return 0
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--workers must be a number of 1 or more, or auto, not {value!r}")
    return n


def _check_options(
    speed: float,
    max_gap: float | None,
    timeout: float,
    grace: float,
    noise_runs: int | None = None,
    *,
    connect_ahead: float = 0.0,
    max_connecting: int = 1,
) -> None:
    if not speed > 0:
        raise ConfigError(f"--speed must be positive, not {speed}")
    # "not x >= 0" rather than "x < 0": NaN compares false either way and must be refused too
    if max_gap is not None and not max_gap >= 0:
        raise ConfigError(f"--max-gap must not be negative, not {max_gap}")
    if not timeout > 0:
        raise ConfigError(f"--timeout must be positive, not {timeout}")
    if not grace >= 0:
        raise ConfigError(f"--grace must not be negative, not {grace}")
    if noise_runs is not None and noise_runs < 0:
        raise ConfigError(f"--noise-runs must not be negative, not {noise_runs}")
    if not connect_ahead >= 0:
        raise ConfigError(f"--connect-ahead must not be negative, not {connect_ahead}")
    if max_connecting < 1:
        raise ConfigError(f"--max-connecting must be 1 or more, not {max_connecting}")


@contextlib.asynccontextmanager
async def _stop_on_ctrl_c() -> AsyncIterator[asyncio.Event]:
    """An event the first Ctrl-C sets (the replay then ends and its result is stored); a
    second Ctrl-C interrupts at once, storing nothing."""
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def first() -> None:
        err_console.print(
            "interrupted: closing the sessions in progress and storing the finished ones "
            "(Ctrl-C again to quit without storing)"
        )
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)  # the next Ctrl-C: KeyboardInterrupt

    try:
        loop.add_signal_handler(signal.SIGINT, first)
    except (NotImplementedError, RuntimeError):  # no signal handlers here (Windows, a thread)
        yield stop
        return
    try:
        yield stop
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _run_and_store(
    db: Path,
    prepare: Callable[
        [], tuple[AbstractContextManager[Any], Callable[[Store, ResultSpool], Coroutine[Any, Any, RunResult]]]
    ],
    results: Path | None = None,
    *,
    frames: bool = False,
) -> RunResult:
    """Check the options, run the replay (or compare) on the capture and store the run: in the
    capture, or with ``results`` in that results file (the capture only read).

    ``prepare`` checks and loads the options before the capture is opened and returns the
    progress display and the run to start on the store and a :class:`ResultSpool` on where the
    run goes (a replay writes each session's frames there as it finishes). With ``frames`` (an
    HTML or JUnit report wants them) the stored run is read back whole. An error is one line
    and exit 2.
    """
    import asyncio

    from ocpp_replay.replay import load_run, store_run
    from ocpp_replay.replay.runner import ResultSpool
    from ocpp_replay.store import Store
    from ocpp_replay.store.runs import copy_sessions, open_results

    store: Store | None = None
    out: Store | None = None
    spool: ResultSpool | None = None
    try:
        display, run = prepare()
        store = Store.open(db, read_only=results is not None)
        out = open_results(results, store) if results is not None else store
        spool = ResultSpool(out)
        with display:
            result = asyncio.run(run(store, spool))
        if out is not store:
            copy_sessions(store, out, (s.session_id for s in result.sessions))
        stored = store_run(out, result)
        spool = None  # the run is complete
        if frames and any(s.frames_stored for s in stored.sessions):
            assert stored.run_id is not None
            return load_run(out, stored.run_id)
        return stored
    except OcppReplayError as exc:
        if spool is not None:
            spool.discard()
        fail(exc)
    except KeyboardInterrupt:
        if spool is not None:
            spool.discard()
        fail("interrupted; the run was not stored")
    finally:
        for s in {id(x): x for x in (store, out) if x is not None}.values():
            s.close()


def _windowed_result(
    result: RunResult, window: Window, priming: dict[int, frozenset[int]], *, prime: bool
) -> RunResult:
    """The run with its priming differences set apart, the window in its options, and a line
    on stderr saying what was primed."""
    from dataclasses import replace

    from ocpp_replay.core.window import set_apart_priming
    from ocpp_replay.store.schema import utc_iso

    result, apart = set_apart_priming(result, priming)
    primed = sum(1 for seqs in priming.values() if seqs)
    frames = sum(len(seqs) for seqs in priming.values())
    info = {
        "from": utc_iso(window.start),
        "to": utc_iso(window.end) if window.end is not None else None,
        "prime": prime,
        "primed_connections": primed,
        "priming_frames": frames,
        "priming_differences_set_apart": apart,
    }
    what = (
        f"{primed} open connections primed with {frames} frames, {apart} differences on them set apart"
        if prime
        else "not primed (--no-prime)"
    )
    err_console.print(
        f"window {info['from']} to {info['to'] or 'the end of the capture'}: {what}", highlight=False
    )
    return replace(result, options={**result.options, "window": info})


def _load_hook(spec: str) -> Hook:
    """``module:function``, imported from the working directory or the environment. Raises ConfigError."""
    import importlib
    import sys

    module_name, _, function = spec.partition(":")
    if not module_name or not function.isidentifier():
        raise ConfigError(f"--rewrite: expected MODULE:FUNCTION, not {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a hook next to the capture, as `python -m` would find it
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"--rewrite: cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    hook = getattr(module, function, None)
    if not callable(hook):
        raise ConfigError(f"--rewrite: {module_name} has no function {function}")
    return hook  # type: ignore[no-any-return]


def _load_rewriter(rules: Path | None, hook: str | None) -> Rewriter | None:
    """The [[rewrite]] entries of the rules file and the --rewrite hook; None when neither."""
    from ocpp_replay.core.rewrite import Rewriter
    from ocpp_replay.store.files import load_rewrites

    entries = load_rewrites(rules)
    if not entries and hook is None:
        return None
    return Rewriter(entries, _load_hook(hook) if hook else None, hook or "")


def _load_inputs(rules: Path | None, auth_file: Path | None) -> tuple[RuleSet, dict[str, str]]:
    """The rules file and the auth file, each read before any replay starts."""
    from ocpp_replay.replay import load_auth_file
    from ocpp_replay.store.files import load_rules

    return load_rules(rules), load_auth_file(auth_file) if auth_file is not None else {}


def _selection(
    session: list[int] | None, charge_point: list[str] | None, since: str | None, until: str | None
) -> Selection:
    from ocpp_replay.replay import Selection

    return Selection(
        session_ids=tuple(session or ()),
        charge_points=tuple(charge_point or ()),
        since=iso_option(since, "--since"),
        until=iso_option(until, "--until"),
    )


def replay(
    target: Annotated[str, typer.Option("--target", help="ws:// URL of the CSMS under test.")],
    db: DbOption = DEFAULT_DB,
    session: Annotated[
        list[int] | None, typer.Option("--session", metavar="ID", help="Replay this session (repeatable).")
    ] = None,
    charge_point: Annotated[
        list[str] | None,
        typer.Option("--charge-point", metavar="ID", help="Replay sessions of this charger (repeatable)."),
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    from_: FromOption = None,
    to: ToOption = None,
    duration: DurationOption = None,
    no_prime: NoPrimeFlag = False,
    speed: SpeedOption = 1.0,
    max_gap: MaxGapOption = None,
    rules: RulesOption = None,
    rewrite: RewriteOption = None,
    report: ReportOption = None,
    junit: JunitOption = None,
    html: HtmlOption = None,
    results: ResultsOption = None,
    auth_file: AuthOption = None,
    keep_timestamps: KeepOption = False,
    timeout: TimeoutOption = 10.0,
    grace: GraceOption = 5.0,
    faithful: FaithfulOption = True,
    optional_call: OptionalCallOption = None,
    optional_operator_calls: OperatorCallsOption = False,
    strict_end: StrictEndOption = False,
    connect_ahead: ConnectAheadOption = 1.0,
    max_connecting: MaxConnectingOption = 100,
    workers: WorkersOption = "auto",
    force: ForceOption = False,
    amplify: Annotated[
        int | None,
        typer.Option(
            "--amplify",
            metavar="N",
            help="Replay each selected session N times as N distinct chargers (ids <id>-x1..xN, "
            "idTags and serial numbers pseudonymised per copy).",
        ),
    ] = None,
    amplify_spread: Annotated[
        float,
        typer.Option("--amplify-spread", metavar="SECONDS", help="Spread the copies' starts over SECONDS."),
    ] = 0.0,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = "127.0.0.1",
) -> None:
    """Replay captured sessions against TARGET and report where its answers differ.

    Exit status: 0 no differences, 1 differences found, 2 error.
    """

    def prepare() -> tuple[_Display, Callable[[Store, ResultSpool], Coroutine[Any, Any, RunResult]]]:
        import functools

        from ocpp_replay.core.schedule import Timeline
        from ocpp_replay.replay import run_replay, selected_sessions
        from ocpp_replay.replay.amplify import copies_of, load_amplified
        from ocpp_replay.replay.runner import Due, due_sessions
        from ocpp_replay.replay.workers import auto_workers, run_replay_workers

        _check_options(
            speed, max_gap, timeout, grace, connect_ahead=connect_ahead, max_connecting=max_connecting
        )
        optional = _optional_calls(optional_call)
        rule_set, auth = _load_inputs(rules, auth_file)
        rewriter = _load_rewriter(rules, rewrite)
        selection = _selection(session, charge_point, since, until)
        if amplify is not None and amplify < 1:
            raise ReplayError(f"--amplify must be at least 1, not {amplify}")
        processes = _workers(workers)
        if not amplify_spread >= 0:
            raise ReplayError(f"--amplify-spread must not be negative, not {amplify_spread}")
        window = window_option(from_, to, duration, no_prime, since, until)
        if window is not None and amplify is not None:
            raise ConfigError(
                "--amplify cannot be combined with --from (a window of copies is not supported yet)"
            )
        _check_outputs(force, report=report, junit=junit, html=html)
        display = _Display(console.is_terminal)
        progress: Callable[[Any], None] | None = display
        stop_metrics: Callable[[], None] = lambda: None  # noqa: E731
        if metrics_port is not None:
            from ocpp_replay.cli.metrics import ReplayCollector, serve_metrics, tee

            collector = ReplayCollector()
            stop_metrics = serve_metrics(metrics_port, metrics_host, collector)
            progress = tee(display, collector.update)

        async def run(store: Store, spool: ResultSpool) -> RunResult:
            try:
                return await _replay(store, spool)
            finally:
                stop_metrics()

        async def _replay(store: Store, spool: ResultSpool) -> RunResult:
            import asyncio

            loaded: Sequence[tuple[SessionInfo, Sequence[FrameRecord]]] | None = None
            due: tuple[Sequence[Due], Timeline] | None = None
            priming: dict[int, frozenset[int]] = {}
            if amplify is not None and rewriter is not None and not rewriter.empty:
                # a rewrite sees every plan at once: the copies are made in memory
                loaded = await asyncio.to_thread(load_amplified, store, selection, amplify, amplify_spread)
            elif amplify is not None:  # streamed: each copy made as its session is loaded
                copies = await asyncio.to_thread(copies_of, store, selection, amplify, amplify_spread)
                due = await asyncio.to_thread(due_sessions, store, selection, speed, max_gap, copies)
            elif window is not None:
                from ocpp_replay.replay.window import load_window

                loaded, priming = await asyncio.to_thread(
                    load_window, store, selection, window, prime=not no_prime
                )
            n = processes
            if not n:  # auto: by the charge points (the sessions' rows only: frames stay on disk)
                if loaded is not None:
                    infos: Sequence[SessionInfo] = [info for info, _ in loaded]
                elif due is not None:
                    infos = [d.info for d in due[0]]
                else:
                    infos = await asyncio.to_thread(selected_sessions, store, selection)
                n = auto_workers(len({info.charge_point_id for info in infos}))
            # finished sessions' frames go to the run as they finish (from each worker's process)
            replayer: Callable[..., Coroutine[Any, Any, RunResult]] = (
                functools.partial(run_replay_workers, workers=n, spool=spool, due=due)
                if n > 1
                else functools.partial(run_replay, spool=spool, due=due)
            )
            async with _stop_on_ctrl_c() as stop:
                result = await replayer(
                    store,
                    target,
                    selection=selection,
                    sessions=loaded,
                    speed=speed,
                    max_gap=max_gap,
                    rules=rule_set,
                    keep_timestamps=keep_timestamps,
                    auth=auth,
                    rewrite=rewriter,
                    progress=progress,
                    answer_timeout=timeout,
                    grace=grace,
                    stop=stop,
                    faithful=faithful,
                    optional_calls=optional,
                    operator_calls_optional=optional_operator_calls,
                    strict_end=strict_end,
                    connect_ahead=connect_ahead,
                    max_connecting=max_connecting,
                )
            if window is not None:
                result = _windowed_result(result, window, priming, prime=not no_prime)
            return result

        return display, run

    stored = _run_and_store(db, prepare, results, frames=html is not None or junit is not None)
    _finish(stored, report, junit, html, force=force)


def compare(
    baseline: Annotated[str, typer.Option("--baseline", help="ws:// URL of the backend as it is (A).")],
    candidate: Annotated[str, typer.Option("--candidate", help="ws:// URL of the backend to check (B).")],
    db: DbOption = DEFAULT_DB,
    session: SessionOption = None,
    charge_point: ChargePointOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    from_: FromOption = None,
    to: ToOption = None,
    duration: DurationOption = None,
    no_prime: NoPrimeFlag = False,
    speed: SpeedOption = 1.0,
    max_gap: MaxGapOption = None,
    rules: RulesOption = None,
    rewrite: RewriteOption = None,
    noise_runs: Annotated[
        int, typer.Option("--noise-runs", help="Further replays against the baseline to learn noise.")
    ] = 1,
    save_rules: Annotated[
        Path | None, typer.Option("--save-rules", help="Write the learned noise as a rules file.")
    ] = None,
    report: ReportOption = None,
    junit: JunitOption = None,
    html: HtmlOption = None,
    results: ResultsOption = None,
    auth_file: AuthOption = None,
    keep_timestamps: KeepOption = False,
    timeout: TimeoutOption = 10.0,
    grace: GraceOption = 5.0,
    sequential: Annotated[
        bool,
        typer.Option("--sequential", help="Replay the baseline, then the candidate (default: at once)."),
    ] = False,
    faithful: FaithfulOption = True,
    optional_call: OptionalCallOption = None,
    optional_operator_calls: OperatorCallsOption = False,
    strict_end: StrictEndOption = False,
    connect_ahead: ConnectAheadOption = 1.0,
    max_connecting: MaxConnectingOption = 100,
    force: ForceOption = False,
) -> None:
    """Replay the same sessions against BASELINE and CANDIDATE and report where B answers unlike A.

    Exit status: 0 the candidate answers as the baseline does, 1 it differs, 2 error.
    """
    from ocpp_replay.core.compare import noise_rules_toml

    def prepare() -> tuple[_CompareDisplay, Callable[[Store, ResultSpool], Coroutine[Any, Any, RunResult]]]:
        from ocpp_replay.replay import run_compare

        _check_options(
            speed,
            max_gap,
            timeout,
            grace,
            noise_runs,
            connect_ahead=connect_ahead,
            max_connecting=max_connecting,
        )
        optional = _optional_calls(optional_call)
        rule_set, auth = _load_inputs(rules, auth_file)
        rewriter = _load_rewriter(rules, rewrite)
        selection = _selection(session, charge_point, since, until)
        window = window_option(from_, to, duration, no_prime, since, until)
        _check_outputs(force, report=report, junit=junit, html=html, save_rules=save_rules)
        display = _CompareDisplay(console.is_terminal)

        async def run(store: Store, spool: ResultSpool) -> RunResult:  # compare stores its run at the end
            import asyncio

            loaded = None
            priming: dict[int, frozenset[int]] = {}
            if window is not None:
                from ocpp_replay.replay.window import load_window

                loaded, priming = await asyncio.to_thread(
                    load_window, store, selection, window, prime=not no_prime
                )
            async with _stop_on_ctrl_c() as stop:
                result = await run_compare(
                    store,
                    baseline,
                    candidate,
                    selection=selection,
                    noise_runs=noise_runs,
                    rules=rule_set,
                    sequential=True if sequential else None,
                    sessions=loaded,
                    progress=display,
                    speed=speed,
                    max_gap=max_gap,
                    keep_timestamps=keep_timestamps,
                    auth=auth,
                    rewrite=rewriter,
                    answer_timeout=timeout,
                    grace=grace,
                    stop=stop,
                    faithful=faithful,
                    optional_calls=optional,
                    operator_calls_optional=optional_operator_calls,
                    strict_end=strict_end,
                    connect_ahead=connect_ahead,
                    max_connecting=max_connecting,
                )
            if window is not None:
                result = _windowed_result(result, window, priming, prime=not no_prime)
            return result

        return display, run

    result = _run_and_store(db, prepare, results)

    def write_rules() -> None:
        from ocpp_replay.store.files import write_new_text

        if save_rules is not None:
            text = noise_rules_toml(result.noise, runs=noise_runs)
            write_new_text(save_rules, text, "rules file", force=force)

    _finish(result, report, junit, html, write_rules, force=force)


def report(
    run_id: Annotated[int, typer.Argument(help="The run to render (ocpp-replay runs lists them).")],
    db: DbOption = DEFAULT_DB,
    html: HtmlOption = None,
    json_file: Annotated[
        Path | None,
        typer.Option(
            "--report",
            "--json",
            metavar="FILE.json",
            help="Write the JSON report here ('-': stdout); --json is the older spelling.",
        ),
    ] = None,
    junit: JunitOption = None,
    force: ForceOption = False,
) -> None:
    """Render a stored replay or compare run: a summary by action, and HTML, JSON or JUnit files."""
    from ocpp_replay.replay import load_run
    from ocpp_replay.store import Store

    try:
        _check_outputs(force, report=json_file, junit=junit, html=html)
        with Store.open(db) as store:
            result = load_run(store, run_id)
        _write_reports(result, json_file, junit, html, force=force)
    except OcppReplayError as exc:
        fail(exc)
    if json_file is None or str(json_file) != "-":
        _print_result(result)


RUN_COLUMNS = (
    "id", "kind", "started_at", "ended_at", "target", "baseline", "candidate", "sessions", "messages",
    "diffs", "exit_code", "p99_late_ms",
)  # fmt: skip


def runs(
    action: Annotated[
        str | None,
        typer.Argument(metavar="[delete ID | prune]", help="delete ID: remove a run; prune: all but --keep."),
    ] = None,
    run_id: Annotated[int | None, typer.Argument(metavar="[ID]", show_default=False)] = None,
    keep: Annotated[int | None, typer.Option("--keep", help="With prune: the newest runs kept.")] = None,
    db: DbOption = DEFAULT_DB,
    json_: JsonFlag = False,
    csv_: CsvFlag = False,
) -> None:
    """List the replay runs stored in the capture; `runs delete ID` and `runs prune --keep N` remove them."""
    from rich.table import Table
    from rich.text import Text

    from ocpp_replay.replay import list_runs
    from ocpp_replay.store import Store

    if action is not None:
        _change_runs(action, run_id, keep, db)
        return
    try:
        fmt = output_format(json_, csv_)
        with Store.open(db) as store:
            rows = list_runs(store)
    except OcppReplayError as exc:
        fail(exc)
    if fmt == "json":
        print_json(rows)
        return
    for r in rows:
        r["p99_late_ms"] = ((r.get("timing") or {}).get("lateness_ms") or {}).get("p99")
    if fmt == "csv":
        print_csv(rows, RUN_COLUMNS)
        return
    table = Table(title=Text(f"Runs in {printable(str(db))}"), title_justify="left")
    for name in ("id", "kind", "started", "target", "sessions", "messages", "diffs", "exit", "p99 late ms"):
        right = name in ("id", "sessions", "messages", "diffs")
        table.add_column(name, justify="right" if right else "left", overflow="fold")
    for r in rows:
        p99 = r["p99_late_ms"]
        # Text, not markup: a stored URL or kind is read from a capture that may come from anywhere.
        table.add_row(
            str(r["id"]),
            Text(printable(r["kind"])),
            Text(printable(r["started_at"])),
            Text(printable(f"{r['baseline']} → {r['candidate']}" if r["kind"] == "compare" else r["target"])),
            str(r["sessions"]),
            str(r["messages"]),
            str(r["diffs"]),
            str(r["exit_code"]),
            "" if p99 is None else f"{p99:.2f}",
        )
    console.print(table)


def _change_runs(action: str, run_id: int | None, keep: int | None, db: Path) -> None:
    from ocpp_replay.store import Store
    from ocpp_replay.store.runs import delete_run, prune_runs

    if action == "delete" and (run_id is None or keep is not None):
        fail("runs delete takes one run id: ocpp-replay runs delete ID")
    if action == "prune" and (keep is None or run_id is not None):
        fail("runs prune takes --keep N: ocpp-replay runs prune --keep N")
    if action not in ("delete", "prune"):
        fail(f"{action!r} is not one of 'delete', 'prune'")
    try:
        with Store.open(db) as store:
            if run_id is not None:
                delete_run(store, run_id)
                console.print(f"deleted run {run_id}", markup=False)
            else:
                assert keep is not None
                gone = prune_runs(store, keep)
                shown = f": {', '.join(map(str, gone))}" if gone else ""
                console.print(f"deleted {len(gone)} run{'s' if len(gone) != 1 else ''}{shown}", markup=False)
    except OcppReplayError as exc:
        fail(exc)


def register(app: typer.Typer) -> None:
    """Add the ``replay``, ``compare``, ``report`` and ``runs`` commands to ``app``."""
    app.command("replay")(replay)
    app.command("compare")(compare)
    app.command("report")(report)
    app.command("runs")(runs)
