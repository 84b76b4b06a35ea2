"""Per-tenant rate limit (``limits``: sliding-window counter) on the gateway's store, shared by replicas.

The counters live in the mesh's Redis (redis-py through limits' ``redispy`` implementation), keyed by the
carrier inside a ``{carrier}`` hash tag, so every gateway replica counts against the same budget and the
keys stay in one Cluster slot. If the store cannot be reached the request is let through (logged): the
services behind are then unavailable anyway, and a rate limiter must not become the outage.

In front of the shared counter each process keeps its own (the same strategy on ``limits``' in-memory
storage) of the requests the shared counter accepted through this process (a subset of what the shared one
counted), and of those on their way to it. When this process alone has used the budget, the request is refused
(429 with Retry-After) without a store round trip; the store is asked only while the tenant is under its budget
as far as this process knows. A tenant flooding at many times its quota is thus answered from memory (AT-18:
each refusal used to cost the event loop two store round trips, slowing the other tenants; docs/gateway.md has
the figures). Both counters are sliding-window approximations, the local one with windows on the clock (``time
// window``), the store's from its first hit: at a window boundary the local one may refuse a request or so
earlier than the shared one would have; it never lets one through that the shared one refuses.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio
from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.util import WindowStats

from services.runtime import cluster_url

from ..config import DEFAULT_RATE_LIMIT, GatewayConfig
from .errors import RestError

__all__ = ["DEFAULT_RATE_LIMIT", "TenantRateLimiter"]

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
        #: This process's share of the accepted requests (a lower bound of the shared count; module docstring).
        self._local_counts = MemoryStorage()
        self._local = SlidingWindowCounterRateLimiter(self._local_counts)
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

    async def check(self, carrier: str) -> None:
        """RESOURCE_EXHAUSTED (429 with Retry-After) when ``carrier`` is over its budget."""
        if self.item is None:
            return
        key = f"{{{carrier}}}"
        # The place is taken in the local count before the store is asked, so that requests arriving together
        # do not all pass the local check while the first are still on their way to the store; given back if
        # the store refuses (the key is the window the hit lands in, computed the way limits does).
        _, local_window = MemoryStorage.sliding_window_keys(self.item.key_for(key), self.item.get_expiry(),
                                                            time.time())
        if not await self._local.hit(self.item, key):  # this process alone used the budget: no store trip
            self._refuse(await self._local.get_window_stats(self.item, key))
        try:
            if await self._limiter.hit(self.item, key):
                return
            stats = await self._limiter.get_window_stats(self.item, key)
        except Exception as exc:  # the limiter must not become the outage (see the module docstring)
            _log.warning("rate limit store unavailable, letting the request through: %s", exc)
            await self._local_counts.decr(local_window)  # not counted anywhere, as before the local count
            return
        await self._local_counts.decr(local_window)
        self._refuse(stats)

    def _refuse(self, stats: WindowStats) -> NoReturn:
        assert self.item is not None
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RestError("RESOURCE_EXHAUSTED", f"rate limit of {self.item} per carrier exceeded",
                        reason="RATE_LIMITED", metadata={"limit": str(self.item), "retry_after_seconds":
                                                         str(retry_after)},
                        headers={"Retry-After": str(retry_after)})
