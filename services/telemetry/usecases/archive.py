"""The archive tier: frames leave the hot stream as create-only, digest-listed Parquet parts in an object store,
and reads join the two tiers by sequence.

Commit order of one part (each step only after the one before it succeeded; a run first waits until every frame
stored by then is durable (``wait_durable``) and goes no further than the high-water mark read before that):

1. plan: the part's range is recorded as the vehicle's ``pending`` plan in the index (store.py), so that
   whoever resumes after a crash writes exactly that part, never a differently cut one over the same frames;
2. the Parquet bytes are built from the hot stream's frames of that range and written create-only with the
   cold retention (the object store reads them back and checks their sha256 before it answers); a key already
   taken (a run that died after its write) is read back (digest checked by the store) and adopted if it holds
   exactly these frames (never on the strength of a sha256 label), and is otherwise a
   conflict that stops the vehicle's archiving (and so its trimming) until someone looks;
3. the manifest entry (key, sha256, size, range, count, version id, retain-until) is written as its own
   create-only object beside the part (``archive/v1/manifest/...``);
4. the index commits the entry and moves the vehicle's archived watermark to the part's last sequence (the plan
   and the commit are each followed by ``wait_durable``).

Only then may the retention sweep trim those frames (store.py ``trim_expired``: never past the watermark, never
inside the hot window). A crash anywhere loses nothing (the frames are still hot) and duplicates nothing (the
part's name is its range; create-only; the index commit is idempotent).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import signal
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import ConfigError, Unavailable
from services.runtime.objectstore import (
    ObjectExists,
    ObjectStore,
    ObjectStoreError,
    S3ObjectStore,
    StoredObject,
    open_object_store,
)

from .. import metrics
from ..config import TelemetryConfig
from ..convert import PartReader, part_bytes, read_part
from ..domain.archive import (
    MAX_PART_FRAMES,
    STORE_ID_KEY,
    PartEntry,
    PartPlan,
    due_count,
    manifest_key,
    plan_parts,
)
from ..store import StoredFrame, TelemetryStore

__all__ = [
    "ArchiveConflict",
    "ArchiveObjects",
    "ArchiveRun",
    "ArchiveStoreMismatch",
    "ArchiveUnavailable",
    "Archiver",
    "TieredFrames",
]

_log = logging.getLogger("haulmesh.telemetry.archive")

#: Parsed parts kept for reads (a page walks one part at a time; pages in a row read the same part).
_PART_CACHE_SIZE = 4
#: How long a replica's periodic job holds a vehicle (a crashed holder delays that vehicle by at most this).
_LEASE_SECONDS = 600
#: Frames per XRANGE while planning (a part is at most MAX_PART_FRAMES).
_SCAN_CHUNK = 2000


#: How long the start-up waits for the archive's first open (a reachable store answers in well under this; an
#: unreachable one is left to the background with its retries, and telemetry serves meanwhile).
_FIRST_OPEN_WAIT_SECONDS = 5.0
#: Capped backoff between attempts to open an unreachable archive.
_OPEN_BACKOFF_SECONDS = (1.0, 30.0)
#: How often the archive worker looks for vehicles marked due by another replica (its own marks wake it).
_DUE_POLL_SECONDS = 5.0
#: Vehicles the archive worker takes per round.
_DUE_BATCH = 100


class ArchiveConflict(ObjectStoreError):
    """A part's key holds other frames than the hot stream's for that range: nothing is adopted or trimmed."""

    code_name = "DATA_LOSS"
    default_reason = "ARCHIVE_CONFLICT"


class ArchiveUnavailable(ObjectStoreError):
    """The archive cannot be used now: its store is not reachable yet, or the frames are not durable yet."""

    code_name = "UNAVAILABLE"
    default_reason = "ARCHIVE_UNAVAILABLE"


class ArchiveStoreMismatch(ObjectStoreError):
    """This process's archive is another object store than the one the Redis store's frames are archived to."""

    code_name = "FAILED_PRECONDITION"
    default_reason = "ARCHIVE_STORE_MISMATCH"


class ArchiveObjects(ObjectStore):
    """The archive's object store as a telemetry process holds it: opened in the background with capped backoff
    (a store that is down at start-up never ends telemetry; only a malformed URL, missing credentials, an S3
    bucket without Object Lock or a store that ignores create-only do), and used only once its identity
    (``archive/v1/STORE-ID``, create-only, random) is the one the Redis store recorded first. Until then every
    call raises :class:`ArchiveUnavailable` or :class:`ArchiveStoreMismatch`: nothing is archived, trimmed or
    read from it. Health: ``haulmesh_telemetry_archive_available`` (0/1) and a log line per failed attempt."""

    worm = False

    def __init__(self, url: str, store: TelemetryStore,
                 opener: Callable[[str], ObjectStore] = open_object_store) -> None:
        self.url = url.split("?", 1)[0]  # no query in logs (a careless user may have put a secret there)
        self._url = url
        self._store = store
        self._opener = opener
        self._opened: ObjectStore | None = None
        self.store_id = ""
        #: The opened store once its identity matched the Redis store's; None while not usable.
        self._usable: ObjectStore | None = None
        self._problem = "not opened yet"
        self._pending: Future[tuple[ObjectStore, str]] | None = None
        self._mismatch_logged = ""
        metrics.ARCHIVE_AVAILABLE.set(0)

    # -- opening ---------------------------------------------------------------------------------------------

    def _open(self) -> tuple[ObjectStore, str]:
        """Blocking: open the store, check it is safe to archive to, read (or create) its id."""
        objects = self._opener(self._url)
        if isinstance(objects, S3ObjectStore) and not objects.worm:
            raise ConfigError(f"HAULMESH_ARCHIVE_URL: {objects.url}: bucket {objects.bucket!r} has no Object Lock, "
                              "so archived evidence could be deleted or overwritten; create the bucket with Object "
                              "Lock (it can only be enabled at creation)", field="HAULMESH_ARCHIVE_URL")
        try:
            objects.self_test()  # create-only must really refuse a second create, or the archive is unsafe
        except ObjectStoreError as exc:
            if exc.reason == "CREATE_ONLY_NOT_ENFORCED":
                raise ConfigError(f"HAULMESH_ARCHIVE_URL: {exc.message}", field="HAULMESH_ARCHIVE_URL") from None
            raise
        try:
            objects.put_new(STORE_ID_KEY, secrets.token_hex(16).encode())
        except ObjectExists:
            pass  # opened before (or by another replica at the same moment): its id stands
        store_id = objects.get(STORE_ID_KEY).decode()
        return objects, store_id

    def open_at_start(self) -> None:
        """Start-up (synchronous, in ``register``): begin opening and wait a few seconds. A mistake in the
        configuration raises :class:`ConfigError` (telemetry does not start); a store that does not answer is
        left to :meth:`keep_open` (telemetry serves meanwhile)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive-open")
        self._pending = executor.submit(self._open)
        executor.shutdown(wait=False)
        try:
            self._opened, self.store_id = self._pending.result(timeout=_FIRST_OPEN_WAIT_SECONDS)
        except TimeoutError:
            self._unavailable("still opening after the start-up's wait; retrying in the background")
            return
        except ConfigError:
            raise
        except (ObjectStoreError, OSError) as exc:
            self._pending = None
            self._unavailable(str(getattr(exc, "message", exc)))
            return
        self._pending = None

    def _unavailable(self, why: str) -> None:
        self._problem = why
        metrics.ARCHIVE_AVAILABLE.set(0)
        _log.warning("archive %s unavailable: %s; telemetry serves without it (nothing archived or trimmed)",
                     self.url, why)

    async def keep_open(self) -> None:
        """Open the store (capped backoff) and check its identity against the Redis store's; returns once it is
        usable. A configuration mistake found only now (the store answered late) raises ConfigError."""
        delay = _OPEN_BACKOFF_SECONDS[0]
        while True:
            try:
                if self._opened is None:
                    if self._pending is not None:
                        pending, self._pending = self._pending, None
                        self._opened, self.store_id = await asyncio.wrap_future(pending)
                    else:
                        self._opened, self.store_id = await asyncio.to_thread(self._open)
                await self.verify()
                return
            except ArchiveStoreMismatch:
                pass  # logged by verify; looked at again (an operator may fix the store's record)
            except ConfigError:
                raise
            except (ObjectStoreError, OSError) as exc:
                self._unavailable(str(getattr(exc, "message", exc)))
            except Exception as exc:  # the Redis store restarting (the identity claim): a companion must not die
                self._unavailable(f"cannot check the archive's identity with the store: {exc}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, _OPEN_BACKOFF_SECONDS[1])

    async def verify(self) -> ObjectStore:
        """The store, if it is open and its id is the Redis store's archive id (recorded by the first process to
        open an archive); else :class:`ArchiveUnavailable` / :class:`ArchiveStoreMismatch` (logged, metric 0).
        Asked before every archive run, so a Redis store that lost its record is claimed again at once."""
        if self._opened is None:
            raise ArchiveUnavailable(f"archive {self.url} is not available: {self._problem}")
        holder = await self._store.claim_archive_store(self.store_id)
        if holder != self.store_id:
            self._usable = None
            metrics.ARCHIVE_AVAILABLE.set(0)
            metrics.ARCHIVE_STORE_MISMATCH.set(1)
            message = (f"archive {self.url} is store {self.store_id}, but this Redis store's frames are archived to "
                       f"store {holder}: refusing to archive or trim (two processes with separate archive "
                       "directories, e.g. emptyDirs, would each hold part of the evidence); point "
                       "HAULMESH_ARCHIVE_URL at the shared store")
            if self._mismatch_logged != holder:
                self._mismatch_logged = holder
                _log.error("%s", message)
            raise ArchiveStoreMismatch(message, metadata={"store_id": self.store_id, "recorded": holder})
        if self._usable is None:
            _log.info("archive %s available (store %s)", self.url, self.store_id)
        self._usable, self._mismatch_logged = self._opened, ""
        metrics.ARCHIVE_AVAILABLE.set(1)
        metrics.ARCHIVE_STORE_MISMATCH.set(0)
        return self._opened

    @property
    def available(self) -> bool:
        """Whether the archive is open and verified (archive runs, trims and archived reads may go on)."""
        return self._usable is not None

    def _objects(self) -> ObjectStore:
        if self._usable is None:
            if self._mismatch_logged:
                raise ArchiveStoreMismatch(f"archive {self.url} is not the store this Redis store archives to",
                                           metadata={"store_id": self.store_id})
            raise ArchiveUnavailable(f"archive {self.url} is not available: {self._problem}")
        return self._usable

    # -- the ObjectStore interface, once usable --------------------------------------------------------------

    def put_new(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> StoredObject:
        return self._objects().put_new(key, data, retain_until=retain_until)

    def get(self, key: str, *, version_id: str = "") -> bytes:
        return self._objects().get(key, version_id=version_id)

    def head(self, key: str) -> StoredObject | None:
        return self._objects().head(key)

    def list(self, prefix: str, *, limit: int = 10_000) -> list[str]:
        return self._objects().list(prefix, limit=limit)

    def delete(self, key: str, *, version_id: str = "") -> None:
        self._objects().delete(key, version_id=version_id)

    def self_test(self) -> None:
        self._objects().self_test()


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
        #: One run per vehicle at a time in this process (the periodic job, the worker, RunArchive).
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._owner = uuid.uuid4().hex
        #: Set when this process marks a vehicle due: the archive worker wakes at once (created in the loop).
        self._due: asyncio.Event | None = None
        #: How often the worker looks for other replicas' marks (its own wake it at once).
        self.due_poll_seconds = _DUE_POLL_SECONDS

    def _wake(self) -> asyncio.Event:
        if self._due is None:
            self._due = asyncio.Event()
        return self._due

    async def on_mission_event(self, event: event_pb2.Event) -> None:
        """Consumer of the mission service's dispatched / state_changed events (on the handler that also relays
        commands to trucks, so it never waits on the object store): the vehicle's carrier is remembered for good
        (its parts' partition), and a COMPLETED mission's vehicle is marked due through its high-water mark
        (``telemetry:archive:due``), which wakes the archive worker (:meth:`serve`): a settled mission's evidence
        goes to the archive right away, however slow the object store is."""
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
        await self._store.mark_archive_due(vehicle_id, high_water)
        self._wake().set()
        _log.info("%s completed: vehicle %s due for the archive through %d", mission.name, vehicle_id, high_water)

    async def serve(self) -> None:
        """The archive worker (a companion): opens the archive if it is held lazily (:class:`ArchiveObjects`),
        then archives the vehicles marked due, woken by this process's marks and looking every few seconds for
        other replicas'. A failing vehicle stays marked and is retried with capped backoff."""
        if isinstance(self._objects, ArchiveObjects):
            await self._objects.keep_open()
        wake = self._wake()
        delay = 0.0
        while True:
            try:
                await asyncio.wait_for(wake.wait(), self.due_poll_seconds)
            except TimeoutError:
                pass
            wake.clear()
            try:
                failed = await self.archive_due()
            except Exception as exc:  # the Redis store restarting: the marks wait there; a companion must not die
                _log.warning("archive worker: %s; retrying", exc)
                failed = 1
            delay = 0.0 if not failed else min(max(delay * 2, _OPEN_BACKOFF_SECONDS[0]), _OPEN_BACKOFF_SECONDS[1])
            if failed:
                await asyncio.sleep(delay)

    async def _verified(self) -> None:
        """Raise unless the archive is usable and still this Redis store's (a record lost and claimed again by
        another archive is noticed before the next write, not an hour later)."""
        if isinstance(self._objects, ArchiveObjects):
            await self._objects.verify()

    async def archive_due(self) -> int:
        """Archive every vehicle marked due (through its mark) and unmark it; returns how many failed."""
        try:
            await self._verified()
        except ObjectStoreError:
            return 1  # logged by verify; the marks wait
        failed = 0
        for vehicle_id, through in await self._store.archive_due(limit=_DUE_BATCH):
            try:
                run = await self.archive_vehicle(vehicle_id, through=through)
            except (ObjectStoreError, OSError) as exc:
                metrics.ARCHIVE_FAILURES.inc()
                _log.warning("archive of vehicle %s (due through %d) failed: %s; retrying", vehicle_id, through,
                             exc)
                failed += 1
                continue
            await self._store.clear_archive_due(vehicle_id, through)
            _log.info("vehicle %s archived through %d (%d frames in %d new parts)", vehicle_id, through,
                      run.frames_archived, run.parts_written)
        return failed

    async def run(self, vehicle_id: str = "", *, force: bool = False) -> ArchiveRun:
        """Archive due frames of one vehicle (or of every vehicle with telemetry). Without ``force`` (the periodic
        job) only frames older than HAULMESH_ARCHIVE_AFTER_SECONDS are due, and a vehicle another replica holds
        the lease of is skipped; ``force`` (RunArchive): every stored frame is due, lease or not. An archive that
        is unavailable or not this Redis store's raises (one vehicle) or archives nothing (every vehicle)."""
        total = ArchiveRun()
        try:
            await self._verified()
        except ObjectStoreError:
            if vehicle_id or force:  # an operator's RunArchive is told why
                raise
            return total  # logged by verify; the periodic job asks again next time
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

    async def may_trim(self) -> bool:
        """Whether this process may trim archived frames: its archive is open and is this Redis store's (asked
        of the store now; a plain store handed in by a test always is)."""
        try:
            await self._verified()
        except ObjectStoreError:
            return False
        return True

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

    async def _durable(self, vehicle_id: str, what: str) -> None:
        if not await self._store.archive_durable(vehicle_id):
            raise ArchiveUnavailable(f"vehicle {vehicle_id}: the store could not confirm {what} durable (WAITAOF); "
                                     "archiving later")

    async def _archive_vehicle(self, vehicle_id: str, through: int | None) -> ArchiveRun:
        run = ArchiveRun(vehicles=1)
        cutoff_ms = int((time.time() - self._config.archive_after_seconds) * 1000)
        # Only durable frames are archived: whatever was stored by now is fsync'd once this returns, and the run
        # goes no further than the high-water mark read before it (a frame stored later may not be durable yet).
        durable_through = await self._store.high_water(vehicle_id)
        await self._durable(vehicle_id, "the frames")
        for _ in range(1_000_000):  # bounded: each pass commits a part or ends
            upto, pending, frames_in_archive, carrier_id = await self._store.archive_state(vehicle_id)
            if pending:  # an interrupted part (this process or another, maybe dead): finish exactly that one
                plan = PartPlan.from_json(pending)
            else:
                plan = await self._next_plan(vehicle_id, upto, carrier_id, cutoff_ms, through, durable_through)
                if plan is None:
                    run.frames_in_archive = frames_in_archive
                    return run
                plan = await self._store.plan_part(vehicle_id, upto, plan)
                if plan is None:  # another replica moved the watermark meanwhile: plan again from there
                    continue
                await self._durable(vehicle_id, "the part's plan")  # so a crash finds the plan the object follows
            written = await self._write_part(plan)
            committed = await self._store.commit_part(vehicle_id, plan, written)
            await self._durable(vehicle_id, "the part's commit")  # the watermark lets trims go: durable first
            if committed:
                run.frames_archived += plan.count
                run.parts_written += 1
                metrics.record_archived(plan.count, written.size)
        raise RuntimeError("archive loop did not converge")  # pragma: no cover

    async def _next_plan(self, vehicle_id: str, upto: int, carrier_id: str, cutoff_ms: int,
                         through: int | None, durable_through: int) -> PartPlan | None:
        """The next part after the watermark (at most through ``durable_through``), or None when nothing is due."""
        bound = min(through, durable_through) if through else durable_through
        if bound <= upto:
            return None
        if through is None:  # the periodic job: most vehicles have nothing due, found with one small read
            oldest = await self._store.frames(vehicle_id, after=upto, count=1)
            if not oldest or oldest[0].receive_ms > cutoff_ms:
                return None
        rows: list[tuple[int, int]] = []
        after = upto
        while len(rows) < MAX_PART_FRAMES:
            chunk = await self._store.frames(vehicle_id, after=after, through=bound,
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
        """The part's key is taken (a run died after writing it): adopt it only if it holds exactly these frames.
        Its bytes are read (the store checks them against the digest recorded when they were written) and their
        envelopes compared with the hot stream's: a sha256 label alone is never trusted."""
        try:
            existing = await asyncio.to_thread(self._objects.get, plan.key)
        except ObjectStoreError as exc:
            if exc.code_name in ("DATA_LOSS", "NOT_FOUND"):
                raise ArchiveConflict(f"{plan.key} exists but cannot be read back intact: {exc.message}",
                                      metadata={"key": plan.key}) from None
            raise
        head = await asyncio.to_thread(self._objects.head, plan.key)
        sha256 = hashlib.sha256(existing).hexdigest()
        if existing != data:
            # Not our bytes (another pyarrow wrote it, or certificates were learnt since): compare the envelopes.
            try:
                found = read_part(existing).frames
            except ValueError:
                found = []
            if [_envelope(f) for f in found] != [_envelope(f) for f in frames]:
                raise ArchiveConflict(f"{plan.key} holds other frames than the hot stream's "
                                      f"{plan.first}..{plan.last}", metadata={"key": plan.key})
        if head is None or head.sha256 != sha256:
            raise ArchiveConflict(f"{plan.key} changed while it was adopted", metadata={"key": plan.key})
        _log.info("adopted %s written by an earlier, interrupted run", plan.key)
        return sha256, len(existing), head.version_id


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
        #: Opened parts (bytes digest-checked, footer parsed; rows decoded per read, by row group).
        self._parts: OrderedDict[str, PartReader] = OrderedDict()
        #: Downloads in flight by key: concurrent misses of one part wait for the one download.
        self._loading: dict[str, asyncio.Task[PartReader]] = {}
        #: Parts downloaded (a test's window on the once-per-part download).
        self.downloads = 0

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
            out += await asyncio.to_thread(part.frames, after, upper, count - len(out))
            if len(out) >= count:
                return out
            after = max(after, entry.last)
        return out

    async def _part(self, entry: PartEntry) -> PartReader:
        cached = self._parts.get(entry.key)
        if cached is not None:
            self._parts.move_to_end(entry.key)
            return cached
        loading = self._loading.get(entry.key)
        if loading is None:
            loading = asyncio.get_running_loop().create_task(self._load(entry))
            self._loading[entry.key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(entry.key, None))
        # shield: a reader cancelled while waiting must not cancel the download the others wait for.
        return await asyncio.shield(loading)

    async def _load(self, entry: PartEntry) -> PartReader:
        assert self._objects is not None
        self.downloads += 1
        data = await asyncio.to_thread(self._objects.get, entry.key, version_id=entry.version_id)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ArchiveConflict(f"{entry.key} does not hash to its manifest entry", metadata={"key": entry.key})
        try:
            part = await asyncio.to_thread(PartReader, data)
        except ValueError as exc:
            raise ArchiveConflict(f"{entry.key}: {exc}", metadata={"key": entry.key}) from None
        self._parts[entry.key] = part
        if len(self._parts) > _PART_CACHE_SIZE:
            self._parts.popitem(last=False)
        return part
