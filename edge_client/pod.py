"""Proof of delivery, built and signed on the truck from its own telemetry log.

At hand-over the truck signs a DeliveryManifest (protos/haulmesh/mission/v1/mission.proto) naming the mission,
itself, the load, where and when, the photos by reference (URI and SHA-256, never the bytes), and the digest of
its telemetry log: every frame it recorded for the mission (the spool's mission log, kept after the acks), from
the first sequence to the last. The mission service recomputes the digest from the frames it stored and refuses
a proof that disagrees, or records it DISPUTED when frames are missing; so the truck submits only once the server
has acked every frame of the range (:func:`wait_until_acked`), else its own proof would look disputed.

The digest rule is a copy of services/runtime/metering.py's (edge_client imports only the generated contracts);
tests/contracts/pod_telemetry_log_vector.json is checked against both.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc
from haulmesh.telemetry.v1 import frame_pb2
from haulmesh.type.v1 import location_pb2

from .signer import Signer
from .spool import Spool

__all__ = ["Photo", "PodError", "build_proof", "submit_proof", "telemetry_log_sha256", "wait_until_acked"]

#: What mission.proto allows: photos per proof, characters of a name and a URI.
MAX_PHOTOS, MAX_RECEIVED_BY, MAX_URI = 20, 200, 2048


class PodError(Exception):
    """The proof cannot be built or submitted (no log for the mission, frames not acked in time, bad input)."""


@dataclass(frozen=True)
class Photo:
    """A delivery photo stored elsewhere, by reference: its https:// or s3:// URI and the SHA-256 of its bytes."""

    uri: str
    sha256: str
    content_type: str = ""


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


def _ts(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


def _check_photos(photos: Sequence[Photo]) -> None:
    if len(photos) > MAX_PHOTOS:
        raise PodError(f"at most {MAX_PHOTOS} photos")
    for photo in photos:
        if not photo.uri.startswith(("https://", "s3://")) or len(photo.uri) > MAX_URI:
            raise PodError(f"photo {photo.uri!r}: an https:// or s3:// URI of at most {MAX_URI} characters")
        if len(photo.sha256) != 64 or any(c not in "0123456789abcdef" for c in photo.sha256):
            raise PodError(f"photo {photo.uri!r}: sha256 must be 64 lowercase hex characters")


def build_proof(spool: Spool, signer: Signer, *, vehicle_id: str, mission_id: str, tms_load_id: str = "",
                deliver_time: datetime | None = None, location: tuple[float, float] | None = None,
                seal_number: str = "", received_by: str = "",
                photos: Sequence[Photo] = ()) -> mission_pb2.ProofOfDelivery:
    """The signed proof of delivery of ``mission_id`` from the truck's own mission log.

    Defaults come from the truck's records: the load number from the accepted assignment, the deliver time and
    place from the last position it recorded for the mission. PodError when there is nothing to prove.
    """
    if len(received_by) > MAX_RECEIVED_BY:
        raise PodError(f"received_by: at most {MAX_RECEIVED_BY} characters")
    _check_photos(photos)
    log = spool.mission_log(mission_id)
    if not log:
        raise PodError(f"the spool holds no frame recorded for mission {mission_id}")
    if not tms_load_id:
        assignment = spool.assignment(mission_id)
        tms_load_id = assignment.load.tms_load_id if assignment is not None else ""
    if not tms_load_id:
        raise PodError(f"no load number for mission {mission_id}: no assignment on record; give it explicitly")
    last_fix = next((p for p in (frame_pb2.FramePayload.FromString(raw) for _, raw in reversed(log))
                     if p.HasField("position")), None)
    if location is None:
        if last_fix is None:
            raise PodError(f"no position recorded for mission {mission_id}; give the delivery location")
        location = (last_fix.position.lat, last_fix.position.lon)
    if deliver_time is None:
        # The truck's clock at its last reading of the mission (device time, as every frame's).
        deliver_time = (last_fix.device_time.ToDatetime(tzinfo=UTC) if last_fix is not None
                        else datetime.now(UTC))
    manifest = mission_pb2.DeliveryManifest(
        mission_id=mission_id, vehicle_id=vehicle_id, tms_load_id=tms_load_id, deliver_time=_ts(deliver_time),
        location=location_pb2.Location(lat=location[0], lon=location[1]), seal_number=seal_number,
        received_by=received_by, telemetry_log_sha256=telemetry_log_sha256(raw for _, raw in log),
        telemetry_first_sequence=log[0][0], telemetry_last_sequence=log[-1][0],
        photo_sha256=[p.sha256 for p in photos]).SerializeToString(deterministic=True)
    return mission_pb2.ProofOfDelivery(
        manifest=manifest, manifest_signature=signer.sign(manifest), key_id=signer.key_id,
        photos=[mission_pb2.PhotoReference(uri=p.uri, sha256=p.sha256, content_type=p.content_type)
                for p in photos])


async def wait_until_acked(spool: Spool, through_sequence: int, *, timeout_seconds: float,
                           poll_seconds: float = 0.2) -> None:
    """Returns once the server has acked every frame up to ``through_sequence`` (the spool let go of them);
    PodError after ``timeout_seconds`` (a proof over frames the server lacks would be recorded DISPUTED)."""
    deadline = time.monotonic() + timeout_seconds
    while not await asyncio.to_thread(spool.acked_through, through_sequence):
        if time.monotonic() >= deadline:
            raise PodError(f"frames up to #{through_sequence} not acked by the server within {timeout_seconds:g} s")
        await asyncio.sleep(poll_seconds)


async def submit_proof(channel: grpc.aio.Channel, mission_id: str, proof: mission_pb2.ProofOfDelivery, *,
                       timeout_seconds: float = 30.0) -> mission_pb2.Mission:
    """SubmitProofOfDelivery as the truck (the channel's mTLS identity) for ``missions/{mission_id}``."""
    stub = mission_service_pb2_grpc.MissionServiceStub(channel)
    return await stub.SubmitProofOfDelivery(
        mission_service_pb2.SubmitProofOfDeliveryRequest(name=f"missions/{mission_id}", proof_of_delivery=proof),
        timeout=timeout_seconds)
