"""A 1-hour window of a capture of millions of frames: memory against the capture's size.

    python benchmarks/replay_stream.py [--frames 5000000] [--chargers 250] [--speed 60]
    python benchmarks/replay_stream.py --baseline-ref 8f48a45    # the same, with that commit too
    python benchmarks/replay_stream.py --whole --frames 200000 --chargers 50 --interval 1 \
        --connection-days 0.000694 --speed 10 --baseline-ref 8f48a45   # whole captures, 1-min connections

Builds (once; kept in ``--dir``) two captures with the capture writer that differ only in
length: ``--frames`` frames and a tenth of that, ``--chargers`` chargers each sending
MeterValues every ``--interval`` seconds in transactions of a few hours, reconnecting every
``--connection-days`` (default 7: as long as the big capture lasts; a window meets connections
open for days, and primes them). Then replays the
1-hour window in the middle of each with the real ``ocpp-replay replay --from/--to`` command at
``--speed`` against the fast CSMS of replay_scale.py, sampling the replaying process's RSS every
0.1 s, and prints it at 10 %, 50 % and 90 % of the run and at its peak, with the command's wall
time and its differences (expected: 0). With ``--baseline-ref`` the same runs use the code of
that commit (a git worktree), in the same invocation, so the change is a ratio. ``--whole``
replays each capture whole instead (size it to a few minutes: it replays every frame).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.replay_scale import serve  # noqa: E402
from ocpp_replay.core.frames import Direction  # noqa: E402
from ocpp_replay.store import CaptureWriter, utc_iso  # noqa: E402

DAY = 86_400.0


class _Connection:
    """One recorded connection: calls of the charger, each answered 2 ms later."""

    def __init__(self, w: CaptureWriter, cp: str, start: float, uid: int) -> None:
        self.w, self.start, self.uid = w, start, uid
        self.sid = w.open_session(start, charge_point_id=cp, subprotocol="ocpp1.6")
        self.seq = 0
        self.elapsed = 0.0

    def put(self, direction: Direction, body: list[object]) -> None:
        self.seq += 1
        if self.seq % 1_000 == 0:
            while self.w.pending > 50_000:  # the writer drops frames past its backlog: wait
                time.sleep(0.01)
        data = json.dumps(body, separators=(",", ":"))
        self.w.frame(self.sid, self.seq, self.start + self.elapsed, self.elapsed, direction, data)

    def call(self, action: str, payload: dict[str, object], answer: dict[str, object]) -> None:
        self.uid += 1
        self.put(Direction.TO_CSMS, [2, str(self.uid), action, payload])
        self.elapsed += 0.002
        self.put(Direction.TO_CP, [3, str(self.uid), answer])


def make_capture(
    db: Path, frames: int, chargers: int, interval: float, connection_days: float, seed: int = 7
) -> tuple[float, float]:
    """A capture of about ``frames`` frames; returns its first and last instants (epoch s)."""
    rng = random.Random(seed)
    per_charger = frames // chargers // 2  # calls, each answered
    duration = per_charger * interval
    t0 = time.time() - duration - DAY
    w = CaptureWriter(db, flush_interval=0.5)
    w.start()
    for n in range(chargers):
        at = rng.uniform(0, 60)
        tx, in_tx, uid = 0, False, 0
        while at < duration:
            c = _Connection(w, f"ALF-{n:05d}", t0 + at, uid)
            session_end = min(duration, at + connection_days * DAY * rng.uniform(0.8, 1.0))
            boot = {"chargePointVendor": "Alfen BV", "chargePointModel": "NG920-60503"}
            c.call(
                "BootNotification",
                boot,
                {"currentTime": utc_iso(c.start), "interval": 300, "status": "Accepted"},
            )
            c.call(
                "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"}, {}
            )
            while at + c.elapsed < session_end:
                c.elapsed += interval * rng.uniform(0.95, 1.05)
                now = utc_iso(c.start + c.elapsed)
                if not in_tx and rng.random() < 0.02:
                    tx += 1
                    start = {"connectorId": 1, "idTag": f"TAG{n}", "meterStart": 0, "timestamp": now}
                    answer = {"transactionId": n * 100_000 + tx, "idTagInfo": {"status": "Accepted"}}
                    c.call("StartTransaction", start, answer)
                    in_tx = True
                elif in_tx and rng.random() < 0.01:
                    c.call(
                        "StopTransaction",
                        {"transactionId": n * 100_000 + tx, "meterStop": 9, "timestamp": now},
                        {},
                    )
                    in_tx = False
                else:
                    sampled = [{"value": str(int(c.elapsed)), "measurand": "Energy.Active.Import.Register"}]
                    mv: dict[str, object] = {
                        "connectorId": 1,
                        "meterValue": [{"timestamp": now, "sampledValue": sampled}],
                    }
                    if in_tx:
                        mv["transactionId"] = n * 100_000 + tx
                    c.call("MeterValues", mv, {})
            w.close_session(c.sid, c.start + c.elapsed + 1, close_code=1006, closed_by="cp")
            at += c.elapsed + 30
            uid = c.uid
    w.close(timeout=600)
    return t0, t0 + duration


def capture(path: Path, frames: int, args: argparse.Namespace) -> tuple[float, float]:
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        first, last = json.loads(meta.read_text())
        return first, last
    started = time.monotonic()
    first, last = make_capture(path, frames, args.chargers, args.interval, args.connection_days)
    meta.write_text(json.dumps([first, last]))
    with sqlite3.connect(path) as conn:
        n = conn.execute("SELECT count(*) FROM frames").fetchone()[0]
        s = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
    size, took = path.stat().st_size / 2**20, time.monotonic() - started
    print(f"built {path.name}: {n:,} frames, {s:,} sessions, {size:,.0f} MiB in {took:.0f} s")
    return first, last


def replay(
    code: Path, db: Path, target: str, first: float, last: float, speed: float, results: Path, whole: bool
) -> dict[str, float]:
    """``ocpp-replay replay --from --to`` of the hour in the middle (``whole``: of the whole
    capture); RSS sampled every 0.1 s."""
    middle = first + (last - first) / 2
    frm = datetime.fromtimestamp(middle, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    to = datetime.fromtimestamp(middle + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = results / f"{db.stem}-{code.name}.json"
    cmd = [
        sys.executable,
        "-m",
        "ocpp_replay.cli",
        "replay",
        "--db",
        str(db),
        "--target",
        target,
        *(() if whole else ("--from", frm, "--to", to)),
        "--speed",
        str(speed),
        "--workers",
        "1",
        "--results",
        str(results / f"{db.stem}-{code.name}.db"),
        "--report",
        str(report),
        "--force",
    ]
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.monotonic()
    log = results / f"{db.stem}-{code.name}.log"  # a file: a pipe nobody reads would block the replay
    with log.open("wb") as err_file:
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=err_file)
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        try:
            samples.append((time.monotonic() - started, ps.memory_info().rss / 2**20))
        except psutil.Error:
            break
        time.sleep(0.1)
    wall = time.monotonic() - started
    err = log.read_text(errors="replace")[-2000:]
    if proc.returncode not in (0, 1):
        raise SystemExit(f"replay failed ({proc.returncode}): {err}")
    data = json.loads(report.read_text())
    summary = data.get("summary", data)

    def at(q: float) -> float:
        t = wall * q
        return min(samples, key=lambda s: abs(s[0] - t))[1]

    return {
        "wall": wall,
        "rss10": at(0.1),
        "rss50": at(0.5),
        "rss90": at(0.9),
        "peak": max(r for _, r in samples),
        "differences": float(summary.get("differences", summary.get("diffs", -1))),
        "messages": float(summary.get("messages", -1)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=5_000_000)
    ap.add_argument("--chargers", type=int, default=250)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between a charger's calls")
    ap.add_argument("--connection-days", type=float, default=7.0, help="how long a connection stays up")
    ap.add_argument("--speed", type=float, default=60.0, help="replay speed (60: the hour in a minute)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "ocpp-replay-stream")
    ap.add_argument("--whole", action="store_true", help="replay each capture whole, not a window of it")
    ap.add_argument("--baseline-ref", help="a commit to measure in the same run (git worktree)")
    ap.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    big = args.dir / f"capture-{args.frames}-{args.connection_days:g}d.db"
    small = args.dir / f"capture-{args.frames // 10}-{args.connection_days:g}d.db"
    spans = {small: capture(small, args.frames // 10, args), big: capture(big, args.frames, args)}
    codes = [ROOT]
    if args.baseline_ref:
        old = args.dir / f"code-{args.baseline_ref}"
        if not old.exists():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.baseline_ref],
                check=True,
                capture_output=True,
            )
        codes.insert(0, old)
    port_file = args.dir / "port"
    port_file.unlink(missing_ok=True)
    backend = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
    try:
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        target = f"ws://127.0.0.1:{port_file.read_text()}/ocpp"
        results = Path(tempfile.mkdtemp(prefix="stream-results-"))
        what = "the whole of each capture" if args.whole else "1-hour window in the middle of each capture"
        print(f"{what}, --speed {args.speed:g}, against a fast CSMS")
        print(
            f"{'code':<22} {'capture':>12} {'wall s':>7} {'RSS MiB at 10%':>15} {'50%':>6} {'90%':>6} "
            f"{'peak':>6} {'messages':>9} {'diffs':>6}"
        )
        for code in codes:
            for db, (first, last) in spans.items():
                r = replay(code, db, target, first, last, args.speed, results, args.whole)
                name = "this checkout" if code == ROOT else code.name
                frames = int(db.stem.split("-")[1])
                print(
                    f"{name:<22} {frames:>12,} {r['wall']:>7.1f} {r['rss10']:>15.1f} {r['rss50']:>6.1f} "
                    f"{r['rss90']:>6.1f} {r['peak']:>6.1f} {r['messages']:>9,.0f} {r['differences']:>6.0f}"
                )
    finally:
        backend.terminate()
        backend.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
