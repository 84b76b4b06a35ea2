"""Evidence packs (runtime.evidence): built from direct inputs, verified offline, and every tampering caught."""

from __future__ import annotations

import json
import ssl
import struct
import zlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.runtime import pki
from services.runtime._audit import AuditEntry, verify_entries
from services.runtime.evidence import _unzip, _zip, build_pack, verify_pack

from .evidence_inputs import VEHICLE, audit_chain, make_inputs, sign_frame


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


@pytest.fixture(scope="module")
def pack(inputs) -> bytes:
    return build_pack(**inputs.kwargs())


def _verify(data: bytes, inputs) -> object:
    return verify_pack(data, trusted_ca_pem=inputs.ca.certificate_pem)


def _repack(pack: bytes, change) -> bytes:
    """The pack's members passed through ``change`` and zipped canonically again (the seal left as it was)."""
    return _zip(change(_unzip(pack)))


def test_a_pack_verifies_offline_and_names_every_check(pack, inputs) -> None:
    result = _verify(pack, inputs)
    assert result.ok, result.report()
    assert [c.name for c in result.passed] == ["container", "seal", "manifest", "canonical", "mission",
                                               "vehicle certificates", "frames", "proof of delivery", "invoice",
                                               "audit", "validity"]
    assert result.facts["frames"] == 3 and result.facts["pod_verified"] is True
    assert "VERIFIED" in result.report()
    # Without a pinned CA the pack's own CA is used, and the report says it was not pinned.
    unpinned = verify_pack(pack)
    assert unpinned.ok and "not pinned" in unpinned.report()
    # ... and is never VERIFIED: anyone can make a CA that every check passes against.
    assert result.verified and not unpinned.verified
    assert unpinned.report().endswith("NOT VERIFIED: CA not pinned (every check passed against the pack's own CA, "
                                      "which anyone can make; pass --ca with the mesh CA)")


def test_same_inputs_same_bytes(inputs, pack) -> None:
    assert build_pack(**inputs.kwargs()) == pack
    # The frames' order in the input does not matter: the pack sorts them.
    shuffled = dict(inputs.kwargs(), frames=list(reversed(inputs.frames)))
    assert build_pack(**shuffled) == pack


def test_every_single_byte_flip_fails(pack, inputs) -> None:
    """Exhaustive: each offset of the small pack, xor 0x01 and xor 0xff; each names the first failure."""
    for offset in range(len(pack)):
        for mask in (0x01, 0xFF):
            flipped = bytearray(pack)
            flipped[offset] ^= mask
            result = _verify(bytes(flipped), inputs)
            assert not result.ok, f"flip at {offset} ^ {mask:#x} passed"
            assert result.failure is not None and result.failure.detail


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_change_of_one_byte_fails(pack, inputs, data) -> None:
    offset = data.draw(st.integers(0, len(pack) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != pack[offset]))
    changed = pack[:offset] + bytes([value]) + pack[offset + 1:]
    assert not _verify(changed, inputs).ok


def _with_negative_serial(pem: bytes) -> bytes:
    """``pem`` with its serial's sign bit set: what a one-bit flip of a random serial can make."""
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    # DER's two's complement: a positive serial whose top bit is set carries a leading 0x00 (random serials do,
    # half the time). A first content byte of 0x80 makes it negative either way, length unchanged, and stays a
    # minimal encoding (0xFF before a byte with its top bit set would not be: a parse error, not the warning).
    serial = cert.serial_number.to_bytes(cert.serial_number.bit_length() // 8 + 1, "big")
    tag = b"\x02" + bytes([len(serial)]) + serial
    assert serial[0] < 0x80 and der.count(tag) == 1
    at = der.index(tag) + 2
    der = der[:at] + b"\x80" + der[at + 1:]
    return ssl.DER_cert_to_PEM_cert(der).encode()


def test_a_certificate_cryptography_only_warns_about_is_refused(pack, inputs) -> None:
    """A non-positive serial parses with a deprecation warning; the verifier names it instead of passing it on."""
    for path, check in (("certs/ca.pem", "seal"), ("certs/evidence.pem", "seal")):
        changed = _repack(pack, lambda ms, path=path: [(n, _with_negative_serial(d) if n == path else d)
                                                       for n, d in ms])
        result = _verify(changed, inputs)
        assert result.failure.name == check, result.report()
        assert f"{path} is not an RFC 5280 certificate" in result.failure.detail
        assert "serial" in result.failure.detail


def test_truncated_or_extended_files_fail(pack, inputs) -> None:
    for cut in (1, 22, len(pack) // 2, len(pack) - 1):
        assert not _verify(pack[:cut], inputs).ok
    assert _verify(pack + b"\0", inputs).failure.name == "container"
    assert not _verify(b"junk" + pack, inputs).ok


def test_a_removed_member_fails(pack, inputs) -> None:
    result = _verify(_repack(pack, lambda ms: [m for m in ms if m[0] != "invoice.json"]), inputs)
    assert result.failure.name == "manifest" and "missing" in result.failure.detail


def test_an_added_member_fails(pack, inputs) -> None:
    result = _verify(_repack(pack, lambda ms: [*ms[:1], ("extra.txt", b"hello"), *ms[1:]]), inputs)
    assert result.failure.name == "manifest" and "extra.txt" in result.failure.detail


def test_a_renamed_member_fails(pack, inputs) -> None:
    renamed = _repack(pack, lambda ms: [("invoice2.json" if n == "invoice.json" else n, d) for n, d in ms])
    assert _verify(renamed, inputs).failure.name == "manifest"


def test_reordered_members_fail(pack, inputs) -> None:
    swapped = _repack(pack, lambda ms: [ms[1], ms[0], *ms[2:]])
    assert _verify(swapped, inputs).failure.name == "manifest"


def test_a_path_escaping_the_folder_fails(pack, inputs) -> None:
    hostile = _repack(pack, lambda ms: [("../evil", b"x"), *ms])
    result = _verify(hostile, inputs)
    assert result.failure.name == "container" and "not allowed" in result.failure.detail


def test_metadata_changes_with_a_consistent_crc_still_fail(pack, inputs) -> None:
    """A member's time changed in both its local header and the central directory: only the canonical rebuild
    sees it (the members and the seal are untouched)."""
    data = bytearray(pack)
    for signature, time_at in ((b"PK\x03\x04", 10), (b"PK\x01\x02", 12)):
        at = data.find(signature)
        struct.pack_into("<H", data, at + time_at, 0x6000)
    result = _verify(bytes(data), inputs)
    assert result.failure.name == "container" and "canonical" in result.failure.detail
    assert [c.name for c in result.passed] == ["container", "seal", "manifest"]


def test_a_frame_signed_by_another_trucks_key_fails(inputs) -> None:
    other = pki.issue(inputs.ca, pki.identity_for("vehicle", "AU-TRK-2002"))
    # Another truck signing this truck's frame (its payload names our vehicle): the key is not ours.
    forged = sign_frame(other, 2, 29.78, -95.35)
    frames = [inputs.frames[0], forged, inputs.frames[2]]
    result = _verify(build_pack(**dict(inputs.kwargs(), frames=frames)), inputs)
    assert result.failure.name == "frames" and "not a certificate of vehicle/" in result.failure.detail
    # ... even when the pack carries the other truck's certificate too.
    result = _verify(build_pack(**dict(inputs.kwargs(), frames=frames,
                                       vehicle_certificates=[inputs.truck.certificate_pem, other.certificate_pem])),
                     inputs)
    assert result.failure.name == "vehicle certificates" and "AU-TRK-2002" in result.failure.detail


def test_a_frame_with_a_forged_signature_fails(inputs) -> None:
    bad = inputs.frames[1]
    bad = type(bad)(bad.sequence, bad.payload, inputs.frames[0].signature, bad.key_id, bad.receive_time)
    result = _verify(build_pack(**dict(inputs.kwargs(), frames=[inputs.frames[0], bad, inputs.frames[2]])), inputs)
    assert result.failure.name == "frames" and "frame 2" in result.failure.detail


def test_a_missing_frame_breaks_the_pod_hash(inputs) -> None:
    result = _verify(build_pack(**dict(inputs.kwargs(), frames=[inputs.frames[0], inputs.frames[2]])), inputs)
    assert result.failure.name == "proof of delivery"


def test_a_frame_of_another_mission_fails(inputs) -> None:
    stray = sign_frame(inputs.truck, 4, 29.8, -95.3, mission_id="OTHER")
    result = _verify(build_pack(**dict(inputs.kwargs(), frames=[*inputs.frames, stray])), inputs)
    assert result.failure.name == "frames" and "frame 4" in result.failure.detail


def test_an_invoice_of_another_mission_fails(inputs) -> None:
    invoice = type(inputs.invoice)()
    invoice.CopyFrom(inputs.invoice)
    invoice.mission = "missions/OTHER"
    assert _verify(build_pack(**dict(inputs.kwargs(), invoice=invoice)), inputs).failure.name == "invoice"


def test_invoiced_miles_must_follow_from_the_frames(inputs) -> None:
    assert "mi measured from frames 1..3" in _verify(build_pack(**inputs.kwargs()), inputs).passed[8].detail
    invoice = type(inputs.invoice)()
    invoice.CopyFrom(inputs.invoice)
    invoice.usage.miles += 10
    result = _verify(build_pack(**dict(inputs.kwargs(), invoice=invoice)), inputs)
    assert result.failure.name == "invoice" and "the frames measure" in result.failure.detail
    invoice.CopyFrom(inputs.invoice)
    invoice.usage.provenance.last_sequence = 2
    assert "provenance says" in _verify(build_pack(**dict(inputs.kwargs(), invoice=invoice)), inputs).failure.detail


def test_an_edited_audit_entry_fails(inputs) -> None:
    entries = list(inputs.audit_entries)
    entries[1] = type(entries[1])(entries[1].chain, entries[1].entry_id,
                                  entries[1].record.replace('"OK"', '"DENIED"'), entries[1].hash)
    result = _verify(build_pack(**dict(inputs.kwargs(), audit_entries=entries)), inputs)
    assert result.failure.name == "audit" and "edited" in result.failure.detail


def test_another_ca_fails_the_seal(pack, inputs) -> None:
    result = verify_pack(pack, trusted_ca_pem=pki.create_ca().certificate_pem)
    assert result.failure.name == "seal" and "pinned" in result.failure.detail


def test_a_seal_by_a_tls_certificate_fails(inputs) -> None:
    """The evidence key must be signing-only: a service's TLS certificate cannot seal."""
    tls = pki.issue(inputs.ca, pki.identity_for("service", "billing"))
    seal = type(inputs.seal).load(tls.certificate_pem, tls.private_key_pem, inputs.ca.certificate_pem)
    result = _verify(build_pack(**dict(inputs.kwargs(), seal=seal)), inputs)
    assert result.failure.name == "seal" and "signing-only" in result.failure.detail


def test_the_evidence_certificate_is_signing_only(inputs) -> None:
    cert = x509.load_pem_x509_certificate(inputs.seal.certificate_pem)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_agreement and not usage.key_cert_sign
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [pki.DOCUMENT_SIGNING]


def test_the_container_is_a_plain_zip(pack) -> None:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(pack)) as archive:
        assert archive.testzip() is None
        assert archive.namelist()[-1] == "seal.dsse.json"
        assert all(zlib.crc32(archive.read(i)) == i.CRC for i in archive.infolist())
        assert archive.read("certs/vehicles/" + inputs_key(archive)).startswith(b"-----BEGIN CERTIFICATE")


def inputs_key(archive) -> str:
    return next(n for n in archive.namelist() if n.startswith("certs/vehicles/")).rsplit("/", 1)[1]


# --- the audit excerpt check ---------------------------------------------------------------------------------

def test_audit_excerpts_with_gaps_verify_but_broken_links_do_not() -> None:
    chain = audit_chain([f"missions/M{i}" for i in range(6)])
    assert verify_entries(chain) == []
    assert verify_entries([chain[0], chain[3], chain[4]]) == []  # a gap is not a break
    swapped = [chain[0], chain[2], chain[1]]
    assert any("reordered" in p for p in verify_entries(swapped))
    other = audit_chain(["x", "y"], chain="audit:{other}")
    relinked = [chain[0], type(other[1])(chain[0].chain, "9-0", other[1].record, other[1].hash)]
    assert any("link broken" in p for p in verify_entries(relinked))


def test_vehicle_constant_matches_the_truck(inputs) -> None:
    assert inputs.mission.vehicle == f"vehicles/{VEHICLE}"


async def test_audit_entries_touching_a_mission_are_only_those_never_another_carriers(client) -> None:
    """On a real store: two writers' chains interleaving two carriers' calls. Only the entries naming the mission or
    invoice leave the store, not the other carrier's records between them; each verifies on its own (hash over its
    prev and content) and adjacent ones by their link; another carrier's call naming the resource is dropped."""
    import time

    from services.runtime import AuditLog, TooManyAuditEntries, audit_entries_touching

    first, second = AuditLog(client, "billing"), AuditLog(client, "mission")
    calls = [("acme", "tenders/X"), ("acme", "missions/M"), ("carriers/acme", "invoices/I"),
             ("rival", "missions/OTHER"), ("", "missions/M"), ("carriers/rival", "missions/M"), ("acme", "tenders/Y")]
    for carrier, resource in calls:
        await first.append(actor="spiffe://haulmesh.local/service/gateway", method="/x.Y/Z", carrier=carrier,
                           resource=resource)
    for _ in range(2):
        await second.append(actor="spiffe://haulmesh.local/operator/ops", method="/x.Y/Z", carrier="rival",
                            resource="missions/OTHER")
    entries = await audit_entries_touching(client, {"missions/M", "invoices/I"}, carrier="acme")
    records = [json.loads(e.record) for e in entries]
    assert [(r["carrier"], r["resource"], r["seq"]) for r in records] == [
        ("acme", "missions/M", 2), ("carriers/acme", "invoices/I", 3), ("", "missions/M", 5)]
    assert all("rival" not in r["carrier"] for r in records)  # the tenant leak: never another carrier's record
    assert {e.chain for e in entries} == {first.stream}
    assert verify_entries(entries) == []
    edited = [AuditEntry(e.chain, e.entry_id, e.record.replace('"acme"', '"acmf"'), e.hash) for e in entries]
    assert any("edited" in p for p in verify_entries(edited))
    # Scans start at a time (the mission's creation): nothing before it is read.
    assert await audit_entries_touching(client, {"missions/M"}, since_ms=int(time.time() * 1000) + 60_000) == []
    # Bounded: more touching entries than the cap is an error, never an unbounded list.
    with pytest.raises(TooManyAuditEntries):
        await audit_entries_touching(client, {"missions/M", "invoices/I"}, carrier="acme", max_entries=2)


def _reseal(pack: bytes, change_sig) -> bytes:
    """The pack with its seal's signature passed through ``change_sig`` (DER bytes → base64 text)."""
    from services.runtime.evidence import _canonical, _unb64

    def change(members):
        *rest, (name, seal) = members
        envelope = json.loads(seal)
        envelope["signatures"][0]["sig"] = change_sig(_unb64(envelope["signatures"][0]["sig"], "sig"))
        return [*rest, (name, _canonical(envelope))]

    return _repack(pack, change)


def test_a_malleated_seal_fails_high_s_or_loose_der(pack, inputs) -> None:
    """(r, n - s) verifies as ECDSA too: the seal is made low-s and a high-s one is refused, so a pack has one
    valid seal, not two."""
    import base64

    from cryptography.hazmat.primitives.asymmetric import utils

    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

    def high_s(der: bytes) -> str:
        r, s = utils.decode_dss_signature(der)
        assert s <= order // 2  # sealed low-s
        return base64.b64encode(utils.encode_dss_signature(r, order - s)).decode()

    result = _verify(_reseal(pack, high_s), inputs)
    assert (result.ok, result.failure.name) == (False, "seal") and "high s" in result.failure.detail


@pytest.mark.parametrize("text", ["QR==", "QUJ=", "QQ==\n", "QQ==QQ==", " QQ==", "QQ"])
def test_base64_is_strict_and_canonical(text: str) -> None:
    """Only the one canonical spelling of some bytes is accepted (unused bits zero, padding, nothing around)."""
    from services.runtime.evidence import _unb64

    with pytest.raises(ValueError):
        _unb64(text, "x")
    assert _unb64("QQ==", "x") == b"A" and _unb64("QUI=", "x") == b"AB"


def _reissued(cert_pem: bytes, ca: pki.CertificateAuthority, before, after) -> bytes:
    """The certificate re-issued by the CA with another validity window (same key, subject, extensions)."""
    from cryptography.hazmat.primitives import hashes, serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .public_key(cert.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(before).not_valid_after(after))
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(ca.private_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_a_truck_certificate_not_valid_at_the_frames_time_fails(inputs) -> None:
    """The truck's certificate must be valid when the frames (and the manifest) were signed, by their own times."""
    from datetime import UTC, datetime, timedelta

    from .evidence_inputs import T0

    start = datetime.fromtimestamp(T0, UTC)
    later = _reissued(inputs.truck.certificate_pem, inputs.ca, start + timedelta(days=1), start + timedelta(days=90))
    result = _verify(build_pack(**dict(inputs.kwargs(), vehicle_certificates=[later])), inputs)
    assert (result.ok, result.failure.name) == (False, "frames") and "outside the validity" in result.failure.detail


def test_a_seal_made_with_an_expired_evidence_certificate_fails(inputs) -> None:
    from datetime import UTC, datetime, timedelta

    from services.runtime.evidence import SealKey

    from .evidence_inputs import T0

    start = datetime.fromtimestamp(T0, UTC)
    expired = _reissued(inputs.seal.certificate_pem, inputs.ca, start - timedelta(days=30), start - timedelta(days=1))
    from cryptography.hazmat.primitives import serialization

    key_pem = inputs.seal.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption())
    seal = SealKey.load(expired, key_pem, inputs.ca.certificate_pem)
    result = _verify(build_pack(**dict(inputs.kwargs(), seal=seal)), inputs)
    assert (result.ok, result.failure.name) == (False, "validity") and "expired" in result.failure.detail


def _invoice_copy(inputs, change):
    invoice = type(inputs.invoice)()
    invoice.CopyFrom(inputs.invoice)
    change(invoice)
    return _verify(build_pack(**dict(inputs.kwargs(), invoice=invoice)), inputs)


def test_an_invoice_without_provenance_fails_when_the_pack_has_fixes(inputs) -> None:
    """Unmeasured usage is billed only when there was nothing to measure; with fixes in the pack it is refused."""
    result = _invoice_copy(inputs, lambda invoice: invoice.usage.ClearField("provenance"))
    assert (result.ok, result.failure.name) == (False, "invoice") and "no provenance" in result.failure.detail


def test_the_linehaul_line_and_the_total_must_match_the_usage(inputs) -> None:
    def other_quantity(invoice) -> None:
        invoice.lines[0].quantity += 1

    def other_total(invoice) -> None:
        invoice.total.amount_minor += 1

    def no_linehaul(invoice) -> None:
        invoice.lines[0].code = "FUEL"

    assert "LINEHAUL" in _invoice_copy(inputs, other_quantity).failure.detail
    assert "LINEHAUL" in _invoice_copy(inputs, no_linehaul).failure.detail
    assert "sum of its lines" in _invoice_copy(inputs, other_total).failure.detail


def test_gaps_are_bridged_with_the_provenance_circuity_factor(inputs) -> None:
    """Without a planned route a gap is bridged as straight miles x the circuity factor the provenance states (the
    billing deployment's lane facts), not the verifier's default."""
    from services.runtime import metering

    frames = [sign_frame(inputs.truck, s, 29.76 + 0.05 * s, -95.37 + 0.05 * s) for s in (1, 2, 40)]
    mission = type(inputs.mission)()
    mission.CopyFrom(inputs.mission)
    mission.ClearField("proof_of_delivery")
    measured = metering.measure(metering.fixes_from_payloads(f.payload for f in frames), gap_seconds=120,
                                circuity_factor=1.5)
    assert measured.gaps and measured.miles != metering.measure(
        metering.fixes_from_payloads(f.payload for f in frames), gap_seconds=120).miles
    invoice = type(inputs.invoice)()
    invoice.CopyFrom(inputs.invoice)
    invoice.usage.miles = invoice.lines[0].quantity = measured.miles
    p = invoice.usage.provenance
    p.first_sequence, p.last_sequence, p.frame_count, p.circuity_factor = 1, 40, 3, 1.5
    p.telemetry_log_sha256 = metering.telemetry_log_sha256(f.payload for f in frames)
    result = _verify(build_pack(**dict(inputs.kwargs(), mission=mission, frames=frames, invoice=invoice)), inputs)
    assert result.ok, result.report()
