"""Fixtures of the archive tests: a telemetry store on the session's Valkey, an object store (a local directory,
or the real S3 server's Object Lock bucket), an archiver and a tiered reader over them, and a truck whose real
signed frames are committed as the stream would commit them."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio

from haulmesh.telemetry.v1 import frame_pb2
from services.runtime.objectstore import ObjectStore, open_object_store
from services.telemetry.config import TelemetryConfig
from services.telemetry.domain import Verified, vehicle_key
from services.telemetry.store import TelemetryStore
from services.telemetry.usecases import Archiver, TieredFrames
from tests.trucks import Truck


@dataclass
class Tiers:
    """Everything an archive test drives, for one truck."""

    truck: Truck
    store: TelemetryStore
    objects: ObjectStore
    archiver: Archiver
    tiered: TieredFrames
    config: TelemetryConfig

    @property
    def vehicle(self) -> str:
        return self.truck.vehicle_id

    async def ingest(self, sequences: list[int], *, device_time: float | None = None) -> None:
        """Commit the truck's signed frames (ascending) as the stream does, certificate remembered first."""
        key = vehicle_key(self.truck.issued.certificate_pem)
        await self.store.remember_key(self.vehicle, key.key_id, key.spki_der, key.certificate_pem)
        frames = []
        for s in sequences:
            frame = self.truck.frame(s, **({"device_time": device_time} if device_time is not None else {}))
            frames.append(Verified(s, frame.payload, frame.signature, frame.key_id,
                                   frame_pb2.FramePayload.FromString(frame.payload)))
        await self.store.commit(self.vehicle, frames, received=len(frames))

    async def read_all(self, *, page: int = 7) -> list[int]:
        """Every sequence readable across the tiers, page by page."""
        out, after = [], 0
        while chunk := await self.tiered.frames(self.vehicle, after=after, count=page):
            out += [f.sequence for f in chunk]
            after = chunk[-1].sequence
        return out


def make_tiers(truck: Truck, client: redis.asyncio.Redis, objects: ObjectStore, **config: object) -> Tiers:
    cfg = dataclasses.replace(TelemetryConfig(), archive_retention_days=1, **config)
    store = TelemetryStore(client, cfg)
    return Tiers(truck, store, objects, Archiver(store, objects, cfg), TieredFrames(store, objects), cfg)


@pytest.fixture
def local_objects(tmp_path: Path) -> ObjectStore:
    return open_object_store(str(tmp_path / "archive"))


@pytest.fixture
async def tiers(truck: Truck, store_client: redis.asyncio.Redis, local_objects: ObjectStore) -> AsyncIterator[Tiers]:
    made = make_tiers(truck, store_client, local_objects)
    yield made
    await made.store.close()
