"""The telemetry metrics, scraped over real HTTP from a real telemetry process fed by a real truck."""

from __future__ import annotations

import time

import grpc

from haulmesh.telemetry.v1 import stream_pb2
from services.telemetry.domain import RejectReason
from tests.conftest import wait_for
from tests.telemetry.helpers import Session, Truck, batch

from .conftest import MeteredTelemetry, Samples, value

FRAMES = "haulmesh_telemetry_frames_total"
REJECTED = "haulmesh_telemetry_rejected_frames_total"
GAPS = "haulmesh_telemetry_sequence_gaps_total"
FRESHNESS = "haulmesh_telemetry_freshness_seconds"
CPU = "edge_cpu_utilization_percent"


def heartbeat(cpu: float) -> stream_pb2.StreamTelemetryRequest:
    beat = stream_pb2.Heartbeat(edge_cpu_utilization_percent=cpu)
    beat.device_time.GetCurrentTime()
    return stream_pb2.StreamTelemetryRequest(heartbeat=beat)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_every_series_is_exported_before_any_traffic(metered: MeteredTelemetry) -> None:
    samples = await metered.scrape()
    for outcome in ("stored", "duplicate", "rejected"):
        assert value(samples, FRAMES, outcome=outcome) >= 0
    for reason in RejectReason:
        assert value(samples, REJECTED, reason=reason.value) >= 0
    assert value(samples, GAPS) >= 0
    assert value(samples, "vehicle_telemetry_packet_loss_ratio") >= 0
    assert value(samples, "haulmesh_telemetry_open_streams") == 0
    assert value(samples, f"{FRESHNESS}_bucket", le="2.0") >= 0
    assert value(samples, f"{CPU}_bucket", le="+Inf") >= 0
    assert value(samples, "process_resident_memory_bytes") > 0
    # No vehicle labels anywhere: the label names in use are the ones this module and the runtime's RPC,
    # consumer and certificate metrics expect.
    assert {k for _, labels in samples for k, _ in labels} <= {"outcome", "reason", "le", "implementation",
                                                                "major", "minor", "patchlevel", "version",
                                                                "generation", "service", "method", "code",
                                                                "direction", "group", "kind"}


async def test_counts_equal_what_the_truck_sent(metered: MeteredTelemetry, truck: Truck,
                                               other_truck: Truck) -> None:
    before = await metered.scrape()
    began = time.time()
    async with grpc.aio.secure_channel(metered.address, truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        await wait_for(lambda: session.of("welcome"))
        session.send(batch([truck.frame(1), truck.frame(2), truck.frame(3)]))       # 3 stored
        await wait_for(lambda: session.acked_through == 3, timeout_seconds=30)
        session.send(batch([truck.frame(2), truck.frame(3)]))                       # 2 duplicates
        await wait_for(lambda: len(session.of("ack")) == 2, timeout_seconds=30)
        session.send(batch([truck.frame(6)]))                                       # 1 stored, gap of 2 (4, 5)
        await wait_for(lambda: session.acked_through == 6, timeout_seconds=30)
        forged = truck.frame(7)
        forged.signature = other_truck.sign(forged.payload)                          # BAD_SIGNATURE
        ahead = truck.frame(8, device_time=time.time() + 3600)                      # CLOCK_SKEW
        session.send(batch([forged, ahead, truck.frame(9)]))                        # + 1 stored (9), gap 7, 8
        await wait_for(lambda: session.acked_through == 9, timeout_seconds=30)
        for cpu in (42.5, 97.0, 0.0):                                               # 0 = not reported
            session.send(heartbeat(cpu))
        after = await wait_for(lambda: _heartbeats_seen(metered, before, 2), timeout_seconds=30)
        session.close()
        await wait_for(session.ended.is_set, timeout_seconds=30)
    assert session.error is None
    assert [r.reason for r in session.of("reject")] == [stream_pb2.Reject.REASON_BAD_SIGNATURE,
                                                        stream_pb2.Reject.REASON_CLOCK_SKEW]
    elapsed = time.time() - began

    assert delta(after, before, FRAMES, outcome="stored") == 5
    assert delta(after, before, FRAMES, outcome="duplicate") == 2
    assert delta(after, before, FRAMES, outcome="rejected") == 2
    assert delta(after, before, REJECTED, reason="BAD_SIGNATURE") == 1
    assert delta(after, before, REJECTED, reason="CLOCK_SKEW") == 1
    assert delta(after, before, REJECTED, reason="MALFORMED") == 0
    assert delta(after, before, GAPS) == 4
    # One freshness observation per batch whose newest frame was stored: batches 1, 3 and 4.
    assert delta(after, before, f"{FRESHNESS}_count") == 3
    assert 0 <= delta(after, before, f"{FRESHNESS}_sum") <= 3 * elapsed
    assert delta(after, before, f"{FRESHNESS}_bucket", le="+Inf") == 3
    assert delta(after, before, CPU + "_count") == 2
    assert delta(after, before, CPU + "_sum") == 139.5
    assert delta(after, before, CPU + "_bucket", le="50.0") == 1
    assert delta(after, before, CPU + "_bucket", le="95.0") == 1
    assert delta(after, before, CPU + "_bucket", le="100.0") == 2
    stored = value(after, FRAMES, outcome="stored")
    gaps = value(after, GAPS)
    assert value(after, "vehicle_telemetry_packet_loss_ratio") == gaps / (stored + gaps)


async def _heartbeats_seen(metered: MeteredTelemetry, before: Samples, count: int) -> Samples | None:
    samples = await metered.scrape()
    return samples if delta(samples, before, CPU + "_count") >= count else None


async def test_ingest_telemetry_rejects_and_stores_are_counted(metered: MeteredTelemetry, truck: Truck) -> None:
    """The unary path shares the commit: its outcomes land in the same counters."""
    from haulmesh.telemetry.v1 import frame_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc

    before = await metered.scrape()
    payload = frame_pb2.FramePayload.FromString(truck.payload(1))
    request = telemetry_service_pb2.IngestTelemetryRequest(
        vehicle_id=truck.vehicle_id, sequence=1, timestamp=payload.device_time, position=payload.position,
        state=payload.vehicle_state, boot_id=payload.boot_id, key_id=truck.key_id)
    signed = frame_pb2.FramePayload(vehicle_id=truck.vehicle_id, sequence=1, boot_id=request.boot_id,
                                    device_time=request.timestamp, kind=frame_pb2.FramePayload.KIND_POSITION,
                                    position=request.position, vehicle_state=request.state)
    request.signature = truck.sign(signed.SerializeToString(deterministic=True))
    async with grpc.aio.secure_channel(metered.address, truck.credentials()) as channel:
        stub = telemetry_service_pb2_grpc.TelemetryServiceStub(channel)
        await stub.IngestTelemetry(request, timeout=10)
        await stub.IngestTelemetry(request, timeout=10)  # duplicate
        bad = telemetry_service_pb2.IngestTelemetryRequest()
        bad.CopyFrom(request)
        bad.sequence = 2
        try:
            await stub.IngestTelemetry(bad, timeout=10)  # signature covers sequence 1
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:
            raise AssertionError("a frame with a bad signature was accepted")
    after = await metered.scrape()
    assert delta(after, before, FRAMES, outcome="stored") == 1
    assert delta(after, before, FRAMES, outcome="duplicate") == 1
    assert delta(after, before, FRAMES, outcome="rejected") == 1
    assert delta(after, before, REJECTED, reason="BAD_SIGNATURE") == 1
