"""Moving captures between files: the JSONL export format, import of it and of mitmproxy flow files.

A capture is read as a stream of *records* — ``("session", row)``, ``("frame", row)`` and
``("event", row)``, where a row is a dict of the table's columns — and written through a
:class:`CaptureSink`. Export, import, :mod:`ocpp_replay.share.merge` and :mod:`ocpp_replay.share.redact`
are all a record stream from somewhere to somewhere, so every column is carried over, including
columns later migrations add.

The JSONL format (version 1; documented in docs/export-redact-merge.md), one JSON object a line::

    {"format": "ocpp-replay-capture", "version": 1, "exported_at": "...Z", "generator": "...",
     "migrations": ["m001_capture", ...]}                                       header, first
    {"type": "session", "id": 1, "charge_point_id": "CP-1", ...every sessions column}
    {"type": "frame", "session_id": 1, "seq": 1, "timestamp": "...Z", "elapsed": 0.0123,
     "direction": "to_csms", ..., "raw": "[2,\\"1\\",...]", "raw_bytes_base64": null}
    {"type": "event", "session_id": 1, "timestamp": "...Z", "kind": "...", "detail": "..."}
    {"type": "end", "sessions": 1, "frames": 20, "events": 0}                 trailer, last

A session's line comes before its frames and events. ``raw`` is the exact text as a JSON string
(which round-trips every character); binary frames have ``raw`` null and their bytes in
``raw_bytes_base64``. ``elapsed`` is written with Python's shortest round-trip float repr, so it
reads back as the same double. The trailer makes a truncated file an error instead of a silently
shorter capture. Runs (replay/compare results) are not exported.

An import is one transaction: an error leaves the target capture as it was.

Import files come from elsewhere and are read as hostile: a JSONL line is read only up to
:data:`MAX_LINE` characters, a record is a flat object of JSON scalars (nesting is refused, not
recursed into), integers must fit SQLite's 64 bits; a flow file's length prefixes are checked
against what is left of the file before anything is read, and nesting deeper than the
interpreter's recursion limit is refused. Every failure is one :class:`CaptureError`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal

import sqlite_utils

from ocpp_replay import __version__
from ocpp_replay.core.frames import Direction, peek
from ocpp_replay.core.pairing import Pairer
from ocpp_replay.core.text import escape_json
from ocpp_replay.errors import CaptureError, ConfigError, UnknownSession
from ocpp_replay.store import Store, WriterLock, migrations, open_database, session_filter, utc_iso
from ocpp_replay.store.files import open_private_text

log = logging.getLogger(__name__)

FORMAT = "ocpp-replay-capture"
VERSION = 1
#: The longest JSONL line read (characters): a 16 MiB frame, every byte escaped as ``\\u00XX``.
MAX_LINE = 100 * 2**20
_INT64 = (-(2**63), 2**63 - 1)
#: Digits of a tnetstring length prefix (mitmproxy's own reader allows 12).
_MAX_PREFIX = 12
#: The largest flow read from a flow file (bytes): a week of a busy charger's frames is ~300 MB.
MAX_FLOW = 2**30

Kind = Literal["session", "frame", "event"]
Record = tuple[Kind, dict[str, Any]]

__all__ = [
    "FORMAT",
    "VERSION",
    "CaptureSink",
    "ImportResult",
    "create_output",
    "detect_format",
    "duplicates",
    "export_jsonl",
    "import_file",
    "import_flows",
    "import_jsonl",
    "iter_capture",
    "jsonl_lines",
    "orphan_events",
    "parse_jsonl",
    "session_digest",
]


# ----------------------------------------------------------------------------- reading a capture


def _columns(db: sqlite_utils.Database, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()]


_CAPTURE_TABLES = ("sessions", "frames", "capture_events")


def check_capture_tables(store: Store) -> None:
    """Refuse a capture from elsewhere whose tables are not plain tables: a view named ``frames``
    can yield rows without end (a recursive CTE), a trigger can run anything on a write. The
    capture writer creates neither."""
    _check_tables(store.db, store.path)


def _check_tables(db: sqlite_utils.Database, path: object) -> None:
    try:
        rows = db.execute(
            "SELECT name, type FROM sqlite_master WHERE (name IN (?, ?, ?) AND type != 'table') "
            "OR type = 'trigger' ORDER BY name",
            list(_CAPTURE_TABLES),
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise CaptureError(f"cannot read {path}: {exc}") from exc
    if rows:
        name, kind = rows[0]
        raise CaptureError(f"{path} is not a capture this tool wrote: {name} is a {kind}")


def select_sessions(
    store: Store, ids: Sequence[int] = (), charge_points: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Rows of the sessions table (every column), in start order, filtered by id and charge point."""
    check_capture_tables(store)
    where, params = session_filter(ids, charge_points)
    sql = f"SELECT * FROM sessions{where} ORDER BY started_at, id"
    try:
        cursor = store.db.execute(sql, params)
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    except sqlite3.DatabaseError as exc:
        raise CaptureError(f"cannot read sessions from {store.path}: {exc}") from exc
    missing = set(ids) - {r["id"] for r in rows}
    if missing:
        raise UnknownSession(f"no session {', '.join(map(str, sorted(missing)))} in {store.path}")
    return rows


def iter_capture(
    store: Store,
    ids: Sequence[int] = (),
    charge_points: Sequence[str] = (),
    *,
    with_orphans: bool | None = None,
) -> Iterator[Record]:
    """The records of a capture: each session, then its frames in wire order, then its events.

    Events that belong to no session come last (by default only when nothing was filtered).
    """
    sessions = select_sessions(store, ids, charge_points)
    try:
        for session in sessions:
            yield "session", session
            cursor = store.db.execute(
                "SELECT * FROM frames WHERE session_id = ? ORDER BY seq", [session["id"]]
            )
            names = [d[0] for d in cursor.description]
            for row in cursor:
                yield "frame", dict(zip(names, row, strict=True))
            yield from _events(store, "session_id = ?", [session["id"]])
    except sqlite3.DatabaseError as exc:
        raise CaptureError(f"cannot read {store.path}: {exc}") from exc
    if with_orphans if with_orphans is not None else not (ids or charge_points):
        yield from orphan_events(store)


def orphan_events(store: Store) -> Iterator[Record]:
    """Capture events that belong to no session."""
    check_capture_tables(store)
    try:
        yield from _events(store, "session_id IS NULL", [])
    except sqlite3.DatabaseError as exc:
        raise CaptureError(f"cannot read {store.path}: {exc}") from exc


def _events(store: Store, where: str, params: list[Any]) -> Iterator[Record]:
    cursor = store.db.execute(f"SELECT * FROM capture_events WHERE {where} ORDER BY id", params)
    names = [d[0] for d in cursor.description]
    for row in cursor:
        event = dict(zip(names, row, strict=True))
        event.pop("id", None)  # renumbered by the target
        yield "event", event


# ----------------------------------------------------------------------------- writing a capture


@dataclass(slots=True)
class ImportResult:
    sessions: int = 0
    frames: int = 0
    events: int = 0
    id_map: dict[int, int] = field(default_factory=dict)

    @property
    def renumbered(self) -> bool:
        return any(old != new for old, new in self.id_map.items())


class CaptureSink:
    """Writes records into an open capture in one transaction, mapping session ids.

    ``id_for(old_id)`` decides the id a session gets in the target (by default the next free
    one). Frames and events are written under the id their session got; a frame or event of a
    session not written first is an error.
    """

    BATCH = 2000

    def __init__(self, db: sqlite_utils.Database, id_for: Callable[[int], int] | None = None) -> None:
        self.db = db
        self.conn: sqlite3.Connection = db.conn
        self.result = ImportResult()
        self._columns = {t: set(_columns(db, t)) for t in ("sessions", "frames", "capture_events")}
        row = self.conn.execute("SELECT max(id) FROM sessions").fetchone()
        self.next_id = (row[0] or 0) + 1
        self.id_for = id_for
        self._frames: list[dict[str, Any]] = []

    def __enter__(self) -> CaptureSink:
        self.conn.execute("BEGIN")
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self._flush()
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _check(self, table: str, row: dict[str, Any]) -> None:
        unknown = set(row) - self._columns[table]
        if unknown:
            raise CaptureError(f"the target capture has no {table} column {', '.join(sorted(unknown))}")

    def write(self, kind: Kind, row: dict[str, Any]) -> None:
        if kind == "frame":
            self._frames.append(row)
            if len(self._frames) >= self.BATCH:
                self._flush()
            return
        self._flush()
        if kind == "session":
            self.session(row)
        else:
            self.event(row)

    def session(self, row: dict[str, Any]) -> int:
        old = row["id"]
        if old in self.result.id_map:
            raise CaptureError(f"session {old} appears twice")
        new = self.id_for(old) if self.id_for is not None else self.next_id
        self.next_id = max(self.next_id, new + 1)
        self.result.id_map[old] = new
        row = dict(row, id=new)
        self._check("sessions", row)
        self.conn.execute(
            f"INSERT INTO sessions ({', '.join(row)}) VALUES ({','.join('?' * len(row))})",
            list(row.values()),
        )
        self.result.sessions += 1
        return new

    def forget(self, old: int) -> None:
        """Write what is pending for session ``old``, then let another session use that id."""
        self._flush()
        del self.result.id_map[old]

    def _map(self, row: dict[str, Any], what: str) -> dict[str, Any]:
        old = row.get("session_id")
        if old is None:
            return row
        try:
            return dict(row, session_id=self.result.id_map[old])
        except KeyError:
            raise CaptureError(f"{what} of session {old} before the session itself") from None

    def event(self, row: dict[str, Any]) -> None:
        row = self._map(row, "an event")
        self._check("capture_events", row)
        self.conn.execute(
            f"INSERT INTO capture_events ({', '.join(row)}) VALUES ({','.join('?' * len(row))})",
            list(row.values()),
        )
        self.result.events += 1

    def flush(self) -> None:
        """Write the frames still batched (before reading the target back)."""
        self._flush()

    def _flush(self) -> None:
        if not self._frames:
            return
        frames, self._frames = self._frames, []
        by_columns: dict[tuple[str, ...], list[list[Any]]] = {}
        for row in frames:
            row = self._map(row, "a frame")
            by_columns.setdefault(tuple(row), []).append(list(row.values()))
        for columns, values in by_columns.items():
            self._check("frames", dict.fromkeys(columns))
            sql = f"INSERT INTO frames ({', '.join(columns)}) VALUES ({','.join('?' * len(columns))})"
            try:
                self.conn.executemany(sql, values)
            except sqlite3.IntegrityError as exc:
                raise CaptureError(f"duplicate or invalid frame: {exc}") from exc
        self.result.frames += len(frames)


def session_digest(conn: sqlite3.Connection, session_id: int) -> str:
    """The content hash of a session: its charge point, start, end and every frame (seq,
    direction, time, exact text or bytes). The same recording imported twice hashes the same
    whatever id it got; two real sessions never do (their timestamps differ)."""
    h = hashlib.sha256()
    row = conn.execute(
        "SELECT charge_point_id, started_at, ended_at FROM sessions WHERE id = ?", [session_id]
    ).fetchone()
    # repr: deterministic for whatever types SQLite holds (a capture from elsewhere may mix them)
    h.update(repr(tuple(row)).encode("utf-8", "surrogatepass"))
    for seq, direction, timestamp, raw, raw_bytes in conn.execute(
        "SELECT seq, direction, timestamp, raw, raw_bytes FROM frames WHERE session_id = ? ORDER BY seq",
        [session_id],
    ):
        h.update(repr((seq, direction, timestamp, type(raw).__name__)).encode("utf-8", "surrogatepass"))
        data = raw if raw is not None else raw_bytes
        if isinstance(data, str):
            h.update(data.encode("utf-8", "surrogatepass"))
        elif isinstance(data, bytes):
            h.update(data)
        else:
            h.update(repr(data).encode())
        h.update(b"\x00")
    return h.hexdigest()


def duplicates(
    conn: sqlite3.Connection,
    new_ids: Iterable[int],
    *,
    counts: Callable[[int, int], bool] | None = None,
) -> list[tuple[int, int]]:
    """``(new, earlier)`` for each session of ``new_ids`` whose content hash equals that of a
    session with a smaller id (one already there, or imported just before it), among the pairs
    ``counts(new, earlier)`` accepts (all by default). Only sessions of the same charge point
    and start are hashed."""
    found: list[tuple[int, int]] = []
    cache: dict[int, str] = {}

    def digest(session_id: int) -> str:
        if session_id not in cache:
            cache[session_id] = session_digest(conn, session_id)
        return cache[session_id]

    wanted = set(new_ids)
    # One pass over the sessions (no index needed): groups of the same charge point and start.
    groups = conn.execute(
        "SELECT group_concat(id) FROM sessions GROUP BY charge_point_id, started_at HAVING count(*) > 1"
    )
    for (ids,) in groups.fetchall():
        members = sorted(int(i) for i in ids.split(","))
        for k, new in enumerate(members):
            if new not in wanted:
                continue
            for old in members[:k]:
                if (counts is None or counts(new, old)) and digest(old) == digest(new):
                    found.append((new, old))
                    break
    found.sort()
    return found


def _refuse_duplicates(sink: CaptureSink, name: Path, db_path: str | os.PathLike[str]) -> None:
    sink.flush()
    new_ids = set(sink.result.id_map.values())
    pairs = duplicates(sink.conn, new_ids)
    if not pairs:
        return
    there = [old for _, old in pairs if old not in new_ids]
    twice = len(pairs) - len(there)
    parts = []
    if there:
        shown = ", ".join(map(str, there[:10])) + (f", … ({len(there)} in all)" if len(there) > 10 else "")
        parts.append(
            f"{len(there)} session{'s' if len(there) != 1 else ''} already in {db_path} "
            f"(same content as its session{'s' if len(there) != 1 else ''} {shown})"
        )
    if twice:
        parts.append(f"{twice} session{'s' if twice != 1 else ''} twice in the file")
    raise CaptureError(
        f"{name} holds {' and '.join(parts)}; nothing imported (--allow-duplicates imports them anyway)"
    )


def create_output(path: str | os.PathLike[str], *, force: bool = False) -> sqlite_utils.Database:
    """A new, empty capture at ``path`` (mode 0600). Refuses to overwrite unless ``force``."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not force:
            raise ConfigError(f"{p} exists; choose another --out or pass --force")
        if p.is_dir():
            raise ConfigError(f"{p} is a directory")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{p}{suffix}").unlink()
    return open_database(p, create=True)


@contextlib.contextmanager
def _target(path: str | os.PathLike[str]) -> Iterator[sqlite_utils.Database]:
    """Open (or create) the capture an import writes into; remove it again if created and failed."""
    p = Path(path)
    created = not p.exists()
    db = open_database(p, create=True)
    # An import adds sessions: no proxy or mitm addon may be handing out ids in the meantime.
    lock = WriterLock(p)
    try:
        lock.acquire()
        _check_tables(db, p)
        yield db
    except BaseException:
        db.conn.close()
        lock.release()
        if created:
            for suffix in ("", "-wal", "-shm", "-lock"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{p}{suffix}").unlink()
        raise
    db.conn.close()
    lock.release()


# ----------------------------------------------------------------------------- JSONL


def _dumps(obj: dict[str, Any]) -> str:
    # Invisible characters (bidi overrides, C1) as \u escapes: the line reads back the same.
    return escape_json(json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False))


def jsonl_lines(store: Store, records: Iterable[Record]) -> Iterator[str]:
    """The JSONL export of a record stream (each line without its newline)."""
    applied = [m.name for m in migrations.applied(store.db)]
    yield _dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "exported_at": utc_iso(time.time()),
            "generator": f"ocpp-replay {__version__}",
            "migrations": applied,
        }
    )
    counts = {"session": 0, "frame": 0, "event": 0}
    for kind, row in records:
        counts[kind] += 1
        if kind == "frame":
            data = row.get("raw_bytes")
            if data is not None and not isinstance(data, bytes):
                raise CaptureError(
                    f"cannot export session {row.get('session_id')}: frame {row.get('seq')}'s raw_bytes "
                    f"holds a {type(data).__name__}, not bytes"
                )
            row = dict(row)
            row["raw_bytes_base64"] = None if data is None else base64.b64encode(data).decode("ascii")
            row.pop("raw_bytes", None)
        try:
            yield _dumps({"type": kind, **row})
        except (TypeError, ValueError):
            # A capture is a SQLite file: a column may hold what the format cannot carry.
            bad = next((k for k, v in row.items() if isinstance(v, bytes | float) and not _jsonable(v)), "?")
            where = f"session {row.get('id')}" if kind == "session" else f"session {row.get('session_id')}"
            raise CaptureError(
                f"cannot export {where}: its {kind} column {bad} holds a value the JSONL format cannot "
                f"carry ({type(row.get(bad)).__name__})"
            ) from None
    yield _dumps(
        {"type": "end", "sessions": counts["session"], "frames": counts["frame"], "events": counts["event"]}
    )


def _jsonable(value: object) -> bool:
    return not isinstance(value, bytes) and not (isinstance(value, float) and not math.isfinite(value))


def _private_text(path: Path, force: bool) -> IO[str]:
    if (path.exists() or path.is_symlink()) and not force:
        raise ConfigError(f"{path} exists; choose another --out or pass --force")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open_private_text(path, exclusive=not force)  # nothing clobbered after the check
    except FileExistsError:
        raise ConfigError(f"{path} exists; choose another --out or pass --force") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc


def export_jsonl(
    store: Store,
    out: str | os.PathLike[str],
    ids: Sequence[int] = (),
    charge_points: Sequence[str] = (),
    *,
    force: bool = False,
    records: Iterable[Record] | None = None,
) -> ImportResult:
    """Write the selected sessions to ``out`` (created 0600), or the given ``records`` of them
    (a window, for example). Returns what was written."""
    counts = ImportResult()

    def counted(records: Iterable[Record]) -> Iterator[Record]:
        for kind, row in records:
            if kind == "session":
                counts.sessions += 1
                counts.id_map[row["id"]] = row["id"]
            elif kind == "frame":
                counts.frames += 1
            else:
                counts.events += 1
            yield kind, row

    if records is None:
        records = iter_capture(store, ids, charge_points)
    path = Path(out)
    select_sessions(store, ids, charge_points)  # a bad selection or capture fails before --out exists
    with _private_text(path, force) as fh:
        try:
            for line in jsonl_lines(store, counted(records)):
                fh.write(line)
                fh.write("\n")
        except BaseException:
            path.unlink(missing_ok=True)  # no half export that looks like a whole one
            raise
    return counts


def bounded_lines(fh: IO[str], name: str, limit: int = MAX_LINE) -> Iterator[str]:
    """The lines of ``fh``, each read only up to ``limit`` characters; a longer one is an error."""
    n = 0
    while True:
        try:
            line = fh.readline(limit + 1)
        except UnicodeDecodeError as exc:
            raise CaptureError(f"{name} is not UTF-8 text (line {n + 1})") from exc
        if not line:
            return
        n += 1
        if len(line) > limit:
            raise CaptureError(f"{name} line {n}: longer than {limit} characters")
        yield line


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_scalars(obj: dict[str, Any], where: str) -> None:
    """A record is a flat row: strings, numbers, booleans and nulls, integers within 64 bits."""
    for key, value in obj.items():
        if isinstance(value, dict | list):
            raise CaptureError(f"{where}: {key!r} holds a nested {type(value).__name__}, not a value")
        if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            raise CaptureError(f"{where}: {key!r} is out of the 64-bit integer range")


def parse_jsonl(lines: Iterable[str], name: str = "input") -> Iterator[Record]:
    """Records from the lines of a JSONL export. Raises CaptureError naming the bad line."""
    header_seen = False
    ended = False
    counts = {"session": 0, "frame": 0, "event": 0}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name} line {n}"
        if ended:
            raise CaptureError(f"{where}: data after the end line")
        try:
            obj = json.loads(line, parse_constant=_reject_constant)
        except ValueError as exc:
            raise CaptureError(f"{where}: not JSON ({exc})") from exc
        except RecursionError as exc:
            raise CaptureError(f"{where}: nested too deeply") from exc
        if not isinstance(obj, dict):
            raise CaptureError(f"{where}: not a JSON object")
        if header_seen:
            _check_scalars(obj, where)
        if not header_seen:
            if obj.get("format") != FORMAT:
                raise CaptureError(f"{name} is not an ocpp-replay export (no {FORMAT} header)")
            version = obj.get("version")
            if not isinstance(version, int) or version > VERSION:
                raise CaptureError(f"{name} has export format version {version!r}; this reads {VERSION}")
            header_seen = True
            continue
        kind = obj.pop("type", None)
        if kind == "end":
            expected = {
                "session": obj.get("sessions"),
                "frame": obj.get("frames"),
                "event": obj.get("events"),
            }
            if expected != counts:
                raise CaptureError(f"{where}: the end line counts {expected}, the file holds {counts}")
            ended = True
            continue
        if kind not in counts:
            raise CaptureError(f"{where}: unknown record type {kind!r}")
        counts[kind] += 1
        if kind == "frame":
            encoded = obj.pop("raw_bytes_base64", None)
            try:
                obj["raw_bytes"] = None if encoded is None else base64.b64decode(encoded, validate=True)
            except (binascii.Error, TypeError) as exc:
                raise CaptureError(f"{where}: raw_bytes_base64 is not base64") from exc
        if kind == "session" and not isinstance(obj.get("id"), int):
            raise CaptureError(f"{where}: a session needs an integer id")
        yield kind, obj
    if not header_seen:
        raise CaptureError(f"{name} is empty")
    if not ended:
        raise CaptureError(f"{name} is truncated: no end line")


def import_jsonl(
    path: str | os.PathLike[str], db_path: str | os.PathLike[str], *, allow_duplicates: bool = False
) -> ImportResult:
    """Import a JSONL export into a capture (created if missing), in one transaction.

    Into a capture without sessions the ids are kept; into one with sessions the imported
    sessions are numbered after its last one, in file order. A session whose content is
    already in the capture (see :func:`session_digest`) is refused unless ``allow_duplicates``.
    """
    p = Path(path)
    with _target(db_path) as db:
        keep = db.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
        try:
            fh = open(p, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CaptureError(f"cannot read {p}: {exc.strerror}") from exc
        with fh, CaptureSink(db, (lambda old: old) if keep else None) as sink:
            try:
                for kind, row in parse_jsonl(bounded_lines(fh, str(p)), str(p)):
                    sink.write(kind, row)
            except sqlite3.DatabaseError as exc:
                raise CaptureError(f"cannot import {p}: {exc}") from exc
            except UnicodeDecodeError as exc:
                raise CaptureError(f"{p} is not UTF-8 text") from exc
            if not allow_duplicates:
                _refuse_duplicates(sink, p, db_path)
        return sink.result


# ----------------------------------------------------------------------------- mitmproxy flow files


def detect_format(path: str | os.PathLike[str]) -> Literal["jsonl", "mitmproxy"]:
    """Our JSONL export starts with ``{``; a mitmproxy flow file (tnetstring) with digits and ``:``."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise CaptureError(f"cannot read {p}: {exc.strerror}") from exc
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"{"):
        return "jsonl"
    digits = stripped.split(b":", 1)[0]
    if digits.isdigit() and b":" in stripped:
        return "mitmproxy"
    raise CaptureError(f"{p} is neither an ocpp-replay JSONL export nor a mitmproxy flow file")


def import_flows(
    path: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    *,
    subprotocol: str = "ocpp",
    path_regex: str = "",
    allow_duplicates: bool = False,
) -> ImportResult:
    """Import the websocket flows of a mitmproxy flow file (``mitmdump -w``) as sessions.

    Sessions are numbered after the capture's last one, in handshake order; one already in
    the capture is refused unless ``allow_duplicates``. Needs mitmproxy.
    """
    try:
        from mitmproxy import http

        from ocpp_replay.capture import mitm
    except ImportError as exc:
        raise ConfigError(
            "reading mitmproxy flow files needs mitmproxy: pip install 'ocpp-replay[mitm]'"
        ) from exc
    try:
        wanted = mitm.SessionFilter.of(subprotocol, path_regex)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    p = Path(path)

    def flows() -> Iterator[http.HTTPFlow]:
        try:
            with open(p, "rb") as fh:
                for f in read_flows(fh, p):
                    if (
                        isinstance(f, http.HTTPFlow)
                        and mitm.is_websocket_upgrade(f)
                        and (f.websocket is not None or f.response is None or f.response.status_code != 101)
                        and wanted.wants(f)
                    ):
                        yield f
        except OSError as exc:
            raise CaptureError(f"cannot read {p}: {exc.strerror}") from exc

    # Two passes keep one flow in memory at a time and still number sessions by start time.
    order = sorted((f.request.timestamp_start, i) for i, f in enumerate(flows()))
    with _target(db_path) as db, CaptureSink(db) as sink:
        ids = {i: sink.next_id + rank for rank, (_, i) in enumerate(order)}
        sink.id_for = ids.__getitem__
        for i, f in enumerate(flows()):
            for kind, row in flow_records(f, i):
                sink.write(kind, row)
        if not allow_duplicates:
            _refuse_duplicates(sink, p, db_path)
        return sink.result


def read_flows(fh: BinaryIO, name: Path) -> Iterator[Any]:
    """The flows of a mitmproxy flow file (``mitmdump -w``), read as hostile input.

    Each top-level item's length is checked against the file before it is read (mitmproxy's
    own reader allocates whatever a prefix says), must be a dictionary, and may nest only as
    deep as the recursion limit allows; whatever mitmproxy cannot make a flow of is one
    CaptureError, not a traceback.
    """
    from mitmproxy import flow as mflow
    from mitmproxy.io import compat, tnetstring

    fh.seek(0, os.SEEK_END)
    total = fh.tell()
    fh.seek(0)
    n = 0
    while True:
        start = fh.tell()
        head = fh.read(_MAX_PREFIX + 1)
        if not head:
            return
        n += 1
        where = f"cannot read mitmproxy flows from {name}: item {n} (byte {start})"
        digits, colon, _ = head.partition(b":")
        if not colon or not digits.isdigit() or len(digits) > _MAX_PREFIX:
            raise CaptureError(f"{where}: no tnetstring length prefix")
        length = int(digits)
        body = start + len(digits) + 1
        if body + length + 1 > total:
            raise CaptureError(
                f"{where}: {length} bytes announced, {max(total - body - 1, 0)} left in the file"
            )
        if length > MAX_FLOW:
            raise CaptureError(f"{where}: a flow of {length} bytes, more than the {MAX_FLOW} read")
        fh.seek(body + length)
        if fh.read(1) != b"}":
            raise CaptureError(f"{where}: not a flow (a flow is a tnetstring dictionary)")
        fh.seek(start)
        try:
            state = tnetstring.load(fh)
            if not isinstance(state, dict):
                raise ValueError("not a dictionary")
            flow = mflow.Flow.from_state(compat.migrate_flow(state))
        except RecursionError as exc:
            raise CaptureError(f"{where}: nested too deeply") from exc
        except MemoryError as exc:
            raise CaptureError(f"{where}: too large to read") from exc
        except Exception as exc:  # mitmproxy raises anything on a malformed flow
            detail = str(exc)
            detail = detail if len(detail) <= 200 else detail[:197] + "..."
            raise CaptureError(f"{where}: {type(exc).__name__}: {detail}") from exc
        yield flow


def flow_records(flow: Any, key: int) -> Iterator[Record]:
    """Records of one finished mitmproxy flow: a session (``id`` = ``key``) and its frames."""
    from ocpp_replay.capture import mitm

    fields = mitm.session_fields(flow)
    started = flow.request.timestamp_start
    if flow.websocket is None:  # a refused or failed handshake
        fields |= mitm.refusal_fields(flow)
        end = flow.response.timestamp_end if flow.response is not None else None
        yield (
            "session",
            dict(
                fields,
                id=key,
                started_at=utc_iso(started),
                ended_at=utc_iso(end or started),
                closed_by="upstream",
            ),
        )
        return
    n = 0
    rows: list[dict[str, Any]] = []
    pairer = Pairer()
    for wall, elapsed, direction, data in mitm.flow_frames(flow):
        n += 1
        rows.append(frame_row(pairer, key, n, wall, elapsed, direction, data))
    ended = flow.websocket.timestamp_end
    if ended is None:
        ended = max([started, *(m.timestamp for m in flow.websocket.messages)])
    session = dict(fields, id=key, started_at=utc_iso(started), ended_at=utc_iso(ended), frames=n)
    session |= mitm.close_fields(flow)
    yield "session", session
    for row in rows:
        yield "frame", row


def frame_row(
    pairer: Pairer,
    session_id: int,
    seq: int,
    wall: float,
    elapsed: float,
    direction: Direction,
    data: str | bytes,
) -> dict[str, Any]:
    """A frames-table row with the derived columns, computed as the capture writer computes them."""
    mtype, uid, action, error = peek(data)
    if mtype is not None:
        action = pairer.see(session_id, direction, mtype, uid, action)
    text, binary = (data, None) if isinstance(data, str) else (None, bytes(data))
    return {
        "session_id": session_id,
        "seq": seq,
        "timestamp": utc_iso(wall),
        "elapsed": elapsed,
        "direction": str(direction),
        "message_type": mtype,
        "unique_id": uid,
        "action": action,
        "raw": text,
        "raw_bytes": binary,
        "parse_error": error,
    }


def import_file(
    path: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    *,
    subprotocol: str = "ocpp",
    path_regex: str = "",
    allow_duplicates: bool = False,
) -> tuple[str, ImportResult]:
    """Import a JSONL export or a mitmproxy flow file, whichever ``path`` holds."""
    kind = detect_format(path)
    if kind == "jsonl":
        return kind, import_jsonl(path, db_path, allow_duplicates=allow_duplicates)
    return kind, import_flows(
        path, db_path, subprotocol=subprotocol, path_regex=path_regex, allow_duplicates=allow_duplicates
    )
