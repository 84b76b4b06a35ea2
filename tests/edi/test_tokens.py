"""Delimiters, segments, and the split and join of one segment."""

from __future__ import annotations

import pytest

from services.edi.domain import Delimiters, Segment, WriteRefused, X12Error, join_segment, split_segment

STAR = Delimiters()


def test_a_segment_splits_on_its_element_separator_and_drops_trailing_empties() -> None:
    assert split_segment("N1*SH*Prairie Yard**", STAR) == Segment("N1", ("SH", "Prairie Yard"))
    assert split_segment("N1*SH**93*X", STAR).get(3) == "93"
    assert split_segment("N1*SH", STAR).get(9) == ""


def test_components_split_only_where_the_schema_says_composite() -> None:
    composites = {"AK4": frozenset({1})}
    assert split_segment("AK4*2>1**7", STAR, composites).elements[0] == ("2", "1")
    assert split_segment("NTE*GEN*A>B", STAR, composites).get(2) == "A>B"
    assert split_segment("AK4*2>1**7", STAR, composites).component(1, 2) == "1"


def test_segment_of_is_the_form_a_reader_gives_back() -> None:
    assert Segment.of("L11", "X", "", ("", "")) == Segment("L11", ("X",))
    assert Segment.of("AK4", ("3", ""), "", "1") == Segment("AK4", (("3",), "", "1"))


def test_join_refuses_a_delimiter_in_data_rather_than_corrupt_it() -> None:
    for value in ("A*B", "A~B", "A>B"):
        with pytest.raises(WriteRefused, match="delimiter"):
            join_segment(Segment.of("NTE", "GEN", value), STAR)
    with pytest.raises(WriteRefused, match="delimiter"):
        join_segment(Segment.of("NTE", "GEN", "A^B"), Delimiters(repetition="^"))
    assert join_segment(Segment.of("NTE", "GEN", "A^B"), STAR) == "NTE*GEN*A^B"


def test_join_refuses_characters_outside_x12s_sets_and_bad_ids() -> None:
    with pytest.raises(WriteRefused, match="character set"):
        join_segment(Segment.of("N1", "SH", "Café"), STAR)
    with pytest.raises(WriteRefused, match="segment id"):
        join_segment(Segment.of("n1", "SH"), STAR)
    with pytest.raises(WriteRefused, match="trailing empty"):
        join_segment(Segment("N1", ("SH", "")), STAR)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"element": "*", "component": "*"}, "differ"),
    ({"element": "A"}, "separator"),
    ({"element": " "}, "separator"),
    ({"segment": "5"}, "terminator"),
    ({"element": "**"}, "one character"),
    ({"segment": "\n", "line_end": "\n"}, "line end"),
])
def test_delimiters_must_be_usable(kwargs: dict, message: str) -> None:
    with pytest.raises(X12Error, match=message):
        Delimiters(**kwargs)


def test_any_non_alphanumeric_and_the_information_separators_are_usable() -> None:
    assert Delimiters("\x1d", "\x1f", "\x1c").reserved == {"\x1d", "\x1f", "\x1c"}
    assert Delimiters("|", "^", "\n").segment == "\n"
    assert Delimiters("*", ">", "\r", line_end="\n").line_end == "\n"
