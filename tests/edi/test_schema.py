"""Declarative schemas and the validator: segment order, loops, use counts, element types, syntax notes."""

from __future__ import annotations

import pytest

from services.edi.domain import (
    SCHEMA_204,
    Delimiters,
    El,
    ElementSyntax,
    Loop,
    Seg,
    Segment,
    SegmentSyntax,
    SetSchema,
    validate,
)

from .builders import stops


def found(body) -> list[tuple[str, int, int, list[tuple[int, int]]]]:
    """(segment id, position, AK3 code, [(AK4 position, code)]) for a 204 body."""
    return [(e.segment_id, e.position, int(e.code), [(x.position, int(x.code)) for x in e.elements])
            for e in validate(SCHEMA_204, body, Delimiters())]


def with_stop(*segments: Segment) -> tuple[Segment, ...]:
    """A valid 204 whose first stop carries ``segments`` after its S5 (positions from 5 on)."""
    body = stops("Origin", "Destination")
    return (*body[:3], *segments, *body[3:])


def test_a_minimal_204_is_valid() -> None:
    assert found(stops("Origin")) == []


def test_a_missing_mandatory_segment_or_loop_is_code_3() -> None:
    assert found(stops("Origin")[1:]) == [("B2", 2, 3, [])]
    assert found(stops("Origin")[:2]) == [("S5", 4, 3, [])]


def test_over_maximum_use_is_code_5_and_a_loop_over_maximum_is_code_4() -> None:
    g62 = Segment.of("G62", "37", "20260316", "I", "0800", "LT")
    assert found(with_stop(g62, g62, g62)) == [("G62", 7, 5, [])]
    too_many = stops(*[f"Stop {n}" for n in range(1000)])
    assert found(too_many)[0][2] == 4


def test_order_matters_within_the_standards_table() -> None:
    late_l11 = Segment.of("L11", "X1", "BM")
    body = stops("Origin")
    assert found((*body, late_l11)) == [("L11", 6, 7, [])]
    assert found((*body, Segment.of("XYZ", "1"))) == [("XYZ", 6, 6, [])]
    assert found((*body, Segment("n1", ("x",)))) == [("n1", 6, 1, [])]
    # B2A before B2: B2 missing where B2A is read, then B2 is out of sequence
    assert [e[:3] for e in found((body[1], body[0], *body[2:]))] == [("B2", 2, 3), ("B2", 3, 7)]


def test_a_loop_follows_itself_directly() -> None:
    body = stops("Origin")[:2]
    assert found((*body, Segment.of("S5", "1", "LD"), Segment.of("S5", "2", "UL"), Segment.of("S5", "3", "UL"))) \
        == []


def test_loops_nest_and_a_segment_returns_to_the_loop_that_takes_it() -> None:
    body = with_stop(Segment.of("L11", "SID-1", "SI"), Segment.of("G62", "37", "20260316"))
    body = (*body[:6],  # B2, B2A, S5, L11, G62, N1 (0310)
            Segment.of("L5", "1", "Cans"), Segment.of("AT8", "G", "L", "42000", "22"),  # 0320
            Segment.of("L5", "2", "Jars"), *body[6:])  # 0320 again, then the second stop
    assert found(body) == []


@pytest.mark.parametrize(("segment", "errors"), [
    (Segment.of("S5", "1", "ZZ"), [(2, 7)]),  # a stop reason the service does not act on
    (Segment.of("S5", "1", "LD", "42000"), [(4, 2)]),  # P0304: weight without its unit
    (Segment.of("S5", "1", "LD", "4x"), [(3, 6), (4, 2)]),
    (Segment.of("S5", "1000", "LD"), [(1, 5)]),
    (Segment.of("S5", "", "LD"), [(1, 1)]),
    (Segment.of("S5", "1", "LD", "", "", "", "", "", "", "", "", "", "9"), [(12, 3)]),
    (Segment.of("S5", "1", "LD", "", "", "", "", "", "", "", "12345"), [(10, 4)]),
])
def test_element_errors_become_ak4s_under_an_ak3_code_8(segment: Segment, errors: list) -> None:
    body = stops("Origin")
    assert found((*body[:2], segment, *body[3:])) == [("S5", 4, 8, errors)]


@pytest.mark.parametrize(("g62", "errors"), [
    (("37", "20260316", "I", "0800"), []),
    (("37", "20260230"), [(2, 8)]),
    (("37", "2026031"), [(2, 4)]),
    (("37", "2026-03-"), [(2, 8)]),
    (("37", "20260316", "I", "2460"), [(4, 9)]),
    (("37", "20260316", "I", "08"), [(4, 4)]),
    (("37", "20260316", "I"), [(4, 2)]),  # P0304
    (("", "", "I", "0800"), []),  # R0103: a time qualifier alone will do
    (("", "20260316"), [(1, 2)]),  # P0102 and R0103, one AK4
])
def test_dates_and_times_are_checked(g62: tuple, errors: list) -> None:
    result = found(with_stop(Segment.of("G62", *g62)))
    assert result == ([("G62", 5, 8, errors)] if errors else [])


def test_the_component_separator_in_a_simple_element_is_an_invalid_character() -> None:
    assert found(with_stop(Segment.of("NTE", "GEN", "a>b"))) == [("NTE", 5, 8, [(2, 6)])]


def test_unmapped_segments_keep_their_place_and_only_their_characters_are_checked() -> None:
    assert found(with_stop(Segment.of("LAD", "PLT", "22", "anything at all"))) == []
    assert found(with_stop(Segment.of("LAD", "PLT", "\x01"))) == [("LAD", 5, 8, [(2, 6)])]


def test_numbers_count_digits_only_and_decimals_are_r() -> None:
    assert found(with_stop(Segment.of("AT8", "G", "L", "-12345678.9", "22"))) == []  # R 1/10: 9 digits
    assert found(with_stop(Segment.of("AT8", "G", "L", "12345678901"))) == [("AT8", 5, 8, [(3, 5)])]
    assert found(with_stop(Segment.of("AT8", "G", "L", "1.2.3"))) == [("AT8", 5, 8, [(3, 6)])]


def test_syntax_notes_as_the_standard_writes_them() -> None:
    schema = SetSchema("999", "ZZ", frozenset({"004010"}), (
        Seg("ZZ1", mandatory=True, rules=("E0102", "C030405", "L060708"), elements=tuple(
            El(str(n), "AN", 1, 5) for n in range(1, 9))),))

    def codes(*values: str) -> list:
        return [(x.position, int(x.code)) for e in validate(schema, [Segment.of("ZZ1", *values)])
                for x in e.elements]

    assert codes("a", "b") == [(2, int(ElementSyntax.EXCLUSION_VIOLATED))]
    assert codes("a", "", "c") == [(4, 2), (5, 2)]
    assert codes("a", "", "", "", "", "f") == [(7, 2)]
    assert codes("a", "", "", "", "", "f", "", "h") == []


def test_a_schema_is_checked_when_written() -> None:
    with pytest.raises(ValueError, match="type"):
        El("1", "XX", 1, 2)
    with pytest.raises(ValueError, match="lengths"):
        El("1", "AN", 3, 2)
    with pytest.raises(ValueError, match="syntax note"):
        Seg("ZZ1", rules=("Q0102",))
    with pytest.raises(ValueError, match="starts with a segment"):
        Loop("0100", (Loop("0110", (Seg("N1"),)),))


def test_the_204_schema_knows_its_composites_and_ids() -> None:
    assert SCHEMA_204.composites == {}
    assert {"B2", "B2A", "S5", "G62", "L11", "N1", "N4", "L5", "AT8", "NTE", "L3", "MS3", "PLD"} <= \
        SCHEMA_204.segment_ids
    assert SegmentSyntax.OUT_OF_SEQUENCE == 7


# --- what the reading uses: noted errors ---------------------------------------------------------------------


def noted(body) -> list[tuple[str, int, int, bool]]:
    """(segment id, position, AK3 code, noted) for a 204 body."""
    return [(e.segment_id, e.position, int(e.code), SCHEMA_204.tolerates(e))
            for e in validate(SCHEMA_204, body, Delimiters())]


def test_an_error_in_an_unused_element_or_segment_is_noted_and_in_a_used_one_is_not() -> None:
    assert noted(with_stop(Segment.of("S5X", "1"))) == [("S5X", 5, 6, False)]  # a stray in the stop: read
    # S5-09 (a stop description) is not read, S5-03 (the stop's weight) is
    body = stops("Origin", "Destination")
    described = Segment.of("S5", "1", "LD", "", "", "", "", "", "", "D" * 81)
    assert noted((*body[:2], described, *body[3:])) == [("S5", 4, 8, True)]
    heavy = Segment.of("S5", "1", "LD", "1" * 11, "L")
    assert noted((*body[:2], heavy, *body[3:])) == [("S5", 4, 8, False)]
    # an unused segment (MS3) used twice, and missing its mandatory element
    ms3 = Segment.of("MS3", "HMSH", "B")
    body = stops("Origin")
    assert noted((*body[:2], ms3, ms3, *body[2:])) == [("MS3", 5, 5, True)]
    assert noted((*body[:2], Segment.of("MS3", "", "B"), *body[2:])) == [("MS3", 4, 8, True)]


def test_a_syntax_note_is_noted_only_when_every_element_it_names_is_unused() -> None:
    body = stops("Origin", "Destination")
    at8 = Segment.of("AT8", "G", "L", "42000", "", "", "E")  # P0607 (volume unit, volume): not read
    assert noted((*body[:3], at8, *body[3:])) == [("AT8", 5, 8, True)]
    at8 = Segment.of("AT8", "G", "", "42000")  # P010203 (the weight): read
    assert noted((*body[:3], at8, *body[3:])) == [("AT8", 5, 8, False)]


def test_a_stray_segment_is_noted_only_inside_a_loop_the_reading_skips() -> None:
    body = stops("Origin", "Destination")
    # the equipment loop (0200) is not read: an unknown segment there is noted
    equipment = (*body[:2], Segment.of("N7", "", "TRL1"), Segment.of("ZZ9", "X"), *body[2:])
    assert noted(equipment) == [("ZZ9", 5, 6, True)]
    # but a segment the reading uses elsewhere (a party's N1) out of sequence there is not: it would be missed
    party = (*body[:2], Segment.of("N7", "", "TRL1"), Segment.of("N1", "BT", "Payables", "93", "BT1"), *body[2:])
    assert noted(party) == [("N1", 5, 7, False)]
    # the order detail loop (0350) is not read either
    order = (*body[:4], Segment.of("OID", "REF1"), Segment.of("ZZ9", "X"), *body[4:])
    assert noted(order) == [("ZZ9", 7, 6, True)]
    # in the header, the reading's own
    assert noted((*body[:2], Segment.of("ZZ9", "X"), *body[2:])) == [("ZZ9", 4, 6, False)]


def test_missing_mandatory_segments_and_unrecognised_ids_are_never_noted() -> None:
    body = stops("Origin")
    assert noted(body[1:]) == [("B2", 2, 3, False)]
    assert noted((*body, Segment("n1", ("x",)))) == [("n1", 6, 1, False)]


def test_only_text_is_cut() -> None:
    with pytest.raises(ValueError, match="only text"):
        El("81", "R", 1, 10, cut=True)
