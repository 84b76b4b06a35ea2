"""The gateway's pure parts: the error map, templates, the seed normalizer, scopes from the descriptors."""

from __future__ import annotations

import json
import os
import re
import stat

import grpc
import jwt
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import code_pb2
from hypothesis import given
from hypothesis import strategies as st

from services.gateway.rest.descriptors import DESCRIPTOR_SET, load_api
from services.gateway.rest.errors import HTTP_STATUS, http_status
from services.gateway.rest.transcode import RouteTable, build_request, compile_template
from services.runtime import ConfigError, tokens

from .test_rest import SEED_TENDER


def test_error_map_is_exhaustive_and_matches_grpc_gateway() -> None:
    assert set(HTTP_STATUS) == set(code_pb2.Code.values())
    assert {code.value[0] for code in grpc.StatusCode} == set(HTTP_STATUS)
    expected = {"OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
                "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
                "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
                "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}
    assert {code_pb2.Code.Name(c): s for c, s in HTTP_STATUS.items()} == expected
    assert http_status(99) == 500


def test_templates_compile_with_nested_fields_and_custom_verbs() -> None:
    pattern, variables = compile_template("/api/v1/{tender.name=tenders/*}")
    assert variables == ("tender.name",)
    assert pattern.match("/api/v1/tenders/abc").group("g0") == "tenders/abc"
    assert pattern.match("/api/v1/tenders/abc:accept") is None
    pattern, _ = compile_template("/api/v1/{name=webhookSubscriptions/*/deliveries/*}:replay")
    assert pattern.match("/api/v1/webhookSubscriptions/s1/deliveries/d1:replay").group("g0") == \
        "webhookSubscriptions/s1/deliveries/d1"
    assert pattern.match("/api/v1/webhookSubscriptions/s1/deliveries/d1") is None
    assert pattern.match("/api/v1/webhookSubscriptions/s1/x/deliveries/d1:replay") is None


@given(st.text(alphabet=st.characters(blacklist_characters="/:", blacklist_categories=["Cs"]), min_size=1))
def test_a_single_segment_wildcard_takes_any_segment_and_nothing_more(segment: str) -> None:
    pattern, _ = compile_template("/api/v1/{name=tenders/*}:cancel")
    assert pattern.match(f"/api/v1/tenders/{segment}:cancel").group("g0") == f"tenders/{segment}"
    assert pattern.match(f"/api/v1/tenders/{segment}/more:cancel") is None


def test_every_annotated_method_has_a_route_or_is_a_truck_method() -> None:
    api = load_api()
    routes = RouteTable(api)
    routed = {r.method.method.full_name for r in routes.routes}
    for method in api.methods:
        assert method.method.full_name in routed
        assert method.scope is not None or "no bearer token" in method.comment
    assert {m.scope for m in api.methods if m.method.name == "CreateTender"} == {"tender:create"}


def test_seed_payload_verbatim_becomes_the_tender_message() -> None:
    api = load_api()
    route, variables, _ = RouteTable(api).match("POST", "/api/v1/tenders")
    request = build_request(api, route, variables, dict(SEED_TENDER), [])
    tender = request.tender
    assert tender.tms_load_id == "TND-20260118-001"
    assert tender.pickup_window.start_time.ToJsonString() == "2026-02-01T08:00:00Z"
    assert tender.pickup_window.end_time.ToJsonString() == "2026-02-01T18:00:00Z"
    assert tender.equipment == 1  # EQUIPMENT_DRY_VAN_53FT
    assert tender.weight_lb == 42000 and tender.special_instructions == "Hazmat=false"
    assert tender.origin.address == "Houston, TX" and tender.destination.lat == pytest.approx(33.749)


def test_every_tms_equipment_code_is_declared_in_the_proto() -> None:
    codes = load_api().enum_aliases["haulmesh.type.v1.Equipment"]
    assert codes["53FT_DRYVAN"] == "EQUIPMENT_DRY_VAN_53FT" and len(codes) == 8


def test_mint_creates_a_private_key_and_a_jwks(tmp_path) -> None:
    token = tokens.mint(carrier="acme", scopes=["tender:create", "tender:read"], state_dir=tmp_path)
    key_file = tmp_path / "issuer" / "signing-key.pem"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    jwks = json.loads(tokens.jwks_path(tmp_path).read_text())
    assert "d" not in jwks["keys"][0]  # the public key only
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": jwks["keys"][0]["kid"]}
    key = jwt.PyJWKSet.from_dict(jwks).keys[0]
    claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=tokens.DEFAULT_AUDIENCE,
                        issuer=tokens.DEFAULT_ISSUER)
    assert claims["carrier"] == "acme" and claims["scope"] == "tender:create tender:read"
    assert claims["exp"] - claims["iat"] == tokens.DEFAULT_TTL_SECONDS
    # The same key on every later use.
    again = tokens.mint(carrier="acme", scopes="x", state_dir=tmp_path)
    assert jwt.get_unverified_header(again)["kid"] == header["kid"]


def test_token_cli(tmp_path, capsys) -> None:
    assert tokens.main(["mint", "--carrier", "acme", "--scope", "tender:read", "--ttl-seconds", "60",
                        "--state-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.strip()
    assert jwt.decode(printed, options={"verify_signature": False})["carrier"] == "acme"
    assert tokens.main(["mint", "--carrier", "Not A Carrier", "--scope", "x", "--state-dir", str(tmp_path)]) == 2
    assert tokens.main(["mint", "--carrier", "acme", "--scope", "x", "--ttl-seconds", "0",
                        "--state-dir", str(tmp_path)]) == 2
    assert tokens.main(["mint"]) == 2


def _without_scope(method: str) -> bytes:
    """The project's descriptor set with the Scope sentence of ``method`` removed from its comment."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    service_name, method_name = method.rsplit(".", 2)[-2:]
    for f in fds.file:
        for si, service in enumerate(f.service):
            for mi, m in enumerate(service.method):
                if service.name == service_name and m.name == method_name:
                    for loc in f.source_code_info.location:
                        if list(loc.path) == [6, si, 2, mi]:
                            loc.leading_comments = re.sub(r"Scope:\s*`[^`]+`\.?", "", loc.leading_comments)
    return fds.SerializeToString()


def test_an_annotated_method_without_a_scope_stops_start_up(tmp_path) -> None:
    path = tmp_path / "descriptors.binpb"
    path.write_bytes(_without_scope("haulmesh.tender.v1.TenderService.CancelTender"))
    with pytest.raises(ConfigError, match="CancelTender"):
        load_api(path)
    path.write_bytes(_without_scope("haulmesh.tender.v1.TenderService.NoSuchMethod"))
    assert load_api(path).methods  # unchanged: loads
