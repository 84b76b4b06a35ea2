"""Changes to a mission: transitions, exceptions raised and resolved, pre-trip checks, completion."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from haulmesh.mission.v1 import mission_pb2
from haulmesh.type.v1 import health_check_pb2, location_pb2
from services.runtime import (
    FailedPrecondition,
    FieldViolation,
    NotFound,
    to_timestamp,
)
from services.runtime.lanes import Detour, LaneFacts
from services.runtime.limits import (
    MAX_COMMAND_EXCEPTION_ID,
    MAX_EXCEPTION_DESCRIPTION,
    MAX_EXCEPTION_RESOLUTION,
    MAX_REROUTE_WAYPOINTS,
)

from .checkins import CheckInPolicy, departure_cleared, recorded_check_ins, refresh_check_in_due
from .checks import raise_if, text_violations
from .enums import TERMINAL, Contingency, ExceptionKind, Severity, State
from .lifecycle import Action, Status, choose_contingency, mission_status, transition
from .takeover import request_hand_back, start_takeover

# --- Mission changes ---------------------------------------------------------------------------------
# Each takes the mission as read, changes it in place and says what happened; the caller announces it.

#: Who resolves the exceptions left open when a mission is cancelled or aborted.
MISSION_SERVICE = "spiffe://haulmesh.local/service/mission"


def move(mission: mission_pb2.Mission, status: Status) -> None:
    mission.state = int(status.state)
    mission.resume_state = int(status.resume) if status.resume else 0


def resolve(exc: mission_pb2.MissionException, resolution: str, who: str, when: datetime) -> None:
    """Resolve one exception, however it ends (an operator, passing checks, the mission's end): a takeover's
    hand-back is asked for with it (takeover.py)."""
    exc.resolution = resolution
    exc.resolved_by = who
    exc.resolve_time.CopyFrom(to_timestamp(when))
    request_hand_back(exc, when)


def resolve_open(mission: mission_pb2.Mission, resolution: str, who: str, when: datetime
                 ) -> list[mission_pb2.MissionException]:
    """Resolve every open exception of the mission; the ones resolved, in order."""
    resolved = [exc for exc in mission.exceptions if not exc.HasField("resolve_time")]
    for exc in resolved:
        resolve(exc, resolution, who, when)
    return resolved


def settle(mission: mission_pb2.Mission, policy: CheckInPolicy, now: datetime) -> None:
    """After any change: when the next check-in is due, and the end time of a mission just ended."""
    refresh_check_in_due(mission, policy, now)
    if mission.state in TERMINAL and not mission.HasField("end_time"):
        mission.end_time.CopyFrom(to_timestamp(now))


def advance(mission: mission_pb2.Mission, action: Action, now: datetime, *, reason: str = "",
            record: Callable[[mission_pb2.Mission], None] | None = None
            ) -> list[mission_pb2.MissionException] | None:
    """A plain transition (acknowledge, arrive, complete, cancel, abort): None when it repeats the one that
    produced the current state (nothing changes), else the exceptions it resolved (a cancel or abort
    resolves those still open). ``record`` notes the transition's facts on the mission first."""
    after = transition(mission_status(mission), action)
    if after is None:
        return None
    if record is not None:
        record(mission)
    resolved = []
    if after.state in (State.CANCELLED, State.ABORTED):
        resolved = resolve_open(mission, f"mission {after.state.name.lower()}", MISSION_SERVICE, now)
        mission.state_reason = reason
    move(mission, after)
    return resolved


def acknowledge(mission: mission_pb2.Mission, ack_time: Timestamp, now: datetime
                ) -> list[mission_pb2.MissionException] | None:
    return advance(mission, Action.ACKNOWLEDGE, now, record=lambda m: m.dispatch_ack_time.CopyFrom(ack_time))


def arrive(mission: mission_pb2.Mission, arrive_time: Timestamp, now: datetime
           ) -> list[mission_pb2.MissionException] | None:
    def record(m: mission_pb2.Mission) -> None:
        last = m.stops[-1]
        last.arrive_time.CopyFrom(arrive_time)
        last.ClearField("estimated_arrive_time")
        m.ClearField("estimated_arrive_time")  # the mission's ETA is its last stop's

    return advance(mission, Action.ARRIVE, now, record=record)


#: Cancel and abort reasons: (at most this many characters, required).
_REASONS = {Action.CANCEL: (500, False), Action.ABORT: (1000, True)}


def validate_reason(action: Action, reason: str) -> None:
    limit, required = _REASONS[action]
    raise_if(text_violations(reason, limit, "reason", required=required))


def validate_pre_trip_checks(checks: Sequence[health_check_pb2.HealthCheckResult]) -> None:
    problems = [] if checks else [FieldViolation("pre_trip_checks", "at least one")]
    for i, check in enumerate(checks):
        problems += text_violations(check.check, 100, f"pre_trip_checks[{i}].check", required=True)
        if not check.outcome:
            problems.append(FieldViolation(f"pre_trip_checks[{i}].outcome", "is required"))
    raise_if(problems)


def _passing(checks: Sequence[health_check_pb2.HealthCheckResult]) -> bool:
    return bool(checks) and not any(c.blocking and c.outcome == health_check_pb2.HealthCheckResult.OUTCOME_FAIL
                                    for c in checks)


def start(mission: mission_pb2.Mission, checks: Sequence[health_check_pb2.HealthCheckResult], who: str,
          now: datetime) -> list[mission_pb2.MissionException] | None:
    """Depart after pre-trip ``checks``: None when already started, else the exceptions resolved (passing checks
    resolve the open PRE_TRIP_FAILURE exceptions). A failed blocking check, or a required DEPARTURE check-in without
    PROCEED, refuses with FAILED_PRECONDITION; so does an open exception that stops the vehicle (MISSION_HELD).

    From EXCEPTION before departure the departure is recorded in ``resume_state`` (ENROUTE) while exceptions the
    truck drives under stay open (lifecycle._start_in_exception says why): resolving them lands in ENROUTE."""
    after = transition(mission_status(mission), Action.START)
    if after is None:
        return None
    failed = next((c for c in checks
                   if c.blocking and c.outcome == health_check_pb2.HealthCheckResult.OUTCOME_FAIL), None)
    if failed is not None:
        raise FailedPrecondition(f"blocking pre-trip check {failed.check!r} failed: {failed.detail}",
                                 reason="PRE_TRIP_CHECK_FAILED", metadata={"check": failed.check})
    if mission.check_in_requirement.required and not departure_cleared(
            [(p, o) for p, o, _ in recorded_check_ins(mission, now)]):
        raise FailedPrecondition("this mission needs a DEPARTURE check-in with outcome PROCEED first; the passing "
                                 "pre-trip checks are kept and the departure is recorded when it comes",
                                 reason="CHECK_IN_REQUIRED")
    resolved = [exc for exc in mission.exceptions
                if not exc.HasField("resolve_time") and exc.kind == ExceptionKind.PRE_TRIP_FAILURE]
    for exc in resolved:
        resolve(exc, "pre-trip checks passed", who, now)
    del mission.pre_trip_checks[:]
    mission.pre_trip_checks.extend(checks)
    mission.start_time.CopyFrom(to_timestamp(now))
    pickup = mission.stops[0]
    if not pickup.HasField("arrive_time"):
        pickup.arrive_time.CopyFrom(mission.dispatch_ack_time if mission.HasField("dispatch_ack_time")
                                    else to_timestamp(now))
    if not pickup.HasField("depart_time"):
        pickup.depart_time.CopyFrom(to_timestamp(now))
    move(mission, after)
    return resolved


# --- A departure that waits ---------------------------------------------------------------------------
# The truck's pre-trip report is its departure: the edge does not wait for the cloud's answer. A start refused only
# because the mission is not ready for it yet (the DEPARTURE check-in not recorded, an open HOLD or minimal-risk stop,
# the dispatch acknowledgement still on its way) must not be lost with the refusal, or the mission stays before
# departure while its truck drives. So the passing checks are kept on the mission (``pre_trip_checks``: the latest
# the vehicle reported) and the departure is recorded by the change that clears the last obstacle, in its
# transaction: a DEPARTURE check-in with PROCEED, the resolution of the hold, the acknowledgement
# (:func:`depart_when_cleared`, run after every change of a mission). Retrying the call cannot do this: a human's
# check-in may come an hour later. A failing report (PRE_TRIP_FAILURE raised, a failed blocking check) drops a kept
# passing one: the truck's latest word counts, and no departure is recorded on an older one.

def keep_pre_trip_report(mission: mission_pb2.Mission, checks: Sequence[health_check_pb2.HealthCheckResult]) -> bool:
    """After :func:`start` refused ``checks``: keep passing checks of a mission not yet departed, so that its
    departure is recorded once cleared; drop a kept report when these fail. Whether the mission changed."""
    status = mission_status(mission)
    if status.state in TERMINAL or status.departed or mission.HasField("start_time"):
        return False
    if not _passing(checks):
        if not departure_pending(mission):
            return False
        del mission.pre_trip_checks[:]
        return True
    if list(mission.pre_trip_checks) == list(checks):
        return False
    del mission.pre_trip_checks[:]
    mission.pre_trip_checks.extend(checks)
    return True


def departure_pending(mission: mission_pb2.Mission) -> bool:
    """Whether the mission keeps a passing pre-trip report of a truck whose departure is not recorded yet."""
    status = mission_status(mission)
    return (status.state not in TERMINAL and not status.departed and not mission.HasField("start_time")
            and _passing(mission.pre_trip_checks))


def depart_when_cleared(mission: mission_pb2.Mission, now: datetime
                        ) -> list[mission_pb2.MissionException] | None:
    """Record the departure the kept pre-trip report waits for, if nothing stands in its way any more: None when
    there is nothing to record (no report waits, or it still cannot start), else the exceptions resolved (as
    :func:`start`; resolved by the mission service)."""
    if not departure_pending(mission):
        return None
    try:
        return start(mission, list(mission.pre_trip_checks), MISSION_SERVICE, now)
    except FailedPrecondition:
        return None  # still waiting: the check-in, the hold's resolution, the acknowledgement


def complete_after_billing(mission: mission_pb2.Mission) -> bool:
    """DELIVERED → COMPLETED once billing recorded the usage; False if an operator completed it meanwhile."""
    if mission.state != State.DELIVERED:
        return False
    after = transition(mission_status(mission), Action.COMPLETE)
    assert after is not None  # DELIVERED → COMPLETED is a move, never a repeat
    move(mission, after)
    mission.state_reason = "usage recorded by billing"
    return True


def validate_exception(given: mission_pb2.MissionException) -> None:
    """INVALID_ARGUMENT unless RaiseMissionException's exception is valid and its enums known here."""
    problems = [] if given.kind else [FieldViolation("exception.kind", "is required")]
    # A client built from newer contracts may send a value this service does not know yet.
    enums = (("kind", given.kind, ExceptionKind), ("severity", given.severity, Severity),
             ("contingency", given.contingency, Contingency))
    problems += [FieldViolation(f"exception.{name}", f"unknown value {value}") for name, value, known in enums
                 if value and value not in {int(member) for member in known}]
    problems += text_violations(given.description, MAX_EXCEPTION_DESCRIPTION, "exception.description")
    if len(given.reroute_waypoints) > MAX_REROUTE_WAYPOINTS:
        problems.append(FieldViolation("exception.reroute_waypoints", f"at most {MAX_REROUTE_WAYPOINTS}"))
    if given.reroute_waypoints and given.contingency not in (Contingency.REROUTE, 0):
        problems.append(FieldViolation("exception.reroute_waypoints", "only for REROUTE"))
    raise_if(problems)


def raise_exception(mission: mission_pb2.Mission, given: mission_pb2.MissionException, who: str, now: datetime,
                    lanes: LaneFacts | None = None) -> tuple[mission_pb2.MissionException, bool]:
    """Record ``given`` as a new open exception (the fleet's contingency when none is given; a REROUTE with
    waypoints replaces the planned route) and move the mission to EXCEPTION. Returns the exception as
    recorded and whether the mission's state changed.

    A REROUTE without waypoints (a truck's closure report says where it is, not how to go round) takes the detour
    the lane facts' road network gives from ``given.location`` to the next stop (:func:`detour_for`); when there is
    none (no mapped road there, nothing around it, no location), the truck is stopped instead: a minimal-risk stop
    once departed, a hold before, and the description says so (an operator may send waypoints himself)."""
    status = mission_status(mission)
    after = transition(status, Action.RAISE)
    assert after is not None  # RAISE always moves or refuses
    severity = Severity(given.severity or Severity.WARNING)
    contingency = given.contingency or choose_contingency(ExceptionKind(given.kind), severity,
                                                          departed=status.departed)
    description, waypoints = given.description, list(given.reroute_waypoints)
    if contingency == Contingency.REROUTE and not waypoints:
        found = detour_for(mission, given, lanes, departed=status.departed)
        if found is not None:
            waypoints = [location_pb2.Location(lat=lat, lon=lon) for lat, lon in found.waypoints]
            description = _append(description, f"detour via {', '.join(found.roads)} ({found.miles:.0f} mi to the "
                                                f"next stop), avoiding {found.avoided}")
        else:
            contingency = Contingency.MINIMAL_RISK_STOP if status.departed else Contingency.HOLD
            description = _append(description, "no known road around it: the vehicle stops until an operator "
                                               "sends a route (a reroute with waypoints) or resumes it")
    exc = mission.exceptions.add(
        exception_id=f"exc-{len(mission.exceptions) + 1}", kind=given.kind, severity=int(severity),
        contingency=int(Contingency(contingency)), description=description,
        reroute_waypoints=waypoints, frame_sequence=given.frame_sequence, raised_by=who,
        raise_time=to_timestamp(now))
    if given.HasField("location"):
        exc.location.CopyFrom(given.location)
    if exc.kind == ExceptionKind.PRE_TRIP_FAILURE and departure_pending(mission):
        del mission.pre_trip_checks[:]  # a later failing report: the kept passing one must not start the mission
    start_takeover(exc, now)
    if exc.contingency == Contingency.REROUTE and exc.reroute_waypoints:
        # The new plan: from where the vehicle was told to go, on to the destination.
        del mission.planned_route[:]
        mission.planned_route.extend([*exc.reroute_waypoints, mission.stops[-1].location])
    move(mission, after)
    return exc, after.state != status.state


def detour_for(mission: mission_pb2.Mission, given: mission_pb2.MissionException, lanes: LaneFacts | None, *,
               departed: bool) -> Detour | None:
    """The lane facts' way around the road the vehicle reported closed at ``given.location``, to the mission's next
    stop (once departed, the first after the pickup not yet reached); None without a location, lane facts or a
    known way."""
    if lanes is None or not given.HasField("location") or not mission.stops:
        return None
    stops = mission.stops[1:] if departed and len(mission.stops) > 1 else mission.stops
    ahead = next((s for s in stops if not s.HasField("arrive_time")), mission.stops[-1])
    return lanes.detour((given.location.lat, given.location.lon), (ahead.location.lat, ahead.location.lon))


def _append(description: str, note: str) -> str:
    limit = MAX_EXCEPTION_DESCRIPTION
    return f"{description}; {note}"[:limit] if description else note[:limit]


def validate_resolution(exception_id: str, resolution: str) -> None:
    raise_if(text_violations(exception_id, MAX_COMMAND_EXCEPTION_ID, "exception_id", required=True)
             + text_violations(resolution, MAX_EXCEPTION_RESOLUTION, "resolution", required=True))


def find_exception(mission: mission_pb2.Mission, exception_id: str) -> mission_pb2.MissionException:
    """The mission's exception of that id; NOT_FOUND EXCEPTION_NOT_FOUND if it has none."""
    exc = next((e for e in mission.exceptions if e.exception_id == exception_id), None)
    if exc is None:
        raise NotFound(f"{mission.name} has no exception {exception_id!r}", reason="EXCEPTION_NOT_FOUND",
                       metadata={"exception_id": exception_id})
    return exc


def resolve_exception(mission: mission_pb2.Mission, exception_id: str, resolution: str, who: str, now: datetime
                      ) -> tuple[mission_pb2.MissionException, bool] | None:
    """Resolve one exception (NOT_FOUND if the mission has no such exception); resolving the last open one
    returns the mission to its resume state. None when it was resolved already (that succeeds without
    change), else the exception and whether the mission's state changed."""
    exc = find_exception(mission, exception_id)
    if exc.HasField("resolve_time"):
        return None
    resolve(exc, resolution, who, now)
    if mission_status(mission).open_exceptions:
        return exc, False
    after = transition(mission_status(mission), Action.RESOLVE_LAST)
    assert after is not None  # RESOLVE_LAST always moves or refuses
    move(mission, after)
    return exc, True
