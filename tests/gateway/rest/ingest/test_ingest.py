"""POST /api/v1/telemetry/ingest on the gateway's device listener: real HTTPS with client certificates, the real
gateway and telemetry processes, the real store."""

from __future__ import annotations

import asyncio
import ssl

import grpc
import httpx
import pytest

from haulmesh.telemetry.v1 import frame_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import Mesh, pki

from ..conftest import bearer, error_info
from .conftest import TruckClient

INGEST = "/api/v1/telemetry/ingest"
# What a refused handshake looks like to httpx (TLS 1.3: the server's alert may arrive with the first read).
REFUSED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)


async def _frames(mesh: Mesh, mesh_pki, vehicle_id: str) -> list[frame_pb2.TelemetryFrame]:
    async with grpc.aio.secure_channel(mesh.address("telemetry"), mesh_pki.credentials("operator", "ingest")) as ch:
        page = await telemetry_service_pb2_grpc.TelemetryServiceStub(ch).ListTelemetryFrames(
            telemetry_service_pb2.ListTelemetryFramesRequest(parent=f"vehicles/{vehicle_id}"), timeout=10)
    return list(page.telemetry_frames)


async def test_seed_sample_is_stored_then_duplicate(mesh: Mesh, mesh_pki, truck: TruckClient) -> None:
    body = truck.sample(12345)
    async with truck.http() as http:
        first = await http.post(INGEST, json=body)
        again = await http.post(INGEST, json=body)
    assert first.status_code == 200, first.text
    assert first.json()["outcome"] == "OUTCOME_STORED"
    assert first.json()["highWaterSequence"] == "12345"
    assert again.status_code == 200, again.text
    assert again.json()["outcome"] == "OUTCOME_DUPLICATE"
    assert again.json()["receiveTime"] == first.json()["receiveTime"]
    frames = await _frames(mesh, mesh_pki, truck.vehicle_id)
    assert [f.signed_frame.sequence for f in frames] == [12345]
    stored = frames[0].payload
    assert (stored.vehicle_id, stored.mission_id, stored.vehicle_state) == (truck.vehicle_id, "TRIP-20260118-99",
                                                                           "enroute")
    assert stored.sensors.lidar_status == "ok" and stored.position.speed_kph == 88.5


async def test_tampered_signature_is_refused_and_not_stored(mesh: Mesh, mesh_pki, truck: TruckClient) -> None:
    body = truck.sample(7)
    body["state"] = "stopped"  # no longer what the truck signed
    async with truck.http() as http:
        reply = await http.post(INGEST, json=body)
    assert reply.status_code == 400, reply.text
    assert error_info(reply.json())["reason"] == "BAD_SIGNATURE"
    assert await _frames(mesh, mesh_pki, truck.vehicle_id) == []


async def test_another_vehicles_id_is_forbidden(truck: TruckClient) -> None:
    body = truck.sample(3, vehicleId="AU-TRK-SOMEONE-ELSE")  # signed by this truck for another vehicle
    async with truck.http() as http:
        reply = await http.post(INGEST, json=body)
    assert reply.status_code == 403, reply.text
    assert error_info(reply.json())["reason"] == "VEHICLE_MISMATCH"


async def test_without_client_certificate_the_handshake_is_refused(client_for, truck: TruckClient) -> None:
    async with client_for(None).http() as http:
        with pytest.raises(REFUSED):
            await http.post(INGEST, json=truck.sample(1))


async def test_certificate_of_another_ca_is_refused(client_for, truck: TruckClient) -> None:
    stranger = client_for("vehicle", truck.vehicle_id, ca=pki.create_ca("Not the mesh CA"))
    async with stranger.http() as http:
        with pytest.raises(REFUSED):
            await http.post(INGEST, json=truck.sample(1))


@pytest.mark.parametrize(("kind", "name", "extra", "reason"), [
    ("service", "tender", (), "VEHICLE_CERTIFICATE_REQUIRED"),
    ("operator", "fleet", (), "VEHICLE_CERTIFICATE_REQUIRED"),
    ("vehicle", "AU-TRK-TWO-IDS", ("spiffe://haulmesh.local/vehicle/AU-TRK-OTHER",), "INVALID_PEER_IDENTITY"),
])
async def test_non_vehicle_certificates_are_forbidden(client_for, truck: TruckClient, kind: str, name: str,
                                                      extra: tuple[str, ...], reason: str) -> None:
    async with client_for(kind, name, extra_uris=extra).http() as http:
        reply = await http.post(INGEST, json=truck.sample(1))
    assert reply.status_code == 403, reply.text
    assert error_info(reply.json())["reason"] == reason


async def test_device_listener_serves_only_vehicle_routes(truck: TruckClient) -> None:
    async with truck.http() as http:
        tenders = await http.get("/api/v1/tenders")
        wrong_verb = await http.get(INGEST)
    assert tenders.status_code == 404 and error_info(tenders.json())["reason"] == "ROUTE_NOT_FOUND"
    assert wrong_verb.status_code == 405 and wrong_verb.headers["allow"] == "POST"


async def test_device_listener_documents_mutual_tls_not_oauth2(mesh: Mesh, truck: TruckClient) -> None:
    """The truck listener's /openapi.json: the trucks' operations, under the mutualTLS scheme, no OAuth2."""
    async with truck.http() as http:
        document = (await http.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"].keys() == {"mutualTLS"}
    assert document["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"
    assert list(document["paths"]) == [INGEST]
    operation = document["paths"][INGEST]["post"]
    assert operation["security"] == [{"mutualTLS": []}] and "401" not in operation["responses"]
    assert "oauth2" not in str(document).lower()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=10) as tms:
        bearer_document = (await tms.get("/openapi.json")).json()
    assert bearer_document["components"]["securitySchemes"].keys() == {"oauth2"} and INGEST not in \
        bearer_document["paths"]


async def test_invalid_json_and_missing_fields(truck: TruckClient) -> None:
    async with truck.http() as http:
        garbage = await http.post(INGEST, content=b"{not json", headers={"content-type": "application/json"})
        unknown = await http.post(INGEST, json={**truck.sample(1), "speed": 3})
        missing = await http.post(INGEST, json={"vehicleId": truck.vehicle_id})
    assert garbage.status_code == 400 and error_info(garbage.json())["reason"] == "INVALID_JSON"
    assert unknown.status_code == 400 and error_info(unknown.json())["reason"] == "INVALID_JSON"
    assert missing.status_code == 400, missing.text


async def test_bearer_listener_still_answers_mtls_required(mesh: Mesh, truck: TruckClient) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=15) as http:
        reply = await http.post(INGEST, json=truck.sample(1), headers=bearer("not-even-checked"))
    assert reply.status_code == 501, reply.text
    info = error_info(reply.json())
    assert info["reason"] == "MTLS_REQUIRED"
    assert info["metadata"] == {"port_setting": "HAULMESH_GATEWAY_DEVICE_PORT"}
    assert "device port" in reply.json()["message"]


async def test_rate_limit_and_size_limit_per_vehicle(client_for, truck: TruckClient) -> None:
    # The default budget (HAULMESH_RATE_LIMIT, 50/second) counted per vehicle: a burst of one truck is limited,
    # another truck is not. Bodies that fail JSON parsing keep the burst within one window (no call behind).
    async with truck.http() as http:
        burst = await asyncio.gather(*(http.post(INGEST, content=b"{", headers={"content-type": "application/json"})
                                       for _ in range(120)))
        too_large = await http.post(INGEST, content=b" " * (1024 * 1024 + 1))
    statuses = [r.status_code for r in burst]
    assert 429 in statuses and set(statuses) <= {400, 429}
    limited = next(r for r in burst if r.status_code == 429)
    assert error_info(limited.json())["reason"] == "RATE_LIMITED" and int(limited.headers["retry-after"]) >= 1
    assert too_large.status_code == 413
    async with client_for("vehicle", "AU-TRK-UNLIMITED").http() as other:
        assert (await other.post(INGEST, content=b"{", headers={"content-type": "application/json"})).status_code == 400
