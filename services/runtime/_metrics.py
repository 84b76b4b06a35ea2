"""Prometheus metrics of a Haulmesh process: one registry, one HTTP exposition endpoint.

Every metric of the process registers in :data:`METRICS_REGISTRY` (pass ``registry=METRICS_REGISTRY`` to
``prometheus_client.Counter`` and friends), never in the library's global default registry: what a scrape
shows is then exactly what Haulmesh chose to export (plus the process, platform and GC collectors), not
whatever a third-party import happened to register.

The runtime serves the registry over plain HTTP on ``HAULMESH_METRICS_PORT`` (0, the default, turns it off),
bound to the gRPC server's host. Plain HTTP because that is what Prometheus scrapes by default and the
exposition carries no tenant or vehicle data (no vehicle ids as labels anywhere: 100,000 trucks would be
100,000 series per metric); in a cluster the NetworkPolicy admits only the monitoring namespace to the port.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry
from prometheus_client.exposition import start_http_server

from ._errors import ConfigError

__all__ = ["METRICS_REGISTRY", "MetricsEndpoint"]

_log = logging.getLogger("haulmesh.metrics")

#: The one registry of this process: every Haulmesh metric registers here, the endpoint serves it.
METRICS_REGISTRY = CollectorRegistry(auto_describe=True)
# The standard process_* (CPU, RSS, open fds), python_info and python_gc_* series, so dashboards and the
# chart's alerts can rely on them as on any Python exporter. They hold no state, so the library's instances
# (also in its default registry) can serve this one too.
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    METRICS_REGISTRY.register(_collector)


class MetricsEndpoint:
    """The HTTP exposition endpoint (``GET /metrics``; any path answers) of one registry.

    Served from a daemon thread by the library's threading WSGI server: a scrape never waits for the event
    loop, and the metric objects are thread-safe. ``port`` 0 means off: :meth:`start` does nothing.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry = METRICS_REGISTRY) -> None:
        if not 0 <= port < 65536:
            raise ConfigError(f"HAULMESH_METRICS_PORT must be 0 (off) or a TCP port 1-65535, got {port}",
                              field="HAULMESH_METRICS_PORT")
        self.host = host
        self.port = port
        self._registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.port != 0

    @property
    def url(self) -> str:
        """Where Prometheus scrapes this endpoint ("" when off)."""
        if not self.enabled:
            return ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Listen and serve; a port that cannot be bound is a configuration error (the process exits 2)."""
        if not self.enabled or self._server is not None:
            return
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self._registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {self.host}:{self.port} (HAULMESH_METRICS_PORT): {exc}",
                              field="HAULMESH_METRICS_PORT") from exc
        _log.info("metrics on %s", self.url)

    def stop(self) -> None:
        """Close the listener and wait for the serving thread (blocking: call it off the event loop)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
