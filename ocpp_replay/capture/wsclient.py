"""A websocket client on a plain :class:`asyncio.Protocol`: dial, handshake, frames in and out.

The replay plays thousands of chargers at once and the shadow one leg per production
connection. A websocket library's client connection costs a reader task, a future per message
and several layers of calls per frame; here a connection is one protocol object:
``data_received`` cuts the bytes into messages and hands each to :meth:`WsClient.message` in the
loop turn that read it, and a frame goes out with one ``transport.write``, never awaited (frames
of a charger are small; the kernel's socket buffer holds them).

What RFC 6455 asks of a client is done here: the upgrade request with a fresh key, the 101
checked (status, ``Sec-WebSocket-Accept``), every frame masked, pings answered, a close frame
answered with the same status code, messages over the size limit refused (close 1009) and text
that is not UTF-8 refused (close 1007). No extension is offered (no compression).

Subclasses say what a message or the end of the connection means (:meth:`WsClient.message`,
:meth:`WsClient.ended`).
"""

from __future__ import annotations

import asyncio
import random
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from ocpp_replay.capture.handshake import (
    HandshakeError,
    UpgradeResponse,
    accept_key,
    head_end,
    new_key,
    parse_response_head,
    upgrade_request,
)
from ocpp_replay.capture.reach import ws_address
from ocpp_replay.capture.wsframes import BINARY, CLOSE, PING, PONG, TEXT, close_payload, unmask

#: The longest HTTP head of a handshake answer read.
MAX_HEAD = 64 * 1024
#: Close codes: going away, message too big, invalid payload data (RFC 6455 7.4.1).
GOING_AWAY, TOO_BIG, INVALID_DATA = 1001, 1009, 1007
#: ``ended``'s code when the connection ended without a close frame.
DROPPED = 1006
#: Bytes written that the kernel has not taken yet past which the server is deemed not to read.
MAX_UNSENT = 8 * 1024 * 1024


class BadUpgrade(HandshakeError):
    """A 101 that a client must refuse (RFC 6455 4.1): the connection is closed."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a ws:// or wss:// URL dials: address, TLS context, Host header and path."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    host_header: str  # as the URL spells it (IPv6 in brackets, the port when it has one)
    path: str

    @classmethod
    def of(cls, url: str, what: str = "target", tls: ssl.SSLContext | None = None) -> Endpoint:
        """Raises ConfigError for anything but a ws:// or wss:// URL. ``tls`` for wss://
        (default: the system's trusted certificates, the host name checked)."""
        host, port = ws_address(url, what)
        parts = urlsplit(url)
        context = (tls or ssl.create_default_context()) if parts.scheme == "wss" else None
        return cls(host, port, context, parts.netloc.rpartition("@")[2], parts.path)


class WsClient(asyncio.Protocol):
    """One websocket connection from the client's side. ``open`` once the 101 came, until the
    connection ends; ``ended`` is called once, when it ends for whatever reason. The same object
    may dial again once a connection has ended."""

    #: Text that is not UTF-8: refused (close 1007), or handed over with U+FFFD in its place.
    strict_text = True

    __slots__ = (
        "_gone",
        "_head",
        "_inbox",
        "_limit",
        "_max_unsent",
        "_op",
        "_parts",
        "close_sent",
        "done",
        "open",
        "protocol",
        "refusal",
        "transport",
    )  # fmt: skip

    def __init__(self, max_message: int, max_unsent: int = MAX_UNSENT) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.close_sent = False
        self.done = False  # ended() has been called
        self.protocol: str | None = None  # the subprotocol the server's 101 names
        self._limit = max_message
        self._max_unsent = max_unsent
        self._inbox = bytearray()
        self._head: asyncio.Future[tuple[bytes, bytes]] | None = None
        self._parts: list[bytes] = []
        self._op = 0
        self._gone: asyncio.Future[None] | None = None
        #: Why this client ended the connection itself (a message it refused), if it did.
        self.refusal: str | None = None

    # -- what a subclass says ---------------------------------------------------------------

    def message(self, opcode: int, payload: bytes | str) -> None:
        """A complete text (``str``) or binary (``bytes``) message from the server."""

    def messages_done(self) -> None:
        """The messages of one read have all been handed to :meth:`message`."""

    def ended(self, code: int | None, reason: str) -> None:
        """The connection is over: the server's close ``code`` (None: a close frame without
        one) and reason, or :data:`DROPPED`."""

    # -- connecting -----------------------------------------------------------------------------

    async def connect(
        self, endpoint: Endpoint, target: str, headers: list[tuple[str, str]], within: float
    ) -> UpgradeResponse:
        """Connect and send the upgrade request for ``target`` (path and query, as sent).

        Returns the server's answer; ``open`` when it is a valid 101 (the connection is closed
        otherwise). Raises TimeoutError (nothing or no complete head ``within`` seconds),
        OSError (not reachable, or the server closed before its answer), BadUpgrade (a 101 with
        a wrong ``Sec-WebSocket-Accept`` or an extension not offered) and HandshakeError (an
        answer that is not HTTP). Frames that came with the 101 are handed over in the next
        loop turn: the caller sees the connection open before its first message."""
        loop = asyncio.get_running_loop()
        self._inbox = bytearray()
        self._head = loop.create_future()
        self.open = self.close_sent = self.done = False
        self.protocol = self.refusal = self._gone = None
        self._parts = []
        key = new_key()
        try:
            async with asyncio.timeout(within):
                await loop.create_connection(
                    lambda: self,
                    endpoint.host,
                    endpoint.port,
                    ssl=endpoint.tls,
                    server_hostname=endpoint.host if endpoint.tls else None,
                )
                assert self.transport is not None
                self.transport.write(upgrade_request(target, endpoint.host_header, key, headers))
                head, rest = await self._head
            response = parse_response_head(head)
            if response.status == 101:
                if response.headers.get("Sec-WebSocket-Accept", "").strip() != accept_key(key):
                    raise BadUpgrade("101 with a wrong Sec-WebSocket-Accept")
                try:
                    response.check_extensions(None)
                except HandshakeError as exc:
                    raise BadUpgrade(f"101 with {exc}") from None
        except BaseException:
            self.abort()
            raise
        finally:
            self._head = None
        if response.status != 101:
            self.abort()
            return response
        self.open = True
        self.protocol = response.protocol
        self._inbox = bytearray(rest)
        if rest:
            loop.call_soon(self._frames, b"")
        return response

    # -- sending ------------------------------------------------------------------------------

    def send(self, opcode: int, payload: bytes) -> bool:
        """Write one final, masked frame. False when the connection can take no more frames.

        Writing never waits: when the server has left more than ``max_unsent`` bytes unread,
        the connection is dropped (``ended`` with :data:`DROPPED` and ``refusal`` saying why), so
        that memory stays bounded whatever the server does."""
        transport = self.transport
        if not self.open or self.close_sent or transport is None or transport.is_closing():
            return False
        unsent = transport.get_write_buffer_size()
        if unsent > self._max_unsent:
            self.refusal = f"the server read nothing of the last {unsent} bytes written"
            transport.abort()
            self._end(DROPPED, self.refusal)
            return False
        transport.write(frame(opcode, payload))
        return True

    def send_close(self, code: int | None, reason: str = "") -> bool:
        """Start the closing handshake (``code`` None: a close frame without a status code).
        The server's close frame, or the end of the connection, calls :meth:`ended`."""
        # a close frame's reason is at most 123 bytes: cut at a character, never inside one
        text = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
        payload = b"" if code is None else code.to_bytes(2, "big") + text
        sent = self.send(CLOSE, payload)
        self.close_sent = self.close_sent or sent
        return sent

    async def close(self, code: int | None, reason: str = "", wait: float = 5.0) -> None:
        """Close and wait up to ``wait`` seconds for the server's close frame, then end the
        TCP connection."""
        if not self.done and self.send_close(code, reason):
            await self.wait_ended(wait)
        self.abort()

    async def wait_ended(self, within: float) -> bool:
        """Whether the connection ended ``within`` seconds."""
        if self.done:
            return True
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(self._gone)
        except TimeoutError:
            return False
        return True

    def shutdown(self) -> None:
        """End the TCP connection without a close frame (both directions: FIN, not RST)."""
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        try:
            if sock is None:
                raise OSError
            sock.shutdown(2)  # socket.SHUT_RDWR
        except OSError:
            self.abort()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    # -- asyncio's callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.open:
            self._frames(data)
            return
        head = self._head
        if head is None or head.done():
            return
        self._inbox += data
        found = head_end(self._inbox)
        if found is not None:
            end, after = found
            head.set_result((bytes(self._inbox[:end]), bytes(self._inbox[after:])))
        elif len(self._inbox) > MAX_HEAD:
            head.set_exception(HandshakeError(f"answer head longer than {MAX_HEAD} bytes"))

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(ConnectionResetError("the server closed the connection before its answer"))
        self.transport = None
        if self.open:
            self._end(DROPPED, "")

    # -- receiving ----------------------------------------------------------------------------

    def _end(self, code: int | None, reason: str) -> None:
        self.open = False
        if self.done:
            return
        self.done = True
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        self.ended(code, reason)

    def _refuse(self, code: int, reason: str) -> None:
        """A message this client does not take: close with ``code``; the connection ends."""
        self.refusal = reason
        self.send_close(code, reason)
        transport = self.transport
        if transport is not None:
            transport.close()
        self._end(code, reason)

    def _frames(self, data: bytes) -> None:
        buf = self._inbox
        buf += data
        handed = False
        while self.open and len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            mask = b""
            if b1 & 0x80:  # a server must not mask; taken as it comes
                if len(buf) < pos + 4:
                    break
                mask, pos = bytes(buf[pos : pos + 4]), pos + 4
            if n > self._limit or (not b0 & 0x0F and sum(map(len, self._parts)) + n > self._limit):
                self._refuse(TOO_BIG, "message too big")
                return
            if len(buf) < pos + n:
                break
            payload = unmask(bytes(buf[pos : pos + n]), mask)
            del buf[: pos + n]
            op = b0 & 0x0F
            if op >= 8:
                self._control(op, payload)
                continue
            if op:
                self._op, self._parts = op, [payload]
            else:
                self._parts.append(payload)
            if not b0 & 0x80:
                continue
            whole = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts = []
            if self._op == TEXT:
                try:
                    text = whole.decode("utf-8") if self.strict_text else whole.decode("utf-8", "replace")
                except UnicodeDecodeError:
                    self._refuse(INVALID_DATA, "text is not UTF-8")
                    return
                self.message(TEXT, text)
            else:
                self.message(BINARY, whole)
            handed = True
        if handed:
            self.messages_done()

    def _control(self, op: int, payload: bytes) -> None:
        if op == PING:
            self.send(PONG, payload)
        elif op == CLOSE:
            code, reason = close_payload(payload)
            if not self.close_sent:  # answer with the same status code (RFC 6455 5.5.1)
                self.send(CLOSE, payload[:2])
            transport = self.transport
            if transport is not None:
                transport.close()
            self._end(code, reason)


def frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame: final, masked."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = random.getrandbits(32).to_bytes(4, "big")
    return head + mask + unmask(payload, mask)
