"""The OpenAPI document served by the real gateway: valid, complete, and true to the running API."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema_rs
from schemathesis.specs.openapi.definitions import OPENAPI_31

from services.gateway.rest.descriptors import load_api
from services.gateway.rest.openapi import build_openapi, decimal_at_most, dump_openapi, expand_template
from services.runtime import resource_id_pattern

from .conftest import ALL_SCOPES


async def test_openapi_document_is_served_and_complete(http) -> None:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert doc["openapi"] == "3.1.0"
    served = {(verb.upper(), path) for path, ops in doc["paths"].items() for verb in ops}
    for method in load_api().methods:
        for binding in method.bindings:
            path, _ = expand_template(binding.template)
            expected = not method.method.client_streaming and method.scope is not None
            assert ((binding.verb, path) in served) == expected, (binding, served)
    create = doc["paths"]["/api/v1/tenders"]["post"]
    assert create["security"] == [{"oauth2": ["tender:create"]}]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/haulmesh.tender.v1.Tender"}
    tender = doc["components"]["schemas"]["haulmesh.tender.v1.Tender"]
    assert tender["properties"]["state"]["readOnly"] is True
    assert tender["properties"]["carrier"]["readOnly"] is True
    assert "tmsLoadId" in tender["required"] and "state" not in tender["required"]
    assert "TMS's own load" in tender["properties"]["tmsLoadId"]["description"]
    assert "EQUIPMENT_DRY_VAN_53FT" in doc["components"]["schemas"]["haulmesh.type.v1.Equipment"]["enum"]
    flow = doc["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]
    assert set(flow["scopes"]) == set(ALL_SCOPES.split()) and flow["tokenUrl"]
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["responses"]["default"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/google.rpc.Status"}


def _refs(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


async def test_openapi_document_is_valid_openapi_3_1(http) -> None:
    doc = (await http.get("/openapi.json")).json()
    # The official OpenAPI 3.1 schema (the copy schemathesis ships; no network), then every component schema
    # against the JSON Schema 2020-12 meta-schema (OpenAPI 3.1's dialect).
    errors = [f"{e.instance_path}: {e.message}" for e in
              jsonschema_rs.Draft202012Validator(OPENAPI_31).iter_errors(doc)]
    assert errors == []
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for path, ops in doc["paths"].items():
        for op in ops.values():
            declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"\{([^}]+)\}", path)), path


async def test_the_validator_catches_a_broken_document(http) -> None:
    doc = (await http.get("/openapi.json")).json()
    broken = {**doc, "paths": {"no-leading-slash": {}}}
    assert list(jsonschema_rs.Draft202012Validator(OPENAPI_31).iter_errors(broken))


def _committed() -> str:
    return (Path(__file__).resolve().parents[3] / "docs" / "openapi.json").read_text()


async def test_the_committed_document_is_the_served_one(http) -> None:
    """docs/openapi.json is what `make openapi` writes; stale (a proto or limit changed since), this fails."""
    served = (await http.get("/openapi.json")).text
    assert _committed() == served == dump_openapi(build_openapi(load_api())), \
        "docs/openapi.json is stale: run `make openapi` and commit it"


async def test_the_document_states_the_limits_the_server_enforces(http) -> None:
    doc = (await http.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    page_size = next(p for p in doc["paths"]["/api/v1/tenders"]["get"]["parameters"] if p["name"] == "pageSize")
    assert page_size["schema"]["minimum"] == 0
    vehicle = next(p for p in doc["paths"]["/api/v1/missions/{mission}"]["get"]["parameters"] if p["in"] == "path")
    assert vehicle["schema"]["pattern"] == resource_id_pattern("missions").pattern
    frames = doc["paths"]["/api/v1/missions/{mission}/telemetryFrames"]["get"]["parameters"]
    sequence = next(p for p in frames if p["name"] == "minSequence")["schema"]
    assert sequence["anyOf"][0]["minimum"] == 0 and sequence["anyOf"][0]["maximum"] == 2**64 - 1
    pattern = re.compile(sequence["anyOf"][1]["pattern"])
    assert pattern.match(str(2**64 - 1)) and not pattern.match(str(2**64)) and not pattern.match("-1")
    assert schemas["haulmesh.tender.v1.Tender"]["properties"]["weightLb"]["maximum"] == 80_000
    assert schemas["haulmesh.tender.v1.Tender"]["additionalProperties"] is False
    assert "haulmesh.tender.v1.offered" in doc["webhooks"]
    for ops in doc["paths"].values():
        for op in ops.values():
            ok = op["responses"]["200"]["content"]
            assert any("example" in media for media in ok.values()), op["operationId"]
            if "requestBody" in op:
                assert "example" in op["requestBody"]["content"]["application/json"], op["operationId"]


def test_decimal_bounds_are_exact() -> None:
    for bound in (0, 7, 10, 99, 100, 255, 2**31 - 1, 2**63, 2**64 - 1):
        pattern = re.compile(f"^{decimal_at_most(bound)}$")
        for n in {0, 1, 9, 10, bound - 1, bound, bound + 1, bound * 10, max(bound // 2, 0)}:
            if n >= 0:
                assert bool(pattern.match(str(n))) == (n <= bound), (bound, n)
        assert not pattern.match("01") and not pattern.match("")


def test_every_example_is_valid_against_its_schema() -> None:
    doc = build_openapi(load_api())
    checked = 0

    def check(where: str, media: dict, *, request: bool) -> None:
        nonlocal checked
        if "example" not in media or "schema" not in media or media["schema"].get("type") == "string":
            return
        schema = {**media["schema"], "components": doc["components"]}
        errors = [f"{e.instance_path}: {e.message}" for e in
                  jsonschema_rs.Draft202012Validator(schema).iter_errors(media["example"])]
        assert errors == [], (where, errors[:5])
        checked += 1

    for path, ops in doc["paths"].items():
        for verb, op in ops.items():
            if "requestBody" in op:
                check(f"{verb} {path} request", op["requestBody"]["content"]["application/json"], request=True)
            for media in op["responses"]["200"]["content"].values():
                check(f"{verb} {path} 200", media, request=False)
    for name, hook in doc["webhooks"].items():
        check(name, hook["post"]["requestBody"]["content"]["application/json"], request=True)
    assert checked > 60
