"""Export a mission's evidence pack: gather from the mesh, seal with the evidence key, hand back the bytes.

What comes from where: the mission from the mission service (GetMission, tenant-checked: another carrier's
mission is NOT_FOUND), its signed frames from telemetry (ListTelemetryFrames under ``missions/{id}``), the
truck's certificates from telemetry (ListVehicleCertificates), the invoice from billing's own store, the audit
entries from the store's audit chains. The pack is built off the event loop (43k frames of a 12 h trip take a
second or two of CPU).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import redis.asyncio

from haulmesh.billing.v1 import evidence_service_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc
from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import (
    FailedPrecondition,
    HaulmeshError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TooManyAuditEntries,
    Unavailable,
    audit_entries_touching,
    carrier_metadata,
    error_info,
    parse_name,
)
from services.runtime.evidence import MAX_PACK_FRAMES, PackFrame, SealKey, build_pack

from ..config import BillingConfig
from ..store import BillingStore

__all__ = ["MAX_PACK_FRAMES", "EvidenceExport"]

_PAGE = 1000
#: Audit entries are read from this long before the mission's creation (the audit stream's ids are the store's
#: clock, the mission's times the mission service's: a skew must not drop the dispatch's own entry).
_AUDIT_CLOCK_SLACK_MS = 10 * 60 * 1000


class EvidenceExport:
    """Builds sealed evidence packs for one carrier's missions."""

    def __init__(self, store: BillingStore, redis_client: redis.asyncio.Redis, config: BillingConfig, *,
                 mission: Callable[[], mission_service_pb2_grpc.MissionServiceStub],
                 telemetry: Callable[[], telemetry_service_pb2_grpc.TelemetryServiceStub],
                 ca_file: Path) -> None:
        self._store = store
        self._redis = redis_client
        self._config = config
        self._mission = mission
        self._telemetry = telemetry
        self._ca_file = ca_file
        # A pack holds its frames in memory while it is built: bound how many are built at once.
        self._building = asyncio.Semaphore(config.evidence_max_concurrent)

    def _seal_key(self) -> SealKey:
        """Read on every export (a rotated key file is used at once); FAILED_PRECONDITION when absent."""
        cert_file, key_file = self._config.evidence_certificate_file, self._config.evidence_key_file
        try:
            return SealKey.load(cert_file.read_bytes(), key_file.read_bytes(), self._ca_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"no usable evidence key ({exc}); issue one with "
                                     "'haulmesh pki issue evidence billing'", reason="EVIDENCE_KEY_UNAVAILABLE",
                                     metadata={"setting": "HAULMESH_BILLING_EVIDENCE_CERT_FILE"}) from None

    async def export(self, carrier: str, request: evidence_service_pb2.ExportEvidencePackRequest) -> bytes:
        """The sealed pack of ``request.mission`` for ``carrier`` (at most HAULMESH_BILLING_EVIDENCE_MAX_CONCURRENT
        built at once by this process; the others wait their turn)."""
        async with self._building:
            return await self._export(carrier, request)

    async def _export(self, carrier: str, request: evidence_service_pb2.ExportEvidencePackRequest) -> bytes:
        name = request.mission
        mission_id = parse_name(name, "missions", field="mission")
        seal = self._seal_key()
        metadata = carrier_metadata(carrier)
        mission = await self._get_mission(name, metadata)
        frames = await self._frames(name, metadata)
        key_ids = {f.key_id for f in frames}
        if mission.HasField("proof_of_delivery"):
            key_ids.add(mission.proof_of_delivery.key_id)
        certificates = await self._certificates(mission.vehicle, key_ids, metadata)
        invoice = await self._store.get_invoice_of_mission(carrier, mission_id)
        touched = {name, mission.tender} | ({invoice.name} if invoice is not None else set())
        # Only this carrier's entries touching them, from the mission's creation on (nothing earlier names it).
        since = mission.create_time.ToMilliseconds() - _AUDIT_CLOCK_SLACK_MS if mission.HasField("create_time") else 0
        limit = self._config.evidence_max_audit_entries
        try:
            audit = await audit_entries_touching(self._redis, touched, carrier=carrier, since_ms=since,
                                                 max_entries=limit)
        except TooManyAuditEntries:
            raise ResourceExhausted(f"more than {limit} audit entries touch {name}, more than a pack holds",
                                    reason="EVIDENCE_TOO_LARGE",
                                    metadata={"max_audit_entries": str(limit)}) from None
        return await asyncio.to_thread(build_pack, mission=mission, frames=frames, vehicle_certificates=certificates,
                                       invoice=invoice, audit_entries=audit, seal=seal)

    async def _get_mission(self, name: str, metadata: tuple[tuple[str, str], ...]) -> mission_pb2.Mission:
        try:
            return await self._mission().GetMission(mission_service_pb2.GetMissionRequest(name=name),
                                                    metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"{name} does not exist", reason="MISSION_NOT_FOUND", metadata={"name": name}) from None
            raise _peer_error("mission", exc) from None

    async def _frames(self, name: str, metadata: tuple[tuple[str, str], ...]) -> list[PackFrame]:
        frames: list[PackFrame] = []
        token = ""
        while True:
            try:
                page = await self._telemetry().ListTelemetryFrames(
                    telemetry_service_pb2.ListTelemetryFramesRequest(parent=name, page_size=_PAGE, page_token=token),
                    metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                raise _peer_error("telemetry", exc) from None
            for frame in page.telemetry_frames:
                signed = frame.signed_frame
                frames.append(PackFrame(signed.sequence, signed.payload, signed.signature, signed.key_id,
                                        frame.receive_time.ToJsonString()))
            if len(frames) > MAX_PACK_FRAMES:
                raise ResourceExhausted(f"{name} has more than {MAX_PACK_FRAMES} frames, more than a pack holds",
                                        reason="EVIDENCE_TOO_LARGE", metadata={"max_frames": str(MAX_PACK_FRAMES)})
            token = page.next_page_token
            if not token:
                return frames

    async def _certificates(self, vehicle: str, key_ids: set[str],
                            metadata: tuple[tuple[str, str], ...]) -> list[bytes]:
        try:
            listed = await self._telemetry().ListVehicleCertificates(
                telemetry_service_pb2.ListVehicleCertificatesRequest(parent=vehicle), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise _peer_error("telemetry", exc) from None
        by_key = {c.key_id: c.certificate_pem.encode() for c in listed.certificates}
        missing = sorted(key_ids - by_key.keys())
        if missing:
            raise FailedPrecondition(f"the certificate of {vehicle}'s key {missing[0][:16]}… is unknown; the pack "
                                     "could not be verified", reason="EVIDENCE_INCOMPLETE",
                                     metadata={"key_id": missing[0]})
        return [by_key[k] for k in sorted(key_ids)]


def _peer_error(peer: str, exc: grpc.aio.AioRpcError) -> HaulmeshError:
    """A peer's refusal of what the caller sent stays the caller's error; anything else is UNAVAILABLE."""
    info = error_info(exc)
    reason = info.reason if info is not None and info.reason else ""
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(exc.details() or "invalid request", reason=reason or "INVALID_ARGUMENT")
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return NotFound(exc.details() or "not found", reason=reason or "NOT_FOUND")
    return Unavailable(f"the {peer} service did not answer ({exc.code().name}: {exc.details()})",
                       reason="EVIDENCE_SOURCE_UNAVAILABLE", metadata={"service": peer, "cause": exc.code().name})
