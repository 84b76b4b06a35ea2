"""Evidence packs: one sealed file a third party checks offline (no store, no network, no Haulmesh).

A pack is a ZIP (stored members, no compression) whose members are, in this order:

* ``mission.binpb`` / ``mission.json``: the mission (binary protobuf, exact; and its proto JSON to read).
  Its ``proof_of_delivery`` carries the signed delivery manifest bytes as the truck signed them.
* ``pod/manifest.binpb``, ``pod/manifest.sig``: the proof of delivery's signed bytes and signature, alone.
* ``invoice.binpb`` / ``invoice.json``: the mission's invoice (usage and its provenance), if issued.
* ``telemetry/frames.jsonl``: every signed frame of the mission, ascending sequence, one JSON object a line:
  ``sequence``, ``payload`` and ``signature`` (base64 of the exact bytes), ``key_id``, ``receive_time``.
* ``audit/entries.jsonl``: the audit entries touching the mission, its tender and its invoice (with the
  runs of their chains between them), each as stored: ``chain``, ``entry_id``, ``record`` (text), ``hash``.
* ``certs/ca.pem``: the mesh CA; ``certs/evidence.pem``: the sealing certificate;
  ``certs/vehicles/<key_id>.pem``: the truck's certificates whose keys signed frames or the POD.
* ``seal.dsse.json`` (last): a DSSE envelope (payload type :data:`MANIFEST_TYPE`) whose payload is the
  manifest: every other member's path, size and SHA-256, signed ECDSA P-256 / SHA-256 by the evidence key.

Why this shape: the seal signs the manifest and the manifest pins every member's bytes; the container is
canonical (one byte layout for a given member list: fixed times, no extra fields, no comment), and the verifier
rebuilds it from the members and compares byte for byte, so any changed byte anywhere, in a member or in
ZIP metadata, fails. Members are stored, not deflated, because a rebuild must not depend on a zlib version;
the ZIP itself is hand-written for the same reason (``zipfile`` output differs between Python versions), and
any unzip tool reads it. Signatures are deterministic (RFC 6979), so the same inputs give the same bytes.

:func:`verify_pack` runs the checks in order and stops at the first failure, which it names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from haulmesh.billing.v1 import invoice_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2

from . import metering
from ._audit import AuditEntry, verify_entries
from ._identity import Identity, IdentityError, signing_key_id

__all__ = [
    "DOCUMENT_SIGNING_EKU",
    "MANIFEST_TYPE",
    "MAX_PACK_BYTES",
    "MAX_PACK_FRAMES",
    "Check",
    "PackFrame",
    "PackVerification",
    "SealKey",
    "build_pack",
    "telemetry_log_sha256",
    "verify_pack",
]

#: DSSE payload type of the manifest.
MANIFEST_TYPE = "application/vnd.haulmesh.evidence-manifest.v1+json"
#: id-kp-documentSigning (RFC 9336): the only extended key usage of an evidence certificate; no TLS usage.
DOCUMENT_SIGNING_EKU = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
#: Largest pack built or verified (no ZIP64: the container stays one simple layout).
MAX_PACK_BYTES = 1 << 30
#: Most frames one pack holds: 36 h at 1 Hz (a 12 h trip at 1 Hz is 43,200); more is refused at export. The
#: mission service measures usage from at most this many frames (HAULMESH_USAGE_MAX_FRAMES is capped at it), so
#: every invoice's evidence fits in a pack.
MAX_PACK_FRAMES = 129_600
#: Tolerance between invoiced miles and miles measured from the frames (both are rounded to 0.1 mi).
MILES_TOLERANCE = 0.05
#: The gap threshold of usage recorded without one in its provenance (the mission service's default).
_DEFAULT_GAP_SECONDS = 120.0
#: Clock tolerance of the certificate validity checks: a truck's clock is trusted this far off (telemetry's default
#: HAULMESH_TELEMETRY_CLOCK_SKEW_SECONDS), and certificates are issued 5 minutes back-dated.
_CLOCK_SKEW = timedelta(seconds=300)
_FORMAT = "haulmesh.evidence/v1"
_SEAL = "seal.dsse.json"
_SIGNATURE = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_VERIFY = ec.ECDSA(hashes.SHA256())
_PATH = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*$")


# --- inputs ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PackFrame:
    """A stored signed frame: the exact payload bytes, the signature, the key id and the receive time."""

    sequence: int
    payload: bytes
    signature: bytes
    key_id: str
    receive_time: str  # RFC 3339, as proto JSON writes a Timestamp


@dataclass(frozen=True)
class SealKey:
    """The platform's evidence key: a signing-only certificate chaining to the mesh CA, and its key."""

    certificate_pem: bytes
    private_key: ec.EllipticCurvePrivateKey
    ca_pem: bytes

    @classmethod
    def load(cls, certificate_pem: bytes, private_key_pem: bytes, ca_pem: bytes) -> SealKey:
        """From PEM files' contents; ValueError unless the key is P-256 and matches the certificate."""
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("the evidence key must be ECDSA P-256")
        cert = x509.load_pem_x509_certificate(certificate_pem)
        if cert.public_key() != key.public_key():
            raise ValueError("the evidence key does not belong to the evidence certificate")
        return cls(certificate_pem, key, ca_pem)


# --- the container ---------------------------------------------------------------------------------------

_DOS_DATE = 0x0021  # 1980-01-01: the earliest ZIP date, for every member (times would break determinism)
_FLAGS = 0x0800  # UTF-8 names


def _zip(members: Sequence[tuple[str, bytes]]) -> bytes:
    """The canonical ZIP of ``members``: stored, fixed time, no extras, no comment, in the given order."""
    out, central = bytearray(), bytearray()
    for name, data in members:
        raw = name.encode()
        crc = zlib.crc32(data)
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, _FLAGS, 0, 0, _DOS_DATE, crc, len(data), len(data),
                           len(raw), 0) + raw + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x0314, 20, _FLAGS, 0, 0, _DOS_DATE, crc,
                               len(data), len(data), len(raw), 0, 0, 0, 0, 0o100644 << 16, offset) + raw
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + eocd)


def _unzip(data: bytes) -> list[tuple[str, bytes]]:
    """The members of a pack, read from its local headers in order (the rest is checked by rebuilding)."""
    members, offset = [], 0
    while data[offset:offset + 4] == b"PK\x03\x04":
        if offset + 30 > len(data):
            raise ValueError(f"truncated local header at byte {offset}")
        (_, _, _flags, method, _, _, _, size, usize, name_len, extra_len) = struct.unpack_from(
            "<IHHHHHIIIHH", data, offset)
        if method != 0 or size != usize:
            raise ValueError(f"member at byte {offset} is compressed (method {method}); packs store members")
        start = offset + 30 + name_len + extra_len
        if start + size > len(data):
            raise ValueError(f"member at byte {offset} runs past the end of the file")
        try:
            name = data[offset + 30:offset + 30 + name_len].decode()
        except UnicodeDecodeError:
            raise ValueError(f"member name at byte {offset + 30} is not UTF-8") from None
        members.append((name, data[start:start + size]))
        offset = start + size
    if not members:
        raise ValueError("no ZIP members at the start of the file")
    return members


# --- signing ---------------------------------------------------------------------------------------------

def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is signed (the type cannot be swapped under a signature)."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any, what: str) -> bytes:
    """Strict base64: the standard alphabet, padding only at the end, nothing after it, and the one canonical
    spelling of the bytes (non-zero unused bits such as ``QR==`` for ``QQ==`` refused): a member's text is the
    one way to write its bytes, so no two packs differ only in how they spell a signature."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError(f"{what} is not a base64 string")
    try:
        data = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except binascii.Error:
        raise ValueError(f"{what} is not base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError(f"{what} is not canonical base64")
    return data


#: The order of the P-256 group: a signature (r, s) and (r, n - s) both verify, so the seal uses the low one.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _low_s(signature: bytes) -> bytes:
    """The DER ECDSA P-256 signature with s in the lower half of the group order (BIP 62's rule): the seal
    has one valid encoding, not two."""
    r, s = utils.decode_dss_signature(signature)
    return utils.encode_dss_signature(r, _P256_ORDER - s if s > _P256_ORDER // 2 else s)


def _check_low_s(signature: bytes) -> None:
    """ValueError unless ``signature`` is strict DER with a low s (the only form :func:`_low_s` makes)."""
    try:
        r, s = utils.decode_dss_signature(signature)
    except ValueError:
        raise ValueError("the seal's signature is not DER") from None
    if utils.encode_dss_signature(r, s) != signature:
        raise ValueError("the seal's signature is not in strict DER")
    if s > _P256_ORDER // 2:
        raise ValueError("the seal's signature has a high s (malleated)")


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def telemetry_log_sha256(payloads: Sequence[bytes]) -> str:
    """DeliveryManifest.telemetry_log_sha256 (mission.proto): runtime.metering's, the one definition."""
    return metering.telemetry_log_sha256(payloads)


# --- build -----------------------------------------------------------------------------------------------

def build_pack(*, mission: mission_pb2.Mission, frames: Sequence[PackFrame], vehicle_certificates: Sequence[bytes],
               invoice: invoice_pb2.Invoice | None, audit_entries: Sequence[AuditEntry], seal: SealKey) -> bytes:
    """The sealed evidence pack of one mission; the same inputs always give the same bytes.

    ``frames`` may come in any order (the pack sorts them by sequence; a sequence twice is a ValueError);
    ``vehicle_certificates`` are PEM, each stored under its key id.
    """
    ordered = sorted(frames, key=lambda f: f.sequence)
    if len({f.sequence for f in ordered}) != len(ordered):
        raise ValueError("a frame sequence appears twice")
    members: list[tuple[str, bytes]] = [
        ("mission.binpb", mission.SerializeToString(deterministic=True)),
        ("mission.json", _proto_json(mission)),
    ]
    if mission.HasField("proof_of_delivery"):
        members += [("pod/manifest.binpb", mission.proof_of_delivery.manifest),
                    ("pod/manifest.sig", mission.proof_of_delivery.manifest_signature)]
    if invoice is not None:
        members += [("invoice.binpb", invoice.SerializeToString(deterministic=True)),
                    ("invoice.json", _proto_json(invoice))]
    members.append(("telemetry/frames.jsonl", b"".join(
        _canonical({"sequence": f.sequence, "payload": _b64(f.payload), "signature": _b64(f.signature),
                    "key_id": f.key_id, "receive_time": f.receive_time}) + b"\n" for f in ordered)))
    members.append(("audit/entries.jsonl", b"".join(
        _canonical({"chain": e.chain, "entry_id": e.entry_id, "record": e.record, "hash": e.hash}) + b"\n"
        for e in audit_entries)))
    members += [("certs/ca.pem", seal.ca_pem), ("certs/evidence.pem", seal.certificate_pem)]
    vehicles = {}
    for pem in vehicle_certificates:
        vehicles[signing_key_id(_spki(x509.load_pem_x509_certificate(pem)))] = pem
    members += [(f"certs/vehicles/{key_id}.pem", vehicles[key_id]) for key_id in sorted(vehicles)]
    manifest = _canonical({
        "format": _FORMAT,
        "mission": mission.name,
        "members": [{"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                    for name, data in members],
    })
    evidence_cert = x509.load_pem_x509_certificate(seal.certificate_pem)
    envelope = {
        "payloadType": MANIFEST_TYPE,
        "payload": _b64(manifest),
        "signatures": [{"keyid": signing_key_id(_spki(evidence_cert)),
                        "sig": _b64(_low_s(seal.private_key.sign(_pae(MANIFEST_TYPE, manifest), _SIGNATURE)))}],
    }
    members.append((_SEAL, _canonical(envelope)))
    packed = _zip(members)
    if len(packed) > MAX_PACK_BYTES:
        raise ValueError(f"the pack would be {len(packed)} bytes, more than {MAX_PACK_BYTES}")
    return packed


def _proto_json(message: Any) -> bytes:
    return json.dumps(json_format.MessageToDict(message), sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n"


# --- verify ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One verification step: its name and what it found (for a failure, why)."""

    name: str
    detail: str


@dataclass(frozen=True)
class PackVerification:
    """The outcome of :func:`verify_pack`: ``ok``, the checks that passed in order, the first failure."""

    ok: bool
    passed: tuple[Check, ...]
    failure: Check | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    #: Whether the CA was pinned by the caller (``trusted_ca_pem``). Unpinned, every check ran against the CA the
    #: pack itself carries, which anyone can mint: the pack is consistent, not shown to come from Haulmesh.
    pinned: bool = False

    @property
    def verified(self) -> bool:
        """Every check passed against a pinned CA: the only outcome to rely on."""
        return self.ok and self.pinned

    @property
    def verdict(self) -> str:
        if self.verified:
            return "evidence pack VERIFIED"
        if self.ok:
            return ("evidence pack NOT VERIFIED: CA not pinned (every check passed against the pack's own CA, "
                    "which anyone can make; pass --ca with the mesh CA)")
        return "evidence pack NOT VERIFIED"

    def report(self) -> str:
        """Human-readable lines: one per passed check, then the failure, then the verdict."""
        lines = [f"ok    {c.name}: {c.detail}" for c in self.passed]
        if self.failure is not None:
            lines.append(f"FAIL  {self.failure.name}: {self.failure.detail}")
        lines.append(self.verdict)
        return "\n".join(lines)


class _Failed(Exception):
    def __init__(self, check: str, detail: str) -> None:
        super().__init__(detail)
        self.check, self.detail = check, detail


def verify_pack(data: bytes, *, trusted_ca_pem: bytes | None = None) -> PackVerification:
    """Verify a pack offline. ``trusted_ca_pem`` pins the mesh CA; without it the pack's own CA is used, which
    proves consistency only: the result's ``ok`` may hold but ``verified`` never does (the verdict says "NOT
    VERIFIED: CA not pinned")."""
    passed: list[Check] = []
    facts: dict[str, Any] = {}
    pinned = trusted_ca_pem is not None
    try:
        _verify(data, trusted_ca_pem, passed, facts)
    except _Failed as failed:
        return PackVerification(False, tuple(passed), Check(failed.check, failed.detail), facts, pinned)
    return PackVerification(True, tuple(passed), None, facts, pinned)


def _step(passed: list[Check], name: str, detail: str) -> None:
    passed.append(Check(name, detail))


def _verify(data: bytes, trusted_ca_pem: bytes | None, passed: list[Check], facts: dict[str, Any]) -> None:
    # 1. container: readable members, names sane, the seal last
    if len(data) > MAX_PACK_BYTES:
        raise _Failed("container", f"{len(data)} bytes, more than {MAX_PACK_BYTES}")
    try:
        members = _unzip(data)
    except (ValueError, struct.error) as exc:
        raise _Failed("container", f"not a readable evidence pack: {exc}") from None
    names = [n for n, _ in members]
    for name in names:
        if not _PATH.fullmatch(name) or ".." in name.split("/"):
            raise _Failed("container", f"member name {name!r} is not allowed (relative lowercase paths only)")
    if len(set(names)) != len(names):
        raise _Failed("container", "a member name appears twice")
    if names[-1] != _SEAL:
        raise _Failed("container", f"the last member must be {_SEAL}, found {names[-1]!r}")
    content = dict(members)
    _step(passed, "container", f"{len(members)} members")

    # 2. seal: the evidence certificate chains to the CA, is signing-only, and signed the manifest
    ca = _load_ca(trusted_ca_pem, content)
    evidence = _load_cert(content, "certs/evidence.pem", "seal")
    _check_issued_by(evidence, ca, "seal", "the evidence certificate")
    _check_signing_only(evidence)
    try:
        envelope = json.loads(content[_SEAL])
        payload = _unb64(envelope["payload"], "payload")
        signatures = envelope["signatures"]
        if envelope["payloadType"] != MANIFEST_TYPE or not isinstance(signatures, list) or len(signatures) != 1:
            raise ValueError("payload type or signature count")
        signature = _unb64(signatures[0]["sig"], "signature")
        _check_low_s(signature)
        keyid = signatures[0]["keyid"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _Failed("seal", f"{_SEAL} is not the expected DSSE envelope ({exc})") from None
    if content[_SEAL] != _canonical(envelope):
        raise _Failed("seal", f"{_SEAL} is not in canonical form")
    if keyid != signing_key_id(_spki(evidence)):
        raise _Failed("seal", "the seal's key id is not the evidence certificate's key")
    try:
        evidence.public_key().verify(signature, _pae(MANIFEST_TYPE, payload), _VERIFY)  # type: ignore[union-attr]
    except InvalidSignature:
        raise _Failed("seal", "the seal's signature does not verify over the manifest") from None
    sealer = _uri_san(evidence)
    _step(passed, "seal", f"manifest signed by {sealer or 'the evidence key'}; certificate chains to the "
          f"{'pinned' if trusted_ca_pem else 'carried (not pinned: pass --ca)'} CA "
          f"{hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]}")

    # 3. manifest: lists exactly the other members, with their sizes and digests
    try:
        manifest = json.loads(payload)
        listed = [(m["path"], m["size"], m["sha256"]) for m in manifest["members"]]
        if manifest["format"] != _FORMAT or payload != _canonical(manifest):
            raise ValueError("format or canonical form")
    except (ValueError, KeyError, TypeError) as exc:
        raise _Failed("manifest", f"unreadable ({exc})") from None
    if [p for p, _, _ in listed] != names[:-1]:
        extra = sorted(set(names[:-1]) - {p for p, _, _ in listed})
        missing = sorted({p for p, _, _ in listed} - set(names[:-1]))
        raise _Failed("manifest", f"members differ from the manifest (not listed: {extra or '-'}; "
                      f"missing: {missing or '-'}; or reordered)")
    for path, size, digest in listed:
        body = content[path]
        if len(body) != size or hashlib.sha256(body).hexdigest() != digest:
            raise _Failed("manifest", f"{path}: content differs from the manifest's size and sha256 (altered)")
    _step(passed, "manifest", f"{len(listed)} members match their sha256")

    # 4. the container is canonical: rebuilding it from its members gives the same bytes
    canonical = _zip(members)
    if canonical != data:
        at = next((i for i, (a, b) in enumerate(zip(canonical, data, strict=False)) if a != b),
                  min(len(canonical), len(data)))
        raise _Failed("container", f"ZIP metadata differs from the canonical layout at byte {at} "
                      f"(file {len(data)} bytes, canonical {len(canonical)})")
    _step(passed, "canonical", "ZIP layout is canonical (no byte outside the members differs)")

    # 5. contents
    mission = _parse(mission_pb2.Mission, content, "mission.binpb", "mission")
    if json_format.Parse(content["mission.json"], mission_pb2.Mission()) != mission:
        raise _Failed("mission", "mission.json and mission.binpb differ")
    vehicle_id = mission.vehicle.rsplit("/", 1)[-1]
    facts.update(mission=mission.name, vehicle=mission.vehicle)
    if manifest.get("mission") != mission.name:
        raise _Failed("mission", "the manifest names another mission")
    _step(passed, "mission", f"{mission.name}, vehicle {mission.vehicle}, state "
          f"{mission_pb2.Mission.State.Name(mission.state)}")

    keys = _vehicle_keys(content, ca, vehicle_id)
    _step(passed, "vehicle certificates", f"{len(keys)} certificate(s) of vehicle/{vehicle_id} chain to the CA")

    payloads = _verify_frames(content, keys, vehicle_id, mission.name.rsplit("/", 1)[-1])
    facts["frames"] = len(payloads)
    _step(passed, "frames", f"{len(payloads)} frames, every signature verifies with the truck's key")

    _verify_pod(mission, content, keys, payloads, passed, facts)
    _verify_invoice(mission, content, payloads, passed, facts)

    entries = []
    for number, line in enumerate(content["audit/entries.jsonl"].splitlines(), 1):
        try:
            item = json.loads(line)
            entries.append(AuditEntry(str(item["chain"]), str(item["entry_id"]), str(item["record"]),
                                      str(item["hash"])))
        except (ValueError, KeyError, TypeError):
            raise _Failed("audit", f"audit/entries.jsonl line {number} is unreadable") from None
    problems = verify_entries(entries)
    if problems:
        raise _Failed("audit", problems[0])
    facts["audit_entries"] = len(entries)
    _step(passed, "audit", f"{len(entries)} entries, every hash and link holds")

    # The seal was made after everything it seals happened: a sealing certificate expired before the latest of
    # those times sealed with an expired key. (An upper bound on the seal time needs a time-stamp token.)
    latest = _latest_time(mission, content, entries)
    if latest is not None and latest > evidence.not_valid_after_utc + _CLOCK_SKEW:
        raise _Failed("validity", f"the evidence certificate expired {evidence.not_valid_after_utc}, before "
                      f"{latest}, the latest time the pack records: it was sealed with an expired key")
    _step(passed, "validity", "truck certificates valid at each frame's and the manifest's time; the evidence "
          f"certificate valid until {evidence.not_valid_after_utc} (the pack records nothing later)")


def _check_totals(invoice: invoice_pb2.Invoice) -> None:
    """The invoice's total is the sum of its lines, in one currency."""
    currencies = {line.amount.currency_code for line in invoice.lines} | {invoice.total.currency_code}
    summed = sum(line.amount.amount_minor for line in invoice.lines)
    if len(currencies) != 1 or summed != invoice.total.amount_minor:
        raise _Failed("invoice", f"the total {invoice.total.amount_minor} {invoice.total.currency_code} is not the "
                      f"sum of its lines ({summed} in {sorted(currencies)})")


def _latest_time(mission: mission_pb2.Mission, content: dict[str, bytes], entries: list[AuditEntry]
                 ) -> datetime | None:
    """The latest time the pack records (mission and invoice times, frames' receive times, audit entries'): the
    seal cannot be older."""
    times = [_time_of(mission.update_time), _time_of(mission.create_time)]
    if "invoice.binpb" in content:
        invoice = invoice_pb2.Invoice.FromString(content["invoice.binpb"])
        times += [_time_of(invoice.issue_time), _time_of(invoice.update_time)]
    for line in content.get("telemetry/frames.jsonl", b"").splitlines():
        try:
            times.append(datetime.fromisoformat(json.loads(line)["receive_time"]))
        except (ValueError, KeyError, TypeError):
            continue  # a receive time proto JSON cannot hold; the frame itself was checked
    for entry in entries:
        try:
            times.append(datetime.fromtimestamp(float(json.loads(entry.record)["time"]), UTC))
        except (ValueError, KeyError, TypeError, OverflowError):
            continue
    known = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in times if t is not None]
    return max(known, default=None)


def _parse(kind: Any, content: dict[str, bytes], path: str, check: str) -> Any:
    try:
        return kind.FromString(content[path])
    except KeyError:
        raise _Failed(check, f"{path} is missing") from None
    except DecodeError:
        raise _Failed(check, f"{path} does not decode") from None


def _load_cert(content: dict[str, bytes], path: str, check: str) -> x509.Certificate:
    try:
        pem = content[path]
    except KeyError:
        raise _Failed(check, f"{path} is missing") from None
    # cryptography still parses a few RFC 5280 violations (a serial that is not positive) with only a
    # deprecation warning; a pack is untrusted input, so what a future release refuses is refused now.
    with warnings.catch_warnings():
        warnings.simplefilter("error", CryptographyDeprecationWarning)
        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise _Failed(check, f"{path} is not a PEM certificate") from None
        except CryptographyDeprecationWarning as violation:
            raise _Failed(check, f"{path} is not an RFC 5280 certificate: {violation}") from None


def _load_ca(trusted_ca_pem: bytes | None, content: dict[str, bytes]) -> x509.Certificate:
    carried = _load_cert(content, "certs/ca.pem", "seal")
    if trusted_ca_pem is None:
        ca = carried
    else:
        try:
            ca = x509.load_pem_x509_certificate(trusted_ca_pem)
        except ValueError:
            raise _Failed("seal", "the pinned CA is not a PEM certificate") from None
        if ca != carried:
            raise _Failed("seal", "the pack's CA is not the pinned CA")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value \
        if _has(ca, x509.BasicConstraints) else None
    if constraints is None or not constraints.ca:
        raise _Failed("seal", "the CA certificate is not a CA")
    return ca


def _has(cert: x509.Certificate, ext: type) -> bool:
    try:
        cert.extensions.get_extension_for_class(ext)
    except x509.ExtensionNotFound:
        return False
    return True


def _check_issued_by(cert: x509.Certificate, ca: x509.Certificate, check: str, what: str) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise _Failed(check, f"{what} is not issued by the CA") from None


def _check_signing_only(cert: x509.Certificate) -> None:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        ekus = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        raise _Failed("seal", "the evidence certificate lacks key usage limits") from None
    tls = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    if not usage.digital_signature or usage.key_cert_sign or ekus & tls or DOCUMENT_SIGNING_EKU not in ekus:
        raise _Failed("seal", "the evidence certificate is not a signing-only (document signing) certificate")


def _uri_san(cert: x509.Certificate) -> str:
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        return ""
    return uris[0] if len(uris) == 1 else ""


def _valid_at(cert: x509.Certificate, when: datetime) -> bool:
    """Whether ``when`` lies in the certificate's validity window, give or take the clock tolerance."""
    return cert.not_valid_before_utc - _CLOCK_SKEW <= when <= cert.not_valid_after_utc + _CLOCK_SKEW


def _time_of(timestamp: Any) -> datetime | None:
    """A protobuf Timestamp as an aware datetime; None when unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return None
    return timestamp.ToDatetime(UTC)


def _vehicle_keys(content: dict[str, bytes], ca: x509.Certificate, vehicle_id: str) -> dict[str, x509.Certificate]:
    """The truck's certificates by key id, each checked: issued by the CA, the mission's vehicle, P-256."""
    keys = {}
    for path in sorted(p for p in content if p.startswith("certs/vehicles/")):
        cert = _load_cert(content, path, "vehicle certificates")
        _check_issued_by(cert, ca, "vehicle certificates", path)
        try:
            identity = Identity.parse(_uri_san(cert))
        except IdentityError:
            raise _Failed("vehicle certificates", f"{path} carries no single SPIFFE identity") from None
        if (identity.kind, identity.name) != ("vehicle", vehicle_id):
            raise _Failed("vehicle certificates", f"{path} is {identity}, not the mission's vehicle {vehicle_id}")
        key_id = signing_key_id(_spki(cert))
        if path != f"certs/vehicles/{key_id}.pem":
            raise _Failed("vehicle certificates", f"{path} holds the key {key_id[:16]}…, not the one it is named for")
        public_key = cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
            raise _Failed("vehicle certificates", f"{path}: not an ECDSA P-256 key")
        keys[key_id] = cert
    if not keys:
        raise _Failed("vehicle certificates", "the pack carries no certificate of the mission's vehicle")
    return keys


def _verify_frames(content: dict[str, bytes], keys: dict[str, x509.Certificate], vehicle_id: str,
                   mission_id: str) -> list[tuple[int, bytes, frame_pb2.FramePayload]]:
    frames: list[tuple[int, bytes, frame_pb2.FramePayload]] = []
    last = -1
    for number, line in enumerate(content.get("telemetry/frames.jsonl", b"").splitlines(), 1):
        where = f"frame line {number}"
        try:
            item = json.loads(line)
            sequence, key_id = int(item["sequence"]), str(item["key_id"])
            payload, signature = _unb64(item["payload"], "payload"), _unb64(item["signature"], "signature")
        except (ValueError, KeyError, TypeError) as exc:
            raise _Failed("frames", f"{where} is unreadable ({exc})") from None
        where = f"frame {sequence}"
        if sequence <= last:
            raise _Failed("frames", f"{where}: sequences must ascend without repeats")
        cert = keys.get(key_id)
        if cert is None:
            raise _Failed("frames", f"{where}: signed by key {key_id[:16]}…, not a certificate of vehicle/{vehicle_id}")
        try:
            cert.public_key().verify(signature, payload, _VERIFY)  # type: ignore[call-arg, union-attr]
        except InvalidSignature:
            raise _Failed("frames", f"{where}: the signature does not verify over the payload") from None
        try:
            decoded = frame_pb2.FramePayload.FromString(payload)
        except DecodeError:
            raise _Failed("frames", f"{where}: the signed payload does not decode") from None
        # The key signed it while its certificate was valid (by the frame's own signed device time).
        device_time = _time_of(decoded.device_time)
        if device_time is None or not _valid_at(cert, device_time):
            raise _Failed("frames", f"{where}: device time {device_time} is outside the validity of the certificate "
                          f"of key {key_id[:16]}… ({cert.not_valid_before_utc} to {cert.not_valid_after_utc})")
        # A frame without a mission id counts when telemetry placed it in the mission (its span, its truck).
        named = (decoded.vehicle_id, decoded.sequence)
        if named != (vehicle_id, sequence) or decoded.mission_id not in ("", mission_id):
            raise _Failed("frames", f"{where}: the payload names another vehicle, sequence or mission")
        frames.append((sequence, payload, decoded))
        last = sequence
    return frames


def _verify_pod(mission: mission_pb2.Mission, content: dict[str, bytes], keys: dict[str, x509.Certificate],
                frames: list[tuple[int, bytes, frame_pb2.FramePayload]], passed: list[Check],
                facts: dict[str, Any]) -> None:
    if not mission.HasField("proof_of_delivery"):
        facts["pod_verified"] = False
        _step(passed, "proof of delivery", "none (the mission has no proof of delivery)")
        return
    pod = mission.proof_of_delivery
    if content.get("pod/manifest.binpb") != pod.manifest or content.get("pod/manifest.sig") != pod.manifest_signature:
        raise _Failed("proof of delivery", "pod/ members differ from the mission's proof of delivery")
    cert = keys.get(pod.key_id)
    if cert is None:
        raise _Failed("proof of delivery", "signed by a key that is not a certificate of the mission's vehicle")
    try:
        cert.public_key().verify(pod.manifest_signature, pod.manifest, _VERIFY)  # type: ignore[call-arg, union-attr]
    except InvalidSignature:
        raise _Failed("proof of delivery", "the manifest signature does not verify") from None
    try:
        manifest = mission_pb2.DeliveryManifest.FromString(pod.manifest)
    except DecodeError:
        raise _Failed("proof of delivery", "the signed manifest does not decode") from None
    delivered = _time_of(manifest.deliver_time)
    if delivered is None or not _valid_at(cert, delivered):
        raise _Failed("proof of delivery", f"deliver time {delivered} is outside the validity of the truck "
                      "certificate that signed the manifest")
    if f"missions/{manifest.mission_id}" != mission.name:
        raise _Failed("proof of delivery", "the manifest names another mission")
    first, last = manifest.telemetry_first_sequence, manifest.telemetry_last_sequence
    covered = [(s, p) for s, p, _ in frames if first <= s <= last]
    if not covered or covered[0][0] != first or covered[-1][0] != last:
        raise _Failed("proof of delivery", f"the pack lacks frames {first}..{last} the manifest's hash covers")
    recomputed = telemetry_log_sha256([p for _, p in covered])
    if recomputed != manifest.telemetry_log_sha256:
        raise _Failed("proof of delivery", f"telemetry_log_sha256 {manifest.telemetry_log_sha256[:16]}… differs "
                      f"from the frames' {recomputed[:16]}…")
    facts["pod_verified"] = True
    _step(passed, "proof of delivery", f"signature verifies; telemetry_log_sha256 recomputed over frames "
          f"{first}..{last} ({len(covered)} frames)")


def _verify_invoice(mission: mission_pb2.Mission, content: dict[str, bytes],
                    frames: list[tuple[int, bytes, frame_pb2.FramePayload]], passed: list[Check],
                    facts: dict[str, Any]) -> None:
    if "invoice.binpb" not in content:
        _step(passed, "invoice", "none (no invoice issued yet)")
        return
    invoice = _parse(invoice_pb2.Invoice, content, "invoice.binpb", "invoice")
    if json_format.Parse(content.get("invoice.json", b""), invoice_pb2.Invoice()) != invoice:
        raise _Failed("invoice", "invoice.json and invoice.binpb differ")
    if invoice.mission != mission.name:
        raise _Failed("invoice", f"the invoice is for {invoice.mission}, not {mission.name}")
    facts["invoice_miles"] = invoice.usage.miles
    usage = invoice.usage
    _check_totals(invoice)
    # Billing measures the proven log: the frames naming the mission, inside the range the POD's signed manifest
    # covers (the pack may hold more of the mission's frames, e.g. one before the truck's log began).
    mission_id = mission.name.removeprefix("missions/")
    frames = [f for f in frames if f[2].mission_id == mission_id]
    if mission.HasField("proof_of_delivery") and mission.proof_of_delivery.manifest:
        manifest = mission_pb2.DeliveryManifest.FromString(mission.proof_of_delivery.manifest)
        first, last = manifest.telemetry_first_sequence, manifest.telemetry_last_sequence
        frames = [f for f in frames if first <= f[0] <= last]
    fixes = metering.fixes_from_payloads([p for _, p, _ in frames])
    if not usage.HasField("provenance"):
        # The mission service bills without provenance only when it had fewer than two fixes to measure: with
        # them in the pack, an unmeasured invoice is not the one the evidence supports.
        if len(fixes) >= 2:
            raise _Failed("invoice", f"the pack holds {len(fixes)} position fixes of the proven log, but the invoice "
                          "carries no provenance (its miles were not measured from them)")
        _step(passed, "invoice", f"{invoice.name}: {usage.miles:.1f} mi without provenance (no fixes to measure; "
              "nothing to recompute)")
        return
    provenance = usage.provenance
    if provenance.mission != mission.name:
        raise _Failed("invoice", f"the usage provenance names {provenance.mission}, not {mission.name}")
    gap_seconds = provenance.gap_threshold_seconds or _DEFAULT_GAP_SECONDS
    measured = metering.measure(fixes, gap_seconds=gap_seconds,
                                planned_route=tuple((p.lat, p.lon) for p in mission.planned_route),
                                circuity_factor=provenance.circuity_factor or metering.DEFAULT_CIRCUITY_FACTOR)
    facts["driven_miles"] = measured.miles
    stated = (provenance.first_sequence, provenance.last_sequence, provenance.frame_count)
    if measured.frames and stated != (measured.first_sequence, measured.last_sequence, measured.frames):
        raise _Failed("invoice", f"the provenance says frames {stated[0]}..{stated[1]} ({stated[2]}), the pack "
                      f"holds {measured.first_sequence}..{measured.last_sequence} ({measured.frames})")
    in_range = [p for s, p, _ in frames if provenance.first_sequence <= s <= provenance.last_sequence]
    if measured.frames and telemetry_log_sha256(in_range) != provenance.telemetry_log_sha256:
        raise _Failed("invoice", "the provenance's telemetry_log_sha256 is not the digest of the pack's frames")
    if abs(measured.miles - usage.miles) > MILES_TOLERANCE:
        raise _Failed("invoice", f"invoiced {usage.miles:.1f} mi, the frames measure {measured.miles:.1f} mi")
    linehaul = [line for line in invoice.lines if line.code == "LINEHAUL"]
    if len(linehaul) != 1 or abs(linehaul[0].quantity - usage.miles) > 1e-9:
        raise _Failed("invoice", f"the LINEHAUL line does not bill the measured {usage.miles:.1f} mi "
                      f"({'quantity ' + str(linehaul[0].quantity) if len(linehaul) == 1 else 'no single line'})")
    gaps = f", {len(measured.gaps)} gap(s) bridged {measured.bridged_miles:.1f} mi" if measured.gaps else ""
    _step(passed, "invoice", f"{usage.miles:.1f} mi invoiced = {measured.miles:.1f} mi measured from frames "
          f"{measured.first_sequence}..{measured.last_sequence}{gaps}")
