"""R-1 (issue 12): a truck revoked mid-stream. Real edge clients (``python -m edge_client simulate``) stream to the real
mesh; ``haulmesh pki revoke vehicle`` revokes one: its open stream ends within seconds (UNAUTHENTICATED,
CERTIFICATE_REVOKED), every reconnect is refused before a Welcome, nothing more of it is stored, its REST ingest on the
gateway's device door is refused (401), and a call the gateway relays for it is refused by telemetry itself. A truck
that was not revoked streams on throughout.

Short version (``make test``): the session mesh, one revoked truck and one control. Full version (``make chaos``,
recorded as R-1): a mesh of its own, three trucks revoked one after another, one control.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import (
    VEHICLE_CERTIFICATE_METADATA_KEY,
    Credential,
    Mesh,
    RevocationList,
    free_port,
    new_id,
    pki,
    revoke_certificate,
    revoke_identity,
)
from services.runtime.cli import main
from services.telemetry.config import TelemetryConfig
from services.telemetry.store import TelemetryStore
from services.telemetry.usecases import Streams
from tests.conftest import Pki, rich_error, running_mesh, wait_for
from tests.gateway.rest.conftest import error_info
from tests.gateway.rest.ingest.conftest import TruckClient
from tests.telemetry.helpers import stored_sequences
from tests.trucks import Truck

ROOT = Path(__file__).resolve().parents[3]
#: What "within seconds" is held to: the services' 1 s refresh, a store round trip, the truck's next message (its
#: frames come every 50 ms here), on a loaded 2-core machine.
STREAM_END_BOUND_SECONDS = 5.0


class EdgeTruck:
    """One simulated truck as its own process, its certificate in a folder of its own."""

    def __init__(self, mesh: Mesh, mesh_pki: Pki, directory: Path) -> None:
        self.truck = Truck.mint(mesh_pki.ca)
        self.directory = directory
        self.certs = directory / "certs"
        pki.write_pem_files(self.certs, f"vehicle-{self.truck.vehicle_id}", self.truck.issued,
                            mesh_pki.ca.certificate_pem)
        self.metrics_port = free_port()
        self.log = directory / "edge.log"
        self._mesh = mesh
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_client", "--cert-dir", str(self.certs),
                "--target", self._mesh.address("telemetry"), "simulate", "--vehicle", self.truck.vehicle_id,
                "--spool", str(self.directory / "spool.db"), "--quiet", "--speedup", "20",
                "--max-sim-minutes", "600", "--backoff-cap", "0.5", "--metrics-port", str(self.metrics_port),
                cwd=self.directory, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=asyncio.subprocess.DEVNULL, stderr=log)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def metrics(self) -> dict[str, float]:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        except OSError:
            return {}
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def refusals(self) -> int:
        """Streams the truck saw refused as revoked (its client logs each ended stream with its status)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return sum(1 for line in text.splitlines()
                   if "telemetry stream ended: UNAUTHENTICATED" in line and "revoked" in line)


async def _high_water(mesh: Mesh, mesh_pki: Pki, vehicle_id: str) -> int:
    """The newest sequence telemetry stored for the vehicle (as a fleet operator reads it)."""
    return max(await stored_sequences(mesh, mesh_pki, vehicle_id), default=0)


async def _revoke(edge: EdgeTruck, mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``haulmesh pki revoke vehicle <id>``, the real command, on the mesh's store."""
    assert mesh.store is not None
    monkeypatch.setenv("REDIS_URL", mesh.store.url)
    monkeypatch.setenv("HAULMESH_AUDIT_CHECKPOINT_URL", str(tmp_path / "cli-checkpoints"))
    code = await asyncio.to_thread(main, ["--cert-dir", str(edge.certs), "pki", "revoke", "vehicle",
                                          edge.truck.vehicle_id, "--reason", "R-1: stolen truck"])
    assert code == 0


async def _rest_ingest(mesh: Mesh, edge: EdgeTruck, sequence: int) -> httpx.Response:
    client = TruckClient(edge.directory, edge.certs / "ca.pem", edge.truck.issued, f"https://127.0.0.1:"
                         f"{mesh.device_port}", vehicle_id=edge.truck.vehicle_id)
    async with client.http() as http:
        return await http.post("/api/v1/telemetry/ingest", json=client.sample(sequence))


async def _relayed_ingest(mesh: Mesh, mesh_pki: Pki, edge: EdgeTruck, sequence: int) -> grpc.aio.AioRpcError | None:
    """IngestTelemetry as the gateway relaying the truck's certificate: telemetry's own check of a relayed one."""
    der = edge.truck.issued.certificate.public_bytes(serialization.Encoding.DER)
    client = TruckClient(edge.directory, edge.certs / "ca.pem", edge.truck.issued, "", vehicle_id=edge.truck.vehicle_id)
    request = json_format.ParseDict(client.sample(sequence), telemetry_service_pb2.IngestTelemetryRequest())
    async with grpc.aio.secure_channel(mesh.address("telemetry"), mesh_pki.credentials("service", "gateway")) as ch:
        try:
            await telemetry_service_pb2_grpc.TelemetryServiceStub(ch).IngestTelemetry(
                request, metadata=((VEHICLE_CERTIFICATE_METADATA_KEY, der),), timeout=10)
        except grpc.aio.AioRpcError as error:
            return error
    return None


async def _r1(mesh: Mesh, mesh_pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
              revoked: int) -> dict[str, object]:
    edges = []
    for i in range(revoked + 1):  # the last one is the control, never revoked
        (tmp_path / f"truck{i}").mkdir()
        edges.append(EdgeTruck(mesh, mesh_pki, tmp_path / f"truck{i}"))
    control = edges[-1]
    figures: dict[str, object] = {"stream_end_seconds": [], "reconnects_refused": [], "bound_seconds":
                                  STREAM_END_BOUND_SECONDS}
    try:
        for edge in edges:
            await edge.start()
        for edge in edges:
            await wait_for(lambda e=edge: e.metrics().get("edge_acked_sequence", 0) >= 5, timeout_seconds=60)
        for edge in edges[:-1]:
            sessions = edge.metrics()["edge_stream_sessions_total"]
            began = time.monotonic()
            await _revoke(edge, mesh, tmp_path, monkeypatch)
            await wait_for(lambda e=edge: e.refusals() >= 1, timeout_seconds=30, interval_seconds=0.02)
            ended = time.monotonic() - began
            figures["stream_end_seconds"].append(round(ended, 2))
            # Reconnects: the client retries within its 0.5 s backoff cap; each is refused before a Welcome. What was
            # stored by the first refused reconnect (commits in flight when the stream ended have landed) stays all.
            await wait_for(lambda e=edge: e.refusals() >= 2, timeout_seconds=30)
            stored = await _high_water(mesh, mesh_pki, edge.truck.vehicle_id)
            await wait_for(lambda e=edge: e.refusals() >= 5, timeout_seconds=30)
            figures["reconnects_refused"].append(edge.refusals() - 1)
            assert edge.metrics()["edge_stream_sessions_total"] == sessions, "a revoked truck got a new session"
            assert edge.metrics()["edge_last_sequence"] > stored  # it keeps spooling; nothing more is stored
            assert await _high_water(mesh, mesh_pki, edge.truck.vehicle_id) == stored
            assert ended < STREAM_END_BOUND_SECONDS, f"the revoked stream ended after {ended:.2f} s"
            response = await _rest_ingest(mesh, edge, int(stored) + 1_000_000)
            assert response.status_code == 401, response.text
            assert error_info(response.json())["reason"] == "CERTIFICATE_REVOKED", response.text
            error = await _relayed_ingest(mesh, mesh_pki, edge, int(stored) + 1_000_001)
            assert error is not None and rich_error(error)[:2] == ("UNAUTHENTICATED", "CERTIFICATE_REVOKED")
        # The control was never refused and is still acknowledged.
        acked = control.metrics()["edge_acked_sequence"]
        await wait_for(lambda: control.metrics().get("edge_acked_sequence", 0) > acked, timeout_seconds=30)
        assert control.refusals() == 0
        response = await _rest_ingest(mesh, control, 10_000_000)
        assert response.status_code == 200, response.text
    finally:
        for edge in edges:
            await edge.stop()
    return figures


async def test_r1_a_truck_revoked_mid_stream(mesh: Mesh, mesh_pki: Pki, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    figures = await _r1(mesh, mesh_pki, tmp_path, monkeypatch, revoked=1)
    print(f"R-1 short: {figures}")


@pytest.mark.chaos(seeds=1)
async def test_r1_full(mesh_pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chaos_seed: int,
                       chaos_record) -> None:
    async with running_mesh(mesh_pki, tmp_path / "mesh") as mesh:
        figures: dict[str, object] = {}
        try:
            figures = await _r1(mesh, mesh_pki, tmp_path, monkeypatch, revoked=3)
        finally:
            chaos_record("R-1", **figures)
        print(f"R-1 full: {figures}")


async def test_an_idle_stream_ends_when_its_truck_is_revoked(mesh: Mesh, mesh_pki: Pki, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A parked truck sends nothing after its Hello: no per-message check would see its revocation, so telemetry
    ends its open stream when its serial appears on the list."""
    edge = EdgeTruck(mesh, mesh_pki, tmp_path)  # for its certificate; no edge process: the test is the truck
    truck = edge.truck
    idle = asyncio.Event()

    async def requests():
        yield truck.hello()
        await idle.wait()  # nothing more: a parked truck

    async with grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials()) as channel:
        call = telemetry_service_pb2_grpc.TelemetryServiceStub(channel).StreamTelemetry(requests())
        welcome = await call.read()
        assert welcome.WhichOneof("message") == "welcome"
        began = time.monotonic()
        await _revoke(edge, mesh, tmp_path, monkeypatch)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:  # acks or commands may come first; the stream must end in an error, never cleanly
                assert await asyncio.wait_for(call.read(), STREAM_END_BOUND_SECONDS * 2) is not grpc.aio.EOF
        took = time.monotonic() - began
        idle.set()
    assert rich_error(ended.value)[:2] == ("UNAUTHENTICATED", "CERTIFICATE_REVOKED")
    assert took < STREAM_END_BOUND_SECONDS, f"the idle stream ended {took:.2f} s after the revocation"


async def test_the_stream_engine_ends_exactly_the_revoked_streams(store_client: redis.asyncio.Redis) -> None:
    """In process, on the real store: the deny-list's refresh tells telemetry's stream engine, which ends the open
    streams of the newly revoked certificates (by serial, or by their identity's cut-off) at once, and only those."""
    config = TelemetryConfig()
    store = TelemetryStore(store_client, config)
    streams = Streams(store, config)
    revocations = RevocationList(store_client)
    revocations.on_revoked(streams.end_revoked)
    await revocations.refresh()
    stolen, parked, renewed = (streams.open(f"AU-TRK-{new_id()}") for _ in range(3))
    # Fresh serials and identities (the store's list is shared), serials as certificate_serial writes them.
    for session in (stolen, parked, renewed):
        session.credential = Credential(format(secrets.randbits(72) | 1 << 72, "x"),
                                        f"spiffe://haulmesh.local/vehicle/{session.vehicle_id}", time.time() - 60)
    try:
        await revoke_certificate(store_client, stolen.credential.serial, not_after=time.time() + 600)
        assert await revocations.refresh()
        ended = stolen.outbound.get_nowait()
        assert (ended.code_name, ended.reason) == ("UNAUTHENTICATED", "CERTIFICATE_REVOKED")
        assert parked.outbound.empty() and renewed.outbound.empty()
        await revoke_identity(store_client, renewed.credential.identity, until=time.time() + 600)
        assert await revocations.refresh()
        ended = renewed.outbound.get_nowait()
        assert (ended.code_name, ended.reason) == ("UNAUTHENTICATED", "CERTIFICATE_REVOKED")
        assert parked.outbound.empty()
    finally:
        for session in (stolen, parked, renewed):
            await streams.close(session)
        await streams.shutdown()
        await store.close()
