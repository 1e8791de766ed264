"""The capture proxy: a transparent OCPP-J websocket hop that records every frame.

A charger connects to ``ws://HOST:PORT/<any path>/<chargePointId>``. The proxy dials
``<upstream>/<chargePointId>`` (plus the charger's query string) with the charger's offered
subprotocols and Authorization header, and only when the CSMS has accepted does it accept
the charger, with exactly the subprotocol the CSMS chose. A refusal (401, 404, ...) reaches
the charger as the same HTTP status.

Both websockets run with ``autoping=False, autoclose=False``: pings, pongs and close frames
pass through instead of being answered here. Frames are forwarded as the exact text or bytes
received, then handed to the :class:`~ocpp_replay.store.CaptureWriter` (a deque append; the
parsing and SQLite work happen in the writer's thread). A fault in recording is logged and
counted, never raised into the traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import aiohttp
from aiohttp import WSMsgType, web

from ocpp_replay.errors import ConfigError, UpstreamError
from ocpp_replay.frames import Direction
from ocpp_replay.handshake import basic_auth_user, charge_point_id_of, escape_controls, offered_protocols
from ocpp_replay.reach import probe, ws_address
from ocpp_replay.store import CaptureWriter

log = logging.getLogger(__name__)

#: OCPP messages are small, but firmware/diagnostics DataTransfer and GetConfiguration
#: answers can be large; aiohttp's 4 MiB default is kept as a floor, configurable upward.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Going Away: used when the proxy itself shuts down, or the other side vanished.
CLOSE_GOING_AWAY = 1001
#: Headers of the charger's handshake that go upstream unchanged.
FORWARDED_HEADERS = ("Authorization", "User-Agent", "Origin")


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

    def client_context(self) -> ssl.SSLContext | bool:
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


#: Both ends of a connection deliver text frames undecoded (decode_text=False).
_Ws = web.WebSocketResponse[Literal[False]] | aiohttp.ClientWebSocketResponse[Literal[False]]


@dataclass(slots=True)
class _Session:
    """One charger connection as the proxy sees it. Holds no frames."""

    id: int
    charge_point_id: str
    started_mono: float
    charger: web.WebSocketResponse[Literal[False]]
    upstream: aiohttp.ClientWebSocketResponse[Literal[False]]
    request: web.Request
    seq: int = 0
    closed_by: str | None = None
    close_code: int | None = None
    close_reason: str | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _close_reason(extra: Any) -> str:
    if isinstance(extra, bytes):
        return extra.decode("utf-8", "replace")
    return extra or ""


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
        ws_address(upstream, "upstream")  # a ConfigError for anything but a ws:// or wss:// URL
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
        self._sessions: dict[int, _Session] = {}
        self._client: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._client_ssl: ssl.SSLContext | bool = True
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
        self._client = aiohttp.ClientSession(
            # No pool limit: each charger holds one upstream connection for as long as it
            # stays connected (aiohttp's default of 100 would starve the 101st charger).
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ssl=self._client_ssl),
            timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
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
        sessions = list(self._sessions.values())
        if sessions:
            # Bounded, and never skipping the flush below: a peer that does not answer its
            # close frame must not cost the capture its last frames.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await asyncio.gather(
                        *(self._shutdown_session(s) for s in sessions), return_exceptions=True
                    )
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
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)

    async def _shutdown_session(self, session: _Session) -> None:
        session.closed_by = session.closed_by or "proxy"
        session.close_code = session.close_code or CLOSE_GOING_AWAY
        session.close_reason = session.close_reason or "proxy shutting down"
        await asyncio.gather(
            session.charger.close(code=CLOSE_GOING_AWAY, message=b"proxy shutting down"),
            session.upstream.close(code=CLOSE_GOING_AWAY, message=b"proxy shutting down"),
            return_exceptions=True,
        )
        for task in session.tasks:
            task.cancel()
        await asyncio.gather(*session.tasks, return_exceptions=True)

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
        assert self._client is not None and self.writer is not None
        raw_path = request.rel_url.raw_path  # still percent-encoded, as the charger sent it
        cp_id, raw_segment = charge_point_id_of(raw_path)
        if not cp_id:
            return web.Response(status=404, text="no charge point id in the path\n")
        protocols = offered_protocols(request.headers.get("Sec-WebSocket-Protocol"))
        query = request.query_string
        url = f"{self.upstream}/{raw_segment}" + (f"?{query}" if query else "")
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
        wants_deflate = "permessage-deflate" in request.headers.get("Sec-WebSocket-Extensions", "")
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
            upstream = await self._client.ws_connect(
                url,
                protocols=protocols,
                headers=headers,
                autoclose=False,
                autoping=False,
                heartbeat=None,
                compress=15 if wants_deflate else 0,
                max_msg_size=self.max_message_size,
                decode_text=False,
                ssl=self._client_ssl,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            return self._refuse(
                request,
                cp_id,
                fields,
                started_wall,
                exc.status,
                f"upstream refused the handshake: {exc.status} {exc.message}",
                exc.headers,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return self._refuse(
                request,
                cp_id,
                fields,
                started_wall,
                502,
                f"upstream unreachable: {exc or type(exc).__name__}",
                None,
            )

        charger = cast(
            "web.WebSocketResponse[Literal[False]]",
            web.WebSocketResponse(
                protocols=(upstream.protocol,) if upstream.protocol else (),
                autoclose=False,
                autoping=False,
                heartbeat=None,
                compress=bool(upstream.compress),
                max_msg_size=self.max_message_size,
                decode_text=False,
                timeout=10.0,
            ),
        )
        try:
            await charger.prepare(request)
        except (aiohttp.ClientError, ConnectionError, web.HTTPException) as exc:
            await upstream.close(code=CLOSE_GOING_AWAY, message=b"charger handshake failed")
            return self._refuse(
                request, cp_id, fields, started_wall, None, f"charger handshake failed: {exc}", None
            )

        fields["subprotocol"] = upstream.protocol
        session_id = self.writer.open_session(started_wall, **fields)
        session = _Session(session_id, cp_id, started_mono, charger, upstream, request)
        self._sessions[session_id] = session
        self.stats.connections += 1
        self.stats.active += 1
        log.info(
            "open   %s session=%d subprotocol=%s from %s",
            escape_controls(cp_id),
            session_id,
            escape_controls(upstream.protocol or "-"),
            peer,
        )
        try:
            session.tasks = [
                asyncio.create_task(self._pump(session, charger, upstream, Direction.TO_CSMS)),
                asyncio.create_task(self._pump(session, upstream, charger, Direction.TO_CP)),
            ]
            # One side ending (close handshake or drop) ends the other as well.
            _done, pending = await asyncio.wait(session.tasks, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(12):
                        await asyncio.wait(pending)
            for task in pending:
                task.cancel()
            await asyncio.gather(*session.tasks, return_exceptions=True)
        finally:
            for ws in (upstream, charger):
                if not ws.closed:
                    with contextlib.suppress(Exception):
                        await ws.close(code=CLOSE_GOING_AWAY)
            self._sessions.pop(session_id, None)
            self.stats.active -= 1
            self.writer.close_session(
                session_id,
                time.time(),
                close_code=session.close_code,
                close_reason=session.close_reason,
                closed_by=session.closed_by,
                frames=session.seq,
            )
            log.info(
                "close  %s session=%d code=%s by=%s frames=%d",
                escape_controls(cp_id),
                session_id,
                session.close_code,
                session.closed_by or "-",
                session.seq,
            )
        return charger

    def _refuse(
        self,
        request: web.Request,
        cp_id: str,
        fields: dict[str, Any],
        started_wall: float,
        status: int | None,
        error: str,
        upstream_headers: Any,
    ) -> web.StreamResponse:
        """Answer the charger as the upstream answered (or 502), and record the attempt."""
        assert self.writer is not None
        self.stats.refused += 1
        fields.update(upstream_status=status, error=error)
        session_id = self.writer.open_session(started_wall, **fields)
        self.writer.close_session(session_id, time.time(), closed_by="upstream")
        log.info("refuse %s session=%d %s", escape_controls(cp_id), session_id, escape_controls(error))
        headers: dict[str, str] = {}
        if upstream_headers is not None:
            for name in ("WWW-Authenticate", "Retry-After"):
                if name in upstream_headers:
                    headers[name] = upstream_headers[name]
        if request.transport is None or status is None:
            return web.Response(status=502)
        return web.Response(status=status, headers=headers, text=error + "\n")

    async def _pump(
        self,
        session: _Session,
        src: _Ws,
        dst: _Ws,
        direction: Direction,
    ) -> None:
        """Forward one direction verbatim until a close frame or a drop."""
        writer = self.writer
        assert writer is not None
        record = writer.frame
        stats = self.stats
        sid = session.id
        started = session.started_mono
        wall = time.time
        mono = time.monotonic
        side = "cp" if direction is Direction.TO_CSMS else "csms"
        try:
            while True:
                msg = await src.receive()
                kind = msg.type
                if kind is WSMsgType.TEXT:
                    # Both ends run with decode_text=False: the text frame's bytes are forwarded
                    # as they came, never decoded and re-encoded here (the writer decodes them).
                    t_wall, t_mono = wall(), mono()
                    await dst.send_frame(msg.data, WSMsgType.TEXT)
                    text = True
                elif kind is WSMsgType.BINARY:
                    t_wall, t_mono = wall(), mono()
                    await dst.send_bytes(msg.data)
                    text = False
                elif kind is WSMsgType.PING:
                    await dst.ping(msg.data)
                    continue
                elif kind is WSMsgType.PONG:
                    await dst.pong(msg.data)
                    continue
                elif kind is WSMsgType.CLOSE:
                    await self._pass_close(session, side, dst, msg.data, _close_reason(msg.extra))
                    return
                elif kind is WSMsgType.CLOSING:
                    # The other pump is completing a close handshake on this socket.
                    return
                else:  # CLOSED or ERROR: this side dropped without a close handshake
                    await self._mirror_drop(session, side, dst, msg)
                    return
                session.seq += 1
                stats.frames += 1
                try:
                    record(sid, session.seq, t_wall, t_mono - started, direction, msg.data, text)
                except Exception:  # recording must never break the traffic it records
                    log.exception("recording failed for session %d", sid)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            # The destination went away while sending: the other pump sees it as a drop.
            if session.closed_by is None:
                session.closed_by = "cp" if side == "csms" else "csms"
                session.close_reason = f"connection lost: {exc or type(exc).__name__}"
            with contextlib.suppress(Exception):
                await src.close(code=CLOSE_GOING_AWAY)

    async def _pass_close(
        self,
        session: _Session,
        side: str,
        dst: _Ws,
        code: int | None,
        reason: str,
    ) -> None:
        """A close frame came from ``side``: send the same code and reason to the other side.

        aiohttp's close() then waits for the other side's answering close frame and the
        answering code is sent back by the pump of ``side`` (its socket is closing).
        """
        if session.closed_by is None:
            session.closed_by = side
            session.close_code = code
            session.close_reason = reason or None
        # A close frame without a status code has no code to forward; 1000 stands in for it.
        await dst.close(code=code or 1000, message=reason.encode("utf-8"))
        src = session.charger if side == "cp" else session.upstream
        reply = dst.close_code or code or 1000
        await src.close(code=reply)

    async def _mirror_drop(
        self,
        session: _Session,
        side: str,
        dst: _Ws,
        msg: Any,  # aiohttp's CLOSED or ERROR message (WSMessage or its undecoded-text twin)
    ) -> None:
        """``side`` vanished without a close frame: end the other side too.

        A vanished CSMS is mirrored to the charger as a dropped TCP connection (what it would
        see without the proxy); a vanished charger is reported to the CSMS as 1001 Going Away.
        A side that broke the websocket protocol (a message over ``max_message_size``, a text
        frame that is not UTF-8, ...) did not vanish: aiohttp has closed it with the matching
        code (1009, 1007, ...), and the proxy ends the other side with 1001 and the reason.
        """
        if session.closed_by is not None:
            return  # the other pump is already ending this session (close or shutdown)
        if msg.type is WSMsgType.ERROR and isinstance(msg.data, aiohttp.WebSocketError):
            await self._refuse_message(session, side, dst, msg.data)
            return
        session.closed_by = side
        session.close_code = 1006
        detail = msg.data if msg.type is WSMsgType.ERROR else None
        session.close_reason = f"connection lost{': ' + str(detail) if detail else ''}"
        if side == "csms":
            transport = session.request.transport
            if transport is not None:
                transport.abort()
            return
        await dst.close(code=CLOSE_GOING_AWAY, message=b"charge point connection lost")

    async def _refuse_message(
        self,
        session: _Session,
        side: str,
        dst: _Ws,
        error: aiohttp.WebSocketError,
    ) -> None:
        """``side`` sent what the proxy cannot forward; aiohttp closed it with ``error.code``."""
        who = "charge point" if side == "cp" else "CSMS"
        session.closed_by = "proxy"
        session.close_code = error.code
        session.close_reason = f"{who} sent a message the proxy refused: {error}"
        log.warning(
            "session %d (%s): %s; closed with %d",
            session.id,
            escape_controls(session.charge_point_id),
            session.close_reason,
            error.code,
        )
        # The reason of a close frame has room for 123 bytes.
        await dst.close(code=CLOSE_GOING_AWAY, message=f"{who} sent a message the proxy refused".encode())
