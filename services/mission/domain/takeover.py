"""Human takeover: an exception with contingency HUMAN_TAKEOVER hands the vehicle to a remote human operator, and
its resolution hands it back to the autonomy stack. The steps, recorded on ``MissionException.takeover``:

=====================  ===================================  ====================================================
step                   recorded when                        field
=====================  ===================================  ====================================================
hand-over asked        the exception is raised              ``request_time`` (telemetry sends ``hand_over``)
human in control       the truck confirms ``hand_over``     ``control_time`` (AcknowledgeMissionTakeover
                                                            HAND_OVER, the truck's time)
hand-back asked        the exception is resolved            ``hand_back_request_time`` (telemetry sends
                                                            ``hand_back``)
autonomy in control    the truck confirms ``hand_back``     ``hand_back_time`` (AcknowledgeMissionTakeover
                                                            HAND_BACK, the truck's time)
step refused           the truck answers REJECTED / FAILED  ``hand_over_refusal`` / ``hand_back_refusal`` (the
                                                            same call with ``refusal``; the latest kept)
=====================  ===================================  ====================================================

The mission's state is the lifecycle's (lifecycle.py): EXCEPTION while the exception is open, its resume state once
the last one is resolved; a confirmation moves nothing. Any resolution asks for the hand-back (an operator's, passing
pre-trip checks, the mission's cancel or abort): the takeover is over, and the truck's autonomy stack, which decides
whether it is safe to drive, takes control back. A confirmation repeated changes nothing; one that was not asked for
(a hand-back before the resolution, a hand-over after the hand-back) or names an exception without a takeover is
refused with TAKEOVER_STEP_NOT_REQUESTED, which the telemetry service logs and drops. A refusal is recorded so that
the command centre sees it (a hand-back refused leaves the truck in a state nobody confirmed: the console alerts);
one that comes after the step was confirmed is stale and changes nothing.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from haulmesh.mission.v1 import mission_pb2
from services.runtime import FailedPrecondition, FieldViolation, to_timestamp
from services.runtime.limits import MAX_TAKEOVER_REFUSAL

from .checks import raise_if, text_violations
from .enums import Contingency, TakeoverStep

__all__ = ["acknowledge_takeover", "request_hand_back", "start_takeover", "validate_takeover_ack"]


def start_takeover(exc: mission_pb2.MissionException, now: datetime) -> None:
    """A HUMAN_TAKEOVER exception just raised: the hand-over is asked for now."""
    if exc.contingency == Contingency.HUMAN_TAKEOVER:
        exc.takeover.request_time.CopyFrom(to_timestamp(now))


def request_hand_back(exc: mission_pb2.MissionException, now: datetime) -> None:
    """An exception being resolved: if it handed the vehicle over, the hand-back is asked for now (once)."""
    if exc.HasField("takeover") and not exc.takeover.HasField("hand_back_request_time"):
        exc.takeover.hand_back_request_time.CopyFrom(to_timestamp(now))


def validate_takeover_ack(exception_id: str, step: int, ack_time: Timestamp | None, refusal: str = "") -> None:
    """INVALID_ARGUMENT unless AcknowledgeMissionTakeover's fields are there and its step is known here."""
    problems = text_violations(exception_id, 64, "exception_id", required=True)
    problems += text_violations(refusal, MAX_TAKEOVER_REFUSAL, "refusal")
    if step not in {int(s) for s in TakeoverStep}:
        problems.append(FieldViolation("step", "is required" if not step else f"unknown value {step}"))
    if ack_time is None:
        problems.append(FieldViolation("ack_time", "is required"))
    raise_if(problems)


def acknowledge_takeover(exc: mission_pb2.MissionException, step: TakeoverStep, ack_time: Timestamp,
                         refusal: str = "") -> bool:
    """Record the vehicle's confirmation of ``step`` at ``ack_time`` (or, with ``refusal``, its refusal of it);
    False when nothing changes (recorded already, or a refusal of a step confirmed since). FAILED_PRECONDITION
    TAKEOVER_STEP_NOT_REQUESTED when the exception has no takeover or the step was not asked for."""
    if not exc.HasField("takeover"):
        contingency = mission_pb2.MissionException.Contingency.Name(exc.contingency)
        raise _not_requested(exc, step, f"it has no takeover (contingency {contingency})")
    takeover = exc.takeover
    if refusal:
        return _refuse(exc, step, ack_time, refusal)
    if step == TakeoverStep.HAND_OVER:
        if takeover.HasField("control_time"):
            return False
        if takeover.HasField("hand_back_time"):
            raise _not_requested(exc, step, "the vehicle has confirmed the hand-back already")
        takeover.control_time.CopyFrom(ack_time)
        return True
    if takeover.HasField("hand_back_time"):
        return False
    if not takeover.HasField("hand_back_request_time"):
        raise _not_requested(exc, step, "no hand-back was asked for: the exception is open")
    takeover.hand_back_time.CopyFrom(ack_time)
    return True


def _refuse(exc: mission_pb2.MissionException, step: TakeoverStep, ack_time: Timestamp, refusal: str) -> bool:
    takeover = exc.takeover
    if step == TakeoverStep.HAND_OVER:
        confirmed, kept = takeover.HasField("control_time"), takeover.hand_over_refusal
    else:
        if not takeover.HasField("hand_back_request_time"):
            raise _not_requested(exc, step, "no hand-back was asked for: the exception is open")
        confirmed, kept = takeover.HasField("hand_back_time"), takeover.hand_back_refusal
    if confirmed or (kept.time == ack_time and kept.detail == refusal):
        return False
    kept.time.CopyFrom(ack_time)
    kept.detail = refusal
    return True


def _not_requested(exc: mission_pb2.MissionException, step: TakeoverStep, why: str) -> FailedPrecondition:
    return FailedPrecondition(f"exception {exc.exception_id}: {step.name} not recorded: {why}",
                              reason="TAKEOVER_STEP_NOT_REQUESTED",
                              metadata={"exception_id": exc.exception_id, "step": f"STEP_{step.name}"})
