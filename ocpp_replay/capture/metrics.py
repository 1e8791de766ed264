"""The proxy's ``GET /metrics``: Prometheus' text format, made by ``prometheus_client``.

Nothing here runs per frame. The relay counts in plain integers as it always has (the proxy's
:class:`~ocpp_replay.capture.proxy.ProxyStats`, the capture writer's stats and its traffic
table, counted in the writer's thread); a custom collector reads them when Prometheus scrapes.
Each proxy has a registry of its own (several proxies in one process, as in the tests, do not
share counters), with the process collector for memory, CPU and open files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ocpp_replay.capture.proxy import ProxyServer


class ProxyCollector(Collector):
    """Reads a running proxy's counters at scrape time."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        proxy = self.proxy
        stats = proxy.stats
        yield GaugeMetricFamily(
            "ocpp_proxy_connections_open", "Charger connections relayed now.", value=stats.active
        )
        yield CounterMetricFamily(
            "ocpp_proxy_connections", "Charger connections relayed since start.", value=stats.connections
        )
        handshakes = CounterMetricFamily(
            "ocpp_proxy_handshakes",
            "Charger upgrades by outcome: 101 relayed, the CSMS's refusal status, or none (no CSMS "
            "answer, or refused by the proxy).",
            labels=["status"],
        )
        for status, count in sorted(dict(stats.handshakes).items()):
            handshakes.add_metric([status], count)
        yield handshakes
        unfinished = CounterMetricFamily(
            "ocpp_proxy_handshakes_unfinished",
            "Charger upgrades that never completed, by reason.",
            labels=["reason"],
        )
        unfinished.add_metric(["timeout"], stats.handshakes_timed_out)
        unfinished.add_metric(["dropped"], stats.handshakes_dropped)
        unfinished.add_metric(["per_address_limit"], stats.refused_per_address)
        yield unfinished
        yield CounterMetricFamily(
            "ocpp_proxy_upstream_errors",
            "Dials that found no CSMS (refused, timed out, no answer).",
            value=stats.upstream_failures,
        )
        yield GaugeMetricFamily(
            "ocpp_proxy_upstream_up",
            "1 while the CSMS answers, 0 during an outage.",
            value=0 if proxy.upstream_down_since is not None else 1,
        )
        yield CounterMetricFamily(
            "ocpp_proxy_frames_relayed", "Websocket messages relayed, both directions.", value=stats.frames
        )
        if proxy.capacity:
            yield GaugeMetricFamily(
                "ocpp_proxy_connection_capacity",
                "Charger connections the open-file limit allows.",
                value=proxy.capacity,
            )
        writer = proxy.writer
        if writer is None:
            return
        frames = CounterMetricFamily(
            "ocpp_capture_frames",
            "Frames taken into the capture, by direction and OCPP action.",
            labels=["direction", "action"],
        )
        size = CounterMetricFamily(
            "ocpp_capture_bytes",
            "Frame data taken into the capture, by direction and OCPP action.",
            labels=["direction", "action"],
        )
        for (direction, action), (count, nbytes) in sorted(dict(writer.traffic).items()):
            frames.add_metric([direction, action], count)
            size.add_metric([direction, action], nbytes)
        yield frames
        yield size
        ws = writer.stats
        yield CounterMetricFamily(
            "ocpp_capture_frames_written", "Frames written to the capture.", value=ws.frames_written
        )
        yield CounterMetricFamily(
            "ocpp_capture_frames_lost",
            "Frames relayed but not recorded (capture stalled past its budget, or a failed write).",
            value=ws.frames_lost,
        )
        yield CounterMetricFamily(
            "ocpp_capture_write_failures", "Capture transactions that failed.", value=ws.failures
        )
        yield GaugeMetricFamily(
            "ocpp_capture_pending_frames", "Items waiting to be written.", value=writer.pending
        )
        yield GaugeMetricFamily(
            "ocpp_capture_pending_bytes", "Frame data waiting to be written.", value=writer.pending_bytes
        )
        write = CounterMetricFamily(
            "ocpp_capture_write_seconds", "Time spent in successful capture writes.", value=ws.flush_seconds
        )
        yield write
        yield CounterMetricFamily(
            "ocpp_capture_writes", "Successful capture writes (batches).", value=ws.batches
        )
        yield GaugeMetricFamily(
            "ocpp_capture_write_seconds_max", "The longest capture write so far.", value=ws.max_flush_seconds
        )
        pruner = writer.pruner
        if pruner is not None:  # --retain / --max-size
            ps = pruner.stats
            yield CounterMetricFamily(
                "ocpp_capture_frames_pruned", "Frames removed by retention.", value=ps.frames_pruned
            )
            yield CounterMetricFamily(
                "ocpp_capture_sessions_pruned",
                "Sessions removed whole by retention.",
                value=ps.sessions_pruned,
            )
            yield GaugeMetricFamily(
                "ocpp_capture_data_bytes",
                "Bytes of the capture's pages that hold data, at retention's last check (--max-size).",
                value=ps.data_bytes,
            )
            yield GaugeMetricFamily(
                "ocpp_capture_prune_step_seconds_max",
                "The longest retention step (taken between capture writes).",
                value=ps.max_step_seconds,
            )


def metrics_route(proxy: ProxyServer) -> Callable[[], tuple[str, bytes]]:
    """The ``/metrics`` route of a proxy: a function returning (content type, body)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(proxy))
    ProcessCollector(registry=registry)

    def route() -> tuple[str, bytes]:
        # the classic text format, which every Prometheus (2.x and 3.x) and its kin scrape
        return CONTENT_TYPE_PLAIN_0_0_4, generate_latest(registry)

    return route
