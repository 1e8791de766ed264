"""A websocket server of a chosen behaviour on loopback, for tests that need one (aiohttp; the
independent OCPP peers are in peers.py and replay_peers.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], path: str = "/{tail:.*}", **runner: Any
) -> AsyncIterator[int]:
    """Serve ``handler`` for GET ``path`` on 127.0.0.1 and an ephemeral port (yielded)."""
    app = web.Application()
    app.router.add_get(path, handler)
    app_runner = web.AppRunner(app, **runner)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await app_runner.cleanup()
