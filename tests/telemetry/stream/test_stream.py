"""StreamTelemetry, IngestTelemetry and the reads against a real telemetry process, store and mTLS."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
import redis.asyncio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from services.telemetry.config import TelemetryConfig
from services.telemetry.store import TelemetryStore
from tests.conftest import Pki, rich_error, wait_for

from ..helpers import Session, TelemetryProcess, Truck, batch, close_streams, open_streams

R = stream_pb2.Reject


async def stored_sequences(client: redis.asyncio.Redis, vehicle_id: str) -> list[int]:
    entries = await client.xrange(TelemetryStore.frames_key(vehicle_id))
    return [int(i.split(b"-")[0]) for i, _ in entries]


async def counters(client: redis.asyncio.Redis, vehicle_id: str) -> dict[str, int]:
    raw = await client.hgetall(f"telemetry:{{{vehicle_id}}}:counters")
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_hello_welcome_ack(telemetry: TelemetryProcess, truck: Truck, store_client: redis.asyncio.Redis) -> None:
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        await wait_for(lambda: session.of("welcome"))
        welcome = session.of("welcome")[0]
        assert welcome.high_water_sequence == 0
        assert welcome.max_batch_frames == 500
        assert welcome.clock_skew_tolerance.seconds == 300
        assert welcome.heartbeat_interval.seconds > 0 and welcome.max_frame_age.seconds > 0
        assert welcome.session_id
        session.send(batch([truck.frame(1), truck.frame(2)]))
        heartbeat = stream_pb2.Heartbeat(edge_cpu_utilization_percent=42.5, spool_depth=0, last_sequence=2,
                                         link=stream_pb2.LinkQuality(technology=stream_pb2.LinkQuality.TECHNOLOGY_LTE,
                                                                     rssi_dbm=-85, rtt_ms=60))
        heartbeat.device_time.GetCurrentTime()
        session.send(stream_pb2.StreamTelemetryRequest(heartbeat=heartbeat))
        await wait_for(lambda: session.acked_through == 2, timeout_seconds=30)
        session.close()
        await wait_for(session.ended.is_set, timeout_seconds=30)
    assert session.error is None
    assert await stored_sequences(store_client, truck.vehicle_id) == [1, 2]
    liveness = await store_client.hgetall(f"telemetry:{{{truck.vehicle_id}}}:liveness")
    assert liveness[b"edge_cpu_utilization_percent"] == b"42.5"
    assert liveness[b"link_technology"] == b"TECHNOLOGY_LTE"
    # The stored frame is the exact bytes the truck signed; it still verifies.
    entry = (await store_client.xrange(TelemetryStore.frames_key(truck.vehicle_id)))[0][1]
    truck.issued.certificate.public_key().verify(entry[b"s"], entry[b"p"], ec.ECDSA(hashes.SHA256()))


async def test_ten_thousand_frames_in_batches_stored_once_in_order(
        telemetry: TelemetryProcess, truck: Truck, store_client: redis.asyncio.Redis) -> None:
    total, size = 10_000, 500
    frames = [truck.frame(seq) for seq in range(1, total + 1)]
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello(last_sequence=total))
        for start in range(0, total, size):
            session.send(batch(frames[start:start + size]))
        await wait_for(lambda: session.acked_through == total, timeout_seconds=60)
        session.close()
        await wait_for(session.ended.is_set, timeout_seconds=30)
    stored = await stored_sequences(store_client, truck.vehicle_id)
    acks = [a.through_sequence for a in session.of("ack")]
    print(f"frames sent {total}, acks {len(acks)}, stored {len(stored)}, rejects {len(session.of('reject'))}")
    assert session.error is None and not session.of("reject")
    # One ack per durable group of batches: strictly increasing, never past what was sent, ending at the last.
    assert acks == sorted(set(acks)) and 1 <= len(acks) <= total // size and acks[-1] == total
    assert all(a % size == 0 for a in acks)  # an ack covers whole batches
    assert stored == list(range(1, total + 1))
    c = await counters(store_client, truck.vehicle_id)
    assert (c["stored"], c["received"], c.get("duplicates", 0), c.get("lost", 0)) == (total, total, 0, 0)


async def test_duplicates_acked_not_stored_and_gaps_counted(
        telemetry: TelemetryProcess, truck: Truck, store_client: redis.asyncio.Redis) -> None:
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        session.send(batch([truck.frame(s) for s in (1, 2, 3)]))
        await wait_for(lambda: session.acked_through == 3, timeout_seconds=30)
        session.send(batch([truck.frame(s) for s in (2, 3)]))       # resent after a lost ack
        session.send(batch([truck.frame(s) for s in (3, 4, 8)]))    # one duplicate, 5-7 lost
        session.send(batch([truck.frame(s) for s in (10,)]))        # 9 lost
        await wait_for(lambda: session.acked_through == 10, timeout_seconds=30)
        session.close()
        await wait_for(session.ended.is_set, timeout_seconds=30)
    # Batches made durable together share one ack (through the highest); acks never go backwards.
    acks = [a.through_sequence for a in session.of("ack")]
    assert acks[0] == 3 and acks[-1] == 10 and acks == sorted(acks) and len(acks) <= 4
    assert not session.of("reject")
    assert await stored_sequences(store_client, truck.vehicle_id) == [1, 2, 3, 4, 8, 10]
    c = await counters(store_client, truck.vehicle_id)
    print("counters", c)
    assert (c["received"], c["stored"], c["duplicates"], c["lost"], c["high_water"]) == (9, 6, 3, 4, 10)


async def test_reconnect_resumes_from_the_high_water_mark(telemetry: TelemetryProcess, truck: Truck) -> None:
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        first = Session(channel)
        first.send(truck.hello())
        first.send(batch([truck.frame(s) for s in range(1, 6)]))
        await wait_for(lambda: first.acked_through == 5, timeout_seconds=30)
        first.close()
        await wait_for(first.ended.is_set, timeout_seconds=30)
        second = Session(channel)
        second.send(truck.hello(last_sequence=5))
        await wait_for(lambda: second.of("welcome"))
        assert second.of("welcome")[0].high_water_sequence == 5
        await second.aclose()


async def test_hostile_truck_is_refused_every_frame(
        telemetry: TelemetryProcess, mesh_pki: Pki, truck: Truck, store_client: redis.asyncio.Redis) -> None:
    victim = Truck.mint(mesh_pki.ca)
    impostor = Truck.mint(mesh_pki.ca, truck.vehicle_id)  # a key the server has never seen for this vehicle
    now = time.time()
    good = truck.frame(1)
    tampered = frame_pb2.SignedFrame(sequence=2, payload=truck.payload(2, vehicle_state="idle"),
                                     signature=truck.sign(truck.payload(2)), key_id=truck.key_id)
    unknown_key = frame_pb2.SignedFrame(sequence=3, payload=truck.payload(3), signature=truck.sign(truck.payload(3)),
                                        key_id="ab" * 32)
    wrong_key = impostor.frame(4)
    wrong_key.key_id = truck.key_id  # claims the truck's key, signed with another
    other_vehicle = frame_pb2.SignedFrame(sequence=5, payload=truck.payload(5, vehicle_id=victim.vehicle_id),
                                          key_id=truck.key_id)
    other_vehicle.signature = truck.sign(other_vehicle.payload)
    seq_mismatch = frame_pb2.SignedFrame(sequence=6, payload=truck.payload(60), key_id=truck.key_id)
    seq_mismatch.signature = truck.sign(seq_mismatch.payload)
    ahead = truck.frame(7, device_time=now + 3600)
    old = truck.frame(8, device_time=now - 30 * 86400)
    big = frame_pb2.SignedFrame(sequence=9, payload=truck.payload(9, vehicle_state="x" * 70_000),
                                key_id=truck.key_id)
    big.signature = truck.sign(big.payload)
    junk = frame_pb2.SignedFrame(sequence=10, payload=b"\xff\xff\xff", signature=truck.sign(b"\xff\xff\xff"),
                                 key_id=truck.key_id)
    replay = truck.frame(1)  # replayed sequence within a batch: out of order
    hostile = [(tampered, R.REASON_BAD_SIGNATURE), (unknown_key, R.REASON_UNKNOWN_KEY),
               (wrong_key, R.REASON_BAD_SIGNATURE), (other_vehicle, R.REASON_VEHICLE_MISMATCH),
               (seq_mismatch, R.REASON_SEQUENCE_MISMATCH), (ahead, R.REASON_CLOCK_SKEW),
               (old, R.REASON_FRAME_TOO_OLD), (big, R.REASON_FRAME_TOO_LARGE), (junk, R.REASON_MALFORMED),
               (replay, R.REASON_OUT_OF_ORDER)]
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        session.send(batch([good]))
        await wait_for(lambda: session.acked_through == 1, timeout_seconds=30)
        session.send(batch([f for f, _ in hostile[:-1]]))
        session.send(batch([truck.frame(11), replay]))
        await wait_for(lambda: session.acked_through == 11, timeout_seconds=30)
        session.close()
        await wait_for(session.ended.is_set, timeout_seconds=30)
    rejects = {r.sequence: r.reason for r in session.of("reject")}
    print(f"hostile frames {len(hostile)}, rejected {len(rejects)}, reasons {sorted(rejects.values())}")
    assert len(session.of("reject")) == len(hostile)
    assert [rejects.get(f.sequence) for f, _ in hostile[:-1]] == [reason for _, reason in hostile[:-1]]
    assert session.of("reject")[-1].reason == R.REASON_OUT_OF_ORDER
    assert await stored_sequences(store_client, truck.vehicle_id) == [1, 11]  # only the good ones
    c = await counters(store_client, truck.vehicle_id)
    assert sum(v for k, v in c.items() if k.startswith("rejected:")) == len(hostile)
    assert c["rejected:BAD_SIGNATURE"] == 2 and c["rejected:CLOCK_SKEW"] == 1


async def test_hello_for_another_vehicle_ends_the_stream(telemetry: TelemetryProcess, mesh_pki: Pki,
                                                         truck: Truck) -> None:
    other = Truck.mint(mesh_pki.ca)
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        session = Session(channel)
        session.send(other.hello())
        await wait_for(session.ended.is_set, timeout_seconds=30)
        assert rich_error(session.error)[:2] == ("PERMISSION_DENIED", "VEHICLE_MISMATCH")
        session = Session(channel)
        session.send(batch([truck.frame(1)]))
        await wait_for(session.ended.is_set, timeout_seconds=30)
        assert rich_error(session.error)[:2] == ("FAILED_PRECONDITION", "HELLO_REQUIRED")
        session = Session(channel)
        session.send(truck.hello())
        session.send(batch([truck.frame(s) for s in range(1, 502)]))
        await wait_for(session.ended.is_set, timeout_seconds=30)
        assert rich_error(session.error)[:2] == ("INVALID_ARGUMENT", "BATCH_TOO_LARGE")


async def test_newer_stream_replaces_the_older(telemetry: TelemetryProcess, truck: Truck) -> None:
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        old = Session(channel)
        old.send(truck.hello())
        await wait_for(lambda: old.of("welcome"))
        new = Session(channel)
        new.send(truck.hello())
        await wait_for(old.ended.is_set, timeout_seconds=30)
        assert rich_error(old.error)[:2] == ("ABORTED", "STREAM_REPLACED")
        new.send(batch([truck.frame(1)]))
        await wait_for(lambda: new.acked_through == 1, timeout_seconds=30)
        await new.aclose()


async def test_commands_queued_offline_are_delivered_until_acked(
        telemetry: TelemetryProcess, truck: Truck, store_client: redis.asyncio.Redis) -> None:
    store = TelemetryStore(store_client)
    command = stream_pb2.Command(command_id="01JCMD0001", stop=stream_pb2.StopVehicle(reason="test"))
    await store.enqueue_command(truck.vehicle_id, command)
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        first = Session(channel)
        first.send(truck.hello())
        await wait_for(lambda: first.of("command"), timeout_seconds=30)
        assert first.responses[0].WhichOneof("message") == "welcome"
        assert first.of("command")[0].command_id == "01JCMD0001"
        await first.aclose()
        # Not acknowledged: delivered again on the next stream; live commands follow as they are queued.
        second = Session(channel)
        second.send(truck.hello())
        await wait_for(lambda: second.of("command"), timeout_seconds=30)
        await store.enqueue_command(truck.vehicle_id, stream_pb2.Command(command_id="01JCMD0002"))
        await wait_for(lambda: len(second.of("command")) == 2, timeout_seconds=30)
        for command_id in ("01JCMD0001", "01JCMD0002"):
            ack = stream_pb2.CommandAck(command_id=command_id, outcome=stream_pb2.CommandAck.OUTCOME_ACCEPTED)
            ack.device_time.GetCurrentTime()
            second.send(stream_pb2.StreamTelemetryRequest(command_ack=ack))
        await wait_for(lambda: store.command_acks(truck.vehicle_id), timeout_seconds=30)
        await wait_for(lambda: _len_is(store.command_acks(truck.vehicle_id), 2), timeout_seconds=30)
        await second.aclose()
        third = Session(channel)
        third.send(truck.hello())
        await wait_for(lambda: third.of("welcome"))
        third.send(batch([truck.frame(1)]))
        await wait_for(lambda: third.acked_through == 1, timeout_seconds=30)
        assert not third.of("command")
        await third.aclose()


async def _len_is(coro, n: int) -> bool:
    return len(await coro) == n


async def test_ingest_telemetry_json_path(telemetry: TelemetryProcess, truck: Truck,
                                          store_client: redis.asyncio.Redis) -> None:
    request = telemetry_service_pb2.IngestTelemetryRequest(
        vehicle_id=truck.vehicle_id, state="enroute", trip_id="TRIP-20260118-99", sequence=12345,
        position=frame_pb2.Position(lat=30.267153, lon=-97.743057, speed_kph=88.5),
        sensors=frame_pb2.SensorStatus(lidar_status="ok", camera_health="ok", radar_status="ok"))
    request.timestamp.GetCurrentTime()
    signed = frame_pb2.FramePayload(vehicle_id=request.vehicle_id, sequence=request.sequence,
                                    device_time=request.timestamp, kind=frame_pb2.FramePayload.KIND_POSITION,
                                    position=request.position, vehicle_state=request.state,
                                    sensors=request.sensors, mission_id=request.trip_id)
    payload = signed.SerializeToString(deterministic=True)
    request.signature = truck.sign(payload)
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        stub = telemetry_service_pb2_grpc.TelemetryServiceStub(channel)
        first = await stub.IngestTelemetry(request, timeout=30)
        again = await stub.IngestTelemetry(request, timeout=30)
        request.state = "stopped"  # no longer what was signed
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.IngestTelemetry(request, timeout=30)
    out = telemetry_service_pb2.IngestTelemetryResponse
    assert (first.outcome, first.high_water_sequence) == (out.OUTCOME_STORED, 12345)
    assert (again.outcome, again.receive_time) == (out.OUTCOME_DUPLICATE, first.receive_time)
    assert rich_error(bad.value)[:2] == ("INVALID_ARGUMENT", "BAD_SIGNATURE")
    entry = (await store_client.xrange(TelemetryStore.frames_key(truck.vehicle_id)))[0][1]
    assert entry[b"p"] == payload


async def test_list_and_watch_vehicle_frames(telemetry: TelemetryProcess, mesh_pki: Pki, truck: Truck) -> None:
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        session.send(batch([truck.frame(s) for s in range(1, 8)]))
        await wait_for(lambda: session.acked_through == 7, timeout_seconds=30)
        async with grpc.aio.secure_channel(telemetry.address, mesh_pki.credentials("service", "mission")) as reader:
            stub = telemetry_service_pb2_grpc.TelemetryServiceStub(reader)
            seen, token = [], ""
            while True:
                page = await stub.ListTelemetryFrames(telemetry_service_pb2.ListTelemetryFramesRequest(
                    parent=f"vehicles/{truck.vehicle_id}", page_size=3, min_sequence=2, page_token=token), timeout=10)
                seen += [f.signed_frame.sequence for f in page.telemetry_frames]
                token = page.next_page_token
                if not token:
                    break
            assert seen == [2, 3, 4, 5, 6, 7]
            assert page.telemetry_frames[-1].name == f"vehicles/{truck.vehicle_id}/telemetryFrames/7"
            assert page.telemetry_frames[-1].payload.vehicle_id == truck.vehicle_id
            with pytest.raises(grpc.aio.AioRpcError) as bad_parent:
                await stub.ListTelemetryFrames(telemetry_service_pb2.ListTelemetryFramesRequest(
                    parent="missions/M1"), timeout=10)
            assert rich_error(bad_parent.value)[:2] == ("INVALID_ARGUMENT", "INVALID_RESOURCE_NAME")
            watch = stub.WatchVehicleTelemetry(telemetry_service_pb2.WatchVehicleTelemetryRequest(
                vehicle=f"vehicles/{truck.vehicle_id}", after_sequence=4), timeout=60)
            got = [(await watch.read()).telemetry_frame.signed_frame.sequence for _ in range(3)]
            assert got == [5, 6, 7]
            session.send(batch([truck.frame(8), truck.frame(9)]))
            got = [(await watch.read()).telemetry_frame.signed_frame.sequence for _ in range(2)]
            assert got == [8, 9]
            watch.cancel()
        await session.aclose()


async def test_streams_opened_at_once_on_a_fresh_process_are_all_served(mesh_pki: Pki, store_url: str,
                                                                         tmp_path: Path) -> None:
    # The first stream starts the command deliverer, whose first round looks at every open stream while
    # the others are still claiming their sessions: none of them may be taken for replaced.
    process = TelemetryProcess(mesh_pki.directory, tmp_path, store_url)
    await process.start(mesh_pki.credentials("operator", "probe"))
    try:
        opened = await open_streams(process, [Truck.mint(mesh_pki.ca) for _ in range(100)])
        await close_streams(opened)
    finally:
        await process.stop()
    print(f"{len(opened)} streams opened at once on a fresh process: every one acknowledged, none replaced")


async def test_acks_are_paced_per_stream(telemetry: TelemetryProcess, truck: Truck) -> None:
    # A truck sending a frame every 25 ms gets an Ack at most every ack interval (0.25 s by default), each
    # through everything durable by then, and the last through its last frame.
    interval_seconds, frames = TelemetryConfig().ack_interval_seconds, 40
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        await wait_for(lambda: session.of("welcome"))
        began = time.monotonic()
        for sequence in range(1, frames + 1):
            session.send(batch([truck.frame(sequence)]))
            await asyncio.sleep(0.025)
        await wait_for(lambda: session.acked_through == frames, timeout_seconds=30)
        elapsed_seconds = time.monotonic() - began
        await session.aclose()
    throughs = [ack.through_sequence for ack in session.of("ack")]
    assert throughs == sorted(set(throughs)) and throughs[-1] == frames
    assert len(throughs) <= elapsed_seconds / interval_seconds + 1, (len(throughs), elapsed_seconds)
    print(f"{frames} frames over {elapsed_seconds:.2f} s, one per message: {len(throughs)} acks {throughs}")


async def test_a_replayed_backlog_is_acked_at_once_whatever_the_pacing(mesh_pki: Pki, store_url: str,
                                                                       tmp_path: Path) -> None:
    # With a 60 s Ack interval, a paced Ack could not arrive within the test: every Ack after the first
    # comes from a backlog batch (≥ 64 frames), and a single frame sent between two backlogs rides the second.
    process = TelemetryProcess(mesh_pki.directory, tmp_path, store_url, HAULMESH_TELEMETRY_ACK_INTERVAL_SECONDS="60")
    await process.start(mesh_pki.credentials("operator", "probe"))
    truck = Truck.mint(mesh_pki.ca)
    try:
        async with grpc.aio.secure_channel(process.address, truck.credentials()) as channel:
            session = Session(channel)
            session.send(truck.hello())
            session.send(batch([truck.frame(1)]))
            await wait_for(lambda: session.acked_through == 1, timeout_seconds=30)  # the first is never paced
            session.send(batch([truck.frame(s) for s in range(2, 102)]))
            await wait_for(lambda: session.acked_through == 101, timeout_seconds=30)
            session.send(batch([truck.frame(102)]))
            session.send(batch([truck.frame(s) for s in range(103, 203)]))
            await wait_for(lambda: session.acked_through == 202, timeout_seconds=30)
            await session.aclose()
    finally:
        await process.stop()
    assert [ack.through_sequence for ack in session.of("ack")] == [1, 101, 202]
