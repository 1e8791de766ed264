"""The capture store: one SQLite file per capture (docs/capture-format.md).

``schema`` (tables, migrations, opening a file), ``writer`` (the batched off-loop writer the
proxy and the mitmproxy addon feed), ``reader`` (sessions and frames), ``runs`` (replay,
compare and shadow results), ``files`` (owner-only files for exports and reports),
``backup`` (an online copy of a capture in use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ocpp_replay.store.reader import FrameRecord, SessionInfo, Store, session_filter
    from ocpp_replay.store.runs import list_runs, load_run, store_run
    from ocpp_replay.store.schema import migrations, open_database, utc_iso
    from ocpp_replay.store.writer import CaptureWriter, WriterLock, WriterStats

#: Where each public name lives. Imported on first use: reading a capture (``ocpp-replay
#: sessions``) need not load the writer's websocket scanner or the runs' diff engine.
_HOME = {
    "FrameRecord": "reader",
    "SessionInfo": "reader",
    "Store": "reader",
    "session_filter": "reader",
    "list_runs": "runs",
    "load_run": "runs",
    "store_run": "runs",
    "migrations": "schema",
    "open_database": "schema",
    "utc_iso": "schema",
    "CaptureWriter": "writer",
    "WriterLock": "writer",
    "WriterStats": "writer",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CaptureWriter",
    "FrameRecord",
    "SessionInfo",
    "Store",
    "WriterLock",
    "WriterStats",
    "list_runs",
    "load_run",
    "migrations",
    "open_database",
    "session_filter",
    "store_run",
    "utc_iso",
]
