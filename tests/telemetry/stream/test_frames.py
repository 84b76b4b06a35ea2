"""Properties of frame verification and the sequencing rules (pure), and of the store's atomic version."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import EmbeddedStore, Unavailable, connect_async
from services.telemetry.config import TelemetryConfig
from services.telemetry.domain import (
    MAX_PAYLOAD_BYTES,
    FrameRejected,
    RejectReason,
    Verified,
    key_from_spki,
    order_batch,
    plan_sequences,
    verify_frame,
)
from services.telemetry.store import TelemetryStore

KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
VEHICLE_KEY = key_from_spki(KEY.public_key().public_bytes(serialization.Encoding.DER,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
KEYS = {VEHICLE_KEY.key_id: VEHICLE_KEY}
CONFIG = TelemetryConfig(clock_skew_seconds=30, max_frame_age_seconds=3600)
NOW = 1_800_000_000.0
VEHICLE = "AU-TRK-1001"


def payload(sequence: int, *, vehicle: str = VEHICLE, device_time: float = NOW, state: str = "enroute") -> bytes:
    p = frame_pb2.FramePayload(vehicle_id=vehicle, sequence=sequence, boot_id="b", vehicle_state=state,
                               kind=frame_pb2.FramePayload.KIND_POSITION)
    p.device_time.FromNanoseconds(int(device_time * 1e9))
    return p.SerializeToString(deterministic=True)


def check(sequence: int, body: bytes, signature: bytes, key_id: str = VEHICLE_KEY.key_id) -> Verified | FrameRejected:
    return verify_frame(sequence, body, signature, key_id, vehicle_id=VEHICLE, keys=KEYS, now_seconds=NOW,
                        config=CONFIG)


def sign(body: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> bytes:
    return key.sign(body, ec.ECDSA(hashes.SHA256()))


sequences = st.integers(min_value=1, max_value=2**53)
offsets = st.floats(min_value=-3600, max_value=30, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(sequence=sequences, offset=offsets, state=st.text(max_size=32))
def test_a_well_signed_frame_verifies_and_decodes(sequence: int, offset: float, state: str) -> None:
    body = payload(sequence, device_time=NOW + offset, state=state)
    result = check(sequence, body, sign(body))
    assert isinstance(result, Verified), result
    assert result.payload_bytes == body and result.payload.vehicle_state == state


@settings(max_examples=60, deadline=None)
@given(sequence=sequences, data=st.data())
def test_any_change_to_payload_or_signature_is_refused(sequence: int, data: st.DataObject) -> None:
    body = payload(sequence)
    signature = sign(body)
    index = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1:]
    assert check(sequence, tampered, signature).reason is RejectReason.BAD_SIGNATURE
    index = data.draw(st.integers(0, 71)) % len(signature)  # DER signatures vary in length
    bad_signature = signature[:index] + bytes([signature[index] ^ flip]) + signature[index + 1:]
    assert check(sequence, body, bad_signature).reason is RejectReason.BAD_SIGNATURE
    assert check(sequence, body, sign(body, OTHER_KEY)).reason is RejectReason.BAD_SIGNATURE
    assert check(sequence, body, signature, key_id="0" * 64).reason is RejectReason.UNKNOWN_KEY


@settings(max_examples=60, deadline=None)
@given(sequence=sequences, other=sequences, offset=st.floats(min_value=-10 * 3600, max_value=10 * 3600,
                                                             allow_nan=False))
def test_vehicle_sequence_and_clock_rules(sequence: int, other: int, offset: float) -> None:
    other_vehicle = payload(sequence, vehicle="AU-TRK-9999")
    assert check(sequence, other_vehicle, sign(other_vehicle)).reason is RejectReason.VEHICLE_MISMATCH
    body = payload(other)
    result = check(sequence, body, sign(body))
    assert (result.reason is RejectReason.SEQUENCE_MISMATCH) if other != sequence else isinstance(result, Verified)
    timed = payload(sequence, device_time=NOW + offset)
    result = check(sequence, timed, sign(timed))
    if offset > CONFIG.clock_skew_seconds + 0.001:
        assert result.reason is RejectReason.CLOCK_SKEW
    elif offset < -CONFIG.max_frame_age_seconds - 0.001:
        assert result.reason is RejectReason.FRAME_TOO_OLD
    elif -CONFIG.max_frame_age_seconds + 0.001 < offset < CONFIG.clock_skew_seconds - 0.001:
        assert isinstance(result, Verified)


def test_size_and_malformed_bounds() -> None:
    big = payload(1, state="x" * MAX_PAYLOAD_BYTES)
    assert check(1, big, sign(big)).reason is RejectReason.FRAME_TOO_LARGE
    junk = b"\x08"
    assert check(1, junk, sign(junk)).reason is RejectReason.MALFORMED
    empty_kind = frame_pb2.FramePayload(vehicle_id=VEHICLE, sequence=1, boot_id="b").SerializeToString()
    assert check(1, empty_kind, sign(empty_kind)).reason is RejectReason.MALFORMED
    assert check(1, payload(1), b"\x30" * 80).reason is RejectReason.BAD_SIGNATURE
    assert check(0, payload(0), sign(payload(0))).reason is RejectReason.MALFORMED


@given(st.lists(st.integers(min_value=1, max_value=50), max_size=40))
def test_order_batch_keeps_a_strictly_ascending_subsequence(batch: list[int]) -> None:
    kept = [s for s, ok in zip(batch, order_batch(batch), strict=True) if ok]
    assert kept == sorted(set(kept)) and len(kept) == len(set(kept))
    if batch:
        assert order_batch(batch)[0] and kept[-1] == max(batch)


ascending = st.lists(st.integers(min_value=1, max_value=200), max_size=30).map(lambda xs: sorted(set(xs)))


@given(high_water=st.integers(min_value=0, max_value=100), batch=ascending)
def test_plan_stores_each_sequence_once_and_counts_gaps(high_water: int, batch: list[int]) -> None:
    plan = plan_sequences(high_water, batch)
    assert sorted(plan.store + plan.duplicates) == batch
    assert all(s > high_water for s in plan.store) and all(s <= high_water for s in plan.duplicates)
    assert plan.high_water == max([high_water, *batch])
    # Everything between the old and new mark is either stored now or lost.
    assert plan.lost == (plan.high_water - high_water) - len(plan.store)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(ascending, min_size=1, max_size=5))
def test_store_applies_the_same_rules_atomically(store_url: str, batches: list[list[int]]) -> None:
    """The store's Lua commit agrees with plan_sequences, batch after batch, against a real Valkey."""
    vehicle = f"PROP-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(store_url)
        store = TelemetryStore(client, TelemetryConfig())
        try:
            high_water, lost, expected = 0, 0, []
            for batch in batches:
                frames = [Verified(s, payload(s), b"sig", "k", frame_pb2.FramePayload()) for s in batch]
                result = await store.commit(vehicle, frames, received=len(batch), rejects=Counter())
                plan = plan_sequences(high_water, batch, set(expected))
                assert (result.stored, result.duplicates, result.passed, result.high_water) == (
                    plan.store, plan.duplicates, plan.passed, plan.high_water)
                high_water, lost, expected = plan.high_water, lost + plan.lost, expected + plan.store
            stored = [f.sequence for f in await store.frames(vehicle, count=10_000)]
            assert stored == expected
            counters = await store.counters(vehicle)
            assert counters.get("lost", 0) == lost and counters.get("high_water", 0) == high_water
        finally:
            await store.close()
            await client.aclose()

    asyncio.run(run())


def test_the_ack_interval_comes_from_the_environment_and_is_checked() -> None:
    assert TelemetryConfig.from_env({"HAULMESH_TELEMETRY_ACK_INTERVAL_SECONDS": "0.05"}).ack_interval_seconds == 0.05
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ValueError, match="HAULMESH_TELEMETRY_ACK_INTERVAL_SECONDS"):
            TelemetryConfig.from_env({"HAULMESH_TELEMETRY_ACK_INTERVAL_SECONDS": bad})


async def test_a_passed_sequence_is_refused_not_taken_for_a_duplicate(store_client: redis.asyncio.Redis) -> None:
    """Two commits of one vehicle in flight (IngestTelemetry commits with after=0): the later one lands first, the
    earlier fails, and 101 is missing under a high-water of 110. Its resend is neither stored nor acknowledged as
    a duplicate (it would be lost without anyone knowing): it is passed, refused. A sequence that is stored, or
    at or below the archived watermark (its entry may be trimmed), is a duplicate."""
    vehicle = f"PASS-{uuid.uuid4().hex[:8]}"
    store = TelemetryStore(store_client, TelemetryConfig())

    def frames(*sequences: int) -> list[Verified]:
        return [Verified(s, payload(s, vehicle=vehicle), b"sig", "k", frame_pb2.FramePayload()) for s in sequences]

    try:
        await store.commit(vehicle, frames(*range(1, 101)))
        await store.commit(vehicle, frames(*range(102, 111)))
        result = await store.commit(vehicle, frames(101))
        assert (result.stored, result.duplicates, result.passed, result.high_water) == ([], [], [101], 110)
        assert await store.frame(vehicle, 101) is None
        counters = await store.counters(vehicle)
        assert counters["rejected:SEQUENCE_PASSED"] == 1 and counters["lost"] == 1 and "duplicates" not in counters
        # Stored: a duplicate. Archived through 100 and trimmed from the hot stream: still a duplicate.
        await store_client.hset(f"telemetry:{{{vehicle}}}:archive", "upto", 100)
        await store_client.xdel(TelemetryStore.frames_key(vehicle), "50-0")
        result = await store.commit(vehicle, frames(50, 101, 110))
        assert (result.duplicates, result.passed) == ([50, 110], [101])
    finally:
        await store.close()


async def test_a_batch_needing_a_higher_high_water_is_refused_and_stores_nothing(
        store_client: redis.asyncio.Redis) -> None:
    """``submit(after=110)`` against a high-water of 100 (an earlier batch of the stream failed): refused
    (HIGH_WATER_BEHIND), nothing stored, nothing counted, the high-water unchanged."""
    vehicle = f"HWB-{uuid.uuid4().hex[:8]}"
    store = TelemetryStore(store_client, TelemetryConfig())

    def frames(*sequences: int) -> list[Verified]:
        return [Verified(s, payload(s, vehicle=vehicle), b"sig", "k", frame_pb2.FramePayload()) for s in sequences]

    try:
        await store.commit(vehicle, frames(*range(1, 101)))
        before = await store.counters(vehicle)
        with pytest.raises(Exception, match="HIGH_WATER_BEHIND"):
            await store.submit(vehicle, frames(*range(111, 121)), received=10, after=110)
        assert await store.counters(vehicle) == before and before["high_water"] == 100
        assert await store.frames(vehicle, after=100) == []
    finally:
        await store.close()


async def test_a_groups_commit_survives_a_lost_script_cache_and_is_refused_unless_fsynced(
        tmp_path: Path) -> None:
    """On one store the group's commit scripts, the probe and WAITAOF go in one pipeline (one round trip: what that
    saves is make bench's to show): a store that lost its scripts (restarted) gets them loaded and the group sent
    again, stored once; a store whose fsync cannot be confirmed (AOF off: WAITAOF refuses) fails the group with
    nothing acknowledged, though the writes ran."""
    store_process = EmbeddedStore(tmp_path / "store")
    client = connect_async(store_process.ensure_running().url)
    store = TelemetryStore(client, TelemetryConfig())
    vehicle = f"TRIP-{uuid.uuid4().hex[:8]}"

    def frames(*sequences: int) -> list[Verified]:
        return [Verified(s, payload(s, vehicle=vehicle), b"sig", "k", frame_pb2.FramePayload()) for s in sequences]

    try:
        assert (await store.commit(vehicle, frames(1, 2))).stored == [1, 2]
        await client.script_flush()
        assert (await store.commit(vehicle, frames(3))).stored == [3]
        assert [f.sequence for f in await store.frames(vehicle)] == [1, 2, 3]
        await client.config_set("appendonly", "no")
        with pytest.raises(Unavailable, match="appendonly is disabled"):
            await store.commit(vehicle, frames(4))
        assert await store.frame(vehicle, 4) is not None  # written, never acknowledged: a resend is a duplicate
    finally:
        await store.close()
        await client.aclose()
        store_process.stop()
