"""The per-tenant rate limiter on a real store, and the limits' configuration."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from services.gateway.config import DEFAULT_MAX_REQUEST_BYTES, max_request_bytes_from_env
from services.gateway.rest.errors import RestError
from services.gateway.rest.ratelimit import TenantRateLimiter
from services.runtime import ConfigError


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
        assert await _allowed(limiter, carrier, 5) == 5
        proxy.blackhole()
        for _ in range(50):
            with pytest.raises(RestError) as refused:
                await asyncio.wait_for(limiter.check(carrier), timeout=5)
            assert refused.value.headers["Retry-After"].isdigit() and int(refused.value.headers["Retry-After"]) >= 1
    finally:
        proxy.pass_through()
        await limiter.close()


async def test_the_local_count_holds_only_what_the_store_accepted(store_url: str) -> None:
    # Replica A's requests refused by the shared budget (B used it) do not count in A's own counter: once the
    # store's window lets requests through again, A asks it instead of refusing from memory.
    env = {"HAULMESH_RATE_LIMIT": "3/minute"}
    replica_a, replica_b = TenantRateLimiter.from_env(store_url, env), TenantRateLimiter.from_env(store_url, env)
    carrier = f"c{uuid.uuid4().hex[:8]}"
    try:
        assert await _allowed(replica_b, carrier, 3) == 3
        assert await _allowed(replica_a, carrier, 10) == 0
        assert await replica_a._local.test(replica_a.item, f"{{{carrier}}}")  # A alone used none of the budget
    finally:
        await replica_a.close()
        await replica_b.close()


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
