"""Disk per charger-day: a typical day of OCPP 1.6 traffic written through the capture writer.

    python benchmarks/capture_size.py [--chargers 200] [--heartbeat 300] [--meter-interval 60]
                                      [--charging-hours 4]

A day of one charger, as an Alfen on a typical setup sends it: a BootNotification and its
StatusNotifications, a Heartbeat every HEARTBEAT seconds, one charging session (Authorize,
StartTransaction, MeterValues every METER_INTERVAL seconds with four sampled values, a few
StatusNotifications, StopTransaction), each CALL answered by the CSMS. The frames go through the
real CaptureWriter (the proxy's), one connection per charger-day, into a fresh capture; the size
is the database file after a WAL checkpoint. Prints frames per charger-day, bytes per frame
stored (text, columns and indexes together) and MiB per charger-day.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from ocpp_replay.core.frames import Direction
from ocpp_replay.store import CaptureWriter

T0 = 1_764_750_000.0  # a day's midnight, as a wall clock


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def charger_day(cp: int, heartbeat: float, meter: float, hours: float) -> list[tuple[float, str, str]]:
    """(time, direction, raw) of one charger's day, in order."""
    out: list[tuple[float, str, str]] = []
    uid = 0

    def call(t: float, action: str, payload: dict[str, object], answer: dict[str, object]) -> None:
        nonlocal uid
        uid += 1
        out.append((t, "to_csms", json.dumps([2, str(uid), action, payload], separators=(",", ":"))))
        out.append((t + 0.05, "to_cp", json.dumps([3, str(uid), answer], separators=(",", ":"))))

    def status(t: float, connector: int, state: str) -> None:
        call(t, "StatusNotification", {"connectorId": connector, "errorCode": "NoError", "status": state,
             "timestamp": iso(t)}, {})  # fmt: skip

    call(T0 + 1, "BootNotification", {"chargePointVendor": "Alfen BV", "chargePointModel": "NG910-60023",
         "chargePointSerialNumber": f"ace{cp:07d}", "firmwareVersion": "6.5.0-4210"},
         {"currentTime": iso(T0 + 1), "interval": heartbeat, "status": "Accepted"})  # fmt: skip
    for connector in (0, 1, 2):
        status(T0 + 2, connector, "Available")
    t = T0 + heartbeat
    while t < T0 + 86_400:
        call(t, "Heartbeat", {}, {"currentTime": iso(t)})
        t += heartbeat
    start = T0 + 8 * 3600 + cp % 3600
    call(start, "Authorize", {"idTag": f"04A2{cp:08X}"}, {"idTagInfo": {"status": "Accepted"}})
    status(start + 1, 1, "Preparing")
    tag = f"04A2{cp:08X}"
    accepted = {"status": "Accepted"}
    call(start + 2, "StartTransaction", {"connectorId": 1, "idTag": tag, "meterStart": 2145278,
         "timestamp": iso(start + 2)}, {"transactionId": 1000 + cp, "idTagInfo": accepted})  # fmt: skip
    status(start + 3, 1, "Charging")
    t, energy = start + meter, 2145278
    while t < start + hours * 3600:
        energy += int(11_000 * meter / 3600)
        sampled = [
            {"value": str(energy), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": "11040", "measurand": "Power.Active.Import", "unit": "W"},
            {"value": "15.630", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
            {"value": "16.000", "context": "CurrentMax", "unit": "A"},
        ]
        call(t, "MeterValues", {"connectorId": 1, "transactionId": 1000 + cp,
             "meterValue": [{"timestamp": iso(t), "sampledValue": sampled}]}, {})  # fmt: skip
        t += meter
    call(t, "StopTransaction", {"transactionId": 1000 + cp, "meterStop": energy, "timestamp": iso(t),
         "reason": "EVDisconnected"}, {"idTagInfo": {"status": "Accepted"}})  # fmt: skip
    status(t + 1, 1, "Finishing")
    status(t + 60, 1, "Available")
    return sorted(out, key=lambda f: f[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=200, help="charger-days to write")
    ap.add_argument("--heartbeat", type=float, default=300.0)
    ap.add_argument("--meter-interval", type=float, default=60.0)
    ap.add_argument("--charging-hours", type=float, default=4.0)
    args = ap.parse_args()
    db = Path(tempfile.mkdtemp(prefix="ocpp-size-")) / "size.db"
    writer = CaptureWriter(db, flush_interval=0.05)
    writer.start()
    frames = raw_bytes = 0
    for cp in range(args.chargers):
        day = charger_day(cp, args.heartbeat, args.meter_interval, args.charging_hours)
        sid = writer.open_session(T0, charge_point_id=f"ALF-{cp:05d}", subprotocol="ocpp1.6")
        for seq, (t, direction, raw) in enumerate(day, 1):
            writer.frame(sid, seq, t, t - T0, Direction(direction), raw)
            raw_bytes += len(raw)
        frames += len(day)
        writer.close_session(sid, T0 + 86_400, close_code=1000, closed_by="cp")
        while writer.pending > 50_000:
            time.sleep(0.05)
    writer.close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stored = conn.execute("SELECT count(*) FROM frames").fetchone()[0]
    size = db.stat().st_size
    per_day = frames / args.chargers
    print(f"{args.chargers} charger-days: heartbeat {args.heartbeat:g} s, MeterValues every "
          f"{args.meter_interval:g} s for {args.charging_hours:g} h")  # fmt: skip
    print(f"frames per charger-day {per_day:.0f}, raw text {raw_bytes / frames:.0f} B a frame on average")
    print(f"stored {stored} of {frames} frames; file {size / 2**20:.1f} MiB = {size / frames:.0f} B a frame, "
          f"{size / args.chargers / 2**20:.3f} MiB per charger-day")  # fmt: skip
    print(f"1,000 chargers: {size / args.chargers * 1000 / 2**30:.2f} GiB a day, "
          f"{size / args.chargers * 1000 * 30 / 2**30:.1f} GiB in 30 days")  # fmt: skip
    return 0 if stored == frames else 1


if __name__ == "__main__":
    raise SystemExit(main())
