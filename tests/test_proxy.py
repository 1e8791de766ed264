"""The capture proxy between independent peers (ocpp package + websockets) on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
import trustme
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection

from ocpp_replay.capture.handshake import basic_auth_user, charge_point_id_of
from ocpp_replay.capture.proxy import ProxyServer, TlsOptions
from ocpp_replay.capture.wsframes import Scanner
from ocpp_replay.core.frames import Direction
from ocpp_replay.store import Store
from tests.peers import CsmsBehaviour, Recording, charger, run_csms, session16, session201

ALFEN = (
    Path(__file__).resolve().parent / "data" / "alfen-frames.jsonl"
)  # real Alfen frames, from public issue threads

pytestmark = pytest.mark.timeout(30)


async def settle(proxy: ProxyServer) -> None:
    """Wait until the proxy has no open connection and the writer has flushed."""
    async with asyncio.timeout(10):
        while proxy.stats.active:
            await asyncio.sleep(0.01)
        while proxy.writer is not None and proxy.writer.pending:
            await asyncio.sleep(0.01)
        await asyncio.sleep(proxy.flush_interval * 3)


def texts(frames: list[Any]) -> list[str]:
    return [f.raw if f.raw is not None else f.raw_bytes for f in frames]


async def read_upgrade(reader: asyncio.StreamReader) -> bytes:
    """For a hand-written CSMS: read a client's upgrade request, return the 101 that accepts it
    (computed here as RFC 6455 says, not with the proxy's code)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    key = next(
        h.split(":", 1)[1].strip() for h in head.split("\r\n") if h.lower().startswith("sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n"
    )


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_full_session_is_byte_identical_on_both_sides_and_captured(
    tmp_path: Path, version: str
) -> None:
    db = tmp_path / "capture.db"
    behaviour = CsmsBehaviour(remote_stop_after_meter_values=2)
    async with run_csms(behaviour) as csms, ProxyServer(csms.url, db) as proxy:
        async with charger(proxy.url, "ALF-0001", version=version) as cp:
            if version == "1.6":
                result = await session16(cp)  # type: ignore[arg-type]
                assert cp.remote_stops == [result["tx"]]  # type: ignore[union-attr]
            else:
                await session201(cp)  # type: ignore[arg-type]
            cp_rec: Recording = cp.recording  # type: ignore[union-attr]
        await settle(proxy)
    csms_rec = csms.connections[0]
    # Each side received exactly what the other sent, byte for byte.
    assert csms_rec.received == cp_rec.sent
    assert cp_rec.received == csms_rec.sent
    assert len(cp_rec.sent) >= 4

    store = Store.open(db)
    [session] = store.sessions()
    assert session.charge_point_id == "ALF-0001"
    assert session.subprotocol == ("ocpp1.6" if version == "1.6" else "ocpp2.0.1")
    assert session.path == "/ocpp/ALF-0001"
    assert session.remote_addr == "127.0.0.1"
    assert session.ended_at is not None and session.closed_by == "cp"
    assert session.close_code == 1000
    frames = list(store.frames(session.id))
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
    to_csms = [f for f in frames if f.direction is Direction.TO_CSMS]
    to_cp = [f for f in frames if f.direction is Direction.TO_CP]
    assert texts(to_csms) == cp_rec.sent
    assert texts(to_cp) == csms_rec.sent
    # Results carry the action of the CALL they answer.
    for f in frames:
        assert f.parse_error is None
        assert f.action is not None, f
        data = json.loads(f.raw or "")
        if f.message_type == 2:
            assert f.action == data[2]
    if version == "1.6":
        remote = [f for f in to_cp if f.action == "RemoteStopTransaction"]
        answer = [f for f in to_csms if f.action == "RemoteStopTransaction"]
        assert [f.message_type for f in remote + answer] == [2, 3]
    elapsed = [f.elapsed for f in frames]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


async def test_alfen_frames_pass_untouched(tmp_path: Path) -> None:
    lines = [json.loads(line) for line in ALFEN.read_text().splitlines() if line.strip()]
    received: list[str | bytes] = []

    async def sink(ws: ServerConnection) -> None:
        async for message in ws:
            received.append(message)

    async with run_csms(handler=sink) as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        async with connect(f"{proxy.url}/ALF-0002", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            for line in lines:
                await ws.send(line["raw"])
            async with asyncio.timeout(5):
                while len(received) < len(lines):
                    await asyncio.sleep(0.01)
        await settle(proxy)
    assert received == [line["raw"] for line in lines]
    assert any("9223372036854775807" in r for r in received)  # type: ignore[operator]
    frames = list(Store.open(tmp_path / "c.db").frames(1))
    assert [f.raw for f in frames] == [line["raw"] for line in lines]
    # All were sent by the charger: the CALLRESULT among them answers no CALL of the CSMS,
    # so it is not paired with the charger's own BootNotification of the same id.
    assert [f.action for f in frames][:2] == ["BootNotification", None]


async def test_malformed_and_binary_frames_are_forwarded_and_flagged(tmp_path: Path) -> None:
    echo_seen: list[str | bytes] = []

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            echo_seen.append(message)
            await ws.send(message)

    sent: list[str | bytes] = [
        "not json {",
        '[2,"7"]',
        '{"a":1}',
        b"\x00\xffbinary",
        '[2,"8","Heartbeat",{}]',
    ]
    async with run_csms(handler=echo) as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        async with connect(f"{proxy.url}/CP%2F1", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            got = []
            for message in sent:
                await ws.send(message)
                got.append(await asyncio.wait_for(ws.recv(), 5))
        await settle(proxy)
    assert echo_seen == sent
    assert got == sent
    store = Store.open(tmp_path / "c.db")
    [session] = store.sessions()
    assert session.charge_point_id == "CP/1"  # percent-decoded last segment
    frames = list(store.frames(session.id))
    assert len(frames) == 2 * len(sent)
    by_seq = frames[::2]
    assert [f.parse_error is not None for f in by_seq] == [True, True, True, True, False]
    assert by_seq[3].raw_bytes == b"\x00\xffbinary" and by_seq[3].raw is None
    assert by_seq[1].message_type == 2 and by_seq[1].unique_id == "7"


async def test_close_codes_and_reasons_pass_both_ways(tmp_path: Path) -> None:
    server_close: list[tuple[int | None, str | None]] = []

    async def closer(ws: ServerConnection) -> None:
        message = await ws.recv()
        if message == "close me":
            await ws.close(4001, "later")
            return
        try:
            await ws.recv()
        except websockets.ConnectionClosed as exc:
            server_close.append((exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else None))

    async with run_csms(handler=closer) as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        # The charger closes: the CSMS gets the same code and reason.
        async with connect(f"{proxy.url}/A", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            await ws.send("hello")
            await ws.close(4000, "bye")
        # The CSMS closes: the charger gets the same code and reason.
        async with connect(f"{proxy.url}/B", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            await ws.send("close me")
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
        await settle(proxy)
    assert server_close == [(4000, "bye")]
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "later")
    a, b = Store.open(tmp_path / "c.db").sessions()
    assert (a.close_code, a.close_reason, a.closed_by) == (4000, "bye", "cp")
    assert (b.close_code, b.close_reason, b.closed_by) == (4001, "later", "csms")


async def test_ping_and_pong_pass_through(tmp_path: Path) -> None:
    async with run_csms() as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        async with connect(f"{proxy.url}/P", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            waiter = await ws.ping(b"alfen")
            latency = await asyncio.wait_for(waiter, 5)  # the CSMS's pong came back through
            assert latency >= 0
            # and a ping from the CSMS side reaches the charger, whose pong returns
            server_ws = csms.connections[0].ws
            waiter = await server_ws.ping(b"csms")
            await asyncio.wait_for(waiter, 5)


async def test_subprotocol_choice_and_refusal_are_the_upstreams(tmp_path: Path) -> None:
    async with (
        run_csms(subprotocols=("ocpp2.0.1",)) as csms,
        ProxyServer(csms.url, tmp_path / "c.db") as proxy,
    ):
        async with connect(
            f"{proxy.url}/S1",
            subprotocols=["ocpp1.6", "ocpp2.0.1"],  # type: ignore[list-item]
        ) as ws:
            assert ws.subprotocol == "ocpp2.0.1"
        # No common subprotocol: the CSMS refuses, and so does the charger's view of it.
        with pytest.raises(websockets.InvalidStatus) as direct:
            async with connect(f"{csms.url}/S2", subprotocols=["ocpp1.5"]):  # type: ignore[list-item]
                pass
        with pytest.raises(websockets.InvalidStatus) as proxied:
            async with connect(f"{proxy.url}/S2", subprotocols=["ocpp1.5"]):  # type: ignore[list-item]
                pass
        assert proxied.value.response.status_code == direct.value.response.status_code
        # Offered list goes upstream unchanged, in order.
        offered = [h.headers.get("Sec-WebSocket-Protocol") for h in csms.handshakes]
        assert offered[0] == "ocpp1.6, ocpp2.0.1" or offered[0] == "ocpp1.6,ocpp2.0.1"
    async with run_csms(subprotocols=()) as csms, ProxyServer(csms.url, tmp_path / "d.db") as proxy:
        async with connect(f"{proxy.url}/S3", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol is None  # upstream chose none: so does the charger


async def test_basic_auth_passes_upstream_and_password_is_never_stored(tmp_path: Path) -> None:
    password = "s3cret-Pa55word"
    db = tmp_path / "c.db"
    behaviour = CsmsBehaviour(password=password)
    good = {"Authorization": "Basic " + base64.b64encode(f"ALF-7:{password}".encode()).decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ALF-7:wrong").decode()}
    async with run_csms(behaviour) as csms, ProxyServer(csms.url, db) as proxy:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(f"{proxy.url}/ALF-7", subprotocols=["ocpp1.6"], additional_headers=bad):  # type: ignore[list-item]
                pass
        assert refused.value.response.status_code == 401
        assert refused.value.response.headers.get("WWW-Authenticate") == 'Basic realm="ocpp"'
        async with charger(proxy.url, "ALF-7", headers=good) as cp:
            await session16(cp, meter_values=0)  # type: ignore[arg-type]
        await settle(proxy)
        proxy.writer.close() if proxy.writer else None  # type: ignore[func-returns-value]
    assert csms.handshakes[-1].headers["Authorization"] == good["Authorization"]
    sessions = Store.open(db).sessions()
    assert [s.upstream_status for s in sessions] == [401, None]
    assert all(s.auth_user == "ALF-7" for s in sessions)
    for path in tmp_path.iterdir():
        blob = path.read_bytes()
        assert password.encode() not in blob, path
        assert base64.b64encode(f"ALF-7:{password}".encode()) not in blob, path


async def http_get(port: int, path: str) -> tuple[bytes, bytes]:
    """A plain HTTP GET on the proxy's port: (status line and headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def test_the_proxy_starts_while_its_upstream_is_down_and_answers_as_its_absence_would(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Chargers see their connection drop (no HTTP answer, as with no CSMS), the outage is
    logged once however many chargers try, /healthz shows it, and it ends when the CSMS is back."""
    import socket

    caplog.set_level("INFO", logger="ocpp_replay.capture.proxy")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    db = tmp_path / "c.db"
    upstream = f"ws://127.0.0.1:{port}/ocpp"
    async with ProxyServer(upstream, db, connect_timeout=2, check_upstream=True) as proxy:
        for n in range(3):
            with pytest.raises((websockets.InvalidMessage, OSError, EOFError)):
                async with connect(f"{proxy.url}/DOWN{n}", subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
                    pass
        head, body = await http_get(proxy.port, "/healthz")
        assert head.startswith(b"HTTP/1.1 200")
        health = json.loads(body)
        assert health["upstream"] == "down" and health["upstream_failures"] == 4  # start-up probe + 3
        assert health["upstream_down_since"].endswith("Z")
        metrics = _scrape((await http_get(proxy.port, "/metrics"))[1])
        assert metrics[("ocpp_proxy_upstream_up", ())] == 0
        assert metrics[("ocpp_proxy_handshakes_total", (("status", "none"),))] == 3
        assert metrics[("ocpp_proxy_upstream_errors_total", ())] == 4

        # The CSMS comes back on its port: the next charger gets through.
        async def csms(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await read_upgrade(reader) + b"Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n")
            await reader.read()
            writer.close()

        server = await asyncio.start_server(csms, "127.0.0.1", port)
        async with server:
            async with connect(f"{proxy.url}/BACK", subprotocols=["ocpp1.6"], close_timeout=0.5) as ws:
                assert ws.subprotocol == "ocpp1.6"
            _, body = await http_get(proxy.port, "/healthz")
            assert json.loads(body)["upstream"] == "up"
            await settle(proxy)
    lines = [r.getMessage() for r in caplog.records if r.levelname != "DEBUG"]
    outage = [line for line in lines if "unreachable" in line]
    assert len(outage) == 2, outage  # once per outage (and at start-up), not per attempt
    assert "is not answering" in outage[1]
    assert len([r for r in caplog.records if "reachable again" in r.getMessage()]) == 1
    sessions = Store.open(db).sessions()
    assert [s.charge_point_id for s in sessions] == ["DOWN0", "DOWN1", "DOWN2", "BACK"]
    for s in sessions[:3]:
        assert "unreachable" in (s.error or "") and s.upstream_status is None and s.closed_by == "upstream"


def _scrape(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed by prometheus_client's own parser: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


async def test_metrics_move_as_a_charger_talks_through_the_proxy(tmp_path: Path) -> None:
    """Issue 22.3: GET /metrics in Prometheus' text format; its counters follow the traffic."""
    async with run_csms() as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        head, body = await http_get(proxy.port, "/metrics")
        assert head.startswith(b"HTTP/1.1 200") and b"text/plain; version=0.0.4" in head
        before = _scrape(body)
        assert before[("ocpp_proxy_connections_total", ())] == 0
        assert before[("ocpp_proxy_upstream_up", ())] == 1
        assert before[("process_resident_memory_bytes", ())] > 0
        async with charger(proxy.url, "MET-1", version="1.6") as cp:
            await session16(cp, meter_values=2)  # type: ignore[arg-type]
            sent = len(cp.recording.sent)  # type: ignore[union-attr]
            async with asyncio.timeout(10):  # the writer has taken what was relayed
                while proxy.writer is not None and proxy.writer.stats.frames_written < proxy.stats.frames:
                    await asyncio.sleep(0.01)
            during = _scrape((await http_get(proxy.port, "/metrics"))[1])
        await settle(proxy)
        after = _scrape((await http_get(proxy.port, "/metrics"))[1])
    assert during[("ocpp_proxy_connections_open", ())] == 1
    assert after[("ocpp_proxy_connections_open", ())] == 0
    assert after[("ocpp_proxy_connections_total", ())] == 1
    assert after[("ocpp_proxy_handshakes_total", (("status", "101"),))] == 1

    def count(name: str, direction: str, action: str) -> float:
        return after.get((name, (("action", action), ("direction", direction))), 0)

    # the charger's BootNotification and the CSMS's answer to it, paired to its action
    assert count("ocpp_capture_frames_total", "to_csms", "BootNotification") == 1
    assert count("ocpp_capture_frames_total", "to_cp", "BootNotification") == 1
    assert count("ocpp_capture_frames_total", "to_csms", "MeterValues") == 2
    assert count("ocpp_capture_bytes_total", "to_csms", "BootNotification") > 100
    frames = sum(v for (name, _), v in after.items() if name == "ocpp_capture_frames_total")
    assert (
        frames
        == after[("ocpp_capture_frames_written_total", ())]
        == after[("ocpp_proxy_frames_relayed_total", ())]
    )
    assert frames >= 2 * sent - 1  # every call answered (the last one's answer may be the CSMS's own)
    assert after[("ocpp_capture_frames_lost_total", ())] == 0
    assert after[("ocpp_capture_pending_frames", ())] == 0
    assert after[("ocpp_capture_writes_total", ())] > before[("ocpp_capture_writes_total", ())]


async def test_upstream_drop_mid_session_drops_the_charger(tmp_path: Path) -> None:
    async def dropper(ws: ServerConnection) -> None:
        await ws.recv()
        ws.transport.abort()  # the CSMS vanishes without a close frame

    async with run_csms(handler=dropper) as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        async with connect(f"{proxy.url}/DROP", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            await ws.send('[2,"1","Heartbeat",{}]')
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        await settle(proxy)
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert session.closed_by == "csms" and session.close_code == 1006
    assert session.frames == 1


async def test_charger_drop_closes_the_csms_side(tmp_path: Path) -> None:
    closed: list[int | None] = []

    async def watcher(ws: ServerConnection) -> None:
        try:
            async for _ in ws:
                pass
        finally:
            closed.append(ws.close_code)

    async with run_csms(handler=watcher) as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        ws = await connect(f"{proxy.url}/GONE", subprotocols=["ocpp1.6"])  # type: ignore[list-item]
        await ws.send('[2,"1","Heartbeat",{}]')
        await asyncio.sleep(0.05)
        ws.transport.abort()  # the charger loses power
        async with asyncio.timeout(5):
            while not closed:
                await asyncio.sleep(0.01)
        await settle(proxy)
    assert closed == [1001]
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert session.closed_by == "cp" and session.close_code == 1006


async def test_wss_on_both_legs_with_test_certificates(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    csms_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(csms_ssl)
    cert_pem = tmp_path / "proxy.pem"
    key_pem = tmp_path / "proxy.key"
    ca_pem = tmp_path / "ca.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    server_cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    tls = TlsOptions(cert=cert_pem, key=key_pem, upstream_ca=ca_pem)
    charger_ssl = ssl.create_default_context()
    ca.configure_trust(charger_ssl)
    async with run_csms(ssl=csms_ssl) as csms, ProxyServer(csms.url, tmp_path / "c.db", tls=tls) as proxy:
        assert proxy.url.startswith("wss://")
        async with charger(proxy.url, "TLS-1", ssl=charger_ssl) as cp:
            await session16(cp, meter_values=1)  # type: ignore[arg-type]
            sent = cp.recording.sent  # type: ignore[union-attr]
        await settle(proxy)
    assert csms.connections[0].received == sent
    assert Store.open(tmp_path / "c.db").sessions()[0].frames == 2 * len(sent)


async def test_recording_failure_never_breaks_traffic(tmp_path: Path) -> None:
    """The capture's frames table disappears under the proxy: traffic goes on, loss is marked."""
    import sqlite3

    db = tmp_path / "c.db"
    async with run_csms() as csms:
        proxy = ProxyServer(csms.url, db)
        await proxy.start()
        assert proxy.writer is not None
        proxy.writer.max_pending = 5
        other = sqlite3.connect(db)
        other.execute("ALTER TABLE frames RENAME TO frames_gone")
        other.commit()
        async with charger(proxy.url, "FAULT", version="1.6") as cp:
            await session16(cp, meter_values=3)  # type: ignore[arg-type]
            sent = cp.recording.sent  # type: ignore[union-attr]
        await settle(proxy)
        await proxy.stop()
    assert csms.connections[0].received == sent  # every frame still delivered
    assert proxy.writer.stats.frames_lost > 0
    other.execute("ALTER TABLE frames_gone RENAME TO frames")
    other.commit()
    store = Store.open(db)
    [session] = store.sessions()
    assert session.frames_lost == proxy.writer.stats.frames_lost
    events = store.events(session.id)
    assert events and all(e["kind"] == "frames_lost" for e in events)


async def test_a_fault_in_following_frames_never_breaks_traffic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the frame scanner ever fail on what a peer sends, the bytes still pass; the
    session says from when it stopped recording."""
    calls = 0
    feed = Scanner.feed

    def failing_feed(self: Scanner, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("a bug in the scanner")
        return feed(self, data)

    monkeypatch.setattr(Scanner, "feed", failing_feed)
    db = tmp_path / "c.db"
    async with run_csms() as csms, ProxyServer(csms.url, db) as proxy:
        async with charger(proxy.url, "BLIND", version="1.6") as cp:
            await session16(cp, meter_values=3)  # type: ignore[arg-type]
            sent = cp.recording.sent  # type: ignore[union-attr]
            received = cp.recording.received  # type: ignore[union-attr]
        await settle(proxy)
    assert csms.connections[0].received == sent  # every frame delivered both ways
    assert csms.connections[0].sent == received
    store = Store.open(db)
    [session] = store.sessions()
    assert [e["kind"] for e in store.events(session.id)] == ["recording_stopped"]
    assert 0 < session.frames < 2 * len(sent)


def test_charge_point_id_and_auth_helpers() -> None:
    assert charge_point_id_of("/ocpp/ALF-1") == ("ALF-1", "ALF-1")
    assert charge_point_id_of("/steve/websocket/CentralSystemService/CP%201/") == ("CP 1", "CP%201")
    assert charge_point_id_of("/") == ("", "")
    assert basic_auth_user("Basic " + base64.b64encode(b"cp:pw:with:colons").decode()) == "cp"
    assert basic_auth_user("Bearer xyz") is None
    assert basic_auth_user("Basic !!!") is None


@pytest.mark.parametrize("sender", ["cp", "csms"])
async def test_a_message_over_the_size_limit_closes_both_sides_and_is_recorded(
    tmp_path: Path, sender: str
) -> None:
    """The sender gets 1009 from the proxy, the other side 1001 with the reason (not a drop)."""
    big = '[2,"2","DataTransfer",{"vendorId":"Alfen","data":"' + "A" * 5000 + '"}]'
    csms_close: list[tuple[int | None, str | None]] = []

    async def backend(ws: ServerConnection) -> None:
        try:
            message = await ws.recv()
            await ws.send(f'[3,"1",{{"echo":{len(message)}}}]')
            if sender == "csms":
                await ws.send(big)
            await ws.recv()
        except websockets.ConnectionClosed as exc:
            csms_close.append((exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, None))

    db = tmp_path / "c.db"
    async with run_csms(handler=backend) as csms, ProxyServer(csms.url, db, max_message_size=1000) as proxy:
        async with connect(f"{proxy.url}/BIG", subprotocols=["ocpp1.6"], max_size=None) as ws:  # type: ignore[list-item]
            await ws.send('[2,"1","Heartbeat",{}]')
            assert await asyncio.wait_for(ws.recv(), 5) == '[3,"1",{"echo":22}]'
            if sender == "cp":
                await ws.send(big)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
        async with asyncio.timeout(5):
            while not csms_close:
                await asyncio.sleep(0.01)
        await settle(proxy)
    assert info.value.rcvd is not None
    charger_got = (info.value.rcvd.code, info.value.rcvd.reason)
    who = "charge point" if sender == "cp" else "CSMS"
    if sender == "cp":
        assert charger_got[0] == 1009
        assert csms_close == [(1001, f"{who} sent a message the proxy refused")]
    else:
        assert csms_close[0][0] == 1009
        assert charger_got == (1001, f"{who} sent a message the proxy refused")
    [session] = Store.open(db).sessions()
    assert (session.closed_by, session.close_code, session.frames) == ("proxy", 1009, 2)
    assert session.close_reason is not None
    assert session.close_reason.startswith(f"{who} sent a message the proxy refused: ")
    assert re.search("exceeds (size )?limit 1000", session.close_reason)


async def test_log_lines_escape_control_characters_from_chargers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="ocpp_replay.capture.proxy")
    async with run_csms() as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        async with connect(f"{proxy.url}/%1B%5B2J%1B%5B31mEVIL%07%C2%9B%E2%80%AE", subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
            pass
        await settle(proxy)
    lines = [r.getMessage() for r in caplog.records if r.name == "ocpp_replay.capture.proxy"]
    mine = [line for line in lines if "EVIL" in line]
    assert len(mine) == 2  # open and close
    for line in mine:
        assert line.isprintable(), repr(line)
        assert "\\x1b[2J\\x1b[31mEVIL\\x07\\x9b\\u202e" in line
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert session.charge_point_id == "\x1b[2J\x1b[31mEVIL\x07\x9b\u202e"  # the capture keeps it as sent


async def test_a_newline_in_the_charge_point_id_is_proxied_and_recorded(tmp_path: Path) -> None:
    """The router matched the decoded path with '.', so an id with %0A got an unrecorded 404."""
    async with run_csms() as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        async with connect(f"{proxy.url}/ALF%0A0001", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            await ws.send('[2,"1","Heartbeat",{}]')
            assert (await asyncio.wait_for(ws.recv(), 5)).startswith('[3,"1"')  # type: ignore[union-attr]
        await settle(proxy)
    assert csms.handshakes[0].path == "/ocpp/ALF%0A0001"
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert (session.charge_point_id, session.path, session.frames) == ("ALF\n0001", "/ocpp/ALF%0A0001", 2)


async def test_text_frame_with_invalid_utf8_is_forwarded_as_is_and_kept_byte_for_byte(tmp_path: Path) -> None:
    """The proxy does not decode text frames it only forwards: bytes that are not UTF-8 reach the
    CSMS exactly as a direct connection would deliver them (here it closes with 1007), and the
    capture keeps them byte for byte, flagged."""
    closes: list[int | None] = []

    async def strict(ws: ServerConnection) -> None:
        try:
            async for _ in ws:
                pass
        except websockets.ConnectionClosed as exc:
            closes.append(exc.sent.code if exc.sent else None)

    bad = b'[2,"1","DataTransfer",{"data":"\xff\xfe"}]'
    async with run_csms(handler=strict) as csms:
        async with connect(f"{csms.url}/DIRECT", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            await ws.send(bad, text=True)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        async with ProxyServer(csms.url, tmp_path / "c.db") as proxy:
            async with connect(f"{proxy.url}/VIA", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
                await ws.send(bad, text=True)
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
            await settle(proxy)
    assert closes == [1007, 1007]  # the CSMS refused the same invalid text both ways
    [frame] = Store.open(tmp_path / "c.db").frames(1)
    assert frame.raw is None and frame.raw_bytes == bad
    assert frame.parse_error == "text frame is not UTF-8"


async def test_compression_is_negotiated_end_to_end_and_recorded_inflated(tmp_path: Path) -> None:
    """The charger's permessage-deflate offer reaches the CSMS; compressed frames pass as they
    are, fragmented or not, and the capture holds the text."""
    echoed: list[str | bytes] = []

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            echoed.append(message)
            await ws.send(message)

    big = '[2,"9","DataTransfer",{"vendorId":"Alfen","data":"' + "0123456789" * 3000 + '"}]'
    parts = [big[:10_000], big[10_000:20_000], big[20_000:]]
    async with run_csms(handler=echo) as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        async with connect(f"{proxy.url}/ZIP", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
            await ws.send('[2,"1","Heartbeat",{}]')
            assert await asyncio.wait_for(ws.recv(), 5) == '[2,"1","Heartbeat",{}]'
            await ws.send(parts)  # one message in three fragments, each compressed
            assert await asyncio.wait_for(ws.recv(), 5) == big
        await settle(proxy)
    assert "permessage-deflate" in csms.handshakes[0].headers["Sec-WebSocket-Extensions"]
    assert echoed == ['[2,"1","Heartbeat",{}]', big]
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert texts(list(Store.open(tmp_path / "c.db").frames(session.id))) == [
        '[2,"1","Heartbeat",{}]',
        '[2,"1","Heartbeat",{}]',
        big,
        big,
    ]


async def test_an_invalid_charger_handshake_gets_400_and_the_csms_is_never_dialled(tmp_path: Path) -> None:
    async with run_csms() as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        host, port = proxy.url.split("//")[1].split("/")[0].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"GET /ocpp/BAD HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: not-base64!\r\n\r\n"
        )
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        await settle(proxy)
    assert status.split()[1] == b"400"
    assert csms.handshakes == []
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert session.closed_by == "proxy" and "Sec-WebSocket-Key" in (session.error or "")


async def test_a_csms_that_speaks_first_is_heard(tmp_path: Path) -> None:
    """Frames the CSMS sends the moment it accepts (often in the same packet as its 101)
    reach the charger, in order, and are recorded."""
    first = [f'[2,"{n}","TriggerMessage",{{"requestedMessage":"BootNotification"}}]' for n in range(3)]

    async def eager(ws: ServerConnection) -> None:
        for frame in first:
            await ws.send(frame)
        async for _ in ws:
            pass

    async with run_csms(handler=eager) as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        async with connect(f"{proxy.url}/EAGER", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            got = [await asyncio.wait_for(ws.recv(), 5) for _ in first]
        await settle(proxy)
    assert got == first
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert texts(list(Store.open(tmp_path / "c.db").frames(session.id))) == first


async def test_frames_in_the_same_packet_as_the_csmss_101_are_relayed(tmp_path: Path) -> None:
    """A hand-written CSMS writes its 101 and two frames with one write: nothing is lost."""
    from websockets.frames import Frame, Opcode

    frames = ['[2,"1","GetConfiguration",{}]', '[2,"2","TriggerMessage",{"requestedMessage":"Heartbeat"}]']

    async def csms(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            await read_upgrade(reader) + b"Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n"
            + b"".join(Frame(Opcode.TEXT, f.encode()).serialize(mask=False) for f in frames)
        )  # fmt: skip
        await writer.drain()
        await reader.read()  # until the proxy closes
        writer.close()

    server = await asyncio.start_server(csms, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, ProxyServer(f"ws://127.0.0.1:{port}/ocpp", tmp_path / "c.db") as proxy:
        # This CSMS never answers a close frame: the charger gives up waiting after 0.5 s.
        async with connect(f"{proxy.url}/ONEWRITE", subprotocols=["ocpp1.6"], close_timeout=0.5) as ws:  # type: ignore[list-item]
            got = [await asyncio.wait_for(ws.recv(), 5) for _ in frames]
        await settle(proxy)
    assert got == frames
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert texts(list(Store.open(tmp_path / "c.db").frames(session.id))) == frames


async def test_a_slow_csms_slows_the_charger_instead_of_filling_the_proxys_memory(tmp_path: Path) -> None:
    """Backpressure: while the CSMS does not read, the proxy stops reading the charger; what
    it holds for the CSMS stays small however much the charger sends."""
    big = '[2,"{n}","DataTransfer",{{"vendorId":"Alfen","data":"' + "x" * 100_000 + '"}}]'
    received: list[str | bytes] = []

    async def sleepy(ws: ServerConnection) -> None:
        await asyncio.sleep(1.5)  # not reading: its socket buffers fill up
        async for message in ws:
            received.append(message)

    held: list[int] = []
    async with (
        run_csms(handler=sleepy) as csms,
        ProxyServer(csms.url, tmp_path / "c.db") as proxy,
    ):
        async with connect(
            f"{proxy.url}/PUSHY",
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            compression=None,
            max_size=None,
        ) as ws:

            async def watch() -> None:
                while True:
                    for relay in list(proxy._relays.values()):
                        if relay.csms.transport is not None:
                            held.append(relay.csms.transport.get_write_buffer_size())
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            for n in range(200):  # 20 MB
                await ws.send(big.format(n=n))
            async with asyncio.timeout(15):
                while len(received) < 200:
                    await asyncio.sleep(0.05)
            watcher.cancel()
        await settle(proxy)
    assert received == [big.format(n=n) for n in range(200)]
    assert held and max(held) < 2 * 2**20, max(held)
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert session.frames == 200


# ----------------------------------------------------------------------------- found in review


async def raw_charger(port: int, path: str = "/ocpp/CP1", extra: bytes = b"") -> tuple[Any, Any, bytes]:
    """A hand-written charger handshake: (reader, writer, the proxy's answer head)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n".encode()
        + extra
        + b"\r\n"
    )
    return reader, writer, await reader.readuntil(b"\r\n\r\n")


async def test_a_charger_whose_csms_answers_during_shutdown_gets_503_and_stop_finishes(
    tmp_path: Path,
) -> None:
    finished = asyncio.Event()

    async def slow_csms(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = await read_upgrade(reader)
        await asyncio.sleep(0.5)  # still answering when the proxy is told to stop
        with contextlib.suppress(ConnectionError):  # the proxy may have gone already
            writer.write(answer + b"\r\n")
            await reader.read()
        writer.close()
        finished.set()

    server = await asyncio.start_server(slow_csms, "127.0.0.1", 0)
    async with server:
        proxy = ProxyServer(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ocpp", tmp_path / "c.db")
        await proxy.start()
        pending = asyncio.create_task(raw_charger(proxy.port, "/ocpp/LATE"))
        await asyncio.sleep(0.1)
        async with asyncio.timeout(10):
            await proxy.stop()
            _, writer, head = await pending
            writer.close()
            await finished.wait()
    assert head.startswith(b"HTTP/1.1 503")
    assert proxy.writer is not None and not proxy.writer._thread.is_alive()  # flushed and closed
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert session.error == "proxy shutting down"


async def test_headers_on_several_lines_and_non_ascii_bytes_pass_as_sent(tmp_path: Path) -> None:
    """HTTP allows a header on several lines; header bytes that are not ASCII go upstream as is."""
    async with (
        run_csms(subprotocols=("ocpp2.0.1",)) as csms,
        ProxyServer(csms.url, tmp_path / "c.db") as proxy,
    ):
        _, writer, head = await raw_charger(
            proxy.port,
            "/ocpp/LINES",
            b"Connection: keep-alive\r\nSec-WebSocket-Protocol: ocpp1.6\r\n"
            b"Sec-WebSocket-Protocol: ocpp2.0.1\r\nUser-Agent: Wallbox \xe2\x82\xac\r\n",
        )
        writer.close()
        await settle(proxy)
    assert head.startswith(b"HTTP/1.1 101") and b"Sec-WebSocket-Protocol: ocpp2.0.1" in head
    # the bytes the charger sent (websockets reads header bytes as ISO-8859-1, as HTTP says)
    assert csms.handshakes[0].headers["User-Agent"].encode("latin-1") == "Wallbox €".encode()
    with Store.open(tmp_path / "c.db") as store:
        offered = store.db.execute("SELECT offered_subprotocols FROM sessions").fetchall()
    assert offered == [("ocpp1.6,ocpp2.0.1",)]


async def test_a_paused_csms_socket_still_reads_its_close_when_the_charger_vanishes(tmp_path: Path) -> None:
    """The charger stops reading, so the proxy stops reading the flooding CSMS; when the charger
    then vanishes, the CSMS's close handshake completes at once, not after the 10 s timeout."""
    closed: list[float] = []

    async def flood(ws: ServerConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await ws.send("x" * 100_000)
        closed.append(asyncio.get_running_loop().time())

    async with run_csms(handler=flood) as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        _, writer, _ = await raw_charger(proxy.port, "/ocpp/STALL", b"Sec-WebSocket-Protocol: ocpp1.6\r\n")
        writer.transport.pause_reading()  # the charger stops reading
        await asyncio.sleep(0.5)
        relay = next(iter(proxy._relays.values()))
        assert not relay.csms.transport.is_reading()  # backpressure reached the CSMS side
        gone = asyncio.get_running_loop().time()
        writer.transport.abort()  # and vanishes
        async with asyncio.timeout(5):
            while not closed:
                await asyncio.sleep(0.02)
        await settle(proxy)
    assert closed[0] - gone < 2


async def test_shutdown_after_the_charger_sent_its_close_does_not_send_the_csms_a_second_one(
    tmp_path: Path,
) -> None:
    """The charger's close has been forwarded and the CSMS has not answered when the proxy
    stops: the CSMS gets no second close, and the charger gets its answer."""
    from websockets.frames import Close, Frame, Opcode

    received = bytearray()

    async def mute_csms(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await read_upgrade(reader) + b"\r\n")
        while data := await reader.read(65536):  # never answers a close
            received.extend(data)
        writer.close()

    def close_frames(data: bytes) -> list[int]:
        """Opcodes of the small masked frames in ``data``, parsed by hand."""
        opcodes, pos = [], 0
        while pos + 6 <= len(data):
            opcodes.append(data[pos] & 0x0F)
            pos += 6 + (data[pos + 1] & 0x7F)
        return opcodes

    server = await asyncio.start_server(mute_csms, "127.0.0.1", 0)
    async with server:
        proxy = ProxyServer(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ocpp", tmp_path / "c.db")
        await proxy.start()
        reader, writer, head = await raw_charger(proxy.port, "/ocpp/BYE")
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(mask=True))
        await asyncio.sleep(0.3)
        async with asyncio.timeout(15):
            await proxy.stop()
            answer = await reader.read()
        writer.close()
    assert answer[:1] == b"\x88"  # a close frame answers the charger's
    assert close_frames(bytes(received)) == [8]  # the charger's close, and no second one
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert (session.closed_by, session.close_code) == ("cp", 1000)


async def test_an_unsupported_websocket_version_gets_426_with_the_version_spoken(tmp_path: Path) -> None:
    async with run_csms() as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(
            b"GET /ocpp/OLD HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        await settle(proxy)
    assert head.startswith(b"HTTP/1.1 426") and b"Sec-WebSocket-Version: 13" in head
    assert csms.handshakes == []
