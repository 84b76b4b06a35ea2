"""RED metrics (rate, errors, duration) of every RPC a Haulmesh server handles, from one interceptor.

``haulmesh_rpc_requests_total{service,method,code}`` counts every finished call by its status code (the
code the caller saw: OK, or what the handler, the authorization check or an abort set);
``haulmesh_rpc_duration_seconds{service,method}`` times unary calls (request in, response out).

Streams are not timed: a truck's telemetry stream lives for hours, so its "duration" is the length of a
connection, not a latency, and would flatten any histogram it shares buckets with. A stream is counted once
in ``haulmesh_rpc_requests_total`` when it ends, and the messages it carries are counted in
``haulmesh_rpc_stream_messages_total{service,method,direction}`` (``received`` when the request side is an
iterator the interceptor can see, ``sent`` for every response yielded). Per-message latency of the
telemetry stream is what ``haulmesh_telemetry_freshness_seconds`` measures, end to end.

Labels are bounded by the protos: ``service`` and ``method`` come from methods the server registered (an
unknown method gets no handler and no series), ``code`` is one of the 17 gRPC codes. No peer, vehicle or
carrier label.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from ._metrics import METRICS_REGISTRY

__all__ = ["HANDLER_INVOCATIONS", "RPC_DURATION", "RPC_REQUESTS", "RPC_STREAM_MESSAGES", "RpcMetricsInterceptor",
           "count_handler_invocation"]

RPC_REQUESTS = Counter("haulmesh_rpc_requests_total", "RPCs handled by this server, by gRPC service, method and "
                       "status code (counted when the call ends; a stream counts once).",
                       ["service", "method", "code"], registry=METRICS_REGISTRY)
#: Buckets from 1 ms (a Get from Redis) to 10 s (the mesh's default deadline is below that).
RPC_DURATION = Histogram("haulmesh_rpc_duration_seconds", "Handling time of unary RPCs (request received to "
                         "response ready), by gRPC service and method. Streams are not timed (see "
                         "haulmesh_rpc_stream_messages_total).", ["service", "method"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                         registry=METRICS_REGISTRY)
RPC_STREAM_MESSAGES = Counter("haulmesh_rpc_stream_messages_total", "Messages of streaming RPCs, by gRPC service, "
                              "method and direction (received by this server / sent by it).",
                              ["service", "method", "direction"], registry=METRICS_REGISTRY)

#: Calls handed to a handler: past the certificate, the deny-list and the policy (services/runtime/_authz.py). A
#: refused call never counts here, whatever the handler would have answered (AT-14 reads it).
HANDLER_INVOCATIONS = Counter("haulmesh_rpc_handler_invocations_total", "RPCs that passed authentication, the "
                              "revocation check and the method policy and reached their handler, by gRPC service "
                              "and method.", ["service", "method"], registry=METRICS_REGISTRY)
#: Its child per full method name (bounded: the methods the server registered), so a call costs a dict lookup.
_INVOKED: dict[str, Any] = {}


def count_handler_invocation(full_method: str) -> None:
    """Count one call of ``/pkg.Service/Method`` handed to its handler (:data:`HANDLER_INVOCATIONS`)."""
    child = _INVOKED.get(full_method)
    if child is None:
        child = _INVOKED[full_method] = HANDLER_INVOCATIONS.labels(*_split(full_method))
    child.inc()

_CODE_NAMES: dict[Any, str] = {}
for _code in grpc.StatusCode:
    # context.code() answers a StatusCode, its int, or None (nothing set) depending on the path that set it.
    _CODE_NAMES[_code] = _code.name
    _CODE_NAMES[_code.value[0]] = _code.name


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status the call ends with: what the context holds, else what the exception means to grpc.aio."""
    try:
        code = context.code()
    except Exception:  # an EXPERIMENTAL API: never let the metric break the call
        code = None
    name = _CODE_NAMES.get(code)
    if name is not None and (name != "OK" or error is None):
        return name
    if error is None:
        return "OK"
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    return "UNKNOWN"  # what grpc.aio answers for an exception that set no status


def _split(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    _, service, method = full_method.split("/", 2)
    return service, method


class _Labels:
    """The children of one method, made once when its handler is first looked up (not per call)."""

    def __init__(self, full_method: str) -> None:
        self.service, self.method = _split(full_method)
        self.duration = RPC_DURATION.labels(self.service, self.method)
        self.received = RPC_STREAM_MESSAGES.labels(self.service, self.method, "received")
        self.sent = RPC_STREAM_MESSAGES.labels(self.service, self.method, "sent")
        self._codes: dict[str, Counter] = {}

    def finished(self, code: str) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = RPC_REQUESTS.labels(self.service, self.method, code)
        child.inc()


Behavior = Callable[..., Any]


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC of the server (see the module docstring for what is measured).

    Put it first in the server's interceptor list: it then sees the status of everything inside it,
    including the authorization interceptor's PERMISSION_DENIED / UNAUTHENTICATED answers.
    """

    def __init__(self) -> None:
        self._labels: dict[str, _Labels] = {}

    def _labels_of(self, method: str) -> _Labels:
        labels = self._labels.get(method)
        if labels is None:
            labels = self._labels[method] = _Labels(method)
        return labels

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED; no series for arbitrary names
        labels = self._labels_of(handler_call_details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, labels), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._stream(handler.stream_unary, labels, requests_streamed=True),
                handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, labels, requests_streamed=False),
                handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream, labels, requests_streamed=True),
            handler.request_deserializer, handler.response_serializer)

    @staticmethod
    def _unary(inner: Behavior, labels: _Labels) -> Behavior:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            began = time.perf_counter()
            try:
                response = await inner(request, context)
            except BaseException as exc:
                labels.duration.observe(time.perf_counter() - began)
                labels.finished(_code_of(context, exc))
                raise
            labels.duration.observe(time.perf_counter() - began)
            labels.finished(_code_of(context, None))
            return response

        return behavior

    @staticmethod
    def _stream(inner: Behavior, labels: _Labels, *, requests_streamed: bool) -> Behavior:
        def counted(requests: Any) -> Any:
            # A handler reading with context.read() gets no iterator; its received messages go uncounted.
            if not requests_streamed or not hasattr(requests, "__aiter__"):
                return requests

            async def iterate() -> AsyncIterator[Any]:
                async for message in requests:
                    labels.received.inc()
                    yield message

            return iterate()

        if inspect.isasyncgenfunction(inner):
            async def generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    async for response in inner(counted(request), context):
                        labels.sent.inc()
                        yield response
                except BaseException as exc:
                    labels.finished(_code_of(context, exc))
                    raise
                labels.finished(_code_of(context, None))

            return generator

        # Handlers that answer with context.write() (the library's health Watch), or a stream-unary handler.
        async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                response = await inner(counted(request), context)
            except BaseException as exc:
                labels.finished(_code_of(context, exc))
                raise
            labels.finished(_code_of(context, None))
            return response

        return coroutine
