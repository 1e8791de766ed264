"""The mitmproxy addon: OCPP websocket traffic passing through mitmproxy goes into a capture.

Use it as a script::

    mitmdump -s ocpp_replay/capture/mitm.py --set ocpp_db=captures/site.db --mode reverse:http://csms:8180

or through ``ocpp-replay mitm --db captures/site.db -- --mode reverse:http://csms:8180``.

A plain addon class: ``load`` declares the options, ``configure`` opens the capture, and the
websocket hooks hand each message to the :class:`~ocpp_replay.store.CaptureWriter` as it passes
(a deque append: parsing, pairing and SQLite run in the writer's thread, never on mitmproxy's
event loop). Sessions are recorded as the aiohttp proxy records them: charge point id (the last
path segment, percent-decoded), path, query, offered and negotiated subprotocols, remote
address, the Basic auth user (never the password), the upstream URL, close code, reason and
which side closed (``cp``, ``csms``, ``upstream`` for a refused handshake, ``proxy`` when
mitmproxy shuts down under a live connection).

Memory: mitmproxy appends every websocket message to ``flow.websocket.messages`` and keeps
it until the flow is gone. For a charger connected for weeks that is unbounded, so after
recording a message the addon deletes the messages *before* it (the current message stays at
``messages[-1]``, where mitmproxy's websocket layer, the dumper and other addons that run later
in the same hook look for it). Set ``ocpp_keep_messages`` to keep them, e.g. when also saving
the flows with ``-w``. The helpers at the bottom map a finished flow (from a flow file) onto the
same session fields; :mod:`ocpp_replay.share.exchange` uses them for ``ocpp-replay import``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from mitmproxy import ctx, exceptions, http

from ocpp_replay.capture.handshake import basic_auth_user, charge_point_id_of, offered_protocols
from ocpp_replay.core.frames import Direction
from ocpp_replay.core.text import escape_controls
from ocpp_replay.errors import CaptureError
from ocpp_replay.store import CaptureWriter

log = logging.getLogger(__name__)

__all__ = ["OcppCapture", "SessionFilter", "addons", "close_fields", "flow_frames", "session_fields"]


# ----------------------------------------------------------------------------- flow → session


def is_websocket_upgrade(flow: http.HTTPFlow) -> bool:
    return str(flow.request.headers.get("upgrade", "")).lower() == "websocket"


def negotiated_subprotocol(flow: http.HTTPFlow) -> str | None:
    if flow.response is None or flow.response.status_code != 101:
        return None
    return flow.response.headers.get("Sec-WebSocket-Protocol") or None


def _ws_url(flow: http.HTTPFlow) -> str:
    url = flow.request.url
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    return url


def session_fields(flow: http.HTTPFlow) -> dict[str, Any]:
    """The sessions-table fields known when the handshake is done (or refused)."""
    req = flow.request
    raw_path, _, query = req.path.partition("?")
    peer = flow.client_conn.peername
    offered = offered_protocols(req.headers.get("Sec-WebSocket-Protocol"))
    return {
        "charge_point_id": charge_point_id_of(raw_path)[0],
        "path": raw_path,
        "query": query or None,
        "offered_subprotocols": ",".join(offered) or None,
        "subprotocol": negotiated_subprotocol(flow),
        "remote_addr": str(peer[0]) if peer else None,
        "auth_user": basic_auth_user(req.headers.get("Authorization")),
        "upstream_url": _ws_url(flow),
    }


def close_fields(flow: http.HTTPFlow) -> dict[str, Any]:
    """close_code, close_reason and closed_by of a websocket flow that has ended."""
    ws = flow.websocket
    assert ws is not None
    closed_by = None if ws.closed_by_client is None else ("cp" if ws.closed_by_client else "csms")
    reason = ws.close_reason or None
    if ws.close_code == 1006 and not reason:
        reason = "connection lost"  # a drop without a close frame, as the proxy records it
    return {"close_code": ws.close_code, "close_reason": reason, "closed_by": closed_by}


def refusal_fields(flow: http.HTTPFlow) -> dict[str, Any]:
    """Fields of a websocket handshake the upstream refused, or that never reached it."""
    if flow.response is not None:
        status = flow.response.status_code
        error = f"upstream refused the handshake: {status} {flow.response.reason}".rstrip()
    else:
        status = 502
        error = f"upstream unreachable: {flow.error.msg if flow.error else 'no response'}"
    return {"upstream_status": status, "error": error}


def _message_data(message: Any) -> str | bytes:
    content: bytes = message.content
    if message.is_text:
        try:
            return content.decode("utf-8")
        except UnicodeDecodeError:  # cannot happen for frames wsproto accepted; keep the bytes
            return bytes(content)
    return bytes(content)


def flow_frames(flow: http.HTTPFlow) -> Iterator[tuple[float, float, Direction, str | bytes]]:
    """(wall, elapsed, direction, data) of each message of a finished flow, in order."""
    assert flow.websocket is not None
    start = flow.request.timestamp_start
    for message in flow.websocket.messages:
        direction = Direction.TO_CSMS if message.from_client else Direction.TO_CP
        yield message.timestamp, max(0.0, message.timestamp - start), direction, _message_data(message)


class SessionFilter:
    """Which websocket flows are OCPP: by subprotocol prefix and an optional path regex.

    A flow is taken when its negotiated subprotocol starts with ``subprotocol`` (or, when the
    server negotiated none, when one the client offered does), and its path matches ``path``.
    An empty ``subprotocol`` takes every websocket flow.
    """

    # Plain classes, not dataclasses, in this module: mitmproxy loads it as a script without
    # registering it in sys.modules, and dataclasses need that to read string annotations.
    __slots__ = ("path", "subprotocol")

    def __init__(self, subprotocol: str = "ocpp", path: re.Pattern[str] | None = None) -> None:
        self.subprotocol = subprotocol
        self.path = path

    @classmethod
    def of(cls, subprotocol: str = "ocpp", path: str = "") -> SessionFilter:
        try:
            pattern = re.compile(path) if path else None
        except re.error as exc:
            raise ValueError(f"bad path regex {path!r}: {exc}") from exc
        return cls(subprotocol, pattern)

    def wants(self, flow: http.HTTPFlow) -> bool:
        if self.path is not None and not self.path.search(flow.request.path.partition("?")[0]):
            return False
        if not self.subprotocol:
            return True
        chosen = negotiated_subprotocol(flow)
        if chosen is not None:
            return chosen.startswith(self.subprotocol)
        offered = offered_protocols(flow.request.headers.get("Sec-WebSocket-Protocol"))
        return any(p.startswith(self.subprotocol) for p in offered)


# ----------------------------------------------------------------------------- the addon


class _Live:
    """A websocket flow being recorded. Holds no frames."""

    __slots__ = ("charge_point_id", "max_held", "seq", "session_id", "started_mono")

    def __init__(self, session_id: int, charge_point_id: str, started_mono: float) -> None:
        self.session_id = session_id
        self.charge_point_id = charge_point_id
        self.started_mono = started_mono
        self.seq = 0
        self.max_held = 0


class OcppCapture:
    """Records OCPP websocket flows into a capture database, frame by frame."""

    def __init__(self) -> None:
        self.writer: CaptureWriter | None = None
        self.filter = SessionFilter()
        self.keep_messages = False
        self.live: dict[str, _Live] = {}

    def load(self, loader: Any) -> None:
        loader.add_option("ocpp_db", str | None, None, "Capture database (SQLite) to record OCPP traffic in.")
        loader.add_option(
            "ocpp_subprotocol",
            str,
            "ocpp",
            "Record websocket flows whose subprotocol starts with this (empty: every websocket flow).",
        )
        loader.add_option("ocpp_path", str, "", "Record only websocket flows whose path matches this regex.")
        loader.add_option(
            "ocpp_keep_messages",
            bool,
            False,
            "Keep recorded messages in flow.websocket.messages (memory grows with the connection).",
        )

    def configure(self, updated: set[str]) -> None:
        if "ocpp_subprotocol" in updated or "ocpp_path" in updated:
            try:
                self.filter = SessionFilter.of(ctx.options.ocpp_subprotocol, ctx.options.ocpp_path)
            except ValueError as exc:
                raise exceptions.OptionsError(f"ocpp_path: {exc}") from exc  # type: ignore[no-untyped-call]
        if "ocpp_keep_messages" in updated:
            self.keep_messages = ctx.options.ocpp_keep_messages
        if "ocpp_db" in updated:
            self._close_writer()
            if ctx.options.ocpp_db:
                try:
                    self.writer = CaptureWriter(ctx.options.ocpp_db)
                except CaptureError as exc:
                    raise exceptions.OptionsError(str(exc)) from exc  # type: ignore[no-untyped-call]
                self.writer.start()
                log.info("ocpp-replay: recording OCPP websocket traffic in %s", ctx.options.ocpp_db)
            else:
                log.warning("ocpp-replay: no capture database set (--set ocpp_db=PATH); recording nothing")

    # -- handshakes ----------------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        """A websocket handshake the upstream answered with something other than 101."""
        if flow.response is not None and flow.response.status_code != 101:
            self._refused(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.id in self.live:  # an error under a live websocket: end the session
            self._end(flow, time.time(), {"close_reason": str(flow.error.msg) if flow.error else None})
        elif flow.response is None:
            self._refused(flow)

    def _refused(self, flow: http.HTTPFlow) -> None:
        if self.writer is None or not is_websocket_upgrade(flow) or not self.filter.wants(flow):
            return
        fields = session_fields(flow) | refusal_fields(flow)
        try:
            session_id = self.writer.open_session(flow.request.timestamp_start, **fields)
            self.writer.close_session(session_id, time.time(), closed_by="upstream")
        except Exception:  # recording must never break the traffic it records
            log.exception("ocpp-replay: recording a refused handshake failed")
            return
        log.info(
            "refuse %s session=%d %s",
            escape_controls(fields["charge_point_id"]),
            session_id,
            escape_controls(fields["error"] or ""),
        )

    # -- websocket -----------------------------------------------------------------

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        if self.writer is None or not self.filter.wants(flow):
            return
        fields = session_fields(flow)
        started_wall = flow.request.timestamp_start
        # The handshake's start on the monotonic clock: elapsed counts from it, as in the proxy.
        started_mono = time.monotonic() - max(0.0, time.time() - started_wall)
        try:
            session_id = self.writer.open_session(started_wall, **fields)
        except Exception:
            log.exception("ocpp-replay: recording a new session failed")
            return
        self.live[flow.id] = _Live(session_id, fields["charge_point_id"], started_mono)
        log.info(
            "open   %s session=%d subprotocol=%s from %s",
            escape_controls(fields["charge_point_id"]),
            session_id,
            escape_controls(fields["subprotocol"] or "-"),
            fields["remote_addr"],
        )

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        live = self.live.get(flow.id)
        if live is None or self.writer is None:
            return
        assert flow.websocket is not None
        messages = flow.websocket.messages
        message = messages[-1]
        live.seq += 1
        direction = Direction.TO_CSMS if message.from_client else Direction.TO_CP
        try:
            self.writer.frame(
                live.session_id,
                live.seq,
                message.timestamp,
                time.monotonic() - live.started_mono,
                direction,
                bytes(message.content),
                text=message.is_text,  # decoded in the writer's thread, not on mitmproxy's loop
            )
        except Exception:
            log.exception("ocpp-replay: recording failed for session %d", live.session_id)
        live.max_held = max(live.max_held, len(messages))
        if not self.keep_messages and len(messages) > 1:
            # Safe in mitmproxy 11: the websocket layer holds its own reference to the message
            # it is relaying, and later hooks read the current one at messages[-1].
            del messages[:-1]

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        self._end(flow, flow.websocket.timestamp_end or time.time(), close_fields(flow))

    def _end(self, flow: http.HTTPFlow, ended_wall: float, fields: dict[str, Any]) -> None:
        live = self.live.pop(flow.id, None)
        if live is None or self.writer is None:
            return
        try:
            self.writer.close_session(live.session_id, ended_wall, frames=live.seq, **fields)
        except Exception:
            log.exception("ocpp-replay: recording the end of session %d failed", live.session_id)
        log.info(
            "close  %s session=%d code=%s by=%s frames=%d held=%d",
            escape_controls(live.charge_point_id),
            live.session_id,
            fields.get("close_code"),
            fields.get("closed_by") or "-",
            live.seq,
            live.max_held,
        )

    def done(self) -> None:
        """mitmproxy is shutting down under live connections: end their sessions, flush."""
        now = time.time()
        for flow_id, live in list(self.live.items()):
            del self.live[flow_id]
            if self.writer is not None:
                self.writer.close_session(
                    live.session_id,
                    now,
                    frames=live.seq,
                    closed_by="proxy",
                    close_reason="mitmproxy shut down",
                )
        self._close_writer()

    def _close_writer(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
            log.info(
                "ocpp-replay: capture closed, %d frames written, %d lost",
                writer.stats.frames_written,
                writer.stats.frames_lost,
            )


addons = [OcppCapture()]
