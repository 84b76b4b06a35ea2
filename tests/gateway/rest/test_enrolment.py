"""Truck enrolment and renewal through the gateway's own routes (rest/enrol.py), driven by the real edge client:
real HTTP for enrolment, real mTLS on the device listener for renewal, a real store for the tokens. The listeners
run in-process (no mesh): the routes call no other service."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import ssl
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from limits import RateLimitItem
from limits import parse as parse_rate_limit

from edge_client.certs import EnrolmentError, Renewer, VehicleFiles, enrol, renew, vehicle_csr
from services.gateway.config import GatewayConfig
from services.gateway.rest.app import HttpListener, create_app
from services.gateway.rest.device import TlsScopeProtocol, device_ssl_context
from services.gateway.rest.enrol import MAX_ENROL_BODY_BYTES, Enrolment
from services.gateway.rest.metrics import HttpMetricsMiddleware
from services.gateway.rest.ratelimit import TenantRateLimiter
from services.runtime import (
    ConfigError,
    PermissionDenied,
    RevocationList,
    TlsConfig,
    connect_async,
    connect_sync,
    free_port,
    identity_from_pem,
    new_id,
    pki,
    poll_until,
    revoke_identity,
)
from services.runtime.enrolment import VehicleSigner, issue_token

from ...conftest import Pki, make_pki

REPO = str(Path(__file__).resolve().parents[3])


class Gateway:
    """The two listeners with the enrolment routes, and what a test needs around them."""

    def __init__(self, p: Pki, tmp: Path, store_url: str, valid_seconds: int, signer: bool = True,
                 certificate_check=None, rate_limit: RateLimitItem | None = None) -> None:
        self.pki = p
        issued = pki.issue(p.ca, pki.identity_for("service", "gateway"), valid_days=1, dns_names=("localhost",),
                           ip_addresses=("127.0.0.1",))
        cert, key = pki.write_pem_files(tmp / "gateway", "gateway", issued, p.ca.certificate_pem)
        self.tls = TlsConfig(tmp / "gateway" / "ca.pem", cert, key)
        self.store = connect_async(store_url)
        self.sync_store = connect_sync(store_url)
        config = GatewayConfig() if rate_limit is None else dataclasses.replace(GatewayConfig(), rate_limit=rate_limit)
        self.limiter = TenantRateLimiter.from_config(config, store_url)
        self.enrolment = Enrolment(VehicleSigner(p.ca, valid_seconds) if signer else None, lambda: self.store,
                                   self.limiter, certificate_check=certificate_check)
        self.http_port, self.device_port = free_port(), free_port()

        async def ready() -> bool:
            return True

        context = device_ssl_context(self.tls)
        self.listeners = [
            HttpListener(create_app(ready, extra_routes=self.enrolment.enrol_routes()), "127.0.0.1", self.http_port),
            HttpListener(create_app(ready, extra_routes=self.enrolment.renew_routes()), "127.0.0.1",
                         self.device_port, http=TlsScopeProtocol, ws="none",
                         ssl_context_factory=lambda _c, _d: context),
        ]
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def device_url(self) -> str:
        return f"https://127.0.0.1:{self.device_port}"

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(listener.run()) for listener in self.listeners]

        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"{self.http_url}/healthz")).status_code == 200
            except httpx.HTTPError:
                return False
        await poll_until(up, timeout_seconds=15, what="the gateway's listeners")

    async def stop(self) -> None:
        for listener in self.listeners:
            await listener.stop()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.limiter.close()
        await self.store.aclose()
        self.sync_store.close()

    def token(self, vehicle: str) -> str:
        return issue_token(self.sync_store, vehicle, ttl_seconds=600)[0]


@pytest.fixture
async def gateway(tmp_path: Path, store_url: str):
    g = Gateway(make_pki(tmp_path / "ca"), tmp_path, store_url, valid_seconds=3600)
    await g.start()
    yield g
    await g.stop()


def _files(g: Gateway, tmp_path: Path, vehicle: str) -> VehicleFiles:
    directory = tmp_path / "truck" / vehicle
    directory.mkdir(parents=True)
    (directory / "ca.pem").write_bytes(g.pki.ca.certificate_pem)  # provisioned with the truck's image
    return VehicleFiles(directory, vehicle)


async def _post(url: str, body: object, **kw) -> tuple[int, str, str]:
    async with httpx.AsyncClient(timeout=15, **kw) as client:
        response = await client.post(url, json=body) if not isinstance(body, bytes) else \
            await client.post(url, content=body, headers={"content-type": "application/json"})
    detail = response.json()
    return response.status_code, detail["details"][0]["reason"], detail["message"]


async def test_a_truck_enrols_with_its_own_key_and_a_one_time_token(gateway: Gateway, tmp_path: Path) -> None:
    files = _files(gateway, tmp_path, "AU-TRK-E1")
    token = gateway.token("AU-TRK-E1")
    certificate = await enrol(gateway.http_url, files, token)
    assert identity_from_pem(files.cert_file.read_bytes()).spiffe_id == "spiffe://haulmesh.local/vehicle/AU-TRK-E1"
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600
    assert certificate.public_key() == x509.load_pem_x509_certificate(files.cert_file.read_bytes()).public_key()
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 3600 <= lifetime.total_seconds() <= 3600 + 300
    with pytest.raises(EnrolmentError) as caught:  # the same token again
        await enrol(gateway.http_url, files, token)
    assert (caught.value.status, caught.value.reason) == (401, "ENROLMENT_TOKEN_USED")
    assert "already used" in str(caught.value)


async def test_every_bad_enrolment_is_refused_clearly_and_a_bad_csr_keeps_the_token(gateway: Gateway,
                                                                                    tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = gateway.token("AU-TRK-E2")
    url = f"{gateway.http_url}/api/v1/vehicles/AU-TRK-E2:enrol"
    other = f"{gateway.http_url}/api/v1/vehicles/AU-TRK-E3:enrol"
    cases = [
        (url, {"token": token, "csr": vehicle_csr(key, "AU-TRK-E3")}, 400, "CSR_IDENTITY_MISMATCH", "exactly one"),
        (url, {"token": token, "csr": "hello"}, 400, "BAD_CSR", "not a PEM"),
        (other, {"token": token, "csr": vehicle_csr(key, "AU-TRK-E3")}, 403, "ENROLMENT_TOKEN_WRONG_VEHICLE",
         "another vehicle"),
        (url, {"token": "hmenrol_" + "x" * 43, "csr": vehicle_csr(key, "AU-TRK-E2")}, 401, "ENROLMENT_TOKEN_UNKNOWN",
         "unknown"),
        (url, {"token": "guess", "csr": vehicle_csr(key, "AU-TRK-E2")}, 400, "ENROLMENT_TOKEN_MALFORMED", "43"),
        (url, {"token": token}, 400, "INVALID_BODY", "'csr' is required"),
        (url, {"token": token, "csr": vehicle_csr(key, "AU-TRK-E2"), "days": 365}, 400, "INVALID_BODY",
         "unknown field 'days'"),
        (url, [1], 400, "INVALID_BODY", "JSON object"),
        (url, b"{not json", 400, "INVALID_JSON", ""),
        (url, {"token": token, "csr": "x" * MAX_ENROL_BODY_BYTES}, 413, "REQUEST_TOO_LARGE", "16384"),
        (f"{gateway.http_url}/api/v1/vehicles/bad%20id:enrol", {"token": token, "csr": "x"}, 400,
         "INVALID_VEHICLE_ID", "letters"),
    ]
    for target, body, status, reason, words in cases:
        got = await _post(target, body)
        assert got[:2] == (status, reason), (body if not isinstance(body, dict) else list(body), got)
        assert words in got[2]
    # None of these spent the token: the truck enrols with it now.
    files = _files(gateway, tmp_path, "AU-TRK-E2")
    assert (await enrol(gateway.http_url, files, token)).serial_number


async def test_without_a_signing_key_enrolment_says_it_is_not_configured(tmp_path: Path, store_url: str) -> None:
    g = Gateway(make_pki(tmp_path / "ca"), tmp_path, store_url, valid_seconds=60, signer=False)
    await g.start()
    try:
        status, reason, message = await _post(f"{g.http_url}/api/v1/vehicles/AU-TRK-E4:enrol",
                                              {"token": "t", "csr": "c"})
    finally:
        await g.stop()
    assert (status, reason) == (503, "ENROLMENT_NOT_CONFIGURED")
    assert "HAULMESH_GATEWAY_ENROLMENT_CA_KEY_FILE" in message


async def test_renewal_needs_the_trucks_own_current_certificate(gateway: Gateway, tmp_path: Path) -> None:
    files = _files(gateway, tmp_path, "AU-TRK-E5")
    await enrol(gateway.http_url, files, gateway.token("AU-TRK-E5"))
    context = files.ssl_context()
    status, reason, _ = await _post(f"{gateway.device_url}/api/v1/vehicles/AU-TRK-E6:renewCertificate",
                                    {"csr": "x"}, verify=context)
    assert (status, reason) == (403, "VEHICLE_MISMATCH")
    # A service's certificate is not a truck's.
    service = tmp_path / "svc"
    issued = pki.issue(gateway.pki.ca, pki.identity_for("service", "tender"), valid_days=1)
    cert, key = pki.write_pem_files(service, "tender", issued, gateway.pki.ca.certificate_pem)
    svc_context = ssl.create_default_context(cafile=str(files.ca_file))
    svc_context.load_cert_chain(cert, key)
    status, reason, _ = await _post(f"{gateway.device_url}/api/v1/vehicles/tender:renewCertificate", {"csr": "x"},
                                    verify=svc_context)
    assert (status, reason) == (403, "VEHICLE_CERTIFICATE_REQUIRED")
    # No certificate at all: the handshake itself is refused.
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)):
        await _post(f"{gateway.device_url}/api/v1/vehicles/AU-TRK-E5:renewCertificate", {"csr": "x"},
                    verify=ssl.create_default_context(cafile=str(files.ca_file)))
    # The truck's own: a new certificate for the same key.
    before = files.certificate()
    after = await renew(gateway.device_url, files)
    assert after.serial_number != before.serial_number and after.public_key() == before.public_key()
    assert files.certificate().serial_number == after.serial_number


async def test_the_renewer_renews_before_expiry_each_time_with_the_certificate_it_got_last(
        tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="haulmesh.gateway.enrol")
    g = Gateway(make_pki(tmp_path / "ca"), tmp_path, store_url, valid_seconds=3)
    await g.start()
    renewer_task = None
    try:
        files = _files(g, tmp_path, "AU-TRK-E7")
        first = await enrol(g.http_url, files, g.token("AU-TRK-E7"))
        renewer = Renewer(g.device_url, files, fraction=0.5)
        renewer_task = asyncio.create_task(renewer.run())
        await poll_until(lambda: renewer.renewals >= 3, timeout_seconds=20, interval_seconds=0.1,
                         what="three renewals")
    finally:
        if renewer_task:
            renewer_task.cancel()
        await g.stop()
    lines = [r.getMessage() for r in caplog.records if "renewCertificate" in r.getMessage()]
    chain = [re.search(r"presented (\w+), issued serial (\w+)", line).groups() for line in lines]
    # Each renewal was made over a new handshake presenting the certificate the previous one issued.
    assert chain[0][0] == format(first.serial_number, "x")
    assert all(chain[i][0] == chain[i - 1][1] for i in range(1, len(chain))), chain
    assert renewer.failures == 0, renewer.last_error


def test_the_signing_key_settings_are_checked(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    # The dev PKI's layout: the key beside the mesh CA is found; without it, no enrolment.
    assert GatewayConfig.from_env({}, state_dir=tmp_path, mesh_ca_file=ca_file).enrolment_ca_key_file is None
    (tmp_path / "ca-key.pem").write_text("x")
    config = GatewayConfig.from_env({}, state_dir=tmp_path, mesh_ca_file=ca_file)
    assert (config.enrolment_ca_cert_file, config.enrolment_ca_key_file) == (ca_file, tmp_path / "ca-key.pem")
    assert config.vehicle_cert_ttl_seconds == 86400
    explicit = GatewayConfig.from_env({"HAULMESH_GATEWAY_ENROLMENT_CA_KEY_FILE": "/k.pem",
                                       "HAULMESH_GATEWAY_VEHICLE_CERT_TTL_SECONDS": "600"},
                                      state_dir=tmp_path, mesh_ca_file=ca_file)
    assert (explicit.enrolment_ca_key_file, explicit.vehicle_cert_ttl_seconds) == (Path("/k.pem"), 600)
    for env, words in [({"HAULMESH_GATEWAY_VEHICLE_CERT_TTL_SECONDS": "4"}, "from 5 to 2592000, got '4'"),
                       ({"HAULMESH_GATEWAY_VEHICLE_CERT_TTL_SECONDS": "a day"}, "whole number of seconds"),
                       ({"HAULMESH_GATEWAY_ENROLMENT_CA_CERT_FILE": "/c.pem"}, "without"
                                                                               " HAULMESH_GATEWAY_ENROLMENT_CA_KEY")]:
        with pytest.raises(ConfigError, match=words):
            GatewayConfig.from_env(env, state_dir=tmp_path, mesh_ca_file=ca_file)


def test_the_routes_are_labelled_by_their_template_in_metrics() -> None:
    async def ready() -> bool:
        return True

    enrolment = Enrolment(None, lambda: None, None)  # type: ignore[arg-type]
    app = create_app(ready, extra_routes=enrolment.enrol_routes())
    middleware = next(m for m in app.user_middleware if m.cls is HttpMetricsMiddleware)
    route_of = middleware.kwargs["route_of"]
    assert route_of("POST", "/api/v1/vehicles/AU-TRK-1:enrol") == "/api/v1/vehicles/{vehicle}:enrol"
    assert route_of("POST", "/healthz") == "/healthz"


async def test_a_certificate_the_check_refuses_never_renews(tmp_path: Path, store_url: str) -> None:
    """The hook the revocation deny-list plugs into: a refused certificate gets no new serial."""
    refused: list[int] = []

    async def revoked(der: bytes) -> None:
        refused.append(x509.load_der_x509_certificate(der).serial_number)
        raise PermissionDenied("this certificate is revoked", reason="CERTIFICATE_REVOKED")

    g = Gateway(make_pki(tmp_path / "ca"), tmp_path, store_url, valid_seconds=600, certificate_check=revoked)
    await g.start()
    try:
        files = _files(g, tmp_path, "AU-TRK-E8")
        first = await enrol(g.http_url, files, g.token("AU-TRK-E8"))
        with pytest.raises(EnrolmentError) as caught:
            await renew(g.device_url, files)
    finally:
        await g.stop()
    assert (caught.value.status, caught.value.reason) == (403, "CERTIFICATE_REVOKED")
    assert refused == [first.serial_number]
    assert files.certificate().serial_number == first.serial_number  # nothing replaced


async def test_a_stolen_truck_revoked_by_identity_cannot_renew_and_gets_back_in_only_by_enrolling_again(
        tmp_path: Path, store_url: str) -> None:
    """The thief holds the truck and its key, and renewed before the operator noticed: revoking the vehicle (not the
    serial the operator knew) refuses the renewed certificate too; a new token enrols it again at once, and the
    gateway dates the new certificate after the cut-off, so the deny-list lets it in (gateway/__main__.py's check)."""
    store = connect_async(store_url)
    revocations = RevocationList(store)

    async def deny_list(der: bytes) -> None:
        revocations.check_pem(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))

    g = Gateway(make_pki(tmp_path / "ca"), tmp_path, store_url, valid_seconds=3600, certificate_check=deny_list)
    await g.start()
    try:
        vehicle = f"AU-TRK-{new_id()[:8]}"
        files = _files(g, tmp_path, vehicle)
        known = await enrol(g.http_url, files, g.token(vehicle))  # the serial the operator saw
        renewed = await renew(g.device_url, files)  # the thief's, unknown to the operator
        assert renewed.serial_number != known.serial_number
        cutoff = await revoke_identity(store, f"spiffe://haulmesh.local/vehicle/{vehicle}", until=time.time() + 3600)
        await revocations.refresh()
        with pytest.raises(EnrolmentError) as caught:
            await renew(g.device_url, files)
        assert (caught.value.status, caught.value.reason) == (401, "CERTIFICATE_REVOKED")
        assert files.certificate().serial_number == renewed.serial_number  # nothing replaced
        again = await enrol(g.http_url, files, g.token(vehicle))  # at once: backdating would fall before the cut-off
        assert again.not_valid_before_utc.timestamp() > cutoff
        await revocations.refresh()
        revocations.check_pem(again.public_bytes(serialization.Encoding.PEM))
        after = await renew(g.device_url, files)  # and it renews into one dated after the cut-off too
        assert after.not_valid_before_utc.timestamp() > cutoff
    finally:
        await g.stop()
        await store.aclose()


async def test_a_flood_of_anonymous_enrolments_for_made_up_vehicles_is_bounded(tmp_path: Path,
                                                                             store_url: str) -> None:
    """Every attempt names another vehicle, so no per-vehicle budget ever fills: the one enrolment budget does, and
    before the body is read (the CSR here is garbage: refused 400 until the budget is spent, 429 after)."""
    g = Gateway(make_pki(tmp_path / "ca"), tmp_path, store_url, valid_seconds=600,
                rate_limit=parse_rate_limit("5/minute"))
    await g.start()
    try:
        answers = [await _post(f"{g.http_url}/api/v1/vehicles/AU-FLOOD-{new_id()[:8]}:enrol",
                               {"token": "hmenrol_" + "A" * 43, "csr": "x"}) for _ in range(12)]
    finally:
        await g.stop()
    refused = [i for i, (_, reason, _) in enumerate(answers) if reason == "RATE_LIMITED"]
    assert refused and refused[0] <= 5 and refused == list(range(refused[0], 12)), answers
    assert {answers[i][0] for i in refused} == {429}
    assert "5 per 1 minute shared by every enrolment attempt exceeded" in answers[refused[0]][2]
    assert {reason for _, reason, _ in answers[:refused[0]]} <= {"BAD_CSR"}


async def test_the_edge_command_enrols_and_says_why_it_cannot(gateway: Gateway, tmp_path: Path) -> None:
    files = _files(gateway, tmp_path, "AU-TRK-E9")
    token = gateway.token("AU-TRK-E9")

    async def edge(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_client", "--cert-dir", str(files.cert_dir), "enrol", "--vehicle", "AU-TRK-E9",
            "--gateway-url", gateway.http_url, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": REPO})
        out, err = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode, out.decode(), err.decode()

    code, out, _ = await edge("--token", token)
    assert code == 0
    assert json.loads(out)["serial"] == format(files.certificate().serial_number, "x")
    code, _, err = await edge("--token", token)
    assert code == 2 and "the truck is enrolled" in err
    code, _, err = await edge("--token", token, "--force")
    assert code == 1 and "ENROLMENT_TOKEN_USED" in err
