"""What retention costs the capture writer (docs/capture.md, docs/performance.md).

    python benchmarks/capture_retention.py [--old 1000000] [--rate 2000] [--seconds 20]

Builds a capture holding OLD frames from a year ago (closed sessions of MeterValues and their
answers); on a copy of it, a capture writer (the proxy's) opens CONNECTIONS connections open
since then (each with a boot, a status, an open transaction and its meter values, so that
pruning cuts them and keeps their priming frames) and takes RATE frames a second of new traffic
for SECONDS; twice:

- baseline: no retention;
- retention: ``--retain 30d``, which has all the old data to prune while the traffic flows.

Reported for each: the longest time between two flushes (the writer's pace; the flush interval
is 50 ms), the longest flush, frames lost, and with retention the frames pruned, how long the
pass took, its longest step and the data size before and after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from ocpp_replay.core.frames import Direction
from ocpp_replay.store.retention import Pruner, Retention
from ocpp_replay.store.writer import CaptureWriter

YEAR = 365 * 86400.0
SAMPLE = {"value": "1234.5", "measurand": "Energy.Active.Import.Register"}
METER = json.dumps(
    {
        "connectorId": 1,
        "transactionId": 7,
        "meterValue": [{"timestamp": "2025-12-01T00:00:00Z", "sampledValue": [SAMPLE]}],
    }
)
BOOT = '{"chargePointVendor":"Alfen BV","chargePointModel":"NG910"}'
START = '{"connectorId":1,"idTag":"A","meterStart":0,"timestamp":"t"}'
CALLS = [
    ("BootNotification", BOOT, '{"status":"Accepted","currentTime":"t","interval":300}'),
    ("StatusNotification", '{"connectorId":1,"status":"Charging","errorCode":"NoError"}', "{}"),
    ("StartTransaction", START, '{"transactionId":7,"idTagInfo":{"status":"Accepted"}}'),
] + [("MeterValues", METER, "{}")] * 40


def build(db: Path, old: int) -> None:
    """OLD frames in closed sessions of 10,000 frames, a year ago."""
    writer = CaptureWriter(db, max_pending=old * 2)
    t0 = time.time() - YEAR
    per = 10_000
    for n in range(0, old, per):
        start = t0 + n * 0.01
        sid = writer.open_session(start, charge_point_id=f"OLD-{n // per}", subprotocol="ocpp1.6")
        for seq in range(min(per, old - n)):
            uid = str(seq // 2)
            text = f'[2,"{uid}","MeterValues",{METER}]' if seq % 2 == 0 else f'[3,"{uid}",{{}}]'
            writer.frame(sid, seq + 1, start + seq * 0.01, seq * 0.01,
                         Direction.TO_CSMS if seq % 2 == 0 else Direction.TO_CP, text)  # fmt: skip
        writer.close_session(sid, start + per * 0.01, closed_by="cp", close_code=1000, frames=per)
    writer.close()


def feed(
    db: Path, connections: int, rate: int, seconds: float, retention: Retention | None
) -> dict[str, object]:
    """CONNECTIONS connections open since a year ago (boot, status, a transaction, meter
    values), then RATE new frames a second for SECONDS."""
    writer = CaptureWriter(db, retention=retention)
    before = Pruner(writer._conn, Retention(max_age=1.0)).data_bytes()
    t0 = time.time() - YEAR
    for c in range(connections):
        start = t0 + c
        sid = writer.open_session(start, charge_point_id=f"OPEN-{c}", subprotocol="ocpp1.6")
        for i, (action, payload, answer) in enumerate(CALLS):
            call = f'[2,"{i}","{action}",{payload}]'
            writer.frame(sid, 2 * i + 1, start + i, float(i), Direction.TO_CSMS, call)
            writer.frame(sid, 2 * i + 2, start + i + 0.1, i + 0.1, Direction.TO_CP, f'[3,"{i}",{answer}]')
    writer.start()
    sessions = [
        writer.open_session(time.time(), charge_point_id=f"NEW-{n}", subprotocol="ocpp1.6")
        for n in range(100)
    ]
    seqs = dict.fromkeys(sessions, 0)
    done_at: list[float] = []
    started = time.monotonic()
    tick = 0.01
    sent = 0
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate)
        while sent < due:
            sid = sessions[sent % len(sessions)]
            seqs[sid] += 1
            writer.frame(
                sid, seqs[sid], time.time(), 1.0, Direction.TO_CSMS, f'[2,"{sent}","MeterValues",{METER}]'
            )
            sent += 1
        p = writer.pruner
        if p is not None and not done_at and p.stats.passes and p._cutoff is None:
            done_at.append(time.monotonic() - started)
        time.sleep(tick)
    writer.close()
    conn = sqlite3.connect(db)
    after = Pruner(conn, Retention(max_age=1.0)).data_bytes()
    conn.close()
    out: dict[str, object] = {
        "frames fed": sent,
        "max gap between flushes ms": round(writer.stats.max_flush_gap * 1000, 1),
        "max flush ms": round(writer.stats.max_flush_seconds * 1000, 1),
        "frames lost": writer.stats.frames_lost,
        "data MB before/after": f"{before / 1e6:.1f} / {after / 1e6:.1f}",
    }
    if writer.pruner is not None:
        st = writer.pruner.stats
        out.update({
            "frames pruned": st.frames_pruned,
            "sessions removed / cut": f"{st.sessions_pruned} / {st.sessions_cut}",
            "pass done after s": round(done_at[0], 2) if done_at else "not within the run",
            "steps": st.steps,
            "max step ms": round(st.max_step_seconds * 1000, 1),
            "pruned frames/s": round(st.frames_pruned / done_at[0]) if done_at else None,
        })  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=int, default=1_000_000, help="old frames to prune")
    ap.add_argument("--connections", type=int, default=1_000, help="connections open across the cut-off")
    ap.add_argument("--rate", type=int, default=2_000, help="new frames a second while pruning")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.db"
        t = time.monotonic()
        build(base, args.old)
        took = time.monotonic() - t
        print(f"built {base.stat().st_size / 1e6:.0f} MB: {args.old} old frames ({took:.1f} s)")
        for name, retention in (
            ("baseline (no retention)", None),
            ("--retain 30d", Retention(max_age=30 * 86400.0)),
        ):
            db = Path(tmp) / "run.db"
            for suffix in ("", "-wal", "-shm", "-lock"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            shutil.copy(base, db)
            result = feed(db, args.connections, args.rate, args.seconds, retention)
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
