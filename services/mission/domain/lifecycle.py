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
    """Where a mission is: its state, the state it resumes to from EXCEPTION, its open exception kinds."""

    state: State
    resume: State | None = None
    open_exceptions: tuple[ExceptionKind, ...] = ()

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


def transition(status: Status, action: Action) -> Status | None:
    """The status after ``action``, None when the action repeats the one that produced the current state
    (a safe retry: nothing changes), or FAILED_PRECONDITION INVALID_MISSION_STATE when illegal.

    RAISE adds an open exception (the server knows which; here only the state moves). RESOLVE_LAST resolves
    the last open exception: the mission returns to ``resume``. START from EXCEPTION resolves the open
    PRE_TRIP_FAILURE exceptions.
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
        if (action == Action.START and resume == State.PRE_TRIP and status.open_exceptions
                and all(k == ExceptionKind.PRE_TRIP_FAILURE for k in status.open_exceptions)):
            return Status(State.ENROUTE)
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
    open_kinds = tuple(ExceptionKind(e.kind) for e in mission.exceptions if not e.HasField("resolve_time"))
    return Status(State(mission.state), State(mission.resume_state) if mission.resume_state else None, open_kinds)
