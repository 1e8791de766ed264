"""What checking one frame against its OCPP schema costs, once the validator is compiled.

    python benchmarks/schema_validation.py [--frames 20000]

The replay and the simulator check every frame; this prints microseconds per frame for a small
and a large payload (the figure tests/test_schemas.py used to assert, as a timing, under 1 ms),
each frame's payload a new one (connectorId counts up), as a backend's answers with their
timestamps and ids are.
"""

from __future__ import annotations

import argparse
import time

from ocpp_replay.core.schemas import validate

CASES = {
    "1.6 StatusNotification": (
        "1.6",
        "StatusNotification",
        {"connectorId": 1, "errorCode": "NoError", "status": "Available"},
    ),
    "1.6 MeterValues (10 samples)": (
        "1.6",
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": 7,
            "meterValue": [
                {
                    "timestamp": "2026-12-03T10:00:00Z",
                    "sampledValue": [
                        {"value": str(i), "measurand": "Energy.Active.Import.Register"} for i in range(10)
                    ],
                }
            ],
        },
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    args = parser.parse_args()
    for name, (version, action, payload) in CASES.items():
        assert validate(version, action, payload, response=False) == []  # compiles the validator
        payloads = [{**payload, "connectorId": n} for n in range(1, args.frames + 1)]
        start = time.perf_counter()
        for each in payloads:
            validate(version, action, each, response=False)
        per = (time.perf_counter() - start) / args.frames
        print(f"{name:<30} {per * 1e6:8.1f} µs per frame over {args.frames} frames")


if __name__ == "__main__":
    main()
