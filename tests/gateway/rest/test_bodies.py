"""Every malformed request body is a 4xx with a google.rpc.Status naming what is wrong, never a 5xx: the strict
reader on its own (property-tested with hypothesis) and through the real gateway."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.gateway.rest.descriptors import load_api
from services.gateway.rest.errors import RestError
from services.gateway.rest.transcode import MAX_JSON_DEPTH, RouteTable, build_request, parse_json_body

from .conftest import bearer, error_info


def _refused(raw: bytes) -> RestError:
    with pytest.raises(RestError) as caught:
        parse_json_body(raw)
    assert caught.value.code_name == "INVALID_ARGUMENT"
    return caught.value


@pytest.mark.parametrize(("raw", "reason"), [
    (b"[" * 100_000 + b"]" * 100_000, "JSON_TOO_DEEP"),  # past the C parser's recursion guard
    (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "JSON_TOO_DEEP"),
    (b'{"a": 1, "a": 2}', "DUPLICATE_JSON_KEY"),
    (b'{"x": {"b": 1, "b": 1}}', "DUPLICATE_JSON_KEY"),
    (b'{"weightLb": NaN}', "NUMBER_OUT_OF_RANGE"),
    (b'{"weightLb": -Infinity}', "NUMBER_OUT_OF_RANGE"),
    (b'{"weightLb": 1e400}', "NUMBER_OUT_OF_RANGE"),
    (b'{"tmsLoadId": "\xff\xfe"}', "INVALID_ENCODING"),
    ('{"a": 1}'.encode("utf-16"), "INVALID_ENCODING"),
    (b"\xef\xbb\xbf{}", "INVALID_JSON"),  # a UTF-8 byte order mark: RFC 8259 8.1 forbids sending one
    (b'{"a": 1', "INVALID_JSON"),
    (b'{"a": ' + b"9" * 5000 + b"}", "INVALID_JSON"),  # more digits than Python converts
])
def test_malformed_bodies_are_refused_with_their_reason(raw: bytes, reason: str) -> None:
    error = _refused(raw)
    assert error.reason == reason, error
    if reason == "DUPLICATE_JSON_KEY":
        assert [v.field for v in error.violations] in (["a"], ["b"])


def test_the_deepest_allowed_body_is_read() -> None:
    assert parse_json_body(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    assert parse_json_body(b"  ") is None


_ROUTES = RouteTable(load_api())
_CREATE_TENDER = next(r for r in _ROUTES.routes if r.method.method.name == "CreateTender")
_LIST_FRAMES = next(r for r in _ROUTES.routes if r.method.method.name == "ListTelemetryFrames")

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
_tenderish = st.fixed_dictionaries({}, optional={
    "tender": st.fixed_dictionaries({}, optional={
        "tmsLoadId": _json, "weightLb": _json, "equipment": _json, "origin": _json, "pickupWindow": _json,
        "hazmat": _json, "state": _json, "tenderId": _json, "pickup_window": _json}),
    "requestId": _json})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(st.binary(max_size=200), _json.map(lambda v: json.dumps(v).encode()),
                      _tenderish.map(lambda v: json.dumps(v).encode())))
def test_any_body_is_a_message_or_a_400(body: bytes) -> None:
    """The property: whatever the bytes, reading and transcoding ends in a request message or INVALID_ARGUMENT;
    no other exception (which the handler would answer 500)."""
    for route, path_vars in ((_CREATE_TENDER, {}), (_LIST_FRAMES, {"parent": "missions/m1"})):
        try:
            build_request(load_api(), route, path_vars, parse_json_body(body), [])
        except RestError as exc:
            assert exc.code_name == "INVALID_ARGUMENT", exc


@settings(max_examples=200, deadline=None)
@given(query=st.lists(st.tuples(st.sampled_from(["pageSize", "minSequence", "maxSequence", "kinds", "startTime",
                                                 "pageToken", "page_size", "nope", "minSequence.x"]),
                                st.text(max_size=30)), max_size=5))
def test_any_query_is_a_message_or_a_400(query: list[tuple[str, str]]) -> None:
    try:
        build_request(load_api(), _LIST_FRAMES, {"parent": "missions/m1"}, None, query)
    except RestError as exc:
        assert exc.code_name == "INVALID_ARGUMENT", exc


@pytest.mark.parametrize("raw", [
    b"[" * 5000 + b"]" * 5000, b'{"tender": {"tmsLoadId": "a", "tmsLoadId": "b"}}', b'{"tender": {"weightLb": NaN}}',
    b'{"tender": {"weightLb": 1e999}}', b'{"tender": {"weightLb": 99999999999999999999}}', b'\xc3\x28',
    b'{"tender": {"weightLb": "heavy"}}', b'{"tender": []}', b'"just a string"', b'{"tender": {"origin": 5}}',
])
async def test_the_gateway_answers_400_with_a_status(http, token, raw: bytes) -> None:
    response = await http.post("/api/v1/tenders", content=raw,
                               headers={**bearer(token("bodies-co")), "content-type": "application/json"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 3 and body["message"] and error_info(body)["domain"] == "haulmesh.io"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("TRACE", "/api/v1/tenders", "GET, HEAD, POST"),
    ("PUT", "/api/v1/tenders", "GET, HEAD, POST"),
    ("DELETE", "/api/v1/tenders/01jdq3x0f8c2m5t7v9w1y3z5b7:accept", "POST"),
    ("POST", "/openapi.json", "GET, HEAD"),
    ("DELETE", "/healthz", "GET, HEAD"),
])
async def test_405_names_the_allowed_methods(http, method: str, path: str, allow: str) -> None:
    response = await http.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert error_info(response.json())["reason"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize("target", [
    "/api/v1/tenders/%FF%FE", "/api/v1/tenders/%00", "/api/v1/tenders?pageSize=%FF", "/api/v1/tenders?filter=%00",
    "/api/v1/tenders?pageSize=1e999", "/api/v1/tenders?pageSize=-1", "/api/v1/tenders?pageToken=%F0%9F%98%8D",
    "/api/v1/missions/m1/telemetryFrames?minSequence=18446744073709551616",
])
async def test_odd_paths_and_queries_are_4xx(http, token, target: str) -> None:
    response = await http.get(target, headers=bearer(token("oddco")))
    assert 400 <= response.status_code < 500, (target, response.status_code, response.text)
    assert response.json()["code"] in {3, 5}
