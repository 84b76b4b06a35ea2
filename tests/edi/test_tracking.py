"""Outbound documents awaiting the partner's 997: each transition by hand, what is reported rather than raised,
and under hypothesis that any mix of clock, resends and 997s ends a document in exactly one final state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.edi.domain import (
    ACK_FINAL_STATES,
    AckAction,
    AckFinding,
    AckSchedule,
    AckState,
    OutboundDocument,
    Segment,
    TrackingError,
    TransactionSet,
    Transmission,
    advance_tracking,
    apply_997,
    read_997,
    record_resend,
    track_sent,
)

T0 = datetime(2026, 3, 16, 15, 0, tzinfo=UTC)
SCHEDULE = AckSchedule(deadline_minutes=30, resend_after_minutes=(60, 240))


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def first(control: str = "0001", group: str = "41", interchange: str = "000000041") -> Transmission:
    return Transmission(interchange, group, control, T0)


def ack(group: str, *sets: tuple[str, str, str] | tuple[str, str, str, str], status: str = "A",
        functional_id: str = "QM", codes: tuple[str, ...] = ()):
    """A real 997 read back: AK1, an AK2/AK5 per (set id, control, status[, code]), AK9."""
    body = [Segment.of("AK1", functional_id, group)]
    for set_id, control, set_status, *code in sets:
        body += [Segment.of("AK2", set_id, control), Segment.of("AK5", set_status, *code)]
    accepted = sum(s[2] in ("A", "E") for s in sets)
    body.append(Segment.of("AK9", status, str(len(sets)), str(len(sets)), str(accepted), *codes))
    return read_997(TransactionSet("997", "0901", tuple(body)))


def test_accepted_accepted_with_errors_and_rejected() -> None:
    docs = [track_sent("214:a", "214", first("0001")), track_sent("214:b", "214", first("0002")),
            track_sent("214:c", "214", first("0003"))]
    result = apply_997(ack("41", ("214", "0001", "A"), ("214", "0002", "E", "5"), ("214", "0003", "R", "5"),
                           status="P"), docs, minutes(2))
    states = {d.document: (d.state, d.codes, d.changed_at) for d in result.documents}
    assert states == {"214:a": (AckState.ACCEPTED, (), minutes(2)),
                      "214:b": (AckState.ACCEPTED_WITH_ERRORS, ("5",), minutes(2)),
                      "214:c": (AckState.REJECTED, ("5",), minutes(2))}
    assert [(r.finding, r.document, r.outcome, r.needs_attention) for r in result.reports] == [
        (AckFinding.ACKNOWLEDGED, "214:a", "accepted", False),
        (AckFinding.ACKNOWLEDGED, "214:b", "accepted_with_errors", True),
        (AckFinding.ACKNOWLEDGED, "214:c", "rejected", True)]
    assert all(d.acknowledged == d.transmissions[0] for d in result.documents)


def test_a_group_rejected_whole_rejects_every_set_in_it() -> None:
    doc = track_sent("210:inv-1", "210", first())
    result = apply_997(ack("41", status="R", functional_id="IM", codes=("5",)), [doc], minutes(1))
    assert [(d.state, d.codes) for d in result.documents] == [(AckState.REJECTED, ("5",))]


def test_the_clock_overdue_resend_overdue_resend_given_up() -> None:
    doc = track_sent("214:a", "214", first())
    step = advance_tracking(doc, SCHEDULE, minutes(29))
    assert (step.document.state, step.actions, step.due) == (AckState.WAITING, (), minutes(30))
    step = advance_tracking(step.document, SCHEDULE, minutes(30))
    assert (step.document.state, step.actions, step.due) == (AckState.OVERDUE, (AckAction.OVERDUE,), minutes(60))
    assert advance_tracking(step.document, SCHEDULE, minutes(30)).actions == ()  # the same now again: nothing more
    step = advance_tracking(step.document, SCHEDULE, minutes(61))
    assert step.actions == (AckAction.RESEND,) and step.due == minutes(60)
    assert advance_tracking(step.document, SCHEDULE, minutes(61)).actions == (AckAction.RESEND,)  # due until recorded
    doc = record_resend(step.document, Transmission("000000042", "42", "0002", minutes(61)))
    assert (doc.state, doc.resends) == (AckState.WAITING, 1)
    step = advance_tracking(doc, SCHEDULE, minutes(100))
    assert (step.actions, step.document.state, step.due) == ((AckAction.OVERDUE,), AckState.OVERDUE, minutes(240))
    doc = record_resend(step.document, Transmission("000000043", "43", "0003", minutes(240)))
    step = advance_tracking(doc, SCHEDULE, minutes(269))
    assert (step.actions, step.due) == ((), minutes(270))
    step = advance_tracking(step.document, SCHEDULE, minutes(400))  # down for a while: overdue, then given up at once
    assert (step.actions, step.document.state, step.due) == ((AckAction.OVERDUE, AckAction.GIVE_UP), AckState.GIVEN_UP,
                                                             None)
    assert step.document.changed_at == minutes(300)
    assert step.document.unacknowledged_for(minutes(400)) == timedelta(0)
    with pytest.raises(TrackingError, match="final"):
        record_resend(step.document, Transmission("000000044", "44", "0004", minutes(401)))


def test_without_resends_a_document_is_given_up_after_a_second_deadline() -> None:
    step = advance_tracking(track_sent("990:x", "990", first()), AckSchedule(30, ()), minutes(59))
    assert (step.actions, step.due) == ((AckAction.OVERDUE,), minutes(60))
    assert advance_tracking(step.document, AckSchedule(30, ()), minutes(60)).actions == (AckAction.GIVE_UP,)


def test_a_resend_waits_for_the_deadline_of_a_late_manual_resend() -> None:
    doc = record_resend(track_sent("214:a", "214", first()), Transmission("000000042", "42", "0002", minutes(10)))
    step = advance_tracking(doc, SCHEDULE, minutes(45))
    assert (step.actions, step.due) == ((AckAction.OVERDUE,), minutes(240))  # second resend at its planned time


def test_a_late_997_for_the_first_transmission_still_counts_after_a_resend() -> None:
    doc = record_resend(track_sent("214:a", "214", first()), Transmission("000000042", "42", "0002", minutes(61)))
    result = apply_997(ack("41", ("214", "0001", "A")), [doc], minutes(62))
    [done] = result.documents
    assert (done.state, done.acknowledged) == (AckState.ACCEPTED, doc.transmissions[0])
    again = apply_997(ack("42", ("214", "0002", "A")), [done], minutes(63))  # then the resend's own 997
    assert again.documents == ()
    assert [(r.finding, r.detail) for r in again.reports] == [
        (AckFinding.DUPLICATE, "the document was already answered; this 997 agrees")]


def test_what_is_not_ours_or_not_in_order_is_reported_not_raised() -> None:
    doc = track_sent("214:a", "214", first("0001"))
    other = track_sent("214:b", "214", first("0002"))
    unknown_group = apply_997(ack("99", ("214", "0001", "A")), [doc], minutes(1))
    assert [(r.finding, r.group, r.needs_attention) for r in unknown_group.reports] == [
        (AckFinding.UNKNOWN_GROUP, "99", True)]
    wrong_id = apply_997(ack("41", ("214", "0001", "A"), functional_id="IM"), [doc], minutes(1))
    assert [r.finding for r in wrong_id.reports] == [AckFinding.UNKNOWN_GROUP] and wrong_id.documents == ()
    mixed = apply_997(ack("41", ("214", "0001", "A"), ("214", "0777", "A"), ("210", "0002", "A")), [doc, other],
                      minutes(1))
    assert [(r.finding, r.control) for r in mixed.reports] == [
        (AckFinding.UNKNOWN_SET, "0777"), (AckFinding.UNKNOWN_SET, "0002"), (AckFinding.ACKNOWLEDGED, "0001")]
    assert [d.document for d in mixed.documents] == ["214:a"]
    partial = apply_997(ack("41", ("214", "0001", "A"), status="P"), [doc, other], minutes(1))
    assert [(r.finding, r.document) for r in partial.reports] == [
        (AckFinding.ACKNOWLEDGED, "214:a"), (AckFinding.NOT_LISTED, "214:b")]
    rejected = apply_997(ack("41", ("214", "0001", "R", "5")), [doc], minutes(1)).documents[0]
    second = apply_997(ack("41", ("214", "0001", "A")), [rejected], minutes(2))
    assert [(r.finding, r.outcome, r.detail) for r in second.reports] == [
        (AckFinding.DUPLICATE, "accepted", "the document was already answered; this 997 disagrees (the first said "
                                        "rejected)")]
    given_up = advance_tracking(track_sent("214:c", "214", first("0003")), AckSchedule(30, ()), minutes(90)).document
    late = apply_997(ack("41", ("214", "0003", "A")), [given_up], minutes(91))
    assert late.documents == () and [(r.finding, r.outcome) for r in late.reports] == [(AckFinding.LATE, "accepted")]


def test_resends_get_new_control_numbers_and_a_repeat_changes_nothing() -> None:
    doc = track_sent("214:a", "214", first())
    again = Transmission("000000042", "42", "0002", minutes(61))
    assert record_resend(record_resend(doc, again), again) == record_resend(doc, again)
    for reused in (Transmission("000000041", "42", "0002", minutes(61)), Transmission("000000042", "41", "0002",
                                                                                        minutes(61)),
                   Transmission("000000042", "42", "0001", minutes(61))):
        with pytest.raises(TrackingError, match="new ISA13, GS06 and ST02"):
            record_resend(doc, reused)
    with pytest.raises(TrackingError, match="before"):
        record_resend(doc, Transmission("000000042", "42", "0002", minutes(-1)))


@pytest.mark.parametrize(("deadline", "resends"), [(0, ()), (30, (0,)), (30, (60, 60)), (30, (240, 60)),
                                                   (30, tuple(range(30, 41))), (True, ()), (30, "60"), (30, (True,))])
def test_a_schedule_that_cannot_work_is_refused(deadline, resends) -> None:
    with pytest.raises(TrackingError):
        AckSchedule(deadline, resends)


def test_a_resend_planned_before_the_deadline_waits_for_it() -> None:
    schedule = AckSchedule(30, [10])  # a partner file's list; 10 minutes is before the first is overdue
    assert schedule.resend_after_minutes == (10,)
    early = advance_tracking(track_sent("214:a", "214", first()), schedule, minutes(20))
    assert (early.actions, early.due) == ((), minutes(30))
    step = advance_tracking(early.document, schedule, minutes(30))
    assert (step.actions, step.due) == ((AckAction.OVERDUE, AckAction.RESEND), minutes(30))


def test_set_ids_and_times_are_checked_when_tracking_starts() -> None:
    with pytest.raises(TrackingError, match="997"):
        track_sent("x", "997", first())
    with pytest.raises(TrackingError, match="aware"):
        track_sent("x", "214", Transmission("1", "1", "0001", datetime(2026, 3, 16)))


def test_a_document_round_trips_through_plain_values() -> None:
    again = Transmission("000000042", "42", "0002", minutes(61))
    doc = apply_997(ack("42", ("214", "0002", "E", "5")), [record_resend(track_sent("214:a", "214", first()), again)],
                    minutes(62)).documents[0]
    assert OutboundDocument.from_dict(doc.to_dict()) == doc
    waiting = track_sent("214:b", "214", first())
    assert OutboundDocument.from_dict(waiting.to_dict()) == waiting


# --- any mix of clock, resends and 997s -----------------------------------------------------------------------------

_OPS = st.lists(st.one_of(
    st.tuples(st.just("tick"), st.integers(0, 200)),
    st.tuples(st.just("ack"), st.integers(0, 3), st.sampled_from(["A", "E", "R", "P", "unknown"])),
), max_size=25)


def numbered(resend: int, now: datetime) -> Transmission:
    return Transmission(f"{100 + resend:09d}", str(100 + resend), str(1000 + resend), now)


@settings(max_examples=150, deadline=None)
@given(_OPS, st.integers(1, 60), st.lists(st.integers(1, 500), max_size=3, unique=True))
def test_a_tracked_document_ends_in_exactly_one_final_state(ops, deadline, offsets) -> None:
    schedule = AckSchedule(deadline, tuple(sorted(offsets)))
    doc = track_sent("214:a", "214", first("1000", "100", "000000100"))
    now, finals, resends = T0, [], 0
    def note(d: OutboundDocument) -> None:
        if d.final and (not finals or finals[-1] != (d.state, d.changed_at)):
            finals.append((d.state, d.changed_at))
    for op in ops:
        if op[0] == "tick":
            now += timedelta(minutes=op[1])
            step = advance_tracking(doc, schedule, now)
            doc = step.document
            assert (step.due is None) == doc.final and len(step.actions) == len(set(step.actions))
            if AckAction.RESEND in step.actions:
                resends += 1
                doc = record_resend(doc, numbered(resends, now))
        else:
            _, which, status = op
            t = doc.transmissions[min(which, len(doc.transmissions) - 1)]
            if status == "unknown":
                result = apply_997(ack("9999", ("214", t.control, "A")), [doc], now)
                assert result.documents == () and result.reports[0].finding is AckFinding.UNKNOWN_GROUP
                continue
            sets = () if status == "P" else (("214", t.control, status),)
            result = apply_997(ack(t.group, *sets, status=status), [doc], now)
            assert len(result.reports) <= 1  # at most one finding (none: a silent 997 for a final one), never raised
            doc = result.documents[0] if result.documents else doc
        note(doc)
    assert doc.resends <= len(schedule.resend_after_minutes)
    # then the partner goes silent: the clock alone ends every document, doing the resends it asks for
    for _ in range(2 * len(schedule.resend_after_minutes) + 3):
        now += timedelta(minutes=schedule.deadline_minutes * 2 + 600)
        step = advance_tracking(doc, schedule, now)
        doc = step.document
        if AckAction.RESEND in step.actions:
            resends += 1
            doc = record_resend(doc, numbered(resends, now))
        note(doc)
    assert doc.final and doc.state in ACK_FINAL_STATES
    assert len(finals) == 1  # reached once, never left
