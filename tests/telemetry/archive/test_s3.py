"""The archive on a real S3 server (SeaweedFS, started by the test) with Object Lock: parts written with COMPLIANCE
retention, read back across tiers by version id, signatures verifiable from the downloaded bytes alone, and a
locked part that cannot be deleted."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio

from haulmesh.mission.v1 import mission_pb2
from services.runtime.objectstore import ObjectLocked, ObjectStore, open_object_store
from services.telemetry.domain.archive import PartPlan
from services.telemetry.store import ARCHIVE_DUE_KEY
from tests.conftest import wait_for
from tests.objectstore import SeaweedS3
from tests.trucks import Truck

from .conftest import Tiers, make_tiers
from .test_archive import _mission_event, verify_part_offline


@pytest.fixture
def s3_objects(s3_bucket: str) -> ObjectStore:
    """The archive in a fresh Object Lock bucket of the session's SeaweedFS (tests/conftest.py)."""
    return open_object_store(s3_bucket)


@pytest.fixture
async def s3_tiers(truck: Truck, store_client: redis.asyncio.Redis, s3_objects: ObjectStore) -> AsyncIterator[Tiers]:
    made = make_tiers(truck, store_client, s3_objects)
    yield made
    await made.store.close()


async def test_archive_and_read_back_on_s3_with_object_lock(s3_tiers: Tiers, tmp_path: Path) -> None:
    tiers = s3_tiers
    assert tiers.objects.worm
    await tiers.ingest(list(range(1, 26)))
    run = await tiers.archiver.run(tiers.vehicle, force=True)
    assert (run.frames_archived, run.parts_written) == (25, 1)
    await tiers.ingest([26, 27])
    assert await tiers.store.trim_expired(tiers.vehicle, int(time.time() * 1000) + 10_000) == 25
    stored = await tiers.tiered.frames(tiers.vehicle, count=100)
    assert [f.sequence for f in stored] == list(range(1, 26))
    assert {f.tier for f in stored} == {"archive"}
    assert await tiers.read_all(page=4) == list(range(1, 28))

    [part] = await tiers.store.archive_parts(tiers.vehicle, 0)
    head = await asyncio.to_thread(tiers.objects.head, part.key)
    assert head is not None and head.sha256 == part.sha256 and head.version_id == part.version_id
    assert head.retain_until is not None
    assert abs(head.retain_until.timestamp() * 1000 - part.retain_until_ms) < 2000
    assert head.retain_until > datetime.now(UTC)
    data = await asyncio.to_thread(tiers.objects.get, part.key, version_id=part.version_id)
    assert verify_part_offline(data) == list(range(1, 26))  # P2: from the bytes alone

    # Object Lock: the locked version cannot be deleted; whatever a version-less delete does (at most a delete
    # marker), the archived version still reads, and the reads across tiers still find it.
    with pytest.raises(ObjectLocked):
        await asyncio.to_thread(tiers.objects.delete, part.key, version_id=part.version_id)
    try:
        await asyncio.to_thread(tiers.objects.delete, part.key)
    except ObjectLocked:
        pass
    again = await asyncio.to_thread(tiers.objects.get, part.key, version_id=part.version_id)
    assert again == data
    fresh = make_tiers(tiers.truck, tiers.store._redis, tiers.objects)  # no cached part
    assert await fresh.read_all() == list(range(1, 28))
    await fresh.store.close()


async def test_a_second_create_of_a_part_is_refused_and_adopted(s3_tiers: Tiers) -> None:
    """A run that finds its part already written (the crash case) adopts it: one object version, one entry."""
    tiers = s3_tiers
    await tiers.ingest([1, 2, 3])
    run = await tiers.archiver.run(tiers.vehicle, force=True)
    [part] = await tiers.store.archive_parts(tiers.vehicle, 0)
    # Replay the crash: the index forgets the part, the plan is pending again, the object stays.
    key = f"telemetry:{{{tiers.vehicle}}}:archive"
    assert (await tiers.store.archive_state(tiers.vehicle))[0] == 3 and run.parts_written == 1
    client = tiers.store._redis
    await client.delete(key, f"telemetry:{{{tiers.vehicle}}}:archive_parts")
    pending = PartPlan(tiers.vehicle, "", part.key.split("date=")[1][:10], 1, 3, 3, part.retain_until_ms)
    assert pending.key == part.key
    await client.hset(key, "pending", pending.to_json())
    again = await tiers.archiver.run(tiers.vehicle, force=True)
    assert (again.frames_in_archive, again.parts_written) == (3, 1)
    [adopted] = await tiers.store.archive_parts(tiers.vehicle, 0)
    assert adopted == part  # same object, same version: nothing written twice


async def test_a_completed_mission_never_waits_on_a_stalled_object_store(s3_tiers: Tiers, s3_server: SeaweedS3) -> None:
    """The ``telemetry-missions`` handler also relays commands to trucks: with the S3 server frozen (SIGSTOP: every
    request hangs), a COMPLETED mission's handling returns at once (it only marks the vehicle due), and once the
    server answers again the archive worker archives the mission's frames."""
    tiers = s3_tiers
    await tiers.store._redis.delete(ARCHIVE_DUE_KEY)  # other tests' marks are not this worker's business
    await tiers.archiver.on_mission_event(_mission_event(tiers.vehicle, mission_pb2.Mission.STATE_DISPATCHED,
                                                         dispatched=True))
    await tiers.ingest([1, 2, 3])
    assert s3_server.process is not None
    s3_server.process.send_signal(signal.SIGSTOP)
    try:
        # Before: the handler archived inline and hung on the frozen server (read timeout 120 s, 5 attempts).
        await asyncio.wait_for(tiers.archiver.on_mission_event(
            _mission_event(tiers.vehicle, mission_pb2.Mission.STATE_COMPLETED)), timeout=10)
        assert await tiers.store.archive_due() == [(tiers.vehicle, 3)]
    finally:
        s3_server.process.send_signal(signal.SIGCONT)
    worker = asyncio.create_task(tiers.archiver.serve())
    try:
        async def archived() -> bool:
            return (await tiers.store.archive_state(tiers.vehicle))[0] == 3

        await wait_for(archived, timeout_seconds=30)
        [part] = await tiers.store.archive_parts(tiers.vehicle, 0)
        assert "/carrier=acme/" in part.key
    finally:
        worker.cancel()
