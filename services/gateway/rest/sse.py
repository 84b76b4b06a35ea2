"""Server-streaming RPCs over REST as Server-Sent Events (``text/event-stream``).

A streaming route passes the same checks as a unary one (route, token, scope, tenant, rate limit, request
fields); then the gateway opens the server-streaming gRPC call and waits for the service's response
headers. An error before them (another carrier's mission, a bad name) is answered as an ordinary JSON
error with its HTTP status. Once the headers have come, the answer is ``200 text/event-stream``:

* each response message is one event: ``event:`` the JSON name of the message's field
  (``telemetryFrame``), ``id:`` the last segment of that resource's name (a frame's sequence) when the
  request can resume from it (it has ``after_sequence``; a fleet's frames, sequences of many vehicles, have
  no id), ``data:`` the message's proto-JSON on one line (the same JSON as the unary routes);
* a comment line every :data:`HEARTBEAT_SECONDS` keeps proxies and clients from timing the stream out;
* a gRPC error after the start becomes a final ``event: error`` whose data is the google.rpc.Status JSON;
* a client that disconnects cancels the gRPC call;
* a reconnecting client's ``Last-Event-ID`` becomes the request's ``after_sequence`` (replay from there,
  then live, without gap or duplicate);
* a stream lasts at most :data:`MAX_STREAM_SECONDS`, then ends cleanly; the client reconnects with
  ``Last-Event-ID`` as after any other end;
* concurrent streams are capped per gateway process and per carrier (:class:`StreamSlots`); one beyond is
  answered 429 with ``Retry-After`` before any call to the service (which has caps of its own: its refusal,
  RESOURCE_EXHAUSTED with RetryInfo, comes back as 429 with ``Retry-After`` too).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message
from starlette.responses import Response, StreamingResponse

from .descriptors import HttpMethod
from .errors import RestError, rpc_error_response
from .transcode import to_json

__all__ = ["HEARTBEAT_SECONDS", "MAX_STREAM_SECONDS", "StreamSlots", "open_event_stream", "resume_from"]

_log = logging.getLogger("haulmesh.gateway.sse")

#: Interval of the comment heartbeat on an idle stream.
HEARTBEAT_SECONDS = 15.0
#: Lifetime of one event stream; the gRPC call's deadline is a little longer, so the gateway ends first.
MAX_STREAM_SECONDS = 3600.0
#: What a client waits before reconnecting after the stream ends (the SSE ``retry:`` field).
RETRY_MILLISECONDS = 3000
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class StreamSlots:
    """Open event streams of this process: at most ``per_process`` in all and ``per_carrier`` per carrier."""

    def __init__(self, per_process: int = 512, per_carrier: int = 16, retry_after_seconds: int = 5) -> None:
        self.per_process = per_process
        self.per_carrier = per_carrier
        self.retry_after_seconds = retry_after_seconds
        self._open: Counter[str] = Counter()
        self.total = 0

    def acquire(self, carrier: str) -> Callable[[], None]:
        """Take a slot for ``carrier``; returns its release (idempotent). 429 RESOURCE_EXHAUSTED with
        Retry-After beyond a cap. Single-threaded asyncio: check and count need no lock."""
        scope, limit = ("carrier", self.per_carrier) if self._open[carrier] >= self.per_carrier else \
            ("process", self.per_process) if self.total >= self.per_process else ("", 0)
        if scope:
            raise RestError("RESOURCE_EXHAUSTED", f"at most {limit} concurrent event streams per {scope}; close one "
                            "or retry later", reason="TOO_MANY_STREAMS",
                            metadata={"limit": str(limit), "scope": scope},
                            headers={"Retry-After": str(self.retry_after_seconds)})
        self._open[carrier] += 1
        self.total += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.total -= 1
            self._open[carrier] -= 1
            if not self._open[carrier]:
                del self._open[carrier]

        return release


def resume_from(message: Message, last_event_id: str | None) -> None:
    """Set ``after_sequence`` from a reconnecting client's ``Last-Event-ID`` (it wins over the query). The header
    is checked on every stream (the OpenAPI document states its form for all); a stream without
    ``after_sequence`` sends no ids, so a well-formed one is ignored there."""
    if last_event_id is None:
        return
    value = last_event_id.strip()
    if not value.isdigit() or len(value) > 20 or int(value) >= 2**64:
        raise RestError("INVALID_ARGUMENT", "Last-Event-ID must be the id of an event of this stream (a sequence)",
                        reason="INVALID_LAST_EVENT_ID")
    if "after_sequence" in message.DESCRIPTOR.fields_by_name:
        message.after_sequence = int(value)


def _event(reply: Message, resumable: bool = True) -> bytes:
    """One SSE event of a response message (see the module docstring); an ``id`` only if ``resumable``."""
    kind = reply.WhichOneof(reply.DESCRIPTOR.oneofs[0].name) if reply.DESCRIPTOR.oneofs else None
    fields = [f for f in reply.DESCRIPTOR.fields if f.message_type is not None and reply.HasField(f.name)]
    field = reply.DESCRIPTOR.fields_by_name[kind] if kind else (fields[0] if fields else None)
    lines = []
    if field is not None:
        lines.append(f"event: {field.json_name}")
        name = getattr(getattr(reply, field.name), "name", "")
        if resumable and isinstance(name, str) and name:
            lines.append(f"id: {name.rsplit('/', 1)[-1]}")
    # json.dumps without indent escapes every newline inside strings: the data stays on one line.
    lines.append("data: " + json.dumps(to_json(reply), separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def _error_event(error: grpc.aio.AioRpcError) -> bytes:
    body = bytes(rpc_error_response(error).body).decode("ascii")
    return f"event: error\ndata: {body}\n\n".encode()


async def open_event_stream(channel: grpc.aio.Channel, method: HttpMethod, message: Message,
                            metadata: tuple[tuple[str, str], ...],
                            release: Callable[[], None] = lambda: None) -> Response:
    """Open the server-streaming call and answer it as an event stream once the service has accepted it.

    Raises grpc.aio.AioRpcError when the service refused the call before its first headers, so the caller
    answers that as an ordinary error response. ``release`` (the stream's slot) is called once the stream
    ends, whichever way, or at once when it never starts.
    """
    call = None
    try:
        # Inside the try: a call that cannot even be created (a closed channel, bad metadata) releases the slot too.
        response_class = message_factory.GetMessageClass(method.method.output_type)
        call = channel.unary_stream(method.grpc_path, request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=response_class.FromString)(
            message, metadata=metadata, timeout=MAX_STREAM_SECONDS + 30)
        # A refusal comes as a trailers-only answer: no headers, the status at once. Services send their
        # headers once the stream is open (or with the first message).
        await call.initial_metadata()
        if call.done():
            await call.read()  # raises the call's error (an OK end without any message is an empty stream)
    except BaseException:
        if call is not None:
            call.cancel()
        release()
        raise
    events = _events(call, release, "after_sequence" in method.method.input_type.fields_by_name)
    # A client gone before the body starts never runs the generator's finally: the slot goes with the generator.
    weakref.finalize(events, release)
    return StreamingResponse(events, media_type="text/event-stream", headers=_HEADERS)


async def _events(call: Any, release: Callable[[], None], resumable: bool) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_STREAM_SECONDS
    reading: asyncio.Task[Any] | None = None
    try:
        yield f"retry: {RETRY_MILLISECONDS}\n\n".encode()
        while True:
            if reading is None:
                reading = asyncio.ensure_future(call.read())
            left = deadline - loop.time()
            if left <= 0:
                return
            done, _ = await asyncio.wait({reading}, timeout=min(HEARTBEAT_SECONDS, left))
            if not done:
                yield b": heartbeat\n\n"
                continue
            reply, reading = reading.result(), None
            if reply is grpc.aio.EOF:
                return
            yield _event(reply, resumable)
    except grpc.aio.AioRpcError as exc:
        _log.info("event stream ended by %s: %s", exc.code().name, exc.details())
        yield _error_event(exc)
    finally:
        # Also on a client disconnect (the response task is cancelled): the service stops streaming.
        if reading is not None:
            reading.cancel()
        call.cancel()
        release()
