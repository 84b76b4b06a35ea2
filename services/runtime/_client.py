"""Outgoing mTLS channels: a deadline on every call, and fresh credentials after a certificate rotation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc

from ._tls import CertificateFiles, client_credentials
from ._tracing import client_interceptors

__all__ = ["Channels", "DeadlineInterceptor"]


class DeadlineInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.StreamUnaryClientInterceptor,
                          grpc.aio.UnaryStreamClientInterceptor):
    """Gives every call without a deadline the default one, so no call can wait forever.

    Long-lived streams (a truck's telemetry stream, watch streams) are not called through here: they carry
    their own liveness (heartbeats) and pass an explicit timeout when they want one.
    """

    def __init__(self, default_timeout_seconds: float) -> None:
        self._timeout = default_timeout_seconds

    def _with_deadline(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.timeout is not None:
            return details
        return grpc.aio.ClientCallDetails(details.method, self._timeout, details.metadata,
                                          details.credentials, details.wait_for_ready)

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._with_deadline(details), request)

    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(self._with_deadline(details), request_iterator)

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._with_deadline(details), request)


class Channels:
    """One channel per target, rebuilt when this workload's certificate files change.

    The check for changed files runs at most every ``reload_check_interval_seconds``; the replaced
    channel is closed after a grace period so calls in flight on it finish.
    """

    def __init__(self, files: CertificateFiles, *, call_timeout_seconds: float,
                 reload_check_interval_seconds: float = 5.0, max_message_bytes: int = 4 * 1024 * 1024,
                 unary_deadlines: bool = True) -> None:
        self._files = files
        # Tracing first, so its client span covers the whole call and carries the context in the metadata.
        self._interceptors: list[grpc.aio.ClientInterceptor] = [
            *client_interceptors(), *([DeadlineInterceptor(call_timeout_seconds)] if unary_deadlines else [])]
        self._check_interval = reload_check_interval_seconds
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._credentials = client_credentials(files)
        self._next_check = time.monotonic() + self._check_interval
        self._retired: set[asyncio.Task[None]] = set()

    def channel(self, target: str) -> grpc.aio.Channel:
        """The channel to ``target`` (host:port) with the current certificate."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_interval
            if self._files.refresh() is not None:
                self._credentials = client_credentials(self._files)
                old, self._channels = self._channels, {}
                for channel in old.values():
                    task = asyncio.get_running_loop().create_task(channel.close(grace=30))
                    self._retired.add(task)
                    task.add_done_callback(self._retired.discard)
        channel = self._channels.get(target)
        if channel is None:
            channel = grpc.aio.secure_channel(target, self._credentials, options=self._options,
                                              interceptors=self._interceptors)
            self._channels[target] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels), *self._retired, return_exceptions=True)
