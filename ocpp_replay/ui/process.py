"""The UI beside a proxy (``ocpp-replay proxy --ui PORT``): ``ocpp-replay ui`` in a process of its own.

Not a thread or a task in the proxy: the UI reads SQLite, validates frames against the OCPP
schemas and encodes JSON for the browser, and in the proxy's process every bit of that would
hold the interpreter lock between two frames of the relay. In its own process it shares
nothing with the relay but the capture file, which it opens read-only.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


#: Where SCHED_IDLE is missing (not Linux), how much lower the UI's priority is than the proxy's.
NICE = 10

#: Set in the UI process's environment: once it serves, it lowers its own priority
#: (:func:`lower_priority`; by the child itself: preexec_fn is unsafe in a process that already
#: runs threads, the capture writer's). On Linux the UI then runs under SCHED_IDLE: it gets a
#: core only when nothing else wants it, and the relay, waking for a frame, takes the core from
#: it at once. Elsewhere: nice NICE. It starts (imports, opens the capture, binds its port) at
#: the proxy's priority: about a second of CPU once, which on a saturated machine would
#: otherwise never come.
IDLE_ENV = "OCPP_REPLAY_UI_IDLE"


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


def start_ui_process(
    db: Path, port: int, *, host: str = "127.0.0.1", rules: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``ocpp-replay ui`` on DB at the lowest priority (SCHED_IDLE, else :data:`NICE`); it
    prints its URL and serves until it is terminated."""
    cmd = [
        sys.executable,
        "-m",
        "ocpp_replay.cli",
        "ui",
        "--db",
        str(db),
        "--host",
        host,
        "--port",
        str(port),
    ]
    if rules is not None:
        cmd += ["--rules", str(rules)]
    log.info("UI: http://%s:%d/ (its own process, at idle priority)", host, port)
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env={**os.environ, IDLE_ENV: str(NICE)})


def stop_ui_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate the UI process and wait for it (killed if it does not stop in TIMEOUT)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
