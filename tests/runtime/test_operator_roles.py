"""Operator roles (issue 12, "Scoped operators"; docs/security.md "Operator roles").

The grant (role and carriers) is a CA-signed certificate extension: issued by ``haulmesh pki issue operator``,
read at every call, and used by every policy (a role outside the method's: METHOD_NOT_ALLOWED) and by the tenant
check (a carrier the operator does not serve: TENANT_NOT_ALLOWED). A real runtime server over real mTLS on a
real store; the servicer counts what reached it.
"""

from __future__ import annotations

import contextvars
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from haulmesh.tender.v1 import tender_pb2, tender_service_pb2, tender_service_pb2_grpc
from services.billing.evidence.server import POLICY as EVIDENCE_POLICY
from services.billing.reports.server import POLICY as REPORT_POLICY
from services.billing.server import POLICY as BILLING_POLICY
from services.gateway.webhooks.server import POLICY as WEBHOOK_POLICY
from services.mission.server import POLICY as MISSION_POLICY
from services.runtime import (
    FLEET_OPERATORS,
    PLATFORM_ADMINS,
    ConfigError,
    Identity,
    IdentityError,
    Policy,
    Service,
    caller_may,
    carrier,
    pki,
    status_of,
)
from services.runtime._identity import _CALLER
from services.runtime._roles import _GRANT, OPERATOR_GRANT_OID, grant_from_pem
from services.runtime.cli import main as cli_main
from services.telemetry.server import POLICY as TELEMETRY_POLICY
from services.tender.server import POLICY as TENDER_POLICY

from ..conftest import Pki
from .conftest import tender_server_config

ROOT = Path(__file__).resolve().parents[2]
OPS = Identity("operator", "ops")
FLEET_ACME = pki.OperatorGrant(pki.FLEET_OPERATOR, frozenset({"acme"}))
BILLING_ACME = pki.OperatorGrant(pki.BILLING_ADMIN, frozenset({"acme"}))
PLATFORM = pki.OperatorGrant(pki.PLATFORM_ADMIN)
SERVICE_POLICIES = {"tender": TENDER_POLICY, "mission": MISSION_POLICY, "billing": BILLING_POLICY,
                    "reports": REPORT_POLICY, "evidence": EVIDENCE_POLICY, "telemetry": TELEMETRY_POLICY,
                    "webhooks": WEBHOOK_POLICY}


# --- the grant in the certificate ------------------------------------------------------------------------------

def test_a_grant_is_carried_by_the_certificate_the_ca_signs() -> None:
    ca = pki.create_ca()
    grant = pki.OperatorGrant(pki.FLEET_OPERATOR, frozenset({"acme", "beta-freight"}))
    issued = pki.issue(ca, pki.identity_for("operator", "alice"), valid_days=1, grant=grant)
    assert grant_from_pem(issued.certificate_pem) == grant
    extension = issued.certificate.extensions.get_extension_for_oid(OPERATOR_GRANT_OID)
    assert not extension.critical  # a TLS stack refuses a critical extension it does not know
    plain = pki.issue(ca, pki.identity_for("operator", "bob"), valid_days=1)
    assert grant_from_pem(plain.certificate_pem) is None  # no grant: no role


def _hand_issued(ca: pki.CertificateAuthority, uri: str, extension: x509.ExtensionType) -> pki.IssuedCertificate:
    """A client certificate of ``ca`` for ``uri`` with ``extension``, made past pki.issue's own checks."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand")]))
            .issuer_name(ca.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .add_extension(extension, critical=False)
            .sign(ca.private_key, hashes.SHA256()))
    return pki.IssuedCertificate(cert, key)


def test_a_malformed_grant_is_an_identity_error_never_no_role() -> None:
    bad = x509.UnrecognizedExtension(OPERATOR_GRANT_OID, b"\x30\x03\x02\x01\x07")  # version 7, nothing else
    issued = _hand_issued(pki.create_ca(), "spiffe://haulmesh.local/operator/eve", bad)
    with pytest.raises(IdentityError) as caught:
        grant_from_pem(issued.certificate_pem)
    assert caught.value.reason == "INVALID_OPERATOR_GRANT"


@pytest.mark.parametrize("role,carriers,message", [
    ("superuser", {"acme"}, "unknown operator role 'superuser'"),
    (pki.FLEET_OPERATOR, set(), "name at least one"),
    (pki.BILLING_ADMIN, {"Acme Corp"}, "carrier id 'Acme Corp'"),
    (pki.PLATFORM_ADMIN, {"acme"}, "a platform admin serves every carrier"),
    (pki.FLEET_OPERATOR, {f"c{i}" for i in range(17)}, "at most 16 carriers"),
])
def test_a_bad_grant_is_refused_with_its_reason(role: str, carriers: set[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        pki.OperatorGrant(role, frozenset(carriers))


def test_only_operators_get_a_grant() -> None:
    with pytest.raises(ConfigError, match="operator certificates only"):
        pki.issue(pki.create_ca(), pki.identity_for("service", "gateway"), grant=PLATFORM)


# --- policies ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["operator/*", "operator/cli", "role:superuser"])
def test_a_policy_names_operators_by_role_only(pattern: str) -> None:
    with pytest.raises(ValueError, match="operators are allowed by role"):
        Policy({"/a.A/Get": [pattern]})


def test_a_policy_admits_an_operator_by_its_role_only() -> None:
    policy = Policy({"/a.A/Get": [FLEET_OPERATORS], "/a.A/Put": [PLATFORM_ADMINS]})
    assert policy.allows("/a.A/Get", OPS, FLEET_ACME)
    assert not policy.allows("/a.A/Put", OPS, FLEET_ACME)
    assert not policy.allows("/a.A/Get", OPS, BILLING_ACME)
    assert not policy.allows("/a.A/Get", OPS, None)  # no role
    assert policy.allows("/grpc.health.v1.Health/Check", OPS, None)  # health is open to all
    assert not policy.allows("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", OPS, None)


def _doc_table() -> dict[str, dict[str, set[str]]]:
    """docs/security.md's role table: method -> role -> 'yes'/'-' cells (the written-down decision)."""
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## Operator roles", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, dict[str, set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and "/" in cells[0]:
            service, methods = cells[0].strip("`").split("/", 1)
            for method in methods.split(", "):
                rows[f"{service}/{method.strip('`')}"] = dict(zip(pki.ROLES, cells[1:], strict=True))
    return rows


def test_every_policy_gives_operators_exactly_what_docs_security_says() -> None:
    """Every method of every service, for every role (and none): allowed as docs/security.md's table says."""
    table = _doc_table()
    seen = {}
    for policy in SERVICE_POLICIES.values():
        for method in policy.methods:
            if "/grpc." in method:
                continue
            service, name = method.strip("/").split("/")
            key = f"{service.rsplit('.', 1)[1]}/{name}"
            seen[key] = {role: policy.allows(method, OPS, pki.OperatorGrant(
                role, frozenset() if role == pki.PLATFORM_ADMIN else frozenset({"acme"}))) for role in pki.ROLES}
            assert not policy.allows(method, OPS, None), f"{method}: an operator without a role is allowed"
    documented = {key: {role: cell == "yes" for role, cell in row.items()} for key, row in table.items()}
    assert documented == {k: v for k, v in seen.items() if any(v.values()) or k in documented}
    assert {k for k, v in seen.items() if any(v.values())} <= set(documented)


# --- the CLI -----------------------------------------------------------------------------------------------------

def _cert(directory: Path, stem: str) -> bytes:
    return (directory / f"{stem}.pem").read_bytes()


def test_pki_issue_writes_the_role_and_carriers(tmp_path: Path, capsys) -> None:
    assert cli_main(["--cert-dir", str(tmp_path), "pki", "init"]) == 0
    assert cli_main(["--cert-dir", str(tmp_path), "pki", "issue", "operator", "alice", "--role", "fleet-operator",
                     "--carrier", "acme", "--carrier", "beta"]) == 0
    assert "fleet-operator of acme, beta" in capsys.readouterr().out
    assert grant_from_pem(_cert(tmp_path, "operator-alice")) == pki.OperatorGrant("fleet-operator",
                                                                                  frozenset({"acme", "beta"}))
    assert cli_main(["--cert-dir", str(tmp_path), "pki", "issue", "operator", "root", "--role",
                     "platform-admin"]) == 0
    assert grant_from_pem(_cert(tmp_path, "operator-root")) == PLATFORM


@pytest.mark.parametrize("argv,message", [
    (["operator", "x"], "needs --role (fleet-operator, billing-admin, platform-admin)"),
    (["operator", "x", "--role", "billing-admin"], "serves named carriers: name at least one"),
    (["operator", "x", "--role", "platform-admin", "--carrier", "acme"], "serves every carrier: name no carrier"),
    (["operator", "x", "--role", "fleet-operator", "--carrier", "ACME!"], "carrier id 'ACME!'"),
    (["vehicle", "AU-TRK-9", "--role", "fleet-operator"], "are for operator certificates, not vehicle"),
    (["service", "tender", "--carrier", "acme"], "are for operator certificates, not service"),
])
def test_pki_issue_refuses_a_bad_grant_clearly(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    assert cli_main(["--cert-dir", str(tmp_path), "pki", "init"]) == 0
    assert cli_main(["--cert-dir", str(tmp_path), "pki", "issue", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("operator-x*")) and not list(tmp_path.glob("vehicle-*"))


def test_an_unknown_role_is_refused_by_the_parser(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["--cert-dir", str(tmp_path), "pki", "issue", "operator", "x", "--role", "root"])
    assert exited.value.code == 2 and "invalid choice: 'root'" in capsys.readouterr().err


def test_dev_bootstrap_makes_the_cli_a_platform_admin_and_upgrades_an_old_certificate(tmp_path: Path) -> None:
    assert cli_main(["--cert-dir", str(tmp_path), "pki", "dev-bootstrap"]) == 0
    assert grant_from_pem(_cert(tmp_path, "operator-cli")) == PLATFORM
    old = pki.issue(pki.load_ca(tmp_path), pki.identity_for("operator", "cli"), valid_days=90)  # before roles
    pki.write_pem_files(tmp_path, "operator-cli", old, b"")
    assert cli_main(["--cert-dir", str(tmp_path), "pki", "dev-bootstrap"]) == 0
    assert grant_from_pem(_cert(tmp_path, "operator-cli")) == PLATFORM
    tender = _cert(tmp_path, "tender")
    assert cli_main(["--cert-dir", str(tmp_path), "pki", "dev-bootstrap"]) == 0
    assert _cert(tmp_path, "tender") == tender  # the rest is left alone


# --- enforced on a real server -----------------------------------------------------------------------------------

class CarrierTenders(tender_service_pb2_grpc.TenderServiceServicer):
    """Both answer for the call's carrier (``carrier()``); CancelTender is a platform admin's only."""

    def __init__(self) -> None:
        self.calls = 0

    async def GetTender(self, request, context):
        self.calls += 1  # counted on entry: a refusal must come before any handler runs
        return tender_pb2.Tender(name=request.name, tms_load_id=carrier(context))

    async def CancelTender(self, request, context):
        self.calls += 1
        return tender_pb2.Tender(name=request.name, tms_load_id=carrier(context))


_GET = "/haulmesh.tender.v1.TenderService/GetTender"
_CANCEL = "/haulmesh.tender.v1.TenderService/CancelTender"


@pytest.fixture
async def server(tmp_path: Path, store_url: str):
    p, config = tender_server_config(tmp_path, store_url)
    service = Service(config, Policy({_GET: ["service/gateway", FLEET_OPERATORS, PLATFORM_ADMINS],
                                      _CANCEL: [PLATFORM_ADMINS]}))
    servicer = CarrierTenders()
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, servicer,
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    await service.start()
    yield service, servicer, p
    await service.stop()


async def _call(service: Service, credentials: grpc.ChannelCredentials, method: str, carrier_id: str):
    async with grpc.aio.secure_channel(f"127.0.0.1:{service.bound_port}", credentials) as channel:
        stub = tender_service_pb2_grpc.TenderServiceStub(channel)
        rpc = stub.GetTender if method == _GET else stub.CancelTender
        request = (tender_service_pb2.GetTenderRequest if method == _GET else tender_service_pb2.CancelTenderRequest)
        return await rpc(request(name="tenders/t1"), metadata=(("haulmesh-carrier", f"carriers/{carrier_id}"),),
                         timeout=5)


def _refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    status = status_of(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return error.code(), info.reason


@pytest.mark.parametrize("role,carriers,method,carrier_id,refused", [
    # A fleet operator: its carriers only, its methods only.
    (pki.FLEET_OPERATOR, ("acme", "beta"), _GET, "acme", None),
    (pki.FLEET_OPERATOR, ("acme", "beta"), _GET, "beta", None),
    (pki.FLEET_OPERATOR, ("acme",), _GET, "rival", "TENANT_NOT_ALLOWED"),
    (pki.FLEET_OPERATOR, ("acme",), _CANCEL, "acme", "METHOD_NOT_ALLOWED"),
    # A billing admin has no fleet method; an operator without a role has none at all.
    (pki.BILLING_ADMIN, ("acme",), _GET, "acme", "METHOD_NOT_ALLOWED"),
    (None, (), _GET, "acme", "METHOD_NOT_ALLOWED"),
    # A platform admin: every carrier, its methods.
    (pki.PLATFORM_ADMIN, (), _GET, "rival", None),
    (pki.PLATFORM_ADMIN, (), _CANCEL, "acme", None),
])
async def test_roles_and_carriers_are_enforced_at_every_call(server, role, carriers, method, carrier_id,
                                                            refused) -> None:
    service, servicer, p = server
    credentials = p.credentials("operator", "ops", role=role, carriers=carriers)
    if refused is None:
        reply = await _call(service, credentials, method, carrier_id)
        assert reply.tms_load_id == carrier_id and servicer.calls == 1
        return
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(service, credentials, method, carrier_id)
    assert _refusal(caught.value) == (grpc.StatusCode.PERMISSION_DENIED, refused)
    assert servicer.calls == 0  # refused before any handler ran (the tenant too: by the interceptor)


async def test_services_still_act_for_any_carrier(server) -> None:
    service, _, p = server
    assert (await _call(service, p.credentials("service", "gateway"), _GET, "rival")).tms_load_id == "rival"


async def test_an_operator_without_a_role_may_read_health_and_nothing_else(server) -> None:
    service, _, p = server
    credentials = p.credentials("operator", "nobody", role=None)
    async with grpc.aio.secure_channel(f"127.0.0.1:{service.bound_port}", credentials) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert _refusal(caught.value) == (grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED")


async def test_a_grant_on_a_vehicle_certificate_gives_nothing(server) -> None:
    """The grant counts only on an operator's certificate: a vehicle certificate carrying one (made by hand, past
    pki.issue's own check) gains nothing from it."""
    service, servicer, p = server
    issued = _hand_issued(p.ca, "spiffe://haulmesh.local/vehicle/AU-TRK-1", PLATFORM.extension())
    credentials = grpc.ssl_channel_credentials(p.ca.certificate_pem, issued.private_key_pem, issued.certificate_pem)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(service, credentials, _GET, "acme")
    assert _refusal(caught.value) == (grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED")
    assert servicer.calls == 0


def test_the_test_pki_can_mint_every_role(tmp_path: Path) -> None:
    """The fixture's operator credentials (tests that are not about roles act as a platform admin)."""
    assert isinstance(Pki(tmp_path, pki.create_ca()).credentials("operator", "x", role=pki.BILLING_ADMIN,
                                                                 carriers=("acme",)), grpc.ChannelCredentials)


def test_caller_may_applies_a_handlers_own_rule_by_role() -> None:
    """Telemetry lets only some callers name a vehicle (``caller_may``): a platform admin, not a fleet operator."""
    readers = ["service/mission", PLATFORM_ADMINS]

    def may(identity: Identity, grant: pki.OperatorGrant | None) -> bool:
        context = contextvars.copy_context()

        def check() -> bool:
            _CALLER.set(identity)
            _GRANT.set(grant)
            return caller_may(readers)

        return context.run(check)

    assert may(OPS, PLATFORM) and may(Identity("service", "mission"), None)
    assert not may(OPS, FLEET_ACME) and not may(OPS, None) and not may(Identity("service", "gateway"), None)
    with pytest.raises(ValueError, match="operators are allowed by role"):
        caller_may(["operator/*"])
