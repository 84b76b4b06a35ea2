"""The stream client against a scripted cloud over real mTLS: replay, resume, live, rejects, commands, outages."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest

from edge_client.client import StreamClient, full_jitter
from edge_client.recorder import Recorder
from edge_client.spool import Spool
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from services.runtime import pki
from tests.conftest import wait_for
from tests.faultproxy import FaultProxy

from .cloud import CloudServer, ScriptedCloud, start_cloud
from .conftest import VEHICLE

POSITION = frame_pb2.FramePayload.KIND_POSITION


@pytest.fixture
def ca() -> pki.CertificateAuthority:
    return pki.create_ca()


@pytest.fixture
def truck(ca, tmp_path: Path):
    """The truck's credentials, signer and spool."""
    from edge_client.signer import KeyFileSigner

    issued = pki.issue(ca, pki.identity_for("vehicle", VEHICLE), valid_days=1)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.certificate_pem,
                                               private_key=issued.private_key_pem,
                                               certificate_chain=issued.certificate_pem)
    signer = KeyFileSigner(issued.private_key_pem, issued.certificate_pem)
    spool = Spool(tmp_path / "spool.db")
    yield credentials, Recorder(spool, signer, VEHICLE), issued.private_key.public_key()
    spool.close()


@contextlib.asynccontextmanager
async def running(client: StreamClient):
    task = asyncio.create_task(client.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def position(i: int) -> frame_pb2.FramePayload:
    return frame_pb2.FramePayload(kind=POSITION, position=frame_pb2.Position(lat=30 + i * 1e-4, lon=-94.0))


def client_for(server: CloudServer | FaultProxy, credentials, recorder: Recorder, **kwargs) -> StreamClient:
    return StreamClient(server.address, credentials, recorder.spool, vehicle_id=VEHICLE, boot_id=recorder.boot_id,
                        backoff_base=0.05, backoff_cap=0.5, poll_interval=0.2, **kwargs)


def test_full_jitter_is_bounded_and_grows() -> None:
    import random
    rng = random.Random(1)
    assert all(0 <= full_jitter(a, base=0.5, cap=30, rng=rng) <= min(30, 0.5 * 2 ** a) for a in range(40))
    assert max(full_jitter(8, base=0.5, cap=30, rng=rng) for _ in range(200)) > 15


async def test_replay_in_batches_then_live_then_spool_empty(ca, truck) -> None:
    credentials, recorder, public_key = truck
    for i in range(1200):
        recorder.record(position(i))
    server = await start_cloud(ca, ScriptedCloud(public_key, max_batch_frames=500))
    client = client_for(server, credentials, recorder)
    try:
        async with running(client):
            await wait_for(lambda: server.cloud.high_water == 1200, timeout_seconds=30)
            for i in range(20):  # live frames, as the truck produces them
                await asyncio.to_thread(recorder.record, position(i))
                client.notify()
            await wait_for(lambda: server.cloud.high_water == 1220 and recorder.spool.stats().depth == 0,
                           timeout_seconds=30)
            await wait_for(lambda: server.cloud.heartbeats, timeout_seconds=10)
    finally:
        await server.server.stop(0)
    cloud = server.cloud
    print(f"stored={len(cloud.stored)} batches={len(cloud.batch_sizes)} max_batch={max(cloud.batch_sizes)} "
          f"heartbeats={len(cloud.heartbeats)} sessions={cloud.sessions}")
    assert cloud.arrival == list(range(1, 1221))
    assert max(cloud.batch_sizes) <= 500 and cloud.batch_sizes[:3] == [500, 500, 200]
    assert cloud.hellos[0].last_sequence == 1200 and cloud.hellos[0].oldest_spooled_sequence == 1
    heartbeat = cloud.heartbeats[-1]
    assert heartbeat.last_sequence >= 1200 and 0 <= heartbeat.edge_cpu_utilization_percent <= 100


async def test_resume_from_the_server_high_water_mark(ca, truck) -> None:
    credentials, recorder, public_key = truck
    for i in range(150):
        recorder.record(position(i))
    cloud = ScriptedCloud(public_key)
    # the server already holds 1..100 (acked on a stream the truck lost before it heard the Ack)
    for frame in recorder.spool.unacked_after(0, 100):
        cloud.stored[frame.sequence] = frame_pb2.SignedFrame.FromString(frame.frame)
    server = await start_cloud(ca, cloud)
    try:
        async with running(client_for(server, credentials, recorder)):
            await wait_for(lambda: cloud.high_water == 150 and recorder.spool.stats().depth == 0, timeout_seconds=30)
    finally:
        await server.server.stop(0)
    resent = sum(cloud.received[s] for s in range(1, 101))
    print(f"resent_below_high_water={resent} sent={sum(cloud.received.values())}")
    assert not any(cloud.received[s] for s in range(1, 101))
    assert [cloud.received[s] for s in range(101, 151)] == [1] * 50


async def test_rejected_frame_is_removed_and_counted(ca, truck) -> None:
    credentials, recorder, public_key = truck
    recorder.record(position(0))
    # a frame whose payload was altered after signing (disk corruption, tampering)
    recorder.spool.enqueue(POSITION, lambda seq: frame_pb2.SignedFrame(
        sequence=seq, payload=b"\x10" + bytes([seq]), signature=b"0\x06\x02\x01\x01\x02\x01\x01",
        key_id=recorder.signer.key_id).SerializeToString())
    recorder.record(position(2))
    server = await start_cloud(ca, ScriptedCloud(public_key))
    client = client_for(server, credentials, recorder)
    try:
        async with running(client):
            await wait_for(lambda: client.stats.rejected and recorder.spool.stats().depth == 0, timeout_seconds=30)
    finally:
        await server.server.stop(0)
    stats = recorder.spool.stats()
    print(f"rejected={dict(client.stats.rejected)} spool_rejected={stats.rejected} "
          f"stored={sorted(server.cloud.stored)}")
    assert client.stats.rejected == {"REASON_BAD_SIGNATURE": 1} and stats.rejected == 1
    assert sorted(server.cloud.stored) == [1, 3]


async def test_commands_run_once_and_repeat_their_outcome(ca, truck) -> None:
    credentials, recorder, public_key = truck
    cloud = ScriptedCloud(public_key)
    cloud.commands.append(stream_pb2.Command(command_id="01JCMD", stop=stream_pb2.StopVehicle(reason="test")))
    server = await start_cloud(ca, cloud)
    seen: list[str] = []

    def handler(command: stream_pb2.Command) -> tuple[int, str]:
        seen.append(command.command_id)
        return stream_pb2.CommandAck.OUTCOME_COMPLETED, "stopped"

    try:
        async with running(client_for(server, credentials, recorder, on_command=handler)):
            await wait_for(lambda: cloud.command_acks, timeout_seconds=30)
        cloud.command_acks.clear()  # the server "lost" the ack: it re-sends the command on the next stream
        async with running(client_for(server, credentials, recorder, on_command=handler)):
            await wait_for(lambda: cloud.command_acks, timeout_seconds=30)
    finally:
        await server.server.stop(0)
    print(f"handler_calls={len(seen)} sessions={cloud.sessions}")
    assert seen == ["01JCMD"]
    assert cloud.command_acks[0].outcome == stream_pb2.CommandAck.OUTCOME_COMPLETED


async def test_connection_cut_by_a_proxy_loses_nothing(ca, truck) -> None:
    credentials, recorder, public_key = truck
    server = await start_cloud(ca, ScriptedCloud(public_key))
    proxy = await FaultProxy(server.address).start()
    client = client_for(proxy, credentials, recorder, server_name="localhost")
    total = 0

    async def produce(n: int) -> None:
        nonlocal total
        for _ in range(n):
            total += 1
            await asyncio.to_thread(recorder.record, position(total))
            client.notify()

    try:
        async with running(client):
            await produce(100)
            await wait_for(lambda: server.cloud.high_water == total, timeout_seconds=30)
            for _ in range(3):
                proxy.reset(refuse_new=True)
                await produce(300)  # spooled while the truck is offline
                offline_depth = recorder.spool.stats().depth
                proxy.pass_through()
                await wait_for(lambda: server.cloud.high_water == total and recorder.spool.stats().depth == 0,
                               timeout_seconds=60)
                assert offline_depth > 0
    finally:
        await proxy.close()
        await server.server.stop(0)
    cloud = server.cloud
    resent = sum(cloud.received.values()) - len(cloud.received)
    print(f"frames={total} stored={len(cloud.stored)} resets={proxy.resets} sessions={cloud.sessions} "
          f"resent_unacked={resent} failures={client.stats.failures}")
    assert cloud.arrival == list(range(1, total + 1))
    assert cloud.sessions >= 2


async def test_a_wiped_spool_jumps_past_the_server_and_counts_what_it_shadowed(ca, truck) -> None:
    credentials, recorder, public_key = truck
    cloud = ScriptedCloud(public_key)
    cloud.stored.update({s: frame_pb2.SignedFrame(sequence=s) for s in range(1, 201)})  # from the old spool
    for i in range(50):
        recorder.record(position(i))  # the new spool numbered these 1..50 again
    server = await start_cloud(ca, cloud)
    client = client_for(server, credentials, recorder)
    try:
        async with running(client):
            await wait_for(client.connected.is_set, timeout_seconds=30)
            await asyncio.to_thread(recorder.record, position(0))
            client.notify()
            await wait_for(lambda: cloud.high_water == 201, timeout_seconds=30)
    finally:
        await server.server.stop(0)
    print(f"shadowed={client.stats.shadowed} next_sequence={cloud.arrival}")
    assert client.stats.shadowed == 50 and cloud.arrival == [201]
