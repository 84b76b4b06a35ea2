"""/docs: the interactive reference (Swagger UI from local files under a strict CSP) and the dev token endpoint.

Over real HTTP: the session mesh's gateway (dev mode, as every local mesh) for the page, its assets, the served
document and the OAuth2 client-credentials flow against the dev issuer; a real uvicorn listener of the tests' own
for a gateway whose bundle is absent. The project's tests drive no browser, so "loads in a browser" is checked
as what a browser would do under this CSP: every script and stylesheet the page names is same-origin and served,
nothing inline, and the page points Swagger UI at the served /openapi.json.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import jwt
import pytest
from starlette.applications import Starlette

from services.gateway.config import DEFAULT_DOCS_UI_DIR, GatewayConfig
from services.gateway.rest.app import HttpListener
from services.gateway.rest.docs_ui import DOCS_CSP, DevTokenEndpoint, DocsUi
from services.runtime import ConfigError, Mesh, free_port, poll_until
from services.runtime.tokens import jwks_path

from .conftest import bearer, error_info

SECRET_FILE = "issuer/dev-client-secret"


class _Page(HTMLParser):
    """What a browser would load from the page: script and stylesheet URLs, inline script text, data-*."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.inline: list[str] = []
        self.data: dict[str, str] = {}
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script":
            self._in_script = True
            if "src" in a:
                self.scripts.append(a["src"])
        if tag == "link" and a.get("rel") in ("stylesheet", "icon"):
            self.styles.append(a["href"])
        if any(k.startswith("on") for k in a):
            self.inline.append(f"event handler on <{tag}>")
        self.data.update({k: v for k, v in a.items() if k.startswith("data-")})

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data)


def _bundle_installed() -> None:
    if not (DEFAULT_DOCS_UI_DIR / "swagger-ui-bundle.js").is_file():
        pytest.skip("Swagger UI is not installed: `make docs-ui` (which `make test` runs first)")


async def test_the_reference_and_everything_it_loads_are_local_under_a_strict_csp(http: httpx.AsyncClient) -> None:
    _bundle_installed()
    page = await http.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert csp == DOCS_CSP, csp
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["connect-src"] == "'self'"
    assert page.headers["x-content-type-options"] == "nosniff"
    parsed = _Page()
    parsed.feed(page.text)
    assert parsed.inline == [], "inline script: the CSP would block it"
    assert len(parsed.scripts) == 2 and parsed.styles, parsed.__dict__
    for url in parsed.scripts + parsed.styles:
        assert url.startswith("/docs/assets/"), f"{url} is not served by this gateway"
        asset = await http.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-security-policy"] == DOCS_CSP
        assert asset.headers["x-content-type-options"] == "nosniff"
        if url.endswith(".js"):
            assert asset.headers["content-type"].startswith("text/javascript"), url
        elif url.endswith(".css"):
            assert asset.headers["content-type"].startswith("text/css"), url
    bundle = (await http.get(parsed.scripts[0])).text
    init = (await http.get(parsed.scripts[1])).text
    assert "SwaggerUIBundle" in bundle and "SwaggerUIBundle(" in init and "dataset.specUrl" in init
    assert "validatorUrl: null" in init  # the default validator badge would fetch from swagger.io
    # Swagger UI loads the document the page names: this gateway's own.
    assert parsed.data["data-spec-url"] == "/openapi.json"
    document = await http.get(parsed.data["data-spec-url"])
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.")
    assert document.json()["paths"]
    # Another verb: 405 saying what is allowed (RFC 9110), from these routes, whatever else the app routes.
    for verb, url, allow in (("POST", "/docs", "GET, HEAD"), ("DELETE", parsed.scripts[0], "GET, HEAD"),
                             ("GET", "/oauth2/token", "POST")):
        refused = await http.request(verb, url)
        assert refused.status_code == 405 and refused.headers["allow"] == allow, (verb, url)
    # Only the bundle's named files: not its source maps, not a path out of the directory.
    for name in ("swagger-ui-bundle.js.map", "package.json", "..%2F..%2Fpackage.json", "index.html"):
        assert (await http.get(f"/docs/assets/{name}")).status_code == 404, name


async def test_another_verb_on_docs_is_405_in_the_api_error_shape(http: httpx.AsyncClient) -> None:
    """Whatever verb (one the app routes elsewhere, or TRACE which none routes): 405, the right Allow, a Status."""
    for verb, url, allow in (("TRACE", "/docs", "GET, HEAD"), ("POST", "/docs", "GET, HEAD"),
                             ("TRACE", "/docs/assets/x", "GET, HEAD"), ("POST", "/docs/assets/x", "GET, HEAD"),
                             ("DELETE", "/docs/assets/swagger-ui.css", "GET, HEAD"), ("TRACE", "/openapi.json",
                                                                                     "GET, HEAD"),
                             ("PUT", "/oauth2/token", "POST"), ("TRACE", "/oauth2/token", "POST")):
        refused = await http.request(verb, url)
        assert refused.status_code == 405 and refused.headers["allow"] == allow, (verb, url, refused.text)
        assert refused.json()["code"] == 12 and error_info(refused.json())["reason"] == "METHOD_NOT_ALLOWED"


async def test_authorize_gets_a_dev_token_the_api_accepts(http: httpx.AsyncClient, mesh: Mesh) -> None:
    """The client-credentials flow as Swagger UI runs it: form POST to the token URL, then the API call."""
    secret = (mesh.state_dir / SECRET_FILE).read_text().strip()
    assert (mesh.state_dir / SECRET_FILE).stat().st_mode & 0o077 == 0
    form = {"grant_type": "client_credentials", "scope": "tender:read telemetry:read"}
    answer = await http.post("/oauth2/token", data=form, auth=("docs-co", secret))
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900 and body["scope"] == form["scope"]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["carrier"] == "docs-co" and claims["client_id"] == "docs-co" and claims["scope"] == form["scope"]
    listed = await http.get("/api/v1/tenders", headers=bearer(body["access_token"]))
    assert listed.status_code == 200, listed.text
    # Credentials in the form instead of HTTP Basic (Swagger UI's "request body" choice) work the same.
    in_body = await http.post("/oauth2/token", data={**form, "client_id": "docs-co", "client_secret": secret})
    assert in_body.status_code == 200, in_body.text
    # The token's scopes are what was asked: a write is refused.
    created = await http.post("/api/v1/tenders", json={}, headers=bearer(body["access_token"]))
    assert created.status_code == 403, created.text


@pytest.mark.parametrize("case,status,error", [
    ("wrong secret", 401, "invalid_client"),
    ("client id that is no carrier id", 401, "invalid_client"),
    ("password grant", 400, "unsupported_grant_type"),
    ("unknown scope", 400, "invalid_scope"),
    ("no scope", 400, "invalid_scope"),
    ("both client authentications", 400, "invalid_request"),
    ("json body", 400, "invalid_request"),
    ("repeated parameter", 400, "invalid_request"),
    ("huge body", 400, "invalid_request"),
])
async def test_token_errors_are_rfc6749(http: httpx.AsyncClient, mesh: Mesh, case: str, status: int,
                                        error: str) -> None:
    secret = (mesh.state_dir / SECRET_FILE).read_text().strip()
    basic = "Basic " + base64.b64encode(f"docs-co:{secret}".encode()).decode()
    form = "application/x-www-form-urlencoded"
    requests = {
        "wrong secret": ("grant_type=client_credentials&scope=tender:read",
                         "Basic " + base64.b64encode(b"docs-co:nope").decode(), form),
        "client id that is no carrier id": ("grant_type=client_credentials&scope=tender:read",
                                            "Basic " + base64.b64encode(f"Docs Co:{secret}".encode()).decode(), form),
        "password grant": ("grant_type=password&username=a&password=b&scope=tender:read", basic, form),
        "unknown scope": ("grant_type=client_credentials&scope=tender:read%20admin:all", basic, form),
        "no scope": ("grant_type=client_credentials", basic, form),
        "both client authentications": (f"grant_type=client_credentials&scope=tender:read&client_id=docs-co"
                                        f"&client_secret={secret}", basic, form),
        "json body": ('{"grant_type": "client_credentials"}', basic, "application/json"),
        "repeated parameter": ("grant_type=client_credentials&scope=tender:read&scope=tender:read", basic, form),
        "huge body": ("grant_type=client_credentials&scope=" + "tender:read%20" * 1000, basic, form),
    }
    content, authorization, content_type = requests[case]
    answer = await http.post("/oauth2/token", content=content,
                             headers={"Authorization": authorization, "Content-Type": content_type})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error and answer.json()["error_description"]
    assert secret not in answer.text


#: The smallest OpenAPI document the /docs routes serve (the tests' own listeners below).
_EMPTY_DOCUMENT = {"openapi": "3.1.0", "info": {"title": "Haulmesh", "version": "v1"}, "paths": {}}


@contextlib.asynccontextmanager
async def _serving(docs: DocsUi) -> AsyncIterator[httpx.AsyncClient]:
    """``docs``' routes on a real uvicorn listener of the test's own (a free loopback port), and a client of it once
    it answers (polled: no fixed wait on a loaded machine); the listener is stopped on the way out."""
    port = free_port()
    listener = HttpListener(Starlette(routes=docs.routes(_EMPTY_DOCUMENT)), "127.0.0.1", port)
    task = asyncio.create_task(listener.run())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            async def up() -> bool:
                try:
                    await client.get("/docs")
                    return True
                except httpx.TransportError:
                    return False

            await poll_until(up, timeout_seconds=20, what="the listener")
            yield client
    finally:
        await listener.stop()
        await task


async def test_without_the_bundle_docs_says_how_to_build_it(tmp_path: Path) -> None:
    """A gateway whose Swagger UI files are absent answers /docs 503 with the way out, never 500."""
    async with _serving(DocsUi(tmp_path / "absent")) as client:
        page = await client.get("/docs")
        assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
        assert "make docs-ui" in page.text and "/openapi.json" in page.text
        assert page.headers["content-security-policy"] == DOCS_CSP
        asset = await client.get("/docs/assets/swagger-ui-bundle.js")
        assert asset.status_code == 503 and "make docs-ui" in asset.text
        # No dev token endpoint unless asked for.
        assert (await client.post("/oauth2/token", data={"grant_type": "client_credentials"})).status_code == 404


def test_the_dev_token_endpoint_is_refused_where_it_could_leak(tmp_path: Path) -> None:
    good = {"state_dir": tmp_path, "issuer": "https://issuer.example", "audience": "https://api.example",
            "jwks_file": jwks_path(tmp_path), "jwks_url": None, "listen_host": "127.0.0.1", "scopes": {"tender:read"}}
    endpoint = DevTokenEndpoint.checked(**good)
    assert endpoint.secret_file == tmp_path / SECRET_FILE and endpoint.secret_file.stat().st_mode & 0o777 == 0o600
    assert DevTokenEndpoint.checked(**{**good, "listen_host": "::1"}).secret_file.read_text() == \
        endpoint.secret_file.read_text()  # created once, kept
    for bad in ({"jwks_url": "https://idp.example/jwks"}, {"jwks_file": tmp_path / "other.json"},
                {"listen_host": "0.0.0.0"}, {"listen_host": "10.1.2.3"}, {"listen_host": "gateway.internal"}):
        with pytest.raises(ConfigError) as caught:
            DevTokenEndpoint.checked(**{**good, **bad})
        assert caught.value.field == "HAULMESH_DEV_TOKEN_ENDPOINT", bad


@pytest.mark.parametrize(("content", "mode", "words"), [
    ("", 0o600, "holds 0 characters"),
    ("\n", 0o600, "holds 0 characters"),
    ("x" * 31 + "\n", 0o600, "at least 32"),
    ("x" * 40, 0o640, "mode 0640"),
    ("x" * 40, 0o604, "chmod 600"),
])
def test_a_weak_client_secret_file_refuses_the_start(tmp_path: Path, content: str, mode: int, words: str) -> None:
    """An empty or short secret would let anyone mint tokens, a readable one would leak it: no start."""
    good = {"state_dir": tmp_path, "issuer": "https://issuer.example", "audience": "https://api.example",
            "jwks_file": jwks_path(tmp_path), "jwks_url": None, "listen_host": "127.0.0.1", "scopes": {"tender:read"}}
    (tmp_path / "issuer").mkdir(mode=0o700)
    secret = tmp_path / SECRET_FILE
    secret.write_text(content)
    secret.chmod(mode)
    with pytest.raises(ConfigError, match=words) as caught:
        DevTokenEndpoint.checked(**good)
    assert caught.value.field == "HAULMESH_DEV_TOKEN_ENDPOINT" and str(secret) in str(caught.value)
    secret.unlink()  # a missing file is created afresh, long enough, and the endpoint holds it from then on
    endpoint = DevTokenEndpoint.checked(**good)
    assert len(endpoint.secret) >= 32 and endpoint.secret == secret.read_text().strip()
    assert secret.stat().st_mode & 0o777 == 0o600 and endpoint.secret not in repr(endpoint)


async def test_a_removed_secret_file_is_a_401_not_a_500(tmp_path: Path) -> None:
    """The secret is held from start-up: the file going away later changes nothing (no 500)."""
    endpoint = DevTokenEndpoint.checked(state_dir=tmp_path, issuer="https://issuer.example",
                                        audience="https://api.example", jwks_file=jwks_path(tmp_path), jwks_url=None,
                                        listen_host="127.0.0.1", scopes={"tender:read"})
    endpoint.secret_file.unlink()
    async with _serving(DocsUi(tmp_path / "absent", endpoint)) as client:
        form = {"grant_type": "client_credentials", "scope": "tender:read"}
        assert (await client.post("/oauth2/token", data=form, auth=("docs-co", ""))).status_code == 401
        good = await client.post("/oauth2/token", data=form, auth=("docs-co", endpoint.secret))
        assert good.status_code == 200 and good.json()["token_type"] == "Bearer"


def test_the_settings_come_from_the_environment() -> None:
    assert GatewayConfig.from_env({}).dev_token_endpoint is False
    assert GatewayConfig.from_env({}).docs_ui_dir == DEFAULT_DOCS_UI_DIR
    config = GatewayConfig.from_env({"HAULMESH_DEV_TOKEN_ENDPOINT": "1", "HAULMESH_DOCS_UI_DIR": "/opt/swagger-ui"})
    assert config.dev_token_endpoint is True and config.docs_ui_dir == Path("/opt/swagger-ui")
    with pytest.raises(ConfigError):
        GatewayConfig.from_env({"HAULMESH_DEV_TOKEN_ENDPOINT": "yes"})


@pytest.mark.parametrize("extra,dev", [({}, "1"), ({"HAULMESH_JWKS_URL": "https://idp.example/jwks"}, None),
                                       ({"HAULMESH_JWKS_FILE": "/keys.json"}, None),
                                       ({"HAULMESH_LISTEN_HOST": "0.0.0.0"}, None),
                                       ({"HAULMESH_DEV_TOKEN_ENDPOINT": "0"}, "0")])
def test_a_local_mesh_is_in_dev_mode_unless_it_trusts_another_issuer(tmp_path: Path, extra: dict, dev: str) -> None:
    """haulmesh run's mesh gets the dev token endpoint; a mesh told to trust another issuer (AT-16's tests) or to
    listen beyond loopback does not, so its gateway does not refuse to start."""
    env = Mesh(tmp_path, extra_env=extra)._env("gateway", "redis://127.0.0.1:1")
    assert env.get("HAULMESH_DEV_TOKEN_ENDPOINT") == dev
