"""OAuth2 bearer access tokens (RFC 9068 JWTs) verified with PyJWT against a JWKS.

Only asymmetric algorithms are accepted (ES256, RS256, EdDSA): ``alg: none`` and every HMAC algorithm are
refused before any key is looked at, so an HS256 token "signed" with the public key cannot pass. The key
is the JWKS entry named by the token's ``kid`` (at most 128 characters of a fixed set, logged only as a short
hash) and must suit the algorithm; a JWKS URL is cached by :class:`~.jwks.JwksCache` (cooldown, single flight,
stale while error). ``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` are checked with a small leeway; ``sub`` is
required; ``typ`` must be ``at+jwt`` (RFC 9068 §2.1: an ID token or another kind of JWT is not an access token).
The ``carrier`` claim is the tenant, and must be one the issuer may speak for when HAULMESH_JWT_ISSUER_CARRIERS
binds it; ``scope`` (space-separated, or a ``scp`` list) the scopes. docs/security.md "Tokens".
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt

from services.runtime.tokens import CARRIER_ID

from ..config import GatewayConfig
from .errors import RestError
from .jwks import JwksCache, JwksPolicy, kid_digest
from .tokencache import VerifiedTokens

__all__ = ["ALGORITHMS", "MAX_KID_CHARS", "MAX_SUBJECT_CHARS", "AuthConfig", "Authenticator", "Principal"]

_log = logging.getLogger("haulmesh.gateway.auth")

#: The allow-list. Symmetric algorithms would let anyone holding the verification key mint tokens.
ALGORITHMS = ("ES256", "RS256", "EdDSA")
_KEY_TYPES = {"ES256": "EC", "RS256": "RSA", "EdDSA": "OKP"}
ACCEPTED_TYPES = {"at+jwt", "application/at+jwt"}
_BEARER = re.compile(r"^Bearer +([A-Za-z0-9._~+/=-]+) *$", re.IGNORECASE)
#: A kid as identity providers write them (base64url / base64 thumbprints, UUIDs, dated names, URNs), bounded:
#: anything else is refused before any key lookup, and never reaches a log or a cache key as sent.
MAX_KID_CHARS = 128
_KID = re.compile(rf"^[A-Za-z0-9._~:+/=-]{{1,{MAX_KID_CHARS}}}$")
#: The subject becomes the audit log's actor: required, and bounded like any other identifier we store.
MAX_SUBJECT_CHARS = 255
_SUBJECT_RULE = f"the token's sub claim is required: a string of 1-{MAX_SUBJECT_CHARS} characters"


@dataclass(frozen=True)
class AuthConfig:
    """Where the keys come from and what the tokens must say (GatewayConfig's ``jwt_*`` and ``jwks_*``)."""

    issuer: str
    audience: str
    jwks_file: Path | None
    jwks_url: str | None
    leeway_seconds: float = 30.0
    #: The JWKS URL's cache timings and CA.
    jwks_policy: JwksPolicy = field(default_factory=JwksPolicy)
    #: The carriers the issuer may speak for (HAULMESH_JWT_ISSUER_CARRIERS); None: any.
    issuer_carriers: frozenset[str] | None = None

    @classmethod
    def from_config(cls, config: GatewayConfig) -> AuthConfig:
        policy = JwksPolicy(refresh_seconds=config.jwks_refresh_seconds, cooldown_seconds=config.jwks_cooldown_seconds,
                            max_stale_seconds=config.jwks_max_stale_seconds,
                            fetch_timeout_seconds=config.jwks_fetch_timeout_seconds, ca_file=config.jwks_ca_file)
        return cls(issuer=config.jwt_issuer, audience=config.jwt_audience, jwks_file=config.jwks_file,
                   jwks_url=config.jwks_url, leeway_seconds=config.jwt_leeway_seconds, jwks_policy=policy,
                   issuer_carriers=config.jwt_issuer_carriers)

    @classmethod
    def from_env(cls, state_dir: Path, env: Mapping[str, str] | None = None) -> AuthConfig:
        """The settings of ``env`` as GatewayConfig reads them (the dev issuer of ``state_dir`` by default)."""
        return cls.from_config(GatewayConfig.from_env(env, state_dir=state_dir))


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    carrier: str
    scopes: frozenset[str]
    subject: str
    #: The OAuth2 client the token was issued to (RFC 9068 ``client_id``, else OIDC ``azp``); "" when it names none.
    client: str = ""


def _unauthenticated(message: str, reason: str = "UNAUTHENTICATED") -> RestError:
    return RestError("UNAUTHENTICATED", message, reason=reason,
                     headers={"WWW-Authenticate": 'Bearer realm="haulmesh", error="invalid_token"'})


class _FileKeys:
    """The JWKS file, re-read when it changes (checked at most once a second, and at once for a new kid)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._checked = 0.0

    def _reload(self) -> None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            keyset = jwt.PyJWKSet.from_dict(json.loads(self._path.read_text()))
        except (ValueError, jwt.PyJWKSetError) as exc:
            _log.error("JWKS %s unreadable: %s", self._path, exc)
            return
        self._keys = {k.key_id: k for k in keyset.keys if k.key_id}
        self._stamp = stamp

    async def key(self, kid: str) -> jwt.PyJWK | None:
        # An unknown kid (a new or rotated key) re-checks at once; a stat is cheap, a re-read only on change.
        now = time.monotonic()
        if kid not in self._keys or now - self._checked > 1.0:
            self._checked = now
            self._reload()
        return self._keys.get(kid)


class Authenticator:
    """Verifies the ``Authorization: Bearer`` header of a request and returns its Principal."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._keys: JwksCache | _FileKeys = (
            JwksCache(config.jwks_url, config.jwks_policy) if config.jwks_url
            else _FileKeys(config.jwks_file))  # type: ignore[arg-type]
        #: Tokens already verified (tokencache.py: until exp, at most a minute), not re-verified per request.
        self._verified: VerifiedTokens[Principal] = VerifiedTokens()

    def remembered(self, authorization: str | None) -> Principal | None:
        """The principal of a bearer token this process verified before and still trusts (tokencache.py); None
        for any other header, which only :meth:`authenticate` can judge."""
        match = _BEARER.match(authorization or "")
        return None if match is None else self._verified.get(match.group(1))

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise RestError("UNAUTHENTICATED", "a bearer token is required", reason="UNAUTHENTICATED",
                            headers={"WWW-Authenticate": 'Bearer realm="haulmesh"'})
        match = _BEARER.match(authorization)
        if match is None:
            raise _unauthenticated("the Authorization header must be 'Bearer <token>'")
        token = match.group(1)
        if (known := self._verified.get(token)) is not None:
            return known
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _unauthenticated("the token is not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise _unauthenticated(f"token algorithm {alg!r} is not accepted (allowed: {', '.join(ALGORITHMS)})")
        typ = str(header.get("typ", "")).lower()
        if typ not in ACCEPTED_TYPES:
            raise _unauthenticated(f"token type {header.get('typ')!r} is not an access token (typ must be at+jwt)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _unauthenticated("the token names no key (kid)")
        if not _KID.fullmatch(kid):
            raise _unauthenticated(f"the token's kid is malformed (at most {MAX_KID_CHARS} characters of "
                                   "A-Z a-z 0-9 . _ ~ : + / = -)")
        key = await self._keys.key(kid)
        if key is None:
            _log.debug("token refused: kid %s is not in the trusted key set", kid_digest(kid))
            raise _unauthenticated("the token's key is not trusted")
        if key.key_type != _KEY_TYPES[alg] or key.algorithm_name != alg:
            raise _unauthenticated("the token's algorithm does not match its key")
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[alg], audience=self.config.audience, issuer=self.config.issuer,
                leeway=self.config.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "iat", "sub"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthenticated("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise _unauthenticated("the token is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise _unauthenticated("the token is not from the trusted issuer") from None
        except jwt.exceptions.InvalidSubjectError:
            raise _unauthenticated(_SUBJECT_RULE) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthenticated(_SUBJECT_RULE if exc.claim == "sub" else f"invalid token: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthenticated(f"invalid token: {exc}") from None
        carrier = claims.get("carrier")
        if not isinstance(carrier, str) or not CARRIER_ID.fullmatch(carrier):
            raise _unauthenticated("the token's carrier claim is missing or malformed")
        bound = self.config.issuer_carriers
        if bound is not None and carrier not in bound:
            raise _unauthenticated(f"the issuer {self.config.issuer} may not speak for carrier {carrier}",
                                   reason="CARRIER_NOT_BOUND_TO_ISSUER")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_CHARS:
            raise _unauthenticated(_SUBJECT_RULE)
        raw_scopes = claims.get("scope", claims.get("scp", ""))
        if isinstance(raw_scopes, str):
            scopes = frozenset(raw_scopes.split())
        elif isinstance(raw_scopes, list) and all(isinstance(s, str) for s in raw_scopes):
            scopes = frozenset(raw_scopes)
        else:
            raise _unauthenticated("the token's scope claim is malformed")
        principal = Principal(carrier=carrier, scopes=scopes, subject=subject, client=token_client(claims))
        self._verified.put(token, principal, claims["exp"])
        return principal


def token_client(claims: Mapping[str, object]) -> str:
    """The client a verified token was issued to, for the audit log: ``client_id`` (RFC 9068), else ``azp``."""
    for name in ("client_id", "azp"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def require_scope(principal: Principal, scope: str) -> None:
    """PERMISSION_DENIED (403, MISSING_SCOPE) unless the token carries ``scope``."""
    if scope not in principal.scopes:
        raise RestError("PERMISSION_DENIED", f"the token lacks the scope {scope}", reason="MISSING_SCOPE",
                        metadata={"scope": scope},
                        headers={"WWW-Authenticate": f'Bearer realm="haulmesh", error="insufficient_scope", '
                                                     f'scope="{scope}"'})
