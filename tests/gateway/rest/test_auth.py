"""Bearer tokens at the real gateway over real HTTP: what is refused (401/403) and what passes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.runtime import Mesh
from services.runtime.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER, jwks_path

from .conftest import bearer, error_info

# A read of another carrier's (or no) subscription reaches the gateway's own WebhookService, so these tests
# need no other engineer's service: 404 proves the token was accepted and the call made.
PROBE = "/api/v1/webhookSubscriptions/01j9z3k6v8q2m4n5p7r9s1t3w5"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(carrier: str = "acme", **overrides) -> dict:
    now = int(time.time())
    claims = {"iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE, "sub": "tms", "iat": now, "nbf": now,
              "exp": now + 300, "carrier": carrier, "scope": "webhook:read"}
    claims.update(overrides)
    return claims


def _kid(mesh: Mesh) -> str:
    return json.loads(jwks_path(mesh.state_dir).read_text())["keys"][0]["kid"]


async def _status(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.get(PROBE, headers=bearer(token))


async def test_valid_token_reaches_the_service(http, token) -> None:
    response = await _status(http, token("acme", "webhook:read"))
    assert response.status_code == 404, response.text
    assert error_info(response.json())["reason"] == "WEBHOOK_SUBSCRIPTION_NOT_FOUND"


async def test_no_token_is_401_with_www_authenticate(http) -> None:
    response = await http.get(PROBE)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["code"] == 16 and error_info(body)["reason"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-jwt", "Bearer a.b.c"])
async def test_malformed_authorization_is_401(http, header: str) -> None:
    response = await http.get(PROBE, headers={"Authorization": header})
    assert response.status_code == 401
    assert "Bearer" in response.headers["www-authenticate"]


async def test_expired_token_is_401(http, token) -> None:
    expired = token("acme", "webhook:read", now=time.time() - 3600, ttl_seconds=600)
    response = await _status(http, expired)
    assert response.status_code == 401
    assert "expired" in response.json()["message"]


async def test_expiry_within_leeway_is_accepted(http, token) -> None:
    # Expired 5 s ago: inside the 30 s leeway for clock skew.
    almost = token("acme", "webhook:read", now=time.time() - 605, ttl_seconds=600)
    assert (await _status(http, almost)).status_code == 404


async def test_wrong_audience_is_401(http, token) -> None:
    response = await _status(http, token("acme", "webhook:read", audience="https://someone-else.example"))
    assert response.status_code == 401
    assert "audience" in response.json()["message"]


async def test_wrong_issuer_is_401(http, token) -> None:
    response = await _status(http, token("acme", "webhook:read", issuer="https://evil.example"))
    assert response.status_code == 401


async def test_not_yet_valid_token_is_401(http, token) -> None:
    response = await _status(http, token("acme", "webhook:read", now=time.time() + 3600))
    assert response.status_code == 401


async def test_alg_none_is_401(http, token, mesh: Mesh) -> None:
    token("acme")  # make sure the issuer exists
    header = {"alg": "none", "typ": "at+jwt", "kid": _kid(mesh)}
    unsigned = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}."
    response = await _status(http, unsigned)
    assert response.status_code == 401
    assert "algorithm" in response.json()["message"]


async def test_hs256_signed_with_the_public_key_is_401(http, token, mesh: Mesh) -> None:
    token("acme")
    jwk = json.loads(jwks_path(mesh.state_dir).read_text())["keys"][0]
    public = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(jwk))
    for secret in (public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
                   json.dumps(jwk).encode()):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": jwk["kid"]}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        response = await _status(http, f"{signing_input}.{_b64(signature)}")
        assert response.status_code == 401, response.text


async def test_token_of_an_untrusted_key_is_401(http, token, mesh: Mesh) -> None:
    token("acme")
    foreign = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(_claims(), foreign, algorithm="ES256", headers={"kid": _kid(mesh), "typ": "at+jwt"})
    assert (await _status(http, forged)).status_code == 401
    unknown_kid = jwt.encode(_claims(), foreign, algorithm="ES256", headers={"kid": "nope", "typ": "at+jwt"})
    assert (await _status(http, unknown_kid)).status_code == 401


async def test_tampered_claims_are_401(http, token) -> None:
    good = token("acme", "webhook:read")
    head, _, sig = good.split(".")
    tampered = f"{head}.{_b64(json.dumps(_claims(carrier='globex')).encode())}.{sig}"
    assert (await _status(http, tampered)).status_code == 401


def _sign(mesh: Mesh, header: dict, claims: dict) -> str:
    """A token signed by the trusted dev key with exactly ``header`` (PyJWT would add ``typ: JWT``)."""
    key = serialization.load_pem_private_key((mesh.state_dir / "issuer" / "signing-key.pem").read_bytes(), None)
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).sign(signing_input.encode(), key)
    return f"{signing_input}.{_b64(signature)}"


async def test_signing_helper_makes_accepted_tokens(http, token, mesh: Mesh) -> None:
    token("acme")
    good = _sign(mesh, {"alg": "ES256", "typ": "at+jwt", "kid": _kid(mesh)}, _claims())
    assert (await _status(http, good)).status_code == 404


@pytest.mark.parametrize("typ", ["JWT", None, "id+jwt"])
async def test_token_that_is_not_an_access_token_is_401(http, token, mesh: Mesh, typ: str | None) -> None:
    token("acme")
    header = {"alg": "ES256", "kid": _kid(mesh), **({"typ": typ} if typ else {})}
    response = await _status(http, _sign(mesh, header, _claims()))
    assert response.status_code == 401, response.text


@pytest.mark.parametrize("carrier", ["", "ACME", "-acme", "a" * 64, "acme/other", "carriers/acme"])
async def test_malformed_carrier_claim_is_401(http, token, carrier: str) -> None:
    response = await _status(http, token("acme", "webhook:read", extra_claims={"carrier": carrier}))
    assert response.status_code == 401


async def test_missing_carrier_claim_is_401(http, token, mesh: Mesh) -> None:
    token("acme")
    claims = _claims()
    del claims["carrier"]
    response = await _status(http, _sign(mesh, {"alg": "ES256", "typ": "at+jwt", "kid": _kid(mesh)}, claims))
    assert response.status_code == 401


async def test_missing_scope_is_403(http, token) -> None:
    response = await _status(http, token("acme", "tender:read webhook:write"))
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == 7
    info = error_info(body)
    assert info["reason"] == "MISSING_SCOPE" and info["metadata"]["scope"] == "webhook:read"
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


async def test_scope_is_checked_per_operation(http, token) -> None:
    reader = token("acme", "tender:read")
    created = await http.post("/api/v1/tenders", json={}, headers=bearer(reader))
    assert created.status_code == 403
    assert error_info(created.json())["metadata"]["scope"] == "tender:create"
