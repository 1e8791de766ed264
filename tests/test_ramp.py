"""The connection ramp of a replay (issue 12): sessions dial ahead of their recorded start, at
most ``max_connecting`` handshakes at a time, and handshake times are reported apart from
lateness. Against a real aiohttp CSMS on loopback whose handshakes are slow."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from ocpp_replay.replay import load_sessions, run_replay
from ocpp_replay.replay.amplify import amplify_sessions
from ocpp_replay.report.terminal import summary_line
from ocpp_replay.store import Store
from tests.test_replay import capture16  # noqa: F401 (fixture)
from tests.web_peers import serving

pytestmark = pytest.mark.timeout(60)

SLOW = 0.3  # seconds each handshake takes


@contextlib.asynccontextmanager
async def slow_csms(handshake: float = SLOW) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Answers every CALL with an empty result after a handshake of ``handshake`` seconds;
    counts the handshakes in flight at once, and notes each charger that connected."""
    seen: dict[str, Any] = {"in_flight": 0, "most": 0, "handshakes": 0, "charge_points": []}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        seen["in_flight"] += 1
        seen["most"] = max(seen["most"], seen["in_flight"])
        seen["charge_points"].append(request.match_info["cp"])
        await asyncio.sleep(handshake)
        ws = web.WebSocketResponse(protocols=("ocpp1.6",))
        await ws.prepare(request)
        seen["in_flight"] -= 1
        seen["handshakes"] += 1
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and msg.data.startswith("[2,"):
                uid = msg.data.split(",", 2)[1]
                await ws.send_str(f"[3,{uid},{{}}]")
        return ws

    async with serving(handler, "/ocpp/{cp}") as port:
        yield f"ws://127.0.0.1:{port}/ocpp", seen


def _first_frames(result: Any) -> list[float]:
    """The lateness of each session's first frame sent."""
    return [s.lateness[0] for s in result.sessions if s.lateness]


async def test_sessions_dial_ahead_of_their_start_a_bounded_number_at_a_time(capture16: Path) -> None:  # noqa: F811
    with Store.open(capture16) as store:
        recorded = await asyncio.to_thread(load_sessions, store)
        copies, _ = amplify_sessions(recorded, 6)  # six chargers starting together
        kw: dict[str, Any] = {"sessions": copies, "answer_timeout": 2.0, "grace": 0.2, "check_schema": False}

        async with slow_csms() as (url, seen):
            ahead = await run_replay(store, url, connect_ahead=1.0, max_connecting=2, **kw)
        assert seen["handshakes"] == 6 and seen["most"] == 2  # never more than two at once
        shakes = ahead.options["handshakes"]
        assert shakes["sessions"] == 6 and shakes["p50_ms"] >= SLOW * 1000
        # 6 slow handshakes two at a time take 0.9 s: all within the second ahead of the start
        assert shakes["connected_after_start"] == 0
        assert all(s.connected_at is not None and s.connected_at < 0 for s in ahead.sessions)
        assert max(_first_frames(ahead)) < SLOW / 2  # the first frames were not held by a handshake
        assert "handshakes p50" in summary_line(ahead)

        async with slow_csms() as (url, seen):
            at_start = await run_replay(store, url, connect_ahead=0.0, max_connecting=2, **kw)
        shakes = at_start.options["handshakes"]
        assert seen["most"] == 2 and shakes["connected_after_start"] == 6
        # dialled at their start, the last pair connected after three handshakes
        assert shakes["after_start_max_ms"] >= 3 * SLOW * 1000 * 0.9
        assert max(_first_frames(at_start)) >= 2 * SLOW
