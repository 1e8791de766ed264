"""A realistic fleet from software nobody here wrote: SAP's e-mobility charging stations simulator
through the proxy, then the capture replayed (issue 23; docs/performance.md).

    python benchmarks/sap_fleet.py --simulator DIR [--node NODE] [--stations 200] [--seconds 180]
                                   [--template virtual-simple-atg.station-template.json]

DIR is a built checkout of github.com/SAP/e-mobility-charging-stations-simulator (``pnpm install
&& pnpm build``: ``dist/start.js``); NODE a Node.js of 22 or newer (the npm package ``node@24``
gives one: ``npm install node@24 pnpm`` and ``node_modules/.bin/node``). Nothing of it is in this
repository. On loopback:

1. the reference CSMS (``ocpp-replay csms``) and ``ocpp-replay proxy`` in front of it, recording
   into a temporary capture;
2. the simulator with STATIONS stations of TEMPLATE (its automatic transaction generator on:
   boot, status, authorize, transactions with meter values) dialling the proxy for SECONDS;
3. then the capture replayed against the same CSMS (``ocpp-replay replay --workers auto``).

Reported: stations connected, sessions and frames captured, frames lost, the proxy's CPU (from
/proc) per frame and per 1,000 frames/s, and the replay's differences and timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loopback import free_port, wait_port  # benchmarks/loopback.py, beside this script


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _config(dist: Path, url: str, stations: int, template: str, logs: Path) -> None:
    assets = dist / "assets"
    config = {
        "supervisionUrls": [url],
        "supervisionUrlDistribution": "round-robin",
        "log": {
            "file": str(logs / "combined.log"),
            "errorFile": str(logs / "error.log"),
            "statisticsInterval": 0,
        },
        "worker": {"processType": "workerSet"},
        "performanceStorage": {"enabled": False},
        "uiServer": {"enabled": False},
        "persistState": False,
        "stationTemplateUrls": [{"file": template, "numberOfStations": stations}],
    }
    (assets / "config.json").write_text(json.dumps(config, indent=2))
    idtags = dist.parent / "src" / "assets" / "idtags-template.json"
    if idtags.exists() and not (assets / "idtags.json").exists():
        shutil.copy(idtags, assets / "idtags.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulator", type=Path, required=True, help="a built checkout of the simulator")
    ap.add_argument("--node", default=shutil.which("node") or "node", help="Node.js 22 or newer")
    ap.add_argument("--stations", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--template", default="virtual-simple-atg.station-template.json")
    args = ap.parse_args()
    dist = args.simulator / "dist"
    if not (dist / "start.js").exists():
        raise SystemExit(f"{dist}/start.js not found: build the simulator first (pnpm install && pnpm build)")
    tmp = Path(tempfile.mkdtemp(prefix="sap-fleet-"))
    db = tmp / "capture.db"
    csms_port, proxy_port = free_port(), free_port()
    cli = [sys.executable, "-m", "ocpp_replay.cli"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        csms = subprocess.Popen([*cli, "csms", "--port", str(csms_port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        procs.append(csms)
        wait_port(csms_port)
        upstream = f"ws://127.0.0.1:{csms_port}/ocpp"
        proxy = subprocess.Popen(
            [*cli, "proxy", "--upstream", upstream, "--host", "127.0.0.1", "--port", str(proxy_port),
             "--db", str(db), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proxy)
        wait_port(proxy_port)
        _config(dist, f"ws://127.0.0.1:{proxy_port}/ocpp", args.stations, args.template, tmp)
        cpu0 = _cpu_seconds(proxy.pid)
        t0 = time.monotonic()
        env = {**os.environ, "NODE_ENV": "production"}
        sim = subprocess.Popen(
            [args.node, "dist/start.js"],
            cwd=args.simulator,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(sim)
        time.sleep(args.seconds)
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(30)
        except subprocess.TimeoutExpired:
            sim.kill()
        time.sleep(1.0)
        wall = time.monotonic() - t0
        cpu = _cpu_seconds(proxy.pid) - cpu0
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(30)
        conn = sqlite3.connect(db)
        sessions, stations = conn.execute(
            "SELECT count(*), count(DISTINCT charge_point_id) FROM sessions"
        ).fetchone()
        frames = conn.execute("SELECT count(*) FROM frames").fetchone()[0]
        lost = conn.execute("SELECT coalesce(sum(frames_lost), 0) FROM sessions").fetchone()[0]
        by_action = conn.execute(
            "SELECT action, count(*) FROM frames WHERE message_type = 2 GROUP BY action ORDER BY 2 DESC"
        ).fetchall()
        conn.close()
        rate = frames / wall
        print(f"SAP simulator, {args.stations} stations of {args.template}, {args.seconds:g} s via the proxy")
        print(
            f"  captured: {stations} stations, {sessions} sessions, {frames} frames ({rate:.0f}/s), "
            f"{lost} lost"
        )
        print(f"  calls: {', '.join(f'{a} {n}' for a, n in by_action)}")
        print(
            f"  proxy CPU {cpu:.2f} s over {wall:.0f} s: {cpu / max(frames, 1) * 1e6:.0f} us per frame, "
            f"{cpu / wall * 100:.1f} % of a core "
            f"({cpu / wall * 100 / max(rate / 1000, 1e-9):.1f} % per 1,000 frames/s)"
        )
        report = tmp / "replay.json"
        t1 = time.monotonic()
        code = subprocess.call(
            [*cli, "replay", "--db", str(db), "--target", upstream, "--workers", "auto",
             "--report", str(report)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        summary = json.loads(report.read_text())["summary"] if report.exists() else {}
        timing = summary.get("timing", {})
        print(
            f"  replay against the same CSMS: exit {code}, {summary.get('diffs')} differences of "
            f"{summary.get('messages')} messages, lateness p99 {timing.get('lateness_ms', {}).get('p99')} ms "
            f"({time.monotonic() - t1:.0f} s)"
        )
        return 0 if lost == 0 and stations == args.stations else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
