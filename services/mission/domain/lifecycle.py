"""The mission state machine: states, actions, legal transitions, contingencies of exceptions."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from haulmesh.mission.v1 import mission_pb2
from services.runtime import (
    FailedPrecondition,
)

from .enums import BEFORE_DEPARTURE, DEPARTED, TERMINAL, Contingency, ExceptionKind, Severity, State

# --- Mission state machine ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Status:
    """Where a mission is: its state, the state it resumes to from EXCEPTION, its open exception kinds, and the
    kinds of those open exceptions whose contingency stops the vehicle (HOLD, MINIMAL_RISK_STOP: :data:`STOPPING`)."""

    state: State
    resume: State | None = None
    open_exceptions: tuple[ExceptionKind, ...] = ()
    stopping: tuple[ExceptionKind, ...] = ()

    @property
    def effective(self) -> State:
        """The state the mission is in, seen through EXCEPTION."""
        return self.resume if self.state == State.EXCEPTION and self.resume else self.state

    @property
    def departed(self) -> bool:
        return self.effective not in BEFORE_DEPARTURE


class Action(enum.Enum):
    """The transitions of the operator / service API."""

    ACKNOWLEDGE = "acknowledge"
    START = "start"
    ARRIVE = "arrive"
    DELIVER = "deliver"
    COMPLETE = "complete"
    CANCEL = "cancel"
    ABORT = "abort"
    RAISE = "raise"
    RESOLVE_LAST = "resolve_last"


#: The contingencies that keep a vehicle where it is: an open exception with one forbids the departure.
STOPPING = frozenset({Contingency.HOLD, Contingency.MINIMAL_RISK_STOP})


#: Plain transitions: action → (from states, to state).
_PLAIN: dict[Action, tuple[frozenset[State], State]] = {
    Action.ACKNOWLEDGE: (frozenset({State.DISPATCHED}), State.PRE_TRIP),
    Action.START: (frozenset({State.PRE_TRIP}), State.ENROUTE),
    Action.ARRIVE: (frozenset({State.ENROUTE}), State.ARRIVED),
    Action.DELIVER: (frozenset({State.ARRIVED}), State.DELIVERED),
    Action.COMPLETE: (frozenset({State.DELIVERED}), State.COMPLETED),
    Action.CANCEL: (BEFORE_DEPARTURE, State.CANCELLED),
    Action.ABORT: (DEPARTED, State.ABORTED),
}


def _illegal(status: Status, action: Action) -> FailedPrecondition:
    return FailedPrecondition(f"{action.value} is not allowed in state {status.state.name}"
                              + (f" (resuming to {status.resume.name})" if status.resume else ""),
                              reason="INVALID_MISSION_STATE", metadata={"state": f"STATE_{status.state.name}"})


def _held(status: Status) -> FailedPrecondition:
    kinds = sorted({k.name for k in status.stopping if k != ExceptionKind.PRE_TRIP_FAILURE})
    return FailedPrecondition(f"start is held: the open {', '.join(kinds)} exception"
                              f"{'s' if len(kinds) > 1 else ''} keep{'' if len(kinds) > 1 else 's'} the vehicle "
                              "where it is (contingency HOLD or MINIMAL_RISK_STOP); resolve it first and the "
                              "departure is recorded then", reason="MISSION_HELD",
                              metadata={"state": f"STATE_{status.state.name}", "exceptions": ",".join(kinds)})


def _start_in_exception(status: Status) -> Status:
    """START (the truck departs) while in EXCEPTION before departure (``resume`` DISPATCHED or PRE_TRIP).

    Why it is recorded rather than refused: the truck's passing pre-trip report is a fact about the truck, not a
    request the exception can answer later; refusing it for good strands the mission in PRE_TRIP while the truck
    drives (nothing then raises or resolves anything for it). So the departure is recorded in ``resume``: the
    passing checks resolve the open PRE_TRIP_FAILURE exceptions, and the mission is ENROUTE, or stays in EXCEPTION
    resuming to ENROUTE while other exceptions are open (a warning-level fault, a lost link, a reroute, a remote
    operator at the wheel: contingencies under which a truck moves). Only an open exception whose contingency
    keeps the truck where it is (HOLD, MINIMAL_RISK_STOP: a check-in's HOLD, a dispatch timeout, a critical
    fault) refuses the start, with MISSION_HELD, naming them. A DISPATCHED resume counts as acknowledged: a truck
    reporting its pre-trip checks for the mission has its assignment."""
    if any(k != ExceptionKind.PRE_TRIP_FAILURE for k in status.stopping):
        raise _held(status)
    remaining = tuple(k for k in status.open_exceptions if k != ExceptionKind.PRE_TRIP_FAILURE)
    return Status(State.EXCEPTION, State.ENROUTE, remaining) if remaining else Status(State.ENROUTE)


def transition(status: Status, action: Action) -> Status | None:
    """The status after ``action``, None when the action repeats the one that produced the current state
    (a safe retry: nothing changes), or FAILED_PRECONDITION INVALID_MISSION_STATE when illegal.

    RAISE adds an open exception (the server knows which; here only the state moves). RESOLVE_LAST resolves
    the last open exception: the mission returns to ``resume``. Before departure EXCEPTION does not stop the
    lifecycle underneath it: ACKNOWLEDGE moves ``resume`` from DISPATCHED to PRE_TRIP, and START records the
    departure (:func:`_start_in_exception`; refused with MISSION_HELD while an open exception stops the vehicle).
    """
    state, resume = status.state, status.resume
    if action == Action.RAISE:
        if state in TERMINAL or state == State.DELIVERED:
            raise _illegal(status, action)
        return Status(State.EXCEPTION, resume if state == State.EXCEPTION else state, status.open_exceptions)
    if action == Action.RESOLVE_LAST:
        if state != State.EXCEPTION or resume is None:
            raise _illegal(status, action)
        return Status(resume)
    sources, target = _PLAIN[action]
    if state == target:
        return None
    if state in sources:
        return Status(target)
    if state == State.EXCEPTION and resume is not None:
        if action == Action.ARRIVE and resume == State.ENROUTE:
            return Status(State.EXCEPTION, State.ARRIVED, status.open_exceptions)
        if action == Action.ARRIVE and resume == State.ARRIVED:
            return None
        if action == Action.CANCEL and resume in BEFORE_DEPARTURE:
            return Status(State.CANCELLED)
        if action == Action.ABORT and resume in DEPARTED:
            return Status(State.ABORTED)
        if action == Action.ACKNOWLEDGE and resume == State.DISPATCHED:
            return Status(State.EXCEPTION, State.PRE_TRIP, status.open_exceptions, status.stopping)
        if action == Action.ACKNOWLEDGE and resume == State.PRE_TRIP:
            return None
        if action == Action.START and resume in BEFORE_DEPARTURE:
            return _start_in_exception(status)
    raise _illegal(status, action)


def choose_contingency(kind: ExceptionKind, severity: Severity, *, departed: bool) -> Contingency:
    """The fleet's rule for an exception raised without a contingency (RaiseMissionException)."""
    if kind in (ExceptionKind.SENSOR_FAULT, ExceptionKind.VEHICLE_FAULT, ExceptionKind.ADVERSE_WEATHER):
        return Contingency.MINIMAL_RISK_STOP if severity == Severity.CRITICAL else Contingency.CONTINUE
    if kind in (ExceptionKind.ROAD_CLOSURE, ExceptionKind.TRAFFIC_INCIDENT):
        return Contingency.REROUTE
    if kind in (ExceptionKind.LAW_ENFORCEMENT_STOP, ExceptionKind.CARGO):
        return Contingency.HUMAN_TAKEOVER
    if kind in (ExceptionKind.PRE_TRIP_FAILURE, ExceptionKind.DISPATCH_TIMEOUT, ExceptionKind.CHECK_IN_HOLD):
        return Contingency.MINIMAL_RISK_STOP if departed else Contingency.HOLD
    return Contingency.CONTINUE  # CONNECTIVITY_LOSS drives on autonomously; OTHER is monitored


def mission_status(mission: mission_pb2.Mission) -> Status:
    """The state-machine view of a mission: its state, resume state and open exception kinds."""
    open_ones = [e for e in mission.exceptions if not e.HasField("resolve_time")]
    return Status(State(mission.state), State(mission.resume_state) if mission.resume_state else None,
                  tuple(ExceptionKind(e.kind) for e in open_ones),
                  tuple(ExceptionKind(e.kind) for e in open_ones if e.contingency in STOPPING))
