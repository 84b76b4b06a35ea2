"""The console's routes: its pages, its own and its vendored files, sign-in (OIDC or dev), sign-out, and the
session the REST door accepts in place of a bearer token.

Sessions: a person signed in carries one cookie, ``haulmesh_console`` (256 random bits; HttpOnly; SameSite=Lax;
Secure over https; the store keeps only its digest, sessions.py). The page calls the same REST API as the TMS with
that cookie: the door (rest/handler.py) turns it into the same Principal a token would give, with the scopes of
the person's roles (roles.py) and ``haulmesh-console`` as the client the audit log records. A change (any verb
but GET/HEAD) made with the cookie must also carry ``X-Haulmesh-Console: 1``: a page of another origin cannot set
that header without a CORS preflight the gateway never grants, so a forged form or fetch is refused (403).

Sign-in: with an identity provider (HAULMESH_OIDC_ISSUER), /console/login sends the browser there (authorization
code + PKCE S256, state and nonce; oidc.py) and the callback turns the verified ID token into a session. The state
is also set in a short-lived cookie scoped to the callback, and the callback requires both to match: a callback
URL carrying somebody else's code cannot sign a victim's browser into the attacker's account. In dev mode only
(HAULMESH_CONSOLE_DEV_LOGIN=1, which the local mesh sets; refused at start-up with an identity provider, beyond
loopback, or without the dev issuer), /console/dev-login?role=<role> signs in as that role; otherwise it is 404.

Every answer carries a strict Content-Security-Policy: scripts, styles, workers and connections of this origin
only (plus the tile server's origin when HAULMESH_CONSOLE_TILE_URL names one), no inline script, no frames.
"""

from __future__ import annotations

import logging
import mimetypes
import re
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..rest.auth import Principal
from ..rest.errors import RestError
from .oidc import OidcClient, SignInFailed
from .pages import PAGES, render_page, render_problem, render_sign_in, session_json
from .roles import CONSOLE_ROLES, ConsoleUser, SignInRefused, user_from_claims
from .sessions import LOGIN_SECONDS, ConsoleSessions, PendingLogin, new_secret

__all__ = ["CONSOLE_CLIENT", "CSRF_HEADER", "SESSION_COOKIE", "Console"]

_log = logging.getLogger("haulmesh.gateway.console")

SESSION_COOKIE = "haulmesh_console"
_LOGIN_COOKIE = "haulmesh_console_login"
#: The header a cookie-authenticated change must carry (see the module docstring).
CSRF_HEADER = "x-haulmesh-console"
#: The client the audit log records for what a person did through the console.
CONSOLE_CLIENT = "haulmesh-console"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CALLBACK_PATH = "/console/oidc/callback"
_OWN_ASSETS = Path(__file__).resolve().parent / "assets"
_OWN_FILES = frozenset({"console.js", "console.css", "map.js"})
#: What of the installed npm packages is served (scripts/console/install.sh builds and checks these).
VENDOR_FILES = {
    # MapLibre 6 is ES modules only; it loads its worker from beside itself (maplibre-gl-worker.mjs?v=...).
    "maplibre-gl.mjs": "node_modules/maplibre-gl/dist/maplibre-gl.mjs",
    "maplibre-gl-worker.mjs": "node_modules/maplibre-gl/dist/maplibre-gl-worker.mjs",
    "maplibre-gl.css": "node_modules/maplibre-gl/dist/maplibre-gl.css",
    "chart.umd.min.js": "node_modules/chart.js/dist/chart.umd.min.js",
    "axe.min.js": "node_modules/axe-core/axe.min.js",
    "us-states.geojson": "basemap/us-states.geojson",
}
_MISSION_ID = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_MAX_RETURN_TO = 512


class Console:
    """The console's routes and the session check the REST door asks (see the module docstring)."""

    def __init__(self, sessions: ConsoleSessions, *, assets_dir: Path, tile_url: str | None = None,
                 oidc: OidcClient | None = None, dev_login: bool = False, dev_carrier: str = "sandbox") -> None:
        if dev_login and oidc is not None:
            raise ValueError("the dev login is never served beside an identity provider")
        self.sessions = sessions
        self.assets_dir = assets_dir
        self.tile_url = tile_url
        self.oidc = oidc
        self.dev_login = dev_login
        self.dev_carrier = dev_carrier
        tile_origin = ""
        if tile_url:
            parts = urlsplit(tile_url.replace("{z}", "0").replace("{x}", "0").replace("{y}", "0"))
            tile_origin = f" {parts.scheme}://{parts.netloc}"
        self.headers = {
            "Content-Security-Policy": (
                "default-src 'none'; script-src 'self'; style-src 'self'; worker-src 'self' blob:; "
                f"img-src 'self' data: blob:{tile_origin}; connect-src 'self'{tile_origin}; font-src 'self'; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        }

    # --- the REST door's question ---------------------------------------------------------------------

    async def principal(self, request: Request) -> Principal | None:
        """The Principal of the request's console session; None when it carries no session cookie (the door then
        asks for a bearer token). 401 for an ended session, 403 for a change without :data:`CSRF_HEADER`."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        user = await self.sessions.user(cookie)
        if user is None:
            raise RestError("UNAUTHENTICATED", "the console session has ended: sign in again at /console/login",
                            reason="SESSION_ENDED")
        if request.method not in _SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
            raise RestError("PERMISSION_DENIED", f"a change made with the console's session must carry the header "
                            f"{CSRF_HEADER}: 1", reason="CSRF_HEADER_REQUIRED")
        return Principal(carrier=user.carrier, scopes=user.scopes, subject=user.subject, client=CONSOLE_CLIENT)

    # --- routes ----------------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/console", lambda _: RedirectResponse("/console/", status_code=308)),
            Route("/console/login", self._login),
            Route(_CALLBACK_PATH, self._callback),
            Route("/console/dev-login", self._dev_login),
            Route("/console/logout", self._logout, methods=["POST"]),
            Route("/console/session", self._session),
            Route("/console/assets/{name}", self._own_asset),
            Route("/console/vendor/{name}", self._vendor_asset),
            Route("/console/missions/{mission}", self._mission_page),
            Route("/console/{page:path}", self._page),
        ]

    async def _user(self, request: Request) -> ConsoleUser | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        return await self.sessions.user(cookie) if cookie else None

    def _html(self, body: str, status_code: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status_code, headers=self.headers)

    def _to_sign_in(self, request: Request) -> Response:
        return RedirectResponse(f"/console/login?return_to={_return_to(request.url.path)}", status_code=303,
                                headers=self.headers)

    async def _page(self, request: Request) -> Response:
        page = request.path_params["page"].strip("/")
        if page not in PAGES:
            return self._html(render_problem("Not found", f"the console has no page /console/{page}"), 404)
        user = await self._user(request)
        if user is None:
            return self._to_sign_in(request)
        return self._html(render_page(page, user, tile_url=self.tile_url))

    async def _mission_page(self, request: Request) -> Response:
        mission = request.path_params["mission"]
        if not _MISSION_ID.fullmatch(mission):
            return self._html(render_problem("Not found", "that is not a mission id"), 404)
        user = await self._user(request)
        if user is None:
            return self._to_sign_in(request)
        return self._html(render_page("missions", user, tile_url=self.tile_url, mission=mission))

    async def _session(self, request: Request) -> Response:
        user = await self._user(request)
        if user is None:
            return JSONResponse({"error": "not signed in"}, status_code=401, headers=self.headers)
        return Response(session_json(user), media_type="application/json", headers=self.headers)

    async def _login(self, request: Request) -> Response:
        return_to = _return_to(request.query_params.get("return_to", "/console/"))
        if self.oidc is None:
            roles = CONSOLE_ROLES if self.dev_login else ()
            return self._html(render_sign_in(dev_roles=roles, dev_carrier=self.dev_carrier, return_to=return_to))
        verifier, challenge = OidcClient.new_pkce()
        nonce = new_secret()
        state = await self.sessions.begin_login(PendingLogin(verifier=verifier, nonce=nonce, return_to=return_to))
        try:
            url = await self.oidc.authorization_url(redirect_uri=self._redirect_uri(request), state=state,
                                                    nonce=nonce, challenge=challenge)
        except SignInFailed as exc:
            return self._html(render_problem("Sign-in unavailable", str(exc)), 502)
        response = RedirectResponse(url, status_code=303, headers=self.headers)
        response.set_cookie(_LOGIN_COOKIE, state, max_age=LOGIN_SECONDS, path=_CALLBACK_PATH, httponly=True,
                            samesite="lax", secure=request.url.scheme == "https")
        return response

    async def _callback(self, request: Request) -> Response:
        if self.oidc is None:
            return self._html(render_problem("Not found", "no identity provider is configured"), 404)
        params = request.query_params
        if "error" in params:
            detail = params.get("error_description") or params["error"]
            return self._html(render_problem("Sign-in refused", f"the identity provider said: {detail[:300]}"), 401)
        state, code = params.get("state", ""), params.get("code", "")
        if not state or not code or request.cookies.get(_LOGIN_COOKIE) != state:
            return self._html(render_problem(
                "Sign-in expired", "this sign-in was not started in this browser, or took more than ten minutes"), 400)
        pending = await self.sessions.take_login(state)
        if pending is None:
            return self._html(render_problem("Sign-in expired", "this sign-in was already used or has expired"), 400)
        try:
            claims = await self.oidc.redeem(code=code, redirect_uri=self._redirect_uri(request),
                                            verifier=pending["verifier"], nonce=pending["nonce"])
            user = user_from_claims(claims, issuer=self.oidc.config.issuer, roles_claim=self.oidc.config.roles_claim,
                                    carrier_claim=self.oidc.config.carrier_claim)
        except SignInFailed as exc:
            return self._html(render_problem("Sign-in failed", str(exc)), 502)
        except SignInRefused as exc:
            return self._html(render_problem("Not allowed in the console", str(exc)), 403)
        response = await self._signed_in(request, user, pending.get("return_to", "/console/"))
        response.delete_cookie(_LOGIN_COOKIE, path=_CALLBACK_PATH)
        return response

    async def _dev_login(self, request: Request) -> Response:
        if not self.dev_login:
            return self._html(render_problem("Not found", "the dev login is served in dev mode only"), 404)
        role = request.query_params.get("role", "")
        carrier = request.query_params.get("carrier") or self.dev_carrier
        try:
            user = user_from_claims({"sub": f"dev-{role}", "carrier": carrier, "roles": [role],
                                     "name": f"Dev {role.replace('-', ' ')}"}, issuer="dev")
        except SignInRefused as exc:
            return self._html(render_problem("Dev login refused", f"{exc}; try ?role={CONSOLE_ROLES[0]}"), 400)
        _log.warning("DEV MODE: console dev login as %s of carrier %s", role, carrier)
        return await self._signed_in(request, user, request.query_params.get("return_to", "/console/"))

    async def _signed_in(self, request: Request, user: ConsoleUser, return_to: str) -> Response:
        cookie = await self.sessions.create(user)
        _log.info("console sign-in: %s of carrier %s (%s) via %s", user.subject, user.carrier, ", ".join(user.roles),
                  user.issuer)
        response = RedirectResponse(_return_to(return_to), status_code=303, headers=self.headers)
        response.set_cookie(SESSION_COOKIE, cookie, max_age=self.sessions.session_seconds, path="/", httponly=True,
                            samesite="lax", secure=request.url.scheme == "https")
        return response

    async def _logout(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return self._html(render_problem("Not signed out", "sign out from the console's own page"), 403)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            await self.sessions.end(cookie)
        response = RedirectResponse("/console/login", status_code=303, headers=self.headers)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def _redirect_uri(self, request: Request) -> str:
        assert self.oidc is not None
        return self.oidc.config.redirect_url or f"{request.url.scheme}://{request.url.netloc}{_CALLBACK_PATH}"

    async def _own_asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _OWN_FILES:
            return Response("not found\n", status_code=404, media_type="text/plain", headers=self.headers)
        return FileResponse(_OWN_ASSETS / name, media_type=_media_type(name),
                            headers={**self.headers, "Cache-Control": "no-cache"})

    async def _vendor_asset(self, request: Request) -> Response:
        relative = VENDOR_FILES.get(request.path_params["name"])
        if relative is None:
            return Response("not found\n", status_code=404, media_type="text/plain", headers=self.headers)
        path = self.assets_dir / relative
        if not path.is_file():
            return Response(f"the console's front-end packages are not installed ({path} is missing): run `make "
                            "console-assets`\n", status_code=503, media_type="text/plain", headers=self.headers)
        return FileResponse(path, media_type=_media_type(path.name),
                            headers={**self.headers, "Cache-Control": "no-cache"})


def _media_type(name: str) -> str:
    if name.endswith((".js", ".mjs")):
        return "text/javascript"
    if name.endswith(".geojson"):
        return "application/geo+json"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _return_to(path: str) -> str:
    """A page of the console to go back to after signing in; anything else (another site, ``//host``, a path
    outside /console/) becomes the overview, so the sign-in can never be an open redirect."""
    if (len(path) <= _MAX_RETURN_TO and path.startswith("/console/") and "//" not in path and "\\" not in path
            and all(32 < ord(ch) < 127 for ch in path)):
        return path
    return "/console/"
