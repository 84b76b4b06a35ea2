"""The archive's bounds and safety edges, on a real Valkey and a real local object store: the retention walk stops
at the archived watermark, parts are read by row group and downloaded once, only durable frames are archived, a
taken key is adopted only from its bytes, and reads and watches never skip frames trimmed under them."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis.asyncio

from services.runtime import EmbeddedStore
from services.runtime.objectstore import LOCAL_INTERNAL_DIR, ObjectStore
from services.telemetry.convert import part_bytes
from services.telemetry.domain import FrameScope
from services.telemetry.domain.archive import ROW_GROUP_FRAMES, day_of, part_key, partition
from services.telemetry.store import TelemetryStore
from services.telemetry.usecases import ArchiveConflict, ArchiveUnavailable, TieredFrames
from services.telemetry.usecases.reads import Reads
from tests.trucks import Truck

from .conftest import Tiers, make_tiers
from .test_archive import verify_part_offline

FUTURE_MS = int(time.time() * 1000) + 86_400_000  # a retention cut-off past every frame: only the watermark holds


class CountingRedis(redis.asyncio.Redis):
    """A real client that counts the XRANGE calls it sends (the walk's cost)."""

    xranges = 0

    async def execute_command(self, *args, **options):  # type: ignore[no-untyped-def]
        if str(args[0]).upper() == "XRANGE":
            self.xranges += 1
        return await super().execute_command(*args, **options)


async def test_the_retention_walk_stops_at_the_archived_watermark(truck: Truck, store_url: str,
                                                                  local_objects: ObjectStore) -> None:
    client = CountingRedis.from_url(store_url)
    tiers = make_tiers(truck, client, local_objects)
    try:
        await tiers.ingest(list(range(1, 11)))
        await tiers.archiver.archive_vehicle(tiers.vehicle, through=10)
        for start in range(11, 3011, 500):  # 3,000 expired but unarchived frames after the watermark
            await tiers.ingest(list(range(start, start + 500)))
        client.xranges = 0
        assert await tiers.store.trim_expired(tiers.vehicle, FUTURE_MS, chunk=100) == 10
        # Before: the walk read all 3,010 entries (31 chunks) to find no unexpired one; now it stops at 10.
        assert client.xranges <= 2
        assert (await tiers.store.frames(tiers.vehicle, count=1))[0].sequence == 11
    finally:
        await tiers.store.close()
        await client.aclose()


async def test_parts_are_row_groups_read_one_at_a_time_and_downloaded_once(tiers: Tiers) -> None:
    frames = 2 * ROW_GROUP_FRAMES + 500
    for start in range(1, frames + 1, 500):
        await tiers.ingest(list(range(start, start + 500)))
    await tiers.archiver.run(tiers.vehicle, force=True)
    [part] = await tiers.store.archive_parts(tiers.vehicle, 0)
    data = await asyncio.to_thread(tiers.objects.get, part.key)
    meta = pq.read_metadata(io.BytesIO(data))
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 500]
    assert verify_part_offline(data) == list(range(1, frames + 1))  # P2 holds with row groups
    await tiers.store.trim_expired(tiers.vehicle, FUTURE_MS)
    assert await tiers.store.first_hot(tiers.vehicle) == 0

    # Eight readers missing the same part at once: one download, then each page decodes only its row group.
    reader = TieredFrames(tiers.store, tiers.objects)
    pages = await asyncio.gather(*(reader.frames(tiers.vehicle, after=1500 + i, count=1) for i in range(8)))
    assert [[f.sequence for f in page] for page in pages] == [[1501 + i] for i in range(8)]
    assert reader.downloads == 1
    opened = reader._parts[part.key]
    assert opened.groups == [(1, 1000), (1001, 2000), (2001, 2500)]
    before = opened.groups_read
    assert [f.sequence for f in await reader.frames(tiers.vehicle, after=2400, count=1)] == [2401]
    assert opened.groups_read == before + 1 and reader.downloads == 1
    # A page across a group boundary reads the two groups it needs, in order.
    page = await reader.frames(tiers.vehicle, after=995, count=10)
    assert [f.sequence for f in page] == list(range(996, 1006))


@pytest.fixture
async def own_store(tmp_path: Path) -> AsyncIterator[redis.asyncio.Redis]:
    """A Valkey of this test's own (its AOF is switched off and on)."""
    store = EmbeddedStore(tmp_path / "store")
    info = store.ensure_running()
    client = redis.asyncio.Redis.from_url(info.url)
    try:
        yield client
    finally:
        await client.aclose()
        store.stop()


async def test_only_durable_frames_are_archived(truck: Truck, own_store: redis.asyncio.Redis,
                                                local_objects: ObjectStore) -> None:
    tiers = make_tiers(truck, own_store, local_objects)
    try:
        await tiers.ingest([1, 2, 3])
        await own_store.config_set("appendonly", "no")  # the store can no longer confirm an fsync
        with pytest.raises(ArchiveUnavailable):
            await tiers.archiver.run(tiers.vehicle, force=True)
        assert await tiers.store.archive_state(tiers.vehicle) == (0, "", 0, "")
        assert [k for k in local_objects.list("archive/v1/carrier=")] == []
        await own_store.config_set("appendonly", "yes")

        async def archived() -> bool:
            try:
                return (await tiers.archiver.run(tiers.vehicle, force=True)).frames_in_archive == 3
            except ArchiveUnavailable:
                return False  # the AOF is being rewritten after it was switched on

        from tests.conftest import wait_for
        await wait_for(archived, timeout_seconds=30, interval_seconds=0.2)
    finally:
        await tiers.store.close()


async def test_a_taken_key_is_adopted_from_its_bytes_never_from_its_label(tiers: Tiers) -> None:
    """The key of the part to write holds other bytes whose recorded sha256 says they are ours: the bytes are
    read (and fail their digest), so nothing is adopted, committed or trimmed."""
    device_time = time.time()
    await tiers.ingest([1, 2, 3], device_time=device_time)
    stored = await tiers.store.frames(tiers.vehicle, count=10)
    certificates = {k: pem.decode() for k, pem, _ in await tiers.store.certificates(tiers.vehicle)}
    ours = part_bytes(tiers.vehicle, "", stored, certificates)
    key = part_key(partition("", tiers.vehicle, day_of(int(device_time * 1000))), 1, 3)
    await asyncio.to_thread(tiers.objects.put_new, key, b"someone else's bytes")
    sidecar = Path(tiers.objects.root) / LOCAL_INTERNAL_DIR / "meta" / f"{key}.json"  # type: ignore[attr-defined]
    meta = json.loads(sidecar.read_bytes())
    meta["sha256"], meta["size"] = hashlib.sha256(ours).hexdigest(), len(ours)
    forged = sidecar.with_suffix(".forged")
    forged.write_text(json.dumps(meta))
    os.replace(forged, sidecar)
    with pytest.raises(ArchiveConflict):
        await tiers.archiver.run(tiers.vehicle, force=True)
    assert (await tiers.store.archive_state(tiers.vehicle))[0] == 0
    assert await tiers.store.trim_expired(tiers.vehicle, FUTURE_MS) == 0


class TrimsUnderTheReader(TelemetryStore):
    """The real store, with the retention trim landing at the worst moment for a reader: right after the reader
    looked at the hot stream's first sequence (``first_hot``) or started a live read (``wait_frames``)."""

    trim_on: str = ""

    async def _trim_once(self, where: str, vehicle_id: str) -> None:
        if self.trim_on == where:
            self.trim_on = ""
            await self.trim_expired(vehicle_id, FUTURE_MS)

    async def first_hot(self, vehicle_id: str) -> int:
        first = await super().first_hot(vehicle_id)
        await self._trim_once("first_hot", vehicle_id)
        return first

    async def wait_frames(self, vehicle_id: str, after: int, **options):  # type: ignore[no-untyped-def]
        await self._trim_once("wait_frames", vehicle_id)
        return await super().wait_frames(vehicle_id, after, **options)


def racing_tiers(tiers: Tiers) -> tuple[TrimsUnderTheReader, TieredFrames]:
    store = TrimsUnderTheReader(tiers.store._redis, tiers.config)
    return store, TieredFrames(store, tiers.objects)


async def test_a_read_that_meets_a_trim_retries_and_reads_the_archive(tiers: Tiers) -> None:
    await tiers.ingest(list(range(1, 9)))
    await tiers.archiver.archive_vehicle(tiers.vehicle, through=6)
    store, reader = racing_tiers(tiers)
    store.trim_on = "first_hot"  # the reader saw first_hot = 1, then 1..6 were trimmed before its hot read
    page = await reader.frames(tiers.vehicle, after=0, count=10)
    assert [(f.sequence, f.tier) for f in page] == [(s, "archive") for s in range(1, 7)]
    assert store.trim_on == ""  # the trim did happen in between
    assert [f.sequence for f in await reader.frames(tiers.vehicle, after=6, count=10)] == [7, 8]
    await store.close()


async def _watch(reads: Reads, vehicle: str, cursor: int, want: int) -> list[tuple[int, int]]:
    got: list[tuple[int, int]] = []
    async for frame in reads.follow(FrameScope(vehicle, f"vehicles/{vehicle}"), cursor, set(),
                                    done=lambda: len(got) >= want):
        got.append((frame.signed_frame.sequence, frame.tier))
        if len(got) >= want:
            break
    return got


async def test_a_watch_replays_archived_frames_then_follows_the_hot_stream(tiers: Tiers) -> None:
    await tiers.ingest(list(range(1, 11)))
    await tiers.archiver.run(tiers.vehicle, force=True)
    await tiers.store.trim_expired(tiers.vehicle, FUTURE_MS)
    await tiers.ingest([11, 12])
    reads = Reads(tiers.store, tiers.config, tiered=tiers.tiered)
    got = await asyncio.wait_for(_watch(reads, tiers.vehicle, 2, 10), 30)
    assert [s for s, _ in got] == list(range(3, 13))
    assert {t for s, t in got if s <= 10} == {2} and {t for s, t in got if s > 10} == {1}  # ARCHIVE, HOT


async def test_a_watch_resuming_on_the_hot_stream_reads_a_stretch_trimmed_ahead_of_it(tiers: Tiers) -> None:
    await tiers.ingest(list(range(1, 11)))
    await tiers.archiver.archive_vehicle(tiers.vehicle, through=8)
    store, reader = racing_tiers(tiers)
    reads = Reads(store, tiers.config, tiered=reader)
    # The replay finds 4.. hot and hands over to the live read; 1..8 are trimmed just before it (archived).
    store.trim_on = "wait_frames"
    got = await asyncio.wait_for(_watch(reads, tiers.vehicle, 3, 7), 30)
    assert [s for s, _ in got] == list(range(4, 11))  # before: 9, 10 only (4..8 skipped)
    assert store.trim_on == ""
    await store.close()
