"""The dev token issuer: ``haulmesh token mint --carrier acme --scope "tender:create tender:read"``.

On first use it creates an ES256 (P-256) signing key in ``<state dir>/issuer/`` (0600) and publishes the
public key as ``jwks.json`` there, which the gateway trusts by default. Tokens are RFC 9068 access tokens
(``typ: at+jwt``) with ``iss``, ``aud``, ``sub``, ``iat``, ``nbf``, ``exp``, ``jti``, ``carrier`` and a
space-separated ``scope``. For development and tests only: production tokens come from the carrier's
OAuth2 authorization server (point the gateway at its JWKS with HAULMESH_JWKS_URL).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ._config import default_state_dir

__all__ = ["CARRIER_ID", "DEFAULT_AUDIENCE", "DEFAULT_ISSUER", "jwks_path", "main", "mint"]

DEFAULT_ISSUER = "https://issuer.haulmesh.local/dev"
DEFAULT_AUDIENCE = "https://api.haulmesh.local"
DEFAULT_TTL_SECONDS = 900
MAX_TTL_SECONDS = 24 * 3600
#: A carrier id as the mesh accepts it (services/runtime/_tenant.py): the token's ``carrier`` claim.
CARRIER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def issuer_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "issuer"


def jwks_path(state_dir: Path) -> Path:
    """The dev issuer's public keys, which the gateway trusts unless told otherwise."""
    return issuer_dir(state_dir) / "jwks.json"


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` with ``data`` atomically unless it exists; False when another process was first."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, path)  # fails if it exists: two first uses never end with two keys
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _signing_key(state_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """The issuer's key (created on first use) and its kid; keeps jwks.json in step with it."""
    directory = issuer_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file = directory / "signing-key.pem"
    if not key_file.exists():
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _write_new(key_file, pem, 0o600)
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file} is not an EC private key")
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    # RFC 7638 thumbprint as the kid: stable for the key, the same in every process.
    kid = _thumbprint(public)
    public.update({"kid": kid, "alg": "ES256", "use": "sig"})
    jwks = json.dumps({"keys": [public]}, indent=2).encode()
    target = jwks_path(state_dir)
    if not target.exists() or target.read_bytes() != jwks:
        tmp = target.with_name(f".jwks.{os.getpid()}.{uuid.uuid4().hex}")
        tmp.write_bytes(jwks)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    return key, kid


def _thumbprint(public_jwk: dict[str, str]) -> str:
    members = {k: public_jwk[k] for k in ("crv", "kty", "x", "y")}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mint(*, carrier: str, scopes: Sequence[str] | str, state_dir: Path | None = None,
         ttl_seconds: int = DEFAULT_TTL_SECONDS, audience: str = DEFAULT_AUDIENCE, issuer: str = DEFAULT_ISSUER,
         subject: str | None = None, now: float | None = None, extra_claims: dict | None = None,
         client: str | None = None) -> str:
    """A signed access token of the dev issuer of ``state_dir`` (default: HAULMESH_STATE_DIR / .haulmesh); its
    ``client_id`` (RFC 9068) is ``client`` or ``<carrier>-tms``, which the audit log records beside the subject."""
    key, kid = _signing_key(Path(state_dir) if state_dir is not None else default_state_dir())
    issued = int(time.time() if now is None else now)
    scope = scopes if isinstance(scopes, str) else " ".join(scopes)
    claims = {
        "iss": issuer, "aud": audience, "sub": subject or f"tms@{carrier}", "iat": issued, "nbf": issued,
        "exp": issued + ttl_seconds, "jti": uuid.uuid4().hex, "carrier": carrier, "scope": scope,
        "client_id": client or f"{carrier}-tms", **(extra_claims or {}),
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})


def main(argv: Sequence[str] | None = None) -> int:
    """``token mint ...``: print a dev token on stdout. Returns the exit status (2 on bad arguments)."""
    parser = argparse.ArgumentParser(prog="haulmesh token", description="Dev OAuth2 access tokens for the gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mint", help="mint an access token of the dev issuer")
    m.add_argument("--carrier", required=True, help="the tenant, e.g. acme (the token's carrier claim)")
    m.add_argument("--scope", required=True, help='space-separated scopes, e.g. "tender:create tender:read" '
                   '(docs/gateway.md lists them; "report:read" for the KPI report)')
    m.add_argument("--ttl-seconds", type=int, default=DEFAULT_TTL_SECONDS, help="lifetime (default 900)")
    m.add_argument("--audience", default=os.environ.get("HAULMESH_JWT_AUDIENCE") or DEFAULT_AUDIENCE)
    m.add_argument("--issuer", default=os.environ.get("HAULMESH_JWT_ISSUER") or DEFAULT_ISSUER)
    m.add_argument("--subject", default=None)
    m.add_argument("--state-dir", type=Path, default=None, help="default: HAULMESH_STATE_DIR or .haulmesh")
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return int(exc.code or 0)
    if not CARRIER_ID.fullmatch(args.carrier):
        print(f"haulmesh token: --carrier must match {CARRIER_ID.pattern}", file=sys.stderr)
        return 2
    if not 1 <= args.ttl_seconds <= MAX_TTL_SECONDS:
        print(f"haulmesh token: --ttl-seconds must be within 1-{MAX_TTL_SECONDS}", file=sys.stderr)
        return 2
    print(mint(carrier=args.carrier, scopes=args.scope, state_dir=args.state_dir, ttl_seconds=args.ttl_seconds,
               audience=args.audience, issuer=args.issuer, subject=args.subject))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
