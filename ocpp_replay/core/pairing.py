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

#: Unanswered CALLs remembered over all connections (about 200 bytes each: ~50 MB). Within it
#: pairing is exact for any number of outstanding calls on one connection (a charger flushing an
#: offline queue without waiting); past it the connection adding a call forgets its oldest one
#: (a connection with only that call: the connection holding the most forgets its oldest),
#: and the connection is listed in ``Pairer.overflowed`` once so the capture can say so.
MAX_PENDING = 262_144


class Pairer:
    """Resolves the action of results from the CALLs seen before them."""

    __slots__ = ("_count", "_forgotten", "_pending", "budget", "overflowed")

    def __init__(self, budget: int = MAX_PENDING) -> None:
        self._pending: dict[Hashable, OrderedDict[tuple[Direction, str], str]] = {}
        self._count = 0
        self._forgotten: dict[Hashable, int] = {}
        self.budget = budget
        #: Connections that went over the budget since the caller last cleared this list.
        self.overflowed: list[Hashable] = []

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
                if pending.pop(key, None) is None:
                    self._count += 1
                pending[key] = action
                if self._count > self.budget:
                    victim = connection
                    if len(pending) == 1:
                        victim = max(self._pending, key=lambda c: len(self._pending[c]))
                    self._pending[victim].popitem(last=False)
                    self._count -= 1
                    forgotten = self._forgotten.get(victim, 0)
                    if not forgotten:
                        self.overflowed.append(victim)
                    self._forgotten[victim] = forgotten + 1
            return action
        pending = self._pending.get(connection)
        if pending is None:
            return None
        found = pending.pop((direction.reverse, unique_id), None)
        if found is not None:
            self._count -= 1
        return found

    def forgotten(self, connection: Hashable) -> int:
        """How many unanswered CALLs of ``connection`` were forgotten for the budget."""
        return self._forgotten.get(connection, 0)

    def forget(self, connection: Hashable) -> None:
        """The connection is closed: drop its unanswered CALLs."""
        pending = self._pending.pop(connection, None)
        if pending is not None:
            self._count -= len(pending)
        self._forgotten.pop(connection, None)

    def __len__(self) -> int:
        return self._count
