"""Turns readings into signed, sequenced frames in the spool: the single write path of the truck.

Every reading goes through :meth:`Recorder.record`: the spool assigns the sequence, the payload is
serialized once with that sequence, signed over exactly those bytes, and committed before ``record``
returns. Nothing is ever sent that was not spooled first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from haulmesh.telemetry.v1 import frame_pb2
from haulmesh.type.v1 import health_check_pb2

from .signer import Signer
from .spool import Spool

__all__ = ["Recorder", "pre_trip_checks"]


class Recorder:
    """Signs and spools the readings of one vehicle during one boot."""

    def __init__(self, spool: Spool, signer: Signer, vehicle_id: str, *, boot_id: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.spool = spool
        self.signer = signer
        self.vehicle_id = vehicle_id
        self.boot_id = boot_id or str(uuid.uuid4())
        self._clock = clock

    def record(self, payload: frame_pb2.FramePayload) -> int:
        """Spools ``payload`` (its vehicle, boot, sequence and, if unset, device time are filled in).

        Returns the frame's sequence once it is durable on disk.
        """
        payload.vehicle_id = self.vehicle_id
        payload.boot_id = self.boot_id
        if not payload.HasField("device_time"):
            payload.device_time.FromNanoseconds(int(self._clock() * 1e9))

        def build(sequence: int) -> bytes:
            payload.sequence = sequence
            body = payload.SerializeToString()
            return frame_pb2.SignedFrame(sequence=sequence, payload=body, signature=self.signer.sign(body),
                                         key_id=self.signer.key_id).SerializeToString()

        return self.spool.enqueue(payload.kind, build, mission_id=payload.mission_id)


def pre_trip_checks(sensors: frame_pb2.SensorStatus, *, spool_ok: bool = True,
                    clock_synced: bool = True) -> list[health_check_pb2.HealthCheckResult]:
    """The pre-trip self-checks of the edge computer, as HealthCheckResults for a KIND_HEALTH frame.

    A failed perception sensor blocks departure; a degraded one warns.
    """
    outcome = health_check_pb2.HealthCheckResult.Outcome
    results = []
    for name in ("lidar_status", "camera_health", "radar_status"):
        status = getattr(sensors, name) or "offline"
        verdict = (outcome.OUTCOME_PASS if status == "ok" else
                   outcome.OUTCOME_WARN if status == "degraded" else outcome.OUTCOME_FAIL)
        results.append(health_check_pb2.HealthCheckResult(
            check=name.split("_")[0], outcome=verdict, detail=status, blocking=verdict == outcome.OUTCOME_FAIL))
    results.append(health_check_pb2.HealthCheckResult(
        check="spool", outcome=outcome.OUTCOME_PASS if spool_ok else outcome.OUTCOME_FAIL, blocking=not spool_ok))
    results.append(health_check_pb2.HealthCheckResult(
        check="gnss_clock", outcome=outcome.OUTCOME_PASS if clock_synced else outcome.OUTCOME_WARN,
        detail="synced" if clock_synced else "free-running"))
    return results
