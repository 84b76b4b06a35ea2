"""Outbound documents awaiting the partner's 997: sent → accepted / accepted with errors / rejected, or overdue →
resent on the partner's schedule → given up. Pure: functions over an :class:`OutboundDocument` and ``now``.

The life of one transaction set we sent (a 990, 214 or 210), as the notes' "997 in" checklist has it:

* :func:`track_sent` starts tracking it (state ``waiting``) with its first :class:`Transmission` (ISA13, GS06, ST02);
* :func:`apply_997` matches an inbound 997 (:func:`read_997`'s result) by AK1-02 = our GS06 and AK2-02 = our
  ST02, against every transmission of the document (a late 997 for the first still counts after a resend): the
  document becomes ``accepted``, ``accepted_with_errors`` or ``rejected`` (a 997 proves receipt and syntax, never
  that the partner's business took it). What does not fit is *reported*, never raised: a 997 for a group or a set
  we never sent, a second 997 for a set already answered, a 997 after we gave up, a set of ours the 997 leaves out;
* :func:`advance_tracking` applies the clock (``now``) with the partner's :class:`AckSchedule`: ``overdue`` when a
  transmission's 997 has not come within ``deadline_minutes`` (an alert: the unacknowledged age is a metric), a
  resend at each of ``resend_after_minutes`` after the first send (the schedule is the backoff; its length caps
  the resends), and ``given_up`` (an alert for a person) once the last transmission has been overdue for another
  deadline. It returns what to do now and when to call it again;
* :func:`record_resend` records a resend. A document ends in exactly one final state; a final state never changes.

What a resend is. The same transaction set, byte for byte in its content (the same B10 on a 214, the same B3-02
invoice number on a 210: that is how the partner's application recognises a document it already has), in a *new*
envelope with new control numbers: a new ISA13, a new GS06 and a new ST02. Real partners expect exactly that:
their translators reject an interchange control number they have already seen from us (X12.5 §5.1.2 makes ISA05-08
+ ISA13, and GS01-03 + GS06, unique within the partner agreement's window; BizTalk's "do not allow duplicate" and
MuleSoft's ``requireUniqueInterchanges``, on by default, refuse a repeat with TA1 025), so a resend under the old
ISA13 would be discarded unread if the first copy did arrive and only its 997 was lost; and the issue wants
control numbers unique and never reused, so each transmission's 997 names it alone. A ``rejected`` document is
not resent: the same content would be rejected again; it waits for a person (the report says so).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from ._ack import GroupAcknowledgement
from ._errors import X12Error
from ._sets import FUNCTIONAL_IDS

__all__ = [
    "ACK_FINAL_STATES",
    "AckAction",
    "AckFinding",
    "AckReport",
    "AckResult",
    "AckSchedule",
    "AckState",
    "AckStep",
    "OutboundDocument",
    "TrackingError",
    "Transmission",
    "advance_tracking",
    "apply_997",
    "record_resend",
    "track_sent",
]

_MAX_MINUTES = 7 * 24 * 60
_MAX_RESENDS = 10


class TrackingError(X12Error, ValueError):
    """A misuse of the tracking rules by the caller (a resend of a final document, a control number reused, a
    schedule that cannot work); never raised for what a partner sends."""


class AckState(StrEnum):
    """Where an outbound document stands with the partner's 997."""

    WAITING = "waiting"
    OVERDUE = "overdue"
    ACCEPTED = "accepted"
    ACCEPTED_WITH_ERRORS = "accepted_with_errors"
    REJECTED = "rejected"
    GIVEN_UP = "given_up"


#: States a document never leaves.
ACK_FINAL_STATES = frozenset({AckState.ACCEPTED, AckState.ACCEPTED_WITH_ERRORS, AckState.REJECTED, AckState.GIVEN_UP})


@dataclass(frozen=True)
class AckSchedule:
    """A partner's 997 habits: a transmission without its 997 after ``deadline_minutes`` is overdue; resends go
    out ``resend_after_minutes`` after the *first* send (increasing: e.g. 60 and 240, a backoff; none: never
    resent), never before the transmission they follow is overdue; a document is given up once its last
    transmission has been overdue for another deadline. The partner config's ``acknowledgements.
    resend_after_minutes`` is this schedule."""

    deadline_minutes: int = 30
    resend_after_minutes: tuple[int, ...] = (60, 240)

    def __post_init__(self) -> None:
        if isinstance(self.deadline_minutes, bool) or not isinstance(self.deadline_minutes, int) \
                or not 1 <= self.deadline_minutes <= _MAX_MINUTES:
            raise TrackingError(f"deadline_minutes: {self.deadline_minutes!r} is not 1 to {_MAX_MINUTES}")
        resends = self.resend_after_minutes
        if isinstance(resends, str | bytes) or not isinstance(resends, Sequence) or len(resends) > _MAX_RESENDS or any(
                isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= _MAX_MINUTES for m in resends) \
                or list(resends) != sorted(set(resends)):
            raise TrackingError(f"resend_after_minutes: {resends!r} is not an increasing list of at most "
                                f"{_MAX_RESENDS} minutes from 1 to {_MAX_MINUTES}")
        object.__setattr__(self, "resend_after_minutes", tuple(resends))  # a TOML list is welcome

    @property
    def deadline(self) -> timedelta:
        return timedelta(minutes=self.deadline_minutes)


@dataclass(frozen=True)
class Transmission:
    """One sending of a document: its envelope's control numbers and when it was handed to the transport."""

    interchange: str
    group: str
    control: str
    sent_at: datetime


@dataclass(frozen=True)
class OutboundDocument:
    """An outbound transaction set and its 997 state. ``document`` is the caller's id for it (e.g. the stored
    record's key), ``set_id`` its ST01; ``changed_at`` when ``state`` last changed; ``codes`` the partner's AK5
    (or AK9) codes and ``acknowledged`` the transmission its 997 answered, once final by a 997."""

    document: str
    set_id: str
    transmissions: tuple[Transmission, ...]
    state: AckState
    changed_at: datetime
    codes: tuple[str, ...] = ()
    acknowledged: Transmission | None = None

    @property
    def final(self) -> bool:
        return self.state in ACK_FINAL_STATES

    @property
    def first_sent(self) -> datetime:
        return self.transmissions[0].sent_at

    @property
    def resends(self) -> int:
        return len(self.transmissions) - 1

    def unacknowledged_for(self, now: datetime) -> timedelta:
        """How long the document has waited for a 997 (zero once final): the unacknowledged-age metric."""
        return timedelta(0) if self.final else max(now - self.first_sent, timedelta(0))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (times as ISO 8601) for the store; :meth:`from_dict` reads them back."""
        def transmission(t: Transmission) -> dict[str, str]:
            return {"interchange": t.interchange, "group": t.group, "control": t.control,
                    "sent_at": t.sent_at.isoformat()}
        return {"document": self.document, "set_id": self.set_id,
                "transmissions": [transmission(t) for t in self.transmissions], "state": self.state.value,
                "changed_at": self.changed_at.isoformat(), "codes": list(self.codes),
                "acknowledged": transmission(self.acknowledged) if self.acknowledged else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutboundDocument:
        def transmission(t: Mapping[str, str]) -> Transmission:
            return Transmission(t["interchange"], t["group"], t["control"], datetime.fromisoformat(t["sent_at"]))
        acknowledged = data.get("acknowledged")
        return cls(data["document"], data["set_id"], tuple(transmission(t) for t in data["transmissions"]),
                   AckState(data["state"]), datetime.fromisoformat(data["changed_at"]), tuple(data.get("codes", ())),
                   transmission(acknowledged) if acknowledged else None)


def track_sent(document: str, set_id: str, transmission: Transmission) -> OutboundDocument:
    """Start tracking a document just sent: ``waiting`` for its 997."""
    if set_id not in FUNCTIONAL_IDS or set_id == "997":
        raise TrackingError(f"set {set_id!r}: only the sets we send and expect a 997 for are tracked")
    if transmission.sent_at.utcoffset() is None:
        raise TrackingError("sent_at must be an aware datetime")
    return OutboundDocument(document, set_id, (transmission,), AckState.WAITING, transmission.sent_at)


# --- the clock -----------------------------------------------------------------------------------------------------


class AckAction(StrEnum):
    """What :func:`advance_tracking` asks the caller to do now."""

    #: The document just became overdue: alert (once per transmission), count it unacknowledged.
    OVERDUE = "overdue"
    #: Send the same document again in a new envelope (new ISA13, GS06, ST02), then call :func:`record_resend`.
    RESEND = "resend"
    #: No 997 came after the last resend: the document is given up; alert a person.
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class AckStep:
    """The document after the clock was applied, what to do now (in order), and when to look again (``None``: the
    document is final; a pending resend is due at once)."""

    document: OutboundDocument
    actions: tuple[AckAction, ...]
    due: datetime | None


def _next(doc: OutboundDocument, schedule: AckSchedule) -> tuple[AckAction, datetime]:
    last = doc.transmissions[-1]
    if doc.state is AckState.WAITING:
        return AckAction.OVERDUE, last.sent_at + schedule.deadline
    if doc.resends < len(schedule.resend_after_minutes):
        planned = doc.first_sent + timedelta(minutes=schedule.resend_after_minutes[doc.resends])
        return AckAction.RESEND, max(planned, last.sent_at + schedule.deadline)
    return AckAction.GIVE_UP, last.sent_at + 2 * schedule.deadline


def advance_tracking(doc: OutboundDocument, schedule: AckSchedule, now: datetime) -> AckStep:
    """Apply the clock at ``now``: the transitions that fell due (overdue, given up) and whether a resend is due.
    Calling it again with the same ``now`` changes nothing more (a resend stays due until :func:`record_resend`)."""
    actions: list[AckAction] = []
    while not doc.final:
        action, at = _next(doc, schedule)
        if at > now:
            return AckStep(doc, tuple(actions), at)
        actions.append(action)
        if action is AckAction.RESEND:
            return AckStep(doc, tuple(actions), at)
        doc = replace(doc, state=AckState.OVERDUE if action is AckAction.OVERDUE else AckState.GIVEN_UP, changed_at=at)
    return AckStep(doc, tuple(actions), None)


def record_resend(doc: OutboundDocument, transmission: Transmission) -> OutboundDocument:
    """Record a resend (the same content in a new envelope): ``waiting`` again for its 997. Recording the same
    transmission twice changes nothing; a final document is never resent; control numbers are never reused."""
    if transmission in doc.transmissions:
        return doc
    if doc.final:
        raise TrackingError(f"{doc.document}: {doc.state.value}: a final document is not resent")
    for earlier in doc.transmissions:
        if transmission.interchange == earlier.interchange or transmission.group == earlier.group \
                or transmission.control == earlier.control:
            raise TrackingError(f"{doc.document}: a resend needs a new ISA13, GS06 and ST02, not those of "
                                f"{earlier.interchange}/{earlier.group}/{earlier.control}")
    if transmission.sent_at < doc.transmissions[-1].sent_at:
        raise TrackingError(f"{doc.document}: a resend cannot be sent before the transmission it follows")
    return replace(doc, transmissions=(*doc.transmissions, transmission), state=AckState.WAITING,
                   changed_at=transmission.sent_at)


# --- 997 in --------------------------------------------------------------------------------------------------------


class AckFinding(StrEnum):
    """What an inbound 997 said about one of our documents, or about something that is not ours."""

    #: A document of ours got its outcome (accepted, accepted with errors, rejected).
    ACKNOWLEDGED = "acknowledged"
    #: A second 997 for a set already answered: nothing changes (``detail`` says if it disagrees).
    DUPLICATE = "duplicate"
    #: A 997 for a document we had given up on: it did arrive (``outcome``); the state stays given up.
    LATE = "late"
    #: A set of ours in the acknowledged group that the 997 neither lists nor covers: it keeps waiting.
    NOT_LISTED = "not_listed"
    #: AK1 names a group we never sent (GS06 unknown, or its functional id not the group's).
    UNKNOWN_GROUP = "unknown_group"
    #: An AK2 names a set we never sent in that group (or another set id than ours under that ST02).
    UNKNOWN_SET = "unknown_set"


#: Findings a person should see (with ``rejected`` and ``accepted_with_errors`` outcomes).
_ATTENTION = frozenset({AckFinding.DUPLICATE, AckFinding.LATE, AckFinding.UNKNOWN_GROUP, AckFinding.UNKNOWN_SET})


@dataclass(frozen=True)
class AckReport:
    """One finding: the 997's AK1-02 (``group``), the AK2-02 or our ST02 (``control``) when it concerns a set,
    our document's id if it is ours, the outcome the 997 gives it, and why."""

    finding: AckFinding
    group: str
    control: str = ""
    document: str = ""
    outcome: str = ""
    detail: str = ""

    @property
    def needs_attention(self) -> bool:
        """Whether to alert: something not ours or not in order, or a document the partner did not take cleanly."""
        return self.finding in _ATTENTION or self.outcome in (AckState.REJECTED, AckState.ACCEPTED_WITH_ERRORS)


@dataclass(frozen=True)
class AckResult:
    """What a 997 changed: the documents whose state changed, and every finding in order."""

    documents: tuple[OutboundDocument, ...]
    reports: tuple[AckReport, ...]


def _codes(ack: GroupAcknowledgement, control: str) -> tuple[str, ...]:
    listed = next((s for s in ack.sets if s.control == control), None)
    return listed.codes if listed is not None and listed.codes else ack.codes


def apply_997(ack: GroupAcknowledgement, documents: Iterable[OutboundDocument], now: datetime) -> AckResult:
    """Match a 997 (from :func:`read_997`) against our documents (at least those with a transmission in the group
    it acknowledges; others are ignored) and say what it changed. Never raises for what the 997 says."""
    ours: dict[str, OutboundDocument] = {}
    sets: dict[str, tuple[str, Transmission]] = {}  # our ST02 in this group → (document id, transmission)
    for doc in documents:
        for t in doc.transmissions:
            if t.group == ack.group_control:
                ours[doc.document] = doc
                sets[t.control] = (doc.document, t)
    if not sets:
        return AckResult((), (AckReport(AckFinding.UNKNOWN_GROUP, ack.group_control,
                                     detail=f"AK1 {ack.functional_id}*{ack.group_control}: we sent no such group"),))
    expected = {FUNCTIONAL_IDS.get(d.set_id) for d in ours.values()}
    if ack.functional_id not in expected:
        return AckResult((), (AckReport(AckFinding.UNKNOWN_GROUP, ack.group_control, detail=(
            f"AK1-01 {ack.functional_id!r} is not the functional id of our group {ack.group_control} "
            f"({', '.join(sorted(x for x in expected if x))})")),))
    reports: list[AckReport] = []
    for listed in ack.sets:
        match = sets.get(listed.control)
        if match is None:
            reports.append(AckReport(AckFinding.UNKNOWN_SET, ack.group_control, listed.control,
                                  detail=f"AK2 {listed.set_id}*{listed.control}: we sent no such set in this group"))
        elif ours[match[0]].set_id != listed.set_id:
            reports.append(AckReport(AckFinding.UNKNOWN_SET, ack.group_control, listed.control, match[0], detail=(
                f"AK2-01 {listed.set_id!r}: our set {listed.control} is a {ours[match[0]].set_id}")))
    changed: dict[str, OutboundDocument] = {}
    for control, (document, transmission) in sorted(sets.items()):
        if any(r.control == control and r.finding is AckFinding.UNKNOWN_SET for r in reports):
            continue
        doc = changed.get(document, ours[document])
        outcome = ack.outcome(control)
        if outcome is None:
            if not doc.final:
                reports.append(AckReport(AckFinding.NOT_LISTED, ack.group_control, control, document,
                                      detail=f"AK9 {ack.status}: the 997 does not say what became of set {control}"))
            continue
        if doc.state is AckState.GIVEN_UP:
            reports.append(AckReport(AckFinding.LATE, ack.group_control, control, document, outcome,
                                  f"a 997 after the document was given up at {doc.changed_at.isoformat()}"))
        elif doc.final:
            agrees = "agrees" if outcome == doc.state.value else f"disagrees (the first said {doc.state.value})"
            reports.append(AckReport(AckFinding.DUPLICATE, ack.group_control, control, document, outcome,
                                  f"the document was already answered; this 997 {agrees}"))
        else:
            codes = _codes(ack, control)
            changed[document] = replace(doc, state=AckState(outcome), changed_at=now, codes=codes,
                                        acknowledged=transmission)
            detail = f"codes {', '.join(codes)}" if codes else ""
            reports.append(AckReport(AckFinding.ACKNOWLEDGED, ack.group_control, control, document, outcome, detail))
    return AckResult(tuple(changed.values()), tuple(reports))
