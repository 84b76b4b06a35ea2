"""997s out (one per group, AK1..AK9, never for a 997, in the inbound version), TA1s, and 997s in."""

from __future__ import annotations

import dataclasses

import pytest

from services.edi.domain import (
    SCHEMA_997,
    SCHEMA_997_5010,
    AcknowledgementError,
    Delimiters,
    ElementError,
    ElementSyntax,
    GroupReading,
    Interchange,
    Segment,
    SegmentError,
    SegmentSyntax,
    SetReading,
    TransactionSet,
    acknowledge,
    acknowledgement_group,
    read,
    read_997,
    validate,
    write,
)

from .builders import group, interchange, sample, set_204, stops


def reading_of(name: str, index: int = 0) -> GroupReading:
    return read(sample(name))[0].groups[index]


def answer(group_reading: GroupReading, **kwargs) -> Interchange:
    """The 997 as the service will send it, enveloped (our ids, their GS08)."""
    fa = acknowledgement_group(group_reading, group_control="5001", set_control="0001", date="20260318",
                               time="0716", **kwargs)
    assert fa is not None
    return Interchange("ZZ", "HAULMESH", "ZZ", "PRAIRIEFRT", "260318", "0716", "000005001", groups=(fa,))


def test_the_997_for_a_mixed_group_names_each_set_and_points_at_segment_and_element() -> None:
    lines = [str(s) for s in acknowledge(reading_of("204_malformed.edi"), control="0001").segments]
    assert lines == ["AK1*SM*912",
                     "AK2*204*0001", "AK5*A",
                     "AK2*204*0002", "AK3*S5*4*0300*8", "AK4*2*163*7*ZZ", "AK3*G62*5*0300*8",
                     "AK4*2*373*8*20260231", "AK5*R*5",
                     "AK2*204*0003", "AK5*A",
                     "AK9*P*3*3*2"]


def test_our_997_is_valid_by_our_997_schema_and_reads_back() -> None:
    sent = answer(reading_of("204_malformed.edi"))
    data = write(sent)
    (received,) = read(data)
    assert received.interchange == sent and received.problems == ()
    (fa,) = received.groups
    assert fa.group.functional_id == "FA" and fa.group.version == "004010"
    assert fa.group.sender == "HAULMESH" and fa.group.receiver == "PRAIRIEFRT"
    assert fa.sets[0].accepted, fa.sets[0].segment_errors
    assert b"AK4*2*163*7*ZZ~" in data


def test_never_acknowledge_a_997() -> None:
    (received,) = read(write(answer(reading_of("204_malformed.edi"))))
    assert acknowledge(received.groups[0], control="0001") is None
    assert acknowledgement_group(received.groups[0], group_control="1", set_control="0001", date="20260318",
                                 time="0716") is None


def test_the_997_answers_in_the_inbound_version() -> None:
    sent = interchange(group(TransactionSet("997", "0007", (
        Segment.of("AK1", "SM", "77", "005010"), Segment.of("AK9", "A", "1", "1", "1"))),
        functional_id="FA", version="005010"), version="00501", delimiters=Delimiters(repetition="^"))
    (received,) = read(write(sent))
    assert received.groups[0].sets[0].accepted  # a 005010 997 read by its own schema
    g5010 = GroupReading(group(set_204(), version="005010"), (), (SetReading(set_204()),), 1)
    ack = acknowledge(g5010, control="0001")
    assert [str(s) for s in ack.segments] == ["AK1*SM*77*005010", "AK2*204*0001", "AK5*A", "AK9*A*1*1*1"]
    assert validate(SCHEMA_997_5010, ack.segments) == ()
    assert answer(g5010).groups[0].version == "005010"


def test_an_echoed_bad_value_that_would_break_the_997_is_left_out() -> None:
    error = SegmentError("N1", 5, SegmentSyntax.ELEMENT_ERRORS, elements=(
        ElementError(2, ElementSyntax.TOO_LONG, reference="93", value="A*B~C"),
        ElementError(4, ElementSyntax.INVALID_CHARACTER, reference="67", value="Père"),
        ElementError(1, ElementSyntax.INVALID_CODE, component=2, reference="98", value="QQ"),
        ElementError(3, ElementSyntax.MANDATORY_MISSING, reference="C001")))
    reading = GroupReading(group(set_204()), (), (SetReading(set_204(), (), (error,)),), 1)
    lines = [str(s) for s in acknowledge(reading, control="0001").segments]
    assert lines[2:7] == ["AK3*N1*5**8", "AK4*2*93*5", "AK4*4*67*6", "AK4*1|2*98*7*QQ", "AK4*3**1"]
    assert validate(SCHEMA_997, acknowledge(reading, control="0001").segments) == ()


def test_an_empty_group_is_acknowledged_as_accepted() -> None:
    reading = GroupReading(group(set_204()), (), (), 0)
    assert [str(s) for s in acknowledge(reading, control="0001").segments][-1] == "AK9*A*0*0*0"


# --- accepted with errors ----------------------------------------------------------------------------------------


def _with_b2(*b2: str) -> TransactionSet:
    body = stops("Origin Yard", "Destination DC")
    return TransactionSet("204", "0001", (Segment.of("B2", *b2), *body[1:]))


def _group_of(*sets: TransactionSet) -> GroupReading:
    """The group as the service reads it from a file."""
    numbered = tuple(dataclasses.replace(s, control=f"{k:04d}") for k, s in enumerate(sets, 1))
    return read(write(interchange(group(*numbered))))[0].groups[0]


def test_an_over_long_element_the_reading_ignores_is_noted_accepted_with_errors() -> None:
    """B2-03 (159, an ID of 6 to 9 the 204 mapping never reads) too long: AK3/AK4 point at it, AK5 E, AK9 E, and
    the set is one to act on."""
    reading = _group_of(_with_b2("", "HMSH", "ROUTE12345", "SHIP-1", "", "PP"))
    (set_reading,) = reading.sets
    assert set_reading.status == "E" and set_reading.accepted and reading.accepted_sets == (set_reading,)
    lines = [str(s) for s in acknowledge(reading, control="0001").segments]
    assert lines == ["AK1*SM*77", "AK2*204*0001", "AK3*B2*2**8", "AK4*3*159*5*ROUTE12345", "AK5*E*5",
                     "AK9*E*1*1*1"]
    assert validate(SCHEMA_997, acknowledge(reading, control="0001").segments) == ()
    # What a partner's translator makes of it: accepted with errors.
    (ours,) = read(write(answer(reading)))
    assert read_997(ours.groups[0].sets[0].transaction).outcome("0001") == "accepted_with_errors"


def test_a_group_of_an_accepted_with_errors_and_a_rejected_set_is_partly_accepted() -> None:
    noted = _with_b2("", "HMSH", "ROUTE12345", "SHIP-1", "", "PP")
    rejected = _with_b2("", "HMSH", "", "SHIP-2", "", "ZZ")  # B2-06, payment method, is read: an unknown code
    clean = _with_b2("", "HMSH", "", "SHIP-3", "", "PP")
    reading = _group_of(noted, rejected, clean)
    assert [s.status for s in reading.sets] == ["E", "R", "A"]
    lines = [str(s) for s in acknowledge(reading, control="0001").segments]
    assert lines == ["AK1*SM*77",
                     "AK2*204*0001", "AK3*B2*2**8", "AK4*3*159*5*ROUTE12345", "AK5*E*5",
                     "AK2*204*0002", "AK3*B2*2**8", "AK4*6*146*7*ZZ", "AK5*R*5",
                     "AK2*204*0003", "AK5*A",
                     "AK9*P*3*3*2"]


@pytest.mark.parametrize(("b2", "ak4"), [
    (("", "HMSH", "", "SHIP-1-WHICH-IS-FAR-TOO-LONG-FOR-B2-04", "", "PP"), "AK4*4*145*5*"),  # the shipment id
    (("", "HMSH", "", "SHIP-1", "", "PP", "", "", "", "", "", "", "X"), "AK4*13**3*X"),  # beyond the definition
])
def test_an_error_in_what_the_reading_uses_still_rejects(b2: tuple[str, ...], ak4: str) -> None:
    reading = _group_of(_with_b2(*b2))
    (set_reading,) = reading.sets
    assert set_reading.status == "R" and reading.accepted_sets == ()
    lines = [str(s) for s in acknowledge(reading, control="0001").segments]
    assert lines[3].startswith(ak4) and lines[-2:] == ["AK5*R*5", "AK9*R*1*1*0"]


def test_an_envelope_problem_rejects_a_set_whose_content_errors_are_only_noted() -> None:
    text = write(interchange(group(_with_b2("", "HMSH", "ROUTE12345", "SHIP-1", "", "PP")))).decode()
    reading = read(text.replace("SE*8*0001", "SE*9*0001"))[0].groups[0]
    (set_reading,) = reading.sets
    assert set_reading.status == "R" and set_reading.noted
    lines = [str(s) for s in acknowledge(reading, control="0001").segments]
    assert lines[-3:] == ["AK4*3*159*5*ROUTE12345", "AK5*R*4", "AK9*R*1*1*0"]


# --- 997 in -------------------------------------------------------------------------------------------------------


def test_an_inbound_997_says_which_of_our_sets_were_accepted() -> None:
    (received,) = read(write(answer(reading_of("204_malformed.edi"))))
    ack = read_997(received.groups[0].sets[0].transaction)
    assert (ack.functional_id, ack.group_control, ack.status) == ("SM", "912", "P")
    assert (ack.included, ack.received, ack.accepted) == (3, 3, 2)
    assert [ack.outcome(c) for c in ("0001", "0002", "0003", "0004")] == [
        "accepted", "rejected", "accepted", None]
    (rejected,) = [s for s in ack.sets if s.status == "R"]
    assert rejected.codes == ("5",)
    assert [(e.segment_id, e.position, e.code, [(x.position, x.code, x.value) for x in e.elements])
            for e in rejected.errors] == [
        ("S5", 4, SegmentSyntax.ELEMENT_ERRORS, [(2, ElementSyntax.INVALID_CODE, "ZZ")]),
        ("G62", 5, SegmentSyntax.ELEMENT_ERRORS, [(2, ElementSyntax.INVALID_DATE, "20260231")])]


@pytest.mark.parametrize(("ak9", "outcome"), [
    ("A", "accepted"), ("E", "accepted_with_errors"), ("R", "rejected"), ("P", None)])
def test_a_set_an_ak9_alone_answers_for(ak9: str, outcome: str | None) -> None:
    ack = read_997(TransactionSet("997", "0001", (Segment.of("AK1", "IM", "44"),
                                                   Segment.of("AK9", ak9, "1", "1", "1"))))
    assert ack.outcome("0009") == outcome


@pytest.mark.parametrize("segments", [
    (),
    (Segment.of("AK9", "A", "1", "1", "1"),),
    (Segment.of("AK1", "IM", "44"), Segment.of("AK5", "A"), Segment.of("AK9", "A", "1", "1", "1")),
    (Segment.of("AK1", "IM", "44"), Segment.of("AK2", "210", "0001"), Segment.of("AK9", "A", "1", "1", "1")),
    (Segment.of("AK1", "IM", "44"), Segment.of("AK2", "210", "0001"), Segment.of("N1", "X"),
     Segment.of("AK9", "A", "1", "1", "1")),
])
def test_a_997_that_says_too_little_is_refused(segments: tuple) -> None:
    with pytest.raises(AcknowledgementError):
        read_997(TransactionSet("997", "0001", segments))
    with pytest.raises(AcknowledgementError):
        read_997(set_204())
