"""The runtime's one retry helper: which errors are transient, and capped exponential backoff with full jitter.

Consumers, sweeps, periodic loops and companions retry a transient store or peer error (the store restarting,
its pool exhausted, a peer briefly UNAVAILABLE) instead of ending the process; anything else is a programming
error. Full jitter (a uniform delay in ``[0, min(cap, start * 2**n)]``, as AWS's "Exponential Backoff and
Jitter" recommends) keeps a mesh of processes that lost the store at the same moment from coming back in step.
Written here rather than taken from tenacity / stamina: the loops need only this delay schedule and the error
classification, and both retry decorators wrap one call, while these loops restart a whole long-running task.
"""

from __future__ import annotations

import asyncio
import random

import grpc
import redis

from ._errors import Unavailable

__all__ = ["Backoff", "is_peer_fault", "is_transient"]

#: gRPC codes a peer answers while it is restarting, overloaded or unreachable: worth another try later.
_TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED})
#: Replies of a store that is starting, failing over or resharding (Redis / Valkey / Cluster).
_TRANSIENT_REPLIES = ("LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "BUSY ",
                      "max number of clients reached", "ERR max number of clients reached")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a store or peer fault that passes by itself (retry it), not a programming error.

    Transient: the store unreachable, timing out, its pool exhausted ("No connection available"), loading,
    failing over; a peer UNAVAILABLE, past its deadline, overloaded; our own UNAVAILABLE; an OS-level socket
    error or timeout. Everything else (a TypeError, a bad reply shape, a Lua error) is a bug.
    """
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)):
        return True
    if isinstance(exc, redis.ResponseError):
        return str(exc).startswith(_TRANSIENT_REPLIES)  # redis-py drops the ERR prefix of some replies
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _TRANSIENT_CODES
    if isinstance(exc, Unavailable):
        return True
    return isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError))


def is_peer_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is another service's failure (a gRPC call's error). A part stuck on it is retried, but
    does not make this process NOT_SERVING: readiness that follows a peer's outage would take every caller of
    this process out of rotation too (a cascade), while the peer's own health already says it is down."""
    return isinstance(exc, grpc.aio.AioRpcError)


class Backoff:
    """Delays for successive retries: ``start_seconds * 2**n`` capped at ``max_seconds``, with full jitter.

    :meth:`next` gives the next delay; :meth:`reset` after a success starts over.
    """

    def __init__(self, start_seconds: float = 0.2, max_seconds: float = 30.0, *,
                 rng: random.Random | None = None) -> None:
        if start_seconds <= 0 or max_seconds < start_seconds:
            raise ValueError(f"backoff needs 0 < start ≤ max, got {start_seconds}, {max_seconds}")
        self.start_seconds = start_seconds
        self.max_seconds = max_seconds
        self.failures = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    def ceiling(self) -> float:
        """The largest delay the next retry may get."""
        return min(self.max_seconds, self.start_seconds * 2 ** min(self.failures, 30))

    def next(self) -> float:
        """The delay before the next retry (at least a tenth of ``start_seconds``: never a hot loop)."""
        ceiling = self.ceiling()
        self.failures += 1
        return max(self.start_seconds / 10, self._rng.uniform(0, ceiling))

    def reset(self) -> None:
        self.failures = 0
