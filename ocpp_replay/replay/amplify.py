"""Amplification: replay each selected session N times as N distinct chargers (``replay --amplify N``).

Copy ``k`` (1..N) of a session is the recorded session with

- charge point id ``<id>-x<k>`` (the same suffix for every session of one charger, so a charger's
  reconnects stay one charger, in order), also in the URL path it dials and its Basic auth user;
- idTags, idTokens and serial numbers replaced by keyed pseudonyms (:class:`~ocpp_replay.share.redact.
  Redactor`'s field rules, one key per copy): the same recorded value gives the same pseudonym within
  a copy (an idTag's Authorize, StartTransaction and StopTransaction stay linked) and a different
  one in every other copy; the same copy number gives the same identities on every run;
- a session id ``k * stride + <recorded id>`` (``stride``, a power of ten, is above every session id
  of the capture), so that a
  report groups the copies by their original: :func:`original_session`;
- a start moved by ``spread * (k - 1) / N`` seconds, so that copies do not fire in lockstep.

Transaction ids and other values the backend assigns are correlated per copy by the replay itself,
since every copy is its own session. A streamed replay makes the copies' rows first (:class:`Copies`,
from the sessions' rows only: :func:`copies_of`) and each copy's frames when it loads the copy;
:func:`amplify_sessions` makes them all in memory (``--rewrite`` needs every plan at once). Pure
functions apart from :func:`copies_of` and :func:`load_amplified`, which read the capture.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote

from ocpp_replay.errors import ReplayError
from ocpp_replay.share.redact import Redactor
from ocpp_replay.store import FrameRecord, SessionInfo, Store

if TYPE_CHECKING:
    from ocpp_replay.replay.runner import Selection

__all__ = ["AMPLIFY_KEY", "Copies", "amplify_sessions", "copy_charge_point", "original_session"]

#: The key the copies' pseudonyms derive from: fixed, so identities are stable across runs.
AMPLIFY_KEY = b"ocpp-replay amplify v1"

Loaded = tuple[SessionInfo, Sequence[FrameRecord]]


def copy_charge_point(cp_id: str, copy: int) -> str:
    """The charge point id of copy ``copy`` (1-based) of charger ``cp_id``."""
    return f"{cp_id}-x{copy}"


def _renamed(path: str | None, cp_id: str, copy_id: str) -> str | None:
    """A recorded path (or path suffix) with its last segment, the charger's id, the copy's."""
    if path is None:
        return None
    quoted = quote(cp_id, safe="")
    for old in (quoted, cp_id):
        if path.endswith("/" + old):
            return path[: -len(old)] + quote(copy_id, safe="")
    return None  # not where a charger's id is: the replay dials the copy's id instead


def _stride(highest_id: int) -> int:
    """A power of ten above every session id: copy ``k`` of session 7 is ``k0..07``, readable."""
    return int(10 ** len(str(max(highest_id, 1))))


def original_session(session_id: int, stride: int) -> tuple[int, int]:
    """(recorded session id, copy number) of an amplified session id."""
    return session_id % stride, session_id // stride


def _shift(iso: str | None, seconds: float) -> str | None:
    if iso is None or seconds == 0:
        return iso
    try:
        t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReplayError(f"unreadable session time {iso!r}") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    text = (t + timedelta(seconds=seconds)).astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Copies:
    """How the sessions of a capture are amplified: ``copies`` copies of each, their starts
    spread over ``spread`` seconds, session ids ``k * stride + <recorded id>``. A streamed
    replay copies each session as it loads it (:meth:`info`, :meth:`frames`); every process
    makes the same copies."""

    copies: int
    spread: float
    stride: int
    key: bytes = AMPLIFY_KEY

    @classmethod
    def checked(
        cls,
        copies: int,
        spread: float,
        charge_points: Collection[str],
        known_charge_points: Collection[str] = (),
        highest_session_id: int = 0,
        key: bytes = AMPLIFY_KEY,
    ) -> Copies:
        """Copies of the sessions of ``charge_points``; a copy's charge point id equal to one of
        ``known_charge_points`` (every one in the capture) is a
        :class:`~ocpp_replay.errors.ReplayError` (two chargers would share an identity)."""
        if copies < 1:
            raise ReplayError(f"--amplify must be at least 1, not {copies}")
        if not spread >= 0:
            raise ReplayError(f"--amplify-spread must not be negative, not {spread}")
        known = set(known_charge_points) | set(charge_points)
        for cp in sorted(set(charge_points)):
            for k in range(1, copies + 1):
                copy_id = copy_charge_point(cp, k)
                if copy_id in known:
                    raise ReplayError(
                        f"--amplify {copies}: copy {k} of charger {cp!r} would be {copy_id!r}, "
                        "a charge point id already in the capture"
                    )
        return cls(copies, spread, _stride(highest_session_id), key)

    def offset(self, copy: int) -> float:
        """Seconds copy ``copy`` starts after the recorded session."""
        return self.spread * (copy - 1) / self.copies

    def info(self, info: SessionInfo, copy: int) -> SessionInfo:
        """The session row of copy ``copy`` (1-based) of a recorded session."""
        cp = info.charge_point_id
        copy_id = copy_charge_point(cp, copy)
        offset = self.offset(copy)
        return replace(
            info,
            id=copy * self.stride + info.id,
            charge_point_id=copy_id,
            path=_renamed(info.path, cp, copy_id),
            path_suffix=_renamed(info.path_suffix, cp, copy_id),
            auth_user=copy_id if info.auth_user == cp else info.auth_user,
            started_at=_shift(info.started_at, offset) or info.started_at,
            ended_at=_shift(info.ended_at, offset),
        )

    def frames(self, frames: Iterable[FrameRecord], copy: int, session_id: int) -> list[FrameRecord]:
        """The frames of copy ``copy`` (session ``session_id``): identities replaced."""
        redactor = _redactor(self.key, copy)
        return [
            replace(f, session_id=session_id, raw=redactor.text(f.raw) if f.raw is not None else None)
            for f in frames
        ]


@functools.lru_cache(maxsize=256)
def _redactor(key: bytes, copy: int) -> Redactor:
    return Redactor(hashlib.sha256(key + b"/copy/%d" % copy).digest(), detect=())


def amplify_sessions(
    sessions: Sequence[Loaded],
    copies: int,
    *,
    spread: float = 0.0,
    known_charge_points: Collection[str] = (),
    highest_session_id: int = 0,
    key: bytes = AMPLIFY_KEY,
) -> tuple[list[Loaded], int]:
    """``copies`` copies of every session (see the module's doc) and the id stride, in memory.

    ``known_charge_points`` are every charge point id in the capture: a copy's id equal to one of
    them is a :class:`~ocpp_replay.errors.ReplayError` (two chargers would share an identity).
    ``highest_session_id`` (the capture's) keeps the copies' session ids apart from every recorded one.
    """
    plan = Copies.checked(
        copies,
        spread,
        [info.charge_point_id for info, _ in sessions],
        known_charge_points,
        max([highest_session_id, *(info.id for info, _ in sessions)]),
        key,
    )
    out: list[Loaded] = []
    for k in range(1, copies + 1):
        for info, frames in sessions:
            new_info = plan.info(info, k)
            out.append((new_info, plan.frames(frames, k, new_info.id)))
    return out, plan.stride


def copies_of(store: Store, selection: Selection, copies: int, spread: float) -> Copies:
    """The copies of the selected sessions, checked against every charger id and session id in
    the capture (blocking: the sessions' rows only)."""
    from ocpp_replay.replay.runner import selected_sessions

    recorded = store.sessions()
    return Copies.checked(
        copies,
        spread,
        [info.charge_point_id for info in selected_sessions(store, selection)],
        {info.charge_point_id for info in recorded},
        max((info.id for info in recorded), default=0),
    )


def load_amplified(store: Store, selection: Selection, copies: int, spread: float) -> list[Loaded]:
    """The selected sessions of a capture, amplified; copies checked against every charger id
    and session id in the capture (``replay --amplify``, the locustfile's ``--amplify``)."""
    from ocpp_replay.replay.runner import load_sessions

    sessions = load_sessions(store, selection)
    recorded = store.sessions()
    out, _ = amplify_sessions(
        sessions,
        copies,
        spread=spread,
        known_charge_points={info.charge_point_id for info in recorded},
        highest_session_id=max((info.id for info in recorded), default=0),
    )
    return out
