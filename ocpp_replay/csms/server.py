"""The reference CSMS on aiohttp: OCPP websockets plus a small HTTP control API.

Edge layer over :mod:`ocpp_replay.csms.core`. Per connection one reader (the aiohttp handler)
and one writer task that sends backend commands one at a time: a command waits for the
charger's answer (or ``call_timeout``) before the next one goes out. Nothing blocks the loop.

Control API (JSON)::

    GET  /api/chargers                      summaries of every charger seen
    GET  /api/chargers/{id}                 one charger, with its transactions
    GET  /api/transactions                  every transaction
    POST /api/chargers/{id}/{command}       send a command, answer when the charger answers
         command: reset, remote-stop, remote-start, get-configuration, change-configuration,
                  trigger, change-availability, unlock, set-charging-profile,
                  clear-charging-profile, data-transfer, call (body: {"action", "payload"})
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import signal
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import unquote

from aiohttp import WSMsgType, web

from ocpp_replay.core.frames import Call, CallError, CallResult, dump, parse
from ocpp_replay.csms.config import PROFILES, CsmsConfig
from ocpp_replay.csms.core import Backend, ChargerSession, Command, Transaction
from ocpp_replay.errors import ConfigError, InvalidFrame, OcppReplayError

__all__ = ["SUBPROTOCOLS", "CommandFailed", "ReferenceCsms", "run_csms", "serve_forever"]

log = logging.getLogger(__name__)

#: What the CSMS speaks. The charger offers subprotocols in its order of preference and the CSMS
#: takes the first of them it supports: a charger offering "ocpp2.1, ocpp2.0.1" gets 2.1.
SUBPROTOCOLS: Final = ("ocpp1.6", "ocpp2.0.1", "ocpp2.0", "ocpp2.1")
_VERSION_OF: Final = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1", "ocpp2.0": "2.0.1", "ocpp2.1": "2.1"}


class CommandFailed(OcppReplayError):
    """A backend command could not be delivered or was not answered in time."""


def _printable(text: str, limit: int = 2000) -> str:
    """Frame text safe for a log line: control characters escaped, length capped."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out + ("…" if len(text) > limit else "")


@dataclass(slots=True)
class _Outstanding:
    """The one backend CALL a charger has not answered yet."""

    uid: str
    command: Command
    waiter: asyncio.Future[CallResult | CallError] | None
    answered: asyncio.Future[None]


class _Connection:
    """One charger websocket: sends serialised, one outstanding backend CALL at a time.

    An answer is delivered by the reader the moment it arrives (:meth:`answer`), not by the
    writer: a charger that answers and closes at once still gets its answer to the caller,
    although the writer is cancelled with the connection before it could run again.
    """

    def __init__(self, ws: web.WebSocketResponse, session: ChargerSession, call_timeout: float) -> None:
        self.ws = ws
        self.session = session
        self.call_timeout = call_timeout
        self.queue: asyncio.Queue[tuple[Command, asyncio.Future[CallResult | CallError] | None]] = (
            asyncio.Queue()
        )
        self.outstanding: _Outstanding | None = None
        self._send_lock = asyncio.Lock()

    @property
    def commands_ahead(self) -> int:
        """Commands that go out before one queued now: the queue and the one awaiting its answer."""
        return self.queue.qsize() + (self.outstanding is not None)

    async def send(self, text: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s <- %s", self.session.record.id, _printable(text))
        async with self._send_lock:
            await self.ws.send_str(text)

    async def writer(self) -> None:
        loop = asyncio.get_running_loop()
        charger_id = self.session.record.id
        while True:
            command, waiter = await self.queue.get()
            out = _Outstanding(str(uuid.uuid4()), command, waiter, loop.create_future())
            self.outstanding = out
            try:
                log.info("%s <- %s (%s)", charger_id, command.action, command.reason or "on request")
                await self.send(dump(Call(out.uid, command.action, command.payload)))
                async with asyncio.timeout(self.call_timeout):
                    await out.answered
            except TimeoutError:
                log.info("%s did not answer %s in %.0f s", charger_id, command.action, self.call_timeout)
                _fail(
                    waiter,
                    f"no answer to {command.action} from {charger_id} in {self.call_timeout:.0f} s",
                )
            except ConnectionError as exc:
                _fail(waiter, f"connection to {charger_id} lost: {exc}")
            finally:
                self.outstanding = None

    def answer(self, frame: CallResult | CallError) -> None:
        out = self.outstanding
        if out is None or out.uid != frame.unique_id or out.answered.done():
            log.info("%s answered unknown call %s", self.session.record.id, _printable(frame.unique_id, 80))
            return
        out.answered.set_result(None)
        self.session.handle_answer(out.command, frame)
        outcome = frame.error_code if isinstance(frame, CallError) else frame.payload.get("status", "ok")
        log.info("%s -> %s answer: %s", self.session.record.id, out.command.action, _printable(str(outcome)))
        if out.waiter is not None and not out.waiter.done():
            out.waiter.set_result(frame)

    def fail_waiting(self) -> None:
        """The charger disconnected: fail the command awaiting its answer and every queued one."""
        charger_id = self.session.record.id
        out = self.outstanding
        if out is not None:
            _fail(out.waiter, f"{charger_id} disconnected before answering {out.command.action}")
        while not self.queue.empty():
            command, waiter = self.queue.get_nowait()
            _fail(waiter, f"{charger_id} disconnected before {command.action} was sent")


def _fail(waiter: asyncio.Future[CallResult | CallError] | None, message: str) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_exception(CommandFailed(message))


class ReferenceCsms:
    """A small but real OCPP 1.6 / 2.0.1 / 2.1 backend. Use ``async with ReferenceCsms() as csms:``.

    ``profile`` is "v1" or "v2" (see :data:`ocpp_replay.csms.config.PROFILES`); other keyword
    arguments are :class:`CsmsConfig` fields, or pass a whole ``config``.
    """

    def __init__(self, profile: str = "v1", *, config: CsmsConfig | None = None, **options: Any) -> None:
        self.config = config if config is not None else CsmsConfig(profile=profile, **options)
        self.backend = Backend(self.config)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._connections: dict[str, _Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on HOST:PORT (0: any free port). Returns the websocket URL, ws://HOST:PORT/ocpp."""
        app = web.Application()
        app.router.add_get("/api/chargers", self._api_chargers)
        app.router.add_get("/api/transactions", self._api_transactions)
        app.router.add_get("/api/chargers/{id}", self._api_charger)
        app.router.add_post("/api/chargers/{id}/{command}", self._api_command)
        app.router.add_get("/{path:.+}", self._websocket)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=4096)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1] if sockets else port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"ws://{shown}:{bound_port}/ocpp"
        log.info("reference CSMS (profile %s) listening on %s", self.config.profile, self.url)
        return self.url

    async def stop(self) -> None:
        """Close every charger connection and stop listening."""
        for conn in list(self._connections.values()):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"CSMS shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def connected(self) -> list[str]:
        return sorted(self._connections)

    # -- on-request commands ----------------------------------------------------------------

    async def send_command(
        self,
        charger_id: str,
        name: str,
        params: dict[str, Any] | None = None,
        *,
        answer_within: float | None = None,
    ) -> CallResult | CallError:
        """Send a named command (see core.COMMANDS) and return the charger's answer.

        Raises ConfigError for bad parameters, CommandFailed if the charger is not connected,
        disconnects or does not answer in time.
        """
        conn = self._connections.get(charger_id)
        if conn is None:
            raise CommandFailed(f"charger {charger_id!r} is not connected")
        command = conn.session.command(name, params or {})
        waiter: asyncio.Future[CallResult | CallError] = asyncio.get_running_loop().create_future()
        limit = answer_within
        if limit is None:  # call_timeout for each command that goes out before this one, and this one
            limit = self.config.call_timeout * (conn.commands_ahead + 1)
        conn.queue.put_nowait((command, waiter))
        try:
            async with asyncio.timeout(limit):
                return await waiter
        except TimeoutError:
            waiter.cancel()
            raise CommandFailed(f"no answer to {command.action} from {charger_id} in {limit:.0f} s") from None

    # -- websocket --------------------------------------------------------------------------

    def _authorized(self, request: web.Request, charger_id: str) -> bool:
        if self.config.password is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == charger_id and password == self.config.password

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        charger_id = unquote(request.match_info["path"].rstrip("/").rpartition("/")[2])
        if not charger_id:
            raise web.HTTPNotFound(text="connect to /<anything>/<chargePointId>\n")
        if not self._authorized(request, charger_id):
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="ocpp"'})
        ws = web.WebSocketResponse(protocols=SUBPROTOCOLS, autoping=True)
        ready = ws.can_prepare(request)
        if not ready.ok:
            raise web.HTTPBadRequest(text="this is an OCPP websocket endpoint\n")
        offered = request.headers.get("Sec-WebSocket-Protocol")
        if offered and ready.protocol is None:
            log.info("%s offered only unsupported subprotocols %s", charger_id, _printable(offered, 200))
            raise web.HTTPBadRequest(text=f"supported subprotocols: {', '.join(SUBPROTOCOLS)}\n")
        version = _VERSION_OF.get(ready.protocol or "ocpp1.6", "1.6")
        await ws.prepare(request)
        old = self._connections.get(charger_id)
        if old is not None:
            log.info("%s reconnected; closing its previous connection", charger_id)
            await old.ws.close(code=1000, message=b"replaced by a new connection")
        session = self.backend.open_session(charger_id, version)
        conn = _Connection(ws, session, self.config.call_timeout)
        self._connections[charger_id] = conn
        writer = asyncio.create_task(conn.writer(), name=f"csms-writer-{charger_id}")
        self._tasks.add(writer)
        writer.add_done_callback(self._tasks.discard)
        log.info("%s connected (OCPP %s)", charger_id, version)
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._receive(conn, msg.data)
                elif msg.type is WSMsgType.ERROR:
                    log.info("%s websocket error: %s", charger_id, ws.exception())
        finally:
            conn.fail_waiting()  # before the writer goes: cancelling it forgets what it awaits
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if self._connections.get(charger_id) is conn:
                del self._connections[charger_id]
                session.disconnected()
            log.info("%s disconnected", charger_id)
        return ws

    async def _receive(self, conn: _Connection, data: str | bytes) -> None:
        charger_id = conn.session.record.id
        if log.isEnabledFor(logging.DEBUG):
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            log.debug("%s -> %s", charger_id, _printable(text))
        try:
            frame = parse(data)
        except InvalidFrame as exc:
            log.info("%s sent a frame that is not OCPP-J: %s", charger_id, exc.reason)
            error = conn.session.handle_invalid(data)
            if error is not None:
                await conn.send(dump(error))
            return
        if isinstance(frame, Call):
            handled = conn.session.handle_call(frame, datetime.now(UTC))
            await conn.send(dump(handled.reply))
            for command in handled.commands:
                conn.queue.put_nowait((command, None))
        else:
            conn.answer(frame)

    # -- control API ------------------------------------------------------------------------

    async def _api_chargers(self, request: web.Request) -> web.Response:
        return web.json_response([r.summary() for r in self.backend.chargers.values()])

    async def _api_charger(self, request: web.Request) -> web.Response:
        record = self.backend.chargers.get(request.match_info["id"])
        if record is None:
            raise web.HTTPNotFound(text="unknown charger\n")
        txs = [_tx_json(t) for t in self.backend.transactions.values() if t.charger_id == record.id]
        return web.json_response({**record.summary(), "transactions": txs})

    async def _api_transactions(self, request: web.Request) -> web.Response:
        return web.json_response([_tx_json(t) for t in self.backend.transactions.values()])

    async def _api_command(self, request: web.Request) -> web.Response:
        charger_id, name = request.match_info["id"], request.match_info["command"]
        params: dict[str, Any] = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                raise web.HTTPBadRequest(text="body must be a JSON object\n") from None
            if not isinstance(body, dict):
                raise web.HTTPBadRequest(text="body must be a JSON object\n")
            params = body
        if charger_id not in self._connections:
            raise web.HTTPNotFound(text=f"charger {charger_id} is not connected\n")
        try:
            answer = await self.send_command(charger_id, name, params)
        except ConfigError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        except CommandFailed as exc:
            raise web.HTTPGatewayTimeout(text=f"{exc}\n") from None
        if isinstance(answer, CallError):
            body_out: dict[str, Any] = {
                "error": answer.error_code,
                "description": answer.error_description,
                "details": answer.error_details,
            }
        else:
            body_out = {"answer": answer.payload}
        return web.json_response(body_out)


def _tx_json(tx: Transaction) -> dict[str, Any]:
    return asdict(tx)


async def serve_forever(
    host: str = "127.0.0.1",
    port: int = 9000,
    profile: str = "v1",
    *,
    ready: Callable[[str], None] | None = None,
    **options: Any,
) -> None:
    """Run the reference CSMS until cancelled or sent SIGTERM. ``ready`` gets the URL once listening.

    SIGTERM stops it cleanly (a container's ``docker stop``: as process 1 it would otherwise
    ignore the signal and be killed after the grace period).
    Options are :class:`CsmsConfig` fields (remote_stop_after, exercise, password, ...).
    Raises ConfigError for a bad option or an address that cannot be bound.
    """
    csms = ReferenceCsms(profile, **options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before listening: a SIGTERM while it starts (it logs "listening" first) stops it cleanly too.
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        url = await csms.start(host, port)
        try:
            if ready is not None:
                ready(url)
            await stop.wait()
        finally:
            await csms.stop()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


def run_csms(host: str = "127.0.0.1", port: int = 9000, profile: str = "v1", **options: Any) -> int:
    """The ``ocpp-replay csms`` command: serve until Ctrl-C, print where. Returns the exit code.

    Raises ConfigError (the CLI prints it on one line) for a bad option or address.
    """
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    info = PROFILES[profile].description if profile in PROFILES else ""

    def announce(url: str) -> None:  # soft_wrap: one line each in a log, however wide
        console.print(
            f"reference CSMS, profile [bold]{profile}[/] ({info}), listening on [bold]{url}[/]",
            soft_wrap=True,
        )
        api = f"http://{url.removeprefix('ws://').removesuffix('/ocpp')}/api/chargers"
        console.print(f"control API on {api}", soft_wrap=True)
        console.print("Ctrl-C to stop")

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(host, port, profile, ready=announce, **options))
    return 0
