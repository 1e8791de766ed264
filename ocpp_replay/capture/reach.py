"""Fail fast when a ws:// or wss:// endpoint does not accept TCP connections.

The proxy (its upstream), the replay (its target) and the simulator (its CSMS) all check this
before they start, so a typo in a URL is one clear line at once instead of minutes of retries.
The proxy and the replay also raise their limit on open files (:func:`raise_open_file_limit`):
a connection is a file, and the usual soft limit is 1,024.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from urllib.parse import urlsplit

from ocpp_replay.errors import ConfigError, UpstreamError


def ws_address(url: str, what: str = "target") -> tuple[str, int]:
    """(host, port) of a ws:// or wss:// URL. Raises ConfigError for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port out of range, a broken IPv6 literal
        raise ConfigError(f"{what} {url!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"{what} must be a ws:// or wss:// URL, not {url!r}")
    return parts.hostname, port or (443 if parts.scheme == "wss" else 80)


async def probe(url: str, connect_timeout: float, what: str = "target") -> None:
    """Open and close one TCP connection to URL's host and port. Raises UpstreamError."""
    host, port = ws_address(url, what)
    try:
        async with asyncio.timeout(connect_timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {connect_timeout:g} s"
        else:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc) or type(exc).__name__
        raise UpstreamError(f"{what} {host}:{port} unreachable: {reason}") from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not on this platform (Windows): nothing to raise
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # refused (a container's seccomp, macOS's OPEN_MAX): keep it
            pass
    return int(soft)
