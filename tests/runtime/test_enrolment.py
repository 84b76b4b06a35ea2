"""Enrolment tokens (real Valkey) and the vehicle CSR signer (issue 12, "Truck enrolment"): every bad input gets
its own clear error; a token is used once, even by trucks racing with it."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
from pathlib import Path

import pytest
import redis.asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_client.certs import vehicle_csr
from services.runtime import ConfigError, HaulmeshError, IdentityError, connect_sync, identity_from_pem, pki
from services.runtime.cli import main as cli
from services.runtime.enrolment import VehicleSigner, consume_token, issue_token, token_key

from ..conftest import make_pki


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> pki.CertificateAuthority:
    return make_pki(tmp_path_factory.mktemp("ca")).ca


def _key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def _csr(key, sans: list[x509.GeneralName]) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _uri(vehicle: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(f"spiffe://haulmesh.local/vehicle/{vehicle}")


def test_a_good_csr_becomes_a_short_lived_vehicle_certificate(ca: pki.CertificateAuthority) -> None:
    key = _key()
    cert = pki.sign_vehicle_csr(ca, vehicle_csr(key, "AU-TRK-7").encode(), "AU-TRK-7", valid_seconds=86400)
    assert cert.public_key() == key.public_key()
    assert identity_from_pem(cert.public_bytes(serialization.Encoding.PEM)).spiffe_id == \
        "spiffe://haulmesh.local/vehicle/AU-TRK-7"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(hours=24) < lifetime <= dt.timedelta(hours=24, minutes=5)  # 5 min backdated for skew
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.issuer == ca.certificate.subject
    # A certificate of seconds is backdated by a tenth of its life, not 5 minutes.
    short = pki.sign_vehicle_csr(ca, vehicle_csr(key, "AU-TRK-7").encode(), "AU-TRK-7", valid_seconds=6)
    assert short.not_valid_after_utc - short.not_valid_before_utc <= dt.timedelta(seconds=8)  # whole seconds


@pytest.mark.parametrize(("make", "reason", "words"), [
    (lambda: _csr(_key(), [_uri("AU-TRK-8")]), "CSR_IDENTITY_MISMATCH", "it names spiffe://haulmesh.local/vehicle/AU-TRK-8"),
    (lambda: _csr(_key(), [_uri("AU-TRK-7"), _uri("AU-TRK-8")]), "CSR_IDENTITY_MISMATCH", "exactly one identity"),
    (lambda: _csr(_key(), [_uri("AU-TRK-7"), x509.DNSName("evil.example")]), "CSR_IDENTITY_MISMATCH", "evil"),
    (lambda: _csr(_key(), [x509.UniformResourceIdentifier("spiffe://haulmesh.local/service/gateway")]),
     "CSR_IDENTITY_MISMATCH", "service/gateway"),
    (lambda: _csr(_key(), []), "CSR_IDENTITY_MISMATCH", "no subjectAltName"),
    (lambda: _csr(_key(ec.SECP384R1()), [_uri("AU-TRK-7")]), "BAD_CSR_KEY", "secp384r1"),
    (lambda: _csr(rsa.generate_private_key(65537, 2048), [_uri("AU-TRK-7")]), "BAD_CSR_KEY", "P-256"),
    (lambda: b"not a csr", "BAD_CSR", "not a PEM certificate signing request"),
    (lambda: b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * 9000, "BAD_CSR", "at most 8192"),
], ids=["other-vehicle", "two-identities", "dns-name", "a-service", "no-san", "p384", "rsa", "garbage", "huge"])
def test_every_bad_csr_is_refused_with_its_reason(ca: pki.CertificateAuthority, make, reason: str, words: str) -> None:
    with pytest.raises(HaulmeshError) as caught:
        pki.sign_vehicle_csr(ca, make(), "AU-TRK-7", valid_seconds=60)
    assert caught.value.code_name == "INVALID_ARGUMENT"
    assert caught.value.reason == reason
    assert words in caught.value.message


def test_a_csr_whose_signature_does_not_verify_is_refused(ca: pki.CertificateAuthority) -> None:
    pem = vehicle_csr(_key(), "AU-TRK-7").encode()
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    tampered = der[:-3] + bytes([der[-3] ^ 0x01]) + der[-2:]  # a bit of the signature flipped
    body = base64.encodebytes(tampered).decode()
    bad = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n".encode()
    with pytest.raises(HaulmeshError) as caught:
        pki.sign_vehicle_csr(ca, bad, "AU-TRK-7", valid_seconds=60)
    assert caught.value.reason == "BAD_CSR"


def test_the_signer_issues_vehicle_certificates_only(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    pki.save_ca(tmp_path, ca)
    signer = VehicleSigner.from_files(tmp_path / "ca.pem", tmp_path / "ca-key.pem", valid_seconds=60)
    with pytest.raises(HaulmeshError, match="not a vehicle"):
        signer.sign(vehicle_csr(_key(), "gateway").encode(), pki.identity_for("service", "gateway"))
    (tmp_path / "other-key.pem").write_bytes(pki.issue(ca, pki.identity_for("service", "x")).private_key_pem)
    with pytest.raises(ConfigError, match="is not the EC key of"):
        VehicleSigner.from_files(tmp_path / "ca.pem", tmp_path / "other-key.pem", valid_seconds=60)
    with pytest.raises(ConfigError, match="cannot read the enrolment CA key"):
        VehicleSigner.from_files(tmp_path / "ca.pem", tmp_path / "missing.pem", valid_seconds=60)


# --- tokens ----------------------------------------------------------------------------------------------------


@pytest.fixture
def sync_store(store_url: str):
    client = connect_sync(store_url)
    yield client
    client.close()


async def _reason_of(store: redis.asyncio.Redis, token: str, vehicle: str) -> str:
    try:
        await consume_token(store, token, vehicle)
    except HaulmeshError as exc:
        return f"{exc.code_name} {exc.reason}"
    return "OK"


async def test_a_token_is_used_once_by_its_own_vehicle(sync_store, store_client: redis.asyncio.Redis) -> None:
    token, expires_ms = issue_token(sync_store, "AU-TRK-T1", ttl_seconds=600)
    assert token.startswith("hmenrol_")
    record = sync_store.hgetall(token_key(token))
    assert record[b"vehicle"] == b"AU-TRK-T1" and int(record[b"expires_ms"]) == expires_ms
    # Only the hash is stored: no key or value holds the token.
    assert hashlib.sha256(token.encode()).hexdigest() in token_key(token)
    assert token.encode() not in b"".join([token_key(token).encode(), *record.values()])
    assert await _reason_of(store_client, token, "AU-TRK-T2") == "PERMISSION_DENIED ENROLMENT_TOKEN_WRONG_VEHICLE"
    assert await _reason_of(store_client, token, "AU-TRK-T1") == "OK"  # the wrong vehicle did not spend it
    assert await _reason_of(store_client, token, "AU-TRK-T1") == "UNAUTHENTICATED ENROLMENT_TOKEN_USED"


async def test_expired_unknown_and_malformed_tokens_say_so(sync_store, store_client: redis.asyncio.Redis) -> None:
    token, _ = issue_token(sync_store, "AU-TRK-T3", ttl_seconds=60)
    sync_store.hset(token_key(token), "expires_ms", 1)  # its hour has passed (the store's record, not a mock)
    assert await _reason_of(store_client, token, "AU-TRK-T3") == "UNAUTHENTICATED ENROLMENT_TOKEN_EXPIRED"
    assert await _reason_of(store_client, "hmenrol_" + "A" * 43, "AU-TRK-T3") == \
        "UNAUTHENTICATED ENROLMENT_TOKEN_UNKNOWN"
    assert await _reason_of(store_client, "letmein", "AU-TRK-T3") == "INVALID_ARGUMENT ENROLMENT_TOKEN_MALFORMED"


async def test_trucks_racing_with_one_token_get_one_certificate(sync_store,
                                                               store_client: redis.asyncio.Redis) -> None:
    token, _ = issue_token(sync_store, "AU-TRK-T4", ttl_seconds=600)
    outcomes = await asyncio.gather(*(_reason_of(store_client, token, "AU-TRK-T4") for _ in range(25)))
    assert outcomes.count("OK") == 1
    assert outcomes.count("UNAUTHENTICATED ENROLMENT_TOKEN_USED") == 24


def test_token_lifetime_and_vehicle_are_checked(sync_store) -> None:
    with pytest.raises(ConfigError, match="60-604800 seconds, not 59"):
        issue_token(sync_store, "AU-TRK-T5", ttl_seconds=59)
    with pytest.raises(IdentityError):
        issue_token(sync_store, "no/slashes", ttl_seconds=600)


def test_the_cli_prints_the_token_once_and_stores_its_hash(store_url: str, sync_store, monkeypatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", store_url)
    assert cli(["pki", "enrol-token", "vehicle", "AU-TRK-T6", "--ttl-seconds", "120"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert sync_store.hget(token_key(token), "vehicle") == b"AU-TRK-T6"
    assert "one-time enrolment token for vehicle AU-TRK-T6" in err and token not in err
    assert cli(["pki", "enrol-token", "vehicle", "AU-TRK-T6", "--ttl-seconds", "9999999"]) == 2
    assert "60-604800 seconds" in capsys.readouterr().err
