"""Pair CALLRESULT/CALLERROR frames with the CALL they answer.

Pure. A result travelling in one direction answers the CALL that travelled the other way on
the same connection with the same unique id. Alfen chargers reuse small decimal ids and restart
them after a reconnect, so the key is (connection, direction of the CALL, unique id) and never
the unique id alone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from ocpp_replay.core.frames import Direction, MessageType

#: Unanswered CALLs remembered per connection; older ones are forgotten first.
MAX_PENDING_PER_CONNECTION = 1024


class Pairer:
    """Resolves the action of results from the CALLs seen before them."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[Hashable, OrderedDict[tuple[Direction, str], str]] = {}

    def see(
        self,
        connection: Hashable,
        direction: Direction,
        message_type: int | None,
        unique_id: str | None,
        action: str | None,
    ) -> str | None:
        """Take one frame in wire order; return its action (resolved for results)."""
        if unique_id is None or message_type is None:
            return action
        if message_type == MessageType.CALL:
            if action is not None:
                pending = self._pending.get(connection)
                if pending is None:
                    pending = self._pending[connection] = OrderedDict()
                key = (direction, unique_id)
                pending.pop(key, None)
                pending[key] = action
                if len(pending) > MAX_PENDING_PER_CONNECTION:
                    pending.popitem(last=False)
            return action
        pending = self._pending.get(connection)
        if pending is None:
            return None
        return pending.pop((direction.reverse, unique_id), None)

    def forget(self, connection: Hashable) -> None:
        """The connection is closed: drop its unanswered CALLs."""
        self._pending.pop(connection, None)

    def __len__(self) -> int:
        return sum(len(p) for p in self._pending.values())
