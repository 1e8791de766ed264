"""Replay captured sessions against a backend (``runner``), the charger's side played from the capture.

The public entry points, as the docs show them::

    from ocpp_replay.replay import Selection, run_replay, run_compare, store_run, load_run
"""

from ocpp_replay.replay.runner import (
    Progress,
    Selection,
    load_auth_file,
    load_sessions,
    run_compare,
    run_replay,
    selected_sessions,
)
from ocpp_replay.store.runs import list_runs, load_run, store_run

__all__ = [
    "Progress",
    "Selection",
    "list_runs",
    "load_auth_file",
    "load_run",
    "load_sessions",
    "run_compare",
    "run_replay",
    "selected_sessions",
    "store_run",
]
