"""A real OpenID Connect provider the tests start themselves, and a browserless sign-in through it.

The provider is npm's ``oidc-provider`` (panva/node-oidc-provider, pinned by scripts/oidc-provider/package-lock.json)
run by the machine's ``node`` from scripts/oidc-provider/server.mjs, with its packages in build/oidc-provider
(``bash scripts/oidc-provider/install.sh build/oidc-provider``; :func:`ensure_installed` runs it once when they
are missing or stale, under a file lock so concurrent test processes do not collide). What the provider does
(server.mjs says it in full): the authorization code flow only, PKCE required with S256, scopes ``openid``,
``profile`` (``name``), ``email`` (``email``) and ``haulmesh`` (``roles``, ``carrier``) whose claims are in the ID
token, ID tokens signed ES256 with a key made at start, a one-field sign-in form (the login is the account id
and the ``sub``), consent granted at once.

- :func:`start_oidc_provider` - a context manager: the provider on a free loopback port, its discovery document
  read, stopped (SIGTERM to its process group, then SIGKILL) on exit; its log (stdout and stderr) is
  ``<directory>/provider.log`` and is quoted in every error.
- :func:`complete_login` - what a browser does between the client's authorization URL and its callback: the
  provider's redirects, its sign-in form, the redirect back; returns the callback URL without fetching it.

Both are synchronous: in an async test, starting the provider blocks the loop for the second or so node takes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from services.runtime import free_port

__all__ = ["DEFAULT_CLIENT_ID", "DEFAULT_ID_TOKEN_ALG", "OidcProvider", "complete_login", "ensure_installed",
           "start_oidc_provider"]

ROOT = Path(__file__).resolve().parents[3]
SCRIPT_DIR = ROOT / "scripts" / "oidc-provider"
SERVER = SCRIPT_DIR / "server.mjs"
#: Where the Makefile's ``build/oidc-provider/.installed`` target and :func:`ensure_installed` install the packages.
INSTALL_DIR = ROOT / "build" / "oidc-provider"
NODE_MODULES = INSTALL_DIR / "node_modules"
DEFAULT_CLIENT_ID = "haulmesh-console"
#: The ID tokens' signing algorithm unless told (the key is made at start): ES256, RS256 or EdDSA.
DEFAULT_ID_TOKEN_ALG = "ES256"
#: From start to READY and a discovery document (node starts it in well under a second on an idle machine).
START_TIMEOUT_SECONDS = 30.0
#: How long SIGTERM is given before SIGKILL.
STOP_GRACE_SECONDS = 10.0
#: ``npm ci`` of the pinned lock (network); ~5 s on a warm npm cache.
INSTALL_TIMEOUT_SECONDS = 300.0
#: Attempts at a start, each on another free port, when the port was taken between choosing it and binding it.
_PORT_ATTEMPTS = 3
_LOG_TAIL_CHARS = 3000


def _tail(path: Path, chars: int = _LOG_TAIL_CHARS) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _installed() -> bool:
    """The pinned packages are installed: the lock the install copied is today's, and the package is there."""
    copied = INSTALL_DIR / "package-lock.json"
    return ((NODE_MODULES / "oidc-provider" / "package.json").is_file() and copied.is_file()
            and copied.read_bytes() == (SCRIPT_DIR / "package-lock.json").read_bytes())


def ensure_installed() -> Path:
    """build/oidc-provider/node_modules, installed by scripts/oidc-provider/install.sh when missing or stale (the
    package-lock.json it copied there is not scripts/oidc-provider's): once, under an exclusive lock
    (build/oidc-provider/.install.lock), so test processes started together wait for one install."""
    if _installed():
        return NODE_MODULES
    bash = shutil.which("bash")
    if bash is None:
        raise RuntimeError("bash is needed to install the tests' OpenID provider")
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    with (INSTALL_DIR / ".install.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _installed():
                done = subprocess.run([bash, str(SCRIPT_DIR / "install.sh"), str(INSTALL_DIR)], cwd=ROOT,
                                      stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                      timeout=INSTALL_TIMEOUT_SECONDS, check=False)
                if done.returncode != 0 or not _installed():
                    raise RuntimeError(f"installing oidc-provider into {INSTALL_DIR} failed ({done.returncode}): "
                                       f"{(done.stdout + done.stderr)[-_LOG_TAIL_CHARS:]}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return NODE_MODULES


@dataclass
class OidcProvider:
    """One provider process: :meth:`start` returns once it serves its discovery document, :meth:`stop` ends it.

    One client (``client_id``; public with token_endpoint_auth_method ``none`` when ``client_secret`` is None,
    else ``client_secret_basic``), registered for ``redirect_uris``; ``accounts`` maps each login to its claims.
    """

    directory: Path
    redirect_uris: tuple[str, ...]
    accounts: dict[str, dict[str, Any]]
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str | None = None
    #: Scope -> the claims it grants; None: server.mjs's (openid, profile, email, haulmesh: roles and carrier).
    scope_claims: dict[str, list[str]] | None = None
    #: The ID tokens' algorithm: ES256, RS256 or EdDSA (a key of that type is made at start).
    id_token_signing_alg: str = DEFAULT_ID_TOKEN_ALG
    port: int = 0
    #: The provider's discovery document (``<issuer>/.well-known/openid-configuration``), read at start.
    discovery: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "provider.log"

    def log(self) -> str:
        """The end of the provider's log (one line per request, its errors)."""
        return _tail(self.log_path)

    def _write_config(self) -> Path:
        client: dict[str, Any] = {"client_id": self.client_id, "redirect_uris": list(self.redirect_uris)}
        if self.client_secret is not None:
            client["client_secret"] = self.client_secret
        config: dict[str, Any] = {"issuer": self.issuer, "port": self.port, "clients": [client],
                                  "accounts": self.accounts, "id_token_signing_alg": self.id_token_signing_alg}
        if self.scope_claims is not None:
            config["claims"] = self.scope_claims
        path = self.directory / "config.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the client secret is in it
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent=2)
        return path

    def start(self) -> OidcProvider:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is needed to run the tests' OpenID provider: apt-get install nodejs")
        node_modules = ensure_installed()
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "NODE_PATH": str(node_modules)}
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.port = free_port()
            config = self._write_config()
            with self.log_path.open("ab") as log:
                log.write(f"--- start {attempt}: {self.issuer}\n".encode())
                log.flush()
                self.process = subprocess.Popen([node, str(SERVER), str(config)], cwd=self.directory, env=env,
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
            try:
                self._wait_ready()
            except _PortTaken:
                self.stop()
                if attempt == _PORT_ATTEMPTS:
                    raise RuntimeError(f"the OpenID provider found its port taken {attempt} times; log "
                                       f"{self.log_path}:\n{self.log()}") from None
                continue
            except BaseException:
                self.stop()
                raise
            return self
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        ready_line = f"READY {self.issuer}"
        while ready_line not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None:
                if "EADDRINUSE" in self.log():
                    raise _PortTaken
                raise RuntimeError(f"the OpenID provider exited with {self.process.returncode} before it was ready; "
                                   f"log {self.log_path}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the OpenID provider printed no READY within {START_TIMEOUT_SECONDS:.0f} s; "
                                   f"log {self.log_path}:\n{self.log()}")
            time.sleep(0.05)
        url = f"{self.issuer}/.well-known/openid-configuration"
        last = "no answer"
        with httpx.Client(timeout=5) as http:
            while True:
                try:
                    answer = http.get(url)
                    if answer.status_code == 200:
                        self.discovery = answer.json()
                        return
                    last = f"{answer.status_code}: {answer.text[:500]}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the OpenID provider's {url} did not answer 200 within "
                                       f"{START_TIMEOUT_SECONDS:.0f} s (last: {last}); log {self.log_path}:\n"
                                       f"{self.log()}")
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after a grace."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # start_new_session: the group is the provider's own (its id is the provider's pid, still unreaped here).
        with _gone():
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with _gone():
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _PortTaken(Exception):
    """The provider could not bind its port (taken since free_port chose it): try another."""


@contextmanager
def _gone() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


@contextmanager
def start_oidc_provider(tmp_path: Path, *, redirect_uris: Sequence[str], accounts: Mapping[str, Mapping[str, Any]],
                        client_id: str = DEFAULT_CLIENT_ID, client_secret: str | None = None,
                        scope_claims: Mapping[str, Sequence[str]] | None = None,
                        id_token_signing_alg: str = DEFAULT_ID_TOKEN_ALG) -> Iterator[OidcProvider]:
    """A running provider (its discovery document read) for the ``with`` block; stopped after it.

    Its files (config.json, provider.log) go in a folder of their own under ``tmp_path``. ``accounts``: login ->
    claims (``sub`` is the login). ``scope_claims`` replaces the scope-to-claims map (e.g. ``{"openid": ["sub"],
    "profile": ["name", "roles", "carrier"]}`` to hand roles and carrier out with ``profile``).
    """
    directory = Path(tmp_path) / f"oidc-provider-{time.monotonic_ns()}"
    claims_of = {login: dict(claims) for login, claims in accounts.items()}
    scopes = None if scope_claims is None else {scope: list(names) for scope, names in scope_claims.items()}
    provider = OidcProvider(directory, tuple(redirect_uris), claims_of, client_id=client_id,
                            client_secret=client_secret, scope_claims=scopes, id_token_signing_alg=id_token_signing_alg)
    with provider:
        yield provider


# --- the browserless sign-in -----------------------------------------------------------------------------------


class _Page(HTMLParser):
    """The page's forms (action, method, named inputs) and its visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._form: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action", ""), "method": a.get("method", "get").lower(), "fields": {}}
            self.forms.append(self._form)
        elif tag in ("input", "textarea", "select", "button") and self._form is not None and a.get("name"):
            self._form["fields"][a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())


def _parse(response: httpx.Response) -> _Page:
    page = _Page()
    if "html" in response.headers.get("content-type", ""):
        page.feed(response.text)
    return page


def _without_query(url: str) -> str:
    return urlsplit(url)._replace(query="", fragment="").geturl()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def complete_login(client: httpx.Client, authorize_url: str, login: str, *,
                   redirect_uris: Iterable[str] | None = None, max_steps: int = 20) -> str:
    """Sign ``login`` in as a browser would, from the client's ``authorize_url`` to its callback: GET it, follow the
    provider's redirects to its sign-in form, POST the form with ``login``, follow redirects until one goes to a
    redirect URI (``redirect_uris``, else the ``redirect_uri`` of ``authorize_url``) and return that URL, not
    fetched: with ``code``, ``state`` and ``iss``, or ``error`` when the provider refused the request. ``client``
    keeps the provider's cookies (a second sign-in with it finds the session: no form). AssertionError, with the
    steps taken and the last page's text, when the flow goes anywhere else (an unknown login: the form again)."""
    if redirect_uris is None:
        redirect_uris = parse_qs(urlsplit(authorize_url).query).get("redirect_uri", [])
    targets = {_without_query(uri) for uri in redirect_uris}
    if not targets:
        raise ValueError("the authorization URL names no redirect_uri: pass redirect_uris")
    provider = _origin(authorize_url)
    steps: list[str] = []

    def fetch(method: str, url: str, **options: Any) -> httpx.Response:
        answer = client.request(method, url, follow_redirects=False, **options)
        steps.append(f"{method} {_without_query(url)} -> {answer.status_code}")
        return answer

    def went_wrong(why: str, answer: httpx.Response) -> AssertionError:
        page = _parse(answer)
        text = " | ".join(page.text) if page.text else answer.text
        return AssertionError(f"sign-in of {login!r}: {why}\nsteps: " + "; ".join(steps)
                              + f"\nlast page ({answer.status_code} {answer.url}): {text[:2000]}")

    response = fetch("GET", authorize_url)
    posted = False
    for _ in range(max_steps):
        if response.is_redirect:
            target = urljoin(str(response.url), response.headers["location"])
            if _without_query(target) in targets:
                return target
            if _origin(target) != provider:
                raise went_wrong(f"redirected off the provider to {target}", response)
            response = fetch("GET", target)
            continue
        forms = [form for form in _parse(response).forms if "login" in form["fields"]]
        if response.status_code != 200 or not forms:
            raise went_wrong("neither a redirect nor the sign-in form", response)
        if posted:
            raise went_wrong("the sign-in form again after submitting it", response)
        form = forms[0]
        fields = {**form["fields"], "login": login}
        action = urljoin(str(response.url), form["action"])
        response = (fetch("POST", action, data=fields) if form["method"] == "post"
                    else fetch("GET", action, params=fields))
        posted = True
    raise went_wrong(f"no redirect to {sorted(targets)} within {max_steps} steps", response)
