"""A truck's departure is never lost to a race (domain rules, no gRPC or Redis).

The truck's passing pre-trip report (telemetry's StartMission) is its departure: the edge drives on without waiting
for the cloud. These tests drive the domain the way usecases.py does (a refused change commits nothing, except a
refused start's kept report; every committed change may record a departure that waits, then settles) through the
races seen in the sandbox: a start refused for the missing DEPARTURE check-in, then a fault raised before the
check-in; a failing pre-trip report overtaking the dispatch acknowledgement. The property test plays any interleaving
of the truck's reports, faults, check-ins, resolutions and acknowledgements and checks that the mission departs as
soon as a human has cleared it and nothing stops the truck, and never before.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haulmesh.mission.v1 import mission_pb2
from haulmesh.type.v1 import health_check_pb2
from services.mission import domain
from services.mission.domain import DEPARTED, TERMINAL, CheckInPolicy, ExceptionKind, State
from services.runtime import FailedPrecondition, NotFound, to_timestamp

T0 = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
POLICY = CheckInPolicy()
TRUCK = "spiffe://haulmesh.local/service/telemetry"
OPS = "spiffe://haulmesh.local/operator/ops"
M = mission_pb2.Mission
Exc = mission_pb2.MissionException
CheckIn = mission_pb2.CheckIn
Result = health_check_pb2.HealthCheckResult
PASS = [Result(check="brakes", outcome=Result.OUTCOME_PASS, blocking=True),
        Result(check="camera", outcome=Result.OUTCOME_WARN, blocking=False)]
FAIL = [Result(check="lidar", outcome=Result.OUTCOME_FAIL, blocking=True, detail="no returns")]


def _mission(*, check_ins: bool = True) -> M:
    mission = M(name="missions/m1", state=State.DISPATCHED, vehicle="vehicles/AU-TRK-1001",
                dispatch_time=to_timestamp(T0))
    pickup = mission.stops.add(type=mission_pb2.Stop.TYPE_PICKUP, location={"lat": 29.76, "lon": -95.37})
    pickup.planned_window.start_time.CopyFrom(to_timestamp(T0 + timedelta(hours=1)))
    mission.stops.add(type=mission_pb2.Stop.TYPE_DELIVERY, location={"lat": 33.75, "lon": -84.39})
    mission.check_in_requirement.required = check_ins
    return mission


def _change(mission: M, apply: Callable[[M], bool], now: datetime) -> bool:
    """usecases._change: ``apply`` on a draft; nothing is committed when it refuses or changes nothing; a committed
    change records a departure that waits (domain.depart_when_cleared) and settles."""
    draft = M()
    draft.CopyFrom(mission)
    if not apply(draft):
        return False
    domain.depart_when_cleared(draft, now)
    domain.settle(draft, POLICY, now)
    mission.CopyFrom(draft)
    return True


def report(mission: M, checks: list[Result], now: datetime) -> FailedPrecondition | None:
    """The truck's pre-trip report as telemetry's consumer sends it (actions.pre_trip): failing blocking checks raise
    PRE_TRIP_FAILURE, passing ones call StartMission (usecases.start: a refusal keeps the report). The refusal."""
    if checks is FAIL:
        _change(mission, lambda m: domain.raise_exception(m, Exc(kind=Exc.KIND_PRE_TRIP_FAILURE,
                                                                 severity=Exc.SEVERITY_CRITICAL), TRUCK, now)[0]
                is not None, now)
        return None
    refused: list[FailedPrecondition] = []

    def apply(m: M) -> bool:
        try:
            return domain.start(m, checks, TRUCK, now) is not None
        except FailedPrecondition as refusal:
            refused.append(refusal)
            return domain.keep_pre_trip_report(m, checks)

    _change(mission, apply, now)
    return refused[-1] if refused else None


def acknowledge(mission: M, now: datetime) -> None:
    _change(mission, lambda m: domain.acknowledge(m, to_timestamp(now), now) is not None, now)


def raise_(mission: M, kind: int, severity: int, now: datetime) -> None:
    _change(mission, lambda m: bool(domain.raise_exception(m, Exc(kind=kind, severity=severity), OPS, now)), now)  # type: ignore[arg-type]


def check_in(mission: M, outcome: int, now: datetime) -> None:
    def apply(m: M) -> bool:
        _, hold = domain.record_check_in(m, CheckIn(point=CheckIn.POINT_DEPARTURE, outcome=outcome), OPS, now)  # type: ignore[arg-type]
        if hold is not None:
            domain.raise_exception(m, hold, OPS, now)
        return True

    _change(mission, apply, now)


def resolve(mission: M, exception_id: str, now: datetime) -> None:
    _change(mission, lambda m: domain.resolve_exception(m, exception_id, "handled", OPS, now) is not None, now)


def open_ids(mission: M) -> list[str]:
    return [e.exception_id for e in mission.exceptions if not e.HasField("resolve_time")]


def state(mission: M) -> tuple[State, State | None]:
    return State(mission.state), State(mission.resume_state) if mission.resume_state else None


# --- the races -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("check_in_first", [True, False])
def test_start_refused_for_the_check_in_then_a_fault_ends_enroute(check_in_first: bool) -> None:
    """The sandbox's race: the start waits for the DEPARTURE check-in, a fault comes first; whichever of the
    check-in and the fault's resolution comes last, the mission ends ENROUTE."""
    mission = _mission()
    acknowledge(mission, T0)
    refusal = report(mission, PASS, T0 + timedelta(seconds=1))
    assert refusal is not None and refusal.reason == "CHECK_IN_REQUIRED"
    assert list(mission.pre_trip_checks) == PASS and not mission.HasField("start_time")  # kept, not started
    raise_(mission, Exc.KIND_SENSOR_FAULT, Exc.SEVERITY_WARNING, T0 + timedelta(seconds=2))  # CONTINUE
    assert state(mission) == (State.EXCEPTION, State.PRE_TRIP)
    late = T0 + timedelta(minutes=5)
    if check_in_first:
        check_in(mission, CheckIn.OUTCOME_PROCEED, late)
        # The truck drives under a warning: the departure is recorded at once, behind the open exception.
        assert state(mission) == (State.EXCEPTION, State.ENROUTE)
        resolve(mission, "exc-1", late + timedelta(minutes=1))
    else:
        resolve(mission, "exc-1", late)
        assert state(mission) == (State.PRE_TRIP, None)  # still waiting for the human
        check_in(mission, CheckIn.OUTCOME_PROCEED, late + timedelta(minutes=1))
    assert state(mission) == (State.ENROUTE, None)
    assert mission.start_time.ToDatetime(UTC) in (late, late + timedelta(minutes=1))
    assert mission.stops[0].HasField("depart_time") and list(mission.pre_trip_checks) == PASS
    assert mission.check_in_requirement.HasField("next_due_time")  # the en-route check-ins are due now


def test_a_minimal_risk_stop_holds_the_start_until_resolved() -> None:
    mission = _mission()
    acknowledge(mission, T0)
    report(mission, PASS, T0)
    raise_(mission, Exc.KIND_SENSOR_FAULT, Exc.SEVERITY_CRITICAL, T0)  # MINIMAL_RISK_STOP
    check_in(mission, CheckIn.OUTCOME_PROCEED, T0)
    assert state(mission) == (State.EXCEPTION, State.PRE_TRIP) and not mission.HasField("start_time")
    refusal = report(mission, PASS, T0)  # the truck's report again: refused with the reason, still kept
    assert refusal is not None and refusal.reason == "MISSION_HELD"
    assert refusal.metadata == {"state": "STATE_EXCEPTION", "exceptions": "SENSOR_FAULT"}
    resolve(mission, "exc-1", T0 + timedelta(minutes=3))
    assert state(mission) == (State.ENROUTE, None)
    assert mission.start_time.ToDatetime(UTC) == T0 + timedelta(minutes=3)


def test_a_check_in_hold_holds_the_start() -> None:
    mission = _mission()
    acknowledge(mission, T0)
    check_in(mission, CheckIn.OUTCOME_HOLD, T0)  # CHECK_IN_HOLD, contingency HOLD
    assert report(mission, PASS, T0).reason == "MISSION_HELD"  # type: ignore[union-attr]
    check_in(mission, CheckIn.OUTCOME_PROCEED, T0)
    assert state(mission) == (State.EXCEPTION, State.PRE_TRIP)  # the hold is the operator's to lift
    resolve(mission, "exc-1", T0)
    assert state(mission) == (State.ENROUTE, None)


def test_a_failing_report_overtaking_the_acknowledgement() -> None:
    """A colleague's case: the failing HEALTH frame's exception reaches the mission before the dispatch
    acknowledgement (EXCEPTION resuming to DISPATCHED). The acknowledgement is recorded behind it; the passing
    report after the repair resolves the failure and departs."""
    mission = _mission(check_ins=False)
    report(mission, FAIL, T0)
    assert state(mission) == (State.EXCEPTION, State.DISPATCHED)
    acknowledge(mission, T0 + timedelta(seconds=1))
    assert state(mission) == (State.EXCEPTION, State.PRE_TRIP) and mission.HasField("dispatch_ack_time")
    assert report(mission, PASS, T0 + timedelta(minutes=10)) is None
    assert state(mission) == (State.ENROUTE, None)
    assert mission.exceptions[0].resolution == "pre-trip checks passed"


def test_a_passing_report_before_the_acknowledgement_departs_with_it() -> None:
    mission = _mission(check_ins=False)
    report(mission, FAIL, T0)
    assert report(mission, PASS, T0 + timedelta(minutes=10)) is None  # the report says it has its assignment
    assert state(mission) == (State.ENROUTE, None)
    with pytest.raises(FailedPrecondition):  # late: refused, the consumer logs it; the departure stands
        acknowledge(mission, T0 + timedelta(minutes=11))
    plain = _mission(check_ins=False)
    assert report(plain, PASS, T0).reason == "INVALID_MISSION_STATE"  # type: ignore[union-attr]
    acknowledge(plain, T0)  # the acknowledgement clears the way for the kept report
    assert state(plain) == (State.ENROUTE, None) and plain.dispatch_ack_time == to_timestamp(T0)


def test_a_later_failing_report_drops_the_kept_one() -> None:
    mission = _mission()
    acknowledge(mission, T0)
    report(mission, PASS, T0)
    report(mission, FAIL, T0 + timedelta(seconds=30))  # the truck's latest word: a failure
    assert not domain.departure_pending(mission)
    check_in(mission, CheckIn.OUTCOME_PROCEED, T0 + timedelta(minutes=1))
    resolve(mission, "exc-1", T0 + timedelta(minutes=2))
    assert state(mission) == (State.PRE_TRIP, None)  # no departure on the older passing report
    assert report(mission, PASS, T0 + timedelta(minutes=3)) is None
    assert state(mission) == (State.ENROUTE, None)


def test_a_refused_failing_start_drops_the_kept_report() -> None:
    mission = _mission()
    acknowledge(mission, T0)
    report(mission, PASS, T0)
    draft = M()
    draft.CopyFrom(mission)
    with pytest.raises(FailedPrecondition) as caught:
        domain.start(draft, FAIL, OPS, T0)
    assert caught.value.reason == "PRE_TRIP_CHECK_FAILED"
    assert domain.keep_pre_trip_report(draft, FAIL) and not domain.departure_pending(draft)
    assert not domain.keep_pre_trip_report(draft, FAIL)  # nothing kept any more: no change


def test_kept_report_is_idempotent_and_nothing_departs_a_terminal_mission() -> None:
    mission = _mission()
    acknowledge(mission, T0)
    report(mission, PASS, T0)
    assert not domain.keep_pre_trip_report(mission, PASS)  # the same report again changes nothing
    _change(mission, lambda m: domain.advance(m, domain.Action.CANCEL, T0) is not None, T0)
    with pytest.raises(FailedPrecondition):
        domain.record_check_in(mission, CheckIn(point=CheckIn.POINT_DEPARTURE, outcome=CheckIn.OUTCOME_PROCEED), OPS,
                               T0)
    assert domain.depart_when_cleared(mission, T0) is None and state(mission) == (State.CANCELLED, None)


# --- any interleaving ------------------------------------------------------------------------------------------------

#: Exceptions an operator or telemetry raises, as (kind, severity): contingencies CONTINUE (warning fault, lost link,
#: other), MINIMAL_RISK_STOP (critical fault), HOLD before departure (a closure with no known detour, a dispatch
#: timeout), HUMAN_TAKEOVER (law enforcement).
_RAISED = [(Exc.KIND_SENSOR_FAULT, Exc.SEVERITY_WARNING), (Exc.KIND_SENSOR_FAULT, Exc.SEVERITY_CRITICAL),
           (Exc.KIND_CONNECTIVITY_LOSS, Exc.SEVERITY_WARNING), (Exc.KIND_ROAD_CLOSURE, Exc.SEVERITY_WARNING),
           (Exc.KIND_DISPATCH_TIMEOUT, Exc.SEVERITY_WARNING), (Exc.KIND_LAW_ENFORCEMENT_STOP, Exc.SEVERITY_WARNING),
           (Exc.KIND_OTHER, Exc.SEVERITY_INFO)]
_EVENTS = st.lists(st.one_of(
    st.just(("ack",)), st.tuples(st.just("report"), st.booleans()),
    st.tuples(st.just("raise"), st.sampled_from(_RAISED)),
    st.tuples(st.just("check_in"), st.sampled_from([CheckIn.OUTCOME_PROCEED, CheckIn.OUTCOME_HOLD])),
    st.tuples(st.just("resolve"), st.integers(0, 5)), st.just(("arrive",)), st.just(("cancel",))), max_size=25)
#: What a refused call may answer: the mission is not there (yet), a human must check in, something holds it.
_REFUSALS = {"INVALID_MISSION_STATE", "CHECK_IN_REQUIRED", "MISSION_HELD", "PRE_TRIP_CHECK_FAILED"}


@settings(max_examples=600, deadline=None)
@given(events=_EVENTS, check_ins=st.booleans(), check_in_last=st.booleans(), order=st.randoms(use_true_random=False))
def test_no_interleaving_strands_a_departing_truck(events, check_ins, check_in_last, order) -> None:
    """Any order of the truck's reports, acknowledgement, exceptions raised and resolved, check-ins and arrival:

    * never departs without a passing report, a PROCEED departure check-in (when required) and nothing open that
      stops the truck, at the moment it departs;
    * once the command centre has cleared it (the acknowledgement arrived, a PROCEED check-in recorded, every
      exception resolved, in any order), a mission whose truck's latest report passed (or that departed) is
      ENROUTE or ARRIVED: never left before departure while its truck drives.
    """
    mission = _mission(check_ins=check_ins)
    now = T0
    latest: bool | None = None  # the truck's latest pre-trip report: passed?

    def step(action: Callable[[], object]) -> None:
        nonlocal now
        now += timedelta(seconds=7)
        started = mission.HasField("start_time")
        try:
            action()
        except (FailedPrecondition, NotFound) as refusal:
            assert getattr(refusal, "reason", "") in _REFUSALS | {"EXCEPTION_NOT_FOUND"}
        if mission.HasField("start_time") and not started:  # departed in this step
            assert latest is True
            assert not domain.mission_status(mission).stopping
            assert not check_ins or domain.departure_cleared(
                [(p, o) for p, o, _ in domain.recorded_check_ins(mission, now)])
        assert (mission.state == State.EXCEPTION) == bool(open_ids(mission))
        # As soon as nothing stands in the way, a truck whose latest report passed has departed in the mission: a
        # PROCEED check-in when required, nothing open that stops it, and its assignment known to be in its hands
        # (acknowledged, or a report made while the mission was in EXCEPTION).
        status = domain.mission_status(mission)
        cleared = not check_ins or domain.departure_cleared(
            [(p, o) for p, o, _ in domain.recorded_check_ins(mission, now)])
        if latest and cleared and status.state not in TERMINAL and status.state != State.DISPATCHED and not any(
                k != ExceptionKind.PRE_TRIP_FAILURE for k in status.stopping):
            assert status.departed, (state(mission), [(e.kind, e.contingency) for e in mission.exceptions])

    for event in events:
        match event:
            case ("ack",):
                step(lambda: acknowledge(mission, now))
            case ("report", passed):
                latest = passed
                step(lambda passed=passed: report(mission, PASS if passed else FAIL, now))
            case ("raise", (kind, severity)):
                step(lambda kind=kind, severity=severity: raise_(mission, kind, severity, now))
            case ("check_in", outcome):
                step(lambda outcome=outcome: check_in(mission, outcome, now))
            case ("resolve", index):
                ids = open_ids(mission)
                if ids:
                    chosen = ids[index % len(ids)]
                    step(lambda exc=chosen: resolve(mission, exc, now))
            case ("arrive",):
                step(lambda: _change(mission, lambda m: domain.arrive(m, to_timestamp(now), now) is not None, now))
            case ("cancel",):
                step(lambda: _change(mission, lambda m: domain.advance(m, domain.Action.CANCEL, now) is not None, now))
    if State(mission.state) in TERMINAL:
        return
    # The command centre clears the mission: the acknowledgement (on its way) and every exception, the check-in first
    # or last; the truck's report is not sent again.
    step(lambda: acknowledge(mission, now))
    clear = [lambda exc=exc: resolve(mission, exc, now) for exc in open_ids(mission)]
    order.shuffle(clear)
    proceed = [lambda: check_in(mission, CheckIn.OUTCOME_PROCEED, now)] if check_ins else []
    for action in [*clear, *proceed] if check_in_last else [*proceed, *clear]:
        step(action)
    if not domain.departure_cleared([(p, o) for p, o, _ in domain.recorded_check_ins(mission, now)]) and check_ins \
            and not mission.HasField("start_time"):
        step(proceed[0])  # a HOLD check-in raised an exception resolved above: the human clears it again
    assert not open_ids(mission)
    if latest or mission.HasField("start_time"):
        assert State(mission.state) in DEPARTED, (state(mission), [e.kind for e in mission.exceptions])
        assert mission.HasField("start_time") and domain.mission_status(mission).effective in DEPARTED
    else:
        assert State(mission.state) in (State.PRE_TRIP, State.DISPATCHED) and not mission.HasField("start_time")
