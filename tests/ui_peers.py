"""What the web UI's tests (and its screenshots for docs/ui.md) run against: captures made by the
real proxy between real peers, a replay stored in them, and Debian's headless Chromium driven
by Playwright (its driver ships in the wheel; no browser is downloaded).

    python tests/ui_peers.py docs/img      # the screenshots of docs/ui.md, from a fresh capture
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.csms import ReferenceCsms
from ocpp_replay.replay import run_replay, store_run
from ocpp_replay.simulate import run_fleet
from ocpp_replay.store import Store
from ocpp_replay.ui.server import UiServer

if __package__ in (None, ""):  # run as a script: python tests/ui_peers.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.peers import run_csms  # an ocpp-package CSMS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FAST = {"max_gap": 0.05, "answer_timeout": 2.0, "grace": 0.3}


def chromium() -> str | None:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


#: .ci/run sets it: there the browser tests must run, never skip.
REQUIRE_CHROMIUM = "OCPP_REPLAY_REQUIRE_CHROMIUM"


def chromium_or_skip() -> str:
    """Chromium's path. Without one, skips the test with the reason, or fails it where
    REQUIRE_CHROMIUM is set (CI), so that a missing browser never looks green there."""
    import os

    import pytest

    path = chromium()
    if path is None:
        reason = "headless Chromium is not installed (on Debian or Ubuntu: apt-get install chromium)"
        if os.environ.get(REQUIRE_CHROMIUM):
            pytest.fail(f"{reason}; {REQUIRE_CHROMIUM} is set, so this test may not skip")
        pytest.skip(reason)
    return path


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium (Debian's) under Playwright; yields the Browser."""
    from playwright.async_api import async_playwright

    path = chromium()
    assert path is not None
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True, timeout=30_000)
        try:
            yield b
        finally:
            await b.close()


async def make_capture(db: Path, *, chargers: int = 3) -> int:
    """Chargers (the simulator) through the proxy to the reference CSMS v1, then a replay against
    v2 stored in the capture (its BootNotification interval and a blocked card differ).
    Returns the run id."""
    async with ReferenceCsms("v1") as csms, ProxyServer(csms.url, db) as proxy:
        await run_fleet(proxy.url, chargers=chargers, time_scale=0.002, seed=1)
    async with ReferenceCsms("v2") as v2:
        with Store.open(db) as store:
            result = await run_replay(store, v2.url, **FAST)  # type: ignore[arg-type]
            stored = await asyncio.to_thread(store_run, store, result)
    assert stored.run_id is not None
    return stored.run_id


#: Charger text that must stay text: markup, a bidi override, terminal escapes, NUL, separators.
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">\u202e\x1b[31m\x00\u2028'
HOSTILE_ID = "CP<b>\u202eevil\x1b"


async def _hostile_csms(ws: ServerConnection) -> None:
    """Answers every CALL with a result full of hostile text, and sends a hostile CALL of its own."""
    with contextlib.suppress(websockets.ConnectionClosed):
        await ws.send(json.dumps([2, "c1<script>", HOSTILE, {"note": HOSTILE}], ensure_ascii=False))
        async for msg in ws:
            data = json.loads(msg)
            if data[0] == 2:
                await ws.send(json.dumps([3, data[1], {"status": HOSTILE, "big": 1}], ensure_ascii=False))


async def make_hostile_capture(db: Path) -> None:
    """A charger with a hostile id sends hostile actions, payloads and a frame that is not JSON."""
    from urllib.parse import quote

    async with run_csms(handler=_hostile_csms) as csms, ProxyServer(csms.url, db) as proxy:
        async with connect(f"{proxy.url}/{quote(HOSTILE_ID, safe='')}", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            await ws.recv()  # the CSMS's hostile CALL
            await ws.send(json.dumps([4, "c1<script>", HOSTILE, HOSTILE, {"x": HOSTILE}], ensure_ascii=False))
            await ws.send(json.dumps([2, "1", HOSTILE, {"idTag": HOSTILE}], ensure_ascii=False))
            await ws.recv()
            await ws.send(
                json.dumps(
                    [2, "2", "BootNotification", {"chargePointModel": HOSTILE, "chargePointVendor": "x"}],
                    ensure_ascii=False,
                )
            )
            await ws.recv()
            await ws.send("<script>window.__pwned=1</script> not JSON \u202e")
            await asyncio.sleep(0.2)


async def screenshots(out: Path) -> None:
    """The main views, from a fresh capture, as small PNGs in OUT (for docs/ui.md)."""
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "site.db"
        run_id = await make_capture(db)
        with Store.open(db) as store:
            sid = store.sessions()[0].id
        async with UiServer(db, port=0) as ui, browser() as b:
            page = await b.new_page(viewport={"width": 1100, "height": 560}, bypass_csp=True)
            views = {
                "ui-sessions.png": "#/sessions",
                "ui-session.png": f"#/session/{sid}?seq=2",
                "ui-run.png": f"#/run/{run_id}",
                "ui-diff.png": f"#/run/{run_id}/diff?session={sid}&seq=2",
            }
            for name, hash_ in views.items():
                await page.goto(ui.url + hash_)
                await page.wait_for_selector("main h1")
                await page.wait_for_timeout(500)  # the pages load their parts in turn
                await page.screenshot(path=str(out / name), type="png")
            await page.goto(ui.url + f"#/run/{run_id}")
            await page.click("button.noise")
            await page.wait_for_selector("#rule-diff")
            await page.locator("dialog").screenshot(path=str(out / "ui-triage.png"), type="png")
    squeeze = shutil.which("pngquant")  # Debian's pngquant, if installed: a quarter of the size
    if squeeze:
        for png in sorted(out.glob("ui-*.png")):
            subprocess.run(  # noqa: ASYNC221  (a script's last step; nothing else runs)
                [squeeze, "--quality", "60-85", "--speed", "1", "--force", "--output", str(png), str(png)],
                check=True,
            )


if __name__ == "__main__":
    asyncio.run(screenshots(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img")))
