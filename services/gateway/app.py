"""The gateway's HTTP side: the TMS's door (REST transcoding, OpenAPI, auth and webhooks grow here).

It holds no business rules: every request becomes a gRPC call to the service that owns the rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["HttpListener", "create_app"]


def create_app(ready: Callable[[], Awaitable[bool]]) -> Starlette:
    """The ASGI app. ``ready`` says whether the gateway can serve (store reachable, not shutting down)."""

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> JSONResponse:
        ok = await ready()
        return JSONResponse({"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz)])


class _Server(uvicorn.Server):
    # The process's signals belong to the service runtime, which stops this listener itself.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpListener:
    """uvicorn serving the app inside the gateway's event loop, started and stopped by the runtime."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self._server = _Server(uvicorn.Config(app, host=host, port=port, lifespan="off", log_config=None,
                                              access_log=False, server_header=False,
                                              timeout_graceful_shutdown=5))

    async def run(self) -> None:
        await self._server.serve()

    async def stop(self) -> None:
        self._server.should_exit = True
