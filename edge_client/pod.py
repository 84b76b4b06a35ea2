"""Proof of delivery, built and signed on the truck (placeholder: the digest rule; the builder follows)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from haulmesh.telemetry.v1 import frame_pb2

__all__ = ["telemetry_log_sha256"]


def telemetry_log_sha256(payloads: Iterable[bytes]) -> str:
    """Lowercase hex SHA-256 of a telemetry log (mission.proto, DeliveryManifest.telemetry_log_sha256): over
    the serialized FramePayloads in ascending sequence, each once, (4-byte big-endian length || bytes).
    A copy of services/runtime/metering.py's rule (edge_client may not import services); the shared vector
    tests/contracts/pod_telemetry_log_vector.json keeps the two equal."""
    by_sequence: dict[int, bytes] = {}
    for raw in payloads:
        sequence = frame_pb2.FramePayload.FromString(raw).sequence
        if by_sequence.setdefault(sequence, bytes(raw)) != raw:
            raise ValueError(f"two different payloads for sequence {sequence}")
    digest = hashlib.sha256()
    for sequence in sorted(by_sequence):
        digest.update(len(by_sequence[sequence]).to_bytes(4, "big") + by_sequence[sequence])
    return digest.hexdigest()
