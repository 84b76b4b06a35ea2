"""Truck enrolment and certificate renewal (docs/security.md, "Enrolment and renewal").

* ``POST /api/v1/vehicles/{vehicle}:enrol`` on the TMS's listener (server-auth TLS at the ingress; no client
  certificate: the truck has none yet), body ``{"token": "...", "csr": "-----BEGIN CERTIFICATE REQUEST-----..."}``.
  The one-time token (``haulmesh pki enrol-token``) authenticates the call; it is bound to the vehicle of the path.
* ``POST /api/v1/vehicles/{vehicle}:renewCertificate`` on the device listener (mTLS: the truck's current, valid
  certificate is the credential), body ``{"csr": "..."}``; the path's vehicle must be the certificate's.

Both answer ``{"certificate": PEM, "caCertificates": PEM, "serialNumber": hex, "expireTime": RFC 3339}``. Order of
checks: signer configured (503) → body size (413) → JSON and fields (400) → identity (token or certificate: 401 /
403) → CSR (400: it must name exactly that vehicle, ECDSA P-256, self-signature valid); enrolment, anonymous, first
spends one attempt of a budget shared by every enrolment (429). On enrolment the CSR is
checked before the token is spent, so a truck whose CSR is wrong keeps its token. Neither route is transcoded from
a proto: they are the gateway's own, and not in the published OpenAPI document of either listener.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.runtime import AuditLog, HaulmeshError, Identity, InvalidArgument, pki, revocation_cutoff
from services.runtime.enrolment import VehicleSigner, consume_token

from .device import DeviceGateway
from .errors import RestError, error_response
from .ratelimit import TenantRateLimiter
from .transcode import parse_json_body

__all__ = ["ANONYMOUS_ENROLMENT_BUDGET", "ENROL_PATH", "MAX_ENROL_BODY_BYTES", "RENEW_PATH", "Enrolment"]

_log = logging.getLogger("haulmesh.gateway.enrol")

ENROL_PATH = "/api/v1/vehicles/{vehicle}:enrol"
RENEW_PATH = "/api/v1/vehicles/{vehicle}:renewCertificate"
#: A token and a P-256 CSR in JSON are under 1 KiB; 16 KiB leaves room and bounds what an anonymous caller sends.
MAX_ENROL_BODY_BYTES = 16 * 1024
_VEHICLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
#: The rate limiter's key of every enrolment attempt (HAULMESH_RATE_LIMIT, shared by the gateway's replicas; a ':'
#: no carrier id or vehicle key has). Trucks enrol once, at a depot: a fleet never comes near it, a flood hits it.
ANONYMOUS_ENROLMENT_BUDGET = "enrol:anonymous"


@dataclass(frozen=True)
class Enrolment:
    """The two routes. ``signer`` None: enrolment is not configured on this gateway (both answer 503).
    ``certificate_check`` is awaited with the DER certificate a renewal presents, before anything is signed, and
    raises (a HaulmeshError) to refuse it: the place for the revocation deny-list (a renewal gives a new serial, so a
    revoked certificate must never renew)."""

    signer: VehicleSigner | None
    store: Callable[[], redis.asyncio.Redis]
    limiter: TenantRateLimiter
    audit: AuditLog | None = None
    durable: Callable[[], Awaitable[None]] | None = None
    certificate_check: Callable[[bytes], Awaitable[None]] | None = None

    def enrol_routes(self) -> list[Route]:
        """For the TMS's listener (no client certificate)."""
        return [Route(ENROL_PATH, self._answer(self._enrol), methods=["POST"])]

    def renew_routes(self) -> list[Route]:
        """For the device listener (the truck's client certificate)."""
        return [Route(RENEW_PATH, self._answer(self._renew), methods=["POST"])]

    @staticmethod
    def _answer(handler: Callable[[Request], Awaitable[dict[str, str]]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(await handler(request))
            except HaulmeshError as exc:
                return error_response(exc)
        return endpoint

    def _signer_or_503(self) -> VehicleSigner:
        if self.signer is None:
            raise RestError("UNAVAILABLE", "this gateway does not enrol or renew vehicles: no signing key is "
                            "configured (HAULMESH_GATEWAY_ENROLMENT_CA_KEY_FILE)", reason="ENROLMENT_NOT_CONFIGURED")
        return self.signer

    async def _enrol(self, request: Request) -> dict[str, str]:
        signer = self._signer_or_503()
        # Anonymous: the caller names any vehicle it likes, so the per-vehicle budget alone would not bound a flood.
        # One budget for every enrolment attempt, spent before the body is read or a CSR's signature checked.
        await self.limiter.check(ANONYMOUS_ENROLMENT_BUDGET, budget="shared by every enrolment attempt")
        vehicle = _path_vehicle(request)
        body = await _read_body(request, {"token", "csr"})
        pki.check_vehicle_csr(body["csr"].encode(), vehicle.name)  # before the token is spent
        # Per vehicle, the same budget as the truck's other calls: a script retrying in a loop cannot hammer the store.
        await self.limiter.check(f"vehicle/{vehicle.name}", budget="per vehicle")
        await consume_token(self.store(), body["token"], vehicle.name)
        return await self._issue(signer, vehicle, body["csr"], action="enrol", presented="token")

    async def _renew(self, request: Request) -> dict[str, str]:
        signer = self._signer_or_503()
        vehicle, der = DeviceGateway.certificate_identity(request)
        if _path_vehicle(request) != vehicle:
            raise RestError("PERMISSION_DENIED", f"the client certificate is {vehicle}; a truck renews only its own "
                            "certificate", reason="VEHICLE_MISMATCH")
        if self.certificate_check is not None:
            await self.certificate_check(der)
        await self.limiter.check(f"vehicle/{vehicle.name}", budget="per vehicle")
        body = await _read_body(request, {"csr"})
        presented = format(x509.load_der_x509_certificate(der).serial_number, "x")
        return await self._issue(signer, vehicle, body["csr"], action="renewCertificate", presented=presented)

    async def _issue(self, signer: VehicleSigner, vehicle: Identity, csr: str, *, action: str,
                     presented: str) -> dict[str, str]:
        # A vehicle revoked by identity is refused for every certificate dated up to the cut-off: a new one (the
        # enrolment after the revocation, or a renewal of that) is dated after it, read from the store, not a cache.
        revoked_until = await revocation_cutoff(self.store(), vehicle.spiffe_id)
        if revoked_until is not None:
            # X.509 dates have whole seconds: dated after the cut-off is dated its next second. Within that second of
            # a revocation, wait for it, so the certificate is valid the moment the truck has it.
            await asyncio.sleep(min(1.0, max(0.0, math.floor(revoked_until) + 1 - time.time())))
        certificate = signer.sign(csr.encode(), vehicle, revoked_until=revoked_until)
        serial = format(certificate.serial_number, "x")
        _log.info("vehicle %s %s: presented %s, issued serial %s until %s", vehicle.name, action, presented, serial,
                  certificate.not_valid_after_utc.isoformat(timespec="seconds"))
        if self.audit is not None:
            await self.audit.append(actor=vehicle.spiffe_id, method=f"POST /api/v1/vehicles/{{vehicle}}:{action}",
                                     resource=f"vehicles/{vehicle.name}/certificates/{serial}")
            if self.durable is not None:
                await self.durable()
        return {
            "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
            "caCertificates": signer.ca_pem.decode(),
            "serialNumber": serial,
            "expireTime": certificate.not_valid_after_utc.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }


def _path_vehicle(request: Request) -> Identity:
    name = request.path_params["vehicle"]
    if not _VEHICLE.fullmatch(name):
        raise InvalidArgument(f"vehicle id {name[:80]!r} must be 1-63 letters, digits, '.', '_' or '-'",
                              reason="INVALID_VEHICLE_ID")
    return Identity("vehicle", name)


async def _read_body(request: Request, fields: set[str]) -> dict[str, str]:
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_ENROL_BODY_BYTES:
            raise RestError("RESOURCE_EXHAUSTED", f"the request body exceeds {MAX_ENROL_BODY_BYTES} bytes",
                            reason="REQUEST_TOO_LARGE", metadata={"max_bytes": str(MAX_ENROL_BODY_BYTES)},
                            http_status=413)
        chunks.append(chunk)
    body: Any = parse_json_body(b"".join(chunks))
    if not isinstance(body, dict):
        raise InvalidArgument(f"the body must be a JSON object with {', '.join(sorted(fields))}",
                              reason="INVALID_BODY")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise InvalidArgument(f"unknown field {unknown[0]!r}; expected {', '.join(sorted(fields))}",
                              reason="INVALID_BODY")
    for field in sorted(fields):
        if not isinstance(body.get(field), str) or not body[field]:
            raise InvalidArgument(f"field {field!r} is required, a non-empty string", reason="INVALID_BODY")
    return body
