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

from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.runtime import (
    ResourceExhausted,
    RevocationList,
    Service,
    connect_async,
    connect_sync,
    free_port,
    pki,
    revoke_certificate,
    revoked_certificates,
)
from services.runtime import _revocation as revocation
from services.runtime.cli import main
from services.tender.server import POLICY

from ..conftest import wait_for
from .conftest import tender_server_config
from .refusals import reason_of
from .test_security import CountingTenders

CARRIER = (("haulmesh-carrier", "carriers/carrier-1"),)


@pytest.fixture
async def client(store_client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """The session's store with no revocations (the list is one per store)."""
    await store_client.delete(revocation.SERIALS_KEY, revocation.RECORDS_KEY, revocation.GENERATION_KEY)
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
        cache.check("abc")
    assert refused.value.reason == "CERTIFICATE_REVOKED"
    cache.check("abd")


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
        sync.delete(revocation.SERIALS_KEY, revocation.RECORDS_KEY, revocation.GENERATION_KEY)
    certs = tmp_path / "certs"
    assert main(["--cert-dir", str(certs), "pki", "dev-bootstrap"]) == 0
    monkeypatch.setenv("REDIS_URL", store_url)
    monkeypatch.setenv("HAULMESH_AUDIT_CHECKPOINT_URL", str(tmp_path / "checkpoints"))
    monkeypatch.delenv("HAULMESH_AUDIT_SIGNING_KEY_FILE", raising=False)
    return certs


def test_pki_revoke_vehicle_lists_its_serial_and_audits_it(cli_env: Path, store_url: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    cert = x509.load_pem_x509_certificate((cli_env / "vehicle-AU-TRK-1001.pem").read_bytes())
    serial = format(cert.serial_number, "x")
    assert main(["--cert-dir", str(cli_env), "pki", "revoke", "vehicle", "AU-TRK-1001", "--reason", "stolen"]) == 0
    assert f"revoked spiffe://haulmesh.local/vehicle/AU-TRK-1001 certificate serial {serial}" in capsys.readouterr().out
    assert main(["--cert-dir", str(cli_env), "pki", "revoke", "vehicle", "AU-TRK-1001"]) == 0
    assert "already revoked" in capsys.readouterr().out
    assert main(["--cert-dir", str(cli_env), "pki", "revoked"]) == 0
    listing = capsys.readouterr().out
    assert serial in listing and "stolen" in listing and "1 revoked certificate(s)" in listing
    with connect_sync(store_url) as sync:
        record = json.loads(sync.hget(revocation.RECORDS_KEY, serial))
        assert record["not_after"] == cert.not_valid_after_utc.timestamp()
        entries = [fields for chain in sync.smembers("audit:chains") if b"pki-cli" in chain
                   for _, fields in sync.xrange(chain)]
    [audited] = [json.loads(e[b"record"]) for e in entries if f"certificates/{serial}".encode() in e[b"record"]]
    assert audited["method"] == "haulmesh pki revoke" and audited["actor"].startswith("cli:")
    assert list((tmp_path / "checkpoints").rglob("*.final.json")), "the revocation's audit entry is not anchored"


def test_pki_revoke_by_serial_is_bounded_by_the_ca(cli_env: Path, store_url: str) -> None:
    assert main(["--cert-dir", str(cli_env), "pki", "revoke", "serial", "4F:A1:00:02"]) == 0
    ca = x509.load_pem_x509_certificate((cli_env / "ca.pem").read_bytes())
    with connect_sync(store_url) as sync:
        assert json.loads(sync.hget(revocation.RECORDS_KEY, "4fa10002"))["not_after"] == \
            ca.not_valid_after_utc.timestamp()


@pytest.mark.parametrize(("args", "says"), [
    (["vehicle", "AU-TRK-9999"], "no certificate"),
    (["operator", "cli", "--cert", "{certs}/vehicle-AU-TRK-1001.pem"], "not spiffe://haulmesh.local/operator/cli"),
    (["vehicle", "bad/id"], "must be spiffe://"),
    (["serial", "not-hex"], "hexadecimal"),
    (["serial", "abc", "--not-after", "tomorrow"], "ISO 8601"),
    (["vehicle", "AU-TRK-1001", "--not-after", "2030-01-01"], "for a serial"),
])
def test_pki_revoke_refuses_what_it_cannot_name(cli_env: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                                says: str) -> None:
    args = [a.replace("{certs}", str(cli_env)) for a in args]
    assert main(["--cert-dir", str(cli_env), "pki", "revoke", *args]) == 2
    assert says in capsys.readouterr().err
