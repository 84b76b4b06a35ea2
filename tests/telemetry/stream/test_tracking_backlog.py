"""Mission tracking's backlog is bounded and drained in rounds (AT-10's memory, docs/capacity.md).

Stored frames wait for their derived events in MissionTracking's queue, after the ack. Under AT-10's load (500
trucks, a slow store, a CPU-starved process) its one worker read each vehicle's mission one round trip at a time
and fell behind the trucks for good: the queue held every frame since (decoded, ≈ 2 KB each) and the process grew
past its memory bound while flow control's own count stayed low. Now a round reads the stale missions of all its
vehicles in one pipelined round trip, and the streams stop reading while the backlog is at its bound.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import pytest
import redis.asyncio

from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from services.runtime import ResourceExhausted, connect_async, event_stream_key, new_id
from services.telemetry.config import TelemetryConfig
from services.telemetry.domain import Verified, vehicle_key
from services.telemetry.store import TelemetryStore
from services.telemetry.usecases import MissionTracking, Streams
from tests.conftest import Pki, wait_for
from tests.trucks import Truck

from ..helpers import batch
from ..test_chaos_load import via_proxy

#: Latency the proxy adds each way between tracking and the store: a round trip costs twice this.
LATENCY_SECONDS = 0.25
VEHICLES = 200


def _stored_frame(vehicle_id: str, sequence: int) -> Verified:
    payload = frame_pb2.FramePayload(vehicle_id=vehicle_id, sequence=sequence, boot_id="boot",
                                     kind=frame_pb2.FramePayload.KIND_POSITION,
                                     position=frame_pb2.Position(lat=30.2, lon=-97.7))
    payload.device_time.GetCurrentTime()
    return Verified(sequence, payload.SerializeToString(), b"sig", "key", payload)


def _count_calls(store: TelemetryStore, *names: str) -> dict[str, int]:
    """Count the calls of ``store``'s ``names`` (each one store round trip): a bound by counts, not wall time, holds
    on a loaded box."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(store, name)

        async def counted(*args, _name=name, _real=real, **kwargs):
            calls[_name] += 1
            return await _real(*args, **kwargs)

        setattr(store, name, counted)
    return calls


async def test_a_round_of_many_vehicles_costs_one_store_round_trip_not_one_per_vehicle(
        store_url: str, fault_proxy) -> None:
    """200 vehicles' frames queued at once behind a store 0.5 s away (round trip): derived within a few round
    trips. One mission read per vehicle, one after another, took 200 x 0.5 s = 100 s."""
    proxy = await fault_proxy(urlsplit(store_url).netloc.rpartition("@")[2])
    client = connect_async(via_proxy(store_url, proxy.address))
    store = TelemetryStore(client)
    calls = _count_calls(store, "missions", "mission")
    tracking = MissionTracking(store, liveness_timeout_seconds=3600)
    try:
        await client.ping()
        proxy.delay(LATENCY_SECONDS)
        for index in range(VEHICLES):
            tracking.frames_stored(f"TRK-{new_id()}-{index}", [_stored_frame("v", 1), _stored_frame("v", 2)])
        assert tracking.backlog_frames == 2 * VEHICLES
        await wait_for(lambda: tracking.backlog_frames == 0, timeout_seconds=30, interval_seconds=0.05)
        # One pipelined read for the round (a few on a loaded box), not one round trip per vehicle (200).
        assert calls["missions"] <= 3 and calls["mission"] == 0, calls
    finally:
        proxy.delay(0)
        await tracking.close()
        await client.aclose()


async def test_hundreds_of_reconnects_cost_one_round_trip_and_the_lost_one_is_restored(store_url: str,
                                                                                         fault_proxy) -> None:
    """200 trucks say Hello at once (after a store fault, say) behind a store 0.5 s away: whether each was
    reported lost is read for all of them at once, and the one that was (the last) is announced restored within
    a few round trips, not after 199 GETDELs one after another (100 s, the streams paused meanwhile)."""
    proxy = await fault_proxy(urlsplit(store_url).netloc.rpartition("@")[2])
    client = connect_async(via_proxy(store_url, proxy.address))
    store = TelemetryStore(client)
    calls = _count_calls(store, "lost_of", "take_lost")
    tracking = MissionTracking(store, liveness_timeout_seconds=3600)
    vehicles = [f"TRK-{new_id()}-{index}" for index in range(VEHICLES)]
    carrier = f"carrier-{new_id()}"
    try:
        marker = json.dumps({"carrier": carrier, "mission": f"missions/{new_id()}", "last_seen_ms": 1,
                             "last_sequence": 0}).encode()
        assert await store.mark_lost(vehicles[-1], marker)
        proxy.delay(LATENCY_SECONDS)
        for vehicle_id in vehicles:
            tracking.connected(vehicle_id, 0)
        await wait_for(lambda: tracking.published == 1, timeout_seconds=30, interval_seconds=0.05)
        # Whether each was lost: read at once (a few rounds on a loaded box); taken only for the one that was.
        assert calls["lost_of"] <= 3 and calls["take_lost"] == 1, calls
        proxy.delay(0)
        assert await store.take_lost(vehicles[-1]) is None  # taken by the restoration, once
    finally:
        proxy.delay(0)
        await tracking.close()
        await client.aclose()


async def test_a_rounds_events_go_out_in_one_transaction_per_carrier(store_url: str, store_client: redis.asyncio.Redis,
                                                                     fault_proxy) -> None:
    """100 trucks on missions of one carrier each send a HEALTH frame (one event each) behind a store 0.5 s away:
    published, in order per truck, within a few round trips, not one transaction per truck after another."""
    proxy = await fault_proxy(urlsplit(store_url).netloc.rpartition("@")[2])
    client = connect_async(via_proxy(store_url, proxy.address))
    store = TelemetryStore(client)
    tracking = MissionTracking(store, liveness_timeout_seconds=3600)
    carrier = f"carrier-{new_id()}"
    vehicles = [f"TRK-{new_id()}-{index}" for index in range(100)]
    try:
        for vehicle_id in vehicles:
            mission = mission_pb2.Mission(name=f"missions/{new_id()}", vehicle=f"vehicles/{vehicle_id}",
                                          state=mission_pb2.Mission.STATE_ENROUTE)
            await store.set_mission(vehicle_id, carrier, mission.name, 1, mission.SerializeToString())
        calls = _count_calls(store, "publish")
        proxy.delay(LATENCY_SECONDS)
        for vehicle_id in vehicles:
            frame = _stored_frame(vehicle_id, 1)
            frame.payload.kind = frame_pb2.FramePayload.KIND_HEALTH
            tracking.frames_stored(vehicle_id, [frame])
        await wait_for(lambda: tracking.published == len(vehicles), timeout_seconds=60, interval_seconds=0.05)
        assert calls["publish"] <= 3, calls  # one transaction per carrier per round (a few rounds), not 100
        proxy.delay(0)
        events = await store_client.xrange(event_stream_key(carrier))
        assert len(events) == len(vehicles)
    finally:
        proxy.delay(0)
        await tracking.close()
        await client.aclose()


async def test_streams_stop_reading_while_the_tracking_backlog_is_at_its_bound(
        mesh_pki: Pki, store_client: redis.asyncio.Redis) -> None:
    """Tracking held up (its worker cannot read missions): the truck's frames are stored and acked up to the
    backlog's bound plus what was in flight, then the stream is not read; once tracking moves, every frame
    arrives and the backlog drains to 0."""
    bound, per_process, batch_frames, frames = 40, 60, 20, 400
    config = TelemetryConfig(max_batch_frames=batch_frames, max_inflight_frames_per_stream=per_process,
                             max_inflight_frames_per_process=per_process, max_tracking_frames=bound,
                             ack_interval_seconds=0.0)
    store = TelemetryStore(store_client, config)
    tracking = MissionTracking(store, liveness_timeout_seconds=3600, max_backlog_frames=bound)
    released = asyncio.Event()
    real_refresh = tracking._refresh

    async def held_up(vehicle_ids: set[str]) -> None:
        await released.wait()
        await real_refresh(vehicle_ids)

    tracking._refresh = held_up  # type: ignore[method-assign]
    streams = Streams(store, config, tracking)
    truck = Truck.mint(mesh_pki.ca)
    keys = {truck.key_id: vehicle_key(truck.issued.certificate_pem)}
    taken = 0

    async def truck_sends():
        nonlocal taken
        for start in range(1, frames + 1, batch_frames):
            taken += batch_frames
            yield batch([truck.frame(s) for s in range(start, start + batch_frames)])
        await asyncio.Event().wait()  # the stream stays open

    acked = 0

    def acked_through() -> int:
        """The highest Ack the stream sent so far (its responses taken, as gRPC takes them, so that the outbound
        bound does not pause the reader)."""
        nonlocal acked
        while not session.outbound.empty():
            item = session.outbound.get_nowait()
            session.drained.set()
            if isinstance(item, stream_pb2.StreamTelemetryResponse) and item.WhichOneof("message") == "ack":
                acked = max(acked, item.ack.through_sequence)
        return acked

    session = streams.open(truck.vehicle_id)
    try:
        await streams.claim(session, "boot", 0)
        streams.serve(session, truck_sends(), keys)

        # Stopped: every frame read is in the backlog (stored, handed to tracking) and the backlog is full, so
        # the reader's next step is its pause, which holds while tracking cannot move.
        await wait_for(lambda: taken == tracking.backlog_frames and tracking.full(), timeout_seconds=30)
        # Read: at most the bound plus what was in flight when it was reached, plus the batch the reader holds.
        assert tracking.backlog_frames <= bound + per_process, tracking.backlog_frames
        assert taken <= bound + per_process + batch_frames, taken
        assert taken < frames
        released.set()
        await wait_for(lambda: taken == frames and tracking.backlog_frames == 0 and streams.credits.inflight == 0,
                       timeout_seconds=30)
        await wait_for(lambda: acked_through() == frames, timeout_seconds=30)
        stored = [int(i.split(b"-")[0]) for i, _ in await store_client.xrange(TelemetryStore.frames_key(
            truck.vehicle_id))]
        assert stored == list(range(1, frames + 1))  # 0 lost, 0 twice
    finally:
        released.set()
        await streams.close(session)
        await streams.shutdown()
        await tracking.close()
        await store.close()



async def test_ingest_is_refused_while_the_tracking_backlog_is_full(store_client: redis.asyncio.Redis) -> None:
    """IngestTelemetry does not queue behind a full backlog either: TELEMETRY_BUSY with a retry hint (the gateway
    answers 429 with Retry-After), as at the bound of frames in flight."""
    config = TelemetryConfig(max_tracking_frames=1)
    store = TelemetryStore(store_client, config)
    tracking = MissionTracking(store, liveness_timeout_seconds=3600, max_backlog_frames=1)
    tracking.frames_stored(f"TRK-{new_id()}", [_stored_frame("v", 1)])  # the worker has not run yet: full
    streams = Streams(store, config, tracking)
    try:
        assert tracking.full()
        with pytest.raises(ResourceExhausted) as refused:
            await streams.ingest(f"TRK-{new_id()}", 1, b"payload", b"signature", "key", None)  # type: ignore[arg-type]
        assert refused.value.reason == "TELEMETRY_BUSY"
    finally:
        await streams.shutdown()
        await tracking.close()
        await store.close()


async def test_a_rounds_frames_stay_counted_until_its_events_are_published(store_client: redis.asyncio.Redis) -> None:
    """The worker holds a round's frames until its events are published: while that publish is held up the
    backlog still counts them (the bound is reached, no stream reads), and it drops to 0 once it returns. Counted
    off before the publish, the streams resumed while the round still held every frame (2x the bound alive)."""
    store = TelemetryStore(store_client)
    tracking = MissionTracking(store, liveness_timeout_seconds=3600, max_backlog_frames=3)
    carrier, vehicle_id = f"carrier-{new_id()}", f"TRK-{new_id()}"
    mission = mission_pb2.Mission(name=f"missions/{new_id()}", vehicle=f"vehicles/{vehicle_id}",
                                  state=mission_pb2.Mission.STATE_ENROUTE)
    await store.set_mission(vehicle_id, carrier, mission.name, 1, mission.SerializeToString())
    publishing, released = asyncio.Event(), asyncio.Event()
    real_publish = store.publish

    async def held_up(carrier_id: str, events: list) -> None:
        publishing.set()
        await released.wait()
        await real_publish(carrier_id, events)

    store.publish = held_up  # type: ignore[method-assign]
    try:
        frames = [_stored_frame(vehicle_id, sequence) for sequence in (1, 2, 3)]
        for frame in frames:
            frame.payload.kind = frame_pb2.FramePayload.KIND_HEALTH
        tracking.frames_stored(vehicle_id, frames)
        await asyncio.wait_for(publishing.wait(), timeout=10)  # the round is derived, its publish held up
        assert tracking.backlog_frames == 3 and tracking.full()
        released.set()
        await wait_for(lambda: tracking.backlog_frames == 0 and tracking.published == 3, timeout_seconds=10)
        assert not tracking.full()
    finally:
        released.set()
        await tracking.close()
