"""The capture store on real SQLite files."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ocpp_replay.core.frames import Direction
from ocpp_replay.errors import CaptureError, CaptureNotFound, UnknownSession
from ocpp_replay.store import CaptureWriter, Store, migrations, utc_iso

pytestmark = pytest.mark.timeout(30)


def write_session(writer: CaptureWriter, cp: str, frames: list[tuple[Direction, str]]) -> int:
    sid = writer.open_session(time.time(), charge_point_id=cp, subprotocol="ocpp1.6")
    for seq, (direction, raw) in enumerate(frames, 1):
        writer.frame(sid, seq, time.time(), seq * 0.5, direction, raw)
    writer.close_session(sid, time.time(), close_code=1000, closed_by="cp", frames=len(frames))
    return sid


def test_new_capture_is_owner_only_and_migrated(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "c.db"
    store = Store.open(db, create=True)
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    names = {m.name for m in migrations.applied(store.db)}
    assert {"m001_capture", "m002_runs"} <= names
    store.close()
    Store.open(db).close()  # opening again applies nothing and keeps working


def test_missing_corrupt_and_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CaptureNotFound):
        Store.open(tmp_path / "nope.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(CaptureError, match="not"):
        Store.open(garbage)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(CaptureError, match="not an ocpp-replay capture"):
        Store.open(foreign)
    with pytest.raises(CaptureError, match="directory"):
        Store.open(tmp_path)


def test_writer_records_sessions_frames_and_pairs_actions(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path / "c.db", flush_interval=0.01)
    writer.start()
    sid = write_session(
        writer,
        "ALF-1",
        [
            (Direction.TO_CSMS, '[2,"1","Authorize",{"idTag":"X"}]'),
            (Direction.TO_CP, '[2,"1","GetConfiguration",{}]'),
            (Direction.TO_CP, '[3,"1",{"idTagInfo":{"status":"Accepted"}}]'),
            (Direction.TO_CSMS, '[4,"1","NotSupported","",{}]'),
        ],
    )
    writer.close()
    store = Store.open(tmp_path / "c.db")
    info = store.session(sid)
    assert info.frames == 4 and info.close_code == 1000 and info.ended_at
    assert [f.action for f in store.frames(sid)] == [
        "Authorize",
        "GetConfiguration",
        "Authorize",
        "GetConfiguration",
    ]
    with pytest.raises(UnknownSession):
        store.session(999)


def test_frames_reach_disk_within_the_flush_interval(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path / "c.db", flush_interval=0.05)
    writer.start()
    sid = writer.open_session(time.time(), charge_point_id="CP")
    writer.frame(sid, 1, time.time(), 0.0, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')
    reader = sqlite3.connect(tmp_path / "c.db")
    deadline = time.monotonic() + 5
    while reader.execute("SELECT count(*) FROM frames").fetchone()[0] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    writer.close()


def test_a_locked_database_delays_but_loses_nothing(tmp_path: Path) -> None:
    """Another process holds the write lock for a while: frames wait in memory, then land."""
    db = tmp_path / "c.db"
    writer = CaptureWriter(db, flush_interval=0.02)
    writer.start()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    sid = writer.open_session(time.time(), charge_point_id="CP")
    for seq in range(1, 201):
        writer.frame(sid, seq, time.time(), seq / 100, Direction.TO_CSMS, f'[2,"{seq}","Heartbeat",{{}}]')
    time.sleep(1.5)  # longer than sqlite's busy timeout: at least one flush fails
    assert writer.stats.failures >= 1
    blocker.execute("COMMIT")
    writer.close_session(sid, time.time(), frames=200)
    writer.close()
    assert writer.stats.frames_lost == 0
    assert Store.open(db).session(sid).frames == 200


def test_overflow_drops_counts_and_marks_the_loss(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    writer = CaptureWriter(db, flush_interval=0.02, max_pending=50)
    # not started: nothing drains the queue, as when the disk stalls completely
    sid = writer.open_session(time.time(), charge_point_id="CP")
    for seq in range(1, 101):
        writer.frame(sid, seq, time.time(), 0.0, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')
    writer.close_session(sid, time.time(), frames=100)
    writer.close()
    store = Store.open(db)
    info = store.session(sid)
    assert info.frames + info.frames_lost == 100
    assert info.frames_lost == writer.stats.frames_lost > 0
    [event] = store.events(sid)
    assert event["kind"] == "frames_lost" and "between seq" in event["detail"]


def test_sessions_left_open_by_a_dead_proxy_are_closed_on_next_start(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    writer = CaptureWriter(db)
    sid = writer.open_session(time.time(), charge_point_id="CP")
    writer.frame(sid, 1, time.time(), 0.0, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')
    writer._flush()  # what a killed proxy managed to write
    writer._conn.close()
    writer._lock.release()  # the kernel does this when the process dies
    CaptureWriter(db).close()
    info = Store.open(db).session(sid)
    assert info.ended_at is not None and info.closed_by == "unknown"
    raw = sqlite3.connect(db).execute("SELECT frames FROM sessions WHERE id = ?", [sid]).fetchone()
    assert raw == (1,)  # the frames column is filled in too, not left NULL


def test_a_second_writer_on_a_capture_is_refused(tmp_path: Path) -> None:
    """Two writers would hand out the same session ids and end each other's live sessions."""
    db = tmp_path / "c.db"
    first = CaptureWriter(db, flush_interval=0.01)
    first.start()
    sid = first.open_session(time.time(), charge_point_id="LIVE")
    first.frame(sid, 1, time.time(), 0.0, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')
    time.sleep(0.1)
    with pytest.raises(CaptureError, match=f"another process \\(pid {os.getpid()}\\).*merge"):
        CaptureWriter(db)
    first.close_session(sid, time.time(), close_code=1000, closed_by="cp", frames=1)
    first.close()
    info = Store.open(db).session(sid)
    assert (info.closed_by, info.close_code, info.frames) == ("cp", 1000, 1)  # not ended by the refused one
    assert stat.S_IMODE(os.stat(f"{db}-lock").st_mode) == 0o600
    CaptureWriter(db).close()  # once the first writer is closed, the capture is free again


def test_the_writer_lock_dies_with_its_process(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    code = (
        "import os, sys, time\n"
        "from ocpp_replay.store import CaptureWriter\n"
        "w = CaptureWriter(sys.argv[1])\n"
        "w.open_session(time.time(), charge_point_id='CP')\n"
        "w._flush()\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        with pytest.raises(CaptureError, match=f"pid {proc.pid}"):
            CaptureWriter(db)
    finally:
        proc.kill()  # kill -9: no clean-up in the writer
        proc.communicate(timeout=10)
    CaptureWriter(db).close()
    [info] = Store.open(db).sessions()
    assert info.closed_by == "unknown" and info.ended_at is not None


def test_writer_is_safe_against_concurrent_readers(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    writer = CaptureWriter(db, flush_interval=0.005)
    writer.start()
    sid = writer.open_session(time.time(), charge_point_id="CP")
    stop = threading.Event()
    seen: list[int] = []

    def read() -> None:
        store = Store.open(db)
        while not stop.is_set():
            seen.append(len(list(store.frames(sid))))
        store.close()

    t = threading.Thread(target=read)
    t.start()
    for seq in range(1, 2001):
        writer.frame(sid, seq, time.time(), 0.0, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')
    writer.close()
    stop.set()
    t.join(10)
    assert seen == sorted(seen)
    assert Store.open(db).session(sid).frames == 2000


def test_utc_iso_has_microseconds() -> None:
    assert utc_iso(1764090427.123456) == "2025-11-25T17:07:07.123456Z"
    assert utc_iso(0.9999996) == "1970-01-01T00:00:01.000000Z"


def test_frame_timestamps_are_utc_iso_of_their_wall_clock_time(tmp_path: Path) -> None:
    # The writer formats a second's date once and the microseconds per frame: every stored
    # timestamp must still be utc_iso of the frame's time, also around a rounding into the
    # next second, across seconds, and for a clock set before 1970.
    walls = [1764090427.9999996, 1764090427.5, 1764090427.000001, 1764090428.25, 1764090427.75,
             1764090429.9999999, 1764090429.1, -0.5, 0.3]  # fmt: skip
    writer = CaptureWriter(tmp_path / "c.db")
    sid = writer.open_session(walls[0], charge_point_id="ALF-1")
    for seq, wall in enumerate(walls, 1):
        writer.frame(sid, seq, wall, 0.0, Direction.TO_CSMS, f'[2,"{seq}","Heartbeat",{{}}]')
    writer.close()
    with Store.open(tmp_path / "c.db") as store:
        assert [f.timestamp for f in store.frames(sid)] == [utc_iso(w) for w in walls]


def test_a_row_sqlite_refuses_does_not_hold_back_the_rest(tmp_path: Path) -> None:
    """A permanent error (here a duplicate key) is isolated row by row: only that row is lost."""
    db = tmp_path / "c.db"
    writer = CaptureWriter(db, flush_interval=0.01)
    sid = writer.open_session(time.time(), charge_point_id="CP")
    writer.frame(sid, 1, time.time(), 0.0, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')
    writer.frame(sid, 1, time.time(), 0.0, Direction.TO_CSMS, '[2,"dup","Heartbeat",{}]')  # same key
    for seq in range(2, 6):
        writer.frame(sid, seq, time.time(), 0.0, Direction.TO_CSMS, f'[2,"{seq}","Heartbeat",{{}}]')
    writer.close_session(sid, time.time(), close_code=1000, frames=6)
    writer.start()
    writer.close()
    store = Store.open(db)
    assert [f.unique_id for f in store.frames(sid)] == ["1", "2", "3", "4", "5"]
    info = store.session(sid)
    assert info.close_code == 1000 and info.frames_lost == 1 == writer.stats.frames_lost
    assert writer.pending == 0


def test_backup_copies_what_only_the_wal_holds_while_the_writer_is_open(tmp_path: Path) -> None:
    from ocpp_replay.store.backup import backup_capture

    db = tmp_path / "site.db"
    writer = CaptureWriter(db, flush_interval=0.01)
    writer.start()
    try:
        for n in range(3):
            write_session(writer, f"CP{n}", [(Direction.TO_CSMS, f'[2,"{n}","Heartbeat",{{}}]')] * 4)
        deadline = time.monotonic() + 10
        with sqlite3.connect(db) as reader:  # wait until the writer has committed all 12 frames
            while reader.execute("SELECT count(*) FROM frames").fetchone()[0] < 12:
                assert time.monotonic() < deadline, "the writer never committed the frames"
                time.sleep(0.01)
        # The proxy is still writing: its frames are in site.db-wal, not (all) in site.db.
        assert Path(f"{db}-wal").stat().st_size > 0
        out = tmp_path / "backup.db"
        result = backup_capture(db, out)
    finally:
        writer.close()
    assert (result.sessions, result.frames) == (3, 12)
    assert not Path(f"{out}-wal").exists()  # one self-contained file
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with Store.open(out) as store:
        assert [s.charge_point_id for s in store.sessions()] == ["CP0", "CP1", "CP2"]


def test_backup_refuses_an_existing_out_and_a_non_capture(tmp_path: Path) -> None:
    from ocpp_replay.errors import ConfigError
    from ocpp_replay.store.backup import backup_capture

    db = tmp_path / "c.db"
    Store.open(db, create=True).close()
    out = tmp_path / "out.db"
    out.write_text("keep me")
    with pytest.raises(ConfigError, match="exists; choose another --out or pass --force"):
        backup_capture(db, out)
    assert out.read_text() == "keep me"
    assert backup_capture(db, out, force=True).sessions == 0
    with pytest.raises(CaptureNotFound):
        backup_capture(tmp_path / "missing.db", tmp_path / "x.db")
    assert not (tmp_path / "x.db").exists()


def test_backup_command_one_line_and_errors(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    writer = CaptureWriter(db)
    writer.start()
    write_session(writer, "CP1", [(Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')])
    writer.close()
    out = tmp_path / "b.db"
    cmd = [sys.executable, "-m", "ocpp_replay.cli", "backup", "--db", str(db), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "backed up" in done.stdout and "1 session, 1 frame" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [f"error: {out} exists; choose another --out or pass --force"]


def test_calls_past_the_pairing_budget_are_marked_in_the_capture(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    writer = CaptureWriter(db, pairing_budget=100)
    writer.start()
    calls = [(Direction.TO_CSMS, f'[2,"{i}","Heartbeat",{{}}]') for i in range(150)]
    results = [(Direction.TO_CP, f'[3,"{i}",{{"currentTime":"2026-01-01T00:00:00Z"}}]') for i in range(150)]
    sid = write_session(writer, "CP1", calls + results)
    writer.close()
    with sqlite3.connect(db) as conn:
        sql = "SELECT action FROM frames WHERE message_type = 3 ORDER BY seq"
        actions = [r[0] for r in conn.execute(sql)]
        events = conn.execute("SELECT session_id, kind, detail FROM capture_events").fetchall()
    assert actions == [None] * 50 + ["Heartbeat"] * 100  # the 100 newest paired exactly
    assert [(s, k) for s, k, _ in events] == [(sid, "pairing_overflow")]
    assert "more than 100 unanswered calls" in events[0][2]


def _runs_capture(db: Path, n: int) -> list[int]:
    from ocpp_replay.core.diff import Difference, DiffKind
    from ocpp_replay.core.results import RunResult, SessionResult
    from ocpp_replay.store import store_run

    d = Difference(1, "CP1", 2, "Heartbeat", DiffKind.CHANGED, "currentTime", "a", "b")
    s = SessionResult(1, "CP1", "ocpp1.6", None, None, (d,), {"Heartbeat": 1})
    ids = []
    with Store.open(db, create=True) as store:
        for _ in range(n):
            run_id = store_run(store, RunResult("ws://t/ocpp", "2026-01-01T00:00:00Z", "", (s,))).run_id
            assert run_id is not None
            ids.append(run_id)
    return ids


def _counts(db: Path) -> dict[str, list[int]]:
    with sqlite3.connect(db) as conn:
        diffs = sorted({r[0] for r in conn.execute("SELECT run_id FROM run_diffs")})
        return {"run_diffs": diffs, "runs": [r[0] for r in conn.execute("SELECT id FROM runs ORDER BY id")]}


def test_runs_delete_and_prune_remove_runs_with_their_differences(tmp_path: Path) -> None:
    from ocpp_replay.errors import ReplayError
    from ocpp_replay.store.runs import delete_run, prune_runs

    db = tmp_path / "c.db"
    assert _runs_capture(db, 5) == [1, 2, 3, 4, 5]
    with Store.open(db) as store:
        delete_run(store, 2)
        with pytest.raises(ReplayError, match="no run 2 in"):
            delete_run(store, 2)
        assert _counts(db) == {"run_diffs": [1, 3, 4, 5], "runs": [1, 3, 4, 5]}
        assert prune_runs(store, 2) == [1, 3]
        assert _counts(db) == {"run_diffs": [4, 5], "runs": [4, 5]}
        assert prune_runs(store, 2) == []


def test_runs_delete_and_prune_commands(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    _runs_capture(db, 4)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "ocpp_replay.cli", "runs", *args, "--db", str(db)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    assert cli("delete", "1").stdout.strip() == "deleted run 1"
    gone = cli("delete", "1")
    assert gone.returncode == 2 and gone.stderr.startswith("error: no run 1 in ")
    assert cli("prune", "--keep", "1").stdout.strip() == "deleted 2 runs: 2, 3"
    bad = cli("prune")
    assert bad.returncode == 2
    assert bad.stderr == "error: runs prune takes --keep N: ocpp-replay runs prune --keep N\n"
    assert _counts(db)["runs"] == [4]


def test_a_newer_schema_is_read_with_one_warning_and_refused_for_writing(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    writer = CaptureWriter(db)
    writer.start()
    write_session(writer, "CP1", [(Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')])
    writer.close()
    with sqlite3.connect(db) as conn:  # what a newer ocpp-replay would have done to it
        conn.execute("ALTER TABLE frames ADD COLUMN future_column TEXT")
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('ocpp_replay', 'm999_future', '2027-01-01T00:00:00')"
        )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "ocpp_replay.cli", *args, "--db", str(db)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    shown = cli("show", "1")
    assert shown.returncode == 0, shown.stderr
    assert "Heartbeat" in shown.stdout
    assert shown.stderr.count("warning:") == 1 and "m999_future" in shown.stderr
    exported = cli("export", "--out", str(tmp_path / "x.jsonl"))
    assert exported.returncode == 2
    assert exported.stderr.startswith("error: ") and exported.stderr.count("\n") == 1
    newer = r"schema version m999_future, newer than this ocpp-replay's m\d{3}_\w+: upgrade"
    assert re.search(newer, exported.stderr)
    assert not (tmp_path / "x.jsonl").exists()
    with pytest.raises(CaptureError, match="m999_future"):
        CaptureWriter(db)


def test_a_stalled_capture_holds_at_most_its_byte_budget(tmp_path: Path) -> None:
    """Issue 14.2: 1 MB frames while nothing drains the queue: memory stays within the byte
    budget; the frames past it are forwarded unrecorded, counted and marked in the capture."""
    db = tmp_path / "c.db"
    writer = CaptureWriter(db, max_pending_bytes=5 * 1024 * 1024)
    sid = writer.open_session(time.time(), charge_point_id="CP")
    blob = '[2,"1","DataTransfer",{"vendorId":"Alfen BV","data":"' + "x" * 1_000_000 + '"}]'
    for seq in range(1, 21):
        writer.frame(sid, seq, time.time(), 0.0, Direction.TO_CSMS, blob)
        assert writer.pending_bytes <= 5 * 1024 * 1024
    assert writer.pending_bytes == 5 * len(blob) and writer.stats.frames_lost == 15
    writer.close_session(sid, time.time(), frames=20)
    writer.close()
    info = Store.open(db).session(sid)
    assert (info.frames, info.frames_lost) == (5, 15)
    assert writer.pending_bytes == 0


def test_a_full_disk_takes_what_fits_as_soon_as_space_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14.2: a batch held back by a full disk is retried in bounded transactions, so a
    little free space lets part of it in (one transaction of the whole backlog would still fail);
    nothing within the budget is lost. The database's page limit plays the full disk."""
    from ocpp_replay.store import writer as writer_module

    monkeypatch.setattr(writer_module, "RETRY_CHUNK_BYTES", 256 * 1024)
    db = tmp_path / "c.db"
    writer = CaptureWriter(db, max_pending_bytes=8 * 1024 * 1024)
    sid = writer.open_session(time.time(), charge_point_id="CP")
    writer._flush()
    conn = writer._conn
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    [(pages,)] = conn.execute("PRAGMA page_count").fetchall()
    conn.execute(f"PRAGMA max_page_count = {pages}")  # full
    blob = '[2,"1","DataTransfer",{"vendorId":"Alfen BV","data":"' + "y" * 100_000 + '"}]'
    for seq in range(1, 31):
        writer.frame(sid, seq, time.time(), 0.0, Direction.TO_CSMS, blob)
    writer._flush()
    assert writer.stats.failures >= 1 and writer.stats.frames_written == 0
    assert writer.pending == 30 and writer.pending_bytes == 30 * len(blob)
    conn.execute(f"PRAGMA max_page_count = {pages + 400}")  # ~1.6 MB free: room for some, not all
    writer._flush()
    assert 0 < writer.stats.frames_written < 30
    assert writer.pending == 30 - writer.stats.frames_written
    conn.execute("PRAGMA max_page_count = 1073741823")
    writer._flush()
    writer.close_session(sid, time.time(), frames=30)
    writer.close()
    assert writer.stats.frames_lost == 0
    info = Store.open(db).session(sid)
    assert (info.frames, info.frames_lost) == (30, 0)
    seqs = [r[0] for r in sqlite3.connect(db).execute("SELECT seq FROM frames ORDER BY rowid")]
    assert seqs == list(range(1, 31))  # oldest first, in order
