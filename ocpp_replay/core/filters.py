"""Which captured frames a listing shows: ``show``, ``sessions`` and ``tail`` filter with this.

Pure: a :class:`FrameFilter` is built from the command line's options and asked about one frame
at a time. Times are ISO 8601 strings as the capture writes them (UTC, ``...Z``), compared as text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ocpp_replay.core.frames import Direction

__all__ = ["FrameFilter"]


@dataclass(frozen=True, slots=True)
class FrameFilter:
    """Frames of these actions (a CALL's answer carries the CALL's action), in this direction,
    with a timestamp in [since, until], whose raw text contains ``grep``. Empty: every frame."""

    actions: frozenset[str] = frozenset()
    direction: Direction | None = None
    since: str | None = None
    until: str | None = None
    grep: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.actions or self.direction or self.since or self.until or self.grep)

    def matches(self, *, action: str | None, direction: Direction, timestamp: str, raw: str | None) -> bool:
        if self.actions and action not in self.actions:
            return False
        if self.direction is not None and direction is not self.direction:
            return False
        if self.since is not None and timestamp < self.since:
            return False
        if self.until is not None and timestamp > self.until:
            return False
        return self.grep is None or (raw is not None and self.grep in raw)
