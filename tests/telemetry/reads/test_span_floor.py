"""The sequence floor of a mission span (where a mission read starts scanning), on a real store."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace

import redis.asyncio

from haulmesh.telemetry.v1 import frame_pb2
from services.telemetry.config import TelemetryConfig
from services.telemetry.domain import FrameScope, Verified
from services.telemetry.store import TelemetryStore
from services.telemetry.usecases import Reads


def _verified(sequence: int) -> Verified:
    payload = frame_pb2.FramePayload(vehicle_id="FLOOR", sequence=sequence, kind=frame_pb2.FramePayload.KIND_POSITION)
    return Verified(sequence, payload.SerializeToString(), b"sig", "key", payload)


async def test_floor_is_the_last_frame_received_before_the_span_less_the_skew(store_url: str) -> None:
    client = redis.asyncio.Redis.from_url(store_url)
    # A small tolerance so that receive times a few milliseconds apart fall on either side of it.
    config = replace(TelemetryConfig(), clock_skew_seconds=0.05)
    store = TelemetryStore(client, config)
    reads = Reads(store, config)
    vehicle = f"FLOOR-{uuid.uuid4().hex[:8].upper()}"
    try:
        before = [1, 2, 3, 7, 9, 40]  # sparse sequences: the search probes ids that do not exist
        await store.commit(vehicle, [_verified(s) for s in before], received=len(before))
        await asyncio.sleep(0.2)
        start_ms = int(time.time() * 1000)
        await asyncio.sleep(0.2)
        await store.commit(vehicle, [_verified(s) for s in (41, 57, 300)], received=3)

        def span(start: int) -> FrameScope:
            return FrameScope(vehicle, "missions/m1", "m1", start)

        assert await reads.floor(span(start_ms)) == 40
        assert await reads.floor(span(start_ms - 60_000)) == 0  # span began before every frame
        assert await reads.floor(span(start_ms + 60_000)) == 300  # every frame precedes it
    finally:
        await store.close()
        await client.aclose()
