"""The truck's own Prometheus endpoint: the spool, the link and the edge computer's CPU, read at scrape time.

The seed asks for Prometheus-compatible exporters on edge nodes. The values here are the ones the truck also
reports in its heartbeats, but a fleet operator's agent on the vehicle (or a bench rig) can scrape them
directly, including while the cloud is unreachable. The endpoint listens on loopback by default and is off
unless ``--metrics-port`` is given. It carries no vehicle id label: the scraper knows which truck it is on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .client import ClientStats, CpuSampler
from .spool import SpoolStats

__all__ = ["EdgeCollector", "serve_metrics"]


class EdgeCollector(Collector):
    """Reads the spool, the stream client's counters and the CPU sampler at every scrape."""

    def __init__(self, spool_stats: Callable[[], SpoolStats], client_stats: Callable[[], ClientStats | None],
                 link_up: Callable[[], bool], cpu: CpuSampler) -> None:
        self._spool_stats = spool_stats
        self._client_stats = client_stats
        self._link_up = link_up
        self._cpu = cpu

    def collect(self) -> Iterator[Metric]:
        spool = self._spool_stats()
        yield GaugeMetricFamily("edge_spool_depth_frames", "Frames in the spool, not yet acknowledged by the cloud.",
                                value=spool.depth)
        yield GaugeMetricFamily("edge_last_sequence", "Sequence of the newest reading spooled.",
                                value=spool.last_sequence)
        yield CounterMetricFamily("edge_spool_dropped_frames", "Routine frames dropped by the spool's bound "
                                  "(oldest first; alarms, faults and health frames are never dropped).",
                                  value=spool.dropped)
        yield CounterMetricFamily("edge_frames_rejected", "Frames the cloud refused (each with a reason).",
                                  value=spool.rejected)
        yield GaugeMetricFamily("edge_cpu_utilization_percent", "The edge computer's CPU use (the seed's name).",
                                value=self._cpu.percent())
        yield GaugeMetricFamily("edge_link_up", "1 while a telemetry stream to the cloud is open.",
                                value=1.0 if self._link_up() else 0.0)
        stats = self._client_stats()
        if stats is None:  # spooling offline: no stream client
            return
        yield GaugeMetricFamily("edge_acked_sequence", "Highest sequence the cloud acknowledged (durable there).",
                                value=stats.acked_through)
        yield CounterMetricFamily("edge_stream_sessions", "Telemetry streams opened.", value=stats.sessions)
        yield CounterMetricFamily("edge_stream_failures", "Telemetry streams that failed (then reconnected).",
                                  value=stats.failures)
        yield CounterMetricFamily("edge_frames_sent", "Frames sent (resends after a reconnect included).",
                                  value=stats.frames_sent)
        yield CounterMetricFamily("edge_heartbeats_sent", "Heartbeats sent.", value=stats.heartbeats)
        yield CounterMetricFamily("edge_commands_received", "Commands received from the cloud.", value=stats.commands)


def serve_metrics(collector: EdgeCollector, port: int, host: str = "127.0.0.1") -> None:
    """Serve ``collector`` on ``http://host:port/metrics`` from a daemon thread (it ends with the process)."""
    registry = CollectorRegistry()
    registry.register(collector)
    start_http_server(port, addr=host, registry=registry)
