"""Every setting of the gateway from the environment, read once at start-up (a bad value stops the process).

The one place in the gateway that reads ``os.environ`` (the runtime's ServiceConfig holds what every service
shares: ports, TLS, store, peers). See docs/gateway.md and docs/webhooks.md.

REST door:

* ``HAULMESH_JWT_ISSUER`` / ``HAULMESH_JWT_AUDIENCE``: what the TMS's access tokens must say (default: the dev
  issuer's); ``HAULMESH_JWKS_FILE`` or ``HAULMESH_JWKS_URL`` (https://, http only on loopback): the keys
  (default: the dev issuer's ``<state dir>/issuer/jwks.json``); ``HAULMESH_JWT_LEEWAY_SECONDS`` (0-300, 30).
* A JWKS URL's cache (docs/security.md "Tokens"): ``HAULMESH_JWKS_REFRESH_SECONDS`` (1-86400, 300): the key set's
  age at which it is fetched again; ``HAULMESH_JWKS_COOLDOWN_SECONDS`` (0.1-3600, 30, at most the refresh): the
  least time between the end of one fetch (succeeded or failed) and the start of the next;
  ``HAULMESH_JWKS_MAX_STALE_SECONDS`` (0-604800, 3600): how long past its refresh age the last good key set is still
  used while the identity provider cannot be reached; ``HAULMESH_JWKS_FETCH_TIMEOUT_SECONDS`` (0.1-30, 5): one
  fetch, all told; ``HAULMESH_JWKS_CA_FILE``: an extra CA trusted for the JWKS URL's certificate.
* ``HAULMESH_JWT_ISSUER_CARRIERS``: comma-separated carrier ids the issuer may speak for (unset: any carrier); a
  token whose ``carrier`` claim is not among them is refused (401).
* ``HAULMESH_OAUTH_TOKEN_URL``: the identity provider's OAuth2 token endpoint (client credentials) that the
  published OpenAPI document names (default ``/oauth2/token``, relative to the API).
* ``HAULMESH_RATE_LIMIT``: per carrier (and per vehicle on the device listener), e.g. ``50/second``
  (the default), ``1000/minute``, or ``off``.
* ``HAULMESH_MAX_REQUEST_BYTES``: the largest request body (1 to 67108864, default 1 MiB).
* ``HAULMESH_GATEWAY_DEVICE_MAX_INFLIGHT_REQUESTS``: truck requests (REST ingest) handled at once by one gateway
  process (1 to 65536, default 256); beyond, 503 with ``Retry-After: 1`` (docs/gateway.md).
* ``HAULMESH_SSE_MAX_STREAMS_PER_PROCESS`` (default 512) and ``HAULMESH_SSE_MAX_STREAMS_PER_CARRIER`` (default
  16): concurrent Server-Sent Event streams of this gateway process; one beyond is answered 429 with
  ``Retry-After: HAULMESH_SSE_RETRY_AFTER_SECONDS`` (default 5).

Enrolment and renewal (rest/enrol.py, docs/security.md "Enrolment and renewal"):
``HAULMESH_GATEWAY_ENROLMENT_CA_KEY_FILE`` (PEM; default ``ca-key.pem`` beside the mesh CA file when it exists, as in
the dev PKI; absent: enrolment and renewal answer 503) and ``HAULMESH_GATEWAY_ENROLMENT_CA_CERT_FILE`` (default: the
mesh CA file) sign vehicle certificates; ``HAULMESH_GATEWAY_VEHICLE_CERT_TTL_SECONDS`` (5-2592000, default 86400)
is their lifetime.

Interactive reference (``/docs``, rest/docs_ui.py): ``HAULMESH_DOCS_UI_DIR``, the installed ``swagger-ui-dist`` it
serves (default: ``build/docs-ui/node_modules/swagger-ui-dist`` of the checkout, which ``make docs-ui`` fills);
``HAULMESH_DEV_TOKEN_ENDPOINT`` (``1``/``0``, default ``0``; ``haulmesh run`` sets ``1``): serve the dev issuer's
OAuth2 token endpoint (client credentials) for /docs' "Authorize", only with the dev issuer's keys and a loopback
listener.

Webhooks (``HAULMESH_WEBHOOK_*``): ``TIMEOUT_SECONDS`` of one attempt (0-30, 10), ``MAX_CONCURRENCY`` of
attempts (32), ``SUSPEND_AFTER_SECONDS`` of nothing but failures (86400), ``RETRY_SCHEDULE_SECONDS`` (comma-
separated delays, at most 9), ``RETRY_JITTER`` (a fraction in [0, 1), 0.2), ``CA_FILE`` (an extra CA for
development receivers), ``ALLOWED_CIDRS`` (private networks a webhook may reach; none by default).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limits import RateLimitItem, parse

from services.runtime import ConfigError, default_state_dir
from services.runtime.tokens import CARRIER_ID, DEFAULT_AUDIENCE, DEFAULT_ISSUER, jwks_path

from .rest.jwks import JwksPolicy
from .webhooks.destinations import IpNetwork, parse_allowed_cidrs
from .webhooks.domain import DEFAULT_RETRY_DELAYS_SECONDS, RetryPolicy

__all__ = [
    "DEFAULT_DEVICE_MAX_INFLIGHT_REQUESTS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_OAUTH_TOKEN_URL",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_VEHICLE_CERT_TTL_SECONDS",
    "GatewayConfig",
    "OidcConfig",
    "max_request_bytes_from_env",
]

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
DEFAULT_RATE_LIMIT = "50/second"
DEFAULT_OAUTH_TOKEN_URL = "/oauth2/token"  # noqa: S105 - an endpoint's path, not a secret
#: 256 truck requests at once: at most 256 bodies (1 KiB typical, HAULMESH_MAX_REQUEST_BYTES at worst) and 256
#: relayed calls in memory; well above what the per-vehicle rate limit lets a fleet of thousands send at 1 Hz.
DEFAULT_DEVICE_MAX_INFLIGHT_REQUESTS = 256
#: A day: a stolen truck's certificate dies within a day even unrevoked; the truck renews at 2/3 (16 h).
DEFAULT_VEHICLE_CERT_TTL_SECONDS = 86400
_DEFAULT_RATE_LIMIT_ITEM = parse(DEFAULT_RATE_LIMIT)
#: Where ``make console-assets`` installs the console's front-end packages (gitignored build output).
DEFAULT_CONSOLE_ASSETS_DIR = Path(__file__).resolve().parents[2] / "build" / "console"
DEFAULT_CONSOLE_SESSION_SECONDS = 8 * 3600
#: Where ``make docs-ui`` installs Swagger UI in this checkout (gitignored build output).
DEFAULT_DOCS_UI_DIR = Path(__file__).resolve().parents[2] / "build" / "docs-ui" / "node_modules" / "swagger-ui-dist"


@dataclass(frozen=True)
class OidcConfig:
    """The carrier's identity provider, for the console's sign-in (console/oidc.py)."""

    issuer: str
    client_id: str
    #: None: a public client (PKCE alone); else client_secret_basic at the token endpoint.
    client_secret: str | None
    #: The callback URL registered at the provider; None: this gateway's own /console/oidc/callback as requested.
    redirect_url: str | None
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    roles_claim: str = "roles"
    carrier_claim: str = "carrier"
    leeway_seconds: float = 30.0
    jwks_policy: JwksPolicy = field(default_factory=JwksPolicy)


@dataclass(frozen=True)
class GatewayConfig:
    """The gateway's own settings: the REST door's and the webhook service's."""

    # --- the REST door -------------------------------------------------------------------------------
    jwt_issuer: str = DEFAULT_ISSUER
    jwt_audience: str = DEFAULT_AUDIENCE
    #: The JWKS file trusted for tokens; None when the keys come from ``jwks_url``.
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwt_leeway_seconds: float = 30.0
    #: The JWKS URL's cache (services/gateway/rest/jwks.py): refresh age, least time between fetches (after a
    #: success or a failure), how long past the refresh age the last good set serves while the IdP is unreachable.
    jwks_refresh_seconds: float = 300.0
    jwks_cooldown_seconds: float = 30.0
    jwks_max_stale_seconds: float = 3600.0
    jwks_fetch_timeout_seconds: float = 5.0
    #: An extra CA trusted for the JWKS URL's certificate; None: the system store only.
    jwks_ca_file: Path | None = None
    #: The carriers the issuer may speak for; None: any.
    jwt_issuer_carriers: frozenset[str] | None = None
    #: The OAuth2 token endpoint the OpenAPI document's client-credentials flow names.
    oauth_token_url: str = DEFAULT_OAUTH_TOKEN_URL
    #: Requests per window per carrier (``limits``' item, e.g. 50 per 1 second); None: no limit.
    rate_limit: RateLimitItem | None = _DEFAULT_RATE_LIMIT_ITEM
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    device_max_inflight_requests: int = DEFAULT_DEVICE_MAX_INFLIGHT_REQUESTS
    #: Concurrent SSE streams (watches) in this gateway process, and per carrier; 429 + Retry-After beyond.
    sse_max_streams_per_process: int = 512
    sse_max_streams_per_carrier: int = 16
    sse_retry_after_seconds: int = 5

    # --- the webhook service -------------------------------------------------------------------------
    webhook_timeout_seconds: float = 10.0
    webhook_max_concurrency: int = 32
    #: A subscription whose every attempt failed for this long is SUSPENDED (webhook.proto: 24 hours).
    webhook_suspend_after_seconds: float = 86400.0
    webhook_retry_schedule_seconds: tuple[float, ...] = DEFAULT_RETRY_DELAYS_SECONDS
    webhook_retry_jitter_fraction: float = 0.2
    #: An extra CA trusted for receivers' certificates (development receivers); None: the system store only.
    webhook_ca_file: Path | None = None
    webhook_allowed_cidrs: tuple[IpNetwork, ...] = ()

    # --- enrolment and renewal of trucks' certificates -----------------------------------------------
    #: The CA that signs vehicle certificates, and its key; None: this gateway neither enrols nor renews (503).
    enrolment_ca_cert_file: Path | None = None
    enrolment_ca_key_file: Path | None = None
    #: Lifetime of a certificate issued on enrolment or renewal (the edge client renews at 2/3 of it).
    vehicle_cert_ttl_seconds: int = DEFAULT_VEHICLE_CERT_TTL_SECONDS

    # --- the interactive reference (/docs) ----------------------------------------------------------
    docs_ui_dir: Path = DEFAULT_DOCS_UI_DIR
    #: Serve the dev issuer's token endpoint (dev mode; rest/docs_ui.py says when it is allowed).
    dev_token_endpoint: bool = False

    # --- the console (/console/) -----------------------------------------------------------------------
    console_assets_dir: Path = DEFAULT_CONSOLE_ASSETS_DIR
    #: A raster tile URL template for the fleet map's basemap; None: the shipped outlines only (offline).
    console_tile_url: str | None = None
    console_session_seconds: int = DEFAULT_CONSOLE_SESSION_SECONDS
    #: Serve /console/dev-login (dev mode; console/app.py says when it is allowed).
    console_dev_login: bool = False
    console_dev_carrier: str = "sandbox"
    #: The carrier's identity provider; None: no sign-in but the dev login.
    oidc: OidcConfig | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, state_dir: Path | None = None,
                 mesh_ca_file: Path | None = None) -> GatewayConfig:
        """The settings of ``env`` (default: the process environment); ``state_dir`` (default: the one
        HAULMESH_STATE_DIR names) holds the dev issuer's keys, trusted unless a JWKS is configured; ``mesh_ca_file``
        (the mesh's CA bundle) is the default enrolment CA, its ``ca-key.pem`` neighbour the default key."""
        env = os.environ if env is None else env
        ca_cert, ca_key = _enrolment_ca(env, mesh_ca_file)
        url, file, leeway = _jwks(env)
        refresh = _number(env, "HAULMESH_JWKS_REFRESH_SECONDS", 300.0, 1.0, 86400.0)
        cooldown = _number(env, "HAULMESH_JWKS_COOLDOWN_SECONDS", 30.0, 0.1, 3600.0)
        if cooldown > refresh:
            raise ConfigError("HAULMESH_JWKS_COOLDOWN_SECONDS must not exceed HAULMESH_JWKS_REFRESH_SECONDS",
                              field="HAULMESH_JWKS_COOLDOWN_SECONDS")
        jwks_ca = env.get("HAULMESH_JWKS_CA_FILE", "")
        retry = RetryPolicy.from_text(env.get("HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS", ""),
                                      env.get("HAULMESH_WEBHOOK_RETRY_JITTER", ""))
        timeout, concurrency, suspend_after = _webhook_numbers(env)
        ca_file = env.get("HAULMESH_WEBHOOK_CA_FILE", "")
        return cls(
            jwt_issuer=env.get("HAULMESH_JWT_ISSUER") or DEFAULT_ISSUER,
            jwt_audience=env.get("HAULMESH_JWT_AUDIENCE") or DEFAULT_AUDIENCE,
            jwks_file=None if url else Path(file) if file else jwks_path(
                state_dir if state_dir is not None else default_state_dir(env)),
            jwks_url=url,
            jwt_leeway_seconds=leeway,
            jwks_refresh_seconds=refresh,
            jwks_cooldown_seconds=cooldown,
            jwks_max_stale_seconds=_number(env, "HAULMESH_JWKS_MAX_STALE_SECONDS", 3600.0, 0.0, 604800.0),
            jwks_fetch_timeout_seconds=_number(env, "HAULMESH_JWKS_FETCH_TIMEOUT_SECONDS", 5.0, 0.1, 30.0),
            jwks_ca_file=Path(jwks_ca) if jwks_ca else None,
            jwt_issuer_carriers=_issuer_carriers(env),
            oauth_token_url=env.get("HAULMESH_OAUTH_TOKEN_URL") or DEFAULT_OAUTH_TOKEN_URL,
            rate_limit=_rate_limit(env),
            max_request_bytes=max_request_bytes_from_env(env),
            device_max_inflight_requests=_device_inflight(env),
            sse_max_streams_per_process=_positive_int(env, "HAULMESH_SSE_MAX_STREAMS_PER_PROCESS", 512),
            sse_max_streams_per_carrier=_positive_int(env, "HAULMESH_SSE_MAX_STREAMS_PER_CARRIER", 16),
            sse_retry_after_seconds=_positive_int(env, "HAULMESH_SSE_RETRY_AFTER_SECONDS", 5),
            webhook_timeout_seconds=timeout,
            webhook_max_concurrency=concurrency,
            webhook_suspend_after_seconds=suspend_after,
            webhook_retry_schedule_seconds=retry.delays,
            webhook_retry_jitter_fraction=retry.jitter,
            webhook_ca_file=Path(ca_file) if ca_file else None,
            webhook_allowed_cidrs=parse_allowed_cidrs(env.get("HAULMESH_WEBHOOK_ALLOWED_CIDRS", "")),
            docs_ui_dir=Path(env.get("HAULMESH_DOCS_UI_DIR") or DEFAULT_DOCS_UI_DIR),
            dev_token_endpoint=_flag(env, "HAULMESH_DEV_TOKEN_ENDPOINT"),
            **_console(env, leeway),
            enrolment_ca_cert_file=ca_cert,
            enrolment_ca_key_file=ca_key,
            vehicle_cert_ttl_seconds=_whole(env, "HAULMESH_GATEWAY_VEHICLE_CERT_TTL_SECONDS",
                                            DEFAULT_VEHICLE_CERT_TTL_SECONDS, 5, 30 * 86400),
        )


def _enrolment_ca(env: Mapping[str, str], mesh_ca_file: Path | None) -> tuple[Path | None, Path | None]:
    """The enrolment CA's certificate and key files, or (None, None) when no key is configured or found."""
    key = env.get("HAULMESH_GATEWAY_ENROLMENT_CA_KEY_FILE") or ""
    cert = env.get("HAULMESH_GATEWAY_ENROLMENT_CA_CERT_FILE") or ""
    if key:
        if not cert and mesh_ca_file is None:
            raise ConfigError("HAULMESH_GATEWAY_ENROLMENT_CA_CERT_FILE is required with the key",
                              field="HAULMESH_GATEWAY_ENROLMENT_CA_CERT_FILE")
        return Path(cert) if cert else mesh_ca_file, Path(key)
    if cert:
        raise ConfigError("HAULMESH_GATEWAY_ENROLMENT_CA_CERT_FILE is set without "
                          "HAULMESH_GATEWAY_ENROLMENT_CA_KEY_FILE", field="HAULMESH_GATEWAY_ENROLMENT_CA_KEY_FILE")
    if mesh_ca_file is not None and (mesh_ca_file.parent / "ca-key.pem").is_file():  # the dev PKI's layout
        return mesh_ca_file, mesh_ca_file.parent / "ca-key.pem"
    return None, None


def _jwks(env: Mapping[str, str]) -> tuple[str | None, str | None, float]:
    url = env.get("HAULMESH_JWKS_URL") or None
    file = env.get("HAULMESH_JWKS_FILE") or None
    if url and file:
        raise ConfigError("set HAULMESH_JWKS_FILE or HAULMESH_JWKS_URL, not both", field="HAULMESH_JWKS_URL")
    if url and not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        raise ConfigError("HAULMESH_JWKS_URL must be https:// (http only on loopback)", field="HAULMESH_JWKS_URL")
    raw_leeway = env.get("HAULMESH_JWT_LEEWAY_SECONDS", "30")
    try:
        leeway = float(raw_leeway)
    except ValueError:
        raise ConfigError(f"HAULMESH_JWT_LEEWAY_SECONDS must be a number, got {raw_leeway!r}",
                          field="HAULMESH_JWT_LEEWAY_SECONDS") from None
    if not 0 <= leeway <= 300:
        raise ConfigError("HAULMESH_JWT_LEEWAY_SECONDS must be within 0-300", field="HAULMESH_JWT_LEEWAY_SECONDS")
    return url, file, leeway


def _number(env: Mapping[str, str], key: str, default: float, low: float, high: float) -> float:
    raw = env.get(key) or str(default)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}", field=key) from None
    if not low <= value <= high:  # also refuses nan
        raise ConfigError(f"{key} must be within {low:g}-{high:g}, got {raw!r}", field=key)
    return value


def _whole(env: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = (env.get(key) or str(default)).strip()
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(f"{key} must be a whole number of seconds from {low} to {high}, got {raw!r}", field=key)
    return int(raw)


def _issuer_carriers(env: Mapping[str, str]) -> frozenset[str] | None:
    raw = env.get("HAULMESH_JWT_ISSUER_CARRIERS", "").strip()
    if not raw:
        return None
    carriers = frozenset(c.strip() for c in raw.split(","))
    bad = sorted(c for c in carriers if not CARRIER_ID.fullmatch(c))
    if bad:
        raise ConfigError(f"HAULMESH_JWT_ISSUER_CARRIERS must be comma-separated carrier ids, not {bad[0]!r}",
                          field="HAULMESH_JWT_ISSUER_CARRIERS")
    return carriers


_CLAIM_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


def _console(env: Mapping[str, str], leeway: float) -> dict[str, Any]:
    tile_url = env.get("HAULMESH_CONSOLE_TILE_URL") or None
    if tile_url is not None and not (tile_url.startswith("https://") and
                                     all(part in tile_url for part in ("{z}", "{x}", "{y}"))):
        raise ConfigError("HAULMESH_CONSOLE_TILE_URL must be an https:// URL template with {z}, {x} and {y}",
                          field="HAULMESH_CONSOLE_TILE_URL")
    carrier = env.get("HAULMESH_CONSOLE_DEV_CARRIER") or "sandbox"
    if not CARRIER_ID.fullmatch(carrier):
        raise ConfigError(f"HAULMESH_CONSOLE_DEV_CARRIER must be a carrier id, got {carrier!r}",
                          field="HAULMESH_CONSOLE_DEV_CARRIER")
    oidc = _oidc(env, leeway)
    dev_login = _flag(env, "HAULMESH_CONSOLE_DEV_LOGIN")
    if dev_login and oidc is not None:
        raise ConfigError("HAULMESH_CONSOLE_DEV_LOGIN signs anyone in as any role: it is refused with a real identity "
                          "provider (HAULMESH_OIDC_ISSUER is set); unset one of them",
                          field="HAULMESH_CONSOLE_DEV_LOGIN")
    return {"console_assets_dir": Path(env.get("HAULMESH_CONSOLE_ASSETS_DIR") or DEFAULT_CONSOLE_ASSETS_DIR),
            "console_tile_url": tile_url,
            "console_session_seconds": _whole(env, "HAULMESH_CONSOLE_SESSION_SECONDS",
                                              DEFAULT_CONSOLE_SESSION_SECONDS, 300, 86400),
            "console_dev_login": dev_login, "console_dev_carrier": carrier, "oidc": oidc}


def _oidc(env: Mapping[str, str], leeway: float) -> OidcConfig | None:
    issuer = env.get("HAULMESH_OIDC_ISSUER") or ""
    client_id = env.get("HAULMESH_OIDC_CLIENT_ID") or ""
    if not issuer:
        if client_id:
            raise ConfigError("HAULMESH_OIDC_CLIENT_ID is set without HAULMESH_OIDC_ISSUER",
                              field="HAULMESH_OIDC_ISSUER")
        return None
    if not issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        raise ConfigError("HAULMESH_OIDC_ISSUER must be https:// (http only on loopback)", field="HAULMESH_OIDC_ISSUER")
    if not client_id:
        raise ConfigError("HAULMESH_OIDC_CLIENT_ID is required with HAULMESH_OIDC_ISSUER",
                          field="HAULMESH_OIDC_CLIENT_ID")
    secret = None
    if secret_file := env.get("HAULMESH_OIDC_CLIENT_SECRET_FILE"):
        try:
            secret = Path(secret_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"HAULMESH_OIDC_CLIENT_SECRET_FILE cannot be read: {exc.strerror}",
                              field="HAULMESH_OIDC_CLIENT_SECRET_FILE") from None
        if not secret:
            raise ConfigError("HAULMESH_OIDC_CLIENT_SECRET_FILE is empty", field="HAULMESH_OIDC_CLIENT_SECRET_FILE")
    redirect = env.get("HAULMESH_OIDC_REDIRECT_URL") or None
    if redirect is not None and not redirect.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        raise ConfigError("HAULMESH_OIDC_REDIRECT_URL must be https:// (http only on loopback)",
                          field="HAULMESH_OIDC_REDIRECT_URL")
    scopes = tuple((env.get("HAULMESH_OIDC_SCOPES") or "openid profile email").split())
    if "openid" not in scopes:
        raise ConfigError("HAULMESH_OIDC_SCOPES must include openid", field="HAULMESH_OIDC_SCOPES")
    claims = {}
    for key, default in (("HAULMESH_OIDC_ROLES_CLAIM", "roles"), ("HAULMESH_OIDC_CARRIER_CLAIM", "carrier")):
        claims[key] = env.get(key) or default
        if not _CLAIM_NAME.fullmatch(claims[key]):
            raise ConfigError(f"{key} must be a claim name, got {claims[key]!r}", field=key)
    policy = JwksPolicy(ca_file=Path(ca) if (ca := env.get("HAULMESH_JWKS_CA_FILE")) else None)
    return OidcConfig(issuer=issuer, client_id=client_id, client_secret=secret, redirect_url=redirect, scopes=scopes,
                      roles_claim=claims["HAULMESH_OIDC_ROLES_CLAIM"],
                      carrier_claim=claims["HAULMESH_OIDC_CARRIER_CLAIM"], leeway_seconds=leeway, jwks_policy=policy)


def _flag(env: Mapping[str, str], key: str) -> bool:
    raw = env.get(key) or "0"
    if raw not in ("0", "1"):
        raise ConfigError(f"{key} must be 1 or 0, got {raw!r}", field=key)
    return raw == "1"


def _rate_limit(env: Mapping[str, str]) -> RateLimitItem | None:
    raw = env.get("HAULMESH_RATE_LIMIT") or DEFAULT_RATE_LIMIT
    if raw.strip().lower() == "off":
        return None
    try:
        return parse(raw)
    except ValueError:
        raise ConfigError(f"HAULMESH_RATE_LIMIT must look like '50/second' or 'off', got {raw!r}",
                          field="HAULMESH_RATE_LIMIT") from None


def _device_inflight(env: Mapping[str, str]) -> int:
    raw = env.get("HAULMESH_GATEWAY_DEVICE_MAX_INFLIGHT_REQUESTS") or str(DEFAULT_DEVICE_MAX_INFLIGHT_REQUESTS)
    if not raw.isdigit() or not 1 <= int(raw) <= 65536:
        raise ConfigError(f"HAULMESH_GATEWAY_DEVICE_MAX_INFLIGHT_REQUESTS must be 1-65536, got {raw!r}",
                          field="HAULMESH_GATEWAY_DEVICE_MAX_INFLIGHT_REQUESTS")
    return int(raw)


def _positive_int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key) or str(default)
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise ConfigError(f"{key} must be a whole number from 1 to 1000000, got {raw!r}", field=key)
    return int(raw)


def max_request_bytes_from_env(env: Mapping[str, str]) -> int:
    """``HAULMESH_MAX_REQUEST_BYTES`` of ``env``: 1 to 64 MiB, default :data:`DEFAULT_MAX_REQUEST_BYTES`."""
    raw = env.get("HAULMESH_MAX_REQUEST_BYTES") or str(DEFAULT_MAX_REQUEST_BYTES)
    if not raw.isdigit() or not 1 <= int(raw) <= 64 * 1024 * 1024:
        raise ConfigError(f"HAULMESH_MAX_REQUEST_BYTES must be 1 to 67108864, got {raw!r}",
                          field="HAULMESH_MAX_REQUEST_BYTES")
    return int(raw)


def _webhook_numbers(env: Mapping[str, str]) -> tuple[float, int, float]:
    try:
        timeout = float(env.get("HAULMESH_WEBHOOK_TIMEOUT_SECONDS", "10"))
        concurrency = int(env.get("HAULMESH_WEBHOOK_MAX_CONCURRENCY", "32"))
        suspend_after = float(env.get("HAULMESH_WEBHOOK_SUSPEND_AFTER_SECONDS", "86400"))
    except ValueError:
        raise ConfigError("HAULMESH_WEBHOOK_TIMEOUT_SECONDS, _MAX_CONCURRENCY and _SUSPEND_AFTER_SECONDS "
                          "must be numbers", field="HAULMESH_WEBHOOK_TIMEOUT_SECONDS") from None
    if not 0 < timeout <= 30 or concurrency < 1 or suspend_after <= 0:
        raise ConfigError("webhook timeout must be in (0, 30] s, concurrency at least 1, suspension positive",
                          field="HAULMESH_WEBHOOK_TIMEOUT_SECONDS")
    return timeout, concurrency, suspend_after
