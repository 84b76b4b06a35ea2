"""The interactive API reference at ``/docs`` (Swagger UI) and, in dev mode, the dev issuer's OAuth2 token endpoint.

The reference is Swagger UI (npm ``swagger-ui-dist``, version and hash pinned by scripts/docs-ui/package-lock.json),
installed at build time by scripts/docs-ui/install.sh: ``make docs-ui`` (which ``make run``, ``make demo`` and
``make test`` run) into the gitignored ``build/docs-ui/``, the image's ``docs-ui`` stage (Dockerfile) into the same
place under /app; and served from those local files: nothing is fetched from a CDN, so it works offline. Swagger
UI because it renders every operation with its schemas and examples, lets a reader send a request ("try it out")
and gets a token through the OAuth2 client-credentials flow the OpenAPI document declares.

Every answer carries a strict Content-Security-Policy: scripts only from this origin (no inline script, no eval:
the page's settings are data attributes that the served ``haulmesh-docs.js`` reads), connections only to this
origin (the document, the API, the token endpoint; plus the token endpoint's origin when the document names an
absolute one), no frames, no forms, no plugins. Styles may be inline because Swagger UI sets element styles.

When the bundle is absent (a checkout that never ran ``make docs-ui``, an image built without it), ``/docs``
answers 503 with a page saying how to build it and where the machine-readable document is; never a 500.

Dev mode (``HAULMESH_DEV_TOKEN_ENDPOINT=1``, which the local mesh of ``haulmesh run`` / ``make run`` sets): the
gateway also serves the dev issuer's token endpoint (RFC 6749 §4.4, client credentials) at the token URL of the
document (``/oauth2/token``), so "Authorize" on ``/docs`` gets a real token the gateway accepts. The client id is
the carrier (the token's tenant), the client secret is the dev issuer's ``<state dir>/issuer/dev-client-secret``
(created on first start, 0600, fsynced; the gateway refuses to start when it is shorter than 32 characters or
readable by group or others), the scopes those the API names. Refused at start-up unless the gateway trusts the
dev issuer's keys (no HAULMESH_JWKS_URL / HAULMESH_JWKS_FILE) and listens on loopback only: the endpoint mints
tokens for any carrier, so it must never face a network.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import html
import ipaddress
import json
import logging
import os
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.runtime import ConfigError
from services.runtime.tokens import CARRIER_ID, DEFAULT_TTL_SECONDS, jwks_path, mint

__all__ = ["DOCS_CSP", "MIN_CLIENT_SECRET_CHARS", "DevTokenEndpoint", "DocsUi", "dev_client_secret", "require_dev_mode"]

_log = logging.getLogger("haulmesh.gateway.docs")

#: The files of swagger-ui-dist the page loads (nothing else of the package is served).
_BUNDLE_FILES = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript",
                 "favicon-32x32.png": "image/png", "favicon-16x16.png": "image/png"}
_INIT_SCRIPT = "haulmesh-docs.js"
_ASSETS = "/docs/assets/"
#: The policy of every /docs answer (see the module docstring); ``{connect}`` is 'self' and a token origin.
_CSP_TEMPLATE = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                 "font-src 'self'; connect-src {connect}; base-uri 'none'; form-action 'none'; "
                 "frame-ancestors 'none'; object-src 'none'")
DOCS_CSP = _CSP_TEMPLATE.format(connect="'self'")
#: The path of the dev token endpoint when the document names no relative one.
DEFAULT_TOKEN_PATH = "/oauth2/token"  # noqa: S105 - an endpoint's path, not a secret
#: The fewest characters the dev client secret may have (the generated one has 43: 32 random bytes, base64url).
MIN_CLIENT_SECRET_CHARS = 32
#: A token request is a few form fields: anything larger is refused before parsing.
_MAX_TOKEN_REQUEST_BYTES = 4096

# Swagger UI started on the served document; no inline script (the CSP forbids it), settings from data-*.
_INIT_JS = b"""// Haulmesh /docs: Swagger UI on the gateway's own OpenAPI document (settings: the page's data-*).
(function () {
  "use strict";
  var root = document.getElementById("haulmesh-docs");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    tryItOutEnabled: true,
    persistAuthorization: false,
    showExtensions: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
}());
"""

_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                     "Cross-Origin-Opener-Policy": "same-origin"}


def _token_urls(document: dict[str, Any]) -> list[str]:
    """Every OAuth2 token URL the document's security schemes name."""
    schemes = document.get("components", {}).get("securitySchemes", {})
    return [flow["tokenUrl"] for scheme in schemes.values() if scheme.get("type") == "oauth2"
            for flow in scheme.get("flows", {}).values() if isinstance(flow, dict) and flow.get("tokenUrl")]


class DocsUi:
    """The /docs routes: the page, its assets from the vendored bundle (``bundle_dir``), and the dev token
    endpoint when ``dev_tokens`` is given."""

    def __init__(self, bundle_dir: Path, dev_tokens: DevTokenEndpoint | None = None) -> None:
        self.bundle_dir = bundle_dir
        self.dev_tokens = dev_tokens

    def routes(self, document: dict[str, Any]) -> list[BaseRoute]:
        """Routes for the app, for the OpenAPI ``document`` it serves at /openapi.json."""
        urls = _token_urls(document)
        origins = sorted({f"{u.scheme}://{u.netloc}" for u in map(urlsplit, urls) if u.scheme in ("http", "https")})
        csp = _CSP_TEMPLATE.format(connect=" ".join(["'self'", *origins]))
        headers = {"Content-Security-Policy": csp, **_SECURITY_HEADERS}
        title = str(document.get("info", {}).get("title", "API"))
        relative = [u for u in urls if u.startswith("/")]
        token_path = relative[0] if relative else DEFAULT_TOKEN_PATH

        async def page(_: Request) -> Response:
            version = self._bundle_version()
            if version is None:
                return self._not_built(headers)
            return HTMLResponse(self._page(title, version, token_path), headers=headers)

        async def asset(request: Request) -> Response:
            name = request.path_params["name"]
            if name == _INIT_SCRIPT:
                return Response(_INIT_JS, media_type="text/javascript",
                                headers={**headers, "Cache-Control": "no-cache"})
            if name not in _BUNDLE_FILES:
                return Response("not found\n", status_code=404, media_type="text/plain", headers=headers)
            path = self.bundle_dir / name
            if not path.is_file():
                return self._not_built(headers)
            # no-cache: revalidated (ETag) each load, so a new bundle version is never mixed with an old page.
            return FileResponse(path, media_type=_BUNDLE_FILES[name], headers={**headers, "Cache-Control": "no-cache"})

        # Each route lists only its verbs (GET brings HEAD): the app answers another verb 405 with ``Allow`` in
        # the API's error shape (app.py), TRACE or POST alike.
        routes: list[BaseRoute] = [Route("/docs", page, methods=["GET"]),
                                   Route(_ASSETS + "{name}", asset, methods=["GET"])]
        if self.dev_tokens is not None:
            routes.append(Route(token_path, self.dev_tokens.token, methods=["POST"]))
        return routes

    def _bundle_version(self) -> str | None:
        """The installed swagger-ui-dist's version; None when the bundle is not (completely) there."""
        try:
            version = json.loads((self.bundle_dir / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not all((self.bundle_dir / name).is_file() for name in _BUNDLE_FILES):
            return None
        return str(version)

    def _not_built(self, headers: dict[str, str]) -> Response:
        text = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>API reference not built"
                "</title></head><body><h1>The interactive API reference is not built</h1>"
                "<p>Its files (Swagger UI, from npm) are installed at build time: run <code>make docs-ui</code> "
                "(<code>make run</code>, <code>make demo</code> and <code>make test</code> do it), or point "
                "<code>HAULMESH_DOCS_UI_DIR</code> at an installed <code>swagger-ui-dist</code>. This gateway looks "
                f"in <code>{html.escape(str(self.bundle_dir))}</code>.</p>"
                "<p>The API's OpenAPI document is served meanwhile at <a href=\"/openapi.json\">/openapi.json</a>."
                "</p></body></html>")
        return HTMLResponse(text, status_code=503, headers={**headers, "Retry-After": "3600"})

    def _page(self, title: str, version: str, token_path: str) -> str:
        e = html.escape
        note = ""
        if self.dev_tokens is not None:
            note = (f"<p class=\"haulmesh-dev\" style=\"font-family:sans-serif;margin:1rem 1.25rem\">"
                    f"Dev mode: <b>Authorize</b> gets a token from this gateway's dev issuer "
                    f"(<code>POST {e(token_path)}</code>, client credentials): client id = the carrier (e.g. "
                    f"<code>acme</code>), client secret = the contents of <code>"
                    f"{e(str(self.dev_tokens.secret_file))}</code>, and the scopes to try.</p>")
        return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{e(title)} — API reference</title>"
                f"<link rel=\"stylesheet\" href=\"{_ASSETS}swagger-ui.css\">"
                f"<link rel=\"icon\" type=\"image/png\" href=\"{_ASSETS}favicon-32x32.png\" sizes=\"32x32\">"
                f"</head><body>{note}<noscript><p>This reference needs JavaScript; the OpenAPI document is at "
                f"<a href=\"/openapi.json\">/openapi.json</a>.</p></noscript>"
                f"<div id=\"haulmesh-docs\" data-spec-url=\"/openapi.json\" "
                f"data-swagger-ui-version=\"{e(version)}\"></div>"
                f"<script src=\"{_ASSETS}swagger-ui-bundle.js\"></script>"
                f"<script src=\"{_ASSETS}{_INIT_SCRIPT}\"></script></body></html>")


def dev_client_secret(state_dir: Path) -> Path:
    """The dev issuer's client secret file (``<state dir>/issuer/dev-client-secret``), created 0600 with a random
    secret on first use; returns its path."""
    directory = Path(state_dir) / "issuer"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "dev-client-secret"
    if not path.exists():
        tmp = directory / f".dev-client-secret.{os.getpid()}.{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())  # a crash right after never leaves an empty secret behind
        try:
            os.link(tmp, path)  # two first starts never end with two secrets
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the link itself survives a crash
        finally:
            os.close(dir_fd)
    return path


def _read_client_secret(path: Path) -> str:
    """The secret in ``path``; ConfigError unless the file is the owner's alone (no group / other bits, e.g.
    0600) and holds at least :data:`MIN_CLIENT_SECRET_CHARS` characters."""
    field = "HAULMESH_DEV_TOKEN_ENDPOINT"
    try:
        mode = path.stat().st_mode & 0o777
        secret = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"HAULMESH_DEV_TOKEN_ENDPOINT: cannot read the client secret {path}: {exc}",
                          field=field) from None
    if mode & 0o077:
        raise ConfigError(f"HAULMESH_DEV_TOKEN_ENDPOINT: the client secret {path} is mode {mode:04o}; it must be "
                          "readable by its owner only (chmod 600)", field=field)
    if len(secret) < MIN_CLIENT_SECRET_CHARS:
        raise ConfigError(f"HAULMESH_DEV_TOKEN_ENDPOINT: the client secret {path} holds {len(secret)} characters; "
                          f"it needs at least {MIN_CLIENT_SECRET_CHARS} (delete the file to get a new one)",
                          field=field)
    return secret


def require_dev_mode(field: str, what: str, *, state_dir: Path, jwks_file: Path | None, jwks_url: str | None,
                     listen_host: str) -> None:
    """ConfigError unless the gateway trusts the dev issuer's keys and listens on loopback only: what a dev-mode
    feature (``field``, which ``what``) needs, since it speaks for any carrier and must never face a network."""
    if jwks_url or jwks_file is None or Path(jwks_file) != jwks_path(state_dir):
        raise ConfigError(f"{field} {what}, which this gateway does not trust (HAULMESH_JWKS_URL or "
                          "HAULMESH_JWKS_FILE is set): unset one or the other", field=field)
    try:
        loopback = ipaddress.ip_address(listen_host).is_loopback
    except ValueError:
        loopback = listen_host == "localhost"
    if not loopback:
        raise ConfigError(f"{field} speaks for any carrier: only on a gateway listening on loopback, not "
                          f"{listen_host!r} (HAULMESH_LISTEN_HOST)", field=field)


@dataclass
class DevTokenEndpoint:
    """The dev issuer's OAuth2 token endpoint (client credentials); see the module docstring."""

    state_dir: Path
    issuer: str
    audience: str
    scopes: frozenset[str]
    secret_file: Path
    #: Read once at start-up: a file changed or removed later changes nothing until a restart.
    secret: str = dataclasses.field(repr=False, default="")

    @classmethod
    def checked(cls, *, state_dir: Path, issuer: str, audience: str, jwks_file: Path | None, jwks_url: str | None,
                listen_host: str, scopes: Iterable[str]) -> DevTokenEndpoint:
        """The endpoint for a gateway with these settings; ConfigError unless the gateway trusts the dev issuer's
        keys, listens on loopback only and its client secret file is sound (see :func:`_read_client_secret`)."""
        require_dev_mode("HAULMESH_DEV_TOKEN_ENDPOINT", "mints tokens of the dev issuer", state_dir=state_dir,
                         jwks_file=jwks_file, jwks_url=jwks_url, listen_host=listen_host)
        secret_file = dev_client_secret(state_dir)
        secret = _read_client_secret(secret_file)
        _log.warning("DEV MODE: the dev issuer's token endpoint is served (HAULMESH_DEV_TOKEN_ENDPOINT=1); "
                     "client secret in %s", secret_file)
        return cls(Path(state_dir), issuer, audience, frozenset(scopes), secret_file, secret)

    async def token(self, request: Request) -> Response:
        """RFC 6749 §4.4.2: a form with grant_type=client_credentials and scope; the client authenticated by
        HTTP Basic or by client_id and client_secret in the form (one of the two). Errors as §5.2 says."""
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return _oauth_error("invalid_request", "send an application/x-www-form-urlencoded body")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_TOKEN_REQUEST_BYTES:
                return _oauth_error("invalid_request", f"the body is over {_MAX_TOKEN_REQUEST_BYTES} bytes")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                              max_num_fields=16)
        except (UnicodeDecodeError, ValueError):
            return _oauth_error("invalid_request", "the body is not a valid form")
        form: dict[str, str] = {}
        for key, value in pairs:
            if key in form:  # §3.2: parameters MUST NOT be repeated
                return _oauth_error("invalid_request", f"{key} is repeated")
            form[key] = value
        if form.get("grant_type") != "client_credentials":
            return _oauth_error("unsupported_grant_type", "only grant_type=client_credentials is served here")
        basic = _basic_credentials(request.headers.get("authorization", ""))
        if basic is not None and ("client_id" in form or "client_secret" in form):
            return _oauth_error("invalid_request", "authenticate the client one way: HTTP Basic or the form")
        client_id, client_secret = basic if basic is not None else (form.get("client_id", ""),
                                                                     form.get("client_secret", ""))
        expected = self.secret
        if (len(expected) < MIN_CLIENT_SECRET_CHARS or not CARRIER_ID.fullmatch(client_id)
                or not hmac.compare_digest(client_secret.encode(), expected.encode())):
            return _oauth_error("invalid_client", "unknown client or wrong secret (client id = a carrier id, "
                                f"secret in {self.secret_file})", status=401, basic=basic is not None)
        requested = form.get("scope", "").split()
        unknown = sorted(set(requested) - self.scopes)
        if not requested or unknown:
            return _oauth_error("invalid_scope", f"unknown scopes {unknown}" if unknown else
                                "name the scopes (space-separated): " + " ".join(sorted(self.scopes)))
        scope = " ".join(dict.fromkeys(requested))
        token = mint(carrier=client_id, scopes=scope, state_dir=self.state_dir, issuer=self.issuer,
                     audience=self.audience, extra_claims={"client_id": client_id})
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": DEFAULT_TTL_SECONDS,
                             "scope": scope}, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """(client id, secret) of an HTTP Basic header (RFC 6749 §2.3.1: each form-urlencoded); None without one."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")  # present but unreadable: fails as an unknown client
    client_id, _, secret = decoded.partition(":")
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


def _oauth_error(error: str, description: str, *, status: int = 400, basic: bool = False) -> JSONResponse:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if basic:
        headers["WWW-Authenticate"] = 'Basic realm="haulmesh-dev-issuer"'
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=headers)
