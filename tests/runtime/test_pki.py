"""The dev PKI command: CA, P-256 leaf certificates with one SPIFFE ID, expiry, private keys 0600."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from services.runtime.cli import main


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_issue_and_expiry(tmp_path: Path) -> None:
    assert main(["--cert-dir", str(tmp_path), "pki", "init"]) == 0
    assert main(["--cert-dir", str(tmp_path), "pki", "issue", "vehicle", "AU-TRK-2002", "--days", "2"]) == 0
    cert = _cert(tmp_path / "vehicle-AU-TRK-2002.pem")
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://haulmesh.local/vehicle/AU-TRK-2002"]
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=1.9) < lifetime < dt.timedelta(days=2.1)
    ca = _cert(tmp_path / "ca.pem")
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                           ec.ECDSA(cert.signature_hash_algorithm))
    for key in tmp_path.glob("*-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_init_refuses_to_overwrite_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cert-dir", str(tmp_path), "pki", "init"]) == 0
    before = (tmp_path / "ca.pem").read_bytes()
    assert main(["--cert-dir", str(tmp_path), "pki", "init"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "ca.pem").read_bytes() == before


def test_issue_without_ca_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cert-dir", str(tmp_path), "pki", "issue", "service", "tender"]) == 2
    assert "haulmesh pki init" in capsys.readouterr().err


def test_issue_rejects_a_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--cert-dir", str(tmp_path), "pki", "init"])
    assert main(["--cert-dir", str(tmp_path), "pki", "issue", "vehicle", "bad/name"]) == 2
    assert "must be spiffe://" in capsys.readouterr().err


def test_dev_bootstrap_is_idempotent(tmp_path: Path) -> None:
    """A second dev-bootstrap keeps every certificate and the audit checkpoint key pair (not regenerated: a new
    key would leave the checkpoints already written unverifiable with the key the auditor holds)."""
    audit_keys = ("audit-signing-key.pem", "audit-signing.pub.pem")

    def certificates() -> dict[str, int]:
        return {p.name: _cert(p).serial_number for p in tmp_path.glob("*.pem")
                if not p.name.endswith("-key.pem") and p.name not in audit_keys}

    assert main(["--cert-dir", str(tmp_path), "pki", "dev-bootstrap"]) == 0
    serials = certificates()
    assert {"ca.pem", "tender.pem", "gateway.pem", "operator-cli.pem", "vehicle-AU-TRK-1001.pem"} <= set(serials)
    audit = {name: (tmp_path / name).read_bytes() for name in audit_keys}
    assert main(["--cert-dir", str(tmp_path), "pki", "dev-bootstrap"]) == 0
    assert certificates() == serials
    assert {name: (tmp_path / name).read_bytes() for name in audit_keys} == audit


def test_the_evidence_key_is_signing_only_and_bootstrapped(tmp_path: Path) -> None:
    """dev-bootstrap issues billing's evidence key: digitalSignature alone, document signing, no TLS usage."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from services.runtime import pki

    assert main(["--cert-dir", str(tmp_path), "pki", "dev-bootstrap"]) == 0
    cert = _cert(tmp_path / "evidence-billing.pem")
    assert (tmp_path / "evidence-billing-key.pem").stat().st_mode & 0o077 == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not (usage.key_agreement or usage.key_cert_sign or usage.key_encipherment)
    ekus = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ekus == [pki.DOCUMENT_SIGNING]
    assert ExtendedKeyUsageOID.CLIENT_AUTH not in ekus and ExtendedKeyUsageOID.SERVER_AUTH not in ekus
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://haulmesh.local/service/billing"]
    # `pki issue evidence NAME` replaces it.
    assert main(["--cert-dir", str(tmp_path), "pki", "issue", "evidence", "billing", "--days", "30"]) == 0
    assert _cert(tmp_path / "evidence-billing.pem").serial_number != cert.serial_number
