"""Certificate rotation of a service's outgoing calls (issue 12, AT-15's service half), on a real server over real mTLS.

A ``Service`` shares one ``CertificateFiles`` between its server (re-read before each handshake) and its channels
to other services: whichever notices a change first must not keep it from the other.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509

from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.runtime import Policy, Service, ServiceConfig, TlsConfig, free_port, pki, poll_until

from ..conftest import make_pki

_LIST = "/haulmesh.tender.v1.TenderService/ListTenders"
CARRIER = (("haulmesh-carrier", "carriers/carrier-1"),)


class SerialRecorder(tender_service_pb2_grpc.TenderServiceServicer):
    """Records the serial of the client certificate behind each call (what the server sees)."""

    def __init__(self) -> None:
        self.serials: list[int] = []

    async def ListTenders(self, request, context):
        pem = context.auth_context()["x509_pem_cert"][0]
        self.serials.append(x509.load_pem_x509_certificate(pem).serial_number)
        return tender_service_pb2.ListTendersResponse()


def _rotate(p, directory: Path) -> int:
    issued = pki.issue(p.ca, pki.identity_for("service", "tender"), valid_days=1, dns_names=("localhost",),
                       ip_addresses=("127.0.0.1",))
    pki.write_pem_files(directory, "tender", issued, p.ca.certificate_pem)
    return issued.certificate.serial_number


async def test_a_service_presents_its_rotated_certificate_even_after_its_server_saw_the_change(
        tmp_path: Path, store_url: str) -> None:
    p = make_pki(tmp_path / "ca")
    directory = tmp_path / "tender"
    first = _rotate(p, directory)
    tls = TlsConfig(directory / "ca.pem", directory / "tender.pem", directory / "tender-key.pem")
    config = ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(), tls=tls,
                           state_dir=tmp_path, redis_url=store_url, grace_period_seconds=0.5)
    # The service calls itself: its server sees exactly what its channels present.
    service = Service(config, Policy({_LIST: ["service/tender", "service/gateway"]}))
    recorder = SerialRecorder()
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, recorder,
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    await service.start()

    async def call_self() -> int:
        await service.stub(tender_service_pb2_grpc.TenderServiceStub, "tender").ListTenders(
            tender_service_pb2.ListTendersRequest(), metadata=CARRIER, timeout=5)
        return recorder.serials[-1]

    try:
        config.peer_addresses["tender"] = f"127.0.0.1:{service.bound_port}"
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
