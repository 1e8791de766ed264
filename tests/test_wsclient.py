"""The plain-protocol websocket client (capture/wsclient.py) against servers on loopback: an
aiohttp server for the ordinary exchange, and a raw TCP server that writes chosen bytes for what
a library server would not send (frames in the 101's packet, a wrong accept key, oversized or
broken messages)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import WSMsgType, web

from ocpp_replay.capture.handshake import head_end
from ocpp_replay.capture.wsclient import DROPPED, BadUpgrade, Endpoint, WsClient
from ocpp_replay.capture.wsframes import BINARY, PONG, TEXT, unmask
from tests.web_peers import serving

pytestmark = pytest.mark.timeout(30)

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Recorder(WsClient):
    def __init__(self, max_message: int = 1 << 20, max_unsent: int = 1 << 23) -> None:
        super().__init__(max_message, max_unsent)
        self.got: list[tuple[int, bytes | str]] = []
        self.ends: list[tuple[int | None, str]] = []
        self.open_at_first_message: list[bool] = []

    def message(self, opcode: int, payload: bytes | str) -> None:
        self.open_at_first_message.append(self.open)
        self.got.append((opcode, payload))

    def ended(self, code: int | None, reason: str) -> None:
        self.ends.append((code, reason))


async def _until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.01)


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[str, list[tuple[str, object]]]]:
    """aiohttp: echoes text and binary, reports what it saw, closes with 4000 on 'bye'."""
    seen: list[tuple[str, object]] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("ocpp1.6",))
        await ws.prepare(request)
        seen.append(("headers", dict(request.headers)))
        seen.append(("path", request.path_qs))
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data == "bye":
                    await ws.close(code=4000, message=b"done")
                    break
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        seen.append(("close_code", ws.close_code))
        return ws

    async with serving(handler) as port:
        yield f"ws://127.0.0.1:{port}/ocpp", seen


async def test_exchange_close_and_the_servers_view(echo_server: tuple[str, list[tuple[str, object]]]) -> None:
    url, seen = echo_server
    client = Recorder()
    response = await client.connect(
        Endpoint.of(url), "/ocpp/CP%201?a=b", [("Sec-WebSocket-Protocol", "ocpp1.6")], 5.0
    )
    assert response.status == 101 and client.open and client.protocol == "ocpp1.6"
    big = "x" * 70_000  # a 64-bit length
    assert client.send(TEXT, b'[2,"1","Heartbeat",{}]') and client.send(BINARY, b"\x00\xff")
    assert client.send(TEXT, big.encode())
    await _until(lambda: len(client.got) == 3)
    assert client.got == [(TEXT, '[2,"1","Heartbeat",{}]'), (BINARY, b"\x00\xff"), (TEXT, big)]
    client.send(TEXT, b"bye")
    await _until(lambda: client.done)
    assert client.ends == [(4000, "done")]
    assert not client.send(TEXT, b"late")  # nothing goes out once the connection is over
    headers = dict(seen)["headers"]
    assert isinstance(headers, dict) and headers["Sec-WebSocket-Protocol"] == "ocpp1.6"
    assert dict(seen)["path"] == "/ocpp/CP%201?a=b"  # the target as given, not re-quoted


async def test_a_long_close_reason_is_cut_at_a_character() -> None:
    sent: list[bytes] = []
    client = Recorder()
    async with raw_server(_switching, b"", sent) as url:
        await client.connect(Endpoint.of(url), "/CP", [], 5.0)
        assert client.send_close(4000, "é" * 100)  # 200 bytes of two-byte characters
        client.abort()
    closes = [p for op, p in _client_messages(sent) if op == 8]
    assert closes and closes[0][2:].decode("utf-8") == "é" * 61  # 122 bytes: the 62nd would not fit


async def test_client_close_waits_for_the_servers_answer(
    echo_server: tuple[str, list[tuple[str, object]]],
) -> None:
    url, seen = echo_server
    client = Recorder()
    await client.connect(Endpoint.of(url), "/ocpp/CP", [], 5.0)
    await client.close(4100, "replay over", wait=5.0)
    assert client.done and client.ends == [(1000, "")]  # aiohttp answers with 1000
    await _until(lambda: ("close_code", 4100) in seen)


@contextlib.asynccontextmanager
async def raw_server(
    answer: Callable[[str], bytes], then: bytes = b"", record: list[bytes] | None = None, reads: bool = True
) -> AsyncIterator[str]:
    """A TCP server that reads the upgrade request, writes ``answer(accept key)`` and ``then``
    in one write, then records what the client sends until the client ends the connection
    (waited for, at most 5 s, before the server closes). ``reads=False``: after its answer it
    reads nothing more (with a 4 KiB receive buffer) until the server closes."""
    handlers: list[asyncio.Task[None]] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            buf = b""
            while head_end(buf) is None:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                buf += chunk
            key = next(
                line.split(b":", 1)[1].strip()
                for line in buf.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
            writer.write(answer(accept) + then)
            if not reads:
                await done.wait()
                return
            while chunk := await reader.read(65536):
                if record is not None:
                    record.append(chunk)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    if not reads:  # accepted sockets inherit it
        server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/"
    finally:
        done.set()
        if handlers:
            await asyncio.wait(handlers, timeout=5.0)
        server.close()
        await server.wait_closed()


def _switching(accept: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


def _server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | opcode,))
    if n < 126:
        return head + bytes((n,)) + payload
    return head + bytes((126,)) + n.to_bytes(2, "big") + payload


def _client_messages(chunks: list[bytes]) -> list[tuple[int, bytes]]:
    """The client's frames (each final and masked, as RFC 6455 wants): (opcode, payload)."""
    data, out, pos = b"".join(chunks), [], 0
    while pos + 6 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b0 & 0x80 and b1 & 0x80, "a client frame that is not final or not masked"
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            n, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        mask, pos = data[pos : pos + 4], pos + 4
        out.append((b0 & 0x0F, unmask(data[pos : pos + n], mask)))
        pos += n
    return out


async def test_frames_in_the_101s_packet_come_after_the_connection_is_open() -> None:
    sent: list[bytes] = []
    first = _server_frame(TEXT, b'[2,"7","Reset",{"type":"Soft"}]')
    fragmented = _server_frame(TEXT, b"ab", fin=False) + _server_frame(9, b"hi") + _server_frame(0, b"cd")
    client = Recorder()
    async with raw_server(_switching, first + fragmented, sent) as url:
        await client.connect(Endpoint.of(url), "/CP", [], 5.0)
        assert client.open and client.got == []  # handed over in the next loop turn
        await _until(lambda: len(client.got) == 2)
        assert client.got == [(TEXT, '[2,"7","Reset",{"type":"Soft"}]'), (TEXT, "abcd")]
        assert client.open_at_first_message == [True, True]
        await _until(lambda: (PONG, b"hi") in _client_messages(sent), 2.0)  # the ping answered
        client.abort()


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (_server_frame(TEXT, b"y" * 2000), 1009, "message too big"),
        (_server_frame(TEXT, b"\xff\xfe"), 1007, "text is not UTF-8"),
    ],
)
async def test_a_message_the_client_refuses_ends_the_connection(
    payload: bytes, code: int, reason: str
) -> None:
    sent: list[bytes] = []
    client = Recorder(max_message=1000)
    async with raw_server(_switching, payload, sent) as url:
        await client.connect(Endpoint.of(url), "/CP", [], 5.0)
        await _until(lambda: client.done)
        assert client.ends == [(code, reason)] and client.refusal == reason and client.got == []
    closes = [p for op, p in _client_messages(sent) if op == 8]  # the server read to the end
    assert [int.from_bytes(p[:2], "big") for p in closes] == [code]


async def test_a_101_with_a_wrong_accept_key_is_refused() -> None:
    client = Recorder()
    async with raw_server(lambda accept: _switching("d3Jvbmc=")) as url:
        with pytest.raises(BadUpgrade, match="wrong Sec-WebSocket-Accept"):
            await client.connect(Endpoint.of(url), "/CP", [], 5.0)
        assert not client.open and not client.done


async def test_a_refusal_is_returned_and_a_dropped_connection_reported() -> None:
    client = Recorder()
    async with raw_server(lambda accept: b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n") as url:
        response = await client.connect(Endpoint.of(url), "/CP", [], 5.0)
        assert (response.status, response.reason, client.open) == (401, "Unauthorized", False)
    # the same object dials again (the shadow's legs do)
    async with raw_server(_switching) as url:
        await client.connect(Endpoint.of(url), "/CP", [], 5.0)
        assert client.open
        client.shutdown()  # FIN both ways, no close frame: the end is a drop
        await _until(lambda: client.done)
        assert client.ends == [(DROPPED, "")]


async def test_a_server_that_reads_nothing_is_dropped_with_the_unsent_bytes_bounded() -> None:
    """Writing never waits, so a server that stops reading must not make the client buffer
    without end: past max_unsent bytes the connection is dropped and the client says why."""
    client = Recorder(max_unsent=64 * 1024)
    sent = 0
    async with raw_server(_switching, reads=False) as url:
        await client.connect(Endpoint.of(url), "/CP", [], 5.0)
        assert client.transport is not None
        client.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for _ in range(2000):  # at most 2,000 x 16 KiB
            if not client.send(BINARY, b"x" * 16384):
                break
            sent += 1
            await asyncio.sleep(0)
        assert client.done and client.refusal is not None and "read nothing" in client.refusal
        assert client.ends == [(DROPPED, client.refusal)]
        assert not client.send(BINARY, b"late")
    assert 4 < sent < 2000  # the first frames went into the buffers; then it stopped
