"""Human in the loop: the check-in policy of a lane's first missions, when a check-in is due, recording one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from haulmesh.mission.v1 import mission_pb2
from services.runtime import (
    FailedPrecondition,
    FieldViolation,
    from_timestamp,
    to_timestamp,
)

from .checks import raise_if, text_violations
from .enums import BEFORE_DEPARTURE, HOLD, PROCEED, TERMINAL, CheckInPoint, State, _Exception
from .lifecycle import Status, mission_status

# --- Human in the loop -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckInPolicy:
    """The pilot policy: a lane's first ``threshold`` missions need check-ins every ``enroute_interval``."""

    threshold: int = 30
    enroute_interval: timedelta = timedelta(hours=1)
    points: tuple[CheckInPoint, ...] = field(default=(CheckInPoint.DEPARTURE, CheckInPoint.ENROUTE,
                                                      CheckInPoint.ARRIVAL))

    def required(self, lane_ordinal: int) -> bool:
        return 1 <= lane_ordinal <= self.threshold


def check_in_point_allowed(status: Status, point: CheckInPoint) -> None:
    """A check-in is recorded at the point the mission is at; anything else is INVALID_MISSION_STATE."""
    effective = status.effective
    allowed = {CheckInPoint.DEPARTURE: BEFORE_DEPARTURE, CheckInPoint.ENROUTE: frozenset({State.ENROUTE}),
               CheckInPoint.ARRIVAL: frozenset({State.ARRIVED})}[point]
    if status.state in TERMINAL or effective not in allowed:
        raise FailedPrecondition(f"a {point.name} check-in is not possible in state {status.state.name}",
                                 reason="INVALID_MISSION_STATE", metadata={"state": f"STATE_{status.state.name}"})


def departure_cleared(check_ins: Sequence[tuple[CheckInPoint, int]]) -> bool:
    """True if the latest DEPARTURE check-in says PROCEED (a later HOLD takes a PROCEED back)."""
    outcomes = [outcome for point, outcome in check_ins if point == CheckInPoint.DEPARTURE]
    return bool(outcomes) and outcomes[-1] == PROCEED


def next_check_in_due(policy: CheckInPolicy, state: Status, *, planned_pickup: datetime | None,
                      start_time: datetime | None, arrive_time: datetime | None,
                      check_ins: Sequence[tuple[CheckInPoint, int, datetime]]) -> datetime | None:
    """When the next required check-in is due, None when none is pending.

    DEPARTURE: due at the planned pickup (or now-ish: the pickup start) until a PROCEED is recorded.
    ENROUTE: every ``enroute_interval`` after departure or the latest en-route check-in.
    ARRIVAL: due on arrival until recorded. Nothing after delivery or at a terminal state.
    """
    effective = state.effective
    if state.state in TERMINAL or effective == State.DELIVERED:
        return None
    if effective in BEFORE_DEPARTURE:
        if departure_cleared([(p, o) for p, o, _ in check_ins]):
            return None
        return planned_pickup
    if effective == State.ENROUTE and start_time is not None:
        enroute = [t for p, _, t in check_ins if p == CheckInPoint.ENROUTE]
        return max([start_time, *enroute]) + policy.enroute_interval
    if effective == State.ARRIVED:
        if any(p == CheckInPoint.ARRIVAL for p, _, _ in check_ins):
            return None
        return arrive_time
    return None


def recorded_check_ins(mission: mission_pb2.Mission, now: datetime) -> list[tuple[CheckInPoint, int, datetime]]:
    """The mission's check-ins as (point, outcome, record time; ``now`` when unrecorded)."""
    return [(CheckInPoint(c.point), c.outcome, from_timestamp(c.record_time) or now) for c in mission.check_ins]


def refresh_check_in_due(mission: mission_pb2.Mission, policy: CheckInPolicy, now: datetime) -> None:
    """Set (or clear) the mission's ``check_in_requirement.next_due_time`` from its current state."""
    requirement = mission.check_in_requirement
    if not requirement.required:
        return
    due = next_check_in_due(
        policy, mission_status(mission),
        planned_pickup=from_timestamp(mission.stops[0].planned_window.start_time)
        or from_timestamp(mission.dispatch_time), start_time=from_timestamp(mission.start_time),
        arrive_time=from_timestamp(mission.stops[-1].arrive_time), check_ins=recorded_check_ins(mission, now))
    previous = from_timestamp(requirement.next_due_time) if requirement.HasField("next_due_time") else None
    if due != previous:  # a new due time (or none): whatever was escalated was the previous one's
        requirement.ClearField("escalate_time")
    if due is None:
        requirement.ClearField("next_due_time")
    else:
        requirement.next_due_time.CopyFrom(to_timestamp(due))


@dataclass(frozen=True)
class OverdueCheckIn:
    """A required check-in past its due time by more than the grace: which, when due, how late."""

    point: CheckInPoint
    due: datetime
    overdue: timedelta


def due_point(status: Status) -> CheckInPoint | None:
    """The check-in a mission in ``status`` waits for (the one ``next_check_in_due`` times)."""
    effective = status.effective
    if status.state in TERMINAL or effective == State.DELIVERED:
        return None
    if effective in BEFORE_DEPARTURE:
        return CheckInPoint.DEPARTURE
    return {State.ENROUTE: CheckInPoint.ENROUTE, State.ARRIVED: CheckInPoint.ARRIVAL}.get(effective)


def escalate_overdue(mission: mission_pb2.Mission, now: datetime, grace: timedelta) -> OverdueCheckIn | None:
    """Mark the mission's pending check-in escalated (``escalate_time``) if it is overdue by more than ``grace`` and
    was not escalated yet for this due time; what to announce, or None (not due, not late enough, done already)."""
    requirement = mission.check_in_requirement
    if not requirement.required or not requirement.HasField("next_due_time") or requirement.HasField("escalate_time"):
        return None
    due = from_timestamp(requirement.next_due_time)
    point = due_point(mission_status(mission))
    if due is None or point is None or now - due < grace:
        return None
    requirement.escalate_time.CopyFrom(to_timestamp(now))
    return OverdueCheckIn(point, due, now - due)


def validate_check_in(given: mission_pb2.CheckIn) -> None:
    problems = [] if given.point else [FieldViolation("check_in.point", "is required")]
    if not given.outcome:
        problems.append(FieldViolation("check_in.outcome", "is required"))
    problems += text_violations(given.notes, 1000, "check_in.notes")
    raise_if(problems)


def record_check_in(mission: mission_pb2.Mission, given: mission_pb2.CheckIn, who: str, now: datetime
                    ) -> tuple[mission_pb2.CheckIn, mission_pb2.MissionException | None]:
    """Record a check-in at the point the mission is at; with it, the CHECK_IN_HOLD exception to raise when
    its outcome is HOLD (None otherwise)."""
    check_in_point_allowed(mission_status(mission), CheckInPoint(given.point))
    check_in = mission.check_ins.add(check_in_id=f"chk-{len(mission.check_ins) + 1}", point=given.point,
                                     outcome=given.outcome, notes=given.notes, recorded_by=who,
                                     record_time=to_timestamp(now))
    if given.outcome != HOLD:
        return check_in, None
    return check_in, _Exception(kind=_Exception.KIND_CHECK_IN_HOLD, severity=_Exception.SEVERITY_WARNING,
                                description=f"check-in {check_in.check_in_id} HOLD: {given.notes}"[:1000])
