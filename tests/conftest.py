"""The capture proxy's tests run on both event loops it meets: asyncio's own, which library
users and the test peers get, and uvloop, which the ``ocpp-replay proxy`` command runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

try:
    import uvloop
except ImportError:  # not installed where it is not a dependency (Windows, PyPy)
    uvloop = None  # type: ignore[assignment]

#: Test modules whose every async test runs once per event loop.
BOTH_LOOPS = {"test_proxy.py", "test_proxy_tls.py", "test_proxy_wire.py"}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name in BOTH_LOOPS and uvloop is not None:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}  # one factory: the test ids stay as they were
