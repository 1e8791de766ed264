"""The capture proxy: a transparent OCPP-J websocket hop that records every frame.

A charger connects to ``ws://HOST:PORT/<any path>/<chargePointId>``. The proxy dials
``<upstream>/<chargePointId>`` (plus the charger's query string) with the charger's offered
subprotocols and Authorization header, and only when the CSMS has accepted does it accept
the charger, with exactly the subprotocol the CSMS chose. A refusal (401, 404, ...) reaches
the charger as the same HTTP status.

aiohttp serves the listener (HTTP, TLS, ``/healthz``) and answers the charger's handshake;
the CSMS's handshake is spoken here (:mod:`ocpp_replay.capture.handshake`). Once both are done, each
socket is relayed below any websocket library: the bytes that arrive are written to the other
socket at once, exactly as they came (masks, fragmentation, pings, pongs, close frames and
permessage-deflate, whose parameters the two ends negotiated with each other), and a
:class:`~ocpp_replay.capture.wsframes.Scanner` finds the messages in the same bytes. Each message is
handed to the :class:`~ocpp_replay.store.CaptureWriter` as it was on the wire (a deque append;
unmasking, parsing and SQLite work happen in the writer's thread). A fault in recording is
logged and counted, never raised into the traffic. The proxy speaks for itself only to close:
when a side vanishes, when a message is over the size limit, and when it shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from aiohttp import web

from ocpp_replay.capture.handshake import (
    HandshakeError,
    UnsupportedVersion,
    UpgradeResponse,
    accept_key,
    basic_auth_user,
    charge_point_id_of,
    check_client_handshake,
    deflate_offers,
    header,
    new_key,
    offered_protocols,
    parse_response_head,
    upgrade_request,
)
from ocpp_replay.capture.reach import probe, ws_address
from ocpp_replay.capture.wsframes import (
    CLOSE,
    TEXT,
    Inflater,
    Message,
    Scanner,
    close_frame,
    close_payload,
    unmask,
)
from ocpp_replay.core.frames import Direction
from ocpp_replay.core.text import escape_controls
from ocpp_replay.errors import ConfigError, UpstreamError
from ocpp_replay.store import CaptureWriter

log = logging.getLogger(__name__)

#: OCPP messages are small, but firmware/diagnostics DataTransfer and GetConfiguration
#: answers can be large; aiohttp's 4 MiB default is kept as a floor, configurable upward.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Going Away: used when the proxy itself shuts down, or the other side vanished.
CLOSE_GOING_AWAY = 1001
#: Headers of the charger's handshake that go upstream unchanged.
FORWARDED_HEADERS = ("Authorization", "User-Agent", "Origin")
#: Headers of an upstream's refusal that reach the charger with its status.
PASSED_ON_REFUSAL = ("WWW-Authenticate", "Retry-After")


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS on both legs: serving wss to chargers, and dialling a wss upstream."""

    cert: Path | None = None
    key: Path | None = None
    upstream_ca: Path | None = None
    upstream_client_cert: Path | None = None
    upstream_client_key: Path | None = None
    insecure_upstream: bool = False

    def server_context(self) -> ssl.SSLContext | None:
        if self.cert is None:
            if self.key is not None:
                raise ConfigError("--tls-key needs --tls-cert")
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load TLS certificate {self.cert}: {exc}") from exc
        return ctx

    def client_context(self) -> ssl.SSLContext:
        if self.insecure_upstream:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            try:
                ctx = ssl.create_default_context(cafile=self.upstream_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load CA {self.upstream_ca}: {exc}") from exc
        if self.upstream_client_cert is not None:
            try:
                ctx.load_cert_chain(self.upstream_client_cert, self.upstream_client_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load client certificate {self.upstream_client_cert}: {exc}"
                ) from exc
        elif self.upstream_client_key is not None:
            raise ConfigError("--upstream-client-key needs --upstream-client-cert")
        return ctx


@dataclass(slots=True)
class ProxyStats:
    connections: int = 0
    active: int = 0
    refused: int = 0
    frames: int = 0


_SIDES = {"cp": "charge point", "csms": "CSMS"}


class _Leg(asyncio.Protocol):
    """One side of a relayed connection: the charger's socket or the CSMS's.

    What arrives is written to the other leg's socket at once, as it came; the leg's
    :class:`~ocpp_replay.capture.wsframes.Scanner` finds the messages in the same bytes, and they are
    handed to the capture writer as the bytes they were (still masked: the writer unmasks).
    """

    def __init__(self, relay: _Relay, side: str) -> None:
        self.relay = relay
        self.side = side  # "cp" or "csms": who sends what this leg receives
        self.direction = Direction.TO_CSMS if side == "cp" else Direction.TO_CP
        self.scanner = Scanner(relay.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.peer: _Leg | None = None
        self.forwarding = False  # False until both handshakes are done, and once closing
        self.sent_close = False  # this side sent a close frame
        self.lost = False
        self.original: asyncio.BaseProtocol | None = None  # aiohttp's, told when the socket ends
        # The CSMS leg, until its handshake answer has been read:
        self.head: asyncio.Future[tuple[bytes, bytes]] | None = None
        self._head_buf = bytearray()

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            self._handshake_data(data)
            return
        t_wall = time.time()
        t_mono = time.monotonic()
        scanner = self.scanner
        try:
            n = scanner.feed(data)
        except Exception:  # a fault in recording must never break the traffic it records
            n = self._blind(data)
        if self.forwarding:
            peer = self.peer
            assert peer is not None and peer.transport is not None
            peer.transport.write(data if n == len(data) else data[:n])
        if scanner.messages:
            try:
                self.relay.messages(self, scanner.messages, t_wall, t_mono)
            except Exception:  # recording must never break the traffic it records
                log.exception("recording failed for session %d", self.relay.id)
            scanner.messages.clear()
        if scanner.error is not None and self.forwarding:
            self.relay.refuse(self, scanner.error)

    def _blind(self, data: bytes) -> int:
        """The scanner failed (a bug): forward the rest of this side's traffic unrecorded."""
        log.exception(
            "session %d: cannot follow the %s's frames; no longer recorded", self.relay.id, self.side
        )
        if self.relay.writer is not None:
            self.relay.writer.event(
                self.relay.id, "recording_stopped", f"frames from {self.side} no longer followed"
            )
        self.scanner = _BlindScanner()
        return len(data)

    def eof_received(self) -> bool | None:
        return None  # close our end too: a half-closed websocket is a closed one

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.head is not None and not self.head.done():
            self.head.set_exception(ConnectionError(f"connection closed during the handshake: {exc}"))
        self.relay.leg_lost(self, exc)
        if self.original is not None:  # aiohttp's request handler cleans up its connection
            self.original.connection_lost(exc)
            self.original = None

    def pause_writing(self) -> None:  # the socket this leg writes to is full: stop reading
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    # -- the CSMS's handshake answer ----------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        assert self.head is not None and self.transport is not None
        self._head_buf += data
        end = self._head_buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head_buf) > _MAX_HEAD:
                self.head.set_exception(HandshakeError("upstream's handshake answer is too long"))
                self.transport.abort()
            return
        # Hold what follows the answer (frames the CSMS sent at once) until the charger's
        # side is ready: relaying starts with Relay.start.
        self.transport.pause_reading()
        head, rest = bytes(self._head_buf[:end]), bytes(self._head_buf[end + 4 :])
        self._head_buf = bytearray()
        future, self.head = self.head, None
        if not future.done():
            future.set_result((head, rest))

    # -- sending frames of the proxy's own --------------------------------------------

    def send_close(self, code: int, reason: str) -> None:
        """Close this side with a close frame, or drop it if its stream is mid-frame."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        peer = self.peer
        if peer is not None and not peer.scanner.at_boundary:
            transport.abort()  # a frame of the other side is half sent: nothing can follow it
            return
        transport.write(close_frame(code, reason, masked=self.side == "csms"))


class _BlindScanner(Scanner):
    """Follows nothing: every byte is forwarded, no message reported, never at a boundary."""

    def feed(self, data: bytes) -> int:
        return len(data)

    @property
    def at_boundary(self) -> bool:
        return False


#: An upstream's handshake answer larger than this is refused (aiohttp's limit is 8 KiB per line).
_MAX_HEAD = 64 * 1024
#: How long the proxy waits for a close handshake it started before it drops the connection.
_CLOSE_TIMEOUT = 10.0


def _resume(transport: asyncio.Transport) -> None:
    with contextlib.suppress(Exception):  # closing already: nothing to resume
        transport.resume_reading()


class _Relay:
    """One charger connection: two legs, the session's record, its ending."""

    def __init__(self, proxy: ProxyServer, cp_id: str, max_message_size: int) -> None:
        self.proxy = proxy
        self.writer = proxy.writer
        self.cp_id = cp_id
        self.max_message_size = max_message_size
        self.id = 0
        self.started_mono = 0.0
        self.seq = 0
        self.closed_by: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.cp = _Leg(self, "cp")
        self.csms = _Leg(self, "csms")
        self.cp.peer, self.csms.peer = self.csms, self.cp
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._ending = False

    def start(self, session_id: int, started_mono: float, csms_rest: bytes, cp_rest: bytes) -> None:
        """Both handshakes are done: relay from now on, beginning with what each side sent early."""
        self.id = session_id
        self.started_mono = started_mono
        self.cp.forwarding = self.csms.forwarding = True
        for leg, rest in ((self.csms, csms_rest), (self.cp, cp_rest)):
            if rest:
                leg.data_received(rest)
        if self.csms.transport is not None:
            self.csms.transport.resume_reading()

    # -- messages ---------------------------------------------------------------------

    def messages(self, leg: _Leg, messages: list[Message], t_wall: float, t_mono: float) -> None:
        record = self.writer.frame if self.writer is not None else None
        stats = self.proxy.stats
        elapsed = t_mono - self.started_mono
        for opcode, payload, mask in messages:
            if opcode == CLOSE:
                self._close_frame(leg, unmask(payload, mask))
                continue
            if not leg.forwarding:
                continue  # not forwarded (the proxy is closing this connection): not recorded
            self.seq += 1
            stats.frames += 1
            if record is not None:
                record(self.id, self.seq, t_wall, elapsed, leg.direction, payload, opcode == TEXT, mask)

    def _close_frame(self, leg: _Leg, payload: bytes) -> None:
        leg.sent_close = True
        if self.closed_by is None:
            self.closed_by = leg.side
            self.close_code, reason = close_payload(payload)
            self.close_reason = reason or None
        if not leg.forwarding and leg.transport is not None:
            # The answer to a close frame of the proxy's own: this side is done.
            leg.transport.close()

    # -- endings ----------------------------------------------------------------------

    def leg_lost(self, leg: _Leg, exc: Exception | None) -> None:
        peer = leg.peer
        assert peer is not None
        if peer.transport is not None and not peer.lost:
            _resume(peer.transport)  # paused for this side's sake, it must read its close now
        if self.closed_by is None:  # no close frame came first: this side vanished
            self.closed_by = leg.side
            self.close_code = 1006
            self.close_reason = "connection lost" + (f": {exc}" if exc else "")
            if leg.side == "csms":
                # What the charger would see without the proxy: its connection drops.
                if peer.transport is not None:
                    peer.transport.abort()
            else:
                # The CSMS learns that the charger is gone, as from a websocket client.
                peer.forwarding = leg.forwarding = False
                peer.send_close(CLOSE_GOING_AWAY, "charge point connection lost")
                self._close_later()
        elif peer.transport is not None and not peer.transport.is_closing():
            peer.transport.close()  # a closing handshake ended: end the other socket as well
        if (leg.lost and peer.lost) or peer.transport is None:
            if self._timer is not None:
                self._timer.cancel()
            if not self.done.done():
                self.done.set_result(None)

    def end(self, codes: dict[str, tuple[int, str]]) -> None:
        """The proxy closes both sides itself, each with its (code, reason)."""
        if self._ending:
            return
        self._ending = True
        self.cp.forwarding = self.csms.forwarding = False
        for leg in (self.cp, self.csms):
            transport = leg.transport
            if transport is None or leg.lost:
                continue
            _resume(transport)  # its close frame must be read, even from a paused socket
            assert leg.peer is not None
            if not leg.peer.sent_close:  # no close frame has reached this side yet
                leg.send_close(*codes[leg.side])
            if leg.sent_close:  # it had sent one: the close it just got answers it
                transport.close()
        self._close_later()

    def refuse(self, leg: _Leg, error: str) -> None:
        """``leg``'s side sent a message over the size limit: 1009 to it, 1001 to the other."""
        who = _SIDES[leg.side]
        self.closed_by = "proxy"
        self.close_code = 1009
        self.close_reason = f"{who} sent a message the proxy refused: {error}"
        log.warning(
            "session %d (%s): %s; closed with 1009", self.id, escape_controls(self.cp_id), self.close_reason
        )
        other = "csms" if leg.side == "cp" else "cp"
        self.end(
            {leg.side: (1009, error), other: (CLOSE_GOING_AWAY, f"{who} sent a message the proxy refused")}
        )

    def shutdown(self) -> None:
        if self.closed_by is None:
            self.closed_by = "proxy"
            self.close_code = CLOSE_GOING_AWAY
            self.close_reason = "proxy shutting down"
        self.end(
            {
                "cp": (CLOSE_GOING_AWAY, "proxy shutting down"),
                "csms": (CLOSE_GOING_AWAY, "proxy shutting down"),
            }
        )

    def abort(self) -> None:
        for leg in (self.cp, self.csms):
            if leg.transport is not None and not leg.lost:
                leg.transport.abort()

    def _close_later(self) -> None:
        """A close handshake the proxy started gets _CLOSE_TIMEOUT to finish; then a drop."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_CLOSE_TIMEOUT, self.abort)


class ProxyServer:
    """The capture proxy. ``async with ProxyServer(...) as proxy: url = proxy.url``."""

    def __init__(
        self,
        upstream: str,
        db: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: TlsOptions | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        connect_timeout: float = 10.0,
        flush_interval: float = 0.05,
        check_upstream: bool = False,
    ) -> None:
        # (host, port) to dial; a ConfigError for anything but a ws:// or wss:// URL
        self._upstream_address = ws_address(upstream, "upstream")
        if not 0 <= port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, not {port}")
        if max_message_size < 0:
            raise ConfigError(f"max message size must be 0 (no limit) or more bytes, not {max_message_size}")
        # 0 would make the writer thread spin without pause, taking a core from the traffic.
        if not flush_interval > 0:
            raise ConfigError(f"flush interval must be more than 0 seconds, not {flush_interval:g}")
        if not connect_timeout > 0:
            raise ConfigError(f"connect timeout must be more than 0 seconds, not {connect_timeout:g}")
        self.upstream = upstream.rstrip("/")
        self.db_path = Path(db)
        self.host = host
        self.port = port
        self.tls = tls or TlsOptions()
        self.max_message_size = max_message_size
        self.connect_timeout = connect_timeout
        self.flush_interval = flush_interval
        self.check_upstream = check_upstream
        self.stats = ProxyStats()
        self.writer: CaptureWriter | None = None
        self._relays: dict[int, _Relay] = {}
        self._idle = asyncio.Event()  # set while no connection is being relayed
        self._idle.set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._client_ssl: ssl.SSLContext | None = None
        parts = urlsplit(self.upstream)
        self._upstream_path = parts.path
        self._upstream_host = parts.netloc.rpartition("@")[2]  # the Host header: as the URL says it
        self._stopping = False
        self.url = ""

    async def __aenter__(self) -> ProxyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> str:
        """Open the capture, bind the listener; return the URL chargers connect to."""
        server_ssl = self.tls.server_context()
        if self.upstream.startswith("wss:"):
            self._client_ssl = self.tls.client_context()
        if self.check_upstream:  # fail fast at start-up when the CSMS is not there
            await probe(self.upstream, self.connect_timeout, "upstream")
        # The capture is opened in a thread: SQLite never runs on the event loop.
        self.writer = await asyncio.to_thread(CaptureWriter, self.db_path, flush_interval=self.flush_interval)
        self.writer.start()
        app = web.Application(handler_args={"max_field_size": 65536})
        app.router.add_get("/healthz", self._healthz)
        # [\s\S], not ".": a percent-encoded newline in the id must not fall through to a 404.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=server_ssl, backlog=4096, reuse_address=True
        )
        try:
            await self._site.start()
        except OSError as exc:
            await self._close_resources()
            raise UpstreamError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        server = self._site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        scheme = "wss" if server_ssl else "ws"
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in shown:
            shown = f"[{shown}]"
        self.url = f"{scheme}://{shown}:{self.port}/ocpp"
        log.info("proxy listening on %s, upstream %s, capture %s", self.url, self.upstream, self.db_path)
        return self.url

    async def stop(self) -> None:
        """Stop accepting, close both sides of every connection, flush the capture."""
        if self._stopping:
            return
        self._stopping = True
        if self._site is not None:
            await self._site.stop()
        try:
            relays = list(self._relays.values())
            if relays:
                # Bounded, and never skipping the flush below: a peer that does not answer its
                # close frame must not cost the capture its last frames.
                for relay in relays:
                    relay.shutdown()
                try:
                    async with asyncio.timeout(_CLOSE_TIMEOUT + 2):
                        await asyncio.gather(
                            *(asyncio.shield(r.done) for r in relays), return_exceptions=True
                        )
                except TimeoutError:
                    for relay in relays:
                        relay.abort()
            # Let each connection's handler record the end of its session (one that got through
            # its handshakes meanwhile is shut down as it starts).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT + 2):
                    await self._idle.wait()
        finally:
            await self._close_resources()
        log.info(
            "proxy stopped: %d connections, %d frames, %d frames not recorded",
            self.stats.connections,
            self.stats.frames,
            self.writer.stats.frames_lost if self.writer else 0,
        )

    async def _close_resources(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._handle(request)
        return web.json_response(
            {
                "status": "ok",
                "active": self.stats.active,
                "connections": self.stats.connections,
                "frames": self.stats.frames,
                "frames_lost": self.writer.stats.frames_lost if self.writer else 0,
            }
        )

    # ------------------------------------------------------------------ a connection

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(
                status=426, text="OCPP-J needs a websocket upgrade\n", headers={"Upgrade": "websocket"}
            )
        assert self.writer is not None
        raw_path = request.rel_url.raw_path  # still percent-encoded, as the charger sent it
        cp_id, raw_segment = charge_point_id_of(raw_path)
        if not cp_id:
            return web.Response(status=404, text="no charge point id in the path\n")
        protocols = offered_protocols(header(request.headers, "Sec-WebSocket-Protocol"))
        query = request.query_string
        raw_query = request.rel_url.raw_query_string
        target = f"{self._upstream_path}/{raw_segment}" + (f"?{raw_query}" if raw_query else "")
        url = f"{self.upstream}/{raw_segment}" + (f"?{query}" if query else "")
        started_wall = time.time()
        started_mono = time.monotonic()
        peer = request.remote or ""
        fields: dict[str, Any] = {
            "charge_point_id": cp_id,
            "path": raw_path,
            "query": query or None,
            "offered_subprotocols": ",".join(protocols) or None,
            "remote_addr": peer,
            "auth_user": basic_auth_user(request.headers.get("Authorization")),
            "upstream_url": url,
        }
        try:
            charger_key = check_client_handshake(request.method, request.headers)
        except HandshakeError as exc:
            unsupported = isinstance(exc, UnsupportedVersion)
            return self._refuse(
                request,
                cp_id,
                fields,
                started_wall,
                f"charger handshake invalid: {exc}",
                answer=426 if unsupported else 400,
                headers={"Sec-WebSocket-Version": "13"} if unsupported else None,
                by="proxy",
            )

        relay = _Relay(self, cp_id, self.max_message_size)
        extensions = deflate_offers(header(request.headers, "Sec-WebSocket-Extensions"))
        try:
            response, csms_rest = await self._dial(relay, target, request, protocols, extensions)
        except _Refused as refused:
            return self._refuse(
                request,
                cp_id,
                fields,
                started_wall,
                refused.error,
                answer=refused.status,
                upstream_status=refused.status,
                headers=refused.headers,
            )

        if self._stopping:
            relay.abort()
            return self._refuse(
                request, cp_id, fields, started_wall, "proxy shutting down", answer=503, by="proxy"
            )
        transport = request.transport
        if transport is None or transport.is_closing():
            relay.abort()
            return self._refuse(request, cp_id, fields, started_wall, "charger left during the handshake")
        # From here on the charger's socket is the relay's, not aiohttp's: what the charger
        # sends goes to the relay's leg; aiohttp only writes the 101 answer below.
        leg = relay.cp
        leg.original = transport.get_protocol()
        cp_rest = bytes(getattr(leg.original, "_message_tail", b""))  # sent along with the upgrade
        transport.set_protocol(leg)
        leg.connection_made(transport)
        transport.resume_reading()  # aiohttp pauses a socket that sent much before its answer
        answer = web.StreamResponse(status=101, reason="Switching Protocols")
        answer.headers.update(
            {"Upgrade": "websocket", "Connection": "upgrade", "Sec-WebSocket-Accept": accept_key(charger_key)}
        )
        if response.protocol:
            answer.headers["Sec-WebSocket-Protocol"] = response.protocol
        if response.extensions:  # permessage-deflate: the frames pass compressed, and are
            answer.headers["Sec-WebSocket-Extensions"] = response.extensions  # inflated to record
            for each in (relay.cp, relay.csms):
                each.scanner.inflater = Inflater(self.max_message_size)
        try:
            await answer.prepare(request)
        except (ConnectionError, RuntimeError) as exc:
            relay.abort()
            return self._refuse(request, cp_id, fields, started_wall, f"charger handshake failed: {exc}")

        fields["subprotocol"] = response.protocol
        session_id = self.writer.open_session(started_wall, **fields)
        self._relays[session_id] = relay
        self._idle.clear()
        self.stats.connections += 1
        self.stats.active += 1
        log.info(
            "open   %s session=%d subprotocol=%s from %s",
            escape_controls(cp_id),
            session_id,
            escape_controls(response.protocol or "-"),
            peer,
        )
        try:
            relay.start(session_id, started_mono, csms_rest, cp_rest)
            if self._stopping:  # stop() began while this connection was being set up
                relay.shutdown()
            await asyncio.shield(relay.done)
        finally:
            if not relay.done.done():  # the handler was cancelled: aiohttp is shutting down
                relay.abort()
            self._relays.pop(session_id, None)
            if not self._relays:
                self._idle.set()
            self.stats.active -= 1
            self.writer.close_session(
                session_id,
                time.time(),
                close_code=relay.close_code,
                close_reason=relay.close_reason,
                closed_by=relay.closed_by,
                frames=relay.seq,
            )
            log.info(
                "close  %s session=%d code=%s by=%s frames=%d",
                escape_controls(cp_id),
                session_id,
                relay.close_code,
                relay.closed_by or "-",
                relay.seq,
            )
        return answer

    async def _dial(
        self,
        relay: _Relay,
        target: str,
        request: web.Request,
        protocols: tuple[str, ...],
        extensions: str | None,
    ) -> tuple[UpgradeResponse, bytes]:
        """Open the CSMS side and complete its handshake; raises _Refused."""
        leg = relay.csms
        loop = asyncio.get_running_loop()
        leg.head = loop.create_future()
        key = new_key()
        headers = [
            ("Sec-WebSocket-Protocol", v) for v in request.headers.getall("Sec-WebSocket-Protocol", ())
        ]
        if extensions:
            headers.append(("Sec-WebSocket-Extensions", extensions))
        headers += [(h, request.headers[h]) for h in FORWARDED_HEADERS if h in request.headers]
        host, port = self._upstream_address
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(
                    lambda: leg,
                    host,
                    port,
                    ssl=self._client_ssl or None,
                    server_hostname=host if self._client_ssl else None,
                )
                assert leg.transport is not None
                leg.transport.write(upgrade_request(target, self._upstream_host, key, headers))
                head, rest = await leg.head
            response = parse_response_head(head)
            if response.status != 101:
                raise _Refused(
                    response.status,
                    f"upstream refused the handshake: {response.status} {response.reason}",
                    {h: response.headers[h] for h in PASSED_ON_REFUSAL if h in response.headers},
                )
            response.check(key, protocols, extensions)
        except _Refused:
            relay.abort()
            raise
        except HandshakeError as exc:
            relay.abort()
            raise _Refused(502, f"upstream answered with an invalid handshake: {exc}", None) from exc
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            relay.abort()
            raise _Refused(502, f"upstream unreachable: {exc or type(exc).__name__}", None) from exc
        except Exception as exc:  # a bug here must cost one charger a 502, not a socket
            relay.abort()
            log.exception("dialling %s for %s failed", self.upstream, escape_controls(relay.cp_id))
            raise _Refused(502, f"upstream handshake failed: {type(exc).__name__}: {exc}", None) from exc
        except BaseException:  # cancelled (the proxy is stopping): leave no socket behind
            relay.abort()
            raise
        return response, rest

    def _refuse(
        self,
        request: web.Request,
        cp_id: str,
        fields: dict[str, Any],
        started_wall: float,
        error: str,
        *,
        answer: int = 502,
        upstream_status: int | None = None,
        headers: dict[str, str] | None = None,
        by: str = "upstream",
    ) -> web.StreamResponse:
        """Answer the charger with ``answer`` (and ``headers``), and record the attempt: the
        upstream's status if it answered, the error, and who refused (``by``)."""
        assert self.writer is not None
        self.stats.refused += 1
        fields.update(upstream_status=upstream_status, error=error)
        session_id = self.writer.open_session(started_wall, **fields)
        self.writer.close_session(session_id, time.time(), closed_by=by)
        log.info("refuse %s session=%d %s", escape_controls(cp_id), session_id, escape_controls(error))
        if request.transport is None:
            return web.Response(status=502)
        return web.Response(status=answer, headers=headers, text=error + "\n")


class _Refused(Exception):
    """The CSMS side could not be opened: what the charger is answered."""

    def __init__(self, status: int, error: str, headers: dict[str, str] | None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = headers
