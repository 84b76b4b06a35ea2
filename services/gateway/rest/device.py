"""The trucks' door: HTTPS with a required client certificate from the mesh CA, serving the vehicle routes only.

The vehicle routes are the http-annotated methods whose proto comment names no OAuth2 scope but says they are
called with an "mTLS client certificate (no bearer token)" (today ``POST /api/v1/telemetry/ingest``). Order of
checks: TLS handshake (no certificate, or one of another CA, never gets an HTTP request in) → route (404 / 405)
→ declared size (413) → the certificate's identity must be ``vehicle/<id>`` (403) and not revoked (401
``CERTIFICATE_REVOKED``, the process's deny-list: docs/security.md, "Revocation") → the vehicle's rate limit
(429) → body size while reading (413) → JSON (400) → the gRPC call over the gateway's own mTLS channel, with
the truck's certificate relayed in ``haulmesh-vehicle-certificate-bin``. The owning service checks that
certificate against the mesh CA again and uses its key to verify the truck's signatures: the gateway can
relay a truck's frames, never forge one.

uvicorn does not put the client certificate in the ASGI scope, so this listener runs a small subclass of its
h11 protocol that fills the ASGI TLS extension (``scope["extensions"]["tls"]``, spec 0.2) from the
connection's ``ssl_object`` once per connection; the handler reads only that standard key (docs/gateway.md).
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.runtime import (
    VEHICLE_CERTIFICATE_METADATA_KEY,
    CertificateFiles,
    HaulmeshError,
    Identity,
    IdentityError,
    RevocationList,
    TlsConfig,
    identity_from_pem,
)

from ..config import DEFAULT_DEVICE_MAX_INFLIGHT_REQUESTS
from .descriptors import Api
from .errors import RestError
from .handler import RestGateway
from .transcode import build_request

__all__ = ["DeviceGateway", "TlsScopeProtocol", "device_api", "device_ssl_context"]

_log = logging.getLogger("haulmesh.gateway.device")

# ASGI TLS extension: tls_version is the TLS protocol's own number.
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

Scope = MutableMapping[str, Any]
Asgi = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def device_api(api: Api) -> Api:
    """The part of the API served to trucks: the methods that name no bearer scope."""
    return dataclasses.replace(api, methods=[m for m in api.methods if m.scope is None])


class TlsScopeProtocol(H11Protocol):
    """uvicorn's h11 protocol that fills the ASGI TLS extension of every request on a TLS connection.

    asyncio calls ``connection_made`` after the handshake, so the peer certificate is known here; the
    extension is built once per connection and reused by every request on it (keep-alive).
    """

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:  # the spec: no entry on an unencrypted connection
            return
        der = ssl_object.getpeercert(binary_form=True)
        tls = {
            "server_cert": None,  # CPython's ssl cannot read back the server's own certificate
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": None,
            "client_cert_error": None,  # a failed verification ends the handshake, so never reaches here
            "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
            "cipher_suite": None,
        }
        app: Asgi = self.app

        async def with_tls(scope: Scope, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await app(scope, receive, send)

        self.app = with_tls


def device_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """Server TLS 1.3 context: the gateway's certificate, client certificates required and issued by the CA.

    Certificate files are re-read when they change, as the gRPC servers do: the SNI callback (which OpenSSL
    calls on every ClientHello, with or without SNI) loads a changed pair into the context, so the next
    handshake presents it; a half-replaced pair is ignored until it is whole.
    """
    files = CertificateFiles(tls)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(tls.cert_file, tls.key_file)
    context.load_verify_locations(cadata=files.current.ca_pem.decode())

    def refresh(_: ssl.SSLObject, __: str | None, ctx: ssl.SSLContext) -> None:
        material = files.refresh()
        if material is None:
            return
        try:
            ctx.load_verify_locations(cadata=material.ca_pem.decode())
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:  # replaced again while loading: the next handshake retries
            _log.warning("device listener keeps its current certificate: %s", exc)

    context.sni_callback = refresh
    return context


@dataclasses.dataclass
class DeviceGateway(RestGateway):
    """The generic handler of :class:`RestGateway` for trucks: the client certificate replaces the token.

    ``api`` is the device part of the API (:func:`device_api`); ``authenticator`` is not consulted (no
    bearer tokens here); ``limiter`` counts per vehicle, with the same budget and store as per carrier.
    """

    not_found_hint = " among the vehicle routes (the TMS's API is on the bearer-token listener)"
    serves_devices = True
    #: Requests handled at once by this process (HAULMESH_GATEWAY_DEVICE_MAX_INFLIGHT_REQUESTS); beyond, 503 with
    #: Retry-After. Each holds at most one body (``max_request_bytes``) and one relayed call: the memory bound.
    max_inflight_requests: int = DEFAULT_DEVICE_MAX_INFLIGHT_REQUESTS
    inflight: int = dataclasses.field(default=0, init=False)
    #: The gateway process's certificate deny-list (its Service's); None only in tests of the door alone.
    revocations: RevocationList | None = None

    async def _handle(self, request: Request) -> Response:
        if self.inflight >= self.max_inflight_requests:
            # Refused before the body is read: a burst of trucks cannot make the gateway hold their bodies.
            raise RestError("UNAVAILABLE", f"the gateway is handling {self.max_inflight_requests} truck requests; "
                            "retry shortly", reason="GATEWAY_BUSY", metadata={"retry_after_seconds": "1"},
                            headers={"Retry-After": "1"})
        self.inflight += 1
        try:
            return await self._relay(request)
        finally:
            self.inflight -= 1

    async def _relay(self, request: Request) -> Response:
        route, path_vars = self._match(request)
        vehicle, der = self._vehicle(request)
        self._refuse_revoked(request, vehicle)
        # "vehicle/<id>" cannot collide with a carrier's key: carrier ids have no "/".
        await self.limiter.check(f"vehicle/{vehicle.name}", budget="per vehicle")
        body = await self._read_json(request)
        message = build_request(self.api, route, path_vars, body, list(request.query_params.multi_items()))
        return await self._call_unary(route, message, ((VEHICLE_CERTIFICATE_METADATA_KEY, der),))

    def _refuse_revoked(self, request: Request, vehicle: Identity) -> None:
        """401 CERTIFICATE_REVOKED for a truck whose certificate is on the deny-list (telemetry checks the relayed
        certificate again: this answers before the rate limit and the body are spent on it)."""
        if self.revocations is None:
            return
        chain = request.scope["extensions"]["tls"]["client_cert_chain"]
        try:
            self.revocations.check_pem(chain[0].encode())
        except HaulmeshError as exc:  # UNAUTHENTICATED CERTIFICATE_REVOKED
            _log.warning("refused revoked certificate of %s", vehicle)
            raise RestError("UNAUTHENTICATED", exc.message, reason=exc.reason, metadata=exc.metadata) from None

    @staticmethod
    def certificate_identity(request: Request) -> tuple[Identity, bytes]:
        """The truck's identity and DER certificate (the enrolment module's renewal route uses it too)."""
        return DeviceGateway._vehicle(request)

    @staticmethod
    def _vehicle(request: Request) -> tuple[Identity, bytes]:
        """The truck's identity and DER certificate; 403 for any certificate that is not a vehicle's."""
        chain = request.scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
        if not chain:  # the handshake requires one; only a listener misconfigured without TLS gets here
            raise RestError("UNAUTHENTICATED", "a vehicle client certificate is required",
                            reason="CLIENT_CERTIFICATE_REQUIRED")
        try:
            identity = identity_from_pem(chain[0].encode())
        except IdentityError as exc:
            raise RestError("PERMISSION_DENIED", str(exc), reason="INVALID_PEER_IDENTITY") from None
        if identity.kind != "vehicle":
            raise RestError("PERMISSION_DENIED", f"{identity} is not a vehicle; this listener serves trucks only",
                            reason="VEHICLE_CERTIFICATE_REQUIRED")
        return identity, ssl.PEM_cert_to_DER_cert(chain[0])
