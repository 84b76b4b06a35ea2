"""Evidence packs from a real mesh run: a real truck streams signed frames for a mission that is delivered and
invoiced; the pack exported over gRPC, over REST (billing:read, tenant-checked) and by the CLI verifies offline,
and a flipped byte or another carrier fails."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import httpx
import pytest

from haulmesh.billing.v1 import evidence_service_pb2, evidence_service_pb2_grpc
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2
from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import Mesh, metering
from services.runtime.cli import main
from services.runtime.evidence import verify_pack
from services.runtime.tokens import mint

from ..conftest import Pki, rich_error, wait_for
from ..mission.test_billing_handoff import _quote
from ..mission.test_mission_mesh import (
    ACME,
    DALLAS,
    GLOBEX,
    HOUSTON,
    Client,
    M,
    add_vehicle,
    arrive,
    drive_to_enroute,
    mission_spec,
    signed_proof,
)
from ..telemetry.helpers import Session, batch
from ..trucks import Truck

FRAMES = 12


async def _drive(mesh: Mesh, truck: Truck, mission: M) -> list[frame_pb2.SignedFrame]:
    """The truck streams FRAMES signed position frames of the mission, Houston towards Dallas, their device times
    between the dispatch and now (telemetry places a frame in a mission by its device time)."""
    mission_id = mission.name.removeprefix("missions/")
    start = mission.dispatch_time.ToNanoseconds() / 1e9
    step = (time.time() - start) / (FRAMES + 1)
    frames = []
    for seq in range(1, FRAMES + 1):
        frame = truck.frame(seq, device_time=start + step * seq, mission_id=mission_id)
        payload = frame_pb2.FramePayload.FromString(frame.payload)
        payload.position.lat = HOUSTON.lat + 0.02 * seq  # about 1.4 mi a frame, outside both stops' fences
        payload.position.lon = HOUSTON.lon - 0.005 * seq
        raw = payload.SerializeToString(deterministic=True)
        frames.append(frame_pb2.SignedFrame(sequence=seq, payload=raw, signature=truck.sign(raw), key_id=truck.key_id))
    async with grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        session.send(batch(frames))
        await wait_for(lambda: session.acked_through >= FRAMES, timeout_seconds=20)
        session.close()
        await session.aclose()
    return frames


async def _delivered_and_invoiced(mesh: Mesh, mesh_pki: Pki) -> tuple[M, Truck]:
    ops = Client(mesh, mesh_pki.credentials("operator", "ops"))
    tender = Client(mesh, mesh_pki.credentials("service", "tender"))
    try:
        vehicle = await add_vehicle(ops)
        spec = mission_spec(vehicle.name, origin=HOUSTON, destination=DALLAS)
        spec.quote = (await _quote(mesh, mesh_pki, spec)).name
        mission = await tender.CreateMission(mission_service_pb2.CreateMissionRequest(mission=spec), metadata=ACME,
                                             timeout=10)
        mission = await drive_to_enroute(ops, mission)
        truck = Truck.mint(mesh_pki.ca, vehicle.name.removeprefix("vehicles/"))
        frames = await _drive(mesh, truck, mission)
        mission = await arrive(ops, mission)
        proof = signed_proof(truck.issued, mission)
        manifest = mission_pb2.DeliveryManifest.FromString(proof.manifest)
        manifest.telemetry_log_sha256 = metering.telemetry_log_sha256(f.payload for f in frames)
        manifest.telemetry_first_sequence, manifest.telemetry_last_sequence = 1, FRAMES
        proof.manifest = manifest.SerializeToString()
        proof.manifest_signature = truck.sign(proof.manifest)
        as_truck = Client(mesh, truck.credentials())
        try:
            await as_truck.SubmitProofOfDelivery(mission_service_pb2.SubmitProofOfDeliveryRequest(
                name=mission.name, proof_of_delivery=proof), timeout=10)
        finally:
            await as_truck.channel.close()

        async def completed() -> M | None:
            current = await ops.GetMission(mission_service_pb2.GetMissionRequest(name=mission.name), metadata=ACME,
                                           timeout=10)
            return current if current.state == M.STATE_COMPLETED else None

        return await wait_for(completed, timeout_seconds=30), truck
    finally:
        await ops.channel.close()
        await tender.channel.close()


@pytest.fixture(scope="module")
async def delivered(mesh: Mesh, mesh_pki: Pki) -> tuple[M, Truck]:
    return await _delivered_and_invoiced(mesh, mesh_pki)


async def _export(mesh: Mesh, mesh_pki: Pki, name: str, metadata=ACME) -> tuple[bytes, list[str]]:
    async with grpc.aio.secure_channel(mesh.address("billing"), mesh_pki.credentials("operator", "ops")) as ch:
        chunks = [c async for c in evidence_service_pb2_grpc.EvidenceServiceStub(ch).ExportEvidencePack(
            evidence_service_pb2.ExportEvidencePackRequest(mission=name), metadata=metadata, timeout=60)]
    return b"".join(c.data for c in chunks), [c.content_type for c in chunks]


async def test_a_pack_of_a_real_run_verifies(mesh: Mesh, mesh_pki: Pki, delivered) -> None:
    mission, _ = delivered
    pack, types = await _export(mesh, mesh_pki, mission.name)
    assert types[0] == "application/zip"
    result = verify_pack(pack, trusted_ca_pem=mesh_pki.ca.certificate_pem)
    assert result.ok, result.report()
    assert result.facts["frames"] == FRAMES and result.facts["pod_verified"] is True
    assert result.facts["invoice_miles"] == pytest.approx(result.facts["driven_miles"])
    assert result.facts["invoice_miles"] > 10
    assert result.facts["audit_entries"] >= 3  # dispatch, acknowledgement, start, arrival, proof, usage ...
    # Exporting again gives the same file (nothing changed meanwhile): the pack is deterministic.
    assert (await _export(mesh, mesh_pki, mission.name))[0] == pack
    # One flipped byte anywhere fails (a sample of offsets: the format tests flip every one).
    for offset in range(0, len(pack), max(1, len(pack) // 97)):
        flipped = bytearray(pack)
        flipped[offset] ^= 0x20
        assert not verify_pack(bytes(flipped), trusted_ca_pem=mesh_pki.ca.certificate_pem).ok, offset


async def test_another_carrier_gets_not_found_and_bad_names_are_refused(mesh: Mesh, mesh_pki: Pki, delivered) -> None:
    mission, _ = delivered
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(mesh, mesh_pki, mission.name, metadata=GLOBEX)
    assert rich_error(caught.value)[:2] == ("NOT_FOUND", "MISSION_NOT_FOUND")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(mesh, mesh_pki, "missions/../x")
    assert rich_error(caught.value).code == "INVALID_ARGUMENT"
    # A truck may not export.
    truck = Truck.mint(mesh_pki.ca)
    async with grpc.aio.secure_channel(mesh.address("billing"), truck.credentials()) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [c async for c in evidence_service_pb2_grpc.EvidenceServiceStub(ch).ExportEvidencePack(
                evidence_service_pb2.ExportEvidencePackRequest(mission=mission.name), timeout=10)]
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_rest_export_with_billing_read(mesh: Mesh, mesh_pki: Pki, delivered) -> None:
    mission, _ = delivered
    url = f"http://127.0.0.1:{mesh.http_port}/api/v1/{mission.name}:exportEvidencePack"

    def bearer(carrier: str, scopes: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint(carrier=carrier, scopes=scopes, state_dir=mesh.state_dir)}"}

    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.get(url, headers=bearer("acme", "billing:read"))
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/zip"
        assert "attachment" in answer.headers["content-disposition"]
        assert verify_pack(answer.content, trusted_ca_pem=mesh_pki.ca.certificate_pem).ok
        other = await http.get(url, headers=bearer("globex", "billing:read"))
        assert other.status_code == 404 and other.json()["details"][0]["reason"] == "MISSION_NOT_FOUND"
        assert (await http.get(url, headers=bearer("acme", "mission:read"))).status_code == 403


async def test_cli_export_and_verify_exit_codes(mesh: Mesh, mesh_pki: Pki, delivered, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    mission, _ = delivered
    monkeypatch.setenv("HAULMESH_BILLING_ADDR", mesh.address("billing"))
    out = tmp_path / "pack.zip"
    certs = ["--cert-dir", str(mesh_pki.directory)]
    code = await asyncio.to_thread(main, [*certs, "evidence", "export", mission.name, "--carrier", "acme",
                                          "-o", str(out)])
    assert code == 0 and out.exists()
    ca = str(mesh_pki.directory / "ca.pem")
    capsys.readouterr()
    assert main(["evidence", "verify", str(out), "--ca", ca]) == 0
    printed = capsys.readouterr().out
    assert "evidence pack VERIFIED" in printed and "ok    invoice:" in printed
    # Without --ca the checks run against the pack's own CA: never exit 0, and the verdict says why.
    assert main(["evidence", "verify", str(out)]) == 3
    assert "NOT VERIFIED: CA not pinned" in capsys.readouterr().out
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    assert main(["evidence", "verify", str(tmp_path / "bad.zip"), "--ca", ca]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["evidence", "verify", str(tmp_path / "missing.zip")]) == 2
    # Another carrier's mission: the export fails, no file is left behind.
    code = await asyncio.to_thread(main, [*certs, "evidence", "export", mission.name, "--carrier", "globex",
                                          "-o", str(tmp_path / "x.zip")])
    assert code == 1 and not (tmp_path / "x.zip").exists() and not (tmp_path / "x.zip.part").exists()
