"""Console sessions and pending sign-ins, kept in the store so that any gateway replica serves them and a sign-out
ends a session everywhere at once.

Keys (no carrier hash tag: a session is looked up before its carrier is known):

* ``console-session:<sha256 of the cookie value>``: the signed-in person (JSON, :meth:`ConsoleUser.to_record`),
  expiring with the session (HAULMESH_CONSOLE_SESSION_SECONDS, 8 hours by default: a shift; absolute, not renewed
  by use, so a stolen cookie dies with the shift);
* ``console-login:<sha256 of the state>``: a sign-in under way (PKCE verifier, nonce, the page to return to),
  ten minutes, taken once by the callback.

Only digests of the cookie and of the state are keys: a copy of the store holds no usable credential. The cookie
value is 256 random bits.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError

from services.runtime import Unavailable

from .roles import ConsoleUser, SignInRefused

__all__ = ["DEFAULT_SESSION_SECONDS", "LOGIN_SECONDS", "ConsoleSessions", "PendingLogin"]

DEFAULT_SESSION_SECONDS = 8 * 3600
#: How long a person may take at the identity provider between leaving the console and coming back.
LOGIN_SECONDS = 600
_SESSION_PREFIX = "console-session:"
_LOGIN_PREFIX = "console-login:"
#: The largest record we read back: anything longer was not written by us.
_MAX_RECORD_BYTES = 8192


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """256 random bits, URL-safe: a cookie value or an OAuth2 state."""
    return secrets.token_urlsafe(32)


class PendingLogin(dict[str, Any]):
    """What the callback needs of a sign-in it did not start: ``verifier``, ``nonce``, ``return_to``."""


class ConsoleSessions:
    """Create, read and end console sessions (see the module docstring)."""

    def __init__(self, redis_client: Callable[[], redis.asyncio.Redis], *,
                 session_seconds: int = DEFAULT_SESSION_SECONDS) -> None:
        self._redis = redis_client
        self.session_seconds = session_seconds

    async def create(self, user: ConsoleUser) -> str:
        """A new session for ``user``; returns the cookie value."""
        cookie = new_secret()
        await self._run(self._redis().set(_SESSION_PREFIX + _digest(cookie), json.dumps(user.to_record()),
                                          ex=self.session_seconds))
        return cookie

    async def user(self, cookie: str) -> ConsoleUser | None:
        """The person a session cookie signs in; None for an unknown, ended or expired session."""
        if not cookie or len(cookie) > 128:
            return None
        raw = await self._run(self._redis().get(_SESSION_PREFIX + _digest(cookie)))
        if raw is None or len(raw) > _MAX_RECORD_BYTES:
            return None
        try:
            return ConsoleUser.from_record(json.loads(raw))
        except (ValueError, SignInRefused):  # a record this version cannot read (a role since withdrawn): signed out
            return None

    async def end(self, cookie: str) -> None:
        if cookie and len(cookie) <= 128:
            await self._run(self._redis().delete(_SESSION_PREFIX + _digest(cookie)))

    async def begin_login(self, pending: PendingLogin) -> str:
        """Remember a sign-in under way; returns its OAuth2 ``state``."""
        state = new_secret()
        await self._run(self._redis().set(_LOGIN_PREFIX + _digest(state), json.dumps(pending), ex=LOGIN_SECONDS))
        return state

    async def take_login(self, state: str) -> PendingLogin | None:
        """The sign-in ``state`` names, once: a replayed callback finds nothing."""
        if not state or len(state) > 128:
            return None
        raw = await self._run(self._redis().getdel(_LOGIN_PREFIX + _digest(state)))
        return None if raw is None or len(raw) > _MAX_RECORD_BYTES else PendingLogin(json.loads(raw))

    @staticmethod
    async def _run(command: Any) -> Any:
        try:
            return await command
        except RedisError as exc:  # the client already retried with backoff (the runtime's store client)
            raise Unavailable(f"the console's session store is unreachable ({type(exc).__name__}); retry shortly",
                              reason="STORE_UNAVAILABLE") from None
