"""Proof of delivery: the signed manifest checked against the truck's certificate and the mission."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError

from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import (
    FieldViolation,
    InvalidArgument,
    certificate_key_id,
    from_timestamp,
    to_timestamp,
)
from services.runtime.metering import missing_sequences, telemetry_log_sha256

from .changes import move
from .checks import raise_if
from .lifecycle import Action, mission_status, transition

# --- Proof of delivery -------------------------------------------------------------------------------

def key_id_of(certificate_pem: bytes) -> str:
    """Lowercase hex SHA-256 of the certificate's DER SubjectPublicKeyInfo (the frames' key id)."""
    return certificate_key_id(certificate_pem)


def verify_manifest_signature(certificate_pem: bytes, manifest: bytes, signature: bytes, key_id: str) -> None:
    """INVALID_ARGUMENT POD_SIGNATURE_INVALID unless ``signature`` is the certificate key's ECDSA P-256 /
    SHA-256 signature over exactly ``manifest`` and ``key_id`` names that key."""
    def invalid(why: str, path: str) -> InvalidArgument:
        return InvalidArgument(f"proof of delivery rejected: {why}", reason="POD_SIGNATURE_INVALID",
                               violations=[FieldViolation(f"proof_of_delivery.{path}", why)])

    cert = x509.load_pem_x509_certificate(certificate_pem)
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise invalid("the vehicle certificate key is not ECDSA P-256", "key_id")
    if key_id != key_id_of(certificate_pem):
        raise invalid("key_id is not the vehicle certificate's key", "key_id")
    try:
        public_key.verify(signature, manifest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise invalid("the signature does not verify over the manifest bytes", "manifest_signature") from None


@dataclass(frozen=True)
class ManifestFacts:
    """The parts of a decoded DeliveryManifest the rules check."""

    mission_id: str
    vehicle_id: str
    tms_load_id: str
    photo_sha256: tuple[str, ...]
    deliver_time: datetime | None
    telemetry_log_sha256: str = ""
    telemetry_first_sequence: int = 0
    telemetry_last_sequence: int = 0


_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def check_manifest(facts: ManifestFacts, *, mission_id: str, vehicle_id: str, tms_load_id: str,
                   photo_sha256: Sequence[str]) -> None:
    """The manifest must name this mission, its vehicle and load, and list the photos' digests in order."""
    problems = []
    if facts.mission_id != mission_id:
        problems.append(FieldViolation("proof_of_delivery.manifest", "names another mission"))
    if facts.vehicle_id != vehicle_id:
        problems.append(FieldViolation("proof_of_delivery.manifest", "names another vehicle"))
    if facts.tms_load_id != tms_load_id:
        problems.append(FieldViolation("proof_of_delivery.manifest", "names another load"))
    if facts.deliver_time is None:
        problems.append(FieldViolation("proof_of_delivery.manifest", "deliver_time is required"))
    if tuple(photo_sha256) != facts.photo_sha256:
        problems.append(FieldViolation("proof_of_delivery.photos", "sha256 values differ from the manifest's"))
    problems += telemetry_range_violations(facts)
    if problems:
        raise InvalidArgument("the delivery manifest does not match the mission", reason="POD_SIGNATURE_INVALID",
                              violations=problems)


#: Most frames one proof of delivery may cover (a day at 1 Hz is 86,400): the server reads them all to check it.
MAX_POD_FRAMES = 500_000


def telemetry_range_violations(facts: ManifestFacts) -> list[FieldViolation]:
    """The manifest's telemetry log fields: a lowercase hex SHA-256 over sequences first..last (first >= 1)."""
    problems = []
    if not _SHA256_HEX.fullmatch(facts.telemetry_log_sha256):
        problems.append(FieldViolation("proof_of_delivery.manifest", "telemetry_log_sha256: 64 lowercase hex"))
    first, last = facts.telemetry_first_sequence, facts.telemetry_last_sequence
    if not 1 <= first <= last:
        problems.append(FieldViolation("proof_of_delivery.manifest",
                                       "telemetry_first_sequence must be >= 1 and <= telemetry_last_sequence"))
    elif last - first + 1 > MAX_POD_FRAMES:
        problems.append(FieldViolation("proof_of_delivery.manifest",
                                       f"the telemetry log covers at most {MAX_POD_FRAMES} sequences"))
    return problems


def verify_telemetry_log(manifest: mission_pb2.DeliveryManifest, payloads: Sequence[bytes],
                         now: datetime, *, earlier_frames: bool = False) -> mission_pb2.TelemetryVerification:
    """The manifest's telemetry log digest against ``payloads``, the mission's stored frames in its range.

    Every sequence of the range stored: the recomputed digest must equal the manifest's (VERIFIED), else
    INVALID_ARGUMENT POD_TELEMETRY_HASH_MISMATCH naming the range. Sequences missing (lost, or not yet
    stored): the digest cannot be confirmed, so the proof is recorded DISPUTED with the count, never trusted.
    ``earlier_frames``: telemetry stored frames of the mission before the range's first sequence, so the signed
    log leaves out part of the mission (DISPUTED ``LOG_INCOMPLETE``: the digest matches, the log is not whole).
    """
    first, last = manifest.telemetry_first_sequence, manifest.telemetry_last_sequence
    in_range = [p for p in payloads if first <= frame_pb2.FramePayload.FromString(p).sequence <= last]
    sequences = {frame_pb2.FramePayload.FromString(p).sequence for p in in_range}
    missing = missing_sequences(sequences, first, last)
    recomputed = telemetry_log_sha256(in_range)
    result = mission_pb2.TelemetryVerification(recomputed_sha256=recomputed, frames_stored=len(sequences),
                                               frames_missing=missing, verify_time=to_timestamp(now))
    if missing:
        result.result, result.reason = mission_pb2.TelemetryVerification.RESULT_DISPUTED, "FRAMES_MISSING"
        return result
    if recomputed != manifest.telemetry_log_sha256:
        raise InvalidArgument(
            f"the proof's telemetry log digest does not match the stored frames #{first}..#{last} "
            f"({len(sequences)} frames, sha256 {recomputed})", reason="POD_TELEMETRY_HASH_MISMATCH",
            metadata={"first_sequence": str(first), "last_sequence": str(last), "recomputed_sha256": recomputed},
            violations=[FieldViolation("proof_of_delivery.manifest",
                                       f"telemetry_log_sha256 differs from the stored frames #{first}..#{last}")])
    if earlier_frames:
        result.result, result.reason = mission_pb2.TelemetryVerification.RESULT_DISPUTED, "LOG_INCOMPLETE"
        return result
    result.result, result.reason = mission_pb2.TelemetryVerification.RESULT_VERIFIED, "TELEMETRY_LOG_MATCHES"
    return result


def validate_photo_digest(value: str) -> bool:
    return bool(_SHA256_HEX.fullmatch(value))


#: Largest signed DeliveryManifest a truck may submit.
MAX_MANIFEST_BYTES = 64 * 1024


def validate_proof(proof: mission_pb2.ProofOfDelivery) -> None:
    """INVALID_ARGUMENT unless the proof's fields are well-formed (the signature is checked later)."""
    problems = []
    if not proof.manifest or len(proof.manifest) > MAX_MANIFEST_BYTES:
        problems.append(FieldViolation("proof_of_delivery.manifest", "1 byte to 64 KiB"))
    if not proof.manifest_signature:
        problems.append(FieldViolation("proof_of_delivery.manifest_signature", "is required"))
    if not validate_photo_digest(proof.key_id):
        problems.append(FieldViolation("proof_of_delivery.key_id", "64 lowercase hex characters"))
    if len(proof.photos) > 20:
        problems.append(FieldViolation("proof_of_delivery.photos", "at most 20"))
    for i, photo in enumerate(proof.photos):
        if not photo.uri.startswith(("https://", "s3://")) or len(photo.uri) > 2048:
            problems.append(FieldViolation(f"proof_of_delivery.photos[{i}].uri", "an https:// or s3:// URI"))
        if not validate_photo_digest(photo.sha256):
            problems.append(FieldViolation(f"proof_of_delivery.photos[{i}].sha256", "64 lowercase hex"))
    raise_if(problems)


def read_manifest(proof: mission_pb2.ProofOfDelivery, certificate_pem: bytes) -> mission_pb2.DeliveryManifest:
    """The manifest of a proof whose signature the vehicle's certificate verifies; INVALID_ARGUMENT
    POD_SIGNATURE_INVALID otherwise."""
    verify_manifest_signature(certificate_pem, proof.manifest, proof.manifest_signature, proof.key_id)
    try:
        return mission_pb2.DeliveryManifest.FromString(proof.manifest)
    except DecodeError:
        raise InvalidArgument("the manifest is not a DeliveryManifest", reason="POD_SIGNATURE_INVALID",
                              violations=[FieldViolation("proof_of_delivery.manifest", "not decodable")]) from None


def manifest_facts(manifest: mission_pb2.DeliveryManifest) -> ManifestFacts:
    """The checked parts of a decoded manifest."""
    return ManifestFacts(manifest.mission_id, manifest.vehicle_id, manifest.tms_load_id, tuple(manifest.photo_sha256),
                         from_timestamp(manifest.deliver_time), manifest.telemetry_log_sha256,
                         manifest.telemetry_first_sequence, manifest.telemetry_last_sequence)


def deliver(mission: mission_pb2.Mission, proof: mission_pb2.ProofOfDelivery,
            manifest: mission_pb2.DeliveryManifest, now: datetime,
            verification: mission_pb2.TelemetryVerification | None = None) -> bool:
    """Record the proof (its manifest must match the mission) with its telemetry verification and move
    ARRIVED → DELIVERED; False when already delivered. The last stop is departed at delivery (never before
    its arrival)."""
    after = transition(mission_status(mission), Action.DELIVER)
    if after is None:
        return False
    check_manifest(
        manifest_facts(manifest),
        mission_id=mission.name.removeprefix("missions/"), vehicle_id=mission.vehicle.removeprefix("vehicles/"),
        tms_load_id=mission.load.tms_load_id, photo_sha256=[p.sha256 for p in proof.photos])
    recorded = mission.proof_of_delivery
    recorded.CopyFrom(proof)
    recorded.manifest_details.CopyFrom(manifest)
    recorded.submit_time.CopyFrom(to_timestamp(now))
    if verification is not None:
        recorded.telemetry_verification.CopyFrom(verification)
    last = mission.stops[-1]
    delivered = from_timestamp(manifest.deliver_time)
    assert delivered is not None  # check_manifest refused a manifest without one
    last.depart_time.CopyFrom(to_timestamp(max(delivered, from_timestamp(last.arrive_time) or delivered)))
    move(mission, after)
    return True


# --- A DISPUTED proof before billing ------------------------------------------------------------------

#: What the billing hand-off does with a delivered mission's proof (:func:`billing_gate`).
BILL, WAIT, ESCALATE = "BILL", "WAIT", "ESCALATE"
#: Disputes no late frame can settle: the stored frames contradict the digest, or the signed log leaves out
#: frames of the mission stored before it. Escalated at once.
_LASTING_DISPUTES = frozenset({"TELEMETRY_HASH_MISMATCH", "LOG_INCOMPLETE"})


def billing_gate(verification: mission_pb2.TelemetryVerification, submitted: datetime | None, now: datetime,
                 dispute_seconds: float) -> str:
    """BILL a proof whose log verified (or was never checked: no telemetry wired); WAIT on a DISPUTED one
    (late frames of a spool replay may still complete the range; the sweeper re-verifies) until
    ``dispute_seconds`` after its submission, then ESCALATE: an operator decides, never a silent bill. A log
    the stored frames contradict (TELEMETRY_HASH_MISMATCH, found on a re-check) or that leaves out earlier frames
    of the mission (LOG_INCOMPLETE) escalates at once: waiting cannot settle it."""
    if verification.result != mission_pb2.TelemetryVerification.RESULT_DISPUTED:
        return BILL
    if verification.reason in _LASTING_DISPUTES:
        return ESCALATE
    if submitted is not None and (now - submitted).total_seconds() >= dispute_seconds:
        return ESCALATE
    return WAIT


def reverify_telemetry_log(manifest: mission_pb2.DeliveryManifest, payloads: Sequence[bytes],
                           now: datetime, *, earlier_frames: bool = False) -> mission_pb2.TelemetryVerification:
    """:func:`verify_telemetry_log` for a proof already recorded (the billing sweeper's re-check): a digest
    the now complete frames contradict is not refused (the proof is on file) but recorded DISPUTED
    ``TELEMETRY_HASH_MISMATCH``, which :func:`billing_gate` escalates."""
    try:
        return verify_telemetry_log(manifest, payloads, now, earlier_frames=earlier_frames)
    except InvalidArgument:
        first, last = manifest.telemetry_first_sequence, manifest.telemetry_last_sequence
        in_range = [p for p in payloads if first <= frame_pb2.FramePayload.FromString(p).sequence <= last]
        return mission_pb2.TelemetryVerification(
            result=mission_pb2.TelemetryVerification.RESULT_DISPUTED, reason="TELEMETRY_HASH_MISMATCH",
            recomputed_sha256=telemetry_log_sha256(in_range), frames_stored=len(in_range), frames_missing=0,
            verify_time=to_timestamp(now))
