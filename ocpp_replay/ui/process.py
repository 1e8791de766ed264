"""The UI beside a proxy (``ocpp-replay proxy --ui PORT``): ``ocpp-replay ui`` in a process of its own.

Not a thread or a task in the proxy: the UI reads SQLite, validates frames against the OCPP
schemas and encodes JSON for the browser, and in the proxy's process every bit of that would
hold the interpreter lock between two frames of the relay. In its own process it shares
nothing with the relay but the capture file, which it opens read-only.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


#: How much lower the UI's scheduling priority is than the proxy's: where the two share a busy
#: core, the relay's frames go first.
NICE = 10

# ``python -m ocpp_replay.cli ui ...``, its priority lowered first: by the child itself, as
# preexec_fn is unsafe in a process that already runs threads (the capture writer's).
_LAUNCH = (
    "import os, sys\n"
    "nice = int(sys.argv.pop(1))\n"
    "if hasattr(os, 'nice'): os.nice(nice)\n"
    "sys.argv[0] = 'ocpp-replay'\n"
    "from ocpp_replay.cli import main\n"
    "main()\n"
)


def start_ui_process(
    db: Path, port: int, *, host: str = "127.0.0.1", rules: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``ocpp-replay ui`` on DB at a lower priority (:data:`NICE`); it prints its URL and
    serves until it is terminated."""
    cmd = [
        sys.executable,
        "-c",
        _LAUNCH,
        str(NICE),
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
    log.info("UI: http://%s:%d/ (its own process, nice %d)", host, port, NICE)
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


def stop_ui_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate the UI process and wait for it (killed if it does not stop in TIMEOUT)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
