"""The ``mitm``, ``import``, ``export``, ``redact``, ``merge``, ``backup`` and ``prune`` commands.

``register(app)`` adds them.

Thin: parse options, call one library function, print one summary line; an
:class:`~ocpp_replay.errors.OcppReplayError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from ocpp_replay.cli.common import (
    DEFAULT_DB,
    DbOption,
    DurationOption,
    FromOption,
    MaxSizeOption,
    NoPrimeFlag,
    RetainOption,
    ToOption,
    console,
    err_console,
    fail,
    retention_option,
    window_option,
)
from ocpp_replay.errors import ConfigError, OcppReplayError

__all__ = ["mitmdump_argv", "mitmdump_executable", "register"]

OutOption = Annotated[Path, typer.Option("--out", help="The file to write (must not exist, see --force).")]
ForceFlag = Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")]
SubprotocolOption = Annotated[
    str,
    typer.Option(
        "--subprotocol",
        help="Take websocket flows whose subprotocol starts with this ('' takes every websocket flow).",
    ),
]
PathOption = Annotated[
    str, typer.Option("--path", help="Take only websocket flows whose URL path matches this regex.")
]

ADDON = Path(__file__).parent.parent / "capture" / "mitm.py"


def mitmdump_executable() -> Path:
    """The ``mitmdump`` of this Python environment. Raises ConfigError if mitmproxy is missing."""
    exe = Path(sys.executable).parent / ("mitmdump.exe" if os.name == "nt" else "mitmdump")
    if importlib.util.find_spec("mitmproxy") is None or not exe.exists():
        raise ConfigError(
            f"mitmproxy is not installed in this environment ({sys.prefix}): pip install 'ocpp-replay[mitm]'"
        )
    return exe


def mitmdump_argv(
    exe: Path,
    db: Path,
    extra: Sequence[str],
    *,
    subprotocol: str = "ocpp",
    path: str = "",
    keep_messages: bool = False,
) -> list[str]:
    argv = [str(exe), "-s", str(ADDON), "--set", f"ocpp_db={db.absolute()}"]
    argv += ["--set", f"ocpp_subprotocol={subprotocol}"]
    if path:
        argv += ["--set", f"ocpp_path={path}"]
    if keep_messages:
        argv += ["--set", "ocpp_keep_messages=true"]
    return argv + list(extra)


def mitm(
    mitmdump_args: Annotated[
        list[str] | None,
        typer.Argument(metavar="[-- MITMDUMP_ARGS]...", help="Passed to mitmdump, e.g. --mode reverse:..."),
    ] = None,
    db: DbOption = DEFAULT_DB,
    subprotocol: SubprotocolOption = "ocpp",
    path: PathOption = "",
    keep_messages: Annotated[
        bool,
        typer.Option(
            "--keep-messages",
            help="Keep recorded messages in mitmproxy's memory (for -w flow files; grows without bound).",
        ),
    ] = False,
) -> None:
    """Run mitmdump with the OCPP capture addon: its websocket traffic goes into --db.

    Example: ocpp-replay mitm --db site.db -- --mode reverse:http://csms:8180 --listen-port 9000
    """
    from ocpp_replay.store import Store

    try:
        exe = mitmdump_executable()
        Store.open(db, create=True).close()  # a bad capture fails here, before mitmdump starts
    except OcppReplayError as exc:
        fail(exc)
    argv = mitmdump_argv(
        exe, db, mitmdump_args or [], subprotocol=subprotocol, path=path, keep_messages=keep_messages
    )
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":  # no exec there: run it and pass its status on
        raise typer.Exit(subprocess.call(argv))
    os.execv(argv[0], argv)


def import_(
    file: Annotated[Path, typer.Argument(help="A JSONL export, or a mitmproxy flow file (mitmdump -w).")],
    db: DbOption = DEFAULT_DB,
    subprotocol: SubprotocolOption = "ocpp",
    path: PathOption = "",
    allow_duplicates: Annotated[
        bool,
        typer.Option(
            "--allow-duplicates", help="Import sessions already in --db (same content); refused by default."
        ),
    ] = False,
) -> None:
    """Import sessions from a JSONL export or a mitmproxy flow file into --db (created if missing)."""
    from ocpp_replay.share.exchange import import_file

    try:
        kind, result = import_file(
            file, db, subprotocol=subprotocol, path_regex=path, allow_duplicates=allow_duplicates
        )
    except OcppReplayError as exc:
        fail(exc)
    what = "JSONL export" if kind == "jsonl" else "mitmproxy flow file"
    console.print(
        f"imported {result.sessions} sessions, {result.frames} frames, {result.events} events "
        f"from {file} ({what}) into {db}",
        markup=False,
    )
    if result.renumbered:
        pairs = [f"{old}→{new}" for old, new in result.id_map.items()]
        shown = ", ".join(pairs[:10]) + (f", … ({len(pairs)} in all)" if len(pairs) > 10 else "")
        console.print(f"session ids: {shown}", markup=False)


def export(
    out: OutOption,
    db: DbOption = DEFAULT_DB,
    session: Annotated[
        list[int] | None, typer.Option("--session", help="Export this session (repeatable).")
    ] = None,
    charge_point: Annotated[
        list[str] | None,
        typer.Option("--charge-point", help="Export this charge point's sessions (repeatable)."),
    ] = None,
    from_: FromOption = None,
    to: ToOption = None,
    duration: DurationOption = None,
    no_prime: NoPrimeFlag = False,
    force: ForceFlag = False,
) -> None:
    """Export sessions (all by default) to a JSONL file, lossless; read back with import.

    With --from, the window's frames: connections cut as replay cuts them, primed first."""
    from ocpp_replay.share.exchange import export_jsonl
    from ocpp_replay.store import Store

    try:
        window = window_option(from_, to, duration, no_prime, None, None)
        with Store.open(db) as store:
            records = None
            if window is not None:
                from ocpp_replay.replay import Selection
                from ocpp_replay.replay.window import window_records

                selection = Selection(
                    session_ids=tuple(session or ()), charge_points=tuple(charge_point or ())
                )
                records = window_records(store, selection, window, prime=not no_prime)
            result = export_jsonl(store, out, session or [], charge_point or [], force=force, records=records)
    except OcppReplayError as exc:
        fail(exc)
    console.print(
        f"exported {result.sessions} sessions, {result.frames} frames, {result.events} events to {out}",
        markup=False,
    )


def redact(
    out: OutOption,
    db: DbOption = DEFAULT_DB,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            envvar="OCPP_REPLAY_REDACT_KEY",
            help="Secret for the pseudonyms (same key, same pseudonyms). Default: random.",
        ),
    ] = None,
    fields: Annotated[
        list[str] | None,
        typer.Option(
            "--fields",
            help="JSON keys to replace, KEY or KEY=PREFIX, comma-separated or repeated; "
            "'default' adds the built-in ones (idTag, parentIdTag, idToken, serial numbers, iccid, imsi).",
        ),
    ] = None,
    charge_point_ids: Annotated[
        bool, typer.Option("--charge-point-ids", help="Also replace charge point ids (and the auth user).")
    ] = False,
    keep_addresses: Annotated[
        bool, typer.Option("--keep-addresses", help="Keep the chargers' IP addresses (replaced by default).")
    ] = False,
    detect: Annotated[
        list[str] | None,
        typer.Option(
            "--detect",
            help="Personal data to find by pattern in free text: email, iban, vin, mac, rfid_uid, phone, "
            "comma-separated or repeated; 'all' (default) or 'none'.",
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write what was found where (kinds, places, counts; never values) as JSON ('-': stdout).",
        ),
    ] = None,
    force: ForceFlag = False,
) -> None:
    """Write a copy of --db with id tags, serial numbers and addresses pseudonymised.

    Also ICCID/IMSI, e-mail addresses, VINs, phone numbers, IBANs, MAC addresses and RFID UIDs
    found in free text, and charge point ids with --charge-point-ids.
    """
    from ocpp_replay.cli.common import print_json
    from ocpp_replay.share.detect import KINDS
    from ocpp_replay.share.redact import DEFAULT_FIELDS, parse_detect, parse_fields, redact_capture
    from ocpp_replay.store.files import write_new_text

    to_stdout = report is not None and str(report) == "-"
    try:
        chosen = parse_fields(fields) if fields else DEFAULT_FIELDS
        kinds = parse_detect(detect) if detect else KINDS
        if report is not None and not to_stdout and not force and (report.exists() or report.is_symlink()):
            raise ConfigError(f"--report: {report} exists; choose another file or pass --force")
        result = redact_capture(
            db,
            out,
            key=key.encode("utf-8") if key is not None else None,
            fields=chosen,
            charge_point_ids=charge_point_ids,
            keep_addresses=keep_addresses,
            detect=kinds,
            force=force,
        )
        if report is not None and not to_stdout:
            write_new_text(report, json.dumps(result.found, indent=2) + "\n", "report", force=force)
    except OcppReplayError as exc:
        fail(exc)
    summary = console if not to_stdout else err_console
    summary.print(
        f"redacted {result.sessions} sessions: {result.frames_changed} of {result.frames} frames changed, "
        f"{result.values} distinct values replaced → {out} (runs not copied)",
        markup=False,
    )
    found = result.found.get("kinds", {})
    if found:
        summary.print(
            "found: "
            + "; ".join(
                f"{kind}: {_times(n['values'], 'value')}, {_times(n['occurrences'], 'time')}"
                for kind, n in found.items()
            )
            + ("" if report is not None else "; --report FILE says where"),
            markup=False,
        )
    if to_stdout:
        print_json(result.found)
    if result.random_key:
        err_console.print(
            "note: no --key given, a random key was used: these pseudonyms cannot be reproduced "
            "(redact again with the same --key to get matching pseudonyms across captures)",
            markup=False,
        )


def _times(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def merge(
    captures: Annotated[list[Path], typer.Argument(help="The captures to merge.")],
    out: OutOption,
    force: ForceFlag = False,
    allow_duplicates: Annotated[
        bool,
        typer.Option("--allow-duplicates", help="Merge a session found in two inputs (refused by default)."),
    ] = False,
) -> None:
    """Merge captures (e.g. one per proxy at a site) into a new one; sessions renumbered by start time."""
    from ocpp_replay.share.merge import merge_captures

    try:
        result = merge_captures(captures, out, force=force, allow_duplicates=allow_duplicates)
    except OcppReplayError as exc:
        fail(exc)
    console.print(
        f"merged {len(captures)} captures: {result.sessions} sessions, {result.frames} frames → {out} "
        "(runs not merged)",
        markup=False,
    )


def backup(
    out: OutOption,
    db: DbOption = DEFAULT_DB,
    force: ForceFlag = False,
) -> None:
    """Copy a capture, also while a proxy writes it, into one self-contained file (SQLite's online backup).

    A capture in use is the .db plus its -wal: cp of the .db alone misses what the WAL holds.
    """
    from ocpp_replay.store.backup import backup_capture

    try:
        result = backup_capture(db, out, force=force)
    except OcppReplayError as exc:
        fail(exc)
    console.print(
        f"backed up {db}: {_times(result.sessions, 'session')}, {_times(result.frames, 'frame')}, "
        f"{result.bytes} bytes → {out}",
        markup=False,
    )


def prune(
    db: DbOption = DEFAULT_DB,
    retain: RetainOption = None,
    max_size: MaxSizeOption = None,
    vacuum: Annotated[
        bool, typer.Option("--vacuum", help="Then shrink the file to its data (rewrites it: takes a while).")
    ] = False,
) -> None:
    """Prune a capture that no proxy is writing, as `proxy --retain/--max-size` does while it runs."""
    from ocpp_replay.store.retention import prune_capture

    try:
        retention = retention_option(retain, max_size)
        if retention is None:
            raise ConfigError("prune needs --retain DURATION, --max-size SIZE, or both")
        result = prune_capture(db, retention, vacuum=vacuum)
    except OcppReplayError as exc:
        fail(exc)
    st = result.stats
    console.print(
        f"pruned {db}: {_times(st.frames_pruned, 'frame')}, {_times(st.sessions_pruned, 'session')} removed "
        f"whole, {_times(st.sessions_cut, 'open connection')} cut at {st.cutoff or '-'} (priming frames "
        f"kept); data {result.data_before} → {result.data_after} bytes, file {result.file_after} bytes",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add the capture tool commands to ``app``."""
    app.command(
        "mitm",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(mitm)
    app.command("import")(import_)
    app.command("export")(export)
    app.command("redact")(redact)
    app.command("merge")(merge)
    app.command("backup")(backup)
    app.command("prune")(prune)
