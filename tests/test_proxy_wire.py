"""The proxy's handshake on the wire: what it reads, what it forwards, what it passes back.

Raw peers (hand-written HTTP over asyncio streams) where a library cannot misbehave as needed:
an upgrade request and a frame in one send, a 101 with bare LF line endings, an off-spec
subprotocol answer, refusals with bodies. The `ocpp` package and websockets are the other peers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from ocpp_replay.capture.handshake import charge_point_id, path_suffix
from ocpp_replay.capture.proxy import ProxyServer
from ocpp_replay.cli import app
from ocpp_replay.store import Store
from tests.peers import CsmsBehaviour, charger, run_csms, session16
from tests.test_proxy import settle

pytestmark = pytest.mark.timeout(30)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BOOT = '[2,"1","BootNotification",{"chargePointVendor":"Alfen BV","chargePointModel":"NG9"}]'


def accept_of(key: str) -> str:
    """RFC 6455's accept value, computed here and not with the proxy's code."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def key_of(head: bytes) -> str:
    for line in head.decode("latin-1").splitlines():
        if line.lower().startswith("sec-websocket-key:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no key in {head!r}")


def upgrade(path: str, key: str, extra: str = "", *, protocols: str = "ocpp1.6") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: charger.test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked frame from a server: (opcode, payload)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


@contextlib.asynccontextmanager
async def raw_csms(
    answer: Callable[[bytes], Awaitable[bytes] | bytes],
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A hand-written CSMS: reads a request head, writes ``answer(head)``, then holds the
    connection until the other side closes it or sends a close frame.
    Yields (its ws:// URL, the request heads seen)."""
    seen: list[bytes] = []
    handlers: list[asyncio.Task[Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head)
            result = answer(head)
            writer.write(await result if not isinstance(result, bytes) else result)
            await writer.drain()
            while data := await reader.read(65536):  # until the connection or a close frame ends
                if data[:1] == b"\x88":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ocpp", seen
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


async def dial(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Send ``data`` in one write; return the answer's head (up to and with its blank line)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    head = b""
    while not (head.endswith(b"\n\n") or head.endswith(b"\n\r\n")):
        byte = await asyncio.wait_for(reader.read(1), 5)
        if not byte:
            break
        head += byte
    return reader, writer, head


# ----------------------------------------------------------------------------- 21.1, 21.2


async def test_an_upgrade_and_the_first_frame_in_one_send_are_both_relayed(tmp_path: Path) -> None:
    """The charger's BootNotification travels in the TCP segment of its upgrade request: the
    CSMS (the ocpp package) answers it and the capture holds it."""
    key = base64.b64encode(os.urandom(16)).decode()
    boot = Frame(Opcode.TEXT, BOOT.encode()).serialize(mask=True)
    async with run_csms() as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        reader, writer, head = await dial(proxy.port, upgrade("/ocpp/ONE-SEND", key) + boot)
        assert head.startswith(b"HTTP/1.1 101")
        opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
        writer.close()
        await settle(proxy)
    assert opcode == Opcode.TEXT.value
    answer = json.loads(payload)
    assert answer[:2] == [3, "1"] and answer[2]["status"] == "Accepted"
    assert csms.connections[0].received == [BOOT]
    frames = list(Store.open(tmp_path / "c.db").frames(1))
    assert [f.raw for f in frames] == [BOOT, payload.decode()]
    assert frames[0].action == frames[1].action == "BootNotification"


async def test_a_101_with_bare_lf_line_endings_is_passed_on_as_sent(tmp_path: Path) -> None:
    """Lenient HTTP parsers accept LF alone; the charger gets the CSMS's lines as they were,
    with the accept value of its own key, and the relay starts."""

    def answer(head: bytes) -> bytes:
        first = Frame(Opcode.TEXT, b'[2,"9","Heartbeat",{}]').serialize(mask=False)
        return (
            "HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n"
            f"Sec-WebSocket-Accept: {accept_of(key_of(head))}\nSec-WebSocket-Protocol: ocpp1.6\n\n"
        ).encode() + first

    key = base64.b64encode(os.urandom(16)).decode()
    async with raw_csms(answer) as (url, _), ProxyServer(url, tmp_path / "c.db") as proxy:
        reader, writer, head = await dial(proxy.port, upgrade("/ocpp/LF", key))
        frame = await asyncio.wait_for(read_frame(reader), 5)
        writer.close()
        await settle(proxy)
    assert (
        head
        == (
            "HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n"
            f"Sec-WebSocket-Accept: {accept_of(key)}\nSec-WebSocket-Protocol: ocpp1.6\n\n"
        ).encode()
    )
    assert frame == (1, b'[2,"9","Heartbeat",{}]')
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert session.subprotocol == "ocpp1.6" and session.handshake_note is None and session.frames == 1


# ----------------------------------------------------------------------------- 13.3, 13.4


def head_lines(head: bytes) -> list[str]:
    return [line for line in head.decode("latin-1").split("\r\n") if line]


async def test_the_csmss_101_reaches_the_charger_as_it_sent_it(tmp_path: Path) -> None:
    """Same key, same CSMS: directly and through the proxy the charger reads the same 101,
    the CSMS's Server and Date included (nothing of the proxy's own)."""
    key = base64.b64encode(os.urandom(16)).decode()
    async with run_csms() as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        port = int(csms.url.split(":")[2].split("/")[0])
        _, w1, direct = await dial(port, upgrade("/ocpp/SAME", key))
        _, w2, proxied = await dial(proxy.port, upgrade("/ocpp/SAME", key))
        for w in (w1, w2):
            w.close()
        await settle(proxy)

    def without_date(head: bytes) -> list[str]:
        return [line for line in head_lines(head) if not line.startswith("Date:")]

    assert without_date(proxied) == without_date(direct)
    assert any(line.startswith("Server: Python/") and "websockets" in line for line in head_lines(proxied))
    assert any(line.startswith("Date: ") for line in head_lines(proxied))
    assert b"aiohttp" not in proxied


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_refusal_reaches_the_charger_with_its_status_headers_and_body(
    tmp_path: Path, chunked: bool
) -> None:
    body = b"ocpp1.6 only\n"
    framing = (
        b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
        if chunked
        else b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    refusal = (
        b"HTTP/1.1 400 Bad Request\r\nServer: SteVe/3.7\r\nDate: Mon, 02 Mar 2026 08:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nConnection: close\r\nX-Reason: subprotocol\r\n" + framing
    )
    key = base64.b64encode(os.urandom(16)).decode()
    async with raw_csms(lambda _: refusal) as (url, _), ProxyServer(url, tmp_path / "c.db") as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(upgrade("/ocpp/NO", key, protocols="ocpp2.0.1"))
        got = await asyncio.wait_for(reader.read(), 5)  # the proxy closes after the answer
        writer.close()
        await settle(proxy)
    assert got == refusal.replace(b"Connection: close\r\n", b"")  # hop-by-hop aside, as sent
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert (session.upstream_status, session.closed_by) == (400, "upstream")
    assert session.error == "upstream refused the handshake: 400 Bad Request"


@pytest.mark.parametrize("offered", ["ocpp1.6", ""])
async def test_an_off_spec_subprotocol_answer_is_passed_on_recorded_and_flagged(
    tmp_path: Path, offered: str
) -> None:
    """A CSMS that answers a subprotocol the charger did not offer (or any, to a charger that
    offered none): a lenient charger is let in, as it would be directly."""

    def answer(head: bytes) -> bytes:
        return (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_of(key_of(head))}\r\nSec-WebSocket-Protocol: ocpp2.0\r\n\r\n"
        ).encode()

    key = base64.b64encode(os.urandom(16)).decode()
    async with raw_csms(answer) as (url, seen), ProxyServer(url, tmp_path / "c.db") as proxy:
        _, writer, head = await dial(proxy.port, upgrade("/ocpp/LENIENT", key, protocols=offered))
        writer.write(Frame(Opcode.TEXT, b'[2,"1","Heartbeat",{}]').serialize(mask=True))
        await writer.drain()
        async with asyncio.timeout(5):
            while proxy.stats.frames < 1:
                await asyncio.sleep(0.01)
        writer.close()
        await settle(proxy)
    assert head.startswith(b"HTTP/1.1 101") and b"Sec-WebSocket-Protocol: ocpp2.0\r\n" in head
    assert (b"Sec-WebSocket-Protocol" in seen[0]) == bool(offered)
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert session.subprotocol == "ocpp2.0" and session.upstream_status is None
    assert session.handshake_note is not None and "'ocpp2.0' was not offered" in session.handshake_note
    assert session.frames == 1


# ----------------------------------------------------------------------------- 13.2, 23.1


def test_the_path_rule() -> None:
    up = "/steve/websocket/CentralSystemService"
    assert path_suffix(f"{up}/CP-A/", up) == "/CP-A/"
    assert path_suffix(f"{up}/site1/CP-A", up) == "/site1/CP-A"
    assert path_suffix("/ocpp/CP-A", up) == "/CP-A"  # elsewhere: the last segment and what follows
    assert path_suffix("/ocpp/CP-A//", up) == "/CP-A//"
    assert path_suffix("/x/site/CP-A", up, "/x") == "/site/CP-A"
    assert path_suffix("/xy/CP-A", up, "/x") is None  # a prefix ends at a segment
    assert path_suffix("/any/CP", "") == "/any/CP"  # an upstream without a path gets it all
    assert charge_point_id("/site1/CP%2B1/") == "CP+1"
    assert charge_point_id("/site1/CP-A", "first") == "site1"
    assert charge_point_id("/site1/CP-A/", "suffix") == "site1/CP-A"
    assert charge_point_id("/", "last") == ""


def test_replay_dials_the_recorded_suffix_and_query_as_recorded() -> None:
    from ocpp_replay.replay.runner import session_url

    raw = "name=a%20b%26c&u=%C3%A9"
    assert (
        session_url("ws://h:9/ocpp/", "CP+1/", raw, "/site1/CP+1%2F/")
        == f"ws://h:9/ocpp/site1/CP+1%2F/?{raw}"
    )
    assert session_url("ws://h:9/o?t=3", "CP", "", "/CP") == "ws://h:9/o/CP?t=3"
    assert session_url("ws://h:9/o", "CP", "", "/CP") == "ws://h:9/o/CP?"  # a bare '?' as dialled
    assert session_url("ws://h:9/o", "CP 1", None, None) == "ws://h:9/o/CP%201"  # an older capture


async def test_path_and_query_pass_and_are_kept_byte_for_byte_and_replayed_so(tmp_path: Path) -> None:
    """A charger dials an encoded id, extra segments, a trailing slash and an encoded query:
    the CSMS sees exactly that, the capture keeps it raw (the id decoded beside it), and a
    replay of the capture dials exactly that again."""
    from ocpp_replay.replay import run_replay

    dialled = "/ocpp/site1/CP+1%2F/?name=a%20b%26c&u=%C3%A9&x=%7e"
    db = tmp_path / "c.db"
    async with run_csms() as csms, ProxyServer(csms.url, db) as proxy:
        async with connect(f"ws://127.0.0.1:{proxy.port}{dialled}", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            await ws.send(BOOT)
            await asyncio.wait_for(ws.recv(), 5)
        await settle(proxy)
        [session] = Store.open(db).sessions()
        with Store.open(db) as store:
            await run_replay(store, csms.url, answer_timeout=2.0, grace=0.2, quiet_gc=False)
    assert [h.path for h in csms.handshakes] == [dialled, dialled]
    assert session.path == "/ocpp/site1/CP+1%2F/"
    assert session.query == "name=a%20b%26c&u=%C3%A9&x=%7e"
    assert session.path_suffix == "/site1/CP+1%2F/"
    assert session.charge_point_id == "CP+1/"
    assert session.upstream_url == f"{csms.url}/site1/CP+1%2F/?name=a%20b%26c&u=%C3%A9&x=%7e"


async def test_a_path_prefix_and_an_id_rule_for_a_steve_layout(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with run_csms() as csms:
        upstream = csms.url.replace("/ocpp", "/steve/websocket/CentralSystemService")
        async with ProxyServer(upstream, db, path_prefix="/ocpp", id_from="first") as proxy:
            assert proxy.url.endswith("/ocpp")
            assert any("--id-from first" in line for line in proxy.describe())
            async with connect(f"{proxy.url}/CP-7/extra", subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
                await ws.send(BOOT)
                await asyncio.wait_for(ws.recv(), 5)
            _, writer, head = await dial(proxy.port, upgrade("/elsewhere/CP-8", "dGhlIHNhbXBsZSBub25jZQ=="))
            writer.close()
            await settle(proxy)
    assert head.startswith(b"HTTP/1.1 404")
    assert [h.path for h in csms.handshakes] == ["/steve/websocket/CentralSystemService/CP-7/extra"]
    ok, outside = Store.open(db).sessions()
    assert (ok.charge_point_id, ok.path_suffix) == ("CP-7", "/CP-7/extra")
    assert outside.closed_by == "proxy" and "--path-prefix" in (outside.error or "")


# ----------------------------------------------------------------------------- 23.8


@pytest.mark.parametrize("forwarded", [False, True])
async def test_forwarded_headers_only_when_asked(tmp_path: Path, forwarded: bool) -> None:
    async with run_csms() as csms, ProxyServer(csms.url, tmp_path / "c.db", forwarded=forwarded) as proxy:
        extra = "X-Forwarded-For: 10.1.2.3\r\n"  # an earlier hop (a load balancer) said so
        _, writer, head = await dial(proxy.port, upgrade("/ocpp/FWD", "dGhlIHNhbXBsZSBub25jZQ==", extra))
        writer.close()
        await settle(proxy)
    assert head.startswith(b"HTTP/1.1 101")
    headers = csms.handshakes[0].headers
    if forwarded:
        assert headers["Forwarded"] == 'for=127.0.0.1;proto=http;host="charger.test"' or (
            headers["Forwarded"] == "for=127.0.0.1;proto=http;host=charger.test"
        )
        assert headers["X-Forwarded-For"] == "10.1.2.3, 127.0.0.1"
        assert headers["X-Forwarded-Proto"] == "http"
    else:
        assert "Forwarded" not in headers and "X-Forwarded-Proto" not in headers
        assert headers["X-Forwarded-For"] == "10.1.2.3"  # the charger's request, passed as sent


# ----------------------------------------------------------------------------- 14.1


async def test_a_slow_handshake_flood_while_a_real_charger_keeps_working(tmp_path: Path) -> None:
    """300 sockets that send half a request line and stop, against a cap of 50 unfinished
    handshakes and a 3 s deadline: each is dropped (the oldest first) or timed out, a charger
    connected before keeps talking, and a charger that connects during the flood gets in."""
    db = tmp_path / "c.db"
    async with (
        run_csms() as csms,
        ProxyServer(csms.url, db, handshake_timeout=3.0, max_handshakes=50) as proxy,
        charger(proxy.url, "REAL-1") as before,
    ):
        await before.call(before_boot())  # type: ignore[attr-defined]
        flood: list[asyncio.StreamWriter] = []
        readers: list[asyncio.StreamReader] = []
        for _ in range(300):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"GET /ocpp/SLOW HT")
            flood.append(writer)
            readers.append(reader)
        async with charger(proxy.url, "REAL-2") as during:
            await session16(during, meter_values=1)  # type: ignore[arg-type]
        for _ in range(3):
            await before.call(heartbeat())  # type: ignore[attr-defined]
        # Every slow socket is closed by the proxy, none recorded.
        async with asyncio.timeout(10):
            for reader in readers:
                assert await reader.read() == b""
        for writer in flood:
            writer.close()
        assert proxy.stats.handshakes_dropped >= 250 and proxy.stats.handshakes_timed_out >= 1
        assert proxy.stats.handshakes_dropped + proxy.stats.handshakes_timed_out == 300
        assert not proxy._unfinished
        async with asyncio.timeout(5):  # nothing of the 301 finished connections is left behind
            while len(proxy._tasks) > 1:
                await asyncio.sleep(0.01)
        assert proxy._per_address == {"127.0.0.1": 1}  # REAL-1's
    await settle(proxy)
    sessions = Store.open(db).sessions()
    assert sorted(s.charge_point_id for s in sessions) == ["REAL-1", "REAL-2"]


def before_boot() -> Any:
    from ocpp.v16 import call

    return call.BootNotification(charge_point_vendor="Alfen BV", charge_point_model="NG9")


def heartbeat() -> Any:
    from ocpp.v16 import call

    return call.Heartbeat()


async def test_connections_per_address_are_limited_when_asked(tmp_path: Path) -> None:
    async with (
        run_csms() as csms,
        ProxyServer(csms.url, tmp_path / "c.db", max_connections_per_address=2) as proxy,
    ):
        a = await connect(f"{proxy.url}/A", subprotocols=["ocpp1.6"])  # type: ignore[list-item]
        b = await connect(f"{proxy.url}/B", subprotocols=["ocpp1.6"])  # type: ignore[list-item]
        _, writer, head = await dial(proxy.port, upgrade("/ocpp/C", "dGhlIHNhbXBsZSBub25jZQ=="))
        writer.close()
        assert head.startswith(b"HTTP/1.1 503")
        await a.close()
        async with asyncio.timeout(5):
            while proxy.stats.active > 1:
                await asyncio.sleep(0.01)
        async with connect(f"{proxy.url}/D", subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
            pass
        await b.close()
        await settle(proxy)
    assert proxy.stats.refused_per_address == 1
    assert [s.charge_point_id for s in Store.open(tmp_path / "c.db").sessions()] == ["A", "B", "D"]


async def test_the_open_file_limit_is_raised_and_the_capacity_told(tmp_path: Path) -> None:
    async with run_csms() as csms, ProxyServer(csms.url, tmp_path / "c.db") as proxy:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert soft == hard or hard == resource.RLIM_INFINITY
        assert proxy.capacity == (soft - 64) // 2 or hard == resource.RLIM_INFINITY
        assert any("charger connections" in line for line in proxy.describe())


# ----------------------------------------------------------------------------- 13.9


async def test_sessions_json_has_every_session_column(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    async with run_csms(CsmsBehaviour()) as csms, ProxyServer(csms.url, db) as proxy:
        async with connect(f"{proxy.url}/J?x=1", subprotocols=["ocpp1.6", "ocpp2.0.1"]):  # type: ignore[list-item]
            pass
        await settle(proxy)
    result = CliRunner().invoke(app, ["sessions", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    with Store.open(db) as store:
        columns = [c[1] for c in store.db.execute("PRAGMA table_info(sessions)").fetchall()]
    assert set(columns) <= set(row)
    assert row["offered_subprotocols"] == "ocpp1.6,ocpp2.0.1"
    assert (row["path_suffix"], row["query"]) == ("/J", "x=1")


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", None, "invalid handshake"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n\r\n", 101, "cannot follow"),
    ],
)  # fmt: skip
async def test_what_the_proxy_cannot_pass_on_is_502_and_the_csmss_own_status_is_recorded(
    tmp_path: Path, answer: bytes, status: int | None, error: str
) -> None:
    async with raw_csms(lambda _: answer) as (url, _), ProxyServer(url, tmp_path / "c.db") as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(upgrade("/ocpp/ODD", "dGhlIHNhbXBsZSBub25jZQ=="))
        got = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await settle(proxy)
    assert got.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and error.encode() in got
    [session] = Store.open(tmp_path / "c.db").sessions()
    assert session.upstream_status == status and error in (session.error or "")


async def test_a_csms_that_accepts_and_never_answers_is_an_outage_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="ocpp_replay.capture.proxy")

    async def mute(head: bytes) -> bytes:
        await asyncio.sleep(30)  # a hung CSMS: the TCP connection is accepted, nothing more
        return b""

    async with raw_csms(mute) as (url, _), ProxyServer(url, tmp_path / "c.db", connect_timeout=0.5) as proxy:
        for n in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(upgrade(f"/ocpp/HUNG{n}", "dGhlIHNhbXBsZSBub25jZQ=="))
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b""  # dropped, no HTTP answer
            writer.close()
        assert proxy.upstream_down_since is not None
        assert proxy.upstream_error == "did not answer the handshake within 0.5 s"
        await settle(proxy)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "unreachable" in warnings[0]
    sessions = Store.open(tmp_path / "c.db").sessions()
    assert [s.error for s in sessions] == ["upstream did not answer the handshake within 0.5 s"] * 2
