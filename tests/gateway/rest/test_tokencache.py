"""Verified tokens remembered (rest/tokencache.py): not re-verified per request, never past exp or the maximum
age, bounded in number, keyed by a hash."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from services.gateway.rest import auth as auth_module
from services.gateway.rest.auth import AuthConfig, Authenticator
from services.gateway.rest.errors import RestError
from services.gateway.rest.tokencache import VerifiedTokens
from services.runtime.tokens import mint
from tests.conftest import wait_for


async def test_a_token_is_verified_once_then_served_from_the_cache(tmp_path: Path, monkeypatch) -> None:
    auth = Authenticator(AuthConfig.from_env(tmp_path, {}))
    token = mint(carrier="acme", scopes="a b", state_dir=tmp_path)
    decodes = []
    real_decode = jwt.decode
    monkeypatch.setattr(auth_module.jwt, "decode", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    first = await auth.authenticate(f"Bearer {token}")
    for _ in range(100):
        assert await auth.authenticate(f"Bearer {token}") == first
    assert len(decodes) == 1 and first.carrier == "acme" and first.scopes == {"a", "b"}
    # Only successes are kept: a refused token is refused every time (here: one of an unknown issuer's key).
    stranger = mint(carrier="acme", scopes="a", state_dir=tmp_path / "other")
    for _ in range(3):
        with pytest.raises(RestError):
            await auth.authenticate(f"Bearer {stranger}")


async def test_a_withdrawn_key_stops_counting_once_the_entry_ages_out(tmp_path: Path, monkeypatch) -> None:
    """A token verified before its key is withdrawn is served from the cache (not verified again) until its entry
    ages out (1 s here, 60 s in service), then refused: the withdrawal counts after the maximum age, not never."""
    auth = Authenticator(AuthConfig.from_env(tmp_path, {}))
    auth._verified = VerifiedTokens(max_age_seconds=1.0)
    token = mint(carrier="acme", scopes="a", state_dir=tmp_path)
    decodes = []
    real_decode = jwt.decode
    monkeypatch.setattr(auth_module.jwt, "decode", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    assert (await auth.authenticate(f"Bearer {token}")).carrier == "acme"
    verified_at = time.time()
    (tmp_path / "issuer" / "signing-key.pem").unlink()
    mint(carrier="acme", scopes="a", state_dir=tmp_path)  # a new key: jwks.json now lists only it
    assert (await auth.authenticate(f"Bearer {token}")).carrier == "acme"  # from the cache: not verified again
    assert len(decodes) == 1

    async def refused() -> bool:  # the entry ages out after 1 s; the JWKS file is re-read within a second
        try:
            await auth.authenticate(f"Bearer {token}")
        except RestError as exc:
            return "not trusted" in exc.message
        return False

    assert await wait_for(refused, timeout_seconds=10)
    assert time.time() - verified_at >= 1.0  # refused only once the entry had aged out


def test_entries_end_at_exp_or_the_maximum_age_and_are_bounded() -> None:
    cache: VerifiedTokens[str] = VerifiedTokens(max_entries=3, max_age_seconds=60)
    cache.put("expired", "p", time.time() - 1)
    assert cache.get("expired") is None and len(cache) == 0
    for i in range(5):
        cache.put(f"t{i}", f"p{i}", time.time() + 3600)
    assert len(cache) == 3 and cache.get("t0") is None and cache.get("t4") == "p4"
    aged: VerifiedTokens[str] = VerifiedTokens(max_age_seconds=0.0)
    aged.put("t", "p", time.time() + 3600)
    assert aged.get("t") is None
    # The key is the token's SHA-256, never the token.
    assert all(isinstance(k, bytes) and len(k) == 32 for k in cache._entries)
