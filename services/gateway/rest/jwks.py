"""A remote JWKS (``HAULMESH_JWKS_URL``) cached so that neither an unreachable identity provider nor a flood of
unknown ``kid``s can stall authentication (docs/security.md "Tokens").

PyJWT's PyJWKClient is not enough here: its cooldown starts only after a successful fetch (a failing IdP is asked
again on every unknown kid), it holds one lock across the network fetch (every lookup waits behind it), and it
drops an expired key set instead of using it while the IdP is down. This class keeps PyJWT for what it does well
(parsing and validating the key set, ``PyJWKSet``) and fetches with httpx (the gateway's HTTP client) itself:

* **Single flight**: at most one fetch at a time; every lookup that needs it awaits that same fetch.
* **Cooldown after any outcome**: a fetch starts only ``cooldown_seconds`` after the previous one ended, whether
  it succeeded or failed. An unknown kid inside the cooldown is answered "unknown" at once, never waiting.
* **Refresh without waiting**: a known kid of a set older than ``refresh_seconds`` is served from the cache while
  a background fetch (cooldown permitting) renews it.
* **Stale while error**: when fetches fail, the last good set keeps serving its keys until it is
  ``refresh_seconds + max_stale_seconds`` old; after that nothing is trusted until a fetch succeeds (fail closed).

A lookup therefore waits only for a fetch already in flight or one it starts, each bounded by
``fetch_timeout_seconds`` (all told: connect, TLS, response), and at most one fetch per cooldown reaches the IdP
whatever the traffic. State is per process and per event loop (the gateway runs one of each).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt

from services.runtime import ConfigError

__all__ = ["JwksCache", "JwksPolicy", "idp_verification", "kid_digest"]

_log = logging.getLogger("haulmesh.gateway.auth")

#: A JWKS is a few keys (a few KiB); a larger answer is not a key set and is not read into memory.
MAX_JWKS_BYTES = 512 * 1024


def kid_digest(kid: str) -> str:
    """A short, stable stand-in for a ``kid`` in logs: the raw value comes from the caller and is never logged."""
    return hashlib.sha256(kid.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True)
class JwksPolicy:
    """The cache's timings (GatewayConfig's ``jwks_*_seconds``) and the extra CA of the IdP's certificate."""

    refresh_seconds: float = 300.0
    cooldown_seconds: float = 30.0
    max_stale_seconds: float = 3600.0
    fetch_timeout_seconds: float = 5.0
    ca_file: Path | None = None


def idp_verification(ca_file: Path | None) -> ssl.SSLContext | bool:
    """How an identity provider's certificate is checked: the system store, plus ``ca_file`` when given."""
    if ca_file is None:
        return True
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"HAULMESH_JWKS_CA_FILE: {exc}", field="HAULMESH_JWKS_CA_FILE") from None
    return context


class JwksCache:
    """The signing keys of one JWKS URL, looked up by kid (see the module docstring for the guarantees)."""

    def __init__(self, url: str, policy: JwksPolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.policy = policy
        self._clock = clock
        self._verify = idp_verification(policy.ca_file)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # the last successful fetch (clock)
        self._attempt_ended_at: float | None = None  # the end of the last fetch, whatever its outcome
        self._inflight: asyncio.Task[None] | None = None
        #: Fetches started, and of them those that failed (for tests and the figures of docs/security.md).
        self.fetches = 0
        self.failures = 0

    def _usable(self, now: float) -> dict[str, jwt.PyJWK]:
        """The cached keys unless the set is older than its refresh age plus the bounded staleness."""
        if self._fetched_at is None:
            return {}
        if now - self._fetched_at > self.policy.refresh_seconds + self.policy.max_stale_seconds:
            return {}
        return self._keys

    def _start_fetch(self, now: float) -> asyncio.Task[None] | None:
        """The fetch in flight, else a new one if the cooldown since the last one ended has passed, else None."""
        if self._inflight is not None:
            return self._inflight
        if self._attempt_ended_at is not None and now - self._attempt_ended_at < self.policy.cooldown_seconds:
            return None
        self.fetches += 1
        self._inflight = asyncio.get_running_loop().create_task(self._fetch(), name="jwks-fetch")
        return self._inflight

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key named ``kid``, or None when the IdP does not list it (or cannot be asked now)."""
        now = self._clock()
        found = self._usable(now).get(kid)
        if found is not None:
            if now - (self._fetched_at or now) > self.policy.refresh_seconds:
                self._start_fetch(now)  # renewed in the background: this request does not wait
            return found
        fetch = self._start_fetch(now)
        if fetch is None:
            return None  # fetched within the cooldown: an unknown kid is refused at once
        # shield: a caller that gives up (client gone) must not cancel the fetch the others are waiting on.
        await asyncio.shield(fetch)
        return self._usable(self._clock()).get(kid)

    async def _fetch(self) -> None:
        try:
            async with asyncio.timeout(self.policy.fetch_timeout_seconds):
                body = await self._get()
            keys = self._parse(body)
        except (OSError, TimeoutError, httpx.HTTPError, ValueError, RecursionError, jwt.PyJWKSetError) as exc:
            self.failures += 1
            _log.warning("JWKS fetch from %s failed (%s: %s); %s", self.url, type(exc).__name__, exc,
                         "keeping the last good key set" if self._keys else "no key set yet")
        else:
            self._keys, self._fetched_at = keys, self._clock()
            _log.info("JWKS fetched from %s: %d signing keys", self.url, len(keys))
        finally:
            self._attempt_ended_at = self._clock()
            self._inflight = None

    async def _get(self) -> bytes:
        # A fresh client per fetch: fetches are at most one per cooldown, and nothing is left open between them.
        timeout = httpx.Timeout(self.policy.fetch_timeout_seconds)
        async with httpx.AsyncClient(verify=self._verify, timeout=timeout, follow_redirects=False,
                                     trust_env=False) as client, client.stream("GET", self.url) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"the answer exceeds {MAX_JWKS_BYTES} bytes")
            return bytes(body)

    @staticmethod
    def _parse(body: bytes) -> dict[str, jwt.PyJWK]:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("the answer is not a JSON object")
        keyset = jwt.PyJWKSet.from_dict(data)  # skips keys of algorithms it cannot use; raises if none is left
        keys = {k.key_id: k for k in keyset.keys if k.key_id and k.public_key_use in ("sig", None)}
        if not keys:
            raise ValueError("no signing key with a kid")
        return keys
