"""Virtual Alfen chargers (see docs/simulate.md).

``alfen`` (identity, configuration, meter), ``charger`` (the OCPP state machine) and
``scenario`` (steps, built-ins, TOML) are pure; ``runner`` drives them over websockets.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ocpp_replay.simulate.runner import ChargerResult, FleetProgress, FleetResult, Problem, run_fleet
from ocpp_replay.simulate.scenario import SCENARIO_NAMES, Scenario, Step

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "SCENARIO_NAMES",
    "ChargerResult",
    "FleetProgress",
    "FleetResult",
    "Problem",
    "Scenario",
    "Step",
    "print_summary",
    "run_fleet",
    "run_simulate",
]


def _safe(text: str) -> str:
    """Text from the backend, safe for a terminal: control characters escaped, markup off."""
    from rich.markup import escape

    from ocpp_replay.core.text import escape_controls

    return escape(escape_controls(text[:300]))


def print_summary(result: FleetResult, console: Console, *, max_problems: int = 20) -> None:
    """A short summary: what the fleet sent, what the backend sent, and the problems."""
    chargers = len(result.chargers)
    console.print(
        f"{chargers} virtual Alfen charger{'s' if chargers != 1 else ''} (OCPP {result.version}, "
        f"scenario {_safe(result.scenario)}, {result.cycles} cycle{'s' if result.cycles != 1 else ''}) "
        f"against {_safe(result.target)} in {result.seconds:.1f} s"
    )
    if len(result.versions) > 1:
        mix = ", ".join(f"{n} on {v}" for v, n in sorted(result.versions.items()))
        console.print(f"  chargers: {mix}")
    if result.fallbacks:
        fell = ", ".join(
            f"{route} ({n} connection{'s' if n != 1 else ''})" for route, n in result.fallbacks.items()
        )
        console.print(f"  the backend picked an older version: {fell}")
    sent = ", ".join(f"{a} {n}" for a, n in sorted(result.sent.items()))
    console.print(f"  sent: {sent or 'nothing'}")
    received = ", ".join(f"{_safe(a)} {n}" for a, n in sorted(result.received.items()))
    console.print(f"  backend commands: {received or 'none'}")
    transactions = sum(c.transactions for c in result.chargers)
    connections = sum(c.connections for c in result.chargers)
    offline = sum(c.delivered_offline for c in result.chargers)
    console.print(
        f"  transactions: {transactions}, connections: {connections}, "
        f"queued messages delivered after reconnect: {offline}"
    )
    problems = result.problems
    if not problems:
        console.print("  [green]no problems[/]")
        return
    counts = ", ".join(f"{kind} {n}" for kind, n in sorted(result.problem_counts().items()))
    style = "red" if result.broken else "yellow"
    console.print(f"  [{style}]{len(problems)} problem{'s' if len(problems) != 1 else ''}[/]: {counts}")
    for problem in problems[:max_problems]:
        console.print(f"    {_safe(str(problem))}")
    if len(problems) > max_problems:
        console.print(f"    … and {len(problems) - max_problems} more")


def run_simulate(
    target: str,
    *,
    chargers: int = 1,
    id_prefix: str = "ALF-",
    version: str = "1.6",
    scenario: str = "session",
    cycles: int = 1,
    seed: int = 0,
    time_scale: float = 1.0,
    password: str | None = None,
    console: Console | None = None,
) -> int:
    """The ``ocpp-replay simulate`` command: run the fleet, print a summary, return the exit code.

    0, or 1 if a charger could not play its scenario (an expectation failed, its connection was
    lost for good, an answer never came, it crashed). Raises ConfigError / UpstreamError (exit 2).
    """
    from rich.console import Console

    result = asyncio.run(
        run_fleet(
            target,
            chargers=chargers,
            id_prefix=id_prefix,
            version=version,
            scenario=scenario,
            cycles=cycles,
            seed=seed,
            time_scale=time_scale,
            password=password,
        )
    )
    print_summary(result, console or Console(highlight=False))
    return 1 if result.broken else 0
