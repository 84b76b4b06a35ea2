"""Fixtures of the device-listener tests: trucks with real certificates speaking HTTPS to the session mesh."""

from __future__ import annotations

import base64
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format

from haulmesh.telemetry.v1 import frame_pb2, telemetry_service_pb2
from services.runtime import Identity, Mesh, pki
from tests.conftest import Pki


@dataclass
class Client:
    """A workload's certificate written to disk, and HTTPS clients presenting it to the device listener."""

    directory: Path
    ca_file: Path
    issued: pki.IssuedCertificate | None
    base_url: str

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.issued is not None:
            cert, key = self.directory / "cert.pem", self.directory / "key.pem"
            cert.write_bytes(self.issued.certificate_pem)
            key.write_bytes(self.issued.private_key_pem)
            context.load_cert_chain(cert, key)
        return context

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, verify=self.ssl_context(), timeout=15)


@dataclass
class TruckClient(Client):
    vehicle_id: str = ""

    def sample(self, sequence: int, **overrides: object) -> dict:
        """The seed's telemetry sample for this truck, now, signed over the bytes IngestTelemetry defines."""
        body = {"vehicleId": self.vehicle_id, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.123Z", time.gmtime()),
                "position": {"lat": 30.267153, "lon": -97.743057, "speedKph": 88.5}, "state": "enroute",
                "sensors": {"lidarStatus": "ok", "cameraHealth": "ok", "radarStatus": "ok"},
                "tripId": "TRIP-20260118-99", "sequence": sequence}
        body.update(overrides)
        return {**body, "signature": base64.b64encode(self.sign(body)).decode()}

    def sign(self, body: dict) -> bytes:
        request = json_format.ParseDict(body, telemetry_service_pb2.IngestTelemetryRequest())
        payload = frame_pb2.FramePayload(
            vehicle_id=request.vehicle_id, sequence=request.sequence, boot_id=request.boot_id,
            device_time=request.timestamp, kind=frame_pb2.FramePayload.KIND_POSITION, position=request.position,
            vehicle_state=request.state, sensors=request.sensors, mission_id=request.trip_id)
        return self.issued.private_key.sign(payload.SerializeToString(deterministic=True), ec.ECDSA(hashes.SHA256()))


@pytest.fixture(scope="session")
def device_url(mesh: Mesh) -> str:
    return f"https://127.0.0.1:{mesh.device_port}"


@pytest.fixture
def client_for(mesh_pki: Pki, device_url: str, tmp_path: Path):
    """``client_for(kind, name, ca=None, extra_uris=())``: a client presenting a fresh certificate (None: none)."""

    def make(kind: str | None, name: str = "", *, ca: pki.CertificateAuthority | None = None,
             extra_uris: tuple[str, ...] = ()) -> Client:
        directory = tmp_path / uuid.uuid4().hex
        directory.mkdir()
        issued = None
        if kind is not None:
            ids = [pki.identity_for(kind, name), *(Identity.parse(u) for u in extra_uris)]
            issued = pki.issue(ca or mesh_pki.ca, ids, valid_days=1)
        return Client(directory, mesh_pki.directory / "ca.pem", issued, device_url)

    return make


@pytest.fixture
def truck(client_for) -> TruckClient:
    """A fresh vehicle of the mesh's CA (new id, new certificate) per test."""
    vehicle_id = f"AU-TRK-{uuid.uuid4().hex[:8].upper()}"
    base = client_for("vehicle", vehicle_id)
    return TruckClient(base.directory, base.ca_file, base.issued, base.base_url, vehicle_id)
