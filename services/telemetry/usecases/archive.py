"""The archive tier: frames leave the hot stream as create-only, digest-listed Parquet parts in an object store,
and reads join the two tiers by sequence.

Commit order of one part (each step only after the one before it succeeded):

1. plan: the part's range is recorded as the vehicle's ``pending`` plan in the index (store.py), so that
   whoever resumes after a crash writes exactly that part, never a differently cut one over the same frames;
2. the Parquet bytes are built from the hot stream's frames of that range and written create-only with the
   cold retention (the object store reads them back and checks their sha256 before it answers); a key already
   taken (a run that died after its write) is adopted if it holds exactly these frames, and is otherwise a
   conflict that stops the vehicle's archiving (and so its trimming) until someone looks;
3. the manifest entry (key, sha256, size, range, count, version id, retain-until) is written as its own
   create-only object beside the part (``archive/v1/manifest/...``);
4. the index commits the entry and moves the vehicle's archived watermark to the part's last sequence.

Only then may the retention sweep trim those frames (store.py ``trim_expired``: never past the watermark, never
inside the hot window). A crash anywhere loses nothing (the frames are still hot) and duplicates nothing (the
part's name is its range; create-only; the index commit is idempotent).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import Unavailable
from services.runtime.objectstore import ObjectExists, ObjectStore, ObjectStoreError

from .. import metrics
from ..config import TelemetryConfig
from ..convert import ArchivedPart, part_bytes, read_part
from ..domain.archive import MAX_PART_FRAMES, PartEntry, PartPlan, due_count, manifest_key, plan_parts
from ..store import StoredFrame, TelemetryStore

__all__ = ["ArchiveConflict", "ArchiveRun", "Archiver", "TieredFrames"]

_log = logging.getLogger("haulmesh.telemetry.archive")

#: Parsed parts kept for reads (a page walks one part at a time; pages in a row read the same part).
_PART_CACHE_SIZE = 4
#: How long a replica's periodic job holds a vehicle (a crashed holder delays that vehicle by at most this).
_LEASE_SECONDS = 600
#: Frames per XRANGE while planning (a part is at most MAX_PART_FRAMES).
_SCAN_CHUNK = 2000


class ArchiveConflict(ObjectStoreError):
    """A part's key holds other frames than the hot stream's for that range: nothing is adopted or trimmed."""

    code_name = "DATA_LOSS"
    default_reason = "ARCHIVE_CONFLICT"


@dataclass
class ArchiveRun:
    """What one run did: vehicles looked at, frames and parts written (or adopted), frames now archived."""

    vehicles: int = 0
    frames_archived: int = 0
    parts_written: int = 0
    frames_in_archive: int = 0

    def add(self, other: ArchiveRun) -> None:
        self.vehicles += other.vehicles
        self.frames_archived += other.frames_archived
        self.parts_written += other.parts_written
        self.frames_in_archive += other.frames_in_archive


class Archiver:
    """Archives vehicles' frames into ``objects`` (see the module docstring for the commit order)."""

    def __init__(self, store: TelemetryStore, objects: ObjectStore, config: TelemetryConfig) -> None:
        self._store = store
        self._objects = objects
        self._config = config
        #: One run per vehicle at a time in this process (the periodic job, a mission's end, RunArchive).
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._owner = uuid.uuid4().hex

    async def on_mission_event(self, event: event_pb2.Event) -> None:
        """Consumer of the mission service's dispatched / state_changed events: the vehicle's carrier is
        remembered for good (its parts' partition), and a COMPLETED mission's frames (everything the vehicle
        stored by then) are archived at once: a settled mission's evidence goes to the archive right away. An
        archive failure is logged, not raised: the periodic job archives them later."""
        which = event.WhichOneof("data")
        if which not in ("mission_dispatched", "mission_state_changed"):
            return
        mission = getattr(event, which).mission
        if not mission.vehicle:
            return
        vehicle_id = mission.vehicle.removeprefix("vehicles/")
        await self._store.remember_carrier(vehicle_id, event.carrier.removeprefix("carriers/"))
        if which != "mission_state_changed" or mission.state != mission_pb2.Mission.STATE_COMPLETED:
            return
        high_water = await self._store.high_water(vehicle_id)
        if not high_water:
            return
        try:
            run = await self.archive_vehicle(vehicle_id, through=high_water)
        except (ObjectStoreError, OSError) as exc:
            metrics.ARCHIVE_FAILURES.inc()
            _log.warning("archive of completed %s (vehicle %s) failed: %s; the periodic job will retry",
                         mission.name, vehicle_id, exc)
            return
        _log.info("%s completed: vehicle %s archived through %d (%d frames in %d new parts)", mission.name,
                  vehicle_id, high_water, run.frames_archived, run.parts_written)

    async def run(self, vehicle_id: str = "", *, force: bool = False) -> ArchiveRun:
        """Archive due frames of one vehicle (or of every vehicle with telemetry). Without ``force`` (the periodic
        job) only frames older than HAULMESH_ARCHIVE_AFTER_SECONDS are due, and a vehicle another replica holds
        the lease of is skipped; ``force`` (RunArchive): every stored frame is due, lease or not."""
        total = ArchiveRun()
        for vid in [vehicle_id] if vehicle_id else await self._store.vehicles():
            # The periodic job skips a vehicle another replica is archiving (saved work, not safety).
            leased = not force
            if leased and not await self._store.take_archive_lease(vid, self._owner, _LEASE_SECONDS):
                continue
            try:
                total.add(await self.archive_vehicle(vid, through=None if not force else 0))
            except (ObjectStoreError, OSError) as exc:  # OSError: a local directory failing under the store
                metrics.ARCHIVE_FAILURES.inc()
                _log.warning("archive of vehicle %s stopped: %s", vid, exc)
                if vehicle_id:
                    raise
            finally:
                if leased:
                    await self._store.drop_archive_lease(vid, self._owner)
        return total

    async def archive_vehicle(self, vehicle_id: str, *, through: int | None = None) -> ArchiveRun:
        """Archive the vehicle's frames: with ``through`` None those received before now minus the archive lag;
        with ``through`` 0 every stored frame; else those at or below sequence ``through``."""
        lock, users = self._locks.get(vehicle_id, (asyncio.Lock(), 0))
        self._locks[vehicle_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._archive_vehicle(vehicle_id, through)
        finally:
            lock, users = self._locks[vehicle_id]
            if users == 1:  # nobody else holds or waits for it: forget it (bounded by the vehicles in progress)
                del self._locks[vehicle_id]
            else:
                self._locks[vehicle_id] = (lock, users - 1)

    async def _archive_vehicle(self, vehicle_id: str, through: int | None) -> ArchiveRun:
        run = ArchiveRun(vehicles=1)
        cutoff_ms = int((time.time() - self._config.archive_after_seconds) * 1000)
        for _ in range(1_000_000):  # bounded: each pass commits a part or ends
            upto, pending, frames_in_archive, carrier_id = await self._store.archive_state(vehicle_id)
            if pending:  # an interrupted part (this process or another, maybe dead): finish exactly that one
                plan = PartPlan.from_json(pending)
            else:
                plan = await self._next_plan(vehicle_id, upto, carrier_id, cutoff_ms, through)
                if plan is None:
                    run.frames_in_archive = frames_in_archive
                    return run
                plan = await self._store.plan_part(vehicle_id, upto, plan)
                if plan is None:  # another replica moved the watermark meanwhile: plan again from there
                    continue
            written = await self._write_part(plan)
            if await self._store.commit_part(vehicle_id, plan, written):
                run.frames_archived += plan.count
                run.parts_written += 1
                metrics.record_archived(plan.count, written.size)
        raise RuntimeError("archive loop did not converge")  # pragma: no cover

    async def _next_plan(self, vehicle_id: str, upto: int, carrier_id: str, cutoff_ms: int,
                         through: int | None) -> PartPlan | None:
        """The next part after the watermark, or None when nothing is due."""
        if through is None:  # the periodic job: most vehicles have nothing due, found with one small read
            oldest = await self._store.frames(vehicle_id, after=upto, count=1)
            if not oldest or oldest[0].receive_ms > cutoff_ms:
                return None
        rows: list[tuple[int, int]] = []
        after = upto
        while len(rows) < MAX_PART_FRAMES:
            chunk = await self._store.frames(vehicle_id, after=after, through=through or 0,
                                             count=min(_SCAN_CHUNK, MAX_PART_FRAMES - len(rows)))
            if not chunk:
                break
            due = len(chunk) if through is not None else due_count([f.receive_ms for f in chunk], cutoff_ms)
            rows += [(f.sequence, _device_ms(f)) for f in chunk[:due]]
            if due < len(chunk):
                break
            after = chunk[-1].sequence
        plans = plan_parts(vehicle_id, carrier_id, rows, retention_days=self._config.archive_retention_days)
        return plans[0] if plans else None

    async def _write_part(self, plan: PartPlan) -> PartEntry:
        frames = await self._store.frames(plan.vehicle_id, after=plan.first - 1, through=plan.last,
                                          count=plan.count + 1)
        if len(frames) != plan.count or frames[0].sequence != plan.first or frames[-1].sequence != plan.last:
            # The range is below the watermark-to-be and trimming never passes the watermark, so this is a bug or
            # a store that lost data: refuse rather than archive a part that disagrees with its plan.
            raise ArchiveConflict(f"vehicle {plan.vehicle_id}: hot frames {plan.first}..{plan.last} are "
                                  f"{len(frames)}, the plan says {plan.count}", metadata={"key": plan.key})
        certificates = {k: pem.decode() for k, pem, _ in await self._store.certificates(plan.vehicle_id)}
        data = await asyncio.to_thread(part_bytes, plan.vehicle_id, plan.carrier_id, frames, certificates)
        retain = datetime.fromtimestamp(plan.retain_until_ms / 1000, UTC)
        if retain <= datetime.now(UTC):  # only for data older than its retention: keep it a day, never 0
            retain = datetime.fromtimestamp(time.time() + 86400, UTC)
        try:
            stored = await asyncio.to_thread(self._objects.put_new, plan.key, data, retain_until=retain)
            sha256, size, version_id = stored.sha256, stored.size, stored.version_id
        except ObjectExists:
            sha256, size, version_id = await self._adopt(plan, data, frames)
        if self._config.archive_test_kill_after_write:
            os.kill(os.getpid(), signal.SIGKILL)  # tests only: the crash between object write and index commit
        entry = PartEntry(plan.key, sha256, size, plan.first, plan.last, plan.count, version_id,
                          plan.retain_until_ms)
        manifest = entry.to_json().encode()
        try:
            await asyncio.to_thread(self._objects.put_new, manifest_key(plan.key), manifest, retain_until=retain)
        except ObjectExists:
            existing = await asyncio.to_thread(self._objects.get, manifest_key(plan.key))
            if PartEntry.from_json(existing) != entry:
                raise ArchiveConflict(f"manifest of {plan.key} differs from the part written",
                                      metadata={"key": plan.key}) from None
        return entry

    async def _adopt(self, plan: PartPlan, data: bytes, frames: list[StoredFrame]) -> tuple[str, int, str]:
        """The part's key is taken (a run died after writing it): adopt it if it holds exactly these frames."""
        head = await asyncio.to_thread(self._objects.head, plan.key)
        if head is None:
            raise ArchiveConflict(f"{plan.key} exists but cannot be read", metadata={"key": plan.key})
        if head.sha256 != hashlib.sha256(data).hexdigest():
            # Not our bytes (another pyarrow wrote it, or certificates were learnt since): compare the envelopes.
            try:
                existing = read_part(await asyncio.to_thread(self._objects.get, plan.key)).frames
            except ValueError:
                existing = []
            if [_envelope(f) for f in existing] != [_envelope(f) for f in frames]:
                raise ArchiveConflict(f"{plan.key} holds other frames than the hot stream's "
                                      f"{plan.first}..{plan.last}", metadata={"key": plan.key})
        _log.info("adopted %s written by an earlier, interrupted run", plan.key)
        return head.sha256, head.size, head.version_id


def _envelope(frame: StoredFrame) -> tuple[int, bytes, bytes, str, int]:
    return frame.sequence, frame.payload, frame.signature, frame.key_id, frame.receive_ms


def _device_ms(frame: StoredFrame) -> int:
    return frame_pb2.FramePayload.FromString(frame.payload).device_time.ToMilliseconds()


class TieredFrames:
    """A vehicle's stored frames by sequence across both tiers: the archived parts below the hot stream's first
    sequence, the hot stream from there. A frame in both (archived, not trimmed yet) is read hot."""

    def __init__(self, store: TelemetryStore, objects: ObjectStore | None) -> None:
        self._store = store
        self._objects = objects
        self._parts: OrderedDict[str, ArchivedPart] = OrderedDict()

    async def frames(self, vehicle_id: str, *, after: int = 0, through: int = 0, count: int = 100,
                     ) -> list[StoredFrame]:
        """Stored frames with ``after`` < sequence <= ``through`` (0: no bound), ascending, at most ``count``."""
        for _ in range(3):
            first_hot = await self._store.first_hot(vehicle_id)
            if self._objects is not None and (not first_hot or after + 1 < first_hot):
                bounds = [b for b in (first_hot - 1 if first_hot else 0, through) if b]
                upper = min(bounds) if bounds else 0  # 0: no upper bound
                archived = await self._archived(vehicle_id, after, upper, count)
                if archived:
                    return archived
            hot = await self._store.frames(vehicle_id, after=after, through=through, count=count)
            if self._objects is None or (hot and hot[0].sequence == after + 1):
                return hot
            # Sequences skipped between ``after`` and the first hot frame were never stored (lost by the truck) or
            # were trimmed after ``first_hot`` was read (then they are archived). The stream's first id only grows,
            # so an unchanged first id means no trim came between: the skipped ones are gaps.
            if await self._store.first_hot(vehicle_id) == first_hot:
                return hot
        raise Unavailable(f"reads of vehicle {vehicle_id} after {after} keep meeting the archive's trim; retry",
                          reason="ARCHIVE_TRIM_RACE")

    async def _archived(self, vehicle_id: str, after: int, upper: int, count: int) -> list[StoredFrame]:
        out: list[StoredFrame] = []
        for entry in await self._store.archive_parts(vehicle_id, after, limit=4):
            if upper and entry.first > upper:
                break
            part = await self._part(entry)
            for frame in part.frames:
                if frame.sequence > after and (not upper or frame.sequence <= upper):
                    out.append(frame)
                    if len(out) >= count:
                        return out
            after = max(after, entry.last)
        return out

    async def _part(self, entry: PartEntry) -> ArchivedPart:
        cached = self._parts.get(entry.key)
        if cached is not None:
            self._parts.move_to_end(entry.key)
            return cached
        assert self._objects is not None
        data = await asyncio.to_thread(self._objects.get, entry.key, version_id=entry.version_id)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ArchiveConflict(f"{entry.key} does not hash to its manifest entry", metadata={"key": entry.key})
        part = await asyncio.to_thread(read_part, data)
        self._parts[entry.key] = part
        if len(self._parts) > _PART_CACHE_SIZE:
            self._parts.popitem(last=False)
        return part
