"""Server-streaming RPCs that return ``google.api.HttpBody`` over REST: the body is the file itself.

The stream's messages are the file's chunks in order; the first names the content type. The gateway reads
the first message before answering, so a refusal (another carrier's mission: NOT_FOUND) is an ordinary JSON
error with its HTTP status; after that the answer is ``200`` with that content type and the chunks as they
come. A gRPC error after the start can only cut the body short (HTTP has no trailer clients read): a
truncated file, which the evidence verifier refuses. At most :data:`MAX_DOWNLOAD_BYTES` are relayed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf.message import Message
from starlette.responses import Response, StreamingResponse

from .descriptors import HttpMethod

__all__ = ["HTTP_BODY", "MAX_DOWNLOAD_BYTES", "is_download", "open_download"]

_log = logging.getLogger("haulmesh.gateway.download")

HTTP_BODY = "google.api.HttpBody"
#: The largest file relayed (an evidence pack is bounded well below: services/runtime/evidence.py).
MAX_DOWNLOAD_BYTES = 1 << 30
#: Deadline of the whole download (building a 12 h trip's pack takes seconds; slow clients get minutes).
DOWNLOAD_SECONDS = 600.0


def is_download(method: HttpMethod) -> bool:
    """Whether ``method`` streams a file (server-streaming ``google.api.HttpBody``)."""
    return method.method.server_streaming and method.method.output_type.full_name == HTTP_BODY


async def open_download(channel: grpc.aio.Channel, method: HttpMethod, message: Message,
                        metadata: tuple[tuple[str, str], ...]) -> Response:
    """Open the call, wait for its first chunk (raising grpc.aio.AioRpcError on a refusal), then stream."""
    call = channel.unary_stream(method.grpc_path, request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=httpbody_pb2.HttpBody.FromString)(
        message, metadata=metadata, timeout=DOWNLOAD_SECONDS)
    try:
        first = await call.read()
    except BaseException:
        call.cancel()
        raise
    if first is grpc.aio.EOF:
        first = httpbody_pb2.HttpBody()
    name = str(getattr(message, "mission", "") or getattr(message, "name", "") or "download").rsplit("/", 1)[-1]
    headers = {"Cache-Control": "no-store", "Content-Disposition": f'attachment; filename="evidence-{name}.zip"'}
    return StreamingResponse(_chunks(call, first), media_type=first.content_type or "application/octet-stream",
                             headers=headers)


async def _chunks(call: Any, first: httpbody_pb2.HttpBody) -> AsyncIterator[bytes]:
    sent = len(first.data)
    try:
        yield first.data
        while True:
            reply = await call.read()
            if reply is grpc.aio.EOF:
                return
            sent += len(reply.data)
            if sent > MAX_DOWNLOAD_BYTES:
                _log.error("download %s exceeded %d bytes; cut", call, MAX_DOWNLOAD_BYTES)
                return
            yield reply.data
    except grpc.aio.AioRpcError as exc:
        _log.warning("download ended by %s after %d bytes: %s", exc.code().name, sent, exc.details())
    finally:
        call.cancel()
