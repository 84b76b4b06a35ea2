"""Reading and writing envelopes: the notes' pitfall table, envelope errors into TA1/997 codes, round trips."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.edi.domain import (
    DATA_CHARACTERS,
    SEPARATOR_CHOICES,
    TERMINATOR_CHOICES,
    Delimiters,
    ElementSyntax,
    FunctionalGroup,
    GroupSyntax,
    Interchange,
    Segment,
    Ta1,
    TransactionSet,
    WriteRefused,
    acknowledge,
    acknowledgement_group,
    from_implied,
    read,
    ta1_for,
    to_implied,
    write,
    write_text,
)

from .builders import group, interchange, sample, set_204, stops


def one(data: bytes | str):
    readings = read(data)
    assert len(readings) == 1
    return readings[0]


def notes(reading) -> list[str]:
    return [p.note.value for p in reading.problems]


def ack_lines(reading, index: int = 0) -> list[str]:
    return [str(s) for s in acknowledge(reading.groups[index], control="0001").segments]


# --- the pitfall table (shared/notes/edi.md, section 2) ---------------------------------------------------------


@pytest.mark.parametrize("style", ["~", "~\n", "~\r\n", "\n"])
def test_the_same_204_with_four_terminator_styles_parses_identically(style: str) -> None:
    text = sample("204_original.edi").decode().replace("~\n", style)
    reading = one(text)
    assert reading.problems == () and reading.groups[0].sets[0].accepted
    assert reading.interchange.groups == one(sample("204_original.edi")).interchange.groups


def test_an_l11_containing_u_round_trips_in_4010() -> None:
    body = (*stops("Origin", "Destination"), Segment.of("L3", "100", "G"))
    body = (body[0], body[1], Segment.of("L11", "AUU-7U", "BM"), *body[2:])
    sent = interchange(group(set_204(body=body)))
    assert one(write(sent)).interchange == sent
    assert one(write(sent)).interchange.groups[0].sets[0].segments[2].get(1) == "AUU-7U"


def test_an_isa_is_106_characters_and_parse_write_is_the_identity_on_a_sample() -> None:
    data = sample("204_original.edi")
    assert data.index(b"~") == 105
    assert write(one(data).interchange) == data


def test_a_ten_space_isa02_is_accepted() -> None:
    reading = one(sample("204_change.edi"))
    assert reading.problems == () and reading.interchange.authorization == ""


def test_isaac_in_data_stays_in_one_interchange() -> None:
    body = stops("ISAAC WAREHOUSE", "ISA")
    data = write(interchange(group(set_204(body=body))))
    assert b"*ISAAC WAREHOUSE" in data
    reading = one(data.replace(b"~\n", b"~\r\n"))
    assert reading.problems == () and reading.groups[0].sets[0].accepted


def test_a_bad_se01_gives_ak5_r_4() -> None:
    data = sample("204_change.edi").replace(b"SE*21*0001", b"SE*20*0001")
    assert "AK5*R*4" in ack_lines(one(data))


def test_three_sets_one_bad_gives_ak9_p_3_3_2() -> None:
    assert ack_lines(one(sample("204_malformed.edi")))[-1] == "AK9*P*3*3*2"


def test_a_ta1_only_interchange_parses_and_names_our_isa13() -> None:
    data = write(interchange(group(), ta1s=(Ta1("000000901", "260314", "2200", "R", "006"),)))
    data = data[:data.index(b"GS*")] + b"IEA*0*000000077~\n"
    reading = one(data)
    assert reading.problems == () and reading.groups == ()
    assert reading.interchange.ta1s == (Ta1("000000901", "260314", "2200", "R", "006"),)


def test_money_in_n2_is_implied_cents_and_decimal_only() -> None:
    assert to_implied(Decimal("1234.50")) == "123450"
    l3 = one(sample("204_original.edi")).interchange.groups[0].sets[0].segments[-1]
    assert l3.id == "L3" and from_implied(l3.get(5)) == Decimal("1234.50")
    with pytest.raises(WriteRefused):
        to_implied(1234.5)  # type: ignore[arg-type]
    with pytest.raises(WriteRefused):
        to_implied(Decimal("1234.505"))


def test_a_truncated_file_is_a_ta1_error_never_an_exception() -> None:
    data = sample("204_original.edi")
    for cut in range(len(data.rstrip())):  # every cut short of the final terminator
        for reading in read(data[:cut]):
            assert not reading.accepted
            assert ta1_for(reading).ack == "R"
    reading = one(data[:-30])
    assert ta1_for(reading) == Ta1("000000905", "260315", "0905", "R", "023")
    assert reading.groups[0].problems[0].code is GroupSyntax.TRAILER_MISSING


# --- interchange problems → TA1 ------------------------------------------------------------------------------


def test_a_clean_interchange_gets_a_ta1_accepting_it() -> None:
    reading = one(sample("204_original.edi"))
    assert reading.accepted and ta1_for(reading) == Ta1("000000905", "260315", "0905", "A", "000")
    assert reading.interchange.ack_requested == "1" and reading.interchange.usage == "T"


@pytest.mark.parametrize(("old", "new", "note", "ack"), [
    (b"IEA*1*000000905", b"IEA*2*000000905", "021", "E"),
    (b"IEA*1*000000905", b"IEA*1*000000906", "001", "E"),
    (b"*000000905*1*T*", b"*00000090X*1*T*", "018", "R"),
    (b"*PRAIRIEFRT     *", b"*PRAIRIEFRT    *", "006", "R"),
    (b"*HAULMESH       *", b"*HAULMESH        *", "008", "R"),
    (b"*ZZ*PRAIRIEFRT", b"*Z*PRAIRIEFRT", "005", "R"),
    (b"*260315*0905*U", b"*261315*0905*U", "014", "E"),
    (b"*0905*U*00401*", b"*0961*U*00401*", "015", "E"),
    (b"*U*00401*", b"*X*00401*", "016", "R"),
    (b"*U*00401*", b"*U*00301*", "003", "R"),
    (b"*U*00401*", b"*U*0040A*", "017", "R"),
    (b"*1*T*>~", b"*2*T*>~", "019", "E"),
    (b"*1*T*>~", b"*1*Q*>~", "020", "E"),
    (b"*1*T*>~", b"*1*T**~", "027", "R"),
    (b"*1*T*>~", b"*1*T*>A", "004", "R"),
])
def test_interchange_problems_become_ta1_notes(old: bytes, new: bytes, note: str, ack: str) -> None:
    data = sample("204_original.edi")
    assert old in data
    reading = one(data.replace(old, new, 1))
    assert notes(reading)[0] == note
    assert ta1_for(reading).ack == ack and ta1_for(reading).note == note
    assert reading.accepted is (ack == "E")


def test_a_malformed_isa_still_echoes_what_it_can() -> None:
    data = sample("204_original.edi").replace(b"*PRAIRIEFRT     *", b"*PRAIRIEFRT*")
    assert ta1_for(one(data)) == Ta1("000000905", "260315", "0905", "R", "006")
    garbled = sample("204_original.edi").replace(b"*000000905*1*T*", b"*905*1*T*")
    assert ta1_for(one(garbled)) == Ta1("000000000", "260315", "0905", "R", "018")


def test_something_that_is_not_an_interchange_is_reported_not_raised() -> None:
    reading = one(b"hello, not EDI")
    assert reading.interchange is None and notes(reading) == ["022"]
    assert read(b"") == () and read(b"\r\n  \n") == ()
    assert notes(one(b"ISA~00~"))[0] == "026" or notes(one(b"ISA~00~"))[0] == "023"
    assert notes(one(b"ISA*00*   "))[0] == "023"


def test_stray_content_outside_sets_is_noted() -> None:
    data = sample("204_change.edi").replace(b"GE*1*906~", b"NTE*GEN*stray~\nGE*1*906~")
    data = data.replace(b"GS*SM", b"NTE*GEN*early~\nGS*SM")
    reading = one(data)
    assert notes(reading) == ["024", "024"] and reading.accepted
    assert reading.groups[0].sets[0].accepted  # the NTE after SE is not in the set


# --- group and set problems → 997 ----------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "ak9"), [
    (b"GE*1*906", b"GE*2*906", "AK9*R*2*1*0*5"),
    (b"GE*1*906", b"GE*1*907", "AK9*R*1*1*0*4"),
    (b"GE*1*906~\n", b"", "AK9*R*1*1*0*3"),
    (b"*X*004010~", b"*X*003050~", "AK9*R*1*1*0*2"),
    (b"GS*SM*", b"GS*QQ*", "AK9*R*1*1*0*1"),
])
def test_a_group_in_doubt_is_rejected_whole(old: bytes, new: bytes, ak9: str) -> None:
    data = sample("204_change.edi").replace(old, new)
    assert ack_lines(one(data))[-1] == ak9
    assert one(data).groups[0].accepted_sets == ()


def test_a_group_no_997_can_name_is_answered_by_the_ta1() -> None:
    data = sample("204_change.edi").replace(b"*906*X*004010", b"*9O6*X*004010").replace(b"GE*1*906", b"GE*1*9O6")
    reading = one(data)
    assert ta1_for(reading) == Ta1("000000906", "260315", "1410", "E", "024")
    assert acknowledge(reading.groups[0], control="0001") is None
    assert reading.groups[0].accepted_sets == ()


@pytest.mark.parametrize(("old", "new", "ak5"), [
    (b"SE*21*0001", b"SE*21*0002", "AK5*R*3"),
    (b"SE*21*0001~\n", b"", "AK5*R*2"),
    (b"ST*204*0001", b"ST*204*001", "AK5*R*7*3"),
    (b"ST*204*0001", b"ST*20X*0001", "AK5*R*6"),
    (b"ST*204*0001", b"ST*211*0001", "AK5*R*1"),
])
def test_set_problems_become_ak5_codes(old: bytes, new: bytes, ak5: str) -> None:
    data = sample("204_change.edi").replace(old, new)
    assert ak5 in ack_lines(one(data))


def test_a_set_control_number_repeated_in_a_group_is_code_23() -> None:
    data = sample("204_malformed.edi").replace(b"0003", b"0001")
    lines = ack_lines(one(data))
    assert lines[-2:] == ["AK5*R*23", "AK9*P*3*3*1"]


def test_a_non_ascii_byte_fails_its_element_and_only_its_set() -> None:
    data = sample("204_malformed.edi").replace(b"Prairie San Antonio DC*93*PF-SAT-01~\nSE*8*0001",
                                               "Prairie Saint-Père DC*93*PF-SAT-01~\nSE*8*0001".encode())
    lines = ack_lines(one(data))
    assert lines[1:5] == ["AK2*204*0001", "AK3*N1*7*0310*8", "AK4*2*93*6", "AK5*R*5"]
    assert lines[-1] == "AK9*P*3*3*1"


def test_several_interchanges_in_one_file_each_with_its_delimiters() -> None:
    first = sample("204_change.edi")
    second = write(interchange(delimiters=Delimiters("|", "^", "\x1c", line_end="")))
    readings = read(first + b"\r\n" + second + sample("204_cancel.edi"))
    assert [r.interchange.control for r in readings] == ["000000906", "000000077", "000000907"]
    assert all(r.problems == () for r in readings)
    assert readings[1].interchange.delimiters == Delimiters("|", "^", "\x1c")
    start, end = readings[1].span
    assert (first + b"\r\n" + second)[start:end] == second


def test_an_isa_before_the_iea_cuts_the_first_interchange_short() -> None:
    first = sample("204_change.edi").replace(b"IEA*1*000000906~\n", b"")
    readings = read(first + sample("204_cancel.edi"))
    assert notes(readings[0]) == ["023"] and readings[1].problems == ()


def test_a_byte_order_mark_is_skipped() -> None:
    assert one(b"\xef\xbb\xbf" + sample("204_cancel.edi")).problems == ()


def test_005010_reads_isa11_as_the_repetition_separator() -> None:
    sent = interchange(group(version="005010"), version="00501", delimiters=Delimiters(repetition="^"))
    data = write(sent)
    assert data[82:83] == b"^"
    reading = one(data)
    assert reading.interchange == sent and reading.problems == ()
    # a 005010 ISA11 that is no separator (a sender's U) splits nothing
    assert one(data[:82] + b"U" + data[83:]).interchange.delimiters.repetition is None


# --- the writer ------------------------------------------------------------------------------------------------


def test_the_writer_computes_counts_and_pads_the_isa() -> None:
    text = write_text(interchange(group(set_204("0001"), set_204("0002")), control="000000042"))
    lines = text.splitlines()
    assert len(lines[0]) == 106 and lines[0].endswith("*>~")
    assert lines[0][3:18] == "*00*          *"
    assert "SE*8*0002~" in lines and "GE*2*77~" in lines and lines[-1] == "IEA*1*000000042~"


@pytest.mark.parametrize("change", [
    {"sender_id": "A" * 16}, {"sender_id": ""}, {"sender_id": "AB "}, {"date": "20260315"}, {"time": "2460"},
    {"control": "42"}, {"version": "00501"}, {"ack_requested": "Y"}, {"usage": "X"}, {"authorization": "A" * 11},
    {"delimiters": Delimiters(repetition="^")},
])
def test_the_writer_refuses_an_envelope_of_the_wrong_shape(change: dict) -> None:
    with pytest.raises(WriteRefused):
        write(dataclasses.replace(interchange(), **change))


def test_the_writer_refuses_envelope_segments_in_a_set_and_repeated_st02s() -> None:
    with pytest.raises(WriteRefused, match="envelope"):
        write(interchange(group(set_204(body=(Segment.of("SE", "1", "0001"),)))))
    with pytest.raises(WriteRefused, match="twice"):
        write(interchange(group(set_204("0001"), set_204("0001"))))
    with pytest.raises(WriteRefused, match="ST03"):
        write(interchange(group(TransactionSet("204", "0001", (), "X1"))))
    with pytest.raises(WriteRefused, match="delimiter"):
        write(interchange(group(set_204(body=(Segment.of("NTE", "GEN", "5*6"),)))))


# --- round-trip properties -------------------------------------------------------------------------------------


@st.composite
def delimiters(draw, five: bool) -> Delimiters:
    separators = sorted(SEPARATOR_CHOICES)
    element = draw(st.sampled_from(separators))
    component = draw(st.sampled_from([c for c in separators if c != element]))
    repetition = draw(st.sampled_from([c for c in separators if c not in (element, component)])) if five else None
    segment = draw(st.sampled_from(sorted(TERMINATOR_CHOICES - {element, component, repetition})))
    ends = ["", "\n"] if segment == "\r" else [""] if segment == "\n" else ["", "\n", "\r\n"]
    return Delimiters(element, component, segment, repetition, draw(st.sampled_from(ends)))


_IDS = st.from_regex(r"[A-Z0-9]([A-Z0-9 ]{0,13}[A-Z0-9])?", fullmatch=True)
_DIGITS = st.integers(min_value=1, max_value=999_999_999)


@st.composite
def interchanges(draw) -> Interchange:
    five = draw(st.booleans())
    d = draw(delimiters(five))
    data = st.text(alphabet=sorted(DATA_CHARACTERS - d.reserved), min_size=1, max_size=10)
    segment_ids = st.sampled_from(["B2", "L11", "N1", "NTE", "G62", "AT8", "S5", "ZZ9", "Q1"])
    segments = st.builds(lambda i, values: Segment.of(i, *values), segment_ids,
                         st.lists(st.one_of(data, st.just("")), max_size=6))
    groups = []
    for group_number in range(draw(st.integers(0, 2))):
        controls = draw(st.lists(st.integers(1, 99_999), min_size=1, max_size=3, unique=True))
        sets = tuple(TransactionSet(draw(st.sampled_from(["204", "214", "990"])), f"{c:04d}",
                                    tuple(draw(st.lists(segments, max_size=5))),
                                    draw(st.sampled_from(["", "X123"])) if five else "") for c in controls)
        when = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)))
        groups.append(FunctionalGroup(
            "SM", draw(_IDS.filter(lambda s: len(s) >= 2)), draw(_IDS.filter(lambda s: len(s) >= 2)),
            when.strftime("%Y%m%d"), when.strftime("%H%M"), str(draw(st.integers(1, 999_999_990)) + group_number),
            "005010" if five else "004010", sets))
    ta1s = tuple(Ta1(f"{draw(_DIGITS):09d}", "260101", "2359", draw(st.sampled_from("AER")), "000")
                 for _ in range(draw(st.integers(0, 1))))
    when = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)))
    return Interchange(
        draw(st.sampled_from(["ZZ", "01", "02"])), draw(_IDS), "ZZ", draw(_IDS), when.strftime("%y%m%d"),
        when.strftime("%H%M"), f"{draw(_DIGITS):09d}", "00501" if five else "00401", draw(st.sampled_from("01")),
        draw(st.sampled_from("PT")), tuple(groups), ta1s, d, authorization=draw(st.sampled_from(["", "SECRET"])))


@settings(max_examples=150, deadline=None)
@given(interchanges())
def test_parse_of_write_is_the_identity_and_write_is_byte_stable(sent: Interchange) -> None:
    data = write(sent)
    assert data[105:106] == sent.delimiters.segment.encode()
    reading = one(data)
    assert reading.interchange == sent
    assert not any(p.note.rejects for p in reading.problems)
    assert write(reading.interchange) == data


@settings(max_examples=60, deadline=None)
@given(interchanges(), interchanges())
def test_two_interchanges_in_a_file_read_as_two(first: Interchange, second: Interchange) -> None:
    readings = read(write(first) + b"\n" + write(second))
    assert [r.interchange for r in readings] == [first, second]


_NOISE = st.binary(max_size=6) | st.sampled_from([b"~", b"*", b">", b"\n", b"ISA*", b"GS*", b"ST*", b"SE*", b"GE*",
                                                  b"IEA*", b"9", b"\xe9"])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["204_original.edi", "204_malformed.edi", "204_cancel.edi"]), st.data())
def test_whatever_a_file_holds_the_reader_answers_with_acknowledgements_it_can_write(name: str, data) -> None:
    text = bytearray(sample(name))
    for _ in range(data.draw(st.integers(1, 4))):
        start = data.draw(st.integers(0, len(text)))
        end = data.draw(st.integers(start, min(len(text), start + 8)))
        text[start:end] = data.draw(_NOISE)
    for reading in read(bytes(text)):
        ta1 = ta1_for(reading)
        ours = Interchange("ZZ", "HAULMESH", "ZZ", "PRAIRIEFRT", "260318", "0716", "000000001", ta1s=(ta1,))
        assert read(write(ours))[0].problems == ()
        fas = []
        for number, group_reading in enumerate(reading.groups, 1):
            fa = acknowledgement_group(group_reading, group_control=str(number), set_control="0001",
                                       date="20260318", time="0716", sender="HAULMESH", receiver="PRAIRIEFRT")
            if fa is not None and fa.version[:6] in ("004010", "005010"):
                fas.append(fa)
            elif fa is None and group_reading.group.functional_id != "FA":
                assert "024" in [p.note.value for p in reading.problems]  # the TA1 answers for it
        if fas:
            (back,) = read(write(dataclasses.replace(ours, ta1s=(), groups=tuple(fas))))
            assert back.problems == () and all(g.problems == () for g in back.groups)
            # valid by the 997's schema, but for an AK2 echoing an ST01/ST02 of the wrong length
            assert {(e.segment_id, x.code) for g in back.groups for s in g.sets for e in s.segment_errors
                    for x in e.elements} <= {("AK2", ElementSyntax.TOO_SHORT), ("AK2", ElementSyntax.TOO_LONG),
                                             ("AK2", ElementSyntax.INVALID_CHARACTER)}
