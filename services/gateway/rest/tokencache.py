"""Verified access tokens remembered for a short while, so a client's repeated token is not re-verified per request.

A TMS sends the same bearer token with every request until it expires; verifying its signature each time
(parsing, base64, an ECDSA or RSA check) was about half of what the gateway spent on a request it then refused
for the tenant's rate limit (AT-18). The Authenticator asks this cache first and stores what it verified.

* Keyed by the SHA-256 of the token, never the token itself (a heap dump shows no usable credential).
* An entry lives until the token's ``exp`` (no leeway: the cache never extends a token), and at most
  :data:`MAX_AGE_SECONDS`. A key withdrawn from the JWKS is thus honoured, for tokens verified before, until the
  gateway's copy of the JWKS drops it (the URL's refresh, ``HAULMESH_JWKS_REFRESH_SECONDS``, 300 s by default, or
  the stale bound while the IdP is unreachable; the file within about a second) plus up to ``MAX_AGE_SECONDS``.
* At most :data:`MAX_ENTRIES` tokens (least recently used dropped first): its memory is bounded however many
  tokens are presented (a few hundred bytes each).

Only successes are cached: a refused token is verified (and refused) again each time.
"""

from __future__ import annotations

import hashlib
import time
from typing import Generic, TypeVar

from cachetools import TLRUCache

__all__ = ["MAX_AGE_SECONDS", "MAX_ENTRIES", "VerifiedTokens"]

#: Tokens kept (about 300 bytes each with their principal: ~3 MiB at most).
MAX_ENTRIES = 10_000
#: The longest a verification is trusted, whatever the token's ``exp``.
MAX_AGE_SECONDS = 60.0

T = TypeVar("T")


class VerifiedTokens(Generic[T]):
    """What a token was verified to say (``T``: the Principal), until it expires; see the module docstring."""

    def __init__(self, *, max_entries: int = MAX_ENTRIES, max_age_seconds: float = MAX_AGE_SECONDS) -> None:
        self._max_age = max_age_seconds
        # Each entry's own deadline (value = (deadline, principal)); time.time since ``exp`` is wall-clock time.
        self._entries: TLRUCache[bytes, tuple[float, T]] = TLRUCache(
            maxsize=max_entries, ttu=lambda _key, value, _now: value[0], timer=time.time)

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> T | None:
        """The principal ``token`` was verified to carry, if that is still to be trusted; None otherwise."""
        entry = self._entries.get(self._key(token))
        return None if entry is None else entry[1]

    def put(self, token: str, principal: T, expires_at: float) -> None:
        """Remember a verified ``token`` until ``expires_at`` (its ``exp``, Unix seconds) or the maximum age."""
        deadline = min(float(expires_at), time.time() + self._max_age)
        if deadline > time.time():
            self._entries[self._key(token)] = (deadline, principal)

    def __len__(self) -> int:
        return len(self._entries)
