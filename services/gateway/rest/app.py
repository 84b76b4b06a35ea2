"""The gateway's HTTP side: the TMS's door (REST transcoding, OpenAPI, auth, Server-Sent Events).

It holds no business rules: every request becomes a gRPC call to the service that owns the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.runtime import asgi_middleware

from .docs_ui import DocsUi
from .errors import RestError, error_response, method_not_allowed
from .handler import RestGateway
from .metrics import HttpMetricsMiddleware
from .openapi import build_openapi, dump_openapi, render_docs

__all__ = ["HttpListener", "create_app"]

_VERBS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(ready: Callable[[], Awaitable[bool]], rest: RestGateway | None = None,
               docs_ui: DocsUi | None = None, extra_routes: Sequence[Route] = ()) -> Starlette:
    """The ASGI app. ``ready`` says whether the gateway can serve (store reachable, not shutting down);
    ``rest`` serves the API (/api/..., /openapi.json, /docs) — without it only the probes are served;
    ``extra_routes`` are the gateway's own routes outside the transcoded API (enrolment), matched before it."""

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> JSONResponse:
        ok = await ready()
        return JSONResponse({"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503)

    routes = [Route("/healthz", healthz), Route("/readyz", readyz), *extra_routes]
    if rest is not None:
        document = build_openapi(rest.api, rest.token_url, devices=rest.serves_devices)
        spec = dump_openapi(document).encode()
        page = render_docs(document)

        async def openapi(_: Request) -> Response:
            return Response(spec, media_type="application/json")

        async def docs(_: Request) -> HTMLResponse:
            return HTMLResponse(page)

        async def api(request: Request) -> Response:
            # Another verb on a path a route of its own serves (POST /openapi.json, POST /docs/assets/x) reaches
            # this catch-all route: 405 with that route's verbs, not 404.
            allow = _verbs_of(own_routes, request)
            if allow:
                return error_response(method_not_allowed(request.method, allow))
            return await rest.handle(request)

        if docs_ui is not None:  # the interactive reference (docs_ui.py), matched before the plain /docs page
            routes += docs_ui.routes(document)
        routes += [Route("/openapi.json", openapi), Route("/docs", docs)]
        own_routes = list(routes)
        routes.append(Route("/{path:path}", api, methods=_VERBS))

    async def not_routed(request: Request, exc: Exception) -> Response:
        # Starlette's own 404/405 (e.g. a path its router cannot match at all, or a verb no route lists such as
        # TRACE) in the API's error shape; a 405 always says what is allowed (RFC 9110 15.5.6).
        code = getattr(exc, "status_code", 404)
        # Starlette lists a route's verbs in set order: sorted, as every other Allow of the app.
        listed = dict(getattr(exc, "headers", None) or {}).get("Allow", "")
        allow = ", ".join(sorted(v.strip() for v in listed.split(",") if v.strip()))
        if code == 405 and rest is not None and request.scope.get("endpoint") is api:
            # the catch-all took the path: the verbs are those of the API's routes for it
            _, _, verbs = rest.routes.match(request.method, request.url.path)
            allow = ", ".join(sorted(verbs))
        if code != 405 or not allow:
            return error_response(RestError("NOT_FOUND", f"no route for {request.method} {request.url.path}",
                                            reason="ROUTE_NOT_FOUND", http_status=404))
        return error_response(method_not_allowed(request.method, allow))

    fixed = {route.path for route in routes if route.path != "/{path:path}"}

    def route_of(verb: str, path: str) -> str | None:
        # The label is a template the app declares: a fixed path, an extra route's template, or the API route the
        # REST handler will match.
        if path in fixed:
            return path
        for extra in extra_routes:
            if extra.matches({"type": "http", "path": path, "method": verb})[0] != Match.NONE:
                return extra.path
        if rest is None:
            return None
        route, _, _ = rest.routes.match(verb, path)
        return route.binding.template if route is not None else None

    def span_name(verb: str, path: str) -> str:
        return f"{verb} {route_of(verb, path) or 'unmatched'}"

    # Tracing outermost: its server span is the root of the request's trace (nothing when tracing is off); a
    # remembered refusal inside the metrics, so that it is counted and timed as every other answer.
    early = [Middleware(_RememberedRefusals, rest=rest)] if rest is not None and not rest.serves_devices else []
    return Starlette(routes=routes, exception_handlers={404: not_routed, 405: not_routed},
                     middleware=[*asgi_middleware(span_name), Middleware(HttpMetricsMiddleware, route_of=route_of),
                                 *early])


class _RememberedRefusals:
    """Pure ASGI middleware: what :meth:`RestGateway.remembered_refusal` knows is answered before Starlette's
    routing, request object and exception layers, which were half of the work of a refused request."""

    def __init__(self, app: ASGIApp, rest: RestGateway) -> None:
        self._app, self._rest = app, rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._rest.remembered_refusal(scope["method"], scope["path"], Headers(scope=scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self._app(scope, receive, send)


def _verbs_of(routes: list[Route], request: Request) -> str:
    """The verbs (``Allow``) of the route among ``routes`` whose path matches but not its verb; "" if none."""
    for route in routes:
        match, _ = route.matches(request.scope)
        if match == Match.PARTIAL:
            return ", ".join(sorted(route.methods or ()))
    return ""


class _Server(uvicorn.Server):
    # The process's signals belong to the service runtime, which stops this listener itself.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _OneWriteTransport:
    """A transport that sends what one turn of the event loop wrote to it in one ``write``: uvicorn writes a
    response's head and its body separately, two ``send`` syscalls (and two TCP segments) per response; on the
    gateway's one event loop that was a fifth of the work of answering a refused request (AT-18, docs/gateway.md).
    Past ``MAX_HELD_BYTES`` it writes at once, so a response streamed in one turn is not held whole."""

    MAX_HELD_BYTES = 64 * 1024

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes) -> None:
        if not self._held:
            asyncio.get_running_loop().call_soon(self._flush)
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= self.MAX_HELD_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            self._held_bytes = 0
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # the rest (is_closing, pause_reading, get_extra_info, ...) as it is
        return getattr(self._transport, name)


class _OneWriteHttpTools(HttpToolsProtocol):
    """uvicorn's httptools (C) protocol over :class:`_OneWriteTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWriteTransport(transport))  # type: ignore[arg-type]


class HttpListener:
    """uvicorn serving the app inside the gateway's event loop, started and stopped by the runtime."""

    def __init__(self, app: Any, host: str, port: int, **options: Any) -> None:
        """``options`` go to ``uvicorn.Config`` as they are (the device listener's TLS and protocol)."""
        # httptools (C) parses HTTP/1.1 unless a caller brings its own protocol: the gateway shares one event loop
        # with every tenant, so each request's parsing cost is paid by all of them (AT-18, docs/gateway.md).
        options.setdefault("http", _OneWriteHttpTools)
        self._server = _Server(uvicorn.Config(app, host=host, port=port, lifespan="off", log_config=None,
                                              access_log=False, server_header=False,
                                              timeout_graceful_shutdown=5, **options))

    async def run(self) -> None:
        await self._server.serve()

    async def stop(self) -> None:
        self._server.should_exit = True
