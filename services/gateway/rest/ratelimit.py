"""Per-tenant rate limit (``limits``: sliding-window counter) on the gateway's store, shared by replicas.

The counters live in the mesh's Redis (redis-py through limits' ``redispy`` implementation), keyed by the
carrier inside a ``{carrier}`` hash tag, so every gateway replica counts against the same budget and the
keys stay in one Cluster slot. If the store cannot be reached the request is let through (logged): the
services behind are then unavailable anyway, and a rate limiter must not become the outage.

After the store refuses a carrier, each process remembers until when: the reset time the store reported with
that refusal (limits' estimate of when its sliding window frees a place), kept per carrier for at most
``MAX_REFUSED_CARRIERS`` carriers (the least recent dropped first). Until then that carrier's requests are refused
(429 with Retry-After) from memory, without a store round trip; from then the store is asked again. A tenant
flooding at many times its quota is thus answered mostly from memory (AT-18: each refusal used to cost the event
loop two store round trips, slowing the other tenants; docs/gateway.md has the figures). There is no second
window estimate here: a request is refused locally only while the store's own last refusal says it would refuse,
so a bursty tenant the store's window accepts is not refused (an earlier local count with windows on the clock
refused such a tenant for up to a window). Under a flood the store is asked about twice per place its window
frees (the request it accepts, and the refusal that gives the next reset time); the rest are refused from memory.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio
from cachetools import LRUCache
from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from services.runtime import cluster_url

from ..config import DEFAULT_RATE_LIMIT, GatewayConfig
from .errors import RestError

__all__ = ["DEFAULT_RATE_LIMIT", "MAX_REFUSED_CARRIERS", "TenantRateLimiter"]

#: Carriers whose last store refusal each process remembers (one float each; beyond it, the least recently refused
#: is forgotten and its next request asks the store).
MAX_REFUSED_CARRIERS = 10_000

_log = logging.getLogger("haulmesh.gateway.ratelimit")


def _limits_uri(redis_url: str) -> str:
    parts = urlsplit(redis_url)
    scheme = {"redis": "async+redis", "rediss": "async+rediss", "unix": "async+redis+unix"}[parts.scheme]
    return urlunsplit((scheme, *parts[1:]))


class TenantRateLimiter:
    """A budget (``HAULMESH_RATE_LIMIT``: e.g. ``50/second``, ``1000/minute``) per carrier; None: no limit."""

    def __init__(self, item: RateLimitItem | None, storage: Storage,
                 pool: redis.asyncio.ConnectionPool | None = None) -> None:
        self.item = item
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        #: Per carrier, the reset time (epoch seconds) of the store's last refusal: refused from memory until then.
        self._refused_until: LRUCache[str, float] = LRUCache(maxsize=MAX_REFUSED_CARRIERS)
        #: The store connections the limiter counts over (ours, so that ``close`` can release them).
        self._pool = pool

    @classmethod
    def from_config(cls, config: GatewayConfig, redis_url: str | None) -> TenantRateLimiter:
        """``config.rate_limit`` counted in the store of ``redis_url`` (in memory without one)."""
        storage: Storage = MemoryStorage()
        pool = None
        if redis_url and cluster_url(redis_url):  # the limiter's own cluster client (keys are carrier-tagged)
            seed = urlsplit(cluster_url(redis_url))
            storage = RedisClusterStorage(urlunsplit(("async+redis+cluster", *seed[1:])), implementation="redispy",
                                          key_prefix="ratelimit", ssl=seed.scheme == "rediss")
        elif redis_url:
            pool = redis.asyncio.ConnectionPool.from_url(redis_url)
            storage = RedisStorage(_limits_uri(redis_url), implementation="redispy", key_prefix="ratelimit",
                                   connection_pool=pool)
        return cls(config.rate_limit, storage, pool)

    @classmethod
    def from_env(cls, redis_url: str | None, env: Mapping[str, str] | None = None) -> TenantRateLimiter:
        """``HAULMESH_RATE_LIMIT`` of ``env`` as GatewayConfig reads it."""
        return cls.from_config(GatewayConfig.from_env(env), redis_url)

    async def close(self) -> None:
        """Release the store connections (at shutdown; a closed limiter reconnects if used again)."""
        if self._pool is not None:
            await self._pool.aclose()

    async def check(self, carrier: str, *, budget: str = "per carrier") -> None:
        """RESOURCE_EXHAUSTED (429 with Retry-After) when ``carrier`` (or another key: a vehicle's, the enrolment
        attempts') is over its budget; ``budget`` says whose, in the error."""
        if self.item is None:
            return
        self.check_remembered(carrier, budget=budget)
        key = f"{{{carrier}}}"
        try:
            if await self._limiter.hit(self.item, key):
                return
            stats = await self._limiter.get_window_stats(self.item, key)
        except Exception as exc:  # the limiter must not become the outage (see the module docstring)
            _log.warning("rate limit store unavailable, letting the request through: %s", exc)
            return
        self._refused_until[key] = stats.reset_time
        self._refuse(stats.reset_time, budget)

    def check_remembered(self, carrier: str, *, budget: str = "per carrier") -> None:
        """The refusal of :meth:`check` when this process can give it from memory alone: the store refused
        ``carrier`` and said until when, and that is not past (no store trip); else nothing."""
        key = f"{{{carrier}}}"
        until = self._refused_until.get(key)
        if until is not None:
            if time.time() < until:
                self._refuse(until, budget)
            self._refused_until.pop(key, None)

    def _refuse(self, reset_time: float, budget: str) -> NoReturn:
        assert self.item is not None
        retry_after = max(1, math.ceil(reset_time - time.time()))
        raise RestError("RESOURCE_EXHAUSTED", f"rate limit of {self.item} {budget} exceeded",
                        reason="RATE_LIMITED", metadata={"limit": str(self.item), "retry_after_seconds":
                                                         str(retry_after)},
                        headers={"Retry-After": str(retry_after)})
