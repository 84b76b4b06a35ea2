"""ListVehicleCertificates: telemetry remembers the certificate behind each signing key id, readable by billing,
mission and operators only, on a real telemetry process (mTLS, the real store)."""

from __future__ import annotations

import grpc
import pytest
from cryptography import x509

from haulmesh.telemetry.v1 import telemetry_service_pb2 as ts
from haulmesh.telemetry.v1 import telemetry_service_pb2_grpc
from tests.conftest import Pki, rich_error, wait_for
from tests.telemetry.helpers import Session, TelemetryProcess, Truck, batch


async def _list(telemetry: TelemetryProcess, creds: grpc.ChannelCredentials,
                parent: str) -> ts.ListVehicleCertificatesResponse:
    async with grpc.aio.secure_channel(telemetry.address, creds) as channel:
        return await telemetry_service_pb2_grpc.TelemetryServiceStub(channel).ListVehicleCertificates(
            ts.ListVehicleCertificatesRequest(parent=parent), timeout=10)


async def test_certificate_of_each_key_is_remembered(telemetry: TelemetryProcess, mesh_pki: Pki, truck: Truck) -> None:
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        session.send(batch([truck.frame(1)]))
        await wait_for(lambda: session.acked_through == 1, timeout_seconds=30)
        await session.aclose()
    for who in (("service", "billing"), ("service", "mission"), ("operator", "ops")):
        reply = await _list(telemetry, mesh_pki.credentials(*who), f"vehicles/{truck.vehicle_id}")
        assert [c.key_id for c in reply.certificates] == [truck.key_id]
        cert = reply.certificates[0]
        assert x509.load_pem_x509_certificate(cert.certificate_pem.encode()) == truck.issued.certificate
        assert cert.first_seen_time.ToMilliseconds() > 0


async def test_certificates_need_an_internal_reader_and_a_vehicle_name(telemetry: TelemetryProcess, mesh_pki: Pki,
                                                                        truck: Truck) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await _list(telemetry, mesh_pki.credentials("service", "gateway"), f"vehicles/{truck.vehicle_id}")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await _list(telemetry, mesh_pki.credentials("operator", "ops"), "missions/x")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parent" in rich_error(bad.value).fields
    unknown = await _list(telemetry, mesh_pki.credentials("operator", "ops"), "vehicles/NEVER-SEEN")
    assert list(unknown.certificates) == []
