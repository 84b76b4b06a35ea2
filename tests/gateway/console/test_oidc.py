"""Signing in with a real identity provider (npm oidc-provider, tests/support/oidc): authorization code + PKCE,
the role claims mapped to the console's roles, the dev login absent, and every way a sign-in can go wrong."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from services.gateway.config import GatewayConfig
from services.gateway.console.app import SESSION_COOKIE
from services.runtime import ConfigError, Mesh, free_port
from tests.support.oidc import OidcProvider, complete_login, start_oidc_provider

from ...conftest import Pki, running_mesh

ACCOUNTS = {
    "ann": {"name": "Ann Operator", "email": "ann@acme.example", "roles": ["fleet-operator", "unknown-role"],
            "carrier": "acme"},
    "bob": {"name": "Bob Visitor", "email": "bob@acme.example", "roles": ["visitor"], "carrier": "acme"},
}


@pytest.fixture(scope="module")
async def idp_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[tuple[Mesh, OidcProvider]]:
    """A mesh whose gateway signs people in with a real OpenID provider (a public client, PKCE alone)."""
    http_port = free_port()
    callback = f"http://127.0.0.1:{http_port}/console/oidc/callback"
    with start_oidc_provider(tmp_path_factory.mktemp("idp"), redirect_uris=[callback], accounts=ACCOUNTS) as idp:
        env = {"HAULMESH_OIDC_ISSUER": idp.issuer, "HAULMESH_OIDC_CLIENT_ID": idp.client_id,
               "HAULMESH_OIDC_SCOPES": "openid profile email haulmesh"}
        async with running_mesh(mesh_pki, tmp_path_factory.mktemp("idp-mesh"), env=env, http_port=http_port) as mesh:
            yield mesh, idp


def _sign_in(base_url: str, login: str) -> tuple[httpx.Client, httpx.Response, str]:
    """A browser's whole sign-in (synchronous httpx, cookies kept): the console's redirect, the provider's login
    form, the callback. Returns the client, the callback's answer and the callback URL."""
    client = httpx.Client(base_url=base_url, timeout=15)
    start = client.get("/console/login", params={"return_to": "/console/missions"})
    assert start.status_code == 303, start.text
    authorize = start.headers["location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    callback = complete_login(client, authorize, login)
    return client, client.get(callback), callback


async def test_a_person_signs_in_with_the_carriers_identity_provider(idp_mesh: tuple[Mesh, OidcProvider]) -> None:
    mesh, _ = idp_mesh
    base_url = f"http://127.0.0.1:{mesh.http_port}"
    client, answer, callback = await asyncio.to_thread(_sign_in, base_url, "ann")
    try:
        assert answer.status_code == 303 and answer.headers["location"] == "/console/missions", answer.text
        assert SESSION_COOKIE in client.cookies
        session = (await asyncio.to_thread(client.get, "/console/session")).json()
        assert session["subject"] == "ann" and session["carrier"] == "acme" and session["name"] == "Ann Operator"
        assert session["roles"] == ["fleet-operator"]  # the unknown role is ignored
        assert "vehicle:command" in session["scopes"] and "tender:create" not in session["scopes"]
        missions = await asyncio.to_thread(client.get, "/api/v1/missions")
        assert missions.status_code == 200, missions.text
        # The callback is good once: replayed (a leaked URL), it signs nobody in.
        replayed = await asyncio.to_thread(client.get, callback)
        assert replayed.status_code == 400
    finally:
        client.close()


async def test_a_person_without_a_console_role_is_refused(idp_mesh: tuple[Mesh, OidcProvider]) -> None:
    mesh, _ = idp_mesh
    client, answer, _ = await asyncio.to_thread(_sign_in, f"http://127.0.0.1:{mesh.http_port}", "bob")
    try:
        assert answer.status_code == 403
        assert "none of the console&#x27;s roles" in answer.text and SESSION_COOKIE not in client.cookies
    finally:
        client.close()


async def test_a_callback_from_another_browser_signs_nobody_in(idp_mesh: tuple[Mesh, OidcProvider]) -> None:
    """Login CSRF: an attacker's own valid callback URL, opened in a victim's browser (no sign-in started there)."""
    mesh, _ = idp_mesh
    base_url = f"http://127.0.0.1:{mesh.http_port}"

    def attack() -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=15) as attacker:
            start = attacker.get("/console/login")
            callback = complete_login(attacker, start.headers["location"], "ann")
        with httpx.Client(base_url=base_url, timeout=15) as victim:
            return victim.get(callback)

    answer = await asyncio.to_thread(attack)
    assert answer.status_code == 400 and SESSION_COOKIE not in answer.headers.get("set-cookie", "")


async def test_the_dev_login_is_never_served_beside_an_identity_provider(
        idp_mesh: tuple[Mesh, OidcProvider], tmp_path: Path) -> None:
    mesh, idp = idp_mesh
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=15) as client:
        answer = await client.get("/console/dev-login", params={"role": "platform-admin"})
        assert answer.status_code == 404 and SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    # and a gateway told to serve both does not start
    with pytest.raises(ConfigError, match="HAULMESH_CONSOLE_DEV_LOGIN"):
        GatewayConfig.from_env({"HAULMESH_CONSOLE_DEV_LOGIN": "1", "HAULMESH_OIDC_ISSUER": idp.issuer,
                                "HAULMESH_OIDC_CLIENT_ID": idp.client_id}, state_dir=tmp_path)


@pytest.mark.parametrize(("env", "field"), [
    ({"HAULMESH_OIDC_ISSUER": "http://idp.example.com"}, "HAULMESH_OIDC_ISSUER"),
    ({"HAULMESH_OIDC_ISSUER": "https://idp.example.com"}, "HAULMESH_OIDC_CLIENT_ID"),
    ({"HAULMESH_OIDC_CLIENT_ID": "console"}, "HAULMESH_OIDC_ISSUER"),
    ({"HAULMESH_OIDC_ISSUER": "https://idp.example.com", "HAULMESH_OIDC_CLIENT_ID": "c",
      "HAULMESH_OIDC_SCOPES": "profile"}, "HAULMESH_OIDC_SCOPES"),
    ({"HAULMESH_OIDC_ISSUER": "https://idp.example.com", "HAULMESH_OIDC_CLIENT_ID": "c",
      "HAULMESH_OIDC_CLIENT_SECRET_FILE": "/nonexistent"}, "HAULMESH_OIDC_CLIENT_SECRET_FILE"),
    ({"HAULMESH_OIDC_ISSUER": "https://idp.example.com", "HAULMESH_OIDC_CLIENT_ID": "c",
      "HAULMESH_OIDC_ROLES_CLAIM": "roles; drop"}, "HAULMESH_OIDC_ROLES_CLAIM"),
    ({"HAULMESH_CONSOLE_TILE_URL": "http://tiles.example.com/{z}/{x}/{y}.png"}, "HAULMESH_CONSOLE_TILE_URL"),
    ({"HAULMESH_CONSOLE_SESSION_SECONDS": "10"}, "HAULMESH_CONSOLE_SESSION_SECONDS"),
    ({"HAULMESH_CONSOLE_DEV_CARRIER": "Not A Carrier"}, "HAULMESH_CONSOLE_DEV_CARRIER"),
])
def test_a_wrong_console_setting_stops_the_gateway_naming_it(env: dict[str, str], field: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        GatewayConfig.from_env(env, state_dir=tmp_path)
    assert raised.value.field == field, raised.value
