"""Merging the captures of several proxies into one."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

from ocpp_replay.core.frames import Direction
from ocpp_replay.share.merge import merge_order
from ocpp_replay.store import Store
from tests.test_exchange import T0, TRICKY, dump, error_line, make_capture, run


def test_merge_order_is_by_start_then_input_then_id() -> None:
    a = [(1, "2026-01-01T10:00:00.000000Z"), (2, "2026-01-01T12:00:00.000000Z")]
    b = [(1, "2026-01-01T11:00:00.000000Z"), (7, "2026-01-01T10:00:00.000000Z")]
    assert merge_order([a, b]) == [{1: 1, 2: 4}, {7: 2, 1: 3}]
    assert merge_order([[], a]) == [{}, {1: 1, 2: 2}]


def test_merge_two_proxies(tmp_path: Path) -> None:
    # Proxy A saw CP-1 at t=0 and t=30; proxy B saw CP-2 at t=10 and CP-1 again at t=20.
    frames_a = TRICKY[:3]
    frames_b = [(Direction.TO_CSMS, '[2,"9","Heartbeat",{}]'), (Direction.TO_CP, '[3,"9",{}]')]
    a = make_capture(
        tmp_path / "a.db",
        [
            {"start": T0, "fields": {"charge_point_id": "CP-1"}, "frames": frames_a, "event": "lost 1"},
            {"start": T0 + 30, "fields": {"charge_point_id": "CP-1"}, "frames": frames_a},
        ],
    )
    b = make_capture(
        tmp_path / "b.db",
        [
            {"start": T0 + 10, "fields": {"charge_point_id": "CP-2"}, "frames": frames_b},
            {"start": T0 + 20, "fields": {"charge_point_id": "CP-1", "remote_addr": "10.1.1.1"}},
        ],
    )
    out = tmp_path / "site.db"
    result = run("merge", a, b, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "4 sessions, 8 frames" in " ".join(result.stdout.split()) and "runs not merged" in result.stdout
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with Store.open(out) as merged, Store.open(a) as sa, Store.open(b) as sb:
        sessions = merged.sessions()
        assert [(s.id, s.charge_point_id) for s in sessions] == [
            (1, "CP-1"),
            (2, "CP-2"),
            (3, "CP-1"),
            (4, "CP-1"),
        ]
        assert [s.started_at for s in sessions] == sorted(s.started_at for s in sessions)
        origin = {1: (sa, 1), 2: (sb, 1), 3: (sb, 2), 4: (sa, 2)}
        for new, (src, old) in origin.items():
            got, want = merged.session(new), src.session(old)
            assert got.as_dict() | {"id": old} == want.as_dict()  # every column, timeline unchanged
            moved = [dataclasses.replace(f, session_id=old) for f in merged.frames(new)]
            assert moved == list(src.frames(old))
        events = [(e["session_id"], e["kind"], e["detail"]) for e in merged.events()]
        assert (1, "frames_lost", "lost 1") in events
        assert (3, "merged_from", "b.db session 2") in events
        assert (4, "merged_from", "a.db session 2") in events


def test_merge_refuses_bad_outputs_and_inputs(tmp_path: Path) -> None:
    a = make_capture(tmp_path / "a.db", [{"frames": TRICKY[:1]}])
    before = dump(a)
    assert "not one of the inputs" in error_line(run("merge", a, "--out", a, "--force"))
    assert "twice" in error_line(run("merge", a, a, "--out", tmp_path / "x.db"))
    assert "no capture at" in error_line(run("merge", a, tmp_path / "none.db", "--out", tmp_path / "x.db"))
    assert not (tmp_path / "x.db").exists()
    (tmp_path / "exists.db").write_bytes(b"")
    assert "exists" in error_line(run("merge", a, "--out", tmp_path / "exists.db"))
    assert dump(a) == before


def test_merge_refuses_the_same_recording_in_two_inputs(tmp_path: Path) -> None:
    """A copy of a capture under another name (or a capture merged before) holds the same
    sessions: merged, they would count twice."""
    import shutil

    a = make_capture(tmp_path / "a.db", [{"frames": TRICKY[:2]}, {"start": T0 + 5, "frames": TRICKY[2:4]}])
    copy = tmp_path / "copy.db"
    shutil.copy(a, copy)
    other = make_capture(tmp_path / "c.db", [{"start": T0 + 1, "frames": TRICKY[:2]}])  # other start
    out = tmp_path / "m.db"
    line = error_line(run("merge", a, other, copy, "--out", out))
    assert "the inputs hold 2 sessions twice (same content)" in line
    assert "copy.db session 1 = a.db session 1; copy.db session 2 = a.db session 2" in line
    assert not out.exists()
    assert run("merge", a, other, "--out", out).exit_code == 0
    result = run("merge", a, other, copy, "--out", tmp_path / "all.db", "--allow-duplicates")
    assert result.exit_code == 0, result.stderr
    assert "5 sessions" in result.stdout
