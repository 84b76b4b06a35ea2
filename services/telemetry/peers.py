"""Who is behind a truck's call: the signing key of the vehicle's certificate, its own (mTLS) or relayed by the
gateway for a truck's REST ingest, checked as a handshake would check it."""

from __future__ import annotations

import functools

import grpc

from services.runtime import (
    VEHICLE_CERTIFICATE_METADATA_KEY,
    CertificateFiles,
    Identity,
    IdentityError,
    PermissionDenied,
    RevocationList,
    TlsConfig,
    verify_relayed_certificate,
)

from .domain import VehicleKey, vehicle_key

__all__ = ["peer_key"]

@functools.cache
def _mesh_trust() -> CertificateFiles:
    # The files this process's own handshakes use (the same environment ServiceConfig reads), re-read when they
    # change, so a relayed certificate is trusted exactly when the truck's own handshake would be.
    return CertificateFiles(TlsConfig.for_workload("telemetry"))


def peer_key(context: grpc.aio.ServicerContext, relayed_for: str | None = None,
              revocations: RevocationList | None = None) -> VehicleKey:
    """The signing key of the truck behind the call: its own client certificate, or, when the gateway calls on
    behalf of vehicle ``relayed_for``, the certificate the gateway relayed, checked as a handshake would check
    it (mesh CA, validity, one SPIFFE ID), against the deny-list, and required to be that vehicle's. The gateway
    can relay, not forge, and cannot relay a revoked truck's call either."""
    if relayed_for is None:
        certs = context.auth_context().get("x509_pem_cert")
        if not certs:  # the interceptor already demanded a certificate; this is belt and braces
            raise PermissionDenied("a vehicle client certificate is required", reason="CLIENT_CERTIFICATE_REQUIRED")
        pem = certs[0]
    else:
        relayed = [v for k, v in context.invocation_metadata() or () if k == VEHICLE_CERTIFICATE_METADATA_KEY]
        if len(relayed) != 1:
            raise PermissionDenied(f"a call on a truck's behalf must relay exactly one vehicle certificate in "
                                   f"{VEHICLE_CERTIFICATE_METADATA_KEY}", reason="CLIENT_CERTIFICATE_REQUIRED")
        trust = _mesh_trust()
        trust.refresh()
        try:
            identity, pem = verify_relayed_certificate(relayed[0], trust.current.ca_pem)
        except IdentityError as exc:
            raise PermissionDenied(str(exc), reason="INVALID_PEER_IDENTITY") from None
        if revocations is not None:  # the interceptor checked the gateway's own certificate, not this one
            revocations.check_pem(pem)
        if identity != Identity("vehicle", relayed_for):
            raise PermissionDenied(f"vehicle_id {relayed_for[:80]!r} is not the relayed certificate's {identity}",
                                   reason="VEHICLE_MISMATCH")
    try:
        return vehicle_key(pem)
    except ValueError as exc:
        raise PermissionDenied(f"vehicle certificate unusable for frame signatures: {exc}",
                               reason="UNSUPPORTED_KEY") from None
