"""The capture writer's pairing of results with calls: nanoseconds per frame.

    python benchmarks/pairing.py [PAIRING_PY]

PAIRING_PY: another version of ocpp_replay/core/pairing.py to measure instead (e.g. one taken
with ``git show REV:ocpp_replay/core/pairing.py``), for a before/after on the same machine.
100 connections, each call answered 50 frames later; then 3,000 calls pipelined on one
connection (the case issue 13.5 was about): how many results got their action.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

from ocpp_replay.core.frames import Direction

ROUNDS, FRAMES = 5, 200_000


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("pairing_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    default = Path(__file__).resolve().parents[1] / "ocpp_replay" / "core" / "pairing.py"
    module = load(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
    times = []
    for _ in range(ROUNDS):
        see = module.Pairer().see
        start = time.perf_counter()
        for i in range(FRAMES // 2):
            uid = str(i % 50)
            see(i % 100, Direction.TO_CSMS, 2, uid, "Heartbeat")
            see(i % 100, Direction.TO_CP, 3, uid, None)
        times.append((time.perf_counter() - start) / FRAMES * 1e9)
    times.sort()
    best, median = times[0], times[len(times) // 2]
    print(f"pairing: {best:.0f} ns per frame best, {median:.0f} median of {ROUNDS} rounds")
    pairer = module.Pairer()
    for i in range(3000):
        pairer.see("c", Direction.TO_CSMS, 2, str(i), "Heartbeat")
    paired = sum(pairer.see("c", Direction.TO_CP, 3, str(i), None) == "Heartbeat" for i in range(3000))
    print(f"3,000 pipelined calls on one connection: {paired} results paired")


if __name__ == "__main__":
    main()
