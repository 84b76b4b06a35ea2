"""AT-14's attack matrix: every method of every service, generated from the services' descriptors, called with every
kind of bad credential (issue 12). Used by tests/runtime/test_at14_refusals.py against in-process servers carrying
each service's real policy (short) and against the real mesh's processes (full).

Attacks: no certificate, an expired one, one of another CA, one of a foreign trust domain, one with two URI SANs, a
revoked one (of an identity the method allows, so only the revocation refuses it), and a valid identity the method's
policy does not allow. Each call must be refused — TLS handshake failure (UNAVAILABLE, the server is otherwise up)
or UNAUTHENTICATED / PERMISSION_DENIED with the reason the runtime gives — and reach no handler.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from haulmesh.billing.v1 import billing_service_pb2, evidence_service_pb2, report_service_pb2
from haulmesh.gateway.v1 import webhook_service_pb2
from haulmesh.mission.v1 import mission_service_pb2
from haulmesh.telemetry.v1 import telemetry_service_pb2
from haulmesh.tender.v1 import facility_service_pb2, tender_service_pb2
from services.billing.evidence.server import POLICY as EVIDENCE_POLICY
from services.billing.reports.server import POLICY as REPORT_POLICY
from services.billing.server import POLICY as BILLING_POLICY
from services.edi.server import POLICY as EDI_POLICY
from services.gateway.webhooks.server import POLICY as GATEWAY_POLICY
from services.mission.server import POLICY as MISSION_POLICY
from services.runtime import Identity, Policy, pki, status_of
from services.telemetry.server import POLICY as TELEMETRY_POLICY
from services.tender.server import POLICY as TENDER_POLICY

#: What each mesh service serves over gRPC, with the policy its __main__ runs it with (the gateway's gRPC is its
#: webhook service). Health and reflection, which every server adds, are attacked too.
SERVED: dict[str, tuple[Policy, tuple[ServiceDescriptor, ...]]] = {
    "tender": (TENDER_POLICY, (tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"],
                               facility_service_pb2.DESCRIPTOR.services_by_name["FacilityService"])),
    "mission": (MISSION_POLICY, (mission_service_pb2.DESCRIPTOR.services_by_name["MissionService"],)),
    "telemetry": (TELEMETRY_POLICY, (telemetry_service_pb2.DESCRIPTOR.services_by_name["TelemetryService"],)),
    "billing": (BILLING_POLICY | REPORT_POLICY | EVIDENCE_POLICY,
                (billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"],
                 evidence_service_pb2.DESCRIPTOR.services_by_name["EvidenceService"],
                 report_service_pb2.DESCRIPTOR.services_by_name["ReportService"])),
    "gateway": (GATEWAY_POLICY, (webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"],)),
    # An optional service (a carrier's EDI partners): health and reflection only, attacked all the same.
    "edi": (EDI_POLICY, ()),
}

#: What the runtime adds to every server: health (open to every identity) and reflection (services and operators).
BUILTIN: tuple[ServiceDescriptor, ...] = (health_pb2.DESCRIPTOR.services_by_name["Health"],
                                          reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"])

#: Identities a method may or may not allow: one of each kind, every mesh service.
CANDIDATES = (Identity("vehicle", "AT14-TRK-1"), Identity("operator", "at14"),
              *(Identity("service", name) for name in ("gateway", "tender", "mission", "telemetry", "billing", "edi")))

ATTACKS = ("no-certificate", "expired", "other-ca", "foreign-trust-domain", "two-uri-sans", "revoked", "not-allowed")
#: The attacks the TLS handshake itself refuses (the call ends UNAVAILABLE, no HTTP/2 stream is ever opened).
HANDSHAKE_ATTACKS = frozenset({"no-certificate", "expired", "other-ca"})
EXPECTED = {"foreign-trust-domain": ("UNAUTHENTICATED", "INVALID_PEER_IDENTITY"),
            "two-uri-sans": ("UNAUTHENTICATED", "INVALID_PEER_IDENTITY"),
            "revoked": ("UNAUTHENTICATED", "CERTIFICATE_REVOKED"),
            "not-allowed": ("PERMISSION_DENIED", "METHOD_NOT_ALLOWED")}
CARRIER = (("haulmesh-carrier", "carriers/at14-carrier"),)


def methods(descriptors: tuple[ServiceDescriptor, ...]) -> list[tuple[str, MethodDescriptor]]:
    """``(/pkg.Service/Method, descriptor)`` of every method of ``descriptors``."""
    return [(f"/{service.full_name}/{method.name}", method) for service in descriptors for method in service.methods]


def leaf(ca: pki.CertificateAuthority, uris: list[str], *, not_before: dt.datetime,
         not_after: dt.datetime) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a client certificate the dev PKI would never issue: any URI SANs (a foreign
    trust domain) and any validity (expired)."""
    from cryptography.hazmat.primitives import serialization

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "at14")]))
            .issuer_name(ca.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                           critical=False)
            .sign(ca.private_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@dataclass
class Credentials:
    """Every attack's client credentials for one CA, made once; ``revoked_serials`` to put on the deny-list."""

    ca: pki.CertificateAuthority
    by_attack: dict[str, grpc.ChannelCredentials] = field(default_factory=dict)
    valid: dict[Identity, grpc.ChannelCredentials] = field(default_factory=dict)
    revoked: dict[Identity, grpc.ChannelCredentials] = field(default_factory=dict)
    revoked_certificates: list[x509.Certificate] = field(default_factory=list)

    @classmethod
    def make(cls, ca: pki.CertificateAuthority) -> Credentials:
        made = cls(ca)
        root = ca.certificate_pem
        now = dt.datetime.now(dt.UTC)

        def creds(cert_pem: bytes, key_pem: bytes) -> grpc.ChannelCredentials:
            return grpc.ssl_channel_credentials(root_certificates=root, private_key=key_pem,
                                                certificate_chain=cert_pem)

        def issued(identities: list[Identity], issuing: pki.CertificateAuthority = ca) -> pki.IssuedCertificate:
            return pki.issue(issuing, identities, valid_days=1)

        made.by_attack["no-certificate"] = grpc.ssl_channel_credentials(root_certificates=root)
        made.by_attack["expired"] = creds(*leaf(ca, [CANDIDATES[-1].spiffe_id], not_before=now - dt.timedelta(days=2),
                                                not_after=now - dt.timedelta(days=1)))
        other = issued([Identity("service", "gateway")], pki.create_ca("Somebody Else's CA"))
        made.by_attack["other-ca"] = creds(other.certificate_pem, other.private_key_pem)
        made.by_attack["foreign-trust-domain"] = creds(*leaf(ca, ["spiffe://evil.example/service/gateway"],
                                                             not_before=now - dt.timedelta(minutes=5),
                                                             not_after=now + dt.timedelta(days=1)))
        two = issued([Identity("service", "gateway"), Identity("operator", "at14")])
        made.by_attack["two-uri-sans"] = creds(two.certificate_pem, two.private_key_pem)
        for identity in CANDIDATES:
            good, bad = issued([identity]), issued([identity])
            made.valid[identity] = creds(good.certificate_pem, good.private_key_pem)
            made.revoked[identity] = creds(bad.certificate_pem, bad.private_key_pem)
            made.revoked_certificates.append(bad.certificate)
        return made

    def for_call(self, attack: str, policy: Policy, method: str) -> grpc.ChannelCredentials | None:
        """The credentials of ``attack`` on ``method``; None when no candidate identity is refused by the policy
        (a method open to every identity has no "not allowed" case)."""
        if attack == "revoked":  # an identity the method allows: nothing but the revocation refuses it
            allowed = [i for i in CANDIDATES if policy.allows(method, i)]
            return self.revoked[allowed[0] if allowed else CANDIDATES[0]]
        if attack == "not-allowed":
            refused = [i for i in CANDIDATES if not policy.allows(method, i)]
            return self.valid[refused[0]] if refused else None
        return self.by_attack[attack]

    def allowed(self, policy: Policy, method: str) -> grpc.ChannelCredentials | None:
        """Valid credentials of an identity ``method`` allows (the positive control), if any candidate is."""
        allowed = [i for i in CANDIDATES if policy.allows(method, i)]
        return self.valid[allowed[0]] if allowed else None


def _request_iterator(message: object) -> AsyncIterator[object]:
    async def one() -> AsyncIterator[object]:
        yield message

    return one()


async def call(channel: grpc.aio.Channel, path: str, method: MethodDescriptor, *,
               deadline_seconds: float = 10.0, refused: bool = False) -> str:
    """Call ``path`` once with an empty request (one message for a client stream); returns "OK" or the error's
    ``CODE REASON`` (REASON from the google.rpc.Status ErrorInfo, empty when there is none).

    ``refused``: the call is expected to be refused, and a client stream then sends no message. A refusal comes
    when the call opens, before any message is read, and grpcio's asyncio client reports a write that fails
    because the server already ended the call as ``INTERNAL`` in place of the server's status (grpc/grpc#36066,
    fix open as grpc/grpc#43486): writing would race the refusal. A call wrongly let through still shows: its
    handler waits for a message until the deadline (DEADLINE_EXCEEDED) and counts an invocation."""
    request = GetMessageClass(method.input_type)()
    serialize, deserialize = (lambda m: m.SerializeToString()), (lambda b: b)
    requests = None if refused else _request_iterator(request)
    try:
        if method.client_streaming and method.server_streaming:
            stream = channel.stream_stream(path, serialize, deserialize)(requests, metadata=CARRIER,
                                                                         timeout=deadline_seconds)
            async for _ in stream:
                pass
        elif method.server_streaming:
            async for _ in channel.unary_stream(path, serialize, deserialize)(request, metadata=CARRIER,
                                                                                timeout=deadline_seconds):
                pass
        elif method.client_streaming:
            await channel.stream_unary(path, serialize, deserialize)(requests, metadata=CARRIER,
                                                                     timeout=deadline_seconds)
        else:
            await channel.unary_unary(path, serialize, deserialize)(request, metadata=CARRIER,
                                                                    timeout=deadline_seconds)
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name} {reason_of(error)}".strip()
    return "OK"


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = status_of(error)
    if status is None:
        return ""
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Unpack(info):
            return info.reason
    return ""


def refused_as_expected(attack: str, outcome: str) -> bool:
    """Whether ``outcome`` (from :func:`call`) is the refusal ``attack`` must get."""
    if attack in HANDSHAKE_ATTACKS:
        return outcome.split()[0] == "UNAVAILABLE"
    return outcome == " ".join(EXPECTED[attack])
