"""Certificate rotation of a service's outgoing calls (issue 12, AT-15's service half), on a real server over real mTLS.

A ``Service`` shares one ``CertificateFiles`` between its server (re-read before each handshake) and its channels
to other services: whichever notices a change first must not keep it from the other.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from haulmesh.tender.v1 import tender_pb2, tender_service_pb2, tender_service_pb2_grpc
from services.runtime import Policy, Service, ServiceConfig, TlsConfig, _client, free_port, pki, poll_until

from ..conftest import make_pki

_LIST = "/haulmesh.tender.v1.TenderService/ListTenders"
_GET = "/haulmesh.tender.v1.TenderService/GetTender"
CARRIER = (("haulmesh-carrier", "carriers/carrier-1"),)


class SerialRecorder(tender_service_pb2_grpc.TenderServiceServicer):
    """Records the serial of the client certificate behind each call (what the server sees); GetTender of
    ``tenders/<seconds>`` takes that long (a long call in progress)."""

    def __init__(self) -> None:
        self.serials: list[int] = []

    async def GetTender(self, request, context):
        await asyncio.sleep(float(request.name.rsplit("/", 1)[1]))
        return tender_pb2.Tender(name=request.name)

    async def ListTenders(self, request, context):
        pem = context.auth_context()["x509_pem_cert"][0]
        self.serials.append(x509.load_pem_x509_certificate(pem).serial_number)
        return tender_service_pb2.ListTendersResponse()


def _rotate(p, directory: Path) -> int:
    issued = pki.issue(p.ca, pki.identity_for("service", "tender"), valid_days=1, dns_names=("localhost",),
                       ip_addresses=("127.0.0.1",))
    pki.write_pem_files(directory, "tender", issued, p.ca.certificate_pem)
    return issued.certificate.serial_number


async def _self_calling_service(tmp_path: Path, store_url: str, p, directory: Path,
                                rules: dict[str, list[str]]) -> tuple[Service, SerialRecorder]:
    """A started tender Service on ``directory``'s certificate whose peer "tender" is itself: its server sees
    exactly what its channels present."""
    tls = TlsConfig(directory / "ca.pem", directory / "tender.pem", directory / "tender-key.pem")
    config = ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(), tls=tls,
                           state_dir=tmp_path, redis_url=store_url, grace_period_seconds=0.5)
    service = Service(config, Policy(rules))
    recorder = SerialRecorder()
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, recorder,
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    await service.start()
    service.config.peer_addresses["tender"] = f"127.0.0.1:{service.bound_port}"
    return service, recorder


async def test_a_service_presents_its_rotated_certificate_even_after_its_server_saw_the_change(
        tmp_path: Path, store_url: str) -> None:
    p = make_pki(tmp_path / "ca")
    directory = tmp_path / "tender"
    first = _rotate(p, directory)
    service, recorder = await _self_calling_service(
        tmp_path, store_url, p, directory, {_LIST: ["service/tender", "service/gateway"], _GET: ["service/tender"]})

    async def call_self() -> int:
        await service.stub(tender_service_pb2_grpc.TenderServiceStub, "tender").ListTenders(
            tender_service_pb2.ListTendersRequest(), metadata=CARRIER, timeout=5)
        return recorder.serials[-1]

    try:
        assert await call_self() == first
        second = _rotate(p, directory)
        # Another client's new connection: the server's handshake re-reads the shared files first.
        async with grpc.aio.secure_channel(f"127.0.0.1:{service.bound_port}",
                                           p.credentials("service", "gateway")) as channel:
            await tender_service_pb2_grpc.TenderServiceStub(channel).ListTenders(
                tender_service_pb2.ListTendersRequest(), metadata=CARRIER, timeout=5)
        # Within the channels' check interval (1 s), the next call presents the new certificate.
        async def presents_second() -> bool:
            return await call_self() == second

        try:
            await poll_until(presents_second, timeout_seconds=5, interval_seconds=0.1, what="the rotated serial")
        except TimeoutError:
            raise AssertionError(f"the service kept presenting serial {recorder.serials[-1]:x}, not the rotated "
                                 f"{second:x}") from None
    finally:
        await service.stop()


async def test_a_call_in_progress_outlives_the_rotation_and_its_channel_closes_after_it(
        tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replaced channel is closed once idle, not after a fixed grace (which cut a TMS's watch in progress): here
    the least wait is 0.1 s and the call lasts 2 s."""
    monkeypatch.setattr(_client, "RETIRED_CHANNEL_MIN_SECONDS", 0.1)
    p = make_pki(tmp_path / "ca")
    directory = tmp_path / "tender"
    _rotate(p, directory)
    service, recorder = await _self_calling_service(
        tmp_path, store_url, p, directory, {_LIST: ["service/tender"], _GET: ["service/tender"]})
    try:
        old = service.channels.channel(service.config.peer_addresses["tender"])
        long_call = asyncio.ensure_future(tender_service_pb2_grpc.TenderServiceStub(old).GetTender(
            tender_service_pb2.GetTenderRequest(name="tenders/2"), metadata=CARRIER, timeout=10))
        await asyncio.sleep(0.3)  # the call is open
        second = _rotate(p, directory)

        async def replaced() -> bool:
            return service.channels.channel(service.config.peer_addresses["tender"]) is not old
        await poll_until(replaced, timeout_seconds=5, interval_seconds=0.1, what="the channel replaced")
        await service.stub(tender_service_pb2_grpc.TenderServiceStub, "tender").ListTenders(
            tender_service_pb2.ListTendersRequest(), metadata=CARRIER, timeout=5)
        assert recorder.serials[-1] == second
        await asyncio.sleep(0.5)
        assert not long_call.done()  # past the least wait, the old channel still carries its call
        assert (await long_call).name == "tenders/2"
        await poll_until(lambda: not service.channels._retired, timeout_seconds=5, what="the old channel closed")
    finally:
        await service.stop()


def _served_serial(port: int, p) -> int:
    """The serial of the certificate the server presents in a new handshake."""
    context = ssl.create_default_context(cafile=str(p.directory / "ca.pem"))
    issued = pki.issue(p.ca, pki.identity_for("service", "gateway"), valid_days=1)
    cert, key = pki.write_pem_files(p.directory / "probe", "gateway", issued, p.ca.certificate_pem)
    context.load_cert_chain(cert, key)
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


async def test_a_service_serves_its_rotated_certificate_even_after_its_channels_saw_the_change(
        tmp_path: Path, store_url: str) -> None:
    p = make_pki(tmp_path / "ca")
    directory = tmp_path / "tender"
    first = _rotate(p, directory)
    service, _ = await _self_calling_service(tmp_path, store_url, p, directory, {_LIST: ["service/tender"]})
    try:
        assert await asyncio.to_thread(_served_serial, service.bound_port, p) == first
        idle_target = "127.0.0.1:9"  # a channel never used: rebuilding it makes no handshake with the server
        before = service.channels.channel(idle_target)
        second = _rotate(p, directory)
        # The channels notice the change first (within their 1 s check), with no handshake at the server meanwhile.
        await poll_until(lambda: service.channels.channel(idle_target) is not before, timeout_seconds=5,
                         interval_seconds=0.1, what="the channels rebuilt")
        # A new client's handshake is served the rotated certificate too.
        assert await asyncio.to_thread(_served_serial, service.bound_port, p) == second
    finally:
        await service.stop()
