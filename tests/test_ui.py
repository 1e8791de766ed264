"""The web UI (ocpp-replay ui, proxy --ui), driven in Debian's headless Chromium on captures the
proxy made from real peers: sessions and filters, the sequence diagram, live frames, difference
groups linked to their frames, triage into a rules file that a re-run honours, and a hostile
capture that stays text. Plus the pure parts (filters, layout, rules) as plain unit tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import typer
from typer.testing import CliRunner
from websockets.asyncio.client import connect

from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.cli.replay import register
from ocpp_replay.core.rules import parse_rules
from ocpp_replay.core.text import escape_controls, pretty_json
from ocpp_replay.csms import ReferenceCsms
from ocpp_replay.errors import ConfigError
from ocpp_replay.store import Store
from ocpp_replay.ui import triage
from ocpp_replay.ui.query import compile_filter
from ocpp_replay.ui.server import UiServer
from tests.ui_peers import (
    HOSTILE,
    HOSTILE_ID,
    browser,
    chromium_or_skip,
    make_capture,
    make_hostile_capture,
)


@pytest.fixture
def needs_chromium() -> None:
    """Skips the test without Chromium (fails it where REQUIRE_CHROMIUM is set)."""
    chromium_or_skip()


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    db = tmp_path_factory.mktemp("uicap") / "site.db"
    run_id = asyncio.run(asyncio.wait_for(make_capture(db), 40))
    return db, run_id


def _copy(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / "site.db"
    with Store.open(src) as s:
        s.db.execute(f"VACUUM INTO '{dst}'")
    return dst


def _frames(db: Path, sid: int) -> list[tuple[int, str | None]]:
    with Store.open(db) as s:
        return [(f.seq, f.raw) for f in s.frames(sid)]


# --------------------------------------------------------------------------- pure parts


def _frames_table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE frames (session_id, seq, direction, message_type, unique_id, action, raw, parse_error)"
    )
    rows = [
        (1, 1, "to_csms", 2, "1", "Authorize", '[2,"1","Authorize",{"idTag":"ACE0177305"}]'),
        (1, 2, "to_cp", 3, "1", "Authorize", '[3,"1",{"idTagInfo":{"status":"Accepted"}}]'),
        (
            1,
            3,
            "to_csms",
            2,
            "2",
            "MeterValues",
            '[2,"2","MeterValues",{"connectorId":1,"meterValue":[{"v":15.6}]}]',
        ),
        (1, 4, "to_cp", 4, "2", "MeterValues", '[4,"2","InternalError","Faulted here",{}]'),
        (1, 5, "to_csms", None, None, None, "not json Faulted"),
    ]
    conn.executemany("INSERT INTO frames VALUES (?,?,?,?,?,?,?,NULL)", rows)
    return conn


def _match(conn: sqlite3.Connection, text: str) -> list[int]:
    compiled = compile_filter(text)
    assert compiled is not None
    sql, params = compiled
    return [r[0] for r in conn.execute(f"SELECT seq FROM frames f WHERE {sql} ORDER BY seq", params)]


def test_filter_expressions_select_frames_in_sqlite() -> None:
    conn = _frames_table()
    assert _match(conn, "action=Authorize") == [1, 2]
    assert _match(conn, "action=Authorize dir=csms") == [2]
    assert _match(conn, "type=error or type=invalid") == [4, 5]
    assert _match(conn, "payload.idTag=ACE0177305") == [1]
    assert _match(conn, "$.idTagInfo.status=Accepted") == [2]
    assert _match(conn, "payload.meterValue[0].v=15.6") == [3]
    assert _match(conn, "payload.connectorId=1 -dir=csms") == [3]
    assert _match(conn, "faulted") == [4, 5]
    assert _match(conn, '"not json"') == [5]
    assert _match(conn, "action~meter not type=error") == [3]
    assert _match(conn, "(action=Authorize or action=MeterValues) type=call") == [1, 3]
    assert _match(conn, "payload.idTag!=ACE0177305 type=call") == [3]
    assert compile_filter("   ") is None
    for bad in ("(action=A", "action=A)", "colour=red", "dir=up", "payload.a[*].b=1", '"open', "or"):
        with pytest.raises(ConfigError, match=r"^filter: "):
            compile_filter(bad)


def test_pretty_json_changes_only_whitespace() -> None:
    raw = (
        '[2,"1","MeterValues",{"transactionId":9223372036854775807,"v":1.50,"s":"a\\"b, :{[","e":[],"o":{}}]'
    )
    laid = pretty_json(raw)
    assert laid is not None
    assert "9223372036854775807" in laid and "1.50" in laid and '"a\\"b, :{["' in laid
    assert '"e": []' in laid and '"o": {}' in laid
    assert json.loads(laid) == json.loads(raw)
    squeeze = "".join(laid.split())
    assert squeeze == "".join(raw.split())
    assert pretty_json("not json") is None and pretty_json('[1,"x"') is None


def _group(**over: Any) -> dict[str, Any]:
    g = {
        "action": "BootNotification",
        "path": "interval",
        "kind": "changed",
        "message": "response",
        "versions": ["1.6"],
        "messages": 3,
        "compared": 3,
        "ruleable": True,
    }
    return {**g, **over}


def test_triage_appends_a_rule_the_rules_reader_takes(tmp_path: Path) -> None:
    rules = tmp_path / "site.rules.toml"
    rules.write_text('# ours\nbuiltin = true\n\n[[rule]]\naction = "Heartbeat"\nignore = ["x"]\n')
    shown = triage.preview(rules, _group(), run_id=4)
    assert '+ignore = ["interval"]' in shown["diff"] and '+ocpp = "1.6"' in shown["diff"]
    assert shown["new"].startswith("# ours\n")  # the file's own text stays as it was
    with pytest.raises(ConfigError, match="changed since the preview"):
        triage.save(rules, _group(), run_id=4, base="0" * 64)
    triage.save(rules, _group(), run_id=4, base=shown["base"])
    parsed = parse_rules(rules.read_text())
    from ocpp_replay.core.correlate import Message

    paths = {r.text for r in parsed.for_message("1.6", "BootNotification", Message.RESPONSE)}
    assert "interval" in paths
    # hostile text in an action cannot break out of the TOML comment or string
    evil = _group(action='Boot"]\n[[rule]]\naction="*"\u202e', path="interval")
    text = triage.rule_text(evil, run_id=1)
    assert parse_rules(text).for_message("1.6", "*", Message.RESPONSE) == ()
    with pytest.raises(ConfigError, match="no path rule"):
        triage.rule_text(_group(kind="timeout", path="", ruleable=False), run_id=1)


# --------------------------------------------------------------------------- the server alone


async def test_read_only_host_and_origin_checks(capture: tuple[Path, int], tmp_path: Path) -> None:
    db, run_id = capture
    before = db.stat().st_mtime_ns, db.stat().st_size
    async with UiServer(db, rules=tmp_path / "r.toml", port=0) as ui, aiohttp.ClientSession() as http:
        async with http.get(ui.url + "api/sessions") as r:
            assert r.status == 200 and r.headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert (await r.json())["total"] == 3
        async with http.get(ui.url + "api/sessions", headers={"Host": "evil.example:80"}) as r:
            assert r.status == 421
        key = (await (await http.get(ui.url + f"api/runs/{run_id}")).json())["groups"][0]["key"]
        body = {"run": run_id, "key": key}
        async with http.post(ui.url + "api/triage/preview", data=json.dumps(body)) as r:
            assert r.status == 403  # not JSON: a form post from another site
        async with http.post(
            ui.url + "api/triage/preview", json=body, headers={"Origin": "http://evil.example"}
        ) as r:
            assert r.status == 403
        async with http.post(ui.url + "api/triage/preview", json=body) as r:
            assert r.status == 200 and "ignore" in (await r.json())["diff"]
        async with http.get(ui.url + "api/sessions?since=2999-01-01T00:00:00Z") as r:
            assert (await r.json())["total"] == 0  # a time window after the capture: nothing
        async with http.get(
            ui.url + "api/sessions?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z"
        ) as r:
            assert (await r.json())["total"] == 3
        async with http.get(ui.url + "api/sessions?q=(oops") as r:
            assert r.status == 400 and (await r.json())["error"] == "filter: '(' without ')'"
    assert (db.stat().st_mtime_ns, db.stat().st_size) == before
    assert not (tmp_path / "r.toml").exists()


def test_schema_checks_of_the_sessions_list_go_on_a_budget(
    capture: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocpp_replay.ui import data

    db = capture[0]
    with Store.open(db) as s:
        frames = {x.id: x.frames for x in s.sessions()}
    monkeypatch.setattr(data, "CHECK_BUDGET", 10)  # fewer than any session's frames
    view = data.CaptureView(db)
    first = {x["id"]: (x["frames"], x["violations"]) for x in view.sessions()["sessions"]}
    assert {k: f for k, (f, _v) in first.items()} == frames  # counted in full at once
    assert sorted(v for _f, v in first.values() if v is not None) == []  # none checked to its end
    for _ in range(100):  # each refresh goes on where the last stopped
        now = {x["id"]: x["violations"] for x in view.sessions()["sessions"]}
        if None not in now.values():
            break
    assert now == dict.fromkeys(frames, 0)  # the reference CSMS's frames are all valid
    view.close()


BOOT = '[2,"b1","BootNotification",{"chargePointModel":"AC","chargePointVendor":"Alfen BV"}]'


@contextlib.asynccontextmanager
async def _booted(db: Path, charge_point: str) -> AsyncIterator[Any]:
    """A charger booted through the proxy (writing DB) in front of the reference CSMS."""
    async with ReferenceCsms("v1") as csms, ProxyServer(csms.url, db, flush_interval=0.05) as proxy:
        async with connect(f"{proxy.url}/{charge_point}", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            await ws.send(BOOT)
            await ws.recv()
            yield ws


@pytest.mark.timeout(60)
async def test_the_sessions_list_stream_says_changed_at_most_once_a_second(tmp_path: Path) -> None:
    """A capture that moves on ten times a second: the list's event stream says so about once
    a second (each event is a refetch and a layout in a browser that may share the proxy's cores),
    a followed session's stream sends its frames as they come."""
    db = tmp_path / "busy.db"
    async with _booted(db, "BUSY-1") as ws:
        async with UiServer(db, port=0) as ui, aiohttp.ClientSession() as http:
            seen: dict[str, list[float]] = {"changed": [], "frames": []}
            problems: list[bytes] = []

            async def listen(path: str) -> None:
                async with http.get(ui.url + path) as r:
                    async for line in r.content:
                        if line.startswith(b"event: "):
                            seen.setdefault(line[7:].strip().decode(), []).append(time.monotonic())
                        elif line.startswith(b"data: ") and "problem" in seen:
                            problems.append(line)

            for _ in range(100):  # the proxy's writer has the session in the capture
                async with http.get(ui.url + "api/sessions") as r:
                    if (await r.json())["total"]:
                        break
                await asyncio.sleep(0.05)
            listeners = [
                asyncio.create_task(listen("api/live")),
                asyncio.create_task(listen("api/live?session=1&after=1")),
            ]

            async def drain() -> None:  # the answers (unread, they hold up the close)
                while True:
                    await ws.recv()

            listeners.append(asyncio.create_task(drain()))
            started = time.monotonic()
            n = 0
            while time.monotonic() - started < 3.2:
                await ws.send(f'[2,"h{n}","Heartbeat",{{}}]')
                n += 1
                await asyncio.sleep(0.1)
            for task in listeners:
                task.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)
    assert "problem" not in seen, problems
    changed = seen["changed"]
    assert 2 <= len(changed) <= 5, changed  # 3.2 s of changes: about one a second, never ten
    # a second apart as sent; read here with the loop's hiccups (0.2 s apart before the change)
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(changed)), changed
    assert len(seen["frames"]) > len(changed) + 3  # the followed session: not held to a second


@pytest.mark.timeout(60)
async def test_the_ui_stops_at_once_with_a_list_stream_open(tmp_path: Path) -> None:
    """A page on the sessions list keeps an event stream open, which waits a second after each
    "changed": stopping the UI (Ctrl-C) does not wait that second out."""
    db = tmp_path / "stop.db"
    async with _booted(db, "STOP-1") as ws:
        ui = UiServer(db, port=0)
        await ui.start()
        async with aiohttp.ClientSession() as http:
            changed = asyncio.Event()

            async def listen() -> None:
                async with http.get(ui.url + "api/live") as r:
                    async for line in r.content:
                        if line.startswith(b"event: changed"):
                            changed.set()

            listener = asyncio.create_task(listen())
            await asyncio.sleep(0.3)  # the stream is open and has seen the capture as it is
            await ws.send('[2,"h1","Heartbeat",{}]')
            await asyncio.wait_for(changed.wait(), 10)
            started = time.monotonic()
            await ui.stop()
            took = time.monotonic() - started
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
    assert took < 0.5, took  # 0.7-1.0 s when the stream slept its second out


# --------------------------------------------------------------------------- in the browser


async def _open(b: Any, url: str) -> tuple[Any, list[str]]:
    """A page at URL, and the console's errors and warnings. The page's Content-Security-Policy
    is bypassed: Playwright's waits evaluate strings, which it forbids; and so the hostile test
    shows that escaping alone keeps traffic text inert, with no policy behind it to catch a slip."""
    page = await b.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page.set_default_timeout(10_000)
    problems: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None,
    )
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    await page.goto(url)
    return page, problems


@pytest.mark.usefixtures("needs_chromium")
@pytest.mark.timeout(90)
async def test_the_sessions_list_shows_a_page_and_more_on_demand(tmp_path: Path) -> None:
    """60 sessions: the newest 50 on the list (a live list is laid out again every second, and
    each row costs the browser), the rest behind its "more" button."""
    from ocpp_replay.core.frames import Direction
    from ocpp_replay.store import CaptureWriter

    db = tmp_path / "many.db"
    w = CaptureWriter(db)
    t0 = time.time() - 3600
    for n in range(60):
        sid = w.open_session(t0 + n, charge_point_id=f"CP-{n:02d}", subprotocol="ocpp1.6")
        w.frame(sid, 1, t0 + n + 0.1, 0.1, Direction.TO_CSMS, '[2,"1","Heartbeat",{}]')
        w.close_session(sid, t0 + n + 0.5, close_code=1000, closed_by="cp")
    w.start()
    w.close()
    async with UiServer(db, port=0) as ui, browser() as b:
        page, problems = await _open(b, ui.url + "#/sessions")
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 50")
        assert await page.inner_text("#count") == "50 of 60 sessions (newest first)"
        assert await page.locator("#sessions tbody tr td:nth-child(2)").first.inner_text() == "CP-59"
        await page.click("#more")
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 60")
        assert await page.is_hidden("#more")
    assert problems == []


async def test_sessions_filters_and_the_sequence_diagram(capture: tuple[Path, int]) -> None:
    db, run_id = capture
    with Store.open(db) as s:
        sessions = {x.charge_point_id: x.id for x in s.sessions()}
    blocked = sessions["ALF-0003"]  # the charger whose card v2 blocks (seed 1)
    async with UiServer(db, port=0) as ui, browser() as b:
        page, problems = await _open(b, ui.url + "#/sessions")
        rows = page.locator("#sessions tbody tr")
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 3")
        assert sorted(await page.locator("#sessions tbody tr td:nth-child(2)").all_inner_texts()) == sorted(
            sessions
        )
        # a filter expression over frames narrows the list to the one session that used the card
        await page.fill("input[name=q]", "payload.idTag=04E5F6A7B8C9D0 type=call")
        await page.click("#filters button[type=submit]")
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 1")
        assert await rows.first.get_attribute("data-session") == str(blocked)
        # the charge point filter, and a bad expression says why
        await page.goto(ui.url + "#/sessions?cp=ALF-0001")
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 1")
        await page.goto(ui.url + "#/sessions?q=" + "payload.a%5B*%5D.b%3D1")
        await page.wait_for_selector("[role=alert]")
        # the diagram: every frame, in wire order; a click shows its exact text laid out
        await page.goto(ui.url + f"#/session/{blocked}")
        frames = _frames(db, blocked)
        await page.wait_for_function(f"document.querySelectorAll('.frame').length === {len(frames)}")
        seqs = [
            int(x) for x in await page.eval_on_selector_all(".frame", "els => els.map(e => e.dataset.seq)")
        ]
        assert seqs == [seq for seq, _ in frames]
        await page.click(".frame[data-seq='2']")
        await page.wait_for_selector("#detail pre.pretty")
        assert await page.inner_text("#detail pre.pretty") == pretty_json(frames[1][1] or "")
        assert "round trip" in await page.inner_text("#detail")  # the answer shows its CALL and RTT
        assert [p for p in problems if "400 (Bad Request)" not in p] == []  # (the bad filter's answer)
        # the same pages under their own Content-Security-Policy: nothing they do breaks it
        strict = await b.new_page()
        seen: list[str] = []
        strict.on("console", lambda m: seen.append(m.text) if m.type in ("error", "warning") else None)
        pages = {
            "#/sessions": "#sessions tbody tr",
            f"#/session/{blocked}?seq=2": "#detail pre.pretty",
            "#/runs": "#runs",
            f"#/run/{run_id}": "#groups",
            "#/coverage": "#coverage",
            "#/rules": "main h1",
        }
        for hash_, ready in pages.items():
            await strict.goto(ui.url + hash_)
            await strict.locator(ready).first.wait_for(timeout=10_000)
        assert seen == []


@pytest.mark.usefixtures("needs_chromium")
@pytest.mark.timeout(90)
async def test_a_live_frame_appears_while_a_charger_talks_through_the_proxy(tmp_path: Path) -> None:
    db = tmp_path / "live.db"

    async def answer_of(ws: Any, uid: str) -> None:
        while json.loads(await ws.recv())[1] != uid:  # (the CSMS's own calls go unanswered)
            pass

    def both(uid: str) -> str:  # the CALL and its answer are on the page
        return (
            "[...document.querySelectorAll('.frame')]"
            # the id exactly: the CSMS's own calls have uuid4 ids, and one in 256 begins with "b1"
            f".filter(e => [...e.querySelectorAll('span')].some(s => s.textContent === 'id {uid}'))"
            ".length === 2"
        )

    async with ReferenceCsms("v1") as csms, ProxyServer(csms.url, db, flush_interval=0.05) as proxy:
        async with connect(proxy.url + "/LIVE-1", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            await ws.send(BOOT)
            await answer_of(ws, "b1")
            async with UiServer(db, port=0) as ui, browser() as b:
                lst, problems = await _open(b, ui.url + "#/sessions")
                await lst.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 1")
                await lst.evaluate(
                    "window.__row = document.querySelector('#sessions tbody tr');"
                    "window.__cp = __row.cells[1]; window.__count = __row.cells[6]"
                )
                page, problems2 = await _open(b, ui.url + "#/session/1")
                await page.wait_for_function(both("b1"))
                assert await page.is_checked("#follow")
                await page.wait_for_selector("#live:not([hidden])")
                # each frame appears without a reload (how soon: benchmarks/ui_overhead.py measures
                # it, within a second under 1,000 chargers; a test asserts no duration)
                for n in range(3):
                    await ws.send(f'[2,"h{n}","Heartbeat",{{}}]')
                    await answer_of(ws, f"h{n}")
                    await page.wait_for_function(both(f"h{n}"), timeout=10_000)
                last = page.locator(".frame", has_text="id h2").last
                assert "Heartbeat" in await last.inner_text() and "↩" in await last.inner_text()
                # the list follows in place: the same row element, its frame count (column 7) grown
                # from the boot's 2 to the heartbeats' (and the CSMS's own calls)
                await lst.wait_for_function(
                    "Number(document.querySelector('#sessions tbody tr td:nth-child(7)').textContent) >= 8",
                    timeout=5000,
                )
                assert await lst.evaluate("window.__row === document.querySelector('#sessions tbody tr')")
                # the cells are kept, a count's text changed in place (nothing built again)
                assert await lst.evaluate("__row.cells[1] === __cp && __row.cells[6] === __count")
                # a second charger: its session appears in the list without a reload
                async with connect(proxy.url + "/LIVE-2", subprotocols=["ocpp1.6"]) as ws2:  # type: ignore[list-item]
                    await ws2.send(BOOT)
                    await answer_of(ws2, "b1")
                    await lst.wait_for_function(
                        "document.querySelectorAll('#sessions tbody tr').length === 2", timeout=3000
                    )
                # a hidden page (a tab in the background) fetches nothing, and catches up when shown
                visibility = (
                    "Object.defineProperty(document, 'hidden', {value: %s, configurable: true});"
                    "document.dispatchEvent(new Event('visibilitychange'))"
                )
                await lst.evaluate(visibility % "true")
                async with connect(proxy.url + "/LIVE-3", subprotocols=["ocpp1.6"]) as ws3:  # type: ignore[list-item]
                    await ws3.send(BOOT)
                    await answer_of(ws3, "b1")
                    await asyncio.sleep(2.5)  # the list's stream said "changed" meanwhile
                    assert await lst.evaluate("document.querySelectorAll('#sessions tbody tr').length") == 2
                    await lst.evaluate(visibility % "false")
                    await lst.wait_for_function(
                        "document.querySelectorAll('#sessions tbody tr').length === 3", timeout=3000
                    )
                assert problems == [] and problems2 == []


async def _invoke(args: list[str]) -> Any:
    app = typer.Typer()
    register(app)
    return await asyncio.to_thread(CliRunner().invoke, app, args, catch_exceptions=False)


@pytest.mark.usefixtures("needs_chromium")
@pytest.mark.timeout(120)
async def test_difference_groups_link_to_frames_and_noise_rules_silence_a_rerun(
    capture: tuple[Path, int], tmp_path: Path
) -> None:
    db = _copy(capture[0], tmp_path)
    run_id = capture[1]
    rules = tmp_path / "site.rules.toml"
    async with UiServer(db, rules=rules, port=0) as ui, browser() as b:
        page, problems = await _open(b, ui.url + f"#/run/{run_id}")
        await page.wait_for_selector("#groups")
        boot = page.locator("#groups tr.group", has_text="BootNotification")
        assert "3 of 3 (100 %)" in await boot.inner_text()
        # a difference links to its frame: the recording's answer and the replay's, side by side
        first = boot.locator("td.examples a").first
        href = await first.get_attribute("href")
        assert href is not None
        seq = int(href.rsplit("seq=", 1)[1])
        await first.click()
        await page.wait_for_selector("[data-side=recording] .frame.sel")
        assert await page.get_attribute("[data-side=recording] .frame.sel", "data-seq") == str(seq)
        replayed = await page.inner_text("[data-side=target] .frame.sel")
        assert f"rec #{seq}" in replayed and "BootNotification" in replayed
        assert "900" in await page.inner_text("#diffs-here") and "300" in await page.inner_text("#diffs-here")
        await page.wait_for_selector(".detail pre.pretty")
        # the coverage matrix links into the run and into the capture
        await page.goto(ui.url + "#/coverage")
        await page.wait_for_selector("#coverage")
        assert await page.get_attribute("#coverage td.badc a >> nth=0", "href") in {
            f"#/run/{run_id}?action={a}"
            for a in ("Authorize", "BootNotification", "StartTransaction", "StopTransaction")
        }
        await page.click("#coverage tr:has(td:text-is('Heartbeat')) a")
        await page.wait_for_function("location.hash === '#/sessions?action=Heartbeat'")
        await page.wait_for_function("document.querySelectorAll('#sessions tbody tr').length === 3")
        # mark every group as expected noise, looking at the diff each time
        await page.goto(ui.url + f"#/run/{run_id}")
        await page.wait_for_selector("#groups")
        groups = await page.locator("#groups tr.group").count()
        assert groups == 4
        for _ in range(groups):
            await page.locator("button.noise").first.click()
            await page.wait_for_selector("#rule-diff")
            assert "+ignore = [" in await page.inner_text("#rule-diff")
            await page.click("#save-rule")
            await page.wait_for_selector("#saved")
            await page.click("dialog button:has-text('Close')")
            await page.wait_for_selector("#groups")
        await page.wait_for_function("document.querySelectorAll('button.noise').length === 0")
        assert await page.locator("#groups .badge", has_text="in the rules file").count() == 4
        assert problems == []
    parse_rules(rules.read_text())
    async with ReferenceCsms("v2") as v2:
        res = await _invoke(
            ["replay", "--db", str(db), "--target", v2.url, "--max-gap", "0.05", "--timeout", "2",
             "--grace", "0.3", "--rules", str(rules)]
        )  # fmt: skip
    assert res.exit_code == 0, res.output
    with Store.open(db) as s:
        assert s.db.execute("SELECT diffs FROM runs ORDER BY id DESC LIMIT 1").fetchone() == (0,)


@pytest.mark.usefixtures("needs_chromium")
@pytest.mark.timeout(90)
async def test_a_hostile_capture_renders_as_text_and_runs_no_script(tmp_path: Path) -> None:
    db = tmp_path / "hostile.db"
    await asyncio.wait_for(make_hostile_capture(db), 20)
    with Store.open(db) as s:
        (session,) = s.sessions()
        frames = list(s.frames(session.id))
    assert session.charge_point_id == HOSTILE_ID and len(frames) == 7
    async with UiServer(db, port=0) as ui, browser() as b:
        page, problems = await _open(b, ui.url + "#/sessions")
        await page.wait_for_selector("#sessions tbody tr")
        shown = await page.inner_text("#sessions tbody")
        assert escape_controls(HOSTILE_ID) in shown  # the id as text, its controls as escapes
        await page.goto(ui.url + f"#/session/{session.id}")
        await page.wait_for_function(f"document.querySelectorAll('.frame').length === {len(frames)}")
        text = await page.inner_text(".seq")
        assert escape_controls(HOSTILE) in text  # the action, as text
        # the CALLERROR and the frame that is not JSON are marked, and so are schema violations
        assert await page.locator(".arrow.err").count() == 2
        assert await page.locator(".arrow.viol", has_text="BootNotification").count() >= 1
        for f in frames:
            await page.click(f".frame[data-seq='{f.seq}']")
            await page.wait_for_function(
                f"document.querySelector('#detail h2')?.textContent === 'Frame #{f.seq}'"
            )
            detail = await page.inner_text("#detail")
            assert "<script>" in detail and "\\u202e" in detail
        await page.goto(ui.url + f"#/session/{session.id}?q=" + "payload.idTag~script")
        await page.wait_for_selector(".frame.match")
        assert await page.evaluate("window.__pwned") is None
        assert await page.evaluate("document.querySelectorAll('main script, main img').length") == 0
        assert "\u202e" not in await page.inner_text("body")  # no live bidi override on the page
        assert problems == []


# --------------------------------------------------------------------------- the commands


def test_ui_command_errors_and_warning(tmp_path: Path) -> None:
    from ocpp_replay.cli import app

    res = CliRunner().invoke(app, ["ui", "--db", str(tmp_path / "none.db")])
    assert (
        res.exit_code == 2 and res.stderr.startswith("error: no capture at") and res.stderr.count("\n") == 1
    )


def _wait_http(url: str, deadline: float) -> Any:
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(90)
async def test_proxy_ui_serves_the_capture_from_its_own_process(
    capture: tuple[Path, int], tmp_path: Path
) -> None:
    db = _copy(capture[0], tmp_path)
    ui_port, proxy_port = _port(), _port()
    async with ReferenceCsms("v1") as csms:
        proc = subprocess.Popen(  # noqa: ASYNC220  (started once; the test waits on it in a thread)
            [sys.executable, "-m", "ocpp_replay.cli", "proxy", "--upstream", csms.url, "--host", "127.0.0.1",
             "--port", str(proxy_port), "--db", str(db), "--ui", str(ui_port), "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            data = await asyncio.to_thread(
                # under load: its first answer runs at idle priority behind the busy cores
                _wait_http,
                f"http://127.0.0.1:{ui_port}/api/sessions",
                time.monotonic() + 50,
            )
            assert data["total"] == 3
            import psutil

            children = psutil.Process(proc.pid).children()
            (child,) = [c for c in children if "ui" in c.cmdline()]  # the UI: a process of its own,
            assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE  # behind the relay, always
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = await asyncio.to_thread(proc.communicate, timeout=20)
    assert proc.returncode == 0, err.decode()
    assert all(not c.is_running() or c.status() == "zombie" for c in children)


@pytest.mark.timeout(30)
def test_ui_on_another_address_warns_about_personal_data(capture: tuple[Path, int]) -> None:
    db = capture[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocpp_replay.cli", "ui", "--db", str(db), "--host", "0.0.0.0", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("ui: http://0.0.0.0:")
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    assert "personal data" in err.decode() and proc.returncode == 0


@pytest.mark.usefixtures("needs_chromium")
@pytest.mark.timeout(120)
async def test_a_compare_run_shows_baseline_and_candidate_side_by_side(
    capture: tuple[Path, int], tmp_path: Path
) -> None:
    db = _copy(capture[0], tmp_path)
    async with ReferenceCsms("v1") as v1, ReferenceCsms("v2") as v2:
        res = await _invoke(
            ["compare", "--db", str(db), "--baseline", v1.url, "--candidate", v2.url, "--max-gap", "0.05",
             "--timeout", "2", "--grace", "0.3"]
        )  # fmt: skip
    assert res.exit_code == 1, res.output
    with Store.open(db) as s:
        (run_id,) = s.db.execute("SELECT id FROM runs WHERE kind = 'compare'").fetchone()
    async with UiServer(db, port=0) as ui, browser() as b:
        page, problems = await _open(b, ui.url + f"#/run/{run_id}")
        await page.wait_for_selector("#groups")
        boot = page.locator("#groups tr.group", has_text="BootNotification")
        await boot.locator("td.examples a").first.click()
        for side in ("baseline", "candidate"):
            selected = page.locator(f"[data-side={side}] .frame.sel")
            await selected.wait_for()
            assert "BootNotification" in await selected.inner_text()
        assert "expected: baseline" in await page.inner_text("main")
        assert problems == []
