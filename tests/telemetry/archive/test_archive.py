"""The archive tier on a real Valkey and a real object store (a local directory here; the S3 server in
test_s3.py): parts written and read back, reads joined across tiers by sequence, trim only after archive, and
every frame's signature verifiable from the Parquet bytes alone."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
import uuid

import pyarrow.parquet as pq
import pytest
import redis.asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haulmesh.events.v1 import event_pb2, mission_events_pb2
from haulmesh.mission.v1 import mission_pb2
from services.runtime import pki
from services.runtime.objectstore import ObjectStore, ObjectStoreError, open_object_store
from services.telemetry.domain.archive import PartEntry, day_of, manifest_key
from services.telemetry.domain.frames import key_id_of
from services.telemetry.store import ARCHIVE_DUE_KEY
from services.telemetry.usecases import ArchiveConflict
from tests.conftest import Pki, wait_for
from tests.trucks import Truck

from .conftest import Tiers, make_tiers


def verify_part_offline(data: bytes) -> list[int]:
    """What a third party does with a part and nothing else: check every row's signature with the certificate
    its footer names for the row's key id. Returns the sequences verified."""
    table = pq.read_table(io.BytesIO(data), page_checksum_verification=True)
    certs = json.loads(table.schema.metadata[b"haulmesh.certs"])
    rows = table.select(["sequence", "payload", "signature", "key_id"]).to_pylist()
    for row in rows:
        cert = x509.load_pem_x509_certificate(certs[row["key_id"]].encode())
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        assert key_id_of(spki) == row["key_id"]
        cert.public_key().verify(row["signature"], row["payload"], ec.ECDSA(hashes.SHA256()))
    return [r["sequence"] for r in rows]


async def hot_sequences(tiers: Tiers) -> list[int]:
    return [f.sequence for f in await tiers.store.frames(tiers.vehicle, count=100_000)]


async def test_archive_then_trim_keeps_every_frame_readable(tiers: Tiers) -> None:
    await tiers.ingest([1, 2, 3, 5, 8, 9, 10])
    run = await tiers.archiver.run(tiers.vehicle, force=True)
    assert (run.frames_archived, run.parts_written, run.frames_in_archive) == (7, 1, 7)
    # Archived, not yet trimmed: read hot; the index says what is archived.
    upto, pending, frames, _ = await tiers.store.archive_state(tiers.vehicle)
    assert (upto, pending, frames) == (10, "", 7)
    assert await tiers.read_all() == [1, 2, 3, 5, 8, 9, 10]
    await tiers.ingest([11, 12])
    # The hot window has passed for everything (cutoff in the future): only the archived frames go.
    dropped = await tiers.store.trim_expired(tiers.vehicle, int(time.time() * 1000) + 10_000)
    assert dropped == 7 and await hot_sequences(tiers) == [11, 12]
    stored = await tiers.tiered.frames(tiers.vehicle, after=0, count=100)
    assert [(f.sequence, f.tier) for f in stored][:7] == [(s, "archive") for s in (1, 2, 3, 5, 8, 9, 10)]
    assert await tiers.read_all(page=3) == [1, 2, 3, 5, 8, 9, 10, 11, 12]
    # Archived frames are the exact envelopes: same bytes as ingested.
    again = await tiers.tiered.frames(tiers.vehicle, after=4, through=8, count=10)
    assert [f.sequence for f in again] == [5, 8]
    assert again[0].payload and again[0].key_id == tiers.truck.key_id


async def test_a_second_run_writes_nothing_and_late_frames_make_a_new_part(tiers: Tiers) -> None:
    await tiers.ingest(list(range(1, 21)))
    assert (await tiers.archiver.run(tiers.vehicle, force=True)).parts_written == 1
    assert (await tiers.archiver.run(tiers.vehicle, force=True)).parts_written == 0
    await tiers.ingest([21, 22])
    run = await tiers.archiver.run(tiers.vehicle, force=True)
    assert (run.parts_written, run.frames_archived, run.frames_in_archive) == (1, 2, 22)
    parts = await tiers.store.archive_parts(tiers.vehicle, 0)
    assert [(p.first, p.last, p.count) for p in parts] == [(1, 20, 20), (21, 22, 2)]
    for part in parts:  # the manifest object per part says what the index says
        assert PartEntry.from_json(await asyncio.to_thread(tiers.objects.get, manifest_key(part.key))) == part


async def test_signatures_verify_from_the_parquet_bytes_alone(tiers: Tiers) -> None:
    await tiers.ingest(list(range(1, 31)))
    await tiers.archiver.run(tiers.vehicle, force=True)
    [part] = await tiers.store.archive_parts(tiers.vehicle, 0)
    data = await asyncio.to_thread(tiers.objects.get, part.key)
    assert verify_part_offline(data) == list(range(1, 31))
    meta = pq.read_metadata(io.BytesIO(data))
    assert meta.row_group(0).column(1).compression == "ZSTD"
    assert part.key.startswith(f"archive/v1/carrier=_unassigned/vehicle={tiers.vehicle}/date=")


async def test_only_due_frames_are_archived_and_the_carrier_partitions(truck: Truck,
                                                                       store_client: redis.asyncio.Redis,
                                                                       local_objects: ObjectStore) -> None:
    tiers = make_tiers(truck, store_client, local_objects, archive_after_seconds=3600.0)
    await tiers.store.remember_carrier(tiers.vehicle, "acme")
    await tiers.ingest([1, 2, 3])
    assert (await tiers.archiver.run(tiers.vehicle)).frames_archived == 0  # received just now: not due
    lagless = make_tiers(truck, store_client, local_objects, archive_after_seconds=0.001)
    await asyncio.sleep(0.01)
    run = await lagless.archiver.run(tiers.vehicle)
    assert run.frames_archived == 3
    [part] = await tiers.store.archive_parts(tiers.vehicle, 0)
    assert "/carrier=acme/" in part.key
    await tiers.store.close()
    await lagless.store.close()


async def test_trim_waits_for_the_archive(tiers: Tiers, tmp_path) -> None:
    """The archive cannot be written (its directory was replaced by a file): nothing is archived, nothing
    trimmed; once it can, the same frames are archived once, and only then trimmed."""
    await tiers.ingest([1, 2, 3])
    where = tmp_path / "broken"
    broken = make_tiers(tiers.truck, tiers.store._redis, open_object_store(str(where)))
    shutil.rmtree(where)
    where.write_text("not a directory")
    with pytest.raises((ObjectStoreError, OSError)):
        await broken.archiver.run(tiers.vehicle, force=True)
    assert await tiers.store.trim_expired(tiers.vehicle, int(time.time() * 1000) + 10_000) == 0
    assert await hot_sequences(tiers) == [1, 2, 3]
    assert (await tiers.store.archive_state(tiers.vehicle))[1]  # the plan waits, to be finished as planned
    assert (await tiers.archiver.run(tiers.vehicle, force=True)).frames_archived == 3
    assert await tiers.store.trim_expired(tiers.vehicle, int(time.time() * 1000) + 10_000) == 3
    assert await tiers.read_all() == [1, 2, 3]
    await broken.store.close()


async def test_a_conflicting_part_stops_archiving_and_trimming(tiers: Tiers) -> None:
    """Someone else's bytes under a part's name are not adopted: the run fails, nothing is committed."""
    device_time = time.time()
    await tiers.ingest([1, 2], device_time=device_time)
    # The partition is the frames' UTC day of device time (not the clock's day when the test runs: midnight).
    plan_key = (f"archive/v1/carrier=_unassigned/vehicle={tiers.vehicle}/date="
                f"{day_of(int(device_time * 1000))}/part-{1:020d}-{2:020d}.parquet")
    await asyncio.to_thread(tiers.objects.put_new, plan_key, b"not these frames")
    with pytest.raises(ArchiveConflict):
        await tiers.archiver.run(tiers.vehicle, force=True)
    assert (await tiers.store.archive_state(tiers.vehicle))[0] == 0
    assert await tiers.store.trim_expired(tiers.vehicle, int(time.time() * 1000) + 10_000) == 0


async def test_certificate_rotation_puts_both_certificates_in_the_part(tiers: Tiers, mesh_pki: Pki) -> None:
    await tiers.ingest([1, 2])
    rotated = Truck(tiers.vehicle, pki.issue(mesh_pki.ca, pki.identity_for("vehicle", tiers.vehicle), valid_days=1),
                    mesh_pki.ca.certificate_pem, boot_id=tiers.truck.boot_id)
    tiers.truck = rotated
    await tiers.ingest([3, 4])
    await tiers.archiver.run(tiers.vehicle, force=True)
    [part] = await tiers.store.archive_parts(tiers.vehicle, 0)
    data = await asyncio.to_thread(tiers.objects.get, part.key)
    assert verify_part_offline(data) == [1, 2, 3, 4]
    assert len(json.loads(pq.read_schema(io.BytesIO(data)).metadata[b"haulmesh.certs"])) == 2


# ---- P1 / P4: any interleaving of ingest, archive and trim; reads return exactly what was stored -------------

steps = st.lists(st.one_of(
    st.tuples(st.just("ingest"), st.integers(1, 6), st.integers(0, 3)),  # frames, gap before them
    st.tuples(st.just("archive"), st.integers(0, 1), st.just(0)),  # 1: everything, 0: through a past sequence
    st.tuples(st.just("trim"), st.just(0), st.just(0)),
), min_size=1, max_size=12)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps, data=st.data())
def test_reads_return_exactly_the_stored_set_whatever_the_interleaving(store_url: str, mesh_pki: Pki, tmp_path,
                                                                        plan, data) -> None:
    truck = Truck.mint(mesh_pki.ca, f"PROP-{uuid.uuid4().hex[:8]}")
    objects = open_object_store(str(tmp_path / uuid.uuid4().hex))

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(store_url)
        tiers = make_tiers(truck, client, objects)
        stored: list[int] = []
        try:
            for op, n, gap in plan:
                if op == "ingest":
                    start = (stored[-1] if stored else 0) + gap + 1
                    batch = list(range(start, start + n))
                    await tiers.ingest(batch)
                    stored += batch
                elif op == "archive" and stored:
                    through = 0 if n else data.draw(st.sampled_from(stored))
                    await tiers.archiver.archive_vehicle(tiers.vehicle, through=through)
                elif op == "trim":
                    await tiers.store.trim_expired(tiers.vehicle, int(time.time() * 1000) + 10_000)
                upto = (await tiers.store.archive_state(tiers.vehicle))[0]
                hot = await hot_sequences(tiers)
                # P4: the hot stream never lost a frame that is not archived.
                assert all(s in hot for s in stored if s > upto)
                # P1: across the tiers, every stored sequence exactly once, in order.
                assert await tiers.read_all(page=data.draw(st.integers(1, 5))) == stored
        finally:
            await tiers.store.close()
            await client.aclose()

    asyncio.run(run())


def _mission_event(vehicle: str, state: int, *, dispatched: bool = False) -> event_pb2.Event:
    mission = mission_pb2.Mission(name=f"missions/M-{vehicle}", vehicle=f"vehicles/{vehicle}", state=state)
    if dispatched:
        return event_pb2.Event(carrier="carriers/acme", mission_dispatched=mission_events_pb2.MissionDispatched(
            mission=mission))
    return event_pb2.Event(carrier="carriers/acme", mission_state_changed=mission_events_pb2.MissionStateChanged(
        mission=mission))


async def test_a_completed_mission_is_marked_and_the_worker_archives_it_at_once(tiers: Tiers) -> None:
    """Frames are fresh (far inside the archive lag), yet COMPLETED archives them right away: the consumer's
    handler only marks the vehicle due, and the archive worker, woken by the mark, archives it."""
    await tiers.store._redis.delete(ARCHIVE_DUE_KEY)  # other tests' marks are not this worker's business
    tiers.archiver.due_poll_seconds = 3600.0  # so only the mark's wake-up can start it in time
    worker = asyncio.create_task(tiers.archiver.serve())
    try:
        await tiers.archiver.on_mission_event(_mission_event(tiers.vehicle, mission_pb2.Mission.STATE_DISPATCHED,
                                                             dispatched=True))
        await tiers.ingest([1, 2, 3, 4])
        await tiers.archiver.on_mission_event(_mission_event(tiers.vehicle, mission_pb2.Mission.STATE_ARRIVED))
        assert (await tiers.store.archive_due()) == []  # not settled yet: nothing marked
        await tiers.archiver.on_mission_event(_mission_event(tiers.vehicle, mission_pb2.Mission.STATE_COMPLETED))

        async def archived() -> bool:
            return (await tiers.store.archive_state(tiers.vehicle))[0] == 4

        await wait_for(archived, timeout_seconds=60)  # promptly: woken by the mark, not by its (hourly) poll
        upto, _, frames, carrier = await tiers.store.archive_state(tiers.vehicle)
        assert (upto, frames, carrier) == (4, 4, "acme")
        await wait_for(_no_marks(tiers), timeout_seconds=60)  # unmarked once archived
        [part] = await tiers.store.archive_parts(tiers.vehicle, 0)
        assert f"carrier=acme/vehicle={tiers.vehicle}/" in part.key
    finally:
        worker.cancel()


def _no_marks(tiers: Tiers):
    async def check() -> bool:
        return await tiers.store.archive_due() == []
    return check


async def test_two_replicas_archiving_at_once_write_each_part_once(tiers: Tiers, truck: Truck,
                                                                    store_client: redis.asyncio.Redis,
                                                                    local_objects: ObjectStore) -> None:
    """Two archivers (as two telemetry replicas) on one vehicle: every frame in exactly one part."""
    day = 86400.0
    now = time.time()
    for back in (3, 2, 1, 0):  # four days of frames: four parts
        start = (3 - back) * 5 + 1
        await tiers.ingest(list(range(start, start + 5)), device_time=now - back * day)
    other = make_tiers(truck, store_client, local_objects)
    runs = await asyncio.gather(tiers.archiver.run(tiers.vehicle, force=True),
                                other.archiver.run(tiers.vehicle, force=True))
    assert sum(r.frames_archived for r in runs) == 20 and sum(r.parts_written for r in runs) == 4
    parts = await tiers.store.archive_parts(tiers.vehicle, 0)
    assert [(p.first, p.last) for p in parts] == [(1, 5), (6, 10), (11, 15), (16, 20)]
    keys = [k for k in local_objects.list("archive/v1/carrier=") if k.endswith(".parquet")]
    assert sorted(keys) == sorted(p.key for p in parts)
    await other.store.close()


async def test_the_periodic_job_skips_a_vehicle_another_replica_holds(truck: Truck, store_client: redis.asyncio.Redis,
                                                                       local_objects: ObjectStore) -> None:
    tiers = make_tiers(truck, store_client, local_objects, archive_after_seconds=0.001)
    await tiers.ingest([1, 2])
    await asyncio.sleep(0.01)
    assert await tiers.store.take_archive_lease(tiers.vehicle, "another-replica", 60)
    await tiers.archiver.run(tiers.vehicle)
    assert (await tiers.store.archive_state(tiers.vehicle))[0] == 0  # left to the holder
    await tiers.store.drop_archive_lease(tiers.vehicle, "another-replica")
    await tiers.archiver.run(tiers.vehicle)
    assert (await tiers.store.archive_state(tiers.vehicle))[0] == 2
    assert await tiers.store.take_archive_lease(tiers.vehicle, "x", 1)  # released after the run
    await tiers.store.close()
