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

from ocpp_replay.priority import NICE

log = logging.getLogger(__name__)


#: Set in the UI process's environment: once it serves, it lowers its own priority
#: (:func:`ocpp_replay.priority.lower_priority`, by the child itself: preexec_fn is unsafe in a
#: process that already runs threads, the capture writer's), to SCHED_IDLE on Linux.
IDLE_ENV = "OCPP_REPLAY_UI_IDLE"


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
