"""Export/import (JSONL and mitmproxy flow files), old and bad capture files, through the CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
import typer
from mitmproxy import http, io, websocket
from mitmproxy.test import tflow
from typer.testing import CliRunner
from wsproto.frame_protocol import Opcode

from ocpp_replay.cli.share import register
from ocpp_replay.core.frames import Direction
from ocpp_replay.share.exchange import detect_format
from ocpp_replay.store import CaptureWriter, Store

ALFEN = (
    Path(__file__).resolve().parent / "data" / "alfen-frames.jsonl"
)  # real Alfen frames, from public issue threads
T0 = 1_764_000_000.123456

#: Frames a round trip must keep exactly: Alfen's INT64_MAX, non-ASCII, escapes, control
#: characters, whitespace, invalid JSON, a binary frame that is not UTF-8 and one that is.
TRICKY: list[tuple[Direction, str | bytes]] = [
    (Direction.TO_CSMS, '[2, "1" ,"Heartbeat", {}]'),
    (Direction.TO_CP, '[3,"1",{"currentTime":"2026-01-01T00:00:00Z"}]'),
    (Direction.TO_CSMS, '[2,"2","DataTransfer",{"vendorId":"Ünïcødé ✓ \\u00e9\\n","data":"tab\\there"}]'),
    (Direction.TO_CSMS, "not json at all \x01\x7f"),
    (Direction.TO_CSMS, b"\xff\xfe\x00binary"),
    (Direction.TO_CP, b'[3,"2",{"status":"Accepted"}]'),
    (Direction.TO_CSMS, '[2,"3","MeterValues",{"transactionId":9223372036854775807,"x":1.10e+01}]'),
]


def alfen_frames() -> list[tuple[Direction, str]]:
    rows = [json.loads(line) for line in ALFEN.read_text().splitlines() if line.strip()]
    return [(Direction(r["direction"]), r["raw"]) for r in rows]


def make_capture(path: Path, sessions: list[dict[str, Any]]) -> Path:
    """A capture written by the real CaptureWriter. Each spec: fields, start, frames, close."""
    writer = CaptureWriter(path)
    for spec in sessions:
        start = spec.get("start", T0)
        sid = writer.open_session(start, **spec.get("fields", {"charge_point_id": "CP-1"}))
        for seq, (direction, data) in enumerate(spec.get("frames", []), 1):
            elapsed = seq * 0.1 + 1e-7 * seq  # values whose float repr is long
            writer.frame(sid, seq, start + elapsed, elapsed, direction, data)
        if "event" in spec:
            writer.event(sid, "frames_lost", spec["event"])
        writer.close_session(
            sid, start + 60.000001, **spec.get("close", {"close_code": 1000, "closed_by": "cp"})
        )
    writer.close()
    return path


def standard_capture(path: Path) -> Path:
    return make_capture(
        path,
        [
            {
                "start": T0,
                "fields": {
                    "charge_point_id": "ALF/0001",
                    "path": "/ocpp/ALF%2F0001",
                    "query": "a=1",
                    "offered_subprotocols": "ocpp1.6,ocpp2.0.1",
                    "subprotocol": "ocpp1.6",
                    "remote_addr": "10.0.0.7",
                    "auth_user": "ALF/0001",
                    "upstream_url": "ws://csms:8180/ocpp/ALF%2F0001?a=1",
                },
                "frames": alfen_frames() + TRICKY,
                "event": "3 frames not recorded between seq 4 and 6",
                "close": {"close_code": 4001, "close_reason": "bye ✓", "closed_by": "csms"},
            },
            {
                "start": T0 + 5,
                "fields": {"charge_point_id": "CP-2", "upstream_status": 401, "error": "refused 401"},
                "close": {"closed_by": "upstream"},
            },
            {"start": T0 + 2.5, "fields": {"charge_point_id": "CP-3"}, "frames": TRICKY[:2]},
        ],
    )


def dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the capture tables (with SQLite's storage class of each value)."""
    conn = sqlite3.connect(db)
    try:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table, order, skip in (
            ("sessions", "id", ()),
            ("frames", "session_id, seq", ()),
            ("capture_events", "id", ("id",)),
        ):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[1] not in skip]
            typed = ", ".join(f"{c}, typeof({c})" for c in cols)
            out[table] = conn.execute(f"SELECT {typed} FROM {table} ORDER BY {order}").fetchall()
        return out
    finally:
        conn.close()


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def run(*args: str | Path) -> Any:
    return CliRunner().invoke(cli(), [str(a) for a in args], catch_exceptions=False)


def error_line(result: Any) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = " ".join(line.strip() for line in result.stderr.strip().splitlines())
    assert lines.startswith("error: "), result.stderr
    return lines


# ----------------------------------------------------------------------------- JSONL


def test_export_import_round_trip_is_lossless(tmp_path: Path) -> None:
    src = standard_capture(tmp_path / "src.db")
    out = tmp_path / "export.jsonl"
    result = run("export", "--db", src, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "exported 3 sessions" in result.stdout
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    lines = out.read_text(encoding="utf-8").splitlines()
    assert all(line.isprintable() for line in lines)  # DEL, C1, bidi overrides as \u escapes
    header = json.loads(lines[0])
    assert header["format"] == "ocpp-replay-capture" and header["version"] == 1
    assert json.loads(lines[-1]) == {"type": "end", "sessions": 3, "frames": 14, "events": 1}
    assert detect_format(out) == "jsonl"

    dst = tmp_path / "dst.db"
    result = run("import", out, "--db", dst)
    assert result.exit_code == 0, result.stderr
    assert "imported 3 sessions, 14 frames, 1 events" in result.stdout
    assert dump(dst) == dump(src)  # every column, every value, every storage class
    # the exact bytes: text frames as text, binary as blobs
    with Store.open(dst) as store:
        frames = list(store.frames(1))
    expected = alfen_frames() + TRICKY
    assert [(f.direction, f.raw if f.raw is not None else f.raw_bytes) for f in frames] == expected
    assert any("9223372036854775807" in (f.raw or "") for f in frames)

    # The same file again is refused (the sessions are there, same content): nothing imported.
    before = dump(dst)
    line = error_line(run("import", out, "--db", dst))
    assert "holds 3 sessions already in" in line and "(same content as its sessions 1, 3, 2)" in line
    assert "--allow-duplicates" in line
    assert dump(dst) == before
    # Asked for, it goes after the sessions already there, renumbered in file order.
    result = run("import", out, "--db", dst, "--allow-duplicates")
    assert result.exit_code == 0
    assert "session ids: 1→4, 3→5, 2→6" in result.stdout
    with Store.open(dst) as store:
        again = {s.id: s.charge_point_id for s in store.sessions(ids=[4, 5, 6])}
        assert again == {4: "ALF/0001", 5: "CP-3", 6: "CP-2"}
        assert [f.raw for f in store.frames(4)] == [f.raw for f in frames]


def test_export_selection_and_unknown_session(tmp_path: Path) -> None:
    src = standard_capture(tmp_path / "src.db")
    out = tmp_path / "cp3.jsonl"
    assert run("export", "--db", src, "--charge-point", "CP-3", "--out", out).exit_code == 0
    kinds = [json.loads(line).get("type") for line in out.read_text().splitlines()]
    assert kinds == [None, "session", "frame", "frame", "end"]
    out2 = tmp_path / "s1s2.jsonl"
    assert run("export", "--db", src, "--session", "1", "--session", "2", "--out", out2).exit_code == 0
    ids = [json.loads(line)["id"] for line in out2.read_text().splitlines() if '"type":"session"' in line]
    assert ids == [1, 2]
    assert "no session 9" in error_line(run("export", "--db", src, "--session", "9", "--out", tmp_path / "x"))
    assert "exists" in error_line(run("export", "--db", src, "--out", out))  # no silent overwrite
    assert run("export", "--db", src, "--out", out, "--force").exit_code == 0


def test_import_into_a_capture_a_proxy_is_writing_is_refused(tmp_path: Path) -> None:
    """The live writer hands out session ids from memory: an import would collide with them."""
    out = tmp_path / "export.jsonl"
    assert run("export", "--db", standard_capture(tmp_path / "src.db"), "--out", out).exit_code == 0
    live = tmp_path / "live.db"
    writer = CaptureWriter(live, flush_interval=0.01)
    writer.start()
    try:
        sid = writer.open_session(T0, charge_point_id="LIVE")
        assert "being written by another process" in error_line(run("import", out, "--db", live))
        writer.frame(sid, 1, T0, 0.0, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')
        writer.close_session(sid, T0 + 1, close_code=1000, closed_by="cp", frames=1)
    finally:
        writer.close()
    with Store.open(live) as store:
        assert [(s.id, s.charge_point_id, s.frames) for s in store.sessions()] == [(sid, "LIVE", 1)]
    assert run("import", out, "--db", live).exit_code == 0  # free again once the writer is gone


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda lines: lines[:-1], "truncated: no end line"),
        (lambda lines: lines[:-3] + lines[-2:], "the end line counts"),
        (lambda lines: [lines[0], lines[2], *lines[1:]], "before the session itself"),
        (lambda lines: [lines[0].replace('"version":1', '"version":9'), *lines[1:]], "format version 9"),
        (lambda lines: [lines[0], "{not json", *lines[1:]], "line 2: not JSON"),
        (
            lambda lines: [lines[0], '{"type":"frame","session_id":1,"bogus":1}', *lines[1:]],
            "before the session",
        ),
        (lambda lines: ['{"hello": 1}'], "not an ocpp-replay export"),
    ],
)
def test_bad_exports_are_one_line_errors_and_leave_the_target_alone(
    tmp_path: Path, mangle: Any, message: str
) -> None:
    src = standard_capture(tmp_path / "src.db")
    out = tmp_path / "export.jsonl"
    assert run("export", "--db", src, "--out", out).exit_code == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(mangle(out.read_text().splitlines())) + "\n")
    target = tmp_path / "new.db"
    assert message in error_line(run("import", bad, "--db", target))
    assert not target.exists()  # a failed import into a new file leaves no file behind
    existing = make_capture(tmp_path / "existing.db", [{"frames": TRICKY[:2]}])
    before = dump(existing)
    error_line(run("import", bad, "--db", existing))
    assert dump(existing) == before  # one transaction: nothing half-imported


def test_unknown_file_kind(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x89PNG\r\n")
    assert "neither an ocpp-replay JSONL export nor a mitmproxy flow file" in error_line(
        run("import", junk, "--db", tmp_path / "c.db")
    )
    assert "cannot read" in error_line(run("import", tmp_path / "missing.jsonl", "--db", tmp_path / "c.db"))


# ----------------------------------------------------------------------------- old and bad files


def _old_capture(path: Path) -> Path:
    """A capture as the first schema version left it (before the runs tables)."""
    standard_capture(path)
    conn = sqlite3.connect(path)
    for table in ("run_frames", "run_diffs", "runs"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm002_runs'")
    conn.commit()
    conn.close()
    return path


def test_older_schema_opens_and_migrates(tmp_path: Path) -> None:
    old = _old_capture(tmp_path / "old.db")
    out = tmp_path / "old.jsonl"
    assert run("export", "--db", old, "--out", out).exit_code == 0
    assert "m002_runs" in json.loads(out.read_text().splitlines()[0])["migrations"]
    conn = sqlite3.connect(old)
    assert "runs" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    merged = tmp_path / "merged.db"
    # (two old captures made alike: the same sessions in both, merged on purpose)
    old2 = _old_capture(tmp_path / "old2.db")
    assert run("merge", old2, old, "--out", merged, "--allow-duplicates").exit_code == 0


@pytest.mark.parametrize("kind", ["corrupt", "foreign", "directory", "missing"])
def test_corrupt_or_foreign_files_are_one_line_errors(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "bad.db"
    if kind == "corrupt":
        bad.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    elif kind == "foreign":
        conn = sqlite3.connect(bad)
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.commit()
        conn.close()
    elif kind == "directory":
        bad.mkdir()
    good = standard_capture(tmp_path / "good.db")
    export = tmp_path / "good.jsonl"
    assert run("export", "--db", good, "--out", export).exit_code == 0
    commands: list[list[str | Path]] = [
        ["export", "--db", bad, "--out", tmp_path / "x.jsonl"],
        ["redact", "--db", bad, "--out", tmp_path / "x.db"],
        ["merge", good, bad, "--out", tmp_path / "y.db"],
    ]
    if kind != "missing":  # (import and mitm create a missing capture; mitm would exec mitmdump)
        commands.append(["import", export, "--db", bad])
        commands.append(["mitm", "--db", bad, "--", "--version"])
    for args in commands:
        line = error_line(run(*args))
        assert str(bad) in line or "bad.db" in line, line
    assert not (tmp_path / "y.db").exists()


# ----------------------------------------------------------------------------- mitmproxy flow files


def _ws_flow(path: str, protocol: str | None, messages: list[websocket.WebSocketMessage]) -> http.HTTPFlow:
    f = tflow.twebsocketflow()
    f.request.path = path
    f.request.headers["Sec-WebSocket-Protocol"] = "ocpp2.0.1, ocpp1.6"
    f.request.headers["Authorization"] = "Basic Q1AtOTpzM2NyM3Q="  # CP-9:s3cr3t
    if protocol:
        f.response.headers["Sec-WebSocket-Protocol"] = protocol
    assert f.websocket is not None
    f.websocket.messages = messages
    f.websocket.closed_by_client = False
    f.websocket.close_code = 1001
    f.websocket.close_reason = "going away"
    f.websocket.timestamp_end = 946681300.5
    return f


def test_flow_file_websockets_become_sessions(tmp_path: Path) -> None:
    texts = ['[2,"1","Heartbeat",{}]', '[3,"1",{"currentTime":"2000-01-01T00:00:00Z"}]']
    msgs = [
        websocket.WebSocketMessage(Opcode.TEXT, True, texts[0].encode(), timestamp=946681205.25),
        websocket.WebSocketMessage(Opcode.TEXT, False, texts[1].encode(), timestamp=946681205.5),
        websocket.WebSocketMessage(Opcode.BINARY, True, b"\x00\xff", timestamp=946681206.0),
    ]
    ocpp = _ws_flow("/ocpp/CP%2D9?x=1", "ocpp1.6", msgs)
    chat = _ws_flow("/chat", "chat", [websocket.WebSocketMessage(Opcode.TEXT, True, b"hi")])
    chat.request.headers["Sec-WebSocket-Protocol"] = "chat"
    refused = tflow.tflow(resp=True)
    refused.request.headers["Upgrade"] = "websocket"
    refused.request.headers["Sec-WebSocket-Protocol"] = "ocpp1.6"
    refused.request.path = "/ocpp/CP-10"
    refused.response.status_code = 401
    refused.response.reason = "Unauthorized"
    plain = tflow.tflow(resp=True)
    flows = tmp_path / "flows.mitm"
    with open(flows, "wb") as fh:
        writer = io.FlowWriter(fh)
        for f in (plain, chat, ocpp, refused):
            writer.add(f)
    assert detect_format(flows) == "mitmproxy"
    db = tmp_path / "c.db"
    result = run("import", flows, "--db", db)
    assert result.exit_code == 0, result.stderr
    assert "imported 2 sessions, 3 frames" in result.stdout
    with Store.open(db) as store:
        by_cp = {s.charge_point_id: s for s in store.sessions()}
        ws, ref = by_cp["CP-9"], by_cp["CP-10"]
        frames = list(store.frames(ws.id))
        sql = "SELECT offered_subprotocols FROM sessions WHERE id = ?"
        offered = store.db.execute(sql, [ws.id]).fetchone()[0]
    assert ws.path == "/ocpp/CP%2D9" and ws.query == "x=1" and ws.subprotocol == "ocpp1.6"
    assert ws.auth_user == "CP-9"
    assert ws.upstream_url == "ws://example.com/ocpp/CP%2D9?x=1"
    assert (ws.close_code, ws.close_reason, ws.closed_by) == (1001, "going away", "csms")
    assert ws.started_at == "1999-12-31T23:00:00.000000Z" and ws.ended_at == "1999-12-31T23:01:40.500000Z"
    assert ws.frames == 3
    assert offered == "ocpp2.0.1,ocpp1.6"
    assert [f.raw for f in frames[:2]] == texts and frames[2].raw_bytes == b"\x00\xff"
    assert [f.direction for f in frames] == [Direction.TO_CSMS, Direction.TO_CP, Direction.TO_CSMS]
    assert [f.elapsed for f in frames] == [5.25, 5.5, 6.0]
    assert frames[1].action == "Heartbeat"  # results paired with their call, as the writer does
    assert frames[0].timestamp == "1999-12-31T23:00:05.250000Z"
    assert (ref.upstream_status, ref.closed_by) == (401, "upstream")
    assert b"s3cr3t" not in db.read_bytes()
    # every websocket flow, with --subprotocol ''
    db2 = tmp_path / "all.db"
    assert run("import", flows, "--db", db2, "--subprotocol", "").exit_code == 0
    with Store.open(db2) as store:
        assert sorted(s.charge_point_id for s in store.sessions()) == ["CP-10", "CP-9", "chat"]
    # The same flow file twice: refused, whole; a JSONL export of the same sessions too.
    assert "holds 2 sessions already in" in error_line(run("import", flows, "--db", db))
    export = tmp_path / "flows.jsonl"
    assert run("export", "--db", db, "--out", export).exit_code == 0
    assert "holds 2 sessions already in" in error_line(run("import", export, "--db", db))
    with Store.open(db) as store:
        assert len(list(store.sessions())) == 2


def test_one_duplicate_session_refuses_the_whole_file(tmp_path: Path) -> None:
    """A file holding one session already there and one new: nothing imported; the new one
    differs only by one frame's text, which the content hash sees."""
    first = make_capture(tmp_path / "a.db", [{"frames": TRICKY[:2]}, {"start": T0 + 9, "frames": TRICKY[:2]}])
    second = make_capture(
        tmp_path / "b.db",
        [{"frames": TRICKY[:2]}, {"start": T0 + 9, "frames": [TRICKY[0], (Direction.TO_CP, '[3,"1",{}]')]}],
    )
    out = tmp_path / "b.jsonl"
    assert run("export", "--db", second, "--out", out).exit_code == 0
    before = dump(first)
    line = error_line(run("import", out, "--db", first))
    assert "holds 1 session already in" in line and "(same content as its session 1)" in line
    assert dump(first) == before
    assert run("import", out, "--db", first, "--allow-duplicates").exit_code == 0
    with Store.open(first) as store:
        assert [s.id for s in store.sessions()] == [1, 3, 2, 4]


def test_every_capture_tool_command_is_documented() -> None:
    docs = "".join(p.read_text() for p in (Path(__file__).resolve().parents[1] / "docs").glob("*.md"))
    names = [c.name for c in cli().registered_commands]
    assert sorted(names) == ["backup", "export", "import", "merge", "mitm", "prune", "redact"]  # type: ignore[type-var]
    for name in names:
        assert f"ocpp-replay {name} " in docs, name


def test_the_same_session_twice_in_one_file_is_refused(tmp_path: Path) -> None:
    src = make_capture(tmp_path / "a.db", [{"frames": TRICKY[:2]}])
    out = tmp_path / "a.jsonl"
    assert run("export", "--db", src, "--out", out).exit_code == 0
    header, *body, _end = out.read_text().splitlines()
    again = [json.dumps(dict(json.loads(line), **({"id": 2} if '"session"' in line else {"session_id": 2})))
             for line in body]  # fmt: skip
    twice = tmp_path / "twice.jsonl"
    end = {"type": "end", "sessions": 2, "frames": 4, "events": 0}
    twice.write_text("\n".join([header, *body, *again, json.dumps(end)]) + "\n")
    line = error_line(run("import", twice, "--db", tmp_path / "new.db"))
    assert "holds 1 session twice in the file" in line
    assert run("import", twice, "--db", tmp_path / "new.db", "--allow-duplicates").exit_code == 0
