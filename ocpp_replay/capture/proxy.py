"""The capture proxy: a transparent OCPP-J websocket hop that records every frame.

A charger connects to ``ws://HOST:PORT/<path>``. The proxy reads its HTTP upgrade itself (no
web framework: it owns its sockets from the first byte), dials ``<upstream><suffix>?<query>``
where the suffix is the part of the path after the upstream URL's own path (or after
``--path-prefix``, or else the last segment: :func:`~ocpp_replay.capture.handshake.path_suffix`),
exactly as dialled, with the charger's headers (hop-by-hop ones aside), and only when the CSMS
has answered does it answer the charger: with the CSMS's own status line, headers and body, for
a refusal and for the 101 alike (only Sec-WebSocket-Accept is recomputed for the charger's key).

Once both are done, each socket is relayed below any websocket library: the bytes that arrive
are written to the other socket at once, exactly as they came (masks, fragmentation, pings,
pongs, close frames and permessage-deflate, whose parameters the two ends negotiated with each
other), and a :class:`~ocpp_replay.capture.wsframes.Scanner` finds the messages in the same
bytes. Bytes a side sent right behind its handshake (a charger's first frame in the segment of
its upgrade request, a CSMS's first call behind its 101) are the relay's first bytes. Each
message is handed to the :class:`~ocpp_replay.store.CaptureWriter` as it was on the wire (a
deque append; unmasking, parsing and SQLite work happen in the writer's thread). A fault in
recording is logged and counted, never raised into the traffic. The proxy speaks for itself
only to close: when a side vanishes, when a message is over the size limit, and when it shuts
down; and to refuse what it cannot pass on (docs/capture.md lists each answer).

Handshakes are bounded: the whole upgrade has a deadline (``handshake_timeout``), unfinished
ones are capped (``max_handshakes``; the oldest is dropped for a new one), and an optional limit
holds the connections of one remote address. A CSMS that cannot be reached is answered to the
charger as its absence would look (the connection drops), logged once per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from ocpp_replay.capture.handshake import (
    ID_RULES,
    HandshakeError,
    UnsupportedVersion,
    UpgradeRequest,
    UpgradeResponse,
    accept_key,
    basic_auth_user,
    body_end,
    charge_point_id,
    check_client_handshake,
    deflate_offers,
    head_end,
    header,
    new_key,
    offered_protocols,
    parse_request_head,
    parse_response_head,
    passed_on_head,
    passed_on_request_headers,
    path_suffix,
    upgrade_request,
)
from ocpp_replay.capture.metrics import metrics_route
from ocpp_replay.capture.reach import probe, raise_open_file_limit, ws_address
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
from ocpp_replay.store.retention import Retention
from ocpp_replay.store.schema import utc_iso
from ocpp_replay.store.writer import DEFAULT_MAX_PENDING_BYTES

if TYPE_CHECKING:
    from ocpp_replay.capture.shadow import Tap, TapMirror

log = logging.getLogger(__name__)

#: OCPP messages are small, but firmware/diagnostics DataTransfer and GetConfiguration
#: answers can be large; aiohttp's 4 MiB default is kept as a floor, configurable upward.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Going Away: used when the proxy itself shuts down, or the other side vanished.
CLOSE_GOING_AWAY = 1001
#: The whole HTTP upgrade, from the charger's connection to the proxy's answer (nginx waits
#: 60 s for a request head, Apache 20-40 s, Go's servers as configured; chargers send theirs at once).
DEFAULT_HANDSHAKE_TIMEOUT = 20.0
#: Connections whose request head has not fully arrived; past this the oldest is dropped.
DEFAULT_MAX_HANDSHAKES = 1000
#: An HTTP head (request or answer) larger than this is refused (aiohttp's limit is 8 KiB a line).
_MAX_HEAD = 64 * 1024
#: The body of a CSMS's refusal that is passed on to the charger; a larger one gets 502.
_MAX_BODY = 1024 * 1024
#: How long the proxy waits for a close handshake it started before it drops the connection.
_CLOSE_TIMEOUT = 10.0
#: File descriptors kept for the capture, logs and the process itself when sizing connections.
_FD_RESERVE = 64
#: At most one log line a minute about hostile or broken handshakes (timeouts, drops, limits).
_HOSTILE_LOG_INTERVAL = 60.0

_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def own_answer(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """An HTTP answer of the proxy's own (it closes the connection after it)."""
    body = (text + "\n").encode("utf-8")
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _wire_text(s: str) -> str:
    """Request bytes (read as ISO-8859-1) as text to record: UTF-8 where they are UTF-8."""
    try:
        return s.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return s


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
    connections: int = 0  # relayed sessions opened
    active: int = 0  # relayed sessions open now
    refused: int = 0  # handshakes answered without a relay (recorded as sessions)
    frames: int = 0
    handshakes_timed_out: int = 0  # no complete upgrade within the handshake deadline
    handshakes_dropped: int = 0  # unfinished, dropped for a new one at max_handshakes
    refused_per_address: int = 0  # over max_connections_per_address
    upstream_failures: int = 0  # dials that found no CSMS (connection refused, timeout, ...)
    #: upgrades by outcome: "101" relayed, the CSMS's status when it refused, "none" when no
    #: CSMS answered (unreachable, no answer, or the proxy refused the charger itself)
    handshakes: Counter[str] = field(default_factory=Counter)


_SIDES = {"cp": "charge point", "csms": "CSMS"}


class _Leg(asyncio.Protocol):
    """One side of a relayed connection: the charger's socket or the CSMS's.

    Until the relay starts, what arrives waits in ``inbox`` for the proxy's handshake code. Then
    what arrives is written to the other leg's socket at once, as it came; the leg's
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
        self.inbox: bytearray | None = bytearray()  # None once relaying
        self.eof = False  # the socket ended during the handshake
        self._wake: asyncio.Future[None] | None = None

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.side == "cp":
            self.relay.proxy._accepted(self.relay)

    def data_received(self, data: bytes) -> None:
        inbox = self.inbox
        if inbox is not None:  # still in its handshake
            inbox += data
            if len(inbox) > _MAX_HEAD + _MAX_BODY and self.transport is not None:
                self.transport.pause_reading()  # the handshake code refuses it; hold the rest
            self._wakeup()
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
        if self.inbox is not None:  # the handshake code (or Relay.start) sees it
            self.eof = True
            self._wakeup()
            return
        self.relay.leg_lost(self, exc)

    def pause_writing(self) -> None:  # the socket this leg writes to is full: stop reading
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    # -- the handshake ------------------------------------------------------------------

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def more(self) -> None:
        """Wait until more bytes arrive or the socket ends. Raises ConnectionError if it had."""
        if self.eof:
            raise ConnectionResetError(f"the {_SIDES[self.side]} closed the connection")
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await self._wake
        finally:
            self._wake = None

    async def read_head(self) -> tuple[bytes, bytes]:
        """(the HTTP head, up to its blank line; the blank line) from the inbox; what follows
        stays in the inbox. Raises ConnectionError, or HandshakeError for an oversized head."""
        scanned = 0
        while True:
            inbox = self.inbox
            assert inbox is not None
            found = head_end(inbox, scanned)
            if found is not None:
                end, after = found
                head, blank = bytes(inbox[:end]), bytes(inbox[end:after])
                del inbox[:after]
                return head, blank
            if len(inbox) > _MAX_HEAD:
                raise HandshakeError(f"HTTP head longer than {_MAX_HEAD} bytes")
            scanned = len(inbox)
            await self.more()

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


def _resume(transport: asyncio.Transport) -> None:
    with contextlib.suppress(Exception):  # closing already: nothing to resume
        transport.resume_reading()


class _Relay:
    """One charger connection: two legs, the session's record, its ending."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.writer = proxy.writer
        self.cp_id = ""
        self.max_message_size = proxy.max_message_size
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
        self.fields: dict[str, Any] | None = None  # the session's columns, once its request is read
        self.remote = ""
        self._timer: asyncio.TimerHandle | None = None
        self._ending = False
        self.mirror: TapMirror | None = None  # the shadow tap (--shadow): a deque append per message

    def start(self, session_id: int, started_mono: float) -> None:
        """Both handshakes are done: relay from now on, beginning with what each side sent early."""
        self.id = session_id
        self.started_mono = started_mono
        self.cp.forwarding = self.csms.forwarding = True
        early = []
        for leg in (self.csms, self.cp):
            early.append(bytes(leg.inbox or b""))
            leg.inbox = None
        for leg, rest in zip((self.csms, self.cp), early, strict=True):
            if rest:
                leg.data_received(rest)
        for leg in (self.csms, self.cp):
            if leg.lost:  # it ended before the relay began: end the session as it would now
                self.leg_lost(leg, None)
            elif leg.transport is not None:
                _resume(leg.transport)

    # -- messages ---------------------------------------------------------------------

    def messages(self, leg: _Leg, messages: list[Message], t_wall: float, t_mono: float) -> None:
        record = self.writer.frame if self.writer is not None else None
        mirror = self.mirror
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
            if mirror is not None:
                mirror.put(self.seq, leg.side == "cp", payload, mask, opcode == TEXT, t_mono)

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
        capture_buffer: int = DEFAULT_MAX_PENDING_BYTES,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_connections_per_address: int = 0,
        path_prefix: str | None = None,
        id_from: str = "last",
        forwarded: bool = False,
        check_upstream: bool = False,
        shadow: Tap | None = None,
        retention: Retention | None = None,
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
        if capture_buffer < 1:
            raise ConfigError(f"capture buffer must be 1 byte or more, not {capture_buffer}")
        if not connect_timeout > 0:
            raise ConfigError(f"connect timeout must be more than 0 seconds, not {connect_timeout:g}")
        if not handshake_timeout > 0:
            raise ConfigError(f"handshake timeout must be more than 0 seconds, not {handshake_timeout:g}")
        if max_handshakes < 1:
            raise ConfigError(f"max handshakes must be 1 or more, not {max_handshakes}")
        if max_connections_per_address < 0:
            raise ConfigError(
                f"max connections per address must be 0 (no limit) or more, not {max_connections_per_address}"
            )
        if path_prefix is not None and not path_prefix.startswith("/"):
            raise ConfigError(f"path prefix must begin with '/', not {path_prefix!r}")
        if id_from not in ID_RULES:
            raise ConfigError(f"id rule must be one of {', '.join(ID_RULES)}, not {id_from!r}")
        self.upstream = upstream.rstrip("/")
        self.db_path = Path(db)
        self.host = host
        self.port = port
        self.tls = tls or TlsOptions()
        self.max_message_size = max_message_size
        self.connect_timeout = connect_timeout
        self.flush_interval = flush_interval
        self.capture_buffer = capture_buffer
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.max_connections_per_address = max_connections_per_address
        self.path_prefix = path_prefix.rstrip("/") if path_prefix is not None else None
        self.id_from = id_from
        self.forwarded = forwarded
        self.check_upstream = check_upstream  # probe it at start, to say at once if it is down
        self.stats = ProxyStats()
        self.shadow = shadow  # --shadow: mirrors each charger to other backends (capture/shadow.py)
        self.retention = retention  # --retain/--max-size: pruned in the writer's thread
        self.writer: CaptureWriter | None = None
        #: Paths answered to plain HTTP GETs on the listener: path -> () -> (content type, body).
        self.http_routes: dict[str, Callable[[], tuple[str, bytes]]] = {
            "/healthz": self._healthz,
            "/metrics": metrics_route(self),
        }
        #: Connections the process can hold at the open-file limit (set by start()).
        self.capacity = 0
        #: Since when the CSMS could not be reached (None while it answers), and why.
        self.upstream_down_since: float | None = None
        self.upstream_error: str | None = None
        self._relays: dict[int, _Relay] = {}
        self._tasks: dict[_Relay, asyncio.Task[None]] = {}
        self._unfinished: dict[_Relay, None] = {}  # request head not complete yet, oldest first
        self._per_address: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._client_ssl: ssl.SSLContext | None = None
        self._scheme = "ws"
        parts = urlsplit(self.upstream)
        self._upstream_path = parts.path.rstrip("/")
        self._upstream_query = parts.query
        self._upstream_host = parts.netloc.rpartition("@")[2]  # the Host header: as the URL says it
        self._upstream_origin = f"{parts.scheme}://{self._upstream_host}"  # no credentials recorded
        self._hostile_logged = 0.0
        self._hostile_seen = (0, 0, 0)
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
        limit = raise_open_file_limit()
        if limit:
            self.capacity = max(0, (limit - _FD_RESERVE) // 2)  # two sockets per charger
            if self.max_handshakes > self.capacity // 2 > 0:
                self.max_handshakes = self.capacity // 2  # half-open sockets must not take them all
        if self.check_upstream:
            try:  # a CSMS that is down is no reason not to start: chargers are answered as it would
                await probe(self.upstream, self.connect_timeout, "upstream")
            except UpstreamError as exc:
                self._upstream_failed(str(exc).removeprefix("upstream "))
        # The capture is opened in a thread: SQLite never runs on the event loop.
        self.writer = await asyncio.to_thread(
            CaptureWriter,
            self.db_path,
            flush_interval=self.flush_interval,
            max_pending_bytes=self.capture_buffer,
            retention=self.retention,
        )
        self.writer.start()
        if self.shadow is not None:
            try:
                await self.shadow.start(str(self.db_path))
            except BaseException:
                await self._close_resources()
                raise
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Relay(self).cp,
                self.host,
                self.port,
                ssl=server_ssl,
                ssl_handshake_timeout=self.handshake_timeout if server_ssl else None,
                backlog=4096,
                reuse_address=True,
            )
        except OSError as exc:
            await self._close_resources()
            raise UpstreamError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        self._scheme = "wss" if server_ssl else "ws"
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in shown:
            shown = f"[{shown}]"
        base = self.path_prefix if self.path_prefix is not None else self._upstream_path
        self.url = f"{self._scheme}://{shown}:{self.port}{base}"
        for line in self.describe():
            log.info("%s", line)
        return self.url

    def describe(self) -> list[str]:
        """What the proxy does with a charger's path, in words (printed and logged at start)."""
        listen = self.url.removesuffix(self.path_prefix or self._upstream_path)
        upstream = self._upstream_origin + self._upstream_path
        query = f" (the query after {self._upstream_query!r})" if self._upstream_query else ""
        if self.path_prefix is not None:
            rule = (
                f"forwarding {listen}{self.path_prefix}/<rest> to {upstream}/<rest> "
                f"(<rest> and the query exactly as dialled){query}; any other path: 404"
            )
        else:
            rule = (
                f"forwarding {listen}{self._upstream_path}/<rest> to {upstream}/<rest> "
                f"(<rest> and the query exactly as dialled){query}; any other path /a/b/<last>[/] "
                f"to {upstream}/<last>[/]"
            )
        which = {"last": "the last segment", "first": "the first segment", "suffix": "all"}[self.id_from]
        lines = [
            f"proxy listening on {listen}, upstream {self.upstream}, capture {self.db_path}",
            rule,
            f"charge point id: {which} of <rest>, percent-decoded (--id-from {self.id_from})",
            f"handshakes: {self.handshake_timeout:g} s to complete, at most {self.max_handshakes} unfinished"
            + (
                f", at most {self.max_connections_per_address} connections per address"
                if self.max_connections_per_address
                else ""
            )
            + ("; Forwarded and X-Forwarded-For/-Proto added upstream" if self.forwarded else ""),
        ]
        if self.capacity:
            lines.append(f"open-file limit allows about {self.capacity} charger connections")
        if self.retention:
            lines.append("retention: " + self.retention.describe())
        if self.upstream_down_since is not None:
            lines.append(f"upstream {self.upstream} is not answering ({self.upstream_error}); started anyway")
        return lines

    async def stop(self) -> None:
        """Stop accepting, close both sides of every connection, flush the capture."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        try:
            for relay, task in list(self._tasks.items()):  # handshakes: a charger whose request
                if relay.id == 0:  # arrived is answered 503, others are dropped
                    task.cancel()
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
            # Let each connection's task record the end of its session.
            tasks = list(self._tasks.values())
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT + 2)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=2)
        finally:
            if self.shadow is not None:
                await self.shadow.stop()
            await self._close_resources()
        log.info(
            "proxy stopped: %d connections, %d frames, %d frames not recorded",
            self.stats.connections,
            self.stats.frames,
            self.writer.stats.frames_lost if self.writer else 0,
        )

    async def _close_resources(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)

    def _healthz(self) -> tuple[str, bytes]:
        down = self.upstream_down_since
        body = {
            "status": "ok",
            "active": self.stats.active,
            "connections": self.stats.connections,
            "frames": self.stats.frames,
            "frames_lost": self.writer.stats.frames_lost if self.writer else 0,
            "capture_pending_frames": self.writer.pending if self.writer else 0,
            "capture_pending_bytes": self.writer.pending_bytes if self.writer else 0,
            "retention": self._retention_health(),
            "upstream": "down" if down is not None else "up",
            "upstream_down_since": utc_iso(down) if down is not None else None,
            "upstream_error": self.upstream_error,
            "upstream_failures": self.stats.upstream_failures,
            "handshakes_unfinished": len(self._unfinished),
            "handshakes_timed_out": self.stats.handshakes_timed_out,
            "handshakes_dropped": self.stats.handshakes_dropped,
            "refused_per_address": self.stats.refused_per_address,
            "capacity": self.capacity,
        }
        return "application/json", json.dumps(body).encode()

    def _retention_health(self) -> dict[str, Any] | None:
        pruner = self.writer.pruner if self.writer is not None else None
        if pruner is None:
            return None
        st = pruner.stats
        return {
            "cutoff": st.cutoff,
            "frames_pruned": st.frames_pruned,
            "sessions_pruned": st.sessions_pruned,
            "sessions_cut": st.sessions_cut,
            "passes": st.passes,
            "data_bytes": st.data_bytes or None,
            "max_step_seconds": round(st.max_step_seconds, 4),
        }

    # ------------------------------------------------------------------ the upstream's health

    def _upstream_failed(self, error: str) -> None:
        self.stats.upstream_failures += 1
        self.upstream_error = error
        if self.upstream_down_since is None:
            self.upstream_down_since = time.time()
            log.warning(
                "upstream %s unreachable (%s): chargers are dropped as they would be without the "
                "proxy, until it answers (logged again when it does)",
                self.upstream,
                error,
            )

    def _upstream_answered(self) -> None:
        since = self.upstream_down_since
        if since is not None:
            self.upstream_down_since = None
            log.warning(
                "upstream %s reachable again after %.0f s down (%d attempts failed in all)",
                self.upstream,
                time.time() - since,
                self.stats.upstream_failures,
            )

    def _note_hostile(self) -> None:
        """Log the handshakes timed out, dropped and refused since the last line, once a minute."""
        now = time.monotonic()
        if now - self._hostile_logged < _HOSTILE_LOG_INTERVAL:
            return
        s = self.stats
        seen = (s.handshakes_timed_out, s.handshakes_dropped, s.refused_per_address)
        timed_out, dropped, refused = (a - b for a, b in zip(seen, self._hostile_seen, strict=True))
        self._hostile_logged, self._hostile_seen = now, seen
        log.warning(
            "handshakes not completed since the last such line (at most one a minute): %d timed out "
            "(%g s), %d dropped at %d unfinished, %d refused over %d connections per address",
            timed_out,
            self.handshake_timeout,
            dropped,
            self.max_handshakes,
            refused,
            self.max_connections_per_address,
        )

    # ------------------------------------------------------------------ a connection

    def _accepted(self, relay: _Relay) -> None:
        """A charger's TCP (and TLS) connection is up: bound it, then serve it in a task."""
        transport = relay.cp.transport
        assert transport is not None
        if self._stopping:
            transport.abort()
            return
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        limit = self.max_connections_per_address
        if limit and self._per_address.get(address, 0) >= limit:
            self.stats.refused_per_address += 1
            self._note_hostile()
            transport.write(own_answer(503, "too many connections from this address"))
            transport.close()
            return
        if len(self._unfinished) >= self.max_handshakes:
            oldest = next(iter(self._unfinished))
            del self._unfinished[oldest]
            self.stats.handshakes_dropped += 1
            self._note_hostile()
            if oldest.cp.transport is not None:
                oldest.cp.transport.abort()
        self._unfinished[relay] = None
        self._per_address[address] = self._per_address.get(address, 0) + 1
        relay.remote = address
        self._tasks[relay] = asyncio.get_running_loop().create_task(self._serve(relay))

    async def _serve(self, relay: _Relay) -> None:
        cp = relay.cp
        started_wall, started_mono = time.time(), time.monotonic()
        try:
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    request = await self._read_request(relay)
                    opened = request is not None and await self._upgrade(relay, request, started_wall)
            except TimeoutError:
                self.stats.handshakes_timed_out += 1
                self._note_hostile()
                if relay.fields is not None:  # the charger's request was read: a session to record
                    error = f"handshake not done within {self.handshake_timeout:g} s"
                    self._refuse(relay, error, None, by="proxy")
                return
            if opened:
                await self._relay(relay, started_wall, started_mono)
        except asyncio.CancelledError:
            if self._stopping and relay.id == 0 and relay.fields is not None:
                self._refuse(relay, "proxy shutting down", own_answer(503, "proxy shutting down"), by="proxy")
            raise
        except Exception:  # a bug here must cost one charger its connection, not the proxy
            log.exception("serving %s failed", escape_controls(relay.cp_id or relay.remote))
        finally:
            self._unfinished.pop(relay, None)
            self._tasks.pop(relay, None)
            left = self._per_address.get(relay.remote, 0) - 1
            if left > 0:
                self._per_address[relay.remote] = left
            else:
                self._per_address.pop(relay.remote, None)
            if relay.id == 0:  # never relayed: leave no socket behind (an answer is flushed first)
                if relay.csms.transport is not None and not relay.csms.lost:
                    relay.csms.transport.abort()
                if cp.transport is not None and not cp.transport.is_closing():
                    cp.transport.abort()

    async def _read_request(self, relay: _Relay) -> UpgradeRequest | None:
        """The charger's request head, or None when it was answered here (plain HTTP, garbage)."""
        cp = relay.cp
        assert cp.transport is not None
        try:
            head, _ = await cp.read_head()
        except ConnectionError:
            return None
        except HandshakeError as exc:
            self._unfinished.pop(relay, None)
            cp.transport.write(own_answer(431, str(exc)))
            cp.transport.close()
            return None
        self._unfinished.pop(relay, None)
        cp.transport.pause_reading()  # what follows is the relay's, once the CSMS has answered
        try:
            request = parse_request_head(head)
        except HandshakeError as exc:
            cp.transport.write(own_answer(400, str(exc)))
            cp.transport.close()
            return None
        if request.is_upgrade:
            return request
        route = self.http_routes.get(request.path)
        if route is not None and request.method in ("GET", "HEAD"):
            content_type, body = route()
            cp.transport.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
                + (body if request.method == "GET" else b"")
            )
        else:
            cp.transport.write(
                own_answer(426, "OCPP-J needs a websocket upgrade", (("Upgrade", "websocket"),))
            )
        cp.transport.close()
        return None

    def _upstream_target(self, suffix: str, query: str | None) -> str:
        """The request-target dialled upstream: the upstream's path, the charger's suffix as
        dialled, the upstream URL's query then the charger's (a bare '?' kept as sent)."""
        path = self._upstream_path + suffix
        queries = [q for q in (self._upstream_query, query) if q]
        joined = "&".join(queries) if queries else query
        return (path if path.startswith("/") else "/" + path) + (f"?{joined}" if joined is not None else "")

    async def _upgrade(self, relay: _Relay, request: UpgradeRequest, started_wall: float) -> bool:
        """Dial the CSMS and answer the charger as it answered. True when the relay may start."""
        assert self.writer is not None
        cp = relay.cp
        assert cp.transport is not None
        suffix = path_suffix(request.path, self._upstream_path, self.path_prefix)
        cp_id = charge_point_id(_wire_text(suffix), self.id_from) if suffix is not None else ""
        relay.cp_id = cp_id
        protocols = offered_protocols(header(request.headers, "Sec-WebSocket-Protocol"))
        target = self._upstream_target(suffix or "", request.query)
        relay.fields = {
            "charge_point_id": cp_id,
            "path": _wire_text(request.path),
            "query": _wire_text(request.query) if request.query is not None else None,
            "path_suffix": _wire_text(suffix) if suffix is not None else None,
            "offered_subprotocols": ",".join(protocols) or None,
            "remote_addr": relay.remote,
            "auth_user": basic_auth_user(request.headers.get("Authorization")),
            "upstream_url": _wire_text(self._upstream_origin + target),
        }
        if suffix is None:
            error = f"path outside --path-prefix {self.path_prefix}"
            self._refuse(relay, error, own_answer(404, error), by="proxy")
            return False
        if not cp_id:
            error = "no charge point id in the path"
            self._refuse(relay, error, own_answer(404, error), by="proxy")
            return False
        try:
            charger_key = check_client_handshake(request.method, request.headers)
        except HandshakeError as exc:
            error = f"charger handshake invalid: {exc}"
            if isinstance(exc, UnsupportedVersion):
                answer = own_answer(426, error, (("Sec-WebSocket-Version", "13"),))
            else:
                answer = own_answer(400, error)
            self._refuse(relay, error, answer, by="proxy")
            return False

        extensions = deflate_offers(header(request.headers, "Sec-WebSocket-Extensions"))
        try:
            response, key, blank = await self._dial(relay, target, request, extensions)
        except _Refused as refused:
            # While the CSMS is known to be down each charger's attempt is not worth a line.
            quiet = refused.answer is None and self.upstream_down_since is not None
            self._refuse(relay, refused.error, refused.answer, quiet=quiet)
            return False
        if self._stopping:
            self._refuse(relay, "proxy shutting down", own_answer(503, "proxy shutting down"), by="proxy")
            return False
        if response.status != 101:  # a refusal: its head, as sent, and its body
            body = await self._refusal_body(relay, response)
            answer = passed_on_head(response.head, switching=False, accept=None) + blank + body
            error = f"upstream refused the handshake: {response.status} {response.reason}"
            self._refuse(relay, error, answer, upstream_status=response.status)
            return False
        try:
            response.check_extensions(extensions)
        except HandshakeError as exc:
            error = f"upstream answered with a handshake the proxy cannot follow: {exc}"
            self._refuse(relay, error, own_answer(502, error), upstream_status=101)
            return False
        if cp.lost:
            self._refuse(relay, "charger left during the handshake", None)
            return False
        # Lenient as a charger would be: what RFC 6455 says a client must refuse, the charger
        # decides on (as without the proxy); the capture says what it was.
        notes = response.off_spec(key, protocols)
        valid_accept = response.headers.get("Sec-WebSocket-Accept", "").strip() == accept_key(key)
        answer = passed_on_head(
            response.head, switching=True, accept=accept_key(charger_key) if valid_accept else None
        )
        if response.extensions:  # permessage-deflate: the frames pass compressed, and are
            for leg in (relay.cp, relay.csms):  # inflated to record
                leg.scanner.inflater = Inflater(self.max_message_size)
        cp.transport.write(answer + blank)
        relay.fields["subprotocol"] = header(response.headers, "Sec-WebSocket-Protocol") or None
        if notes:
            relay.fields["handshake_note"] = "; ".join(notes)
            log.warning(
                "%s: the CSMS's 101 is off-spec (%s); passed on as sent",
                escape_controls(cp_id),
                escape_controls(relay.fields["handshake_note"]),
            )
        return True

    async def _relay(self, relay: _Relay, started_wall: float, started_mono: float) -> None:
        assert self.writer is not None and relay.fields is not None
        session_id = self.writer.open_session(started_wall, **relay.fields)
        self._relays[session_id] = relay
        if self.shadow is not None:
            relay.mirror = self.shadow.opened(
                session_id, relay.cp_id, relay.fields, started_wall, started_mono
            )
        self.stats.connections += 1
        self.stats.active += 1
        self.stats.handshakes["101"] += 1
        log.info(
            "open   %s session=%d subprotocol=%s from %s",
            escape_controls(relay.cp_id),
            session_id,
            escape_controls(relay.fields.get("subprotocol") or "-"),
            relay.remote,
        )
        try:
            relay.start(session_id, started_mono)
            if self._stopping:  # stop() began while this connection was being set up
                relay.shutdown()
            await asyncio.shield(relay.done)
        finally:
            if not relay.done.done():  # cancelled: the proxy is stopping
                relay.abort()
            self._relays.pop(session_id, None)
            if relay.mirror is not None:
                relay.mirror.closed()
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
                escape_controls(relay.cp_id),
                session_id,
                relay.close_code,
                relay.closed_by or "-",
                relay.seq,
            )

    def _forwarded_headers(self, request: UpgradeRequest, remote: str) -> list[tuple[str, str]]:
        """RFC 7239 Forwarded and X-Forwarded-For/-Proto, each after what earlier hops said."""
        node = f'"[{remote}]"' if ":" in remote else remote
        proto = "https" if self._scheme == "wss" else "http"
        element = f"for={node};proto={proto}"
        host = request.headers.get("Host")
        if host:
            element += f';host="{host}"' if any(c in host for c in ':[]" ') else f";host={host}"
        before = header(request.headers, "Forwarded")
        xff = header(request.headers, "X-Forwarded-For")
        return [
            ("Forwarded", f"{before}, {element}" if before else element),
            ("X-Forwarded-For", f"{xff}, {remote}" if xff else remote),
            ("X-Forwarded-Proto", request.headers.get("X-Forwarded-Proto") or proto),
        ]

    async def _dial(
        self, relay: _Relay, target: str, request: UpgradeRequest, extensions: str | None
    ) -> tuple[UpgradeResponse, str, bytes]:
        """Open the CSMS side and read its answer head: (answer, the key sent, its blank line).
        Raises _Refused."""
        leg = relay.csms
        loop = asyncio.get_running_loop()
        key = new_key()
        headers = passed_on_request_headers(request)
        if self.forwarded:
            mine = {"forwarded", "x-forwarded-for", "x-forwarded-proto"}
            headers = [h for h in headers if h[0].lower() not in mine]
            headers += self._forwarded_headers(request, relay.remote)
        if extensions:
            headers.append(("Sec-WebSocket-Extensions", extensions))
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
        except ssl.SSLError as exc:  # reached, but TLS failed: the proxy's setup, not an outage
            self._upstream_answered()
            raise _Refused(f"upstream TLS handshake failed: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                reason = f"no connection within {self.connect_timeout:g} s"
            else:
                reason = (exc.strerror or "").lower() or str(exc) or type(exc).__name__
            self._upstream_failed(reason)
            raise _Refused(f"upstream unreachable: {reason}", drop=True) from exc
        assert leg.transport is not None
        leg.transport.write(upgrade_request(target, self._upstream_host, key, headers))
        try:
            async with asyncio.timeout(self.connect_timeout):
                head, blank = await leg.read_head()
        except TimeoutError as exc:  # a CSMS that accepts and says nothing is as absent
            error = f"did not answer the handshake within {self.connect_timeout:g} s"
            self._upstream_failed(error)
            raise _Refused(f"upstream {error}", drop=True) from exc
        except ConnectionError as exc:
            if self._client_ssl is not None:  # TLS 1.3 refuses a client certificate so: the
                self._upstream_answered()  # proxy's setup, not an outage
                error = "upstream closed the TLS connection without answering"
                raise _Refused(f"{error} (was the proxy's client certificate refused?)") from exc
            self._upstream_failed("closed the connection without answering")
            raise _Refused("upstream closed the connection without answering", drop=True) from exc
        except HandshakeError as exc:
            self._upstream_answered()
            raise _Refused(f"upstream answered with an invalid handshake: {exc}") from exc
        self._upstream_answered()
        if leg.transport is not None:
            leg.transport.pause_reading()  # what follows the 101 waits for the relay
        try:
            return parse_response_head(head), key, blank
        except HandshakeError as exc:
            raise _Refused(f"upstream answered with an invalid handshake: {exc}") from exc

    async def _refusal_body(self, relay: _Relay, response: UpgradeResponse) -> bytes:
        """The body of the CSMS's refusal, as sent (Content-Length, chunked, or to its close)."""
        leg = relay.csms
        if leg.transport is not None:
            _resume(leg.transport)
        while True:
            inbox = leg.inbox
            assert inbox is not None
            try:
                n = body_end(response.status, response.headers, inbox, leg.eof)
            except HandshakeError:
                n = len(inbox)  # framing the charger's parser will judge: pass what came
            if n is not None:
                return bytes(inbox[:n])
            if len(inbox) > _MAX_BODY:
                return bytes(inbox[:_MAX_BODY])
            await leg.more()

    def _refuse(
        self,
        relay: _Relay,
        error: str,
        answer: bytes | None,
        *,
        upstream_status: int | None = None,
        by: str = "upstream",
        quiet: bool = False,
    ) -> None:
        """Answer the charger with ``answer`` (None: drop its connection, as an absent CSMS
        would look) and record the attempt: the upstream's status if it answered, the error,
        and who refused (``by``)."""
        assert self.writer is not None
        self.stats.refused += 1
        self.stats.handshakes[str(upstream_status) if upstream_status is not None else "none"] += 1
        fields = dict(relay.fields or {})
        fields.update(upstream_status=upstream_status, error=error)
        session_id = self.writer.open_session(time.time(), **fields)
        self.writer.close_session(session_id, time.time(), closed_by=by)
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "refuse %s session=%d %s",
            escape_controls(relay.cp_id),
            session_id,
            escape_controls(error),
        )
        transport = relay.cp.transport
        if transport is None or transport.is_closing():
            return
        if answer is None:
            transport.abort()
        else:
            transport.write(answer)
            transport.close()
        relay.fields = None  # recorded


class _Refused(Exception):
    """The CSMS side could not be opened, and it gave no HTTP status: the charger gets 502 with
    the reason, or with ``drop`` its connection drops (as when no CSMS is there)."""

    def __init__(self, error: str, *, drop: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.answer = None if drop else own_answer(502, error)
