"""The per-tenant rate limiter on a real store, and the limits' configuration."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from services.gateway.config import DEFAULT_MAX_REQUEST_BYTES, max_request_bytes_from_env
from services.gateway.rest.errors import RestError
from services.gateway.rest.ratelimit import TenantRateLimiter
from services.runtime import ConfigError
from tests.conftest import wait_for


async def _allowed(limiter: TenantRateLimiter, carrier: str, attempts: int) -> int:
    allowed = 0
    for _ in range(attempts):
        try:
            await limiter.check(carrier)
            allowed += 1
        except RestError as exc:
            assert exc.http_status is None and exc.code_name == "RESOURCE_EXHAUSTED"
            assert int(exc.headers["Retry-After"]) >= 1
    return allowed


async def test_replicas_share_one_budget_per_tenant(store_url: str) -> None:
    env = {"HAULMESH_RATE_LIMIT": "10/minute"}
    replica_a = TenantRateLimiter.from_env(store_url, env)
    replica_b = TenantRateLimiter.from_env(store_url, env)
    carrier = f"c{uuid.uuid4().hex[:8]}"
    try:
        assert await _allowed(replica_a, carrier, 6) + await _allowed(replica_b, carrier, 6) == 10
        assert await _allowed(replica_b, f"{carrier}-other", 3) == 3
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_a_tenant_over_its_budget_is_refused_without_a_store_round_trip(store_url: str, fault_proxy) -> None:
    # The limiter reaches the store through a proxy that is then blackholed: a refusal that still asked the store
    # would hang there (a request that did would wait for the proxy), so answering at once proves it did not.
    parts = urlsplit(store_url)
    credentials, _, address = parts.netloc.rpartition("@")
    proxy = await fault_proxy(address)
    through = urlunsplit(parts._replace(netloc=f"{credentials}@{proxy.address}" if credentials else proxy.address))
    limiter = TenantRateLimiter.from_env(through, {"HAULMESH_RATE_LIMIT": "5/minute"})
    carrier = f"c{uuid.uuid4().hex[:8]}"
    try:
        assert await _allowed(limiter, carrier, 6) == 5  # the 6th refused by the store, until its reset time
        proxy.blackhole()
        for _ in range(50):
            with pytest.raises(RestError) as refused:
                await asyncio.wait_for(limiter.check(carrier), timeout=5)
            assert refused.value.headers["Retry-After"].isdigit() and int(refused.value.headers["Retry-After"]) >= 1
    finally:
        proxy.pass_through()
        await limiter.close()


async def test_a_refusal_from_memory_holds_only_until_the_stores_reset_time(store_url: str) -> None:
    # Replica A, refused by the shared budget (B used it), remembers the store's reset time and nothing else: once
    # that time has passed, it asks the store again instead of refusing from memory.
    env = {"HAULMESH_RATE_LIMIT": "3/minute"}
    replica_a, replica_b = TenantRateLimiter.from_env(store_url, env), TenantRateLimiter.from_env(store_url, env)
    carrier = f"c{uuid.uuid4().hex[:8]}"
    try:
        assert await _allowed(replica_b, carrier, 3) == 3
        assert await _allowed(replica_a, carrier, 10) == 0
        until = replica_a._refused_until[f"{{{carrier}}}"]
        assert time.time() < until <= time.time() + 60  # the store's reset time, within its window
        await replica_a._limiter.clear(replica_a.item, f"{{{carrier}}}")  # the store's window moved on
        replica_a._refused_until[f"{{{carrier}}}"] = time.time() - 1  # and the reset time has passed
        assert await _allowed(replica_a, carrier, 1) == 1
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_a_burst_at_the_end_of_the_stores_window_does_not_make_later_requests_refused_locally(
        store_url: str) -> None:
    """20 per 4 s. One request at t0 (the store's window starts there), 19 at t0 + 2.8 s, 8 more at t0 + 5.6 s:
    the store's sliding window then weighs its previous 20 by 2.4 / 4 (12), so it accepts all 8, and so must the
    limiter. A local count with windows on the clock, one starting at t0 + 2.5 s, held all 19 of the burst in its
    current window and refused 7 of the 8 without asking the store (the reviewer saw ~30 s of such 429s)."""
    limiter = TenantRateLimiter.from_env(store_url, {"HAULMESH_RATE_LIMIT": "20 per 4 seconds"})
    carrier = f"c{uuid.uuid4().hex[:8]}"
    try:
        # A clock window of 4 s starts 2.5 s after t0 (the old local count's windows were time // 4).
        await wait_for(lambda: 1.45 <= time.time() % 4 < 1.6, timeout_seconds=10, interval_seconds=0.01)
        t0 = time.time()
        assert await _allowed(limiter, carrier, 1) == 1
        await wait_for(lambda: time.time() >= t0 + 2.8, timeout_seconds=10, interval_seconds=0.01)
        assert await _allowed(limiter, carrier, 19) == 19
        assert time.time() < t0 + 4  # the burst is in the store's first window
        await wait_for(lambda: time.time() >= t0 + 5.6, timeout_seconds=10, interval_seconds=0.01)
        assert await _allowed(limiter, carrier, 8) == 8
    finally:
        await limiter.close()


async def test_off_disables_the_limit(store_url: str) -> None:
    limiter = TenantRateLimiter.from_env(store_url, {"HAULMESH_RATE_LIMIT": "off"})
    assert await _allowed(limiter, "acme", 50) == 50
    await limiter.close()


async def test_an_unreachable_store_lets_requests_through() -> None:
    limiter = TenantRateLimiter.from_env("redis://127.0.0.1:1/0", {"HAULMESH_RATE_LIMIT": "1/minute"})
    assert await _allowed(limiter, "acme", 3) == 3
    await limiter.close()


@pytest.mark.parametrize("raw", ["fast", "10 per", "-1/second"])
def test_bad_rate_limit_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError):
        TenantRateLimiter.from_env(None, {"HAULMESH_RATE_LIMIT": raw})


def test_request_size_configuration() -> None:
    assert max_request_bytes_from_env({}) == DEFAULT_MAX_REQUEST_BYTES == 1024 * 1024
    assert max_request_bytes_from_env({"HAULMESH_MAX_REQUEST_BYTES": "2048"}) == 2048
    for raw in ("0", "-5", "1MB", str(128 * 1024 * 1024)):
        with pytest.raises(ConfigError):
            max_request_bytes_from_env({"HAULMESH_MAX_REQUEST_BYTES": raw})
