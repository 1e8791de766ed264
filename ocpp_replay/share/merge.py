"""Merging captures: several proxies at one site (one capture each) become one capture.

Sessions of every input are renumbered 1..N in start order (ties: input order, then the
original id), so ids are consistent and a merged capture reads like one proxy's. Timelines need
no change: frame timestamps are absolute UTC and ``elapsed`` is relative to its own session.
Frames, every session column and capture events come along; each merged session gets a
``merged_from`` capture event naming its input file and original id. Runs (replay and compare
results) are not merged: their session ids refer to one input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ocpp_replay.errors import ConfigError
from ocpp_replay.share.exchange import (
    CaptureSink,
    create_output,
    duplicates,
    iter_capture,
    orphan_events,
    select_sessions,
)
from ocpp_replay.store import Store

__all__ = ["MergeResult", "merge_captures", "merge_order"]


@dataclass(frozen=True, slots=True)
class MergeResult:
    sessions: int
    frames: int
    events: int
    id_maps: tuple[dict[int, int], ...]  # per input: original id → merged id


def merge_order(inputs: Sequence[Sequence[tuple[int, str]]]) -> list[dict[int, int]]:
    """New ids for the (id, started_at) sessions of each input: 1..N by start, input, id. Pure."""
    keyed = sorted(
        # a start that is not text (a damaged capture) sorts first rather than failing the merge
        (started_at if isinstance(started_at, str) else "", n, session_id)
        for n, sessions in enumerate(inputs)
        for session_id, started_at in sessions
    )
    maps: list[dict[int, int]] = [{} for _ in inputs]
    for new_id, (_, n, session_id) in enumerate(keyed, 1):
        maps[n][session_id] = new_id
    return maps


def _refuse_duplicates(
    pairs: list[tuple[int, int]], sources: Sequence[str | os.PathLike[str]], maps: list[dict[int, int]]
) -> None:
    if not pairs:
        return
    origin = {new: (Path(sources[n]).name, old) for n, m in enumerate(maps) for old, new in m.items()}

    def name(merged: int) -> str:
        file, old = origin[merged]
        return f"{file} session {old}"

    shown = "; ".join(f"{name(a)} = {name(b)}" for a, b in pairs[:5])
    more = f" and {len(pairs) - 5} more" if len(pairs) > 5 else ""
    raise ConfigError(
        f"the inputs hold {len(pairs)} session{'s' if len(pairs) != 1 else ''} twice (same content): "
        f"{shown}{more}; nothing merged (--allow-duplicates merges them anyway)"
    )


def merge_captures(
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    allow_duplicates: bool = False,
) -> MergeResult:
    """Write the sessions of every capture in ``sources`` into the new capture ``out`` (0600).

    The same recording in two inputs (a copy of a capture, or one merged before) is refused
    unless ``allow_duplicates``: see :func:`ocpp_replay.share.exchange.duplicates`.
    """
    if not sources:
        raise ConfigError("merge needs at least one capture")
    resolved = [Path(s).resolve() for s in sources]
    if Path(out).resolve() in resolved:
        raise ConfigError("--out must be a new file, not one of the inputs")
    if len(set(resolved)) != len(resolved):
        raise ConfigError("the same capture is given twice")
    stores: list[Store] = []
    try:
        for source in sources:  # open (and migrate) every input before writing anything
            stores.append(Store.open(source))
        rows = [select_sessions(store) for store in stores]
        maps = merge_order([[(r["id"], r["started_at"]) for r in input_rows] for input_rows in rows])
        started = {(n, r["id"]): r["started_at"] for n, input_rows in enumerate(rows) for r in input_rows}
        order = sorted((new, n, old) for n, m in enumerate(maps) for old, new in m.items())
        db = create_output(out, force=force)
        try:
            with CaptureSink(db) as sink:
                for new, n, old in order:  # in merged order, so the table reads 1..N
                    sink.id_for = {old: new}.__getitem__
                    for kind, row in iter_capture(stores[n], [old], with_orphans=False):
                        sink.write(kind, row)
                    sink.event(
                        {
                            "session_id": old,
                            "timestamp": started[(n, old)],
                            "kind": "merged_from",
                            "detail": f"{Path(sources[n]).name} session {old}",
                        }
                    )
                    sink.forget(old)  # the next input may have a session with the same id
                for store in stores:
                    for kind, row in orphan_events(store):
                        sink.write(kind, row)
                if not allow_duplicates:
                    sink.flush()
                    # Within one input, sessions alike were recorded (or imported) so on purpose.
                    input_of = {new: n for n, m in enumerate(maps) for new in m.values()}
                    pairs = duplicates(
                        sink.conn, input_of, counts=lambda new, old: input_of[new] != input_of[old]
                    )
                    _refuse_duplicates(pairs, sources, maps)
        except BaseException:
            db.conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{out}{suffix}").unlink(missing_ok=True)
            raise
        db.conn.close()
        result = sink.result
        return MergeResult(result.sessions, result.frames, result.events, tuple(maps))
    finally:
        for store in stores:
            store.close()
