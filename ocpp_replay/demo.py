"""`ocpp-replay demo`: the whole capture → replay → diff loop on one machine, no setup.

1. start the reference CSMS (profile v1) and put the capture proxy in front of it;
2. drive a small fleet of virtual Alfen chargers, OCPP 1.6, 2.0.1 and 2.1, through the proxy
   (a session stopped remotely by the backend, a reconnect with queued messages, backend
   commands), recorded into ``captures/demo.db``;
3. replay the capture against a fresh, unchanged v1 backend: no differences expected;
4. replay it against the v2 profile (a new "release": blocks one card, changes the heartbeat
   interval): the differences are shown, and written as JSON, JUnit and HTML reports.

Everything listens on 127.0.0.1 with ephemeral ports and is stopped on the way out, Ctrl-C
included.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.core.results import RunResult
from ocpp_replay.csms import ReferenceCsms
from ocpp_replay.csms.config import V2_BLOCKED_ID_TAG
from ocpp_replay.errors import ConfigError
from ocpp_replay.replay import run_replay, store_run
from ocpp_replay.simulate import FleetResult, run_fleet
from ocpp_replay.store import Store

#: Real seconds per virtual second for the chargers: a charging session of tens of virtual
#: minutes plays in a few seconds, keeping its shape (meter values, suspends, reconnects).
TIME_SCALE = 0.002
#: What the backend does on its own, the same at capture and at every replay: stop one 1.6, one
#: 2.0.1 and one 2.1 transaction remotely after its third meter values, tour one charger through
#: the backend commands (configuration, availability, trigger, charging profiles, reset, ...).
BACKEND: dict[str, Any] = {
    "remote_stop_after": {"ALF-16-0003": 3, "ALF-201-0002": 3, "ALF-21-0001": 3},
    "exercise": "ALF-16-0004",
}
#: Replays run this much faster than recorded.
REPLAY_SPEED = 4.0
#: Loopback answers take milliseconds: a backend that does not send a recorded call (the v2
#: release skips a remote stop) need not hold the demo for the default 10 s.
ANSWER_TIMEOUT = 2.0
GRACE = 1.0


@dataclass(frozen=True, slots=True)
class DemoResult:
    db: Path
    sessions: int
    frames: int
    unchanged: RunResult
    changed: RunResult
    reports: dict[str, Path]


Say = Callable[[str], None]


async def run_demo(
    out_dir: Path, say: Say, *, chargers_16: int = 5, chargers_201: int = 3, chargers_21: int = 3
) -> DemoResult:
    """Run the demo, narrating through ``say``; the capture and reports go to ``out_dir``."""
    db = await asyncio.to_thread(_fresh_capture, out_dir)

    started = time.monotonic()
    say("1/4  starting the reference CSMS (profile v1) and the capture proxy in front of it")
    csms = ReferenceCsms("v1", **BACKEND)
    async with contextlib.AsyncExitStack() as stack:
        await csms.start()
        stack.push_async_callback(csms.stop)
        proxy = ProxyServer(csms.url, db)
        await proxy.start()
        stack.push_async_callback(proxy.stop)
        say(f"     CSMS {csms.url}  ←  proxy {proxy.url}  →  capture {db}")

        say(
            f"2/4  {chargers_16} virtual Alfen chargers on OCPP 1.6, {chargers_201} on 2.0.1 and "
            f"{chargers_21} on 2.1 "
            "drive a fleet day through the proxy (sessions, a remote stop, a reconnect with "
            "queued messages, backend commands)"
        )
        step = time.monotonic()
        fleets: tuple[FleetResult, FleetResult, FleetResult] = await asyncio.gather(
            run_fleet(
                proxy.url,
                chargers=chargers_16,
                id_prefix="ALF-16-",
                version="1.6",
                scenario="fleet-day",
                seed=1,
                time_scale=TIME_SCALE,
            ),
            run_fleet(
                proxy.url,
                chargers=chargers_201,
                id_prefix="ALF-201-",
                version="2.0.1",
                scenario="fleet-day",
                seed=2,
                time_scale=TIME_SCALE,
            ),
            run_fleet(
                proxy.url,
                chargers=chargers_21,
                id_prefix="ALF-21-",
                version="2.1",
                scenario="fleet-day",
                seed=3,
                time_scale=TIME_SCALE,
            ),
        )
        await proxy.stop()
        say(f"     the fleet ran for {time.monotonic() - step:.1f} s")
        for fleet in fleets:
            sent = sum(fleet.sent.values())
            commands = ", ".join(f"{a} {n}" for a, n in sorted(fleet.received.items())) or "none"
            say(
                f"     OCPP {fleet.version}: {len(fleet.chargers)} chargers sent {sent} messages; "
                f"backend commands: {commands}"
            )

    store = await asyncio.to_thread(Store.open, db)
    try:
        sessions = await asyncio.to_thread(store.sessions)
        frames = sum(s.frames for s in sessions)
        say(
            f"     captured {len(sessions)} sessions, {frames} frames in {db} "
            f"(see: ocpp-replay sessions --db {db})"
        )

        say(f"3/4  replaying the capture at {REPLAY_SPEED:g}x against a fresh, unchanged v1 backend")
        unchanged = await _replay_against(store, "v1", tx_id_base=70_000)
        say(
            f"     {len(unchanged.sessions)} sessions, {unchanged.messages} answers compared: "
            f"{len(unchanged.differences)} differences (new transaction ids correlated)"
        )

        say(
            f"4/4  replaying against the v2 profile (a new release: card {V2_BLOCKED_ID_TAG} "
            "blocked, heartbeat interval changed)"
        )
        changed = await _replay_against(store, "v2", tx_id_base=90_000)
        reports = await asyncio.to_thread(_write_reports, changed, out_dir)
    finally:
        store.close()
    say(
        f"     {len(changed.differences)} differences; reports: "
        + ", ".join(str(p) for p in reports.values())
    )
    say(f"done in {time.monotonic() - started:.1f} s")
    return DemoResult(db, len(sessions), frames, unchanged, changed, reports)


async def _replay_against(store: Store, profile: str, *, tx_id_base: int) -> RunResult:
    """Replay the whole capture against a fresh reference CSMS of PROFILE; store the run."""
    async with ReferenceCsms(profile, tx_id_base=tx_id_base, **BACKEND) as backend:
        result = await run_replay(
            store, backend.url, speed=REPLAY_SPEED, answer_timeout=ANSWER_TIMEOUT, grace=GRACE
        )
    return await asyncio.to_thread(store_run, store, result)


def _fresh_capture(out_dir: Path) -> Path:
    """The demo's capture path, with any capture of an earlier demo removed."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use {out_dir} for the demo's files: {exc.strerror}") from exc
    db = out_dir / "demo.db"
    for suffix in ("", "-wal", "-shm"):
        try:
            Path(f"{db}{suffix}").unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError(f"cannot remove the earlier demo capture {db}{suffix}: {exc.strerror}") from exc
    return db


def _write_reports(result: RunResult, out_dir: Path) -> dict[str, Path]:
    from ocpp_replay.report import write_html, write_json, write_junit

    paths = {
        "json": out_dir / "demo-report.json",
        "junit": out_dir / "demo-junit.xml",
        "html": out_dir / "demo-report.html",
    }
    # The demo's own files in its own directory: each run replaces the last (as its capture).
    write_json(result, paths["json"], force=True)
    write_junit(result, paths["junit"], force=True)
    write_html(result, paths["html"], force=True)
    return paths
