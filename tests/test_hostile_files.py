"""Hostile import files: one ``error:`` line and exit 2, never a traceback, never a huge allocation.

The corpus of issue 14 runs through the real command (a subprocess of ``python -m ocpp_replay.cli``,
as a user would run it); the fuzzing runs in-process through the same typer app with exceptions
not caught, so that anything but a clean exit fails the test.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import io, websocket
from mitmproxy.test import tflow
from typer.testing import CliRunner
from wsproto.frame_protocol import Opcode

from ocpp_replay.cli.share import register
from ocpp_replay.errors import CaptureError
from ocpp_replay.share.exchange import parse_jsonl

HEADER = '{"format":"ocpp-replay-capture","version":1}\n'


def _tnet_list_nested(depth: int) -> bytes:
    item = b"0:]"
    for _ in range(depth):
        item = str(len(item)).encode() + b":" + item + b"]"
    return item


def _tnet_dict_nested(depth: int) -> bytes:
    item = b"0:}"
    key = b"1:k,"
    for _ in range(depth):
        body = key + item
        item = str(len(body)).encode() + b":" + body + b"}"
    return item


CORPUS: dict[str, bytes] = {
    "short.flow": b"5:hello,",
    "huge-prefix.flow": b"999999999999:",
    "list-50000.flow": _tnet_list_nested(50_000),
    "dict-50000.flow": _tnet_dict_nested(50_000),
    "deep.jsonl": (HEADER + "[" * 100_000 + "]" * 100_000 + "\n").encode(),
    "deep-object.jsonl": (HEADER + '{"a":' * 100_000 + "1" + "}" * 100_000 + "\n").encode(),
}


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _error_line(code: int, stderr: str) -> str:
    assert code == 2, (code, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_issue_corpus_through_the_real_command(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(CORPUS[name])
    db = tmp_path / "c.db"
    proc = subprocess.run(
        [sys.executable, "-m", "ocpp_replay.cli", "import", str(path), "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = _error_line(proc.returncode, proc.stderr)
    assert name in line
    expected = {
        "short.flow": "not a flow",
        "huge-prefix.flow": "999999999999 bytes announced",
        "list-50000.flow": "not a flow",
        "dict-50000.flow": "nested too deeply",
        "deep.jsonl": "nested too deeply",
        "deep-object.jsonl": "nested too deeply",
    }[name]
    assert expected in line
    assert not db.exists()  # a failed import into a new capture leaves nothing behind


def test_overlong_lines_are_refused_before_they_are_read(tmp_path: Path) -> None:
    from ocpp_replay.share.exchange import bounded_lines

    path = tmp_path / "long.jsonl"
    path.write_text(HEADER + '{"type":"end","x":"' + "a" * 5000 + '"}\n')
    with open(path, encoding="utf-8") as fh:
        lines = bounded_lines(fh, "long.jsonl", limit=1000)
        assert next(lines) == HEADER
        with pytest.raises(CaptureError, match="line 2: longer than 1000 characters"):
            next(lines)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"type":"session","id":1,"charge_point_id":{"a":1}}', "nested dict"),
        ('{"type":"session","id":1,"frames":[1,2]}', "nested list"),
        ('{"type":"session","id":99999999999999999999}', "64-bit"),
        ('{"type":"session","id":1,"x":NaN}', "not JSON"),
        ('{"type":"session","id":1,"x":-Infinity}', "not JSON"),
    ],
)
def test_records_must_be_flat_rows_of_sqlite_values(line: str, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        list(parse_jsonl([HEADER, line + "\n"], "f.jsonl"))


def _valid_flow_file() -> bytes:
    f = tflow.twebsocketflow()
    f.request.path = "/ocpp/CP-1"
    f.request.headers["Sec-WebSocket-Protocol"] = "ocpp1.6"
    f.response.headers["Sec-WebSocket-Protocol"] = "ocpp1.6"
    assert f.websocket is not None
    f.websocket.messages = [
        websocket.WebSocketMessage(Opcode.TEXT, True, b'[2,"1","Heartbeat",{}]', timestamp=946681205.25),
        websocket.WebSocketMessage(Opcode.TEXT, False, b'[3,"1",{}]', timestamp=946681205.5),
    ]
    import io as stdio

    buf = stdio.BytesIO()
    io.FlowWriter(buf).add(f)
    return buf.getvalue()


VALID_FLOW = _valid_flow_file()


def _import(tmp_path: Path, name: str, data: bytes) -> Any:
    path = tmp_path / name
    path.write_bytes(data)
    db = tmp_path / "fuzz.db"
    for suffix in ("", "-wal", "-shm", "-lock"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return CliRunner().invoke(_cli(), ["import", str(path), "--db", str(db)], catch_exceptions=False)


def test_the_valid_flow_file_imports(tmp_path: Path) -> None:
    """The fuzzing below mutates a file that, unmutated, imports."""
    result = _import(tmp_path, "ok.flow", VALID_FLOW)
    assert result.exit_code == 0, result.stderr
    assert "imported 1 sessions, 2 frames" in result.stdout


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(VALID_FLOW) - 1), st.binary(min_size=0, max_size=4)),
        min_size=1,
        max_size=4,
    ),
    cut=st.integers(min_value=1, max_value=len(VALID_FLOW)),
)
def test_mutated_flow_files_import_or_fail_cleanly(
    tmp_path: Path, edits: list[tuple[int, bytes]], cut: int
) -> None:
    data = bytearray(VALID_FLOW[:cut])
    for at, new in edits:
        data[at : at + len(new)] = new
    result = _import(tmp_path, "fuzz.flow", bytes(data))
    if result.exit_code != 0:
        _error_line(result.exit_code, result.stderr)


_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_record = st.fixed_dictionaries(
    {"type": st.sampled_from(["session", "frame", "event", "end", "other"])},
    optional={
        "id": _json,
        "session_id": _json,
        "seq": _json,
        "raw": _json,
        "raw_bytes_base64": _json,
        "direction": _json,
        "charge_point_id": _json,
        "sessions": _json,
        "frames": _json,
        "events": _json,
        "started_at": _json,
        "bogus": _json,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_record, max_size=6), junk=st.binary(max_size=30))
def test_fuzzed_jsonl_imports_or_fails_cleanly(
    tmp_path: Path, records: list[dict[str, Any]], junk: bytes
) -> None:
    text = HEADER + "".join(json.dumps(r) + "\n" for r in records)
    result = _import(tmp_path, "fuzz.jsonl", text.encode() + junk)
    if result.exit_code != 0:
        _error_line(result.exit_code, result.stderr)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
        ("a = " + "{b = " * 5_000 + "1" + "}" * 5_000 + "\n", "nested too deeply"),
        ("# " + "x" * (4 * 2**20 + 10) + "\n", "longer than"),
    ],
)
def test_hostile_rules_files_through_the_real_command(tmp_path: Path, text: str, message: str) -> None:
    """``--rules`` files travel between teams too; replay reads them before it connects anywhere."""
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ocpp_replay.cli",
            "replay",
            "--db",
            str(tmp_path / "c.db"),
            "--target",
            "ws://127.0.0.1:9/ocpp",
            "--rules",
            str(rules),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert message in _error_line(proc.returncode, proc.stderr)


# ----------------------------------------------------------------------------- captures from elsewhere

_sqlite_values = (
    st.none()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.binary(max_size=30)
)
_COLUMNS = {
    "sessions": ["charge_point_id", "started_at", "ended_at", "remote_addr", "close_reason", "error", "path"],
    "frames": ["seq", "timestamp", "elapsed", "direction", "message_type", "action", "raw", "raw_bytes"],
    "capture_events": ["session_id", "kind", "detail"],
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(sorted(_COLUMNS)),
            st.integers(min_value=0, max_value=7),
            _sqlite_values,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_captures_with_hostile_values_export_redact_merge_or_fail_cleanly(
    tmp_path: Path, edits: list[tuple[str, int, Any]]
) -> None:
    """A capture is a SQLite file: any column can hold any type. Export, redact, merge and the
    import of the export either work or say why in one line."""
    import sqlite3

    from tests.test_exchange import TRICKY, make_capture

    work = tmp_path / "w"
    if work.exists():
        for f in work.iterdir():
            f.unlink()
    work.mkdir(exist_ok=True)
    src = make_capture(
        work / "src.db", [{"frames": TRICKY}, {"start": 1_764_000_100.0, "frames": TRICKY[:2]}]
    )
    conn = sqlite3.connect(src)
    for table, n, value in edits:
        column = _COLUMNS[table][n % len(_COLUMNS[table])]
        with contextlib.suppress(sqlite3.IntegrityError):  # NOT NULL, UNIQUE: a schema that holds
            conn.execute(
                f"UPDATE {table} SET {column} = ? WHERE rowid = (SELECT min(rowid) FROM {table})", [value]
            )
    conn.commit()
    conn.close()
    runner = CliRunner()
    for args in (
        ["export", "--db", str(src), "--out", str(work / "x.jsonl")],
        ["redact", "--db", str(src), "--out", str(work / "r.db"), "--key", "k"],
        [
            "merge",
            str(src),
            str(make_capture(work / "other.db", [{"frames": TRICKY[:2]}])),
            "--out",
            str(work / "m.db"),
        ],
    ):
        result = runner.invoke(_cli(), args, catch_exceptions=False)
        if result.exit_code != 0:
            _error_line(result.exit_code, result.stderr)
    if (work / "x.jsonl").exists():
        result = runner.invoke(
            _cli(), ["import", str(work / "x.jsonl"), "--db", str(work / "i.db")], catch_exceptions=False
        )
        if result.exit_code != 0:
            _error_line(result.exit_code, result.stderr)


def test_a_flow_larger_than_the_bound_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocpp_replay.share import exchange

    path = tmp_path / "big.flow"
    path.write_bytes(b"2000:" + b"x" * 2000 + b"}")
    monkeypatch.setattr(exchange, "MAX_FLOW", 1000)
    with (
        open(path, "rb") as fh,
        pytest.raises(CaptureError, match="a flow of 2000 bytes, more than the 1000 read"),
    ):
        next(exchange.read_flows(fh, path))


@pytest.mark.parametrize("trap", ["endless view", "trigger"])
def test_captures_with_views_or_triggers_are_refused(tmp_path: Path, trap: str) -> None:
    """A view named frames can yield rows without end (export would fill the disk); a trigger
    runs whatever it says when a row is written."""
    import sqlite3

    from tests.test_exchange import TRICKY, make_capture

    bad = make_capture(tmp_path / "bad.db", [{"frames": TRICKY[:2]}])
    conn = sqlite3.connect(bad)
    if trap == "endless view":
        conn.execute("ALTER TABLE frames RENAME TO frames_real")
        conn.execute(
            "CREATE VIEW frames AS WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "
            "SELECT f.* FROM frames_real f, n"
        )
        expected = "frames is a view"
    else:
        conn.execute("CREATE TABLE log (x)")
        conn.execute("CREATE TRIGGER spy AFTER INSERT ON sessions BEGIN INSERT INTO log VALUES (new.id); END")
        expected = "spy is a trigger"
    conn.commit()
    conn.close()
    good = make_capture(tmp_path / "good.db", [{"frames": TRICKY[:2]}])
    export = tmp_path / "good.jsonl"
    runner = CliRunner()
    assert runner.invoke(_cli(), ["export", "--db", str(good), "--out", str(export)]).exit_code == 0
    for args in (
        ["export", "--db", str(bad), "--out", str(tmp_path / "x.jsonl")],
        ["redact", "--db", str(bad), "--out", str(tmp_path / "r.db")],
        ["merge", str(good), str(bad), "--out", str(tmp_path / "m.db")],
        ["import", str(export), "--db", str(bad)],
    ):
        result = runner.invoke(_cli(), args, catch_exceptions=False)
        line = _error_line(result.exit_code, result.stderr)
        assert f"bad.db is not a capture this tool wrote: {expected}" in line, (args, line)
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "r.db").exists()
    assert not (tmp_path / "m.db").exists()
