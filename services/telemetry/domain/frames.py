"""Frame rules: verification (size, key, signature, vehicle, sequence, clock window) and the sequencing rules
(duplicates, gaps, order within a batch). Plain Python: no gRPC, no Redis, no I/O.

The stream use cases (usecases/stream.py) and the store's commit script (store.py) apply these; the derived
events (geofence, ETA, liveness) are in tracking.py and its neighbours.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError

from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import signing_key_id

if TYPE_CHECKING:
    from ..config import TelemetryConfig

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_SIGNATURE_BYTES",
    "BatchPlan",
    "FrameRejected",
    "RejectReason",
    "VehicleKey",
    "Verified",
    "key_id_of",
    "order_batch",
    "plan_sequences",
    "vehicle_key",
    "verify_frame",
]

#: SignedFrame.payload bound (frame.proto: "At most 64 KiB").
MAX_PAYLOAD_BYTES = 64 * 1024
#: A DER ECDSA P-256 signature is at most 72 bytes (frame.proto).
MAX_SIGNATURE_BYTES = 72


class RejectReason(enum.Enum):
    """Why a frame is refused; the names are Reject.Reason without its ``REASON_`` prefix."""

    BAD_SIGNATURE = "BAD_SIGNATURE"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    VEHICLE_MISMATCH = "VEHICLE_MISMATCH"
    SEQUENCE_MISMATCH = "SEQUENCE_MISMATCH"
    CLOCK_SKEW = "CLOCK_SKEW"
    FRAME_TOO_OLD = "FRAME_TOO_OLD"
    MALFORMED = "MALFORMED"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    OUT_OF_ORDER = "OUT_OF_ORDER"
    SEQUENCE_PASSED = "SEQUENCE_PASSED"


@dataclass(frozen=True)
class FrameRejected:
    """A refused frame: its envelope sequence, the reason, and a detail for logs."""

    sequence: int
    reason: RejectReason
    detail: str


@dataclass(frozen=True)
class Verified:
    """A frame whose signature, vehicle, sequence and time checked out; ``payload`` is decoded."""

    sequence: int
    payload_bytes: bytes
    signature: bytes
    key_id: str
    payload: frame_pb2.FramePayload


@dataclass(frozen=True)
class VehicleKey:
    """The public key of one vehicle certificate, named as frame.proto names it; ``certificate_pem`` is the
    certificate itself when it is at hand (the stream's peer), empty for a key restored from its SPKI."""

    key_id: str
    public_key: ec.EllipticCurvePublicKey
    spki_der: bytes
    certificate_pem: bytes = b""


#: SignedFrame.key_id of a DER SubjectPublicKeyInfo (the runtime's rule, shared with proof of delivery).
key_id_of = signing_key_id


@functools.lru_cache(maxsize=16384)
def vehicle_key(cert_pem: bytes) -> VehicleKey:
    """The key of a vehicle certificate (PEM). Cached: a stream presents the same certificate each time.

    Raises ValueError when the certificate does not carry a P-256 key (frames could never verify).
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = key_from_spki(cert.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return dataclasses.replace(key, certificate_pem=cert_pem)


@functools.lru_cache(maxsize=16384)
def key_from_spki(spki_der: bytes) -> VehicleKey:
    """A VehicleKey from a stored DER SubjectPublicKeyInfo (keys of a vehicle's earlier certificates)."""
    public_key = serialization.load_der_public_key(spki_der)
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise ValueError("vehicle certificate key is not ECDSA P-256")
    return VehicleKey(key_id_of(spki_der), public_key, spki_der)


_SIGNATURE_ALGORITHM = ec.ECDSA(hashes.SHA256())


def verify_frame(sequence: int, payload: bytes, signature: bytes, key_id: str, *, vehicle_id: str,
                 keys: Mapping[str, VehicleKey], now_seconds: float,
                 config: TelemetryConfig, require_boot_id: bool = True) -> Verified | FrameRejected:
    """Check one SignedFrame against the caller's vehicle and keys; never raises for bad input.

    ``require_boot_id`` is False only for IngestTelemetry, whose JSON shape makes the boot id optional.

    The cheap checks run before the signature (the expensive one) so a flood of junk costs little; the
    payload is decoded only after the signature verified, so nothing unauthenticated is ever parsed.
    """
    def reject(reason: RejectReason, detail: str) -> FrameRejected:
        return FrameRejected(sequence, reason, detail)

    if len(payload) > MAX_PAYLOAD_BYTES:
        return reject(RejectReason.FRAME_TOO_LARGE, f"payload is {len(payload)} bytes, at most {MAX_PAYLOAD_BYTES}")
    if sequence <= 0:
        return reject(RejectReason.MALFORMED, "sequence must be at least 1")
    if not payload or not signature:
        return reject(RejectReason.MALFORMED, "payload and signature are required")
    key = keys.get(key_id)
    if key is None:
        return reject(RejectReason.UNKNOWN_KEY, f"key_id {key_id[:80]!r} names no key of vehicle {vehicle_id}")
    if len(signature) > MAX_SIGNATURE_BYTES:
        return reject(RejectReason.BAD_SIGNATURE, f"signature is {len(signature)} bytes, at most {MAX_SIGNATURE_BYTES}")
    try:
        key.public_key.verify(signature, payload, _SIGNATURE_ALGORITHM)
    except (InvalidSignature, ValueError):
        return reject(RejectReason.BAD_SIGNATURE, "signature does not verify over the payload")
    decoded = frame_pb2.FramePayload()
    try:
        decoded.ParseFromString(payload)
    except DecodeError:
        return reject(RejectReason.MALFORMED, "payload is not a FramePayload")
    missing = [name for name, ok in (("vehicle_id", decoded.vehicle_id),
                                     ("boot_id", decoded.boot_id or not require_boot_id),
                                     ("device_time", decoded.HasField("device_time")),
                                     ("kind", decoded.kind != frame_pb2.FramePayload.KIND_UNSPECIFIED)) if not ok]
    if missing:
        return reject(RejectReason.MALFORMED, f"payload lacks {', '.join(missing)}")
    invalid = _invalid_fields(decoded)
    if invalid:
        return reject(RejectReason.MALFORMED, f"payload has invalid {', '.join(invalid)}")
    if decoded.vehicle_id != vehicle_id:
        return reject(RejectReason.VEHICLE_MISMATCH,
                      f"payload vehicle {decoded.vehicle_id[:80]!r} is not the certificate's {vehicle_id}")
    if decoded.sequence != sequence:
        return reject(RejectReason.SEQUENCE_MISMATCH,
                      f"payload sequence {decoded.sequence} differs from envelope sequence {sequence}")
    device_seconds = decoded.device_time.seconds + decoded.device_time.nanos / 1e9
    if device_seconds > now_seconds + config.clock_skew_seconds:
        return reject(RejectReason.CLOCK_SKEW, f"device_time is {device_seconds - now_seconds:.0f}s ahead of the "
                      f"server, tolerance {config.clock_skew_seconds:.0f}s")
    if device_seconds < now_seconds - config.max_frame_age_seconds:
        return reject(RejectReason.FRAME_TOO_OLD, f"device_time is {now_seconds - device_seconds:.0f}s old, at "
                      f"most {config.max_frame_age_seconds:.0f}s")
    return Verified(sequence, payload, signature, key_id, decoded)


def _invalid_fields(payload: frame_pb2.FramePayload) -> list[str]:
    """The fields whose value frame.proto rules out. A stored frame is read again and again (the tracker, the
    reads and the archive, billing's miles, evidence packs), so such a frame would poison every later reader:
    a Timestamp whose nanos are out of range raises when converted, and a non-finite or out-of-range
    coordinate turns the miles on an invoice into NaN. Found by the frame fuzz target (tests/telemetry/fuzz)."""
    invalid = []
    if not 0 <= payload.device_time.nanos <= 999_999_999:
        invalid.append("device_time.nanos")
    if payload.HasField("position"):
        p = payload.position
        if not (math.isfinite(p.lat) and -90 <= p.lat <= 90):
            invalid.append("position.lat")
        if not (math.isfinite(p.lon) and -180 <= p.lon <= 180):
            invalid.append("position.lon")
        # frame.proto: speed >= 0, heading in [0, 360), accuracy >= 0 (0 = unknown); NaN fails every comparison.
        if not (math.isfinite(p.speed_kph) and p.speed_kph >= 0):
            invalid.append("position.speed_kph")
        if not 0 <= p.heading_deg < 360:
            invalid.append("position.heading_deg")
        if not (math.isfinite(p.accuracy_meters) and p.accuracy_meters >= 0):
            invalid.append("position.accuracy_meters")
    if not math.isfinite(payload.odometer_miles):
        invalid.append("odometer_miles")
    return invalid


def order_batch(sequences: list[int]) -> list[bool]:
    """Which envelope sequences of a batch are in order (strictly greater than the previous in-order one).

    A frame out of order within its batch is refused (OUT_OF_ORDER) rather than reordered: the truck sends
    ascending, so anything else is a bug or tampering, and the rest of the batch still goes through.
    """
    result, previous = [], 0
    for sequence in sequences:
        ok = sequence > previous
        result.append(ok)
        if ok:
            previous = sequence
    return result


@dataclass(frozen=True)
class BatchPlan:
    """What a batch of verified, ascending frames does to a vehicle's log."""

    store: list[int]
    duplicates: list[int]
    lost: int
    high_water: int
    #: At or below the mark but never stored (passed over by another commit): refused, never acknowledged.
    passed: list[int] = dataclasses.field(default_factory=list)


def plan_sequences(high_water: int, sequences: list[int], stored: Collection[int] | None = None,
                   archived: int = 0) -> BatchPlan:
    """Apply the sequencing rules to ascending ``sequences`` given the stored high-water mark.

    At or below the mark: a duplicate (acknowledged, not stored again) if it is in ``stored`` or at or below
    the ``archived`` watermark (``stored`` None: every sequence below the mark counts as stored); otherwise
    passed: a concurrent commit stored a later frame first, so it can never be stored, and must not be
    acknowledged as if it were (it was counted lost as the gap it left). Above: stored, and every skipped
    sequence since the mark counts as lost (sequences start at 1, so a first frame 5 means 4 lost). The
    store runs the same rule atomically (its Lua script); this is the reference the tests check it against.
    """
    store, duplicates, passed, lost = [], [], [], 0
    for sequence in sequences:
        if sequence <= high_water:
            if stored is None or sequence in stored or sequence <= archived:
                duplicates.append(sequence)
            else:
                passed.append(sequence)
            continue
        lost += sequence - high_water - 1
        store.append(sequence)
        high_water = sequence
    return BatchPlan(store, duplicates, lost, high_water, passed)
