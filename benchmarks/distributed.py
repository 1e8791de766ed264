"""The same replay with one local process and on Locust (master + 2 workers) on this machine.

    python benchmarks/distributed.py [--chargers 2000] [--interval 3] [--duration 30] [--ramp 3]
                                     [--amplify N] [--local-workers 1|2|auto]

Builds the synthetic capture of benchmarks/replay_scale.py (one session per charger, all
concurrent: BootNotification, StartTransaction, MeterValues every ``--interval`` s), starts its
fast CSMS in a subprocess, then replays the capture twice against it:

1. ``ocpp-replay replay`` (one process, the local engine);
2. ``locust -f <package>/distributed/locustfile.py`` as a headless master and two workers
   (each worker's engine in its own child process), ``--csv`` for Locust's statistics.

For each: wall time, lateness p50/p99/max (from the stored run, as ``ocpp-replay report``
computes it), CPU time of every process of the replay (the CSMS excluded: getrusage of the
waited-for children, engines included) per frame sent, differences; for Locust, its aggregated
request count, failures and response-time percentiles. Exits 1 when a run has differences or
the distributed run is not complete.
"""

from __future__ import annotations

import argparse
import csv
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.replay_scale import make_capture  # noqa: E402
from ocpp_replay.core.results import RunResult  # noqa: E402
from ocpp_replay.replay import load_run  # noqa: E402
from ocpp_replay.store import Store  # noqa: E402

LOCUSTFILE = str(ROOT / "ocpp_replay" / "distributed" / "locustfile.py")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _copy(src: Path, dst: Path) -> Path:
    with Store.open(src) as s:
        s.db.execute(f"VACUUM INTO '{dst}'")
    return dst


def _last_run(db: Path) -> RunResult:
    with Store.open(db) as store:
        [run_id] = [r["id"] for r in store.db.query("SELECT max(id) AS id FROM runs")]
        return load_run(store, run_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _report(name: str, run: RunResult, wall: float, cpu: float) -> dict[str, float]:
    t = run.timing
    sent = sum(1 for s in run.sessions for f in s.frames if f.direction == "to_csms")
    print(f"{name}: {len(run.sessions)} sessions, {sent} frames sent, {len(run.gating)} differences")
    print(
        f"  wall {wall:.1f} s; lateness p50 {t.p50 * 1e3:.3f} ms, p99 {t.p99 * 1e3:.3f} ms, "
        f"max {t.max * 1e3:.1f} ms; CPU {cpu:.1f} s = {cpu / max(sent, 1) * 1e6:.0f} us per frame sent"
    )
    return {"sent": sent, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chargers", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between MeterValues")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each session lasts")
    parser.add_argument("--ramp", type=float, default=3.0, help="session starts spread over this")
    parser.add_argument("--only", choices=("local", "locust"), help="run one side only")
    parser.add_argument(
        "--amplify", type=int, default=0, help="chargers / N recorded sessions, amplified N times"
    )
    parser.add_argument("--local-workers", default="1", help="--workers of the local replay (1, 2, auto)")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    tmp = Path(tempfile.mkdtemp(prefix="distributed-bench-"))
    try:
        db = tmp / "capture.db"
        recorded = args.chargers // args.amplify if args.amplify else args.chargers
        frames = make_capture(db, recorded, args.interval, args.duration, args.ramp)
        amplify = ["--amplify", str(args.amplify), "--amplify-spread", str(args.ramp)] if args.amplify else []
        print(f"capture: {recorded} sessions, {frames} frames; replayed as {args.chargers} chargers")
        port_file = tmp / "port"
        csms = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "replay_scale.py"), "--serve", str(port_file)]
        )
        try:
            for _ in range(400):
                if port_file.exists() and port_file.read_text():
                    break
                time.sleep(0.05)
            target = f"ws://127.0.0.1:{port_file.read_text()}/ocpp"
            ok = True
            local: dict[str, float] = {}
            if args.only in (None, "local"):
                local_db = _copy(db, tmp / "local.db")
                cpu0, wall0 = _children_cpu(), time.monotonic()
                code = subprocess.call(
                    [sys.executable, "-m", "ocpp_replay.cli", "replay", "--db", str(local_db),
                     "--target", target, "--timeout", "10", "--grace", "1", "--workers", args.local_workers,
                     *amplify],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                wall, cpu = time.monotonic() - wall0, _children_cpu() - cpu0
                run = _last_run(local_db)
                local = _report(f"local (ocpp-replay replay --workers {args.local_workers})", run, wall, cpu)
                ok &= code == 0
            if args.only in (None, "locust"):
                dist_db = _copy(db, tmp / "dist.db")
                port = _free_port()
                base = [sys.executable, "-m", "locust", "-f", LOCUSTFILE]
                cpu0, wall0 = _children_cpu(), time.monotonic()
                master = subprocess.Popen(
                    [*base, "--master", "--headless", "--master-bind-host", "127.0.0.1",
                     "--master-bind-port", str(port), "--expect-workers", "2", "-u", "2", "-r", "2",
                     "--csv", str(tmp / "stats"), "--capture", str(dist_db), "--target", target,
                     "--answer-timeout", "10", "--only-summary", *amplify],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
                worker = [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
                workers = [
                    subprocess.Popen(worker, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for _ in range(2)
                ]
                _, err = master.communicate(timeout=args.duration * 10 + 300)
                for w in workers:
                    w.wait(timeout=60)
                wall, cpu = time.monotonic() - wall0, _children_cpu() - cpu0
                for line in err.splitlines():
                    if "ocpp_replay.distributed" in line:
                        print("  master:", line.split("ocpp_replay.distributed: ", 1)[1])
                run = _last_run(dist_db)
                dist = _report("locust (master + 2 workers)", run, wall, cpu)
                ok &= master.returncode == 0 and "incomplete" not in run.options
                with open(tmp / "stats_stats.csv", encoding="utf-8", newline="") as fh:
                    rows = list(csv.DictReader(fh))
                for row in rows:
                    if row["Name"] in ("Aggregated", "BootNotification", "MeterValues", "StartTransaction"):
                        print(
                            f"  locust {row['Type'] or '':5} {row['Name']:17}"
                            f" requests {row['Request Count']:>6}"
                            f" failures {row['Failure Count']:>4} median {row['Median Response Time']} ms"
                            f" p99 {row['99%']} ms max {float(row['Max Response Time']):.0f} ms"
                        )
                if local:
                    per_local = local["cpu"] / max(local["sent"], 1)
                    per_dist = dist["cpu"] / max(dist["sent"], 1)
                    print(f"distributed CPU per frame: {per_dist / per_local:.2f}x the local replay's")
        finally:
            csms.terminate()
            csms.wait()
        print("PASS" if ok else "FAIL", "(no differences, the distributed run complete)")
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
