"""The web UI's server: a JSON API over a capture opened read-only, the page, and live updates.

Routes (all GET but the two triage ones)::

    /                                         the page (static/index.html, app.js, app.css)
    /api/info                                 the capture, the rules file
    /api/sessions?cp&since&until&action&q     sessions, newest first, filtered
    /api/suggestions                          charge point ids and actions, for the filters
    /api/sessions/{sid}/frames?after&tail&q   a page of a session's frames (the diagram)
    /api/sessions/{sid}/frames/{seq}          one frame: exact text, laid out, and metadata
    /api/runs  /api/runs/{rid}                runs; one run's difference groups and coverage
    /api/runs/{rid}/differences?session&seq   the differences about one recorded frame
    /api/runs/{rid}/sessions/{sid}/frames[/{seq}]?side   what a backend exchanged in a run
    /api/live?session&after                   server-sent events while the capture grows
    /api/rules                                the rules file's text
    POST /api/triage/preview, /api/triage/save   a difference group as a rule: diff, then write

Nothing is written but the rules file. The page is served with a Content-Security-Policy that
allows no inline script and no other origin, and the page puts traffic text into the document
as text only; POSTs must be JSON from the page's own origin, and the Host header must name
this server (no DNS rebinding onto a capture).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from ocpp_replay import __version__
from ocpp_replay.core.rules import RuleSet, parse_rules
from ocpp_replay.errors import CaptureError, ConfigError, OcppReplayError, UnknownSession
from ocpp_replay.ui import triage
from ocpp_replay.ui.data import CaptureView

__all__ = ["UiServer", "default_rules_path", "is_loopback", "serve"]

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_INTERVAL = 0.2  # seconds between looks at the capture while someone follows it live
#: Seconds between ``changed`` events of one stream: the sessions list is laid out again at most
#: this often (each layout is CPU the browser may share with the proxy), a followed session's
#: frames still come every POLL_INTERVAL.
LIST_INTERVAL = 1.0
KEEPALIVE = 15.0  # seconds between comments on an idle event stream

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATIC = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}


def default_rules_path(db: Path) -> Path:
    """Where the UI writes rules unless told: beside the capture, ``site.db`` -> ``site.rules.toml``."""
    return db.with_name(db.stem + ".rules.toml")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _static(name: str) -> bytes:
    return (resources.files("ocpp_replay.ui") / "static" / name).read_bytes()


def _int(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name} must be a number"})) from None


class _Watcher:
    """Looks at the capture's data_version while someone listens; wakes listeners on a change."""

    def __init__(self, server: UiServer) -> None:
        self.server = server
        self.version = -1
        self.listeners = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        #: Set when the UI stops: ends the watch, and wakes a stream that waits out LIST_INTERVAL.
        self.closed = asyncio.Event()

    @property
    def closing(self) -> bool:
        return self.closed.is_set()

    async def run(self) -> None:
        view = self.server.watch_view
        while self.listeners and not self.closing:
            try:
                version = await self.server.call(view.data_version)
            except OcppReplayError:
                version = self.version
            except Exception as exc:  # the file went away, a lock: try again
                log.debug("data_version: %s", exc)
                version = self.version
            if version != self.version:
                self.version = version
                self.changed.set()
                self.changed = asyncio.Event()
            await asyncio.sleep(POLL_INTERVAL)
        self.task = None

    def join(self) -> asyncio.Event:
        self.listeners += 1
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())
        return self.changed

    def leave(self) -> None:
        self.listeners -= 1


class UiServer:
    """The UI over one capture: ``app`` is the aiohttp application; ``start``/``stop`` serve it."""

    def __init__(
        self, db: str | Path, *, rules: str | Path | None = None, host: str = "127.0.0.1", port: int = 8800
    ):
        self.db = Path(db)
        self.rules_path = Path(rules) if rules is not None else default_rules_path(self.db)
        self.host = host
        self.port = port
        self.view = CaptureView(self.db)  # raises CaptureError now rather than on the first page
        self.watch_view = CaptureView(self.db)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ocpp-ui")
        self._watch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocpp-ui-watch")
        self.watcher = _Watcher(self)
        self.app = self._make_app()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(f"cannot serve the UI on {self.host}:{self.port}: {exc.strerror}") from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}/"
        return self.url

    async def stop(self) -> None:
        self.watcher.closed.set()
        self.watcher.changed.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._watch_pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> UiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking read in the UI's threads (the watcher's own, apart from the pages')."""
        loop = asyncio.get_running_loop()
        pool = self._watch_pool if getattr(fn, "__self__", None) is self.watch_view else self._pool
        return await loop.run_in_executor(pool, lambda: fn(*args, **kwargs))

    # ------------------------------------------------------------------ app

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        r = app.router
        r.add_get("/", self._index)
        r.add_get("/static/{name}", self._asset)
        r.add_get("/favicon.ico", self._no_icon)
        r.add_get("/api/info", self._info)
        r.add_get("/api/sessions", self._sessions)
        r.add_get("/api/suggestions", self._suggestions)
        r.add_get("/api/sessions/{sid:\\d+}/frames", self._frames)
        r.add_get("/api/sessions/{sid:\\d+}/frames/{seq:\\d+}", self._frame)
        r.add_get("/api/runs", self._runs)
        r.add_get("/api/runs/{rid:\\d+}", self._run)
        r.add_get("/api/runs/{rid:\\d+}/differences", self._differences)
        r.add_get("/api/runs/{rid:\\d+}/sessions/{sid:\\d+}/frames", self._run_frames)
        r.add_get("/api/runs/{rid:\\d+}/sessions/{sid:\\d+}/frames/{seq:\\d+}", self._run_frame)
        r.add_get("/api/live", self._live)
        r.add_get("/api/rules", self._rules)
        r.add_post("/api/triage/preview", self._preview)
        r.add_post("/api/triage/save", self._save)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        self.watcher.closed.set()
        self.watcher.changed.set()

    def _allowed_host(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if name in ("localhost", "127.0.0.1", "::1", self.host.strip("[]").lower()):
            return True
        # bound to every address: any name reaches it, as the warning at start-up said
        return self.host in ("0.0.0.0", "::", "")

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self._allowed_host(request.host):
            return web.json_response({"error": "unknown Host"}, status=421)
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if request.content_type != "application/json" or (
                origin is not None and origin.split("://", 1)[-1] != request.host
            ):
                return web.json_response({"error": "cross-origin or non-JSON request refused"}, status=403)
        try:
            response = await handler(request)
        except UnknownSession as exc:
            response = web.json_response({"error": str(exc)}, status=404)
        except ConfigError as exc:
            response = web.json_response({"error": str(exc)}, status=400)
        except CaptureError as exc:
            response = web.json_response({"error": str(exc)}, status=503)
        except web.HTTPException as exc:
            if exc.status >= 400:
                response = web.json_response({"error": exc.reason}, status=exc.status)
            else:
                raise
        if not response.prepared:
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "no-referrer"
            response.headers["X-Frame-Options"] = "DENY"
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    # ------------------------------------------------------------------ pages

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8")

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=STATIC[name], charset="utf-8")

    async def _no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"db": str(self.db), "rules": str(self.rules_path), "version": __version__, "read_only": True}
        )

    async def _sessions(self, request: web.Request) -> web.Response:
        q = request.query
        data = await self.call(
            self.view.sessions,
            charge_point=q.get("cp", ""),
            since=q.get("since", ""),
            until=q.get("until", ""),
            action=q.get("action", ""),
            expression=q.get("q", ""),
            limit=_int(request, "limit", 200),
            offset=_int(request, "offset", 0),
        )
        return web.json_response(data)

    async def _suggestions(self, request: web.Request) -> web.Response:
        return web.json_response(await self.call(self.view.suggestions))

    async def _frames(self, request: web.Request) -> web.Response:
        data = await self.call(
            self.view.frames,
            int(request.match_info["sid"]),
            after=_int(request, "after", -1),
            limit=_int(request, "limit", 500),
            tail=_int(request, "tail", 0),
            expression=request.query.get("q", ""),
        )
        return web.json_response(data)

    async def _frame(self, request: web.Request) -> web.Response:
        data = await self.call(
            self.view.frame, int(request.match_info["sid"]), int(request.match_info["seq"])
        )
        return web.json_response(data)

    async def _runs(self, request: web.Request) -> web.Response:
        return web.json_response(await self.call(self.view.runs))

    def _load_rules(self) -> tuple[str, RuleSet | None, str | None]:
        try:
            text = self.rules_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return "", None, None
        except (OSError, UnicodeDecodeError) as exc:
            return "", None, f"cannot read {self.rules_path}: {exc}"
        try:
            return text, parse_rules(text, source=str(self.rules_path)), None
        except ConfigError as exc:
            return text, None, str(exc)

    async def _run(self, request: web.Request) -> web.Response:
        _text, rules, _error = await self.call(self._load_rules)
        data = await self.call(self.view.run, int(request.match_info["rid"]), rules)
        return web.json_response({**data, "rules": str(self.rules_path), "db": str(self.db)})

    async def _differences(self, request: web.Request) -> web.Response:
        seq = request.query.get("seq", "")
        data = await self.call(
            self.view.differences_at,
            int(request.match_info["rid"]),
            _int(request, "session", 0),
            int(seq) if seq.isdigit() else None,
        )
        return web.json_response(data)

    def _side(self, request: web.Request) -> str:
        side = request.query.get("side", "target")
        if side not in ("target", "baseline", "candidate"):
            raise ConfigError("side must be target, baseline or candidate")
        return side

    async def _run_frames(self, request: web.Request) -> web.Response:
        m = request.match_info
        data = await self.call(self.view.run_frames, int(m["rid"]), self._side(request), int(m["sid"]))
        return web.json_response(data)

    async def _run_frame(self, request: web.Request) -> web.Response:
        m = request.match_info
        data = await self.call(
            self.view.run_frame, int(m["rid"]), self._side(request), int(m["sid"]), int(m["seq"])
        )
        return web.json_response(data)

    async def _rules(self, request: web.Request) -> web.Response:
        text, _rules, error = await self.call(self._load_rules)
        return web.json_response({"path": str(self.rules_path), "text": text, "error": error})

    async def _group(self, request: web.Request) -> tuple[int, dict[str, Any], dict[str, Any]]:
        try:
            body = await request.json()
        except ValueError:
            raise ConfigError("the request is not JSON") from None
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("run"), int)
            or not isinstance(body.get("key"), str)
        ):
            raise ConfigError("expected {run, key}")
        group = await self.call(self.view.group, body["run"], body["key"])
        return body["run"], group, body

    async def _preview(self, request: web.Request) -> web.Response:
        run_id, group, _body = await self._group(request)
        return web.json_response(await self.call(triage.preview, self.rules_path, group, run_id=run_id))

    async def _save(self, request: web.Request) -> web.Response:
        run_id, group, body = await self._group(request)
        base = body.get("base")
        if not isinstance(base, str):
            raise ConfigError("save needs the base of the preview it confirms")
        saved = await self.call(triage.save, self.rules_path, group, run_id=run_id, base=base)
        log.info("rules file %s: added a rule for run %s", self.rules_path, run_id)
        return web.json_response(saved)

    # ------------------------------------------------------------------ live

    async def _live(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``changed`` (the capture moved on; the sessions list refetches),
        and with ``session``: ``frames`` (that session's new frames, as the diagram wants them)."""
        session = _int(request, "session", 0)
        after = _int(request, "after", -1)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
            }
        )
        await resp.prepare(request)
        changed = self.watcher.join()
        last_ended: str | None = None
        try:
            await resp.write(b": live\n\n")
            while not self.watcher.closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(KEEPALIVE):
                        await changed.wait()
                if self.watcher.closing:
                    break
                if not changed.is_set():
                    await resp.write(b": keepalive\n\n")
                    continue
                changed = self.watcher.changed
                if session:
                    while True:
                        page = await self.call(self.view.frames, session, after=after, limit=500)
                        ended = page["session"]["ended_at"]
                        if page["frames"] or ended != last_ended:
                            await resp.write(_event("frames", page))
                        if page["frames"]:
                            after = page["frames"][-1]["seq"]
                        last_ended = ended
                        if not page["more"]:
                            break
                else:
                    await resp.write(_event("changed", {"version": self.watcher.version}))
                    with contextlib.suppress(TimeoutError):  # changes meanwhile: one event after it
                        async with asyncio.timeout(LIST_INTERVAL):
                            await self.watcher.closed.wait()
        except ConnectionResetError:
            pass
        except OcppReplayError as exc:
            with contextlib.suppress(ConnectionResetError):
                await resp.write(_event("problem", {"error": str(exc)}))
        finally:
            self.watcher.leave()
        return resp


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=True)}\n\n".encode()


async def serve(server: UiServer, ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; READY gets the URL once it listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await server.start()
        if ready is not None:
            ready(url)
        await stop.wait()
    finally:
        await server.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
