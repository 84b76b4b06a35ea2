"""Frame signing behind an interface: a key file now, the truck's TPM later.

A frame's signature is ECDSA P-256 with SHA-256 over the serialized FramePayload, DER encoded; its
``key_id`` is the lowercase hex SHA-256 of the DER SubjectPublicKeyInfo of the vehicle certificate whose
key signs (haulmesh/telemetry/v1/frame.proto).

A hardware signer (TPM 2.0 through tpm2-pytss, or PKCS#11) implements the same two members: ``key_id``
computed from the certificate as here, and ``sign`` delegated to the device, which returns a DER
signature for a SHA-256 digest. The private key then never exists in memory; nothing else changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["KeyFileSigner", "Signer", "key_id_of"]


@runtime_checkable
class Signer(Protocol):
    """Signs frame payloads with the vehicle's key."""

    @property
    def key_id(self) -> str:
        """Lowercase hex SHA-256 of the signing certificate's DER SubjectPublicKeyInfo."""
        ...

    def sign(self, payload: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 signature over ``payload``, ASN.1 DER encoded."""
        ...


def key_id_of(certificate: x509.Certificate) -> str:
    """The key id of a certificate: SHA-256 of its DER SubjectPublicKeyInfo, lowercase hex."""
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


class KeyFileSigner:
    """Signs with the private key of the vehicle certificate, read from PEM files.

    Refuses a key that is not P-256 or that does not belong to the certificate: a frame signed with it
    would be rejected by the server (BAD_SIGNATURE) after being spooled for nothing.
    """

    def __init__(self, key_pem: bytes, certificate_pem: bytes) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("the vehicle key must be an ECDSA P-256 key")
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        if certificate.public_key() != key.public_key():
            raise ValueError("the vehicle key does not match its certificate")
        self._key = key
        self._key_id = key_id_of(certificate)

    @classmethod
    def from_files(cls, key_path: str | Path, certificate_path: str | Path) -> KeyFileSigner:
        """Reads the key and certificate PEM files (e.g. ``vehicle-AU-TRK-1001-key.pem``)."""
        return cls(Path(key_path).read_bytes(), Path(certificate_path).read_bytes())

    @property
    def key_id(self) -> str:
        """See :class:`Signer`."""
        return self._key_id

    def sign(self, payload: bytes) -> bytes:
        """See :class:`Signer`."""
        return self._key.sign(payload, ec.ECDSA(hashes.SHA256()))
