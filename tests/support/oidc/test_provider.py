"""The tests' OpenID provider (tests/support/oidc, scripts/oidc-provider) is a real one, and strict where the
console's sign-in relies on it: a browserless sign-in through its form, the code redeemed with PKCE (S256) at its
token endpoint, the ID token checked with PyJWT against its published keys (iss, aud, nonce, the account's roles and
carrier); a wrong code_verifier refused; an authorization request without an S256 code_challenge refused; an
unknown login gets the form again; a confidential client authenticates as the console does (HTTP Basic, client_id
in the form as well).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest

from services.runtime import free_port
from tests.support.oidc import OidcProvider, complete_login, start_oidc_provider

ACCOUNTS = {"ann": {"roles": ["fleet-operator"], "carrier": "acme", "email": "ann@acme.example", "name": "Ann"}}
SCOPE = "openid profile email haulmesh"


@pytest.fixture(scope="module")
def callback_url() -> str:
    """The client's redirect URI: loopback, nothing listening (complete_login never fetches it)."""
    return f"http://127.0.0.1:{free_port()}/console/oidc/callback"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory, callback_url: str) -> Iterator[OidcProvider]:
    """One provider for the module's tests: a public client (PKCE, no secret) and Ann."""
    with start_oidc_provider(tmp_path_factory.mktemp("idp"), redirect_uris=[callback_url],
                             accounts=ACCOUNTS) as provider:
        yield provider


def _pkce() -> tuple[str, str]:
    """A code_verifier and its S256 code_challenge (RFC 7636 §4.1-4.2)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _authorize_url(idp: OidcProvider, redirect_uri: str, **params: str) -> str:
    query = {"response_type": "code", "client_id": idp.client_id, "redirect_uri": redirect_uri, "scope": SCOPE,
             "state": secrets.token_urlsafe(16), "nonce": secrets.token_urlsafe(16), **params}
    return f"{idp.discovery['authorization_endpoint']}?{urlencode(query)}"


def _sign_in(idp: OidcProvider, redirect_uri: str, login: str = "ann") -> tuple[str, str, str, str]:
    """(code, verifier, state, nonce) of a completed sign-in with PKCE S256."""
    verifier, challenge = _pkce()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    url = _authorize_url(idp, redirect_uri, state=state, nonce=nonce, code_challenge=challenge,
                         code_challenge_method="S256")
    with httpx.Client(timeout=10) as browser:
        callback = complete_login(browser, url, login)
    assert callback.startswith(redirect_uri + "?"), callback
    params = parse_qs(urlsplit(callback).query)
    assert params["state"] == [state] and params["iss"] == [idp.issuer], params
    assert "error" not in params, params
    return params["code"][0], verifier, state, nonce


def _redeem(idp: OidcProvider, code: str, verifier: str, redirect_uri: str, **options: object) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": verifier, "client_id": idp.client_id}
    with httpx.Client(timeout=10) as http:
        return http.post(idp.discovery["token_endpoint"], data=form, **options)


def _verified(idp: OidcProvider, id_token: str) -> dict:
    key = jwt.PyJWKClient(idp.discovery["jwks_uri"]).get_signing_key_from_jwt(id_token)
    return jwt.decode(id_token, key.key, algorithms=["ES256"], audience=idp.client_id, issuer=idp.issuer,
                      options={"require": ["exp", "iat", "iss", "aud", "sub", "nonce"]})


def test_the_discovery_document_offers_the_code_flow_with_s256_only(idp: OidcProvider) -> None:
    document = idp.discovery
    assert document["issuer"] == idp.issuer
    assert document["response_types_supported"] == ["code"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["id_token_signing_alg_values_supported"] == ["ES256"]
    assert {"openid", "profile", "email", "haulmesh"} <= set(document["scopes_supported"])
    assert {"sub", "name", "email", "roles", "carrier"} <= set(document["claims_supported"])


def test_a_sign_in_with_pkce_yields_an_id_token_with_the_accounts_roles_and_carrier(idp: OidcProvider,
                                                                                     callback_url: str) -> None:
    code, verifier, _, nonce = _sign_in(idp, callback_url)
    answer = _redeem(idp, code, verifier, callback_url)
    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    assert tokens["token_type"] == "Bearer" and tokens["access_token"]
    assert jwt.get_unverified_header(tokens["id_token"])["alg"] == "ES256"
    claims = _verified(idp, tokens["id_token"])
    assert claims["sub"] == "ann"
    assert claims["roles"] == ["fleet-operator"] and claims["carrier"] == "acme"
    assert claims["email"] == "ann@acme.example" and claims["name"] == "Ann"
    assert claims["nonce"] == nonce
    # The code is single-use.
    again = _redeem(idp, code, verifier, callback_url)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text


def test_a_wrong_code_verifier_is_refused(idp: OidcProvider, callback_url: str) -> None:
    code, _, _, _ = _sign_in(idp, callback_url)
    wrong, _ = _pkce()
    answer = _redeem(idp, code, wrong, callback_url)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_grant", answer.text
    assert "id_token" not in answer.json()


@pytest.mark.parametrize(("pkce", "why"), [
    ({}, "Authorization Server policy requires PKCE to be used for this request"),
    ({"code_challenge_method": "S256"}, "code_challenge must be provided with code_challenge_method"),
    ({"code_challenge": "a" * 43, "code_challenge_method": "plain"}, "not supported value of code_challenge_method"),
    ({"code_challenge": "a" * 43},
     "plain code_challenge_method fallback disabled, code_challenge_method must be provided"),
], ids=["no-pkce", "method-without-challenge", "plain", "challenge-without-method"])
def test_an_authorization_request_without_an_s256_challenge_is_refused(idp: OidcProvider, callback_url: str,
                                                                        pkce: dict[str, str], why: str) -> None:
    """PKCE is required, with S256: the refusal goes back to the (registered) redirect URI, no code in it."""
    url = _authorize_url(idp, callback_url, state="s-1", **pkce)
    with httpx.Client(timeout=10) as browser:
        answer = browser.get(url)
    assert answer.is_redirect, (answer.status_code, answer.text[:500])
    location = answer.headers["location"]
    assert location.startswith(callback_url + "?"), location
    params = parse_qs(urlsplit(location).query)
    assert params["error"] == ["invalid_request"] and params["error_description"] == [why], params
    assert params["state"] == ["s-1"] and "code" not in params, params


def test_an_unknown_login_gets_the_form_again_with_an_error(idp: OidcProvider, callback_url: str) -> None:
    _, challenge = _pkce()
    url = _authorize_url(idp, callback_url, code_challenge=challenge, code_challenge_method="S256")
    with httpx.Client(timeout=10) as browser, pytest.raises(AssertionError, match="Unknown login: bob"):
        complete_login(browser, url, "bob")


def test_a_confidential_client_authenticates_as_the_console_does(tmp_path: Path, callback_url: str) -> None:
    """HTTP Basic with client_id also in the form (services/gateway/console/oidc.py); a wrong secret is refused."""
    secret = secrets.token_urlsafe(24)
    with start_oidc_provider(tmp_path, redirect_uris=[callback_url], accounts=ACCOUNTS,
                             client_secret=secret) as idp:
        assert idp.client_secret == secret
        code, verifier, _, nonce = _sign_in(idp, callback_url)
        refused = _redeem(idp, code, verifier, callback_url, auth=(idp.client_id, "not-the-secret"))
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client", refused.text
        code, verifier, _, nonce = _sign_in(idp, callback_url)
        answer = _redeem(idp, code, verifier, callback_url, auth=(idp.client_id, secret))
        assert answer.status_code == 200, answer.text
        claims = _verified(idp, answer.json()["id_token"])
        assert (claims["sub"], claims["carrier"], claims["nonce"]) == ("ann", "acme", nonce)
