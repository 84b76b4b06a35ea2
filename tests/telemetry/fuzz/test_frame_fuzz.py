"""A fuzz target over what the telemetry service does with a truck's bytes before anything is stored.

The target (:func:`consume`) takes the wire bytes of one ``StreamTelemetryRequest``, as the stream servicer
receives them, and runs the server's own code on them: protobuf decoding, the batch order rule
(``order_batch``), frame verification (``verify_frame``: size, key, ECDSA P-256 signature, decoding of the signed
payload, vehicle, sequence, clock window) and, for a verified frame, every decoder a stored frame later meets (the
tracker's ``frame_from_payload``, the archive's and reads' ``device_time.ToMilliseconds()``, billing's
``fixes_from_payloads``). The promise checked on every input: the outcome is a decode error or, per frame, a
documented rejection (``Reject.Reason``, a bounded detail) or a verified frame that really was signed by the
vehicle's key and that every later reader can read (a finite, in-range position; a valid timestamp); never any
other exception.

Inputs: arbitrary bytes; valid signed batches with arbitrary payload content (NaN and infinite numbers,
out-of-range timestamps, unknown enum values, huge strings); and valid batches mutated: bit flips and truncation of
the wire bytes, of a payload or of a signature, fields swapped between frames or within one, the wrong key, the
other key's id, huge fields (payload over 64 KiB, signature over 72 bytes, a 100 kB key id), sequences 0 and
2**64-1, a duplicated frame.

The corpus (``corpus/*.bin``, one ``StreamTelemetryRequest`` each, its expected outcome in
``corpus/expected.json``) holds one seed per distinct outcome plus every input that ever found a bug; ``make test``
replays it. ``make fuzz-frames`` runs the target longer (``HAULMESH_FUZZ_FRAME_EXAMPLES``, default 5,000 per
strategy here: 60) and, with ``HAULMESH_FUZZ_FRAME_SAVE=1``, adds a seed for each outcome not yet in the corpus and
the smallest crashing input of the run (``crash-*.bin``): commit them. The full version (``make chaos``) records
"AT-19" with its counts. The signing keys are derived from fixed numbers so the committed seeds verify in every
run: they sign nothing but these test frames.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from services.runtime.metering import fixes_from_payloads
from services.telemetry.config import TelemetryConfig
from services.telemetry.convert import REJECT_REASONS, frame_from_payload
from services.telemetry.domain import (
    MAX_PAYLOAD_BYTES,
    FrameRejected,
    Verified,
    key_from_spki,
    order_batch,
    verify_frame,
)

CORPUS = Path(__file__).parent / "corpus"
EXPECTED = CORPUS / "expected.json"
#: A seed is kept only up to this size (an over-64-KiB payload is the largest input worth keeping).
_MAX_SEED_BYTES = 80 * 1024
#: Examples per strategy: a quick run in ``make test``; ``make fuzz-frames`` sets thousands.
EXAMPLES = int(os.environ.get("HAULMESH_FUZZ_FRAME_EXAMPLES") or 60)
#: ``make fuzz-frames`` with HAULMESH_FUZZ_FRAME_SAVE=1: new outcomes and the smallest crash become seeds.
SAVE = os.environ.get("HAULMESH_FUZZ_FRAME_SAVE") == "1"

# Fixed keys (see the module docstring): the vehicle's, and another vehicle's for the wrong-key mutations.
KEY = ec.derive_private_key(0x6861756C6D6573682D667A2D31, ec.SECP256R1())
OTHER_KEY = ec.derive_private_key(0x6861756C6D6573682D667A2D32, ec.SECP256R1())


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


VEHICLE_KEY = key_from_spki(_spki(KEY))
OTHER_KEY_ID = key_from_spki(_spki(OTHER_KEY)).key_id
KEYS = {VEHICLE_KEY.key_id: VEHICLE_KEY}
VEHICLE = "AU-TRK-1001"
#: The server's clock for every input (the seeds' device times are relative to it).
NOW = 1_800_000_000.0
CONFIG = TelemetryConfig()  # the defaults: 300 s clock skew, 7 days' frame age
#: A rejection's detail goes back to the truck and into logs: bounded whatever the input.
MAX_DETAIL_CHARS = 300


def consume(raw: bytes) -> str:
    """The server's handling of one request's bytes; returns its outcome class (``DECODE_ERROR``,
    ``message:<kind>``, or the sorted distinct per-frame outcomes joined by ``+``). Raises only on a broken
    promise (see the module docstring)."""
    try:
        request = stream_pb2.StreamTelemetryRequest.FromString(raw)
    except DecodeError:
        return "DECODE_ERROR"
    kind = request.WhichOneof("message")
    if kind != "frames":
        return f"message:{kind}"
    frames = list(request.frames.frames)
    outcomes = set()
    for frame, in_order in zip(frames, order_batch([f.sequence for f in frames]), strict=True):
        if not in_order:
            outcomes.add("OUT_OF_ORDER")
            continue
        result = verify_frame(frame.sequence, frame.payload, frame.signature, frame.key_id, vehicle_id=VEHICLE,
                              keys=KEYS, now_seconds=NOW, config=CONFIG)
        if isinstance(result, FrameRejected):
            assert result.reason in REJECT_REASONS, result
            assert result.sequence == frame.sequence and len(result.detail) <= MAX_DETAIL_CHARS, result
            outcomes.add(result.reason.name)
            continue
        assert isinstance(result, Verified)
        _check_verified(frame, result)
        outcomes.add("VERIFIED")
    return "+".join(sorted(outcomes)) or "EMPTY_BATCH"


def _check_verified(frame: frame_pb2.SignedFrame, result: Verified) -> None:
    """A verified frame is the vehicle's, as signed, and every later reader of the stored log can read it."""
    assert result.payload_bytes == frame.payload and result.signature == frame.signature
    KEY.public_key().verify(frame.signature, frame.payload, ec.ECDSA(hashes.SHA256()))  # really signed
    payload = result.payload
    assert payload.vehicle_id == VEHICLE and payload.sequence == frame.sequence >= 1
    assert len(frame.payload) <= MAX_PAYLOAD_BYTES
    device_ms = payload.device_time.ToMilliseconds()  # the archive and the reads
    assert NOW - CONFIG.max_frame_age_seconds - 1 <= device_ms / 1000 <= NOW + CONFIG.clock_skew_seconds + 1
    frame_from_payload(payload)  # the tracker
    for fix in fixes_from_payloads([frame.payload]):  # billing's miles
        assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180, fix
        assert fix.odometer_miles is None or math.isfinite(fix.odometer_miles), fix
    if payload.HasField("position"):
        p = payload.position
        assert math.isfinite(p.speed_kph) and p.speed_kph >= 0, p  # frame.proto's ranges
        assert 0 <= p.heading_deg < 360, p
        assert math.isfinite(p.accuracy_meters) and p.accuracy_meters >= 0, p


# ---- inputs ----------------------------------------------------------------------------------------------

_WIDE_FLOATS = st.floats(allow_nan=True, allow_infinity=True)
#: "Huge" strings: far past every bound a detail or a log line keeps (80 characters of a key id or vehicle).
_TEXT = st.text(max_size=24) | st.just("x" * 5000)
_INT64 = st.integers(-(2**63), 2**63 - 1)
_INT32 = st.integers(-(2**31), 2**31 - 1)
#: The fields verification requires; a drawn subset of them gets absurd values, the rest plausible ones, so
#: that most payloads get past verification's checks and their content reaches the later readers.
_REQUIRED = ("vehicle_id", "sequence", "boot_id", "kind", "device_time")


@st.composite
def payloads(draw: st.DrawFn, sequence: int) -> bytes:
    """A FramePayload's bytes: required fields mostly plausible, content (numbers, text) anything."""
    absurd = draw(st.sets(st.sampled_from(_REQUIRED), max_size=2))
    p = frame_pb2.FramePayload(
        vehicle_id=draw(_TEXT) if "vehicle_id" in absurd else VEHICLE,
        sequence=draw(st.integers(0, 2**64 - 1)) if "sequence" in absurd else sequence,
        boot_id=draw(_TEXT) if "boot_id" in absurd else "boot-1",
        kind=draw(_INT32) if "kind" in absurd else draw(st.integers(1, 5)),
        vehicle_state=draw(_TEXT), mission_id=draw(_TEXT))
    if "device_time" in absurd:
        if draw(st.booleans()):  # else unset
            p.device_time.seconds = draw(_INT64 | st.integers(int(NOW) - 8 * 86400, int(NOW) + 400))
            p.device_time.nanos = draw(_INT32)
    else:
        p.device_time.seconds = draw(st.integers(int(NOW) - 7 * 86400 + 2, int(NOW) + 290))
        p.device_time.nanos = draw(st.integers(0, 999_999_999) | _INT32)
    if draw(st.booleans()):
        lat = st.floats(-90, 90) | _WIDE_FLOATS
        lon = st.floats(-180, 180) | _WIDE_FLOATS
        p.position.lat, p.position.lon = draw(lat), draw(lon)
        p.position.speed_kph, p.position.heading_deg, p.position.accuracy_meters = (
            draw(st.floats(0, 130) | _WIDE_FLOATS) for _ in range(3))
    if draw(st.booleans()):
        p.odometer_miles = draw(st.floats(0, 1e6) | _WIDE_FLOATS)
    if draw(st.booleans()):
        p.sensors.lidar_status, p.sensors.camera_health, p.sensors.radar_status = (draw(_TEXT) for _ in range(3))
    if draw(st.booleans()):
        p.alarm.code, p.alarm.component, p.alarm.description = draw(_TEXT), draw(_TEXT), draw(_TEXT)
        p.alarm.severity, p.alarm.cleared = draw(st.integers(0, 3) | _INT32), draw(st.booleans())
    if draw(st.booleans()):
        p.event.code, p.event.detail = draw(_TEXT), draw(_TEXT)
    return p.SerializeToString()


#: RFC 6979 deterministic ECDSA: the same input gives the same signature, so hypothesis replays and shrinks
#: exactly (a random nonce would change the signature's DER length between runs) and the seeds are stable.
SIGNING = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


def signed(payload: bytes, sequence: int, key: ec.EllipticCurvePrivateKey = KEY) -> frame_pb2.SignedFrame:
    key_id = VEHICLE_KEY.key_id if key is KEY else OTHER_KEY_ID
    return frame_pb2.SignedFrame(sequence=sequence, payload=payload, key_id=key_id,
                                 signature=key.sign(payload, SIGNING))


def _flip(data: bytes, draw: st.DrawFn) -> bytes:
    if not data:
        return b"\x00"
    i = draw(st.integers(0, len(data) - 1))
    return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]


def _truncate(data: bytes, draw: st.DrawFn) -> bytes:
    return data[:draw(st.integers(0, max(len(data) - 1, 0)))]


def _frame_mutation(name: str, f: frame_pb2.SignedFrame, draw: st.DrawFn) -> None:
    """Mutates one frame in place (the wire-level mutations are in :func:`requests`)."""
    if name == "payload_flip":
        f.payload = _flip(f.payload, draw)
    elif name == "payload_truncate":
        f.payload = _truncate(f.payload, draw)
    elif name == "signature_flip":
        f.signature = _flip(f.signature, draw)
    elif name == "signature_truncate":
        f.signature = _truncate(f.signature, draw)
    elif name == "swap_payload_signature":
        f.payload, f.signature = f.signature, f.payload
    elif name == "wrong_key":
        f.signature = OTHER_KEY.sign(f.payload, SIGNING)
    elif name == "other_key_id":
        f.key_id = OTHER_KEY_ID
    elif name == "huge_key_id":
        f.key_id = "k" * 100_000
    elif name == "huge_payload":
        f.payload = f.payload + b"\x00" * (MAX_PAYLOAD_BYTES + 1)
    elif name == "huge_signature":
        f.signature = f.signature + b"\x00" * 1000
    elif name == "sequence_zero":
        f.sequence = 0
    elif name == "sequence_max":
        f.sequence = 2**64 - 1
    elif name == "sequence_other":
        f.sequence = draw(st.integers(0, 2**64 - 1))


FRAME_MUTATIONS = ("payload_flip", "payload_truncate", "signature_flip", "signature_truncate",
                   "swap_payload_signature", "wrong_key", "other_key_id", "huge_key_id", "huge_payload",
                   "huge_signature", "sequence_zero", "sequence_max", "sequence_other")
MUTATIONS = ("none", *FRAME_MUTATIONS, "swap_frames_payloads", "swap_frames_signatures", "duplicate_frame",
             "reverse", "wire_flip", "wire_truncate", "wire_append")


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A valid signed batch of 1-4 frames (arbitrary content), then one mutation, as wire bytes."""
    first = draw(st.integers(1, 2**40))
    frames = [signed(draw(payloads(first + i)), first + i) for i in range(draw(st.integers(1, 4)))]
    mutation = draw(st.just("none") | st.sampled_from(MUTATIONS))  # half of them unmutated
    if mutation in FRAME_MUTATIONS:
        _frame_mutation(mutation, frames[draw(st.integers(0, len(frames) - 1))], draw)
    elif mutation.startswith("swap_frames") and len(frames) > 1:
        a, b = frames[0], frames[-1]
        if mutation == "swap_frames_payloads":
            a.payload, b.payload = b.payload, a.payload
        else:
            a.signature, b.signature = b.signature, a.signature
    elif mutation == "duplicate_frame":
        frames.append(frame_pb2.SignedFrame.FromString(frames[0].SerializeToString()))
    elif mutation == "reverse":
        frames.reverse()
    wire = stream_pb2.StreamTelemetryRequest(frames=stream_pb2.FrameBatch(frames=frames)).SerializeToString()
    if mutation == "wire_flip":
        wire = _flip(wire, draw)
    elif mutation == "wire_truncate":
        wire = _truncate(wire, draw)
    elif mutation == "wire_append":
        wire += draw(st.binary(max_size=64))
    return wire


@st.composite
def signed_junk(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes signed as a payload by the vehicle's key: only verification's decoding stands in the way."""
    sequence = draw(st.integers(0, 2**64 - 1))
    frame = signed(draw(st.binary(max_size=512)), sequence)
    return stream_pb2.StreamTelemetryRequest(frames=stream_pb2.FrameBatch(frames=[frame])).SerializeToString()


# ---- the corpus --------------------------------------------------------------------------------------------

def _expected() -> dict[str, str]:
    return json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {}


class _Recorder:
    """In a saving run: a seed per new outcome, and the smallest crashing input of the run."""

    def __init__(self) -> None:
        self.crash: Path | None = None

    def __call__(self, raw: bytes) -> str:
        try:
            outcome = consume(raw)
        except BaseException:
            if SAVE and (self.crash is None or len(raw) < self.crash.stat().st_size):
                if self.crash is not None:
                    self.crash.unlink(missing_ok=True)
                self.crash = CORPUS / f"crash-{hashlib.sha256(raw).hexdigest()[:16]}.bin"
                self.crash.write_bytes(raw)
            raise
        # One seed per single outcome (a batch whose frames all end alike): mixed batches would multiply the
        # seeds by every combination without reaching any code a single-outcome seed does not.
        if SAVE and len(raw) <= _MAX_SEED_BYTES and "+" not in outcome:
            self._keep_smallest(raw, outcome)
        return outcome

    @staticmethod
    def _keep_smallest(raw: bytes, outcome: str) -> None:
        """The seed of an outcome is the smallest input seen with it (the corpus stays small); the regression
        seeds (``regression-*``, ``crash-*``) are never replaced."""
        expected = _expected()
        seeds = [name for name, seen in expected.items()
                 if seen == outcome and not name.startswith(("regression-", "crash-"))]
        if seeds and all((CORPUS / name).stat().st_size <= len(raw) for name in seeds):
            return
        for name in seeds:
            (CORPUS / name).unlink(missing_ok=True)
            del expected[name]
        name = f"{hashlib.sha256(raw).hexdigest()[:16]}.bin"
        (CORPUS / name).write_bytes(raw)
        EXPECTED.write_text(json.dumps({**expected, name: outcome}, indent=1, sort_keys=True) + "\n")


def _fuzz(strategy: st.SearchStrategy[bytes], examples: int, seed: int | None = None) -> Callable[[], None]:
    record = _Recorder()

    @settings(max_examples=examples, deadline=None, database=None if seed is not None else settings().database,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(raw=strategy)
    def target(raw: bytes) -> None:
        record(raw)

    return hypothesis_seed(seed)(target) if seed is not None else target


STRATEGIES = {"arbitrary_bytes": st.binary(max_size=2048), "mutated_batches": requests(),
              "signed_junk": signed_junk()}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_frames_fuzz(name: str) -> None:
    """Only decode errors and documented rejections, never another exception (short: EXAMPLES each)."""
    _fuzz(STRATEGIES[name], EXAMPLES)()


def _seeds() -> list[str]:
    return sorted(p.name for p in CORPUS.glob("*.bin"))


@pytest.mark.parametrize("name", _seeds())
def test_corpus_seed_replays(name: str) -> None:
    """Every committed seed still gets its recorded outcome (a crash seed: any outcome, no exception)."""
    if not (CORPUS / name).exists():  # only in a saving run (make fuzz-frames): replaced by a smaller seed
        pytest.skip(f"{name} was replaced by a smaller seed of its outcome in this run")
    outcome = consume((CORPUS / name).read_bytes())
    expected = _expected().get(name)
    if expected is not None:
        assert outcome == expected


def test_the_corpus_covers_every_kind_of_outcome() -> None:
    """The seeds reach past decoding: verified frames and the main rejections are all represented."""
    outcomes = set("+".join(_expected().values()).split("+"))
    assert {"DECODE_ERROR", "VERIFIED", "BAD_SIGNATURE", "MALFORMED", "UNKNOWN_KEY", "FRAME_TOO_LARGE",
            "VEHICLE_MISMATCH", "SEQUENCE_MISMATCH", "CLOCK_SKEW", "FRAME_TOO_OLD", "OUT_OF_ORDER"} <= outcomes
    assert set(_expected()) <= set(_seeds()), "expected.json names a seed that is not in the corpus"


@pytest.mark.chaos
@pytest.mark.chaos_id("AT-19")
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_at19_frames_fuzz_full(name: str, chaos_seed: int, chaos_record) -> None:
    """AT-19's frame half at full strength: 2,000 examples per strategy and seed, 0 crashes."""
    examples = max(EXAMPLES, 2000)
    try:
        _fuzz(STRATEGIES[name], examples, seed=chaos_seed)()
    except BaseException:
        chaos_record("AT-19", target=f"frames/{name}", examples=examples, crashes=1)
        raise
    chaos_record("AT-19", target=f"frames/{name}", examples=examples, crashes=0)
