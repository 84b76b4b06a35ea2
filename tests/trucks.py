"""The one test truck: a vehicle with a real certificate of a test CA, that signs frames with its key and opens
mTLS channels as itself (the ``truck`` fixture of tests/conftest.py makes one per test)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from services.runtime import pki
from services.telemetry.domain import key_id_of

__all__ = ["Truck", "position_payload", "signed_frames"]

_ECDSA = ec.ECDSA(hashes.SHA256())


def position_payload(*, device_time: float | None = None, **fields: object) -> bytes:
    """A serialized KIND_POSITION FramePayload with ``fields`` (vehicle_id, sequence and boot_id among them)."""
    payload = frame_pb2.FramePayload(**{"kind": frame_pb2.FramePayload.KIND_POSITION, "vehicle_state": "enroute",
                                        **fields})
    payload.device_time.FromNanoseconds(int((device_time if device_time is not None else time.time()) * 1e9))
    payload.position.lat, payload.position.lon, payload.position.speed_kph = 30.2, -97.7, 88.5
    return payload.SerializeToString(deterministic=True)


def signed_frames(vehicle_id: str, boot_id: str, private_key_pem: bytes, key_id: str, count: int) -> list[bytes]:
    """Serialized SignedFrames 1..``count`` of a truck, stamped now. Plain arguments, so a process pool can make
    them: a test's fleet signs up front, as each truck's own TPM would, and not on the cores the test measures."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    frames = []
    for sequence in range(1, count + 1):
        payload = position_payload(vehicle_id=vehicle_id, sequence=sequence, boot_id=boot_id)
        frames.append(frame_pb2.SignedFrame(sequence=sequence, payload=payload, signature=key.sign(payload, _ECDSA),
                                            key_id=key_id).SerializeToString())
    return frames


@dataclass
class Truck:
    """A vehicle with a real certificate: signs frames with its key and opens mTLS channels."""

    vehicle_id: str
    issued: pki.IssuedCertificate
    ca_pem: bytes
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @classmethod
    def mint(cls, ca: pki.CertificateAuthority, vehicle_id: str | None = None) -> Truck:
        vehicle_id = vehicle_id or f"AU-TRK-{uuid.uuid4().hex[:8]}"
        return cls(vehicle_id, pki.issue(ca, pki.identity_for("vehicle", vehicle_id), valid_days=1),
                   ca.certificate_pem)

    @property
    def key_id(self) -> str:
        return key_id_of(self.issued.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem, private_key=self.issued.private_key_pem,
                                            certificate_chain=self.issued.certificate_pem)

    def payload(self, sequence: int, *, device_time: float | None = None, **overrides: object) -> bytes:
        """A serialized KIND_POSITION FramePayload of this truck (fields overridable)."""
        return position_payload(device_time=device_time, **{"vehicle_id": self.vehicle_id, "sequence": sequence,
                                                            "boot_id": self.boot_id, **overrides})

    def sign(self, payload: bytes) -> bytes:
        return self.issued.private_key.sign(payload, _ECDSA)

    def frame(self, sequence: int, **overrides: object) -> frame_pb2.SignedFrame:
        payload = self.payload(sequence, **overrides)
        return frame_pb2.SignedFrame(sequence=sequence, payload=payload, signature=self.sign(payload),
                                     key_id=self.key_id)

    def hello(self, last_sequence: int = 0) -> stream_pb2.StreamTelemetryRequest:
        return stream_pb2.StreamTelemetryRequest(hello=stream_pb2.Hello(
            vehicle_id=self.vehicle_id, boot_id=self.boot_id, last_sequence=last_sequence, client_version="test"))
