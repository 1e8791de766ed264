"""The priority of the proxy's helper processes: the web UI (``--ui``) and the live shadow
(``--shadow``) run beside the relay, and the relay comes first.

Once a helper is ready it puts every thread of its own in SCHED_IDLE (Linux): it gets a core only
when nothing else wants one, and the relay, waking for a frame, takes the core from it at once.
nice 10 does not do that: measured with the shadow (docs/performance.md), a niced helper still
adds half a millisecond to the relay's p99 on two cores, an idle-class one nothing measurable.
Elsewhere than Linux: nice :data:`NICE`. Helpers start at the proxy's priority (imports, the
capture, their sockets): a second of CPU once, which on a saturated machine would never come.
"""

from __future__ import annotations

import os

#: Where SCHED_IDLE is missing (not Linux), how much lower a helper's priority is than the proxy's.
NICE = 10


def lower_priority(nice: int = NICE) -> str:
    """Every thread of this process to SCHED_IDLE (Linux), else ``nice`` lower. Returns which."""
    try:
        for tid in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError, ValueError):
        if hasattr(os, "nice"):
            os.nice(nice)
        return f"nice {nice}"


def restore_priority(pid: int) -> bool:
    """Every thread of process ``pid`` back to the normal policy, so that a helper stopping on a
    saturated machine gets the CPU for its last flush. Needs the right to raise a priority (root,
    CAP_SYS_NICE, or RLIMIT_NICE); without it nothing changes. Returns whether it did."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError, ValueError):
        return False
    return True
