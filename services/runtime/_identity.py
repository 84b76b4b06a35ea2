"""Workload identity: the single SPIFFE URI SAN of a peer's certificate."""

from __future__ import annotations

import contextvars
import functools
import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from ._errors import IdentityError

__all__ = [
    "TRUST_DOMAIN",
    "VEHICLE_CERTIFICATE_METADATA_KEY",
    "Identity",
    "caller",
    "certificate_key_id",
    "identity_from_pem",
    "signing_key_id",
    "verify_relayed_certificate",
]

TRUST_DOMAIN = "haulmesh.local"

#: The kinds of workload the mesh knows. Operators are people and tools (``haulmesh status``).
KINDS = frozenset({"service", "vehicle", "operator"})

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Identity:
    """A workload identity such as ``spiffe://haulmesh.local/vehicle/AU-TRK-1001``."""

    kind: str
    name: str

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/{self.kind}/{self.name}"

    def __str__(self) -> str:
        return self.spiffe_id

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """Parse a SPIFFE ID of this trust domain; anything else raises :class:`IdentityError`."""
        prefix = f"spiffe://{TRUST_DOMAIN}/"
        if not uri.startswith(prefix):
            raise IdentityError(f"identity {uri!r} is not in trust domain {TRUST_DOMAIN}")
        parts = uri[len(prefix):].split("/")
        if len(parts) != 2 or parts[0] not in KINDS or not _NAME.fullmatch(parts[1]):
            raise IdentityError(
                f"identity {uri!r} must be spiffe://{TRUST_DOMAIN}/<{'|'.join(sorted(KINDS))}>/<name>, "
                "name 1-63 characters of letters, digits, '.', '_' or '-'"
            )
        return cls(parts[0], parts[1])


@functools.lru_cache(maxsize=4096)
def identity_from_pem(pem: bytes) -> Identity:
    """The identity carried by a certificate: exactly one URI SAN, a SPIFFE ID of our trust domain.

    Cached on the certificate bytes: a truck's stream and a service's calls present the same certificate
    over and over, and parsing X.509 on every call would cost more than the call.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise IdentityError("peer certificate cannot be parsed") from exc
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise IdentityError("peer certificate has no subject alternative names") from exc
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise IdentityError(f"peer certificate must carry exactly one URI SAN, it carries {len(uris)}")
    return Identity.parse(uris[0])


#: gRPC metadata entry in which the gateway relays the client certificate (DER; ``-bin``, so gRPC base64s it on
#: the wire) of the truck it calls on behalf of. Only the service that checks it against its CA trusts it.
VEHICLE_CERTIFICATE_METADATA_KEY = "haulmesh-vehicle-certificate-bin"

# Our certificates mark the SAN critical next to a non-empty subject, which the CA/Browser Forum profile the
# verifier defaults to forbids; every other web PKI check (validity, key usage, basic constraints) stays.
_EE_POLICY = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.SubjectAlternativeName,
                                                                  Criticality.AGNOSTIC, None)


def verify_relayed_certificate(certificate: bytes, ca_pem: bytes) -> tuple[Identity, bytes]:
    """The identity and PEM of a certificate a trusted peer relayed (not presented in our own handshake).

    The TLS stack never saw it, so this does what the handshake would: the certificate (PEM or DER) must be
    issued by a CA of ``ca_pem``, valid now, usable for client authentication, and carry exactly one SPIFFE
    URI SAN. Raises :class:`IdentityError` otherwise.
    """
    try:
        cert = (x509.load_pem_x509_certificate(certificate) if certificate.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(certificate))
        anchors = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise IdentityError("relayed certificate cannot be parsed") from exc
    verifier = (PolicyBuilder().store(Store(anchors))
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_EE_POLICY)
                .build_client_verifier())
    try:
        verifier.verify(cert, [])
    except VerificationError as exc:
        raise IdentityError(f"relayed certificate is not valid for this mesh: {exc}") from None
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return identity_from_pem(pem), pem


_CALLER: contextvars.ContextVar[Identity] = contextvars.ContextVar("haulmesh_caller")


def caller() -> Identity:
    """The authenticated identity of the RPC being handled (set before the handler runs)."""
    return _CALLER.get()


def signing_key_id(spki_der: bytes) -> str:
    """The id of a signing key (SignedFrame.key_id, ProofOfDelivery.key_id): lowercase hex SHA-256 of its
    DER SubjectPublicKeyInfo, as frame.proto defines it. The edge client computes the same on the truck."""
    return hashlib.sha256(spki_der).hexdigest()


def certificate_key_id(certificate_pem: bytes) -> str:
    """:func:`signing_key_id` of a certificate's public key."""
    key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    return signing_key_id(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo))
