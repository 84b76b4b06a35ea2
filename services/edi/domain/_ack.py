"""Acknowledgements: the 997 we owe for a received group, the TA1 for an interchange, and inbound 997s read.

Rules (issue 15 and the notes' checklist):

* one 997 per received group: AK1 (GS01, GS06 [, GS08 from 005010]), one AK2 per set (ST01, ST02 [, ST03]) with
  its AK3/AK4 errors and AK5, and AK9 (status, included = GE01 as stated, received, accepted, codes);
* AK5 is ``A`` (no error), ``E`` accepted with errors noted, or ``R`` rejected. An error is *noted* when it is
  confined to data the set's reading does not use (the schema says which, beside each element: _schema.py,
  _sets.py): an unused element of the wrong length or character set, a syntax note among unused elements only, a
  too-long NTE note (kept cut to 80 characters), a segment the set does not define inside a loop the reading
  skips (the 204's equipment or order detail). The set is then acted on like an accepted one (tender made, 990
  sent), and its AK3/AK4s say what was noted, AK5 ``E`` with code 5. Any error in what the reading uses (B2-04,
  S5, G62 windows, N4 postal code, weights, ...), a missing mandatory segment, an envelope problem (SE01 count,
  control numbers) or a content error of the 204 reading rejects it: AK5 ``R``, nothing done with it;
* a group whose own envelope is in doubt (GE missing or disagreeing, unsupported id or version, bad GS06) is
  rejected whole: AK9 ``R`` with its codes and 0 accepted, whatever its sets say;
* otherwise AK9 is ``A`` (every set accepted without errors), ``E`` (every set accepted, some with errors noted),
  ``P`` (some accepted, with or without errors; AK9-04 counts both) or ``R`` (none);
* never acknowledge a 997 (or anything in an ``FA`` group), and answer in the inbound group's GS08 version;
* a TA1 echoes ISA13/09/10, says ``A``, ``E`` or ``R``, and carries the first (most serious) note code;
* an inbound 997 says which of our GS06/ST02 were accepted; it proves receipt, never acceptance of the business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._codes import ElementSyntax, SegmentSyntax, SetSyntax, Ta1Note
from ._envelope import FunctionalGroup, GroupReading, Reading, Ta1, TransactionSet, echoable_group
from ._errors import AcknowledgementError, ElementError, SegmentError
from ._tokens import DATA_CHARACTERS, Delimiters, Segment

__all__ = [
    "GroupAcknowledgement",
    "SetAcknowledgement",
    "acknowledge",
    "acknowledgement_group",
    "read_997",
    "ta1_for",
]

#: AK5 and AK9 carry at most five codes each; an AK2 at most this many AK3s (a flood is cut, the status stands).
_MAX_CODES = 5
_MAX_SEGMENT_ERRORS = 100
_MAX_ELEMENT_ERRORS = 99


def acknowledge(reading: GroupReading, *, control: str, delimiters: Delimiters | None = None) -> \
        TransactionSet | None:
    """The 997 set (ST02 ``control``) for a received group.

    ``None`` for a group of 997s (never acknowledged) and for a group whose GS the AK1 cannot name (see
    :func:`echoable_group`; the reader noted it as TA1 024 on the interchange).

    ``delimiters`` are those the 997 will be written with: an echoed bad value (AK4-04) holding one is left out.
    """
    group = reading.group
    if group.functional_id == "FA" or not echoable_group(group):
        return None
    five = group.version.startswith("005")
    reserved = delimiters.reserved if delimiters else frozenset("*>~^")
    segments = [Segment.of("AK1", group.functional_id, group.control, group.version if five else "")]
    for set_reading in reading.sets:
        transaction = set_reading.transaction
        if not (_SET_ID.fullmatch(transaction.id) and _SET_CONTROL.fullmatch(transaction.control)) or any(
                c in reserved for c in transaction.id + transaction.control):
            continue  # no AK2 can name it: AK9 counts it received and not accepted
        segments.append(Segment.of("AK2", transaction.id, transaction.control,
                                   transaction.convention if five else ""))
        errors = sorted((*set_reading.segment_errors, *set_reading.noted), key=lambda e: e.position)
        for error in errors[:_MAX_SEGMENT_ERRORS]:
            if not _SEGMENT_ID.fullmatch(error.segment_id):
                continue  # an id no AK3 can carry (the AK5's code 5 still rejects the set)
            segments.append(Segment.of("AK3", error.segment_id, str(error.position), error.loop_id,
                                       str(int(error.code))))
            for element in error.elements[:_MAX_ELEMENT_ERRORS]:
                segments.append(_ak4(element, reserved))
        codes = _unique(str(int(p.code)) for p in set_reading.problems)
        if set_reading.status == "E":  # what was noted: the AK3s above
            codes = [str(int(SetSyntax.SEGMENTS_IN_ERROR))]
        segments.append(Segment.of("AK5", set_reading.status, *codes))
    received = len(reading.sets)
    included = reading.stated_count if reading.stated_count is not None else received
    if reading.problems:
        status, accepted = "R", 0
        codes = _unique(str(int(p.code)) for p in reading.problems)
    else:
        accepted = sum(s.accepted for s in reading.sets)  # with errors noted or without
        noted = any(s.status == "E" for s in reading.sets)
        status = ("E" if noted else "A") if accepted == received else "R" if accepted == 0 else "P"
        codes = []
    segments.append(Segment.of("AK9", status, str(included), str(received), str(accepted), *codes))
    return TransactionSet("997", control, tuple(segments))


_SET_ID = re.compile(r"[ -~]{1,3}")
_SEGMENT_ID = re.compile(r"[A-Z0-9]{2,3}")
_SET_CONTROL = re.compile(r"[ -~]{1,9}")


def _unique(codes) -> list[str]:
    seen: list[str] = []
    for code in codes:
        if code not in seen:
            seen.append(code)
    return seen[:_MAX_CODES]


def _ak4(error: ElementError, reserved: frozenset[str]) -> Segment:
    position = (str(error.position), str(error.component)) if error.component else (str(error.position),)
    value = error.value[:99]
    if error.code in (ElementSyntax.MANDATORY_MISSING, ElementSyntax.CONDITIONAL_MISSING) or any(
            c in reserved or c not in DATA_CHARACTERS for c in value):
        value = ""  # nothing to echo, or an echo the 997 could not carry
    reference = error.reference if error.reference.isdigit() else ""
    return Segment.of("AK4", position, reference, str(int(error.code)), value)


def acknowledgement_group(reading: GroupReading, *, group_control: str, set_control: str, date: str, time: str,
                          sender: str | None = None, receiver: str | None = None,
                          delimiters: Delimiters | None = None) -> FunctionalGroup | None:
    """The ``FA`` group carrying the 997 for ``reading``, in the inbound GS08 version.

    GS02/GS03 are the inbound ones swapped unless given (the service gives the trading partner's configured ids,
    so a malformed inbound GS never reaches an outbound one). ``None`` when no 997 is owed (see
    :func:`acknowledge`).
    """
    transaction = acknowledge(reading, control=set_control, delimiters=delimiters)
    if transaction is None:
        return None
    group = reading.group
    return FunctionalGroup("FA", sender if sender is not None else group.receiver,
                           receiver if receiver is not None else group.sender, date, time, group_control,
                           group.version, (transaction,), "X")


def ta1_for(reading: Reading) -> Ta1:
    """The TA1 answering an interchange: A, E (noted, processed) or R (rejected), with the first note code.

    ISA13/09/10 are echoed as received; one of the wrong shape is sent as zeros of its width (the TA1 must
    still be writable, and the note code says what was wrong).
    """
    problems = sorted(reading.problems, key=lambda p: not p.note.rejects)  # stable: the first rejecting one
    ack = "A" if not problems else "R" if problems[0].note.rejects else "E"
    note = problems[0].note if problems else Ta1Note.NO_ERROR
    return Ta1(_echo(reading.control, 9), _echo(reading.date, 6), _echo(reading.time, 4), ack, note.value)


def _echo(value: str, width: int) -> str:
    return value if len(value) == width and value.isdigit() else "0" * width


# --- 997 in ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetAcknowledgement:
    """One AK2 loop: which of our sets, its AK5 status and codes, and the AK3/AK4 errors the partner found."""

    set_id: str
    control: str
    status: str
    codes: tuple[str, ...] = ()
    errors: tuple[SegmentError, ...] = ()


@dataclass(frozen=True)
class GroupAcknowledgement:
    """An inbound 997: the group it answers (our GS06), its sets, and AK9."""

    functional_id: str
    group_control: str
    status: str
    included: int
    received: int
    accepted: int
    sets: tuple[SetAcknowledgement, ...] = ()
    codes: tuple[str, ...] = ()
    version: str = ""

    def outcome(self, control: str) -> str | None:
        """``accepted``, ``accepted_with_errors`` or ``rejected`` for our ST02 ``control``; ``None`` if the 997
        does not say (not listed under a partial AK9): the set stays waiting and ages toward overdue."""
        for ack in self.sets:
            if ack.control == control:
                return _OUTCOMES.get(ack.status, "rejected")
        if self.status in ("A", "E"):  # unlisted sets of an accepted group are accepted
            return _OUTCOMES[self.status]
        if self.status in ("R", "M", "W", "X"):
            return "rejected"
        return None


_OUTCOMES = {"A": "accepted", "E": "accepted_with_errors"}


def read_997(transaction: TransactionSet) -> GroupAcknowledgement:
    """A 997 set as a structured result; raises :class:`AcknowledgementError` if it says too little to match."""
    if transaction.id != "997":
        raise AcknowledgementError(f"set {transaction.id} is not a 997")
    segments = transaction.segments
    if not segments or segments[0].id != "AK1" or segments[-1].id != "AK9":
        raise AcknowledgementError("a 997 starts with AK1 and ends with AK9")
    ak1, ak9 = segments[0], segments[-1]
    sets: list[SetAcknowledgement] = []
    current: dict | None = None
    for segment in segments[1:-1]:
        if segment.id == "AK2":
            current = {"set_id": segment.get(1), "control": segment.get(2), "errors": []}
        elif current is None:
            raise AcknowledgementError(f"{segment.id} outside an AK2 loop")
        elif segment.id == "AK3":
            current["errors"].append(SegmentError(segment.get(1), _int(segment.get(2)),
                                                  _code(SegmentSyntax, segment.get(4)), loop_id=segment.get(3)))
        elif segment.id == "AK4" and current["errors"]:
            last = current["errors"][-1]
            element = ElementError(_int(segment.component(1, 1)), _code(ElementSyntax, segment.get(3)),
                                   component=_int(segment.component(1, 2)), reference=segment.get(2),
                                   value=segment.get(4))
            current["errors"][-1] = SegmentError(last.segment_id, last.position, last.code, loop_id=last.loop_id,
                                                 elements=(*last.elements, element))
        elif segment.id == "AK5":
            sets.append(SetAcknowledgement(current["set_id"], current["control"], segment.get(1),
                                           tuple(segment.get(i) for i in range(2, 7) if segment.get(i)),
                                           tuple(current["errors"])))
            current = None
        else:
            raise AcknowledgementError(f"{segment.id} where a 997 cannot have it")
    if current is not None:
        raise AcknowledgementError(f"AK2 {current['control']} has no AK5")
    return GroupAcknowledgement(
        ak1.get(1), ak1.get(2), ak9.get(1), _int(ak9.get(2)), _int(ak9.get(3)), _int(ak9.get(4)), tuple(sets),
        tuple(ak9.get(i) for i in range(5, 10) if ak9.get(i)), ak1.get(3))


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _code(kind, text: str):
    try:
        return kind(int(text))
    except ValueError:
        return kind(1)
