"""Idempotent requests: the same ``request_id`` with the same request gets the same response.

The first request with a key claims it (SET NX with a short lease) and computes; concurrent duplicates
wait for its stored response. A key is kept ``ttl_seconds`` (24 h by default). A request that fails
releases its claim, so a retry computes again; a caller that dies mid-way loses its claim when the lease
expires. A request that fails on a lost connection or a timeout keeps its claim until the lease runs out instead:
its change may have been committed (the EXEC reached the store, its reply did not), and a retry at once would
apply it twice. The record of the response ("done") is written with retries and backoff for up to the lease, so a
store blip after the work does not let the key lapse (the TMS's retry would then find nothing, or compute again).
The same key with a different request (request_id aside) is refused: REQUEST_ID_REUSED.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio
from google.protobuf.message import Message

from ._errors import FieldViolation, InvalidArgument, Unavailable
from ._retry import Backoff
from .limits import REQUEST_ID

_log = logging.getLogger("haulmesh.idempotency")
#: Failures after which the work's outcome is unknown (it may be committed): the claim is kept till its lease ends.
_OUTCOME_UNKNOWN = (redis.ConnectionError, redis.TimeoutError, OSError, TimeoutError)

__all__ = ["Idempotency"]

M = TypeVar("M", bound=Message)
_REQUEST_ID = REQUEST_ID


def _fingerprint(request: Message) -> str:
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


class Idempotency:
    """Request-id bookkeeping on one store."""

    def __init__(self, client: redis.asyncio.Redis, *, ttl_seconds: int = 86400, lease_seconds: int = 30,
                 poll_interval_seconds: float = 0.01) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._lease = lease_seconds
        self._poll = poll_interval_seconds

    async def run(self, scope: str, request_id: str, request: Message, compute: Callable[[], Awaitable[M]],
                  response_type: type[M]) -> M:
        """``compute()`` once per (scope, request_id); ``scope`` names the tenant and the method."""
        if not request_id:
            return await compute()
        if not _REQUEST_ID.fullmatch(request_id):
            raise InvalidArgument("request_id must be 1-128 characters from A-Z a-z 0-9 . _ : -",
                                  reason="INVALID_REQUEST_ID",
                                  violations=[FieldViolation("request_id", "1-128 of [A-Za-z0-9._:-]")])
        key = f"idempotency:{{{scope}}}:{request_id}"
        fingerprint = _fingerprint(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lease + 5
        while True:
            claim = json.dumps({"fp": fingerprint})
            if await self._redis.set(key, claim, nx=True, ex=self._lease):
                try:
                    response = await compute()
                except _OUTCOME_UNKNOWN:
                    raise  # the claim stays till its lease runs out: the change may be committed (see the module)
                except BaseException:
                    try:
                        await self._redis.delete(key)
                    except (redis.RedisError, OSError):
                        pass  # the lease lets the claim go anyway
                    raise
                done = {"fp": fingerprint, "response": base64.b64encode(response.SerializeToString()).decode()}
                await self._record(key, json.dumps(done), loop.time() + self._lease)
                return response
            raw = await self._redis.get(key)
            if raw is None:
                continue  # the holder failed or its lease ran out: claim again
            record = json.loads(raw)
            if record["fp"] != fingerprint:
                raise InvalidArgument(f"request_id {request_id!r} was already used with a different request",
                                      reason="REQUEST_ID_REUSED",
                                      violations=[FieldViolation("request_id", "reused with another request")])
            if "response" in record:
                return response_type.FromString(base64.b64decode(record["response"]))
            if loop.time() > deadline:
                raise Unavailable("the first request with this request_id is still running; retry later",
                                  reason="REQUEST_IN_PROGRESS")
            await asyncio.sleep(self._poll)

    async def _record(self, key: str, done: str, deadline: float) -> None:
        """Write the done record, retrying a store fault with backoff until ``deadline`` (the claim's lease): the
        work is done, and its response is what a retry with the same key must get."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.05, 2.0)
        while True:
            try:
                await self._redis.set(key, done, ex=self._ttl)
                return
            except _OUTCOME_UNKNOWN as exc:
                if loop.time() >= deadline:
                    _log.error("response of %s not recorded (%s): a retry with this key computes again", key, exc)
                    raise
                delay = backoff.next()
                _log.warning("response of %s not recorded yet (%s); retrying in %.2fs", key, exc, delay)
                await asyncio.sleep(delay)
