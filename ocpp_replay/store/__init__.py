"""The capture store: one SQLite file per capture (docs/capture-format.md).

``schema`` (tables, migrations, opening a file), ``writer`` (the batched off-loop writer the
proxy and the mitmproxy addon feed), ``reader`` (sessions and frames), ``runs`` (replay,
compare and shadow results), ``files`` (owner-only files for exports and reports).
"""

from ocpp_replay.store.reader import FrameRecord, SessionInfo, Store, session_filter
from ocpp_replay.store.runs import list_runs, load_run, store_run
from ocpp_replay.store.schema import migrations, open_database, utc_iso
from ocpp_replay.store.writer import CaptureWriter, WriterLock, WriterStats

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
