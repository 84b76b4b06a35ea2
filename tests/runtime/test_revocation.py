"""The certificate deny-list (services/runtime/_revocation.py) and ``haulmesh pki revoke`` on a real Valkey; a revoked
client refused at its next call by a real server over real mTLS (docs/security.md, "Revocation")."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import grpc
import pytest
import redis.asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.runtime import (
    Credential,
    ResourceExhausted,
    RevocationList,
    Service,
    connect_async,
    connect_sync,
    credential_of,
    free_port,
    pki,
    revocation_cutoff,
    revoke_certificate,
    revoke_identity,
    revoked_certificates,
)
from services.runtime import _revocation as revocation
from services.runtime.cli import main
from services.tender.server import TENDER_POLICY as POLICY

from ..conftest import wait_for
from .conftest import tender_server_config
from .refusals import reason_of
from .test_security import CountingTenders

CARRIER = (("haulmesh-carrier", "carriers/carrier-1"),)


@pytest.fixture
async def client(store_client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """The session's store with no revocations (the list is one per store)."""
    await store_client.delete(*revocation.ALL_KEYS)
    return store_client


async def test_a_revocation_is_listed_once_until_its_certificate_expires(client: redis.asyncio.Redis) -> None:
    cache = RevocationList(client)
    assert await cache.refresh() and len(cache) == 0
    not_after = time.time() + 600
    assert await revoke_certificate(client, "0A:BC", not_after=not_after, identity="spiffe://haulmesh.local/vehicle/X",
                                    reason="stolen", revoked_by="cli:test")
    assert not await revoke_certificate(client, "0xabc", not_after=not_after, reason="again")  # the same serial
    [entry] = await revoked_certificates(client)
    assert (entry.serial, entry.reason, entry.identity, entry.not_after) == ("abc", "stolen",
                                                                             "spiffe://haulmesh.local/vehicle/X",
                                                                             not_after)
    assert await client.zscore(revocation.SERIALS_KEY, "abc") == not_after + revocation.EXPIRY_SLACK_SECONDS
    assert await cache.refresh() and "abc" in cache
    assert not await cache.refresh()  # the generation did not move: nothing re-read
    with pytest.raises(Exception) as refused:
        cache.check(Credential("abc", "spiffe://haulmesh.local/vehicle/Y", 0.0))
    assert refused.value.reason == "CERTIFICATE_REVOKED"
    cache.check(Credential("abd", "spiffe://haulmesh.local/vehicle/X", 0.0))


async def test_an_identity_revocation_refuses_every_certificate_dated_up_to_its_cutoff(
        client: redis.asyncio.Redis) -> None:
    """A stolen truck renews its own short-lived certificates: revoking the vehicle refuses every one dated up to
    the cut-off whatever its serial, and a certificate the gateway signs afterwards is dated after it."""
    ca = pki.create_ca()
    truck, other = pki.identity_for("vehicle", "AU-TRK-7"), pki.identity_for("vehicle", "AU-TRK-8")
    first, renewed = pki.issue(ca, truck, valid_days=1), pki.issue(ca, truck, valid_days=1)
    bystander = pki.issue(ca, other, valid_days=1)
    cache = RevocationList(client)
    await cache.refresh()
    until = time.time() + 86400
    cutoff = await revoke_identity(client, truck.spiffe_id, until=until, reason="stolen", revoked_by="cli:test")
    assert abs(cutoff - time.time()) < 5  # the store's clock
    assert await revocation_cutoff(client, truck.spiffe_id) == pytest.approx(cutoff, abs=1e-6)
    assert await revocation_cutoff(client, other.spiffe_id) is None
    assert await cache.refresh()
    for issued in (first, renewed):
        with pytest.raises(Exception) as refused:
            cache.check_pem(issued.certificate_pem)
        assert refused.value.reason == "CERTIFICATE_REVOKED"
    assert cache.check_pem(bystander.certificate_pem).identity == other.spiffe_id  # another vehicle: untouched
    # Re-enrolled at once: backdating for clock skew would put it before the cut-off; the floor puts it after.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(truck.spiffe_id)]),
                          critical=True).sign(key, hashes.SHA256()))
    csr_pem = csr.public_bytes(serialization.Encoding.PEM)
    backdated = pki.sign_vehicle_csr(ca, csr_pem, "AU-TRK-7", valid_seconds=3600)
    assert cache.is_revoked(credential_of(backdated.public_bytes(serialization.Encoding.PEM)))
    fresh = pki.sign_vehicle_csr(ca, csr_pem, "AU-TRK-7", valid_seconds=3600, revoked_until=cutoff)
    assert fresh.not_valid_before_utc.timestamp() > cutoff
    cache.check_pem(fresh.public_bytes(serialization.Encoding.PEM))
    [entry] = await revoked_certificates(client)
    assert (entry.serial, entry.identity, entry.reason) == ("", truck.spiffe_id, "stolen")
    assert entry.not_after == pytest.approx(until, abs=1e-3)
    # Revoking again moves the cut-off: what was issued in between is refused too.
    assert await revoke_identity(client, truck.spiffe_id, until=until) > cutoff
    assert await cache.refresh()
    assert cache.is_revoked(credential_of(fresh.public_bytes(serialization.Encoding.PEM)))


async def test_the_identity_list_is_bounded(client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(revocation, "MAX_REVOKED_SERIALS", 1)
    await revoke_identity(client, "spiffe://haulmesh.local/vehicle/A", until=time.time() + 600)
    with pytest.raises(ResourceExhausted):
        await revoke_identity(client, "spiffe://haulmesh.local/vehicle/B", until=time.time() + 600)
    await revoke_identity(client, "spiffe://haulmesh.local/vehicle/A", until=time.time() + 600)  # listed: moves


async def test_an_expired_entry_goes_at_the_next_revocation(client: redis.asyncio.Redis) -> None:
    gone = time.time() - revocation.EXPIRY_SLACK_SECONDS - 1
    assert await revoke_certificate(client, "1", not_after=gone)
    assert await revoke_certificate(client, "2", not_after=time.time() + 600)
    assert await client.zrange(revocation.SERIALS_KEY, 0, -1) == [b"2"]
    assert await client.hkeys(revocation.RECORDS_KEY) == [b"2"]


async def test_the_list_is_bounded(client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(revocation, "MAX_REVOKED_SERIALS", 2)
    for serial in ("1", "2"):
        assert await revoke_certificate(client, serial, not_after=time.time() + 600)
    with pytest.raises(ResourceExhausted) as full:
        await revoke_certificate(client, "3", not_after=time.time() + 600)
    assert full.value.reason == "REVOCATION_LIST_FULL"
    assert not await revoke_certificate(client, "2", not_after=time.time() + 600)  # listed already: no error


@pytest.mark.parametrize("serial", ["", "xyz", "0", "-5", "1" * 41])
async def test_a_malformed_serial_is_refused(client: redis.asyncio.Redis, serial: str) -> None:
    with pytest.raises(ValueError, match="serial"):
        await revoke_certificate(client, serial, not_after=time.time() + 600)


async def test_an_unreachable_store_keeps_the_last_list_in_force(client: redis.asyncio.Redis) -> None:
    assert await revoke_certificate(client, "beef", not_after=time.time() + 600)
    cache = RevocationList(client)
    await cache.refresh()
    dead = connect_async(f"redis://127.0.0.1:{free_port()}/0")
    cache._client = dead  # the same cache, its store gone: fail closed for what it holds
    try:
        with pytest.raises(redis.ConnectionError):
            await cache.refresh()
    finally:
        await dead.aclose()
    assert "beef" in cache and cache.loaded


# --- a real server ------------------------------------------------------------------------------------------------

@pytest.fixture
async def server(tmp_path: Path, store_url: str, client: redis.asyncio.Redis):
    p, config = tender_server_config(tmp_path, store_url)
    config = dataclasses.replace(config, revocation_refresh_seconds=0.1)
    service = Service(config, POLICY)
    servicer = CountingTenders()
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, servicer,
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    await service.start()
    yield service, servicer, p
    await service.stop()


async def test_a_revoked_certificate_is_refused_at_its_next_call(server, client: redis.asyncio.Redis) -> None:
    service, servicer, p = server
    revoked = pki.issue(p.ca, pki.identity_for("service", "gateway"), valid_days=1)
    other = pki.issue(p.ca, pki.identity_for("service", "gateway"), valid_days=1)  # same identity, another serial

    def creds(issued: pki.IssuedCertificate) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(p.ca.certificate_pem, issued.private_key_pem, issued.certificate_pem)

    async with grpc.aio.secure_channel(f"127.0.0.1:{service.bound_port}", creds(revoked)) as channel:
        stub = tender_service_pb2_grpc.TenderServiceStub(channel)
        await stub.ListTenders(tender_service_pb2.ListTendersRequest(), metadata=CARRIER, timeout=5)
        served = servicer.calls
        began = time.monotonic()
        await revoke_certificate(client, format(revoked.certificate.serial_number, "x"),
                                 not_after=revoked.certificate.not_valid_after_utc.timestamp())

        async def refused() -> grpc.aio.AioRpcError | None:
            try:  # the same channel: an open connection is no way around the list
                await stub.ListTenders(tender_service_pb2.ListTendersRequest(), metadata=CARRIER, timeout=5)
            except grpc.aio.AioRpcError as error:
                return error
            return None

        error = await wait_for(refused, timeout_seconds=5)
        took = time.monotonic() - began
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and reason_of(error) == "CERTIFICATE_REVOKED"
        served = servicer.calls  # calls before the list reached the server were served; none after it did
        for _ in range(5):
            assert await refused() is not None
    assert servicer.calls == served
    assert took < 2, f"revocation took {took:.2f} s at a 0.1 s refresh"
    async with grpc.aio.secure_channel(f"127.0.0.1:{service.bound_port}", creds(other)) as channel:
        await tender_service_pb2_grpc.TenderServiceStub(channel).ListTenders(
            tender_service_pb2.ListTendersRequest(), metadata=CARRIER, timeout=5)


# --- the command line ---------------------------------------------------------------------------------------------

@pytest.fixture
def cli_env(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A dev certificate folder and the test store for ``haulmesh``; returns the folder."""
    with connect_sync(store_url) as sync:
        sync.delete(*revocation.ALL_KEYS)
    certs = tmp_path / "certs"
    assert main(["--cert-dir", str(certs), "pki", "dev-bootstrap"]) == 0
    monkeypatch.setenv("REDIS_URL", store_url)
    monkeypatch.setenv("HAULMESH_AUDIT_CHECKPOINT_URL", str(tmp_path / "checkpoints"))
    monkeypatch.delenv("HAULMESH_AUDIT_SIGNING_KEY_FILE", raising=False)
    return certs


def test_pki_revoke_vehicle_revokes_every_certificate_of_it_and_audits_it(
        cli_env: Path, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = (cli_env / "vehicle-AU-TRK-1001.pem").read_bytes()
    ca = x509.load_pem_x509_certificate((cli_env / "ca.pem").read_bytes())
    assert main(["--cert-dir", str(cli_env), "pki", "revoke", "vehicle", "AU-TRK-1001", "--reason", "stolen"]) == 0
    out = capsys.readouterr().out
    assert "revoked spiffe://haulmesh.local/vehicle/AU-TRK-1001: every certificate dated up to" in out
    assert "haulmesh pki enrol-token vehicle AU-TRK-1001" in out
    assert main(["--cert-dir", str(cli_env), "pki", "revoked"]) == 0
    listing = capsys.readouterr().out
    assert "spiffe://haulmesh.local/vehicle/AU-TRK-1001" in listing and "stolen" in listing
    assert "0 revoked certificate(s) and 1 revoked identity in force" in listing
    with connect_sync(store_url) as sync:
        record = json.loads(sync.hget(revocation.IDENTITY_RECORDS_KEY, "spiffe://haulmesh.local/vehicle/AU-TRK-1001"))
        assert record["until"] == ca.not_valid_after_utc.timestamp()  # kept while a certificate of the CA verifies
        assert record["cutoff"] >= credential_of(pem).not_before
        entries = [fields for chain in sync.smembers("audit:chains") if b"pki-cli" in chain
                   for _, fields in sync.xrange(chain)]
    [audited] = [json.loads(e[b"record"]) for e in entries
                 if b"spiffe://haulmesh.local/vehicle/AU-TRK-1001" in e[b"record"]]
    assert audited["method"] == "haulmesh pki revoke" and audited["actor"].startswith("cli:")
    assert list((tmp_path / "checkpoints").rglob("*.final.json")), "the revocation's audit entry is not anchored"


def test_pki_revoke_serial_reads_a_certificate(cli_env: Path, store_url: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cert = x509.load_pem_x509_certificate((cli_env / "vehicle-AU-TRK-1001.pem").read_bytes())
    serial = format(cert.serial_number, "x")
    args = ["--cert-dir", str(cli_env), "pki", "revoke", "serial", "-", "--cert",
            str(cli_env / "vehicle-AU-TRK-1001.pem"), "--reason", "lost"]
    assert main(args) == 0
    assert f"revoked spiffe://haulmesh.local/vehicle/AU-TRK-1001 certificate serial {serial}" in \
        capsys.readouterr().out
    assert main(args) == 0
    assert "already revoked" in capsys.readouterr().out
    with connect_sync(store_url) as sync:
        assert json.loads(sync.hget(revocation.RECORDS_KEY, serial))["not_after"] == \
            cert.not_valid_after_utc.timestamp()


def test_pki_revoke_by_serial_is_bounded_by_the_ca(cli_env: Path, store_url: str) -> None:
    assert main(["--cert-dir", str(cli_env), "pki", "revoke", "serial", "4F:A1:00:02"]) == 0
    ca = x509.load_pem_x509_certificate((cli_env / "ca.pem").read_bytes())
    with connect_sync(store_url) as sync:
        assert json.loads(sync.hget(revocation.RECORDS_KEY, "4fa10002"))["not_after"] == \
            ca.not_valid_after_utc.timestamp()


@pytest.mark.parametrize(("args", "says"), [
    (["operator", "cli", "--cert", "{certs}/vehicle-AU-TRK-1001.pem"], "--cert and --identity are for a serial"),
    (["serial", "abc", "--cert", "{certs}/vehicle-AU-TRK-1001.pem"], "has serial"),
    (["serial", "-", "--cert", "{certs}/missing.pem"], "cannot read the certificate"),
    (["vehicle", "bad/id"], "must be spiffe://"),
    (["serial", "not-hex"], "hexadecimal"),
    (["serial", "abc", "--not-after", "tomorrow"], "ISO 8601"),
    (["vehicle", "AU-TRK-1001", "--not-after", "2001-01-01"], "is past"),
])
def test_pki_revoke_refuses_what_it_cannot_name(cli_env: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                                says: str) -> None:
    args = [a.replace("{certs}", str(cli_env)) for a in args]
    assert main(["--cert-dir", str(cli_env), "pki", "revoke", *args]) == 2
    assert says in capsys.readouterr().err
