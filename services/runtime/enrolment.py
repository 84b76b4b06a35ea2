"""Truck enrolment: one-time enrolment tokens, and the signer that turns a truck's CSR into a short-lived certificate.

An operator issues a token bound to one vehicle (``haulmesh pki enrol-token vehicle <id>``); the truck generates its
key itself and sends a CSR with the token to the gateway (docs/security.md, "Enrolment and renewal"). The store keeps
only the token's SHA-256, never the token: whoever reads the store cannot enrol. A token is consumed atomically (a
Lua script on its one key), so two trucks racing with the same token get one certificate between them.

A used or expired token is remembered for :data:`TOKEN_TOMBSTONE_SECONDS` past its expiry so that the truck's error
says "already used" or "expired" rather than "unknown".
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import pki
from ._errors import ConfigError, InvalidArgument, PermissionDenied, Unauthenticated
from ._identity import Identity
from ._keys import FLEET, tenant_key

__all__ = [
    "DEFAULT_TOKEN_TTL_SECONDS",
    "MAX_TOKEN_TTL_SECONDS",
    "MIN_TOKEN_TTL_SECONDS",
    "TOKEN_TOMBSTONE_SECONDS",
    "VehicleSigner",
    "consume_token",
    "issue_token",
    "token_key",
]

DEFAULT_TOKEN_TTL_SECONDS = 3600
MIN_TOKEN_TTL_SECONDS = 60
#: A week: long enough to ship a truck to a depot with its token, short enough that a leaked one dies.
MAX_TOKEN_TTL_SECONDS = 7 * 86400
#: How long a used or expired token's record stays, past its expiry, to name the error precisely.
TOKEN_TOMBSTONE_SECONDS = 7 * 86400

_TOKEN_PREFIX = "hmenrol_"  # noqa: S105 (a recognisable prefix, not a secret)
#: 32 random bytes, base64url without padding: 43 characters.
_TOKEN = re.compile(rf"^{_TOKEN_PREFIX}[A-Za-z0-9_-]{{43}}$")

# KEYS[1] the token's record; ARGV: vehicle id, now (ms). Returns {outcome, detail}.
_CONSUME_LUA = """
local vehicle = redis.call('HGET', KEYS[1], 'vehicle')
if not vehicle then return {'UNKNOWN', ''} end
if vehicle ~= ARGV[1] then return {'WRONG_VEHICLE', ''} end
local used = redis.call('HGET', KEYS[1], 'used_ms')
if used then return {'USED', used} end
local expires = redis.call('HGET', KEYS[1], 'expires_ms')
if tonumber(ARGV[2]) >= tonumber(expires) then return {'EXPIRED', expires} end
redis.call('HSET', KEYS[1], 'used_ms', ARGV[2])
return {'OK', ''}
"""


def token_key(token: str) -> str:
    """The store key of a token's record: its SHA-256 only (fleet-wide data, tag ``{fleet}``)."""
    return tenant_key("enrol", FLEET, hashlib.sha256(token.encode()).hexdigest())


def _check_ttl(ttl_seconds: int) -> None:
    if not MIN_TOKEN_TTL_SECONDS <= ttl_seconds <= MAX_TOKEN_TTL_SECONDS:
        raise ConfigError(f"an enrolment token lives {MIN_TOKEN_TTL_SECONDS}-{MAX_TOKEN_TTL_SECONDS} seconds, "
                          f"not {ttl_seconds}", field="ttl_seconds")


def issue_token(client: redis.Redis, vehicle_id: str, *, ttl_seconds: int = DEFAULT_TOKEN_TTL_SECONDS,
                issued_by: str = "operator") -> tuple[str, int]:
    """A new one-time token for ``vehicle_id`` (validated as a SPIFFE name); returns (token, expiry in Unix ms).

    The token is shown once, to whoever runs this; the store keeps its hash, the vehicle, the expiry and who issued
    it, until :data:`TOKEN_TOMBSTONE_SECONDS` after the expiry.
    """
    pki.identity_for("vehicle", vehicle_id)  # IdentityError: a name no certificate could carry
    _check_ttl(ttl_seconds)
    token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
    now_ms = int(time.time() * 1000)
    expires_ms = now_ms + ttl_seconds * 1000
    key = token_key(token)
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, mapping={"vehicle": vehicle_id, "issued_ms": now_ms, "expires_ms": expires_ms,
                            "issued_by": issued_by})
    pipe.pexpireat(key, expires_ms + TOKEN_TOMBSTONE_SECONDS * 1000)
    pipe.execute()
    return token, expires_ms


def _when(ms: str) -> str:
    return _dt.datetime.fromtimestamp(int(ms) / 1000, _dt.UTC).isoformat(timespec="seconds")


async def consume_token(client: redis.asyncio.Redis, token: str, vehicle_id: str) -> None:
    """Use ``token`` for ``vehicle_id``, once: returns when it was valid (and is now spent), else raises with a reason
    the truck can act on: ``ENROLMENT_TOKEN_MALFORMED`` (400), ``ENROLMENT_TOKEN_UNKNOWN``, ``_USED`` or ``_EXPIRED``
    (401), ``ENROLMENT_TOKEN_WRONG_VEHICLE`` (403; the token is not spent, it still serves its own truck)."""
    if not _TOKEN.fullmatch(token):
        raise InvalidArgument(f"an enrolment token is '{_TOKEN_PREFIX}' and 43 base64url characters, as "
                              "'haulmesh pki enrol-token' prints it", reason="ENROLMENT_TOKEN_MALFORMED")
    outcome, detail = await client.eval(_CONSUME_LUA, 1, token_key(token), vehicle_id, int(time.time() * 1000))
    outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
    detail = detail.decode() if isinstance(detail, bytes) else detail
    if outcome == "OK":
        return
    if outcome == "WRONG_VEHICLE":
        raise PermissionDenied(f"this enrolment token was issued for another vehicle, not {vehicle_id}",
                               reason="ENROLMENT_TOKEN_WRONG_VEHICLE")
    if outcome == "USED":
        raise Unauthenticated(f"this enrolment token was already used (at {_when(detail)}); ask the operator for a "
                              "new one", reason="ENROLMENT_TOKEN_USED")
    if outcome == "EXPIRED":
        raise Unauthenticated(f"this enrolment token expired at {_when(detail)}; ask the operator for a new one",
                              reason="ENROLMENT_TOKEN_EXPIRED")
    raise Unauthenticated("unknown enrolment token (never issued, mistyped, or expired more than "
                          f"{TOKEN_TOMBSTONE_SECONDS // 86400} days ago)", reason="ENROLMENT_TOKEN_UNKNOWN")


@dataclass(frozen=True)
class VehicleSigner:
    """The CA key that signs vehicle certificates, and the lifetime it gives them. Holds nothing else: it can only
    ever issue a vehicle certificate for the identity the caller proved (a consumed token, or a current vehicle
    certificate)."""

    ca: pki.CertificateAuthority
    valid_seconds: int

    @classmethod
    def from_files(cls, ca_cert_file: Path, ca_key_file: Path, *, valid_seconds: int) -> VehicleSigner:
        """Load the CA certificate and key (PEM); :class:`ConfigError` naming the file if either is unusable."""
        try:
            cert = x509.load_pem_x509_certificate(ca_cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the enrolment CA certificate {ca_cert_file}: {exc}",
                              field="ca_cert_file") from None
        try:
            key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the enrolment CA key {ca_key_file}: {exc}", field="ca_key_file") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
            raise ConfigError(f"{ca_key_file} is not the EC key of {ca_cert_file}", field="ca_key_file")
        return cls(pki.CertificateAuthority(cert, key), valid_seconds)

    @property
    def ca_pem(self) -> bytes:
        return self.ca.certificate_pem

    def sign(self, csr_pem: bytes, vehicle: Identity, *, revoked_until: float | None = None) -> x509.Certificate:
        """A certificate for ``vehicle`` from its CSR; :class:`InvalidArgument` for a CSR it may not sign.
        ``revoked_until``: the cut-off of the vehicle's revocation, if any (the certificate is dated after it)."""
        if vehicle.kind != "vehicle":
            raise PermissionDenied(f"{vehicle} is not a vehicle", reason="VEHICLE_CERTIFICATE_REQUIRED")
        return pki.sign_vehicle_csr(self.ca, csr_pem, vehicle.name, valid_seconds=self.valid_seconds,
                                    revoked_until=revoked_until)
