"""The REST door's Prometheus metrics: RED per route (the webhook service's are in webhooks/metrics.py).

HTTP: ``haulmesh_http_requests_total{route,method,status}`` and ``haulmesh_http_request_duration_seconds
{route,method}``, recorded by :class:`HttpMetricsMiddleware` around the whole ASGI app. ``route`` is the
template that matched (``/api/v1/{name=tenders/*}:accept``), never the raw path: one series per tender id
would be unbounded. A request no route matches is ``route="unmatched"``. The duration runs until the
response's headers are sent: for a Server-Sent Events stream that is the time to open it, not its life.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter, Histogram

from services.runtime import METRICS_REGISTRY

__all__ = [
    "HTTP_DURATION",
    "HTTP_REQUESTS",
    "UNMATCHED",
    "HttpMetricsMiddleware",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The route label of a request that matched no route (404s of scanners and typos share one series).
UNMATCHED = "unmatched"
_VERBS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter("haulmesh_http_requests_total", "HTTP requests answered by the gateway, by route template, "
                        "method and status code.", ["route", "method", "status"], registry=METRICS_REGISTRY)
HTTP_DURATION = Histogram("haulmesh_http_request_duration_seconds", "Seconds from an HTTP request's arrival to its "
                          "response headers, by route template and method.", ["route", "method"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                          registry=METRICS_REGISTRY)


class HttpMetricsMiddleware:
    """Pure ASGI middleware counting and timing every HTTP request by route template.

    ``route_of(method, path)`` names the template a request matches (or None); it is the app's own
    routing, asked once more, so the label can never be a raw path.
    """

    def __init__(self, app: ASGIApp, route_of: Callable[[str, str], str | None]) -> None:
        self._app = app
        self._route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        began = time.perf_counter()
        method = scope["method"] if scope["method"] in _VERBS else "OTHER"
        route = self._route_of(method, scope["path"]) or UNMATCHED
        status = [500]  # an app that raises before answering: the server answers 500
        timed = [False]

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                timed[0] = True
                HTTP_DURATION.labels(route, method).observe(time.perf_counter() - began)
            await send(message)

        try:
            await self._app(scope, receive, observed_send)
        finally:
            if not timed[0]:
                HTTP_DURATION.labels(route, method).observe(time.perf_counter() - began)
            HTTP_REQUESTS.labels(route, method, str(status[0])).inc()
