"""The generated AT-17 matrix's plan, without a mesh: what it calls and what it expects (tests/e2e/tenant_matrix.py).

The mesh run (tests/e2e/test_flow.py) asserts each call ends as planned; this pins that the plan is generated from
every contract service and is never vacuous, so a contract change cannot quietly shrink it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from services.runtime import pki

from ..conftest import Pki
from .tenant_matrix import SERVERS, callers, methods_with_ids, updates


def test_every_service_with_ids_is_in_the_generated_matrix() -> None:
    methods = methods_with_ids()
    assert {m.service for m in methods} == set(SERVERS) - {"haulmesh.billing.v1.ReportService"}  # no id in it
    assert len(methods) >= 40
    # Every kind of id the contracts have: a name, a parent, a reference in the resource, a plain vehicle id.
    paths = {i.path for m in methods for i in m.ids}
    assert {("name",), ("parent",), ("mission", "tender"), ("vehicle_id",)} <= paths


def test_every_call_has_an_exact_expectation(tmp_path: Path) -> None:
    plan = [(m, c) for m in methods_with_ids() for c, _ in callers(Pki(tmp_path, pki.create_ca()), "own", "intr")]
    expected = Counter(c.expected(m) for m, c in plan)
    assert set(expected) == {("PERMISSION_DENIED", "METHOD_NOT_ALLOWED"), ("PERMISSION_DENIED", "TENANT_NOT_ALLOWED"),
                             ("NOT_FOUND", ""), None}
    # An operator without a role is refused everything; one naming a carrier it does not serve never gets through.
    for method, caller in plan:
        if caller.identity.kind == "operator" and caller.grant is None:
            assert caller.expected(method) == ("PERMISSION_DENIED", "METHOD_NOT_ALLOWED")
        if not caller.serves_asserted:
            assert caller.expected(method)[0] == "PERMISSION_DENIED"
    assert expected[("NOT_FOUND", "")] >= 40 and expected[None] < len(plan) // 10


def test_every_update_has_read_only_fields_to_refuse() -> None:
    assert {m.name for m, _ in updates()} == {"UpdateTender", "UpdateFacility", "UpdateRateCard", "UpdateVehicle",
                                               "UpdateWebhookSubscription"}
