"""Limits stated once (services/runtime/limits.py) for the service enforcing them and the OpenAPI document: the
KPI report window's time range, as the billing service checks it and as the document's pattern states it.

"The document allows it" is decided as the fuzzer decides it: jsonschema_rs (ECMA regex, format assertions on)
against the served parameter schema; "the server accepts it" as the gateway and billing do: protobuf's RFC 3339
reader, then the report's own range check.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema_rs
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import example, given, settings
from hypothesis import strategies as st

from haulmesh.billing.v1 import report_service_pb2
from services.billing.reports.usecases import _time
from services.gateway.rest.descriptors import load_api
from services.gateway.rest.openapi import build_openapi
from services.runtime import InvalidArgument
from services.runtime.limits import KPI_REPORT_SECONDS, KPI_REPORT_TIME

LOW, HIGH = (datetime.fromtimestamp(s, UTC) for s in KPI_REPORT_SECONDS)


COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def _parameter_schemas(document: dict) -> dict[str, dict]:
    operation = document["paths"]["/api/v1/kpiReport"]["get"]
    return {p["name"]: p["schema"] for p in operation["parameters"] if p["name"] in ("startTime", "endTime")}


_SCHEMAS = _parameter_schemas(build_openapi(load_api()))
_VALIDATOR = jsonschema_rs.validator_for(_SCHEMAS["startTime"], validate_formats=True)


def _document_allows(text: str) -> bool:
    return _VALIDATOR.is_valid(text)


def _server_accepts(text: str) -> bool:
    stamp = Timestamp()
    try:
        stamp.FromJsonString(text)  # the gateway's proto-JSON reader
    except ValueError:
        return False
    request = report_service_pb2.GetKpiReportRequest(start_time=stamp)
    try:
        _time(request, "start_time")  # billing's check
    except InvalidArgument:
        return False
    return True


def _rfc3339(when: datetime, offset_minutes: int, digits: int) -> str:
    """``when`` (UTC) written as local time at ``offset_minutes`` (0 written Z), with ``digits`` fractional digits."""
    local = when + timedelta(minutes=offset_minutes)
    text = f"{local.year:04d}-{local:%m-%dT%H:%M:%S}"
    if digits:
        text += "." + f"{local.microsecond:06d}{'123'}"[:digits]
    if offset_minutes == 0:
        return text + "Z"
    sign = "+" if offset_minutes > 0 else "-"
    return text + f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"


def test_the_document_states_the_range_on_both_parameters() -> None:
    for name in ("startTime", "endTime"):
        assert _SCHEMAS[name]["pattern"] == KPI_REPORT_TIME.pattern, name
        assert _SCHEMAS[name]["format"] == "date-time", name
    # The committed document says the same (`make openapi`'s output; test_openapi checks it is current).
    assert _parameter_schemas(json.loads(COMMITTED.read_text())) == _SCHEMAS


@pytest.mark.parametrize(("text", "allowed"), [
    ("1970-01-01T00:00:00Z", True),
    ("1970-01-01T00:00:00.000000001Z", True),
    ("1970-01-01T00:00:00+00:00", True),
    ("1970-01-01T00:00:00-00:00", True),
    ("1970-01-01T00:00:00-05:00", True),
    ("2026-12-01T08:00:00+14:00", True),
    ("9999-12-31T23:59:59.999999999Z", True),
    ("9999-12-31T23:59:59+05:00", True),
    ("9999-12-31T00:00:00-00:00", True),
    ("9999-12-31T18:00:00-05:00", True),
    ("1969-12-31T23:59:59Z", False),            # a second before the epoch
    ("1970-01-01T00:30:00+01:00", False),       # 1969-12-31T23:30Z
    ("0001-01-01T00:00:00Z", False),
    ("1970-01-01t00:00:00z", False),            # RFC 3339 allows lower case; protobuf does not
    ("1970-01-01T00:00:00.1234567891Z", False),  # ten fractional digits
    ("2026-02-30T00:00:00Z", False),            # no such day (the format refuses it)
    ("2026-12-01T08:00:00", False),             # no offset
    ("2026-12-01T08:00:00Z\n", False),
])
def test_edges(text: str, allowed: bool) -> None:
    assert _document_allows(text) == allowed, text
    if allowed:
        assert _server_accepts(text), text


def _beyond_every_timestamp(text: str) -> bool:
    """A time protobuf reads for no Timestamp field (after 9999-12-31T23:59:59.999999999Z in UTC): the upper end
    is every date-time field's, not this limit's (limits.py)."""
    local = datetime.fromisoformat(text[:19]).replace(tzinfo=UTC)
    offset = 0 if text.endswith("Z") else (1 if text[-6] == "+" else -1) * (int(text[-5:-3]) * 60 + int(text[-2:]))
    return local.timestamp() - offset * 60 > KPI_REPORT_SECONDS[1]


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.from_regex(KPI_REPORT_TIME, fullmatch=True),
    st.builds(_rfc3339, st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30)).map(lambda d: d.replace(tzinfo=UTC)),
              st.integers(-1439, 1439), st.integers(0, 9)),
))
@example("1970-01-01T23:59:59+23:59")
@example("1969-12-31T23:59:59-23:59")
def test_what_the_document_allows_the_server_accepts(text: str) -> None:
    """No request the document allows is refused for its time (the fuzzer's positive check), but at the upper end
    that every Timestamp field shares."""
    if _document_allows(text):
        assert _server_accepts(text) or _beyond_every_timestamp(text), text


def test_the_upper_end_is_every_timestamps_own() -> None:
    # Stated as for any date-time field: protobuf refuses year 10000 in UTC before the report's check runs.
    text = "9999-12-31T23:59:59-01:00"
    assert _document_allows(text) and _beyond_every_timestamp(text) and not _server_accepts(text)


@settings(max_examples=400, deadline=None)
@given(st.datetimes(LOW.replace(tzinfo=None), HIGH.replace(tzinfo=None)).map(lambda d: d.replace(tzinfo=UTC)),
       st.integers(-1439, 1439), st.integers(0, 9))
def test_what_the_server_accepts_the_document_allows_but_offsets_across_the_epoch(when: datetime, offset: int,
                                                                               digits: int) -> None:
    """Every time of the range is allowed in UTC; with an offset too, unless it is written on a date the offset
    could carry across the epoch (the pattern's one conservative corner, stated in limits.py)."""
    assert _document_allows(_rfc3339(when, 0, digits)), when
    text = _rfc3339(when, offset, digits)
    assert _server_accepts(text), text
    across_the_epoch = text[:10] == "1969-12-31" or (text[:10] == "1970-01-01" and offset > 0)
    assert _document_allows(text) or across_the_epoch, text
