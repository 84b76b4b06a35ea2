"""Signing people in with the carrier's identity provider: OpenID Connect, authorization code flow with PKCE (S256).

The protocol's pieces come from Authlib (the authorization request, the S256 challenge); the ID token is checked
with PyJWT against the provider's published keys through the gateway's JWKS cache (rest/jwks.py: cooldown, single
flight, stale while the provider is unreachable), as the REST door checks access tokens. What is checked of the ID
token (OpenID Connect Core 1.0 §3.1.3.7): its signature with an asymmetric algorithm and a key of the provider's
JWKS, ``iss``, ``aud`` containing our client id (and ``azp`` equal to it when there are several audiences),
``exp``/``iat`` (with the REST door's leeway) and the ``nonce`` this sign-in sent.

Discovery (``<issuer>/.well-known/openid-configuration``) is read on the first sign-in and kept for an hour; its
``issuer`` must be the configured issuer exactly.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from ..config import OidcConfig
from ..rest.auth import ALGORITHMS
from ..rest.jwks import JwksCache, idp_verification

__all__ = ["OidcClient", "SignInFailed"]

_log = logging.getLogger("haulmesh.gateway.console")
_DISCOVERY_SECONDS = 3600.0
_MAX_RESPONSE_BYTES = 256 * 1024


class SignInFailed(Exception):
    """The identity provider's side of a sign-in went wrong; the message is for the person signing in."""


@dataclass(frozen=True)
class _Endpoints:
    authorization: str
    token: str
    jwks_uri: str


class OidcClient:
    """One identity provider: builds authorization requests, redeems codes, checks ID tokens."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._endpoints: _Endpoints | None = None
        self._discovered_at = 0.0
        self._jwks: JwksCache | None = None
        self._tls_verify = idp_verification(config.jwks_policy.ca_file)

    @staticmethod
    def new_pkce() -> tuple[str, str]:
        """(verifier, S256 challenge): RFC 7636's 43-128 characters, here 64."""
        verifier = generate_token(64)
        return verifier, create_s256_code_challenge(verifier)

    async def authorization_url(self, *, redirect_uri: str, state: str, nonce: str, challenge: str) -> str:
        endpoints = await self._discover()
        return prepare_grant_uri(endpoints.authorization, self.config.client_id, "code", redirect_uri=redirect_uri,
                                 scope=" ".join(self.config.scopes), state=state, nonce=nonce,
                                 code_challenge=challenge, code_challenge_method="S256")

    async def redeem(self, *, code: str, redirect_uri: str, verifier: str, nonce: str) -> dict[str, Any]:
        """The verified ID token claims of the code the provider sent back."""
        endpoints = await self._discover()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier, "client_id": self.config.client_id}
        headers = {"Accept": "application/json"}
        if self.config.client_secret is not None:
            pair = f"{_form_encode(self.config.client_id)}:{_form_encode(self.config.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        answer = await self._fetch("POST", endpoints.token, data=form, headers=headers)
        if answer.status_code != 200:
            detail = _oauth_error(answer)
            raise SignInFailed(f"the identity provider refused the sign-in code ({detail})")
        id_token = _json(answer).get("id_token")
        if not isinstance(id_token, str):
            raise SignInFailed("the identity provider's token response has no id_token (is 'openid' a scope?)")
        return await self._verify(id_token, nonce)

    async def _verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.InvalidTokenError:
            raise SignInFailed("the identity provider's id_token is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise SignInFailed(f"the id_token's algorithm {alg!r} is not accepted ({', '.join(ALGORITHMS)})")
        assert self._jwks is not None  # set by _discover
        key = await self._jwks.key(kid) if isinstance(kid, str) and kid else None
        if key is None:
            raise SignInFailed("the id_token is signed with a key the identity provider does not publish")
        try:
            claims = jwt.decode(id_token, key.key, algorithms=[alg], audience=self.config.client_id,
                                issuer=self.config.issuer, leeway=self.config.leeway_seconds,
                                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.InvalidTokenError as exc:
            raise SignInFailed(f"the identity provider's id_token is not valid for this console: {exc}") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.config.client_id:
            raise SignInFailed("the id_token names several audiences and another authorized party (azp)")
        if claims.get("nonce") != nonce:
            raise SignInFailed("the id_token's nonce is not this sign-in's: start again from the console")
        return claims

    async def _discover(self) -> _Endpoints:
        if self._endpoints is not None and time.monotonic() - self._discovered_at < _DISCOVERY_SECONDS:
            return self._endpoints
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        answer = await self._fetch("GET", url)
        if answer.status_code != 200:
            raise SignInFailed(f"the identity provider's discovery document answered {answer.status_code} ({url})")
        document = _json(answer)
        if document.get("issuer") != self.config.issuer:
            raise SignInFailed(f"the discovery document names issuer {document.get('issuer')!r}, not the configured "
                               f"{self.config.issuer!r} (HAULMESH_OIDC_ISSUER)")
        try:
            endpoints = _Endpoints(*(_https_or_loopback(document[name]) for name in
                                     ("authorization_endpoint", "token_endpoint", "jwks_uri")))
        except (KeyError, TypeError) as exc:
            raise SignInFailed(f"the discovery document lacks or misstates {exc}") from None
        methods = document.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise SignInFailed("the identity provider does not support PKCE with S256")
        if self._jwks is None or self._jwks.url != endpoints.jwks_uri:
            self._jwks = JwksCache(endpoints.jwks_uri, self.config.jwks_policy)
        self._endpoints, self._discovered_at = endpoints, time.monotonic()
        return endpoints

    async def _fetch(self, method: str, url: str, **options: Any) -> httpx.Response:
        try:
            async with httpx.AsyncClient(timeout=self.config.jwks_policy.fetch_timeout_seconds, verify=self._tls_verify,
                                         follow_redirects=False) as client:
                answer = await client.request(method, url, **options)
        except httpx.HTTPError as exc:
            _log.warning("identity provider unreachable: %s %s: %s", method, url, type(exc).__name__)
            raise SignInFailed(f"the identity provider could not be reached ({type(exc).__name__}); try again") \
                from None
        if len(answer.content) > _MAX_RESPONSE_BYTES:
            raise SignInFailed("the identity provider's answer is too large")
        return answer


def _form_encode(value: str) -> str:
    return quote(value, safe="")  # RFC 6749 §2.3.1: the client id and secret are form-encoded before Basic


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        document = answer.json()
    except ValueError:
        raise SignInFailed("the identity provider answered something other than JSON") from None
    if not isinstance(document, dict):
        raise SignInFailed("the identity provider answered JSON that is not an object")
    return document


def _oauth_error(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return f"HTTP {answer.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        description = body.get("error_description")
        return body["error"] + (f": {description}" if isinstance(description, str) else "")
    return f"HTTP {answer.status_code}"


def _https_or_loopback(url: Any) -> str:
    if not isinstance(url, str) or not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        raise TypeError(f"{url!r}: an https:// URL (http only on loopback)")
    return url
