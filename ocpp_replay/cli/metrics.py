"""``--metrics-port`` for long ``replay`` and ``simulate`` runs: Prometheus metrics over HTTP.

The run's progress callback hands each snapshot to a collector here (an attribute set, nothing
more per frame); a finished session adds its frames' lateness to a histogram. Prometheus'
reference client serves the registry from a thread of its own (``start_http_server``), so a
scrape never runs on the replay's event loop.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ocpp_replay.errors import ConfigError

if TYPE_CHECKING:
    from ocpp_replay.replay import Progress
    from ocpp_replay.simulate.runner import FleetProgress

#: Upper bounds of the lateness histogram, in seconds.
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ReplayCollector(Collector):
    """A replay's (or compare's) progress: sessions, frames sent, differences, lateness."""

    def __init__(self) -> None:
        self.last: Progress | None = None
        self.counts = [0] * (len(LATENESS_BUCKETS) + 1)  # the last one: above every bound
        self.total = 0.0

    def update(self, p: Progress) -> None:
        self.last = p
        if p.finished is not None:
            for late in p.finished.lateness:
                self.counts[bisect.bisect_left(LATENESS_BUCKETS, late)] += 1
                self.total += late

    def collect(self) -> Iterator[Metric]:
        p = self.last
        total, done, sent, diffs = (
            (p.sessions_total, p.sessions_done, p.frames_sent, p.diffs) if p else (0, 0, 0, 0)
        )
        yield GaugeMetricFamily("ocpp_replay_sessions", "Sessions the run replays.", value=total)
        yield CounterMetricFamily("ocpp_replay_sessions_done", "Sessions finished.", value=done)
        yield CounterMetricFamily("ocpp_replay_frames_sent", "Frames sent to the backend.", value=sent)
        yield CounterMetricFamily("ocpp_replay_differences", "Differences found so far.", value=diffs)
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENESS_BUCKETS, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "ocpp_replay_lateness_seconds",
            "Scheduling lateness of the frames sent, counted as their sessions finish.",
            buckets=buckets,
            sum_value=self.total,
        )


class FleetCollector(Collector):
    """A virtual fleet: chargers connected, transactions, CALLs, backend commands, problems."""

    def __init__(self, chargers: int) -> None:
        self.chargers = chargers
        self.last: FleetProgress | None = None

    def update(self, p: FleetProgress) -> None:
        self.last = p

    def collect(self) -> Iterator[Metric]:
        p = self.last
        yield GaugeMetricFamily(
            "ocpp_simulate_chargers", "Virtual chargers in the fleet.", value=self.chargers
        )
        yield GaugeMetricFamily(
            "ocpp_simulate_chargers_connected", "Chargers connected now.", value=p.online if p else 0
        )
        for name, text, value in (
            ("transactions", "Transactions started.", p.transactions if p else 0),
            ("calls", "CALLs the chargers sent.", p.calls if p else 0),
            ("backend_commands", "CALLs the backend sent to the chargers.", p.backend_commands if p else 0),
            (
                "problems",
                "Problems (failed expectations, lost connections, crashes).",
                p.problems if p else 0,
            ),
        ):
            yield CounterMetricFamily(f"ocpp_simulate_{name}", text, value=value)


def serve_metrics(port: int, host: str, collector: Collector) -> Callable[[], None]:
    """Serve COLLECTOR (and the process's memory and CPU) on http://HOST:PORT/metrics.
    Returns the function that stops it. Raises ConfigError when the port cannot be bound."""
    if not 0 < port <= 65535:
        raise ConfigError(f"--metrics-port must be between 1 and 65535, not {port}")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen on {host}: {exc.strerror or exc}") from exc

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def tee(*callbacks: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
    """One progress callback that calls each given one in turn (None when none is given)."""
    given = [c for c in callbacks if c is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]

    def both(p: Any) -> None:
        for c in given:
            c(p)

    return both
