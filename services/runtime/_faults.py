"""Tests only: a server interceptor that records incoming calls and injects UNAVAILABLE into some of them.

Installed only when ``HAULMESH_TEST_FAULTS_FILE`` names a file (never in production: the variable is unset). While
the file exists it holds a JSON object, re-read whenever the file changes, so a test switches faults on and off
for a period without restarting the service:

* ``"record"``: a path; every call from another service (certificate identity ``service/*``) appends one JSON
  line there: the method, the caller, whether it carried a deadline, its ``request_id`` (if the request has
  one) and what was injected (``""``, ``"before"`` or ``"after"``). Lines are appended with one ``write`` each
  (O_APPEND), so several processes may share the file.
* ``"fail_prefix"`` and ``"fail_ratio"``: calls whose full method name starts with the prefix fail with
  UNAVAILABLE with that probability (from a ``random.Random(seed)``, ``"seed"``), half of them before the handler
  runs (nothing done), half after it ran (done, but the reply is lost): what a crashed replica or a cut
  connection looks like to a caller, and what only an idempotent retry survives.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from ._identity import caller

__all__ = ["FaultInjector"]


class FaultInjector(grpc.aio.ServerInterceptor):
    """See the module. Unary-response methods only; streams pass through unrecorded."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[float, int] | None = None
        self._settings: dict[str, Any] = {}
        self._random = random.Random(0)  # noqa: S311 - seeded fault times for tests, not secrets

    def _current(self) -> dict[str, Any]:
        try:
            stat = self._path.stat()
        except OSError:
            self._stamp, self._settings = None, {}
            return self._settings
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            try:
                settings = json.loads(self._path.read_text())
            except (OSError, ValueError):
                return self._settings  # being rewritten: keep the last settings
            self._stamp, self._settings = stamp, settings
            self._random = random.Random(settings.get("seed", 0))  # noqa: S311 - as above
        return self._settings

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not (handler.unary_unary or handler.stream_unary):
            return handler
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._wrap(handler.unary_unary, method),
                                                       handler.request_deserializer, handler.response_serializer)
        return grpc.stream_unary_rpc_method_handler(self._wrap(handler.stream_unary, method),
                                                    handler.request_deserializer, handler.response_serializer)

    def _wrap(self, inner: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            settings = self._current()
            if not settings:
                return await inner(request, context)
            injected = ""
            prefix = settings.get("fail_prefix")
            if prefix and method.startswith(prefix) and self._random.random() < float(settings.get("fail_ratio", 0)):
                injected = "before" if self._random.random() < 0.5 else "after"
            identity = caller()
            if settings.get("record") and identity.kind == "service":
                # The deadline's time left too: a caller's last attempt with none left was ended by its deadline.
                left = context.time_remaining()
                line = json.dumps({"method": method, "caller": str(identity), "injected": injected,
                                   "deadline": left is not None, "deadline_seconds": left,
                                   "request_id": getattr(request, "request_id", None)}) + "\n"
                fd = os.open(settings["record"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            if injected == "before":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected fault (before the handler)")
            response = await inner(request, context)
            if injected == "after":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected fault (after the handler)")
            return response

        return behavior
