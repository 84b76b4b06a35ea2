"""Development PKI: a CA, service certificates and vehicle certificates.

Every certificate carries exactly one SPIFFE URI SAN, which is the identity the mesh authorizes on:
``spiffe://haulmesh.local/service/<name>``, ``spiffe://haulmesh.local/vehicle/<id>`` or
``spiffe://haulmesh.local/operator/<name>``; an operator's also carries its role and carriers (an
:class:`OperatorGrant`, docs/security.md "Operator roles"). Keys are ECDSA
P-256: it is what TPM 2.0 modules offer on the truck, and gRPC's TLS stack (BoringSSL) refuses Ed25519
client certificates. Private keys are written 0600 and never leave the folder they are issued into.

Production deployments take certificates from cert-manager or their own CA; this module exists so that a
fresh clone has a working mesh and the tests can mint hostile certificates.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import math
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._errors import ConfigError, InvalidArgument
from ._identity import TRUST_DOMAIN, Identity
from ._roles import BILLING_ADMIN, FLEET_OPERATOR, PLATFORM_ADMIN, ROLES, OperatorGrant

__all__ = [
    "BILLING_ADMIN",
    "FLEET_OPERATOR",
    "PLATFORM_ADMIN",
    "ROLES",
    "CertificateAuthority",
    "IssuedCertificate",
    "OperatorGrant",
    "check_vehicle_csr",
    "create_ca",
    "identity_for",
    "issue",
    "issue_signing",
    "load_ca",
    "save_ca",
    "sign_vehicle_csr",
    "write_pem_files",
]

_CA_CERT = "ca.pem"
_CA_KEY = "ca-key.pem"


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with its signing key."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf certificate, its key, and the chain a peer needs to verify it."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def private_key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def create_ca(common_name: str = "Haulmesh Dev CA", *, valid_days: int = 3650) -> CertificateAuthority:
    """Create a self-signed CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Haulmesh"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


def issue(
    ca: CertificateAuthority,
    identities: list[Identity] | Identity,
    *,
    valid_days: float = 90,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    grant: OperatorGrant | None = None,
) -> IssuedCertificate:
    """Issue a leaf certificate for client and server use.

    ``identities`` normally holds exactly one identity; passing several exists only so the tests can prove
    that a certificate with two URI SANs is refused by the mesh. ``grant`` is an operator's role and carriers
    (operators only; an operator certificate without one may read health and nothing else).
    """
    ids = [identities] if isinstance(identities, Identity) else list(identities)
    if valid_days <= 0:
        raise ConfigError("certificate lifetime must be positive", field="valid_days")
    if grant is not None and any(i.kind != "operator" for i in ids):
        raise ConfigError("a role and carriers are for operator certificates only", field="role")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(i.spiffe_id) for i in ids]
    sans += [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    common_name = ids[0].name if ids else "anonymous"
    builder = (
        _leaf(ca, key, common_name, valid_days, key_agreement=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=bool(ids) and not dns_names)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
                       critical=False)
    )
    if grant is not None:
        # Not critical: TLS stacks refuse a certificate with a critical extension they do not know (BoringSSL
        # does). Only the mesh's authorization reads it, and a certificate without it has no role (fail closed).
        builder = builder.add_extension(grant.extension(), critical=False)
    return IssuedCertificate(builder.sign(ca.private_key, hashes.SHA256()), key)


#: id-kp-documentSigning (RFC 9336): the evidence key's only extended usage (no TLS: it cannot open a channel).
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")


def issue_signing(ca: CertificateAuthority, identity: Identity, *, valid_days: float = 365) -> IssuedCertificate:
    """Issue a signing-only certificate (the platform's evidence key): keyUsage digitalSignature alone and the
    document-signing extended usage, so no TLS stack accepts it for a client or a server, and its SPIFFE ID
    names the process that seals. Evidence packs carry it and verifiers check it chains to the CA."""
    if valid_days <= 0:
        raise ConfigError("certificate lifetime must be positive", field="valid_days")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _leaf(ca, key, f"evidence seal: {identity.name}", valid_days, key_agreement=False)
        .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING]), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_id)]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
                       critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return IssuedCertificate(cert, key)


#: Largest CSR (PEM) :func:`sign_vehicle_csr` reads: a P-256 CSR is about 500 bytes; this leaves room for PEM
#: framing and a few attributes, and refuses anything built to make the parser work.
MAX_CSR_BYTES = 8192
#: Clock-skew allowance of an issued certificate's notBefore: 5 minutes, or a tenth of a short lifetime (so a
#: certificate of a few seconds, as AT-15 rotates, is not mostly in the past when it is issued).
_MAX_BACKDATE = _dt.timedelta(minutes=5)


def _bad_csr(message: str, reason: str = "BAD_CSR") -> InvalidArgument:
    return InvalidArgument(message, reason=reason)


def check_vehicle_csr(csr_pem: bytes, vehicle_id: str) -> x509.CertificateSigningRequest:
    """The parsed CSR if it may be signed for ``vehicle_id``, else :class:`InvalidArgument` naming what is wrong
    (reason ``BAD_CSR`` or ``CSR_IDENTITY_MISMATCH``): PEM of at most :data:`MAX_CSR_BYTES`, a valid self-signature
    (the sender holds the key), an ECDSA P-256 key (what the mesh's TLS and the frame signatures use), and exactly
    one SAN, the URI ``spiffe://haulmesh.local/vehicle/<vehicle_id>`` (no DNS or IP names, no other identity)."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise _bad_csr(f"the CSR is {len(csr_pem)} bytes; at most {MAX_CSR_BYTES} are accepted")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise _bad_csr("the CSR is not a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----)") \
            from None
    if not csr.is_signature_valid:
        raise _bad_csr("the CSR's signature does not verify with its own public key")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _bad_csr(f"the CSR's key is {type(key).__name__.removeprefix('_')}"
                       f"{' ' + key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else ''}; "
                       "vehicle keys must be ECDSA P-256 (secp256r1)", reason="BAD_CSR_KEY")
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise _bad_csr("the CSR has no subjectAltName; it must carry exactly one URI SAN, "
                       f"spiffe://{TRUST_DOMAIN}/vehicle/{vehicle_id}", reason="CSR_IDENTITY_MISMATCH") from None
    except ValueError as exc:  # a duplicated or malformed extension
        raise _bad_csr(f"the CSR's extensions cannot be read: {exc}") from None
    names = list(sans)
    wanted = identity_for("vehicle", vehicle_id).spiffe_id
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier) or names[0].value != wanted:
        shown = ", ".join(str(getattr(n, "value", n)) for n in names) or "none"
        raise _bad_csr(f"the CSR must name exactly one identity, {wanted}; it names {shown}",
                       reason="CSR_IDENTITY_MISMATCH")
    return csr


def sign_vehicle_csr(ca: CertificateAuthority, csr_pem: bytes, vehicle_id: str, *,
                     valid_seconds: float, revoked_until: float | None = None) -> x509.Certificate:
    """Issue a short-lived client/server certificate for the truck ``vehicle_id`` from its CSR (checked by
    :func:`check_vehicle_csr`). Only the key and the identity come from the CSR: every other field (subject,
    usages, lifetime, serial) is the CA's own, so a CSR cannot ask for more than a vehicle certificate.

    ``revoked_until``: the cut-off of the vehicle's revocation (Unix seconds), if it was revoked: the
    certificate's notBefore is put after it, not backdated before it, or the deny-list would refuse it."""
    if valid_seconds <= 0:
        raise ConfigError("certificate lifetime must be positive", field="valid_seconds")
    csr = check_vehicle_csr(csr_pem, vehicle_id)
    identity = identity_for("vehicle", vehicle_id)
    lifetime = _dt.timedelta(seconds=valid_seconds)
    return (
        _leaf(ca, csr.public_key(), identity.name, lifetime, key_agreement=True,  # type: ignore[arg-type]
              backdate=min(_MAX_BACKDATE, lifetime / 10), not_before_floor=revoked_until)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_id)]),
                       critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
                       critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )


def _leaf(ca: CertificateAuthority, key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, common_name: str,
          valid: float | _dt.timedelta, *, key_agreement: bool,
          backdate: _dt.timedelta = _MAX_BACKDATE,
          not_before_floor: float | None = None) -> x509.CertificateBuilder:
    """What every leaf the CA issues shares: subject, issuer, validity (``backdate`` back for clock skew, but
    never to or before ``not_before_floor``, Unix seconds; ``valid`` in days or a timedelta), not a CA, a critical
    keyUsage of digitalSignature (and keyAgreement for TLS keys)."""
    now = _now()
    not_before = now - backdate
    if not_before_floor is not None:  # notBefore has whole seconds: the next whole second after the floor
        not_before = max(not_before, _dt.datetime.fromtimestamp(math.floor(not_before_floor) + 1, _dt.UTC))
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    lifetime = valid if isinstance(valid, _dt.timedelta) else _dt.timedelta(days=valid)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Haulmesh"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=key_agreement, encipher_only=False, decipher_only=False),
            critical=True,
        )
    )


def _write_private(path: Path, data: bytes) -> None:
    # Create with 0600 from the start: a key must never exist world-readable, not even for a moment.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_pem_files(directory: Path, stem: str, issued: IssuedCertificate, ca_pem: bytes) -> tuple[Path, Path]:
    """Write ``<stem>.pem`` (leaf) and ``<stem>-key.pem``, replacing any previous pair atomically.

    Returns (certificate path, key path). The key is written first so that a server reloading on the
    certificate's change never pairs a new certificate with the old key.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    _write_private(key_path, issued.private_key_pem)
    _write_public(cert_path, issued.certificate_pem)
    ca_path = directory / _CA_CERT
    if not ca_path.exists():
        _write_public(ca_path, ca_pem)
    return cert_path, key_path


def save_ca(directory: Path, ca: CertificateAuthority) -> None:
    """Write the CA certificate and key; refuses to overwrite an existing CA."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / _CA_KEY).exists():
        raise ConfigError(f"a CA already exists in {directory}; remove it first to start over", field="dir")
    _write_private(directory / _CA_KEY, ca.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    _write_public(directory / _CA_CERT, ca.certificate_pem)


def load_ca(directory: Path) -> CertificateAuthority:
    """Load the CA written by :func:`save_ca`."""
    try:
        cert = x509.load_pem_x509_certificate((directory / _CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / _CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"no CA in {directory}: run 'haulmesh pki init' first", field="dir") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"CA key in {directory} is not an EC key", field="dir")
    return CertificateAuthority(cert, key)


def identity_for(kind: str, name: str) -> Identity:
    """Build and validate the identity a certificate will carry."""
    return Identity.parse(f"spiffe://{TRUST_DOMAIN}/{kind}/{name}")
