"""A small, fully valid set of evidence-pack inputs, built directly (CA, truck, frames, POD, invoice, audit)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from haulmesh.billing.v1 import invoice_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2
from haulmesh.type.v1 import charge_line_pb2, money_pb2
from services.runtime import metering, pki, signing_key_id
from services.runtime._audit import _GENESIS, AuditEntry, _entry_hash
from services.runtime.evidence import PackFrame, SealKey, telemetry_log_sha256

MISSION_ID = "01JEVIDENCEPACKTESTMISSION"
VEHICLE = "AU-TRK-1001"
#: When the inputs' trip happens: when they are made (make_inputs sets it again: the certificates it issues are
#: valid from a few minutes before then, and a whole test session may pass between this module's import and that).
T0 = int(time.time())


@dataclass
class Inputs:
    """Everything build_pack takes, plus the CA and truck keys a test may sign hostile data with."""

    ca: pki.CertificateAuthority
    truck: pki.IssuedCertificate
    mission: mission_pb2.Mission
    frames: list[PackFrame]
    vehicle_certificates: list[bytes]
    invoice: invoice_pb2.Invoice
    audit_entries: list[AuditEntry]
    seal: SealKey

    def kwargs(self) -> dict:
        return {"mission": self.mission, "frames": self.frames, "vehicle_certificates": self.vehicle_certificates,
                "invoice": self.invoice, "audit_entries": self.audit_entries, "seal": self.seal}


def key_id(issued: pki.IssuedCertificate) -> str:
    return signing_key_id(issued.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def sign_frame(issued: pki.IssuedCertificate, sequence: int, lat: float, lon: float, *,
               vehicle: str = VEHICLE, mission_id: str = MISSION_ID) -> PackFrame:
    payload = frame_pb2.FramePayload(vehicle_id=vehicle, sequence=sequence, boot_id="boot-1",
                                     kind=frame_pb2.FramePayload.KIND_POSITION, mission_id=mission_id,
                                     position=frame_pb2.Position(lat=lat, lon=lon, speed_kph=90))
    payload.device_time.FromSeconds(T0 + 15 * sequence)
    raw = payload.SerializeToString()
    return PackFrame(sequence, raw, issued.private_key.sign(raw, ec.ECDSA(hashes.SHA256())), key_id(issued),
                     datetime.fromtimestamp(T0 + 15 * sequence + 1, UTC).strftime("%Y-%m-%dT%H:%M:%S.123Z"))


def audit_chain(resources: list[str], chain: str = "audit:{billing-test}") -> list[AuditEntry]:
    entries, prev = [], _GENESIS
    for seq, resource in enumerate(resources, 1):
        record = {"time": T0 + 0.5 + seq, "actor": "spiffe://haulmesh.local/service/gateway",
                  "method": "/haulmesh.billing.v1.BillingService/ReconcileInvoice", "carrier": "carriers/acme",
                  "resource": resource, "outcome": "OK", "seq": seq, "prev": prev}
        digest = _entry_hash(prev, record)
        entries.append(AuditEntry(chain, f"{T0 * 1000 + seq}-0", json.dumps(record, sort_keys=True),
                                  digest))
        prev = digest
    return entries


def make_inputs(frame_count: int = 3) -> Inputs:
    global T0
    T0 = int(time.time())
    ca = pki.create_ca()
    truck = pki.issue(ca, pki.identity_for("vehicle", VEHICLE))
    sealer = pki.issue_signing(ca, pki.identity_for("service", "billing"))
    frames = [sign_frame(truck, s, 29.76 + 0.01 * s, -95.37 + 0.01 * s) for s in range(1, frame_count + 1)]
    manifest = mission_pb2.DeliveryManifest(
        mission_id=MISSION_ID, vehicle_id=VEHICLE, tms_load_id="LD-1",
        telemetry_log_sha256=telemetry_log_sha256([f.payload for f in frames]),
        telemetry_first_sequence=frames[0].sequence, telemetry_last_sequence=frames[-1].sequence)
    manifest.deliver_time.FromSeconds(T0 + 900)
    manifest_bytes = manifest.SerializeToString()
    mission = mission_pb2.Mission(name=f"missions/{MISSION_ID}", carrier="carriers/acme", tender="tenders/T1",
                                  quote="quotes/Q1", vehicle=f"vehicles/{VEHICLE}",
                                  state=mission_pb2.Mission.STATE_COMPLETED)
    mission.proof_of_delivery.manifest = manifest_bytes
    mission.proof_of_delivery.manifest_signature = truck.private_key.sign(manifest_bytes, ec.ECDSA(hashes.SHA256()))
    mission.proof_of_delivery.key_id = key_id(truck)
    mission.proof_of_delivery.manifest_details.CopyFrom(manifest)
    invoice = invoice_pb2.Invoice(name="invoices/I1", carrier="carriers/acme", mission=mission.name,
                                  tender="tenders/T1", invoice_number="HM-2026-000001")
    measured = metering.measure(metering.fixes_from_payloads(f.payload for f in frames), gap_seconds=120)
    invoice.usage.miles = measured.miles
    invoice.usage.hours = measured.hours
    amount = round(measured.miles * 285)
    invoice.lines.add(type=charge_line_pb2.CHARGE_TYPE_LINEHAUL, code="LINEHAUL",
                      quantity=measured.miles, amount=money_pb2.Money(currency_code="USD", amount_minor=amount))
    invoice.total.CopyFrom(money_pb2.Money(currency_code="USD", amount_minor=amount))
    invoice.usage.provenance.CopyFrom(invoice_pb2.UsageProvenance(
        mission=mission.name, vehicle=mission.vehicle, first_sequence=measured.first_sequence,
        last_sequence=measured.last_sequence, frame_count=measured.frames, gap_threshold_seconds=120,
        circuity_factor=metering.DEFAULT_CIRCUITY_FACTOR,
        source=invoice_pb2.UsageProvenance.SOURCE_POSITIONS,
        telemetry_log_sha256=telemetry_log_sha256([f.payload for f in frames])))
    audit = audit_chain(["tenders/T1", mission.name, "invoices/I1"])
    seal = SealKey.load(sealer.certificate_pem, sealer.private_key_pem, ca.certificate_pem)
    return Inputs(ca, truck, mission, frames, [truck.certificate_pem], invoice, audit, seal)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
