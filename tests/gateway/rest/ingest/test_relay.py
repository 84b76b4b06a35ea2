"""The telemetry side of the hand-over: what a gateway relays is checked as a truck's own handshake would be."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format

from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import (
    VEHICLE_CERTIFICATE_METADATA_KEY,
    Identity,
    IdentityError,
    Mesh,
    pki,
    verify_relayed_certificate,
)
from tests.conftest import rich_error

from .conftest import TruckClient


def _der(issued: pki.IssuedCertificate) -> bytes:
    return issued.certificate.public_bytes(serialization.Encoding.DER)


async def _ingest_as_gateway(mesh: Mesh, mesh_pki, body: dict, metadata: tuple) -> object:
    request = json_format.ParseDict(body, telemetry_service_pb2.IngestTelemetryRequest())
    async with grpc.aio.secure_channel(mesh.address("telemetry"), mesh_pki.credentials("service", "gateway")) as ch:
        return await telemetry_service_pb2_grpc.TelemetryServiceStub(ch).IngestTelemetry(
            request, metadata=metadata, timeout=10)


async def test_gateway_relays_a_trucks_signed_frame(mesh: Mesh, mesh_pki, truck: TruckClient) -> None:
    reply = await _ingest_as_gateway(mesh, mesh_pki, truck.sample(5),
                                     ((VEHICLE_CERTIFICATE_METADATA_KEY, _der(truck.issued)),))
    assert reply.outcome == telemetry_service_pb2.IngestTelemetryResponse.OUTCOME_STORED


@pytest.mark.parametrize("case", ["none", "other-ca", "other-vehicle", "forged-signature"])
async def test_gateway_cannot_forge(mesh: Mesh, mesh_pki, truck: TruckClient, client_for, case: str) -> None:
    body, certificate = truck.sample(9), _der(truck.issued)
    expected = ("PERMISSION_DENIED", "INVALID_PEER_IDENTITY")
    if case == "none":
        metadata: tuple = ()
        expected = ("PERMISSION_DENIED", "CLIENT_CERTIFICATE_REQUIRED")
    elif case == "other-ca":  # a certificate the gateway minted itself for the truck's id
        metadata = ((VEHICLE_CERTIFICATE_METADATA_KEY,
                     _der(pki.issue(pki.create_ca(), pki.identity_for("vehicle", truck.vehicle_id)))),)
    elif case == "other-vehicle":  # a real truck's certificate, used for another vehicle's frame
        other = client_for("vehicle", "AU-TRK-OTHER-ONE")
        metadata = ((VEHICLE_CERTIFICATE_METADATA_KEY, _der(other.issued)),)
        expected = ("PERMISSION_DENIED", "VEHICLE_MISMATCH")
    else:  # the right certificate, but a signature made with another key
        impostor = TruckClient(**{**client_for("vehicle", truck.vehicle_id).__dict__, "vehicle_id": truck.vehicle_id})
        body = impostor.sample(9)
        metadata = ((VEHICLE_CERTIFICATE_METADATA_KEY, certificate),)
        expected = ("INVALID_ARGUMENT", "BAD_SIGNATURE")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _ingest_as_gateway(mesh, mesh_pki, body, metadata)
    assert rich_error(refused.value)[:2] == expected


def test_verify_relayed_certificate(mesh_pki) -> None:
    ca_pem = mesh_pki.ca.certificate_pem
    issued = pki.issue(mesh_pki.ca, pki.identity_for("vehicle", "AU-TRK-1001"), valid_days=1)
    identity, pem = verify_relayed_certificate(_der(issued), ca_pem)
    assert identity == Identity("vehicle", "AU-TRK-1001") and pem == issued.certificate_pem
    assert verify_relayed_certificate(issued.certificate_pem, ca_pem)[0] == identity
    stranger = pki.issue(pki.create_ca(), pki.identity_for("vehicle", "AU-TRK-1001"), valid_days=1)
    with pytest.raises(IdentityError):
        verify_relayed_certificate(_der(stranger), ca_pem)
    two = pki.issue(mesh_pki.ca, [pki.identity_for("vehicle", "A"), pki.identity_for("vehicle", "B")], valid_days=1)
    with pytest.raises(IdentityError):
        verify_relayed_certificate(_der(two), ca_pem)
    with pytest.raises(IdentityError):
        verify_relayed_certificate(b"not a certificate", ca_pem)
    expired = _expired(mesh_pki.ca)
    with pytest.raises(IdentityError):
        verify_relayed_certificate(expired, ca_pem)


def _expired(ca: pki.CertificateAuthority) -> bytes:
    """A vehicle certificate of the mesh CA whose validity ended yesterday."""
    issued = pki.issue(ca, pki.identity_for("vehicle", "AU-TRK-OLD"), valid_days=1)
    cert = issued.certificate
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .public_key(cert.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
               .not_valid_after(dt.datetime.now(dt.UTC) - dt.timedelta(days=1)))
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder.sign(ca.private_key, cert.signature_hash_algorithm).public_bytes(serialization.Encoding.DER)
