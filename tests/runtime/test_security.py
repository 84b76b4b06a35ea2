"""mTLS and authorization of the runtime, on a real server over real TLS (in-process, real store).

The servicer counts its calls, so each test can prove that a refused call never reached a handler.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from google.rpc import error_details_pb2

from haulmesh.tender.v1 import tender_pb2, tender_service_pb2, tender_service_pb2_grpc
from services.runtime import (
    CertificateFiles,
    Channels,
    ConfigError,
    Policy,
    Service,
    ServiceConfig,
    TlsConfig,
    pki,
    status_of,
)
from services.runtime._authz import _is_mutating
from services.runtime._store import free_port
from services.tender.server import TENDER_POLICY as POLICY

from ..conftest import Pki, make_pki

CARRIER = (("haulmesh-carrier", "carriers/carrier-1"),)


class CountingTenders(tender_service_pb2_grpc.TenderServiceServicer):
    def __init__(self) -> None:
        self.calls = 0
        self.peer_serials: list[int] = []

    async def ListTenders(self, request, context):
        self.calls += 1
        pem = context.auth_context()["x509_pem_cert"][0]
        self.peer_serials.append(x509.load_pem_x509_certificate(pem).serial_number)
        return tender_service_pb2.ListTendersResponse()

    async def GetTender(self, request, context):
        await asyncio.sleep(float(request.name.rsplit("/", 1)[1]))
        return tender_pb2.Tender(name=request.name)

    async def DeclineTender(self, request, context):
        self.calls += 1
        raise AssertionError("never reached: the policy does not list DeclineTender")


def _issue_server_cert(p: Pki, directory: Path) -> TlsConfig:
    issued = pki.issue(p.ca, pki.identity_for("service", "tender"), valid_days=1,
                       dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    cert, key = pki.write_pem_files(directory, "tender", issued, p.ca.certificate_pem)
    return TlsConfig(directory / "ca.pem", cert, key)


@pytest.fixture
async def server(tmp_path: Path, store_url: str):
    p = make_pki(tmp_path / "ca")
    tls = _issue_server_cert(p, tmp_path / "server")
    config = ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(), tls=tls,
                           state_dir=tmp_path, redis_url=store_url, grace_period_seconds=0.5)
    policy = Policy({k: v for k, v in POLICY._rules.items() if not k.endswith("/DeclineTender")})
    service = Service(config, policy)
    servicer = CountingTenders()
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, servicer,
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    await service.start()
    yield service, servicer, p, tls
    await service.stop()


async def _list(service: Service, credentials: grpc.ChannelCredentials, **kw) -> tender_service_pb2.ListTendersResponse:
    async with grpc.aio.secure_channel(f"127.0.0.1:{service.bound_port}", credentials) as channel:
        return await tender_service_pb2_grpc.TenderServiceStub(channel).ListTenders(
            tender_service_pb2.ListTendersRequest(), metadata=CARRIER, timeout=5, **kw)


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = status_of(error)
    assert status is not None, "error carries no google.rpc.Status"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "haulmesh.io"
    return info.reason


async def test_allowed_identity_is_served(server) -> None:
    service, servicer, p, _ = server
    await _list(service, p.credentials("service", "gateway"))
    assert servicer.calls == 1


async def test_no_client_certificate_is_refused(server) -> None:
    service, servicer, p, _ = server
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list(service, p.anonymous_credentials())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 0


async def test_certificate_from_another_ca_is_refused(server) -> None:
    service, servicer, p, _ = server
    other_ca = pki.create_ca("Somebody Else's CA")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list(service, p.credentials("service", "gateway", ca=other_ca))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 0


async def test_identity_not_in_policy_is_denied_before_the_handler(server) -> None:
    service, servicer, p, _ = server
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list(service, p.credentials("vehicle", "AU-TRK-1001"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(caught.value) == "METHOD_NOT_ALLOWED"
    assert servicer.calls == 0


async def test_method_missing_from_policy_is_denied_to_everyone(server) -> None:
    service, servicer, p, _ = server
    async with grpc.aio.secure_channel(f"127.0.0.1:{service.bound_port}",
                                       p.credentials("service", "gateway")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await tender_service_pb2_grpc.TenderServiceStub(channel).DeclineTender(
                tender_service_pb2.DeclineTenderRequest(name="tenders/x"), metadata=CARRIER, timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert servicer.calls == 0


async def test_two_uri_sans_are_rejected(server) -> None:
    service, servicer, p, _ = server
    credentials = p.credentials("service", "gateway", extra_uris=("spiffe://haulmesh.local/vehicle/AU-TRK-1",))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list(service, credentials)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _reason(caught.value) == "INVALID_PEER_IDENTITY"
    assert servicer.calls == 0


def _server_serial(port: int, p: Pki, tmp_path: Path) -> int:
    """Serial of the certificate the server presents to a fresh TLS connection (mutual TLS)."""
    issued = pki.issue(p.ca, pki.identity_for("operator", "probe"), valid_days=1)
    cert, key = pki.write_pem_files(tmp_path / "probe", "probe", issued, p.ca.certificate_pem)
    context = ssl.create_default_context(cafile=str(tmp_path / "probe" / "ca.pem"))
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


async def test_replaced_certificate_files_are_served_without_restart(server, tmp_path: Path) -> None:
    service, servicer, p, tls = server
    before = await asyncio.to_thread(_server_serial, service.bound_port, p, tmp_path)
    assert before == x509.load_pem_x509_certificate(tls.cert_file.read_bytes()).serial_number
    rotated = _issue_server_cert(p, tls.cert_file.parent)
    after = await asyncio.to_thread(_server_serial, service.bound_port, p, tmp_path)
    assert after != before
    assert after == x509.load_pem_x509_certificate(rotated.cert_file.read_bytes()).serial_number
    await _list(service, p.credentials("service", "gateway"))  # and calls still work
    assert servicer.calls == 1


async def test_policy_naming_an_unknown_method_refuses_to_start(tmp_path: Path, store_url: str) -> None:
    p = make_pki(tmp_path / "ca")
    tls = _issue_server_cert(p, tmp_path / "server")
    config = ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(), tls=tls,
                           state_dir=tmp_path, redis_url=store_url)
    service = Service(config, Policy({"/haulmesh.tender.v1.TenderService/CreateTendr": ["service/gateway"]}))
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, CountingTenders(),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    with pytest.raises(ConfigError, match="has no method CreateTendr"):
        await service.start()


async def test_outgoing_calls_get_a_default_deadline(server, tmp_path: Path) -> None:
    service, _, p, _ = server
    issued = pki.issue(p.ca, pki.identity_for("service", "gateway"), valid_days=1)
    cert, key = pki.write_pem_files(tmp_path / "client", "gateway", issued, p.ca.certificate_pem)
    channels = Channels(CertificateFiles(TlsConfig(tmp_path / "client" / "ca.pem", cert, key)),
                        call_timeout_seconds=0.2)
    stub = tender_service_pb2_grpc.TenderServiceStub(channels.channel(f"127.0.0.1:{service.bound_port}"))
    try:
        assert (await stub.GetTender(tender_service_pb2.GetTenderRequest(name="tenders/0"), metadata=CARRIER)).name
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetTender(tender_service_pb2.GetTenderRequest(name="tenders/2"), metadata=CARRIER)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # An explicit deadline wins over the default.
        reply = await stub.GetTender(tender_service_pb2.GetTenderRequest(name="tenders/0.5"), metadata=CARRIER,
                                     timeout=5)
        assert reply.name == "tenders/0.5"
    finally:
        await channels.close()


async def test_client_presents_a_rotated_certificate_without_restart(server, tmp_path: Path) -> None:
    service, servicer, p, _ = server
    directory = tmp_path / "client"
    first = pki.issue(p.ca, pki.identity_for("service", "gateway"), valid_days=1)
    cert, key = pki.write_pem_files(directory, "gateway", first, p.ca.certificate_pem)
    channels = Channels(CertificateFiles(TlsConfig(directory / "ca.pem", cert, key)), call_timeout_seconds=5,
                        reload_check_interval_seconds=0.05)
    target = f"127.0.0.1:{service.bound_port}"
    try:
        await tender_service_pb2_grpc.TenderServiceStub(channels.channel(target)).ListTenders(
            tender_service_pb2.ListTendersRequest(), metadata=CARRIER)
        second = pki.issue(p.ca, pki.identity_for("service", "gateway"), valid_days=1)
        pki.write_pem_files(directory, "gateway", second, p.ca.certificate_pem)
        await asyncio.sleep(0.1)
        await tender_service_pb2_grpc.TenderServiceStub(channels.channel(target)).ListTenders(
            tender_service_pb2.ListTendersRequest(), metadata=CARRIER)
    finally:
        await channels.close()
    assert servicer.peer_serials == [first.certificate.serial_number, second.certificate.serial_number]


@pytest.mark.parametrize(("method", "mutating"), [
    ("/haulmesh.tender.v1.TenderService/GetTender", False),
    ("/haulmesh.tender.v1.TenderService/ListTenders", False),
    ("/haulmesh.telemetry.v1.TelemetryService/WatchVehicleTelemetry", False),
    ("/haulmesh.mission.v1.MissionService/BatchGetMissions", False),
    ("/grpc.health.v1.Health/Check", False),
    ("/haulmesh.tender.v1.TenderService/CreateTender", True),
    ("/haulmesh.mission.v1.MissionService/RecordCheckIn", True),
    ("/haulmesh.mission.v1.MissionService/BatchCreateMissions", True),  # a batch write is a write: audited
])
def test_reads_are_known_by_their_aip_verb_and_everything_else_is_audited(method: str, mutating: bool) -> None:
    assert _is_mutating(method) is mutating
