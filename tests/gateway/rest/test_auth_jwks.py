"""The hardened tokens in-process, against a real HTTPS JWKS endpoint that counts its fetches: single flight,
cooldown after failures as after successes, stale while error within its bound, kid bounds, ``sub`` required, the
issuer → carriers binding, the settings' defaults (their bad values: test_auth_units.py). The real gateway's
version is tests/gateway/rest/test_at16_tokens.py."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.gateway.rest.auth import MAX_KID_CHARS, AuthConfig, Authenticator
from services.gateway.rest.errors import RestError
from services.gateway.rest.jwks import JwksCache, JwksPolicy, kid_digest
from services.runtime import ConfigError
from tests.conftest import wait_for

from .idp import IdentityProvider


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[IdentityProvider]:
    provider = IdentityProvider(tmp_path / "idp")
    provider.rotate()
    with provider.serving():
        yield provider


def _auth(idp: IdentityProvider, tmp_path: Path, **env: str) -> Authenticator:
    settings = {"HAULMESH_JWKS_URL": idp.url, "HAULMESH_JWKS_CA_FILE": str(idp.ca_file),
                "HAULMESH_JWKS_COOLDOWN_SECONDS": "0.5", "HAULMESH_JWKS_FETCH_TIMEOUT_SECONDS": "2", **env}
    return Authenticator(AuthConfig.from_env(tmp_path, settings))


async def _refused(auth: Authenticator, token: str) -> RestError:
    with pytest.raises(RestError) as refused:
        await auth.authenticate(f"Bearer {token}")
    assert refused.value.code_name == "UNAUTHENTICATED"
    return refused.value


def _random_kid() -> str:
    return f"flood-{secrets.token_urlsafe(12)}"


async def test_a_valid_token_over_https(idp: IdentityProvider, tmp_path: Path) -> None:
    auth = _auth(idp, tmp_path)
    principal = await auth.authenticate(f"Bearer {idp.token(carrier='acme', sub='dispatcher-7')}")
    assert (principal.carrier, principal.subject) == ("acme", "dispatcher-7")
    assert idp.fetches == 1


async def test_an_untrusted_idp_certificate_is_a_failed_fetch(idp: IdentityProvider, tmp_path: Path) -> None:
    auth = Authenticator(AuthConfig.from_env(tmp_path, {"HAULMESH_JWKS_URL": idp.url}))  # no CA: system store only
    await _refused(auth, idp.token())
    assert idp.fetches == 0  # the TLS handshake failed before any request


async def test_concurrent_unknown_kids_share_one_fetch(idp: IdentityProvider, tmp_path: Path) -> None:
    idp.delay_seconds = 0.5  # every lookup below arrives while the first fetch is still in flight
    auth = _auth(idp, tmp_path)
    foreign = ec.generate_private_key(ec.SECP256R1())
    floods = [auth.authenticate(f"Bearer {idp.token(_random_kid(), key=foreign)}") for _ in range(50)]
    results = await asyncio.gather(auth.authenticate(f"Bearer {idp.token()}"), *floods, return_exceptions=True)
    assert results[0].carrier == "acme"
    assert all(isinstance(r, RestError) and r.code_name == "UNAUTHENTICATED" for r in results[1:])
    assert idp.fetches == 1


async def test_an_unknown_kid_within_the_cooldown_is_refused_at_once(idp: IdentityProvider, tmp_path: Path) -> None:
    auth = _auth(idp, tmp_path, HAULMESH_JWKS_COOLDOWN_SECONDS="30")
    await auth.authenticate(f"Bearer {idp.token()}")
    idp.delay_seconds = 5  # were a fetch started, the lookups below would take this long
    foreign = ec.generate_private_key(ec.SECP256R1())
    began = time.monotonic()
    for _ in range(200):
        await _refused(auth, idp.token(_random_kid(), key=foreign))
    assert time.monotonic() - began < 4
    assert idp.fetches == 1


async def test_the_cooldown_also_follows_a_failed_fetch(idp: IdentityProvider, tmp_path: Path) -> None:
    idp.failing = True
    auth = _auth(idp, tmp_path, HAULMESH_JWKS_COOLDOWN_SECONDS="1")
    token = idp.token()
    await _refused(auth, token)
    assert idp.fetches == 1
    for _ in range(100):  # inside the cooldown after the failure: refused without asking the IdP again
        await _refused(auth, token)
    assert idp.fetches == 1
    idp.failing = False

    async def accepted() -> bool:
        try:
            return (await auth.authenticate(f"Bearer {token}")).carrier == "acme"
        except RestError:
            return False

    await wait_for(accepted, timeout_seconds=10)
    assert idp.fetches == 2
    assert idp.fetch_times[1] - idp.fetch_times[0] >= 1.0


async def test_a_rotated_key_is_accepted_after_exactly_one_fetch(idp: IdentityProvider, tmp_path: Path) -> None:
    auth = _auth(idp, tmp_path)
    await auth.authenticate(f"Bearer {idp.token()}")
    new_kid = idp.rotate()
    before = idp.fetches

    async def accepted() -> bool:
        try:
            return bool(await auth.authenticate(f"Bearer {idp.token(new_kid)}"))
        except RestError:
            return False

    await wait_for(accepted, timeout_seconds=10)
    assert idp.fetches == before + 1


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_stale_while_error_within_its_bound_then_fail_closed(idp: IdentityProvider) -> None:
    clock = _Clock()
    policy = JwksPolicy(refresh_seconds=10, cooldown_seconds=1, max_stale_seconds=20, fetch_timeout_seconds=2,
                        ca_file=idp.ca_file)
    cache = JwksCache(idp.url, policy, clock=clock)
    kid = idp.published[-1]
    assert await cache.key(kid) is not None and idp.fetches == 1
    idp.failing = True
    clock.now += 15  # past the refresh age, the IdP failing: the last good set serves without waiting
    assert await cache.key(kid) is not None
    await wait_for(lambda: cache.failures == 1)  # the background refresh was tried, and failed
    clock.now += 2
    assert await cache.key(kid) is not None  # still within refresh + max stale (30 s)
    clock.now += 14  # 31 s old: beyond the bound, the set is no longer trusted and the fetch fails again
    assert await cache.key(kid) is None
    idp.failing = False
    clock.now += 2
    assert await cache.key(kid) is not None  # the IdP is back: one fetch and the key is trusted again
    assert cache.fetches == idp.fetches


@pytest.mark.parametrize("kid", ["k" * (MAX_KID_CHARS + 1), "a b", "kid\nforged log line", "ключ", "<script>",
                                 "k\x00"])
async def test_a_malformed_kid_is_refused_before_any_lookup(idp: IdentityProvider, tmp_path: Path, kid: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    auth = _auth(idp, tmp_path)
    caplog.set_level(logging.DEBUG, logger="haulmesh.gateway.auth")
    refused = await _refused(auth, idp.token(idp.published[-1], header={"kid": kid}))
    assert "kid is malformed" in refused.message and kid not in refused.message
    assert idp.fetches == 0
    assert kid not in caplog.text


async def test_an_unknown_kid_is_logged_as_a_digest_only(idp: IdentityProvider, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    auth = _auth(idp, tmp_path)
    caplog.set_level(logging.DEBUG, logger="haulmesh.gateway.auth")
    kid = "k" * MAX_KID_CHARS  # the longest kid accepted as a kid, not in the set
    await _refused(auth, idp.token(kid, key=ec.generate_private_key(ec.SECP256R1())))
    assert kid not in caplog.text and kid_digest(kid) in caplog.text


@pytest.mark.parametrize("sub", [None, "", "s" * 256, 42])
async def test_sub_is_required(idp: IdentityProvider, tmp_path: Path, sub: object) -> None:
    auth = _auth(idp, tmp_path)
    refused = await _refused(auth, idp.token(sub=sub))
    assert "sub" in refused.message


async def test_the_issuer_speaks_only_for_its_bound_carriers(idp: IdentityProvider, tmp_path: Path) -> None:
    auth = _auth(idp, tmp_path, HAULMESH_JWT_ISSUER_CARRIERS="acme, acme-east")
    assert (await auth.authenticate(f"Bearer {idp.token(carrier='acme-east')}")).carrier == "acme-east"
    refused = await _refused(auth, idp.token(carrier="globex"))
    assert refused.reason == "CARRIER_NOT_BOUND_TO_ISSUER" and "globex" in refused.message


def test_a_missing_jwks_ca_file_is_refused(tmp_path: Path) -> None:
    config = AuthConfig.from_env(tmp_path, {"HAULMESH_JWKS_URL": "https://idp.example/jwks.json",
                                            "HAULMESH_JWKS_CA_FILE": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match="HAULMESH_JWKS_CA_FILE"):
        Authenticator(config)


def test_token_settings_defaults(tmp_path: Path) -> None:
    config = AuthConfig.from_env(tmp_path, {})
    assert config.jwks_policy == JwksPolicy(refresh_seconds=300, cooldown_seconds=30, max_stale_seconds=3600,
                                            fetch_timeout_seconds=5, ca_file=None)
    assert config.issuer_carriers is None
