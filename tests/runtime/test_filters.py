"""The one AIP-160 filter grammar of every List method (the cases the tender, mission and billing parsers had)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haulmesh.tender.v1 import tender_pb2
from services.runtime import (
    BOOL_FIELD,
    STRING_FIELD,
    TIME_FIELD,
    FilterField,
    InvalidArgument,
    enum_field,
    parse_filter,
)

T0 = datetime(2026, 11, 25, tzinfo=UTC)
FIELDS = {"state": FilterField("enum", frozenset({"ENROUTE", "ARRIVED"}), prefix="STATE_"),
          "tender": STRING_FIELD, "ok": BOOL_FIELD, "create_time": TIME_FIELD,
          "equipment": FilterField("enum", frozenset({"DRY_VAN_53FT", "REEFER_53FT"}), repeated=True)}


def test_parse_and_match() -> None:
    parsed = parse_filter('state = ENROUTE AND tender = "tenders/a\\"b" AND ok = true AND '
                          'create_time >= "2026-11-25T00:00:00Z"', FIELDS)
    assert [c.value for c in parsed.comparisons] == ["ENROUTE", 'tenders/a"b', True, T0]
    values = {"state": "ENROUTE", "tender": 'tenders/a"b', "ok": True, "create_time": T0}
    assert parsed.matches(values)
    assert not parsed.matches({**values, "create_time": T0 - timedelta(days=1)})
    assert not parsed.matches({**values, "ok": False})
    assert not parsed.matches({**values, "create_time": None})  # unset matches nothing
    assert parse_filter("equipment = REEFER_53FT", FIELDS).matches({"equipment": {"DRY_VAN_53FT", "REEFER_53FT"}})
    assert not parse_filter("equipment != REEFER_53FT", FIELDS).matches({"equipment": {"REEFER_53FT"}})
    assert parse_filter("state = STATE_ARRIVED", FIELDS).matches({"state": "ARRIVED"})  # the prefix is optional
    assert parse_filter("state != 'ARRIVED'", FIELDS).matches({"state": "ENROUTE"})  # quoted enums, != too
    empty = parse_filter("  ", FIELDS)
    assert not empty and empty.matches({})


def test_time_ranges_for_index_scans() -> None:
    parsed = parse_filter('create_time >= "2026-11-25T00:00:00Z" AND create_time < "2026-11-26T00:00:00+01:00"',
                          FIELDS)
    ms = int(T0.timestamp() * 1000)
    assert parsed.time_range_ms("create_time") == (ms, ms + 23 * 3600 * 1000)
    assert parse_filter('create_time > "2026-11-25T00:00:00Z"', FIELDS).time_range_ms("create_time") == (ms + 1, None)
    assert parse_filter('create_time <= "2026-11-25T00:00:00Z"', FIELDS).time_range_ms("create_time") == (None, ms + 1)
    assert parse_filter("ok = true", FIELDS).time_range_ms("create_time") == (None, None)


def test_enum_fields_come_from_the_generated_enum() -> None:
    field = enum_field(tender_pb2.Tender.State.keys(), prefix="STATE_")
    assert "OFFERED" in field.values and "UNSPECIFIED" not in field.values
    assert parse_filter("state = STATE_OFFERED", {"state": field}).matches({"state": "OFFERED"})


@pytest.mark.parametrize("text", [
    "state = PARKED", "color = RED", "colour = 'red'", "state > ENROUTE", "tender = tenders/x", "ok = yes",
    'create_time < "yesterday"', 'create_time < "2026-11-25T00:00:00"', "create_time > 2026",
    "state = ENROUTE OR ok = true", "state", "state ENROUTE", "state = = X", "state = ENROUTE AND",
    "NOT state = ENROUTE", "(state = ENROUTE)", "x" * 1001, 'tender = "unterminated',
])
def test_bad_filters_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_filter(text, FIELDS)
    assert caught.value.reason == "INVALID_FILTER" and [v.field for v in caught.value.violations] == ["filter"]


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=120))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        parsed = parse_filter(text, FIELDS)
    except InvalidArgument as exc:
        assert exc.reason == "INVALID_FILTER" and [v.field for v in exc.violations] == ["filter"]
    else:
        assert all(c.field in FIELDS for c in parsed.comparisons)


@settings(max_examples=200, deadline=None)
@given(value=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_any_quoted_string_round_trips(value: str) -> None:
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    parsed = parse_filter(f"tender = {quoted}", FIELDS)
    assert parsed.comparisons[0].value == value and parsed.matches({"tender": value})
