"""Telemetry persistence in Redis: per-vehicle streams under the vehicle's hash tag.

Keys (``{v}`` is the vehicle id as a Redis Cluster hash tag, so one vehicle's keys share a slot):

* ``telemetry:{v}:frames`` — Stream, entry id ``<sequence>-0``, fields ``p`` (payload), ``s`` (signature),
  ``k`` (key id), ``t`` (server receive time, ms). Redis refuses an id at or below the last one, so the
  stream itself cannot hold a duplicate or go backwards; range reads by sequence are XRANGE.
* ``telemetry:{v}:counters`` — Hash: ``high_water``, ``received``, ``stored``, ``duplicates``, ``lost``,
  ``rejected:<REASON>``, ``last_frame_ms``.
* ``telemetry:{v}:liveness`` — Hash: last heartbeat (time, edge CPU, link, spool).
* ``telemetry:{v}:keys`` — Hash key id -> DER SubjectPublicKeyInfo of every certificate seen.
* ``telemetry:{v}:certs`` — Hash key id -> PEM of the first certificate seen with that key (the certificate that
  verified the frames signed with it: evidence packs and the archive carry it); ``telemetry:{v}:certs_seen`` —
  Hash key id -> when it was first seen (server ms). Both written only if absent (HSETNX).
* ``telemetry:{v}:commands`` — Stream of commands not yet acknowledged (``c``: serialized Command,
  ``id``: command id); ``telemetry:{v}:command_ids`` maps command id -> entry id;
  ``telemetry:{v}:command_acks`` — Stream of the CommandAcks received (MAXLEN ~ ``command_acks_kept``): only
  for commands issued to the vehicle (``telemetry:{v}:issued:<id>`` exists, 30 days), and one per command and
  outcome (``o:<outcome>`` in ``telemetry:{v}:command:<id>``: its receive time, ``a:<outcome>`` the ack itself), so
  a truck cannot grow it beyond its commands. An operator's command (CreateVehicleCommand) also keeps ``record``
  (its VehicleCommand as created) in that hash, indexed by ``telemetry:{v}:operator_commands`` (sorted set,
  members ``<create ms, 15 digits>:<id>``, the newest ``OPERATOR_COMMANDS_KEPT``).
* ``telemetry:{v}:session`` — id of the vehicle's current stream session (newest wins).
* ``telemetry:vehicles`` — Set of vehicle ids with telemetry (retention sweeps it).
* ``telemetry:{v}:mission`` — Hash ``carrier``, ``name``, ``update_ms``, ``mission`` (serialized Mission, empty once
  it ended): the vehicle's current mission, kept from the mission service's events (newest change wins);
  derived events are published to that carrier's stream.
* ``telemetry:fleet:{fleet-<carrier>}`` — Sorted set, vehicle id scored by the ``update_ms`` of the mission change
  that put it there: the vehicles running one of the carrier's missions, for the fleet watch. An index, not the
  truth: written after ``telemetry:{v}:mission`` (another slot, so not in its script), each reader checks every
  member against that hash and drops a stale one only if its score is not newer than what it checked
  (``_UNINDEX_FLEET_LUA``), so a removal never races away a newer addition. ``telemetry:fleet:indexed`` marks
  that the vehicles of ``telemetry:vehicles`` were indexed once (missions recorded before the index existed).
* ``telemetry:{v}:lost`` — set while the vehicle is reported lost (connectivity); taken by whoever
  announces the restoration.
* ``telemetry:{v}:archive`` — Hash: ``upto`` (the archived watermark: every stored sequence at or below it is in
  a committed part), ``frames``, ``parts``, ``bytes`` (totals of the committed parts), ``pending`` (the
  PartPlan, JSON, of the part being written: recorded before its object is written, removed when its entry is
  committed, so whoever finds it finishes exactly that part), ``carrier`` (the vehicle's last known carrier,
  kept for good: the partition of its parts).
* ``telemetry:{v}:archive_lease`` — String, the archiver (a random id per process) working on the vehicle's
  periodic archive, with a TTL: replicas' periodic jobs skip a vehicle another one is archiving (only to save
  work: two archivers on one vehicle are safe, see usecases/archive.py).
* ``telemetry:{v}:archive_parts`` — Sorted set of the committed parts' PartEntry (JSON) scored by their last
  sequence: the parts covering sequences after ``s`` are ZRANGEBYSCORE ``(s +inf``.
* ``telemetry:archive:store`` — String, the id (``archive/v1/STORE-ID``) of the object store this Redis store's
  frames are archived to: set once (SET NX) by the first process whose archive opened; a process whose archive
  holds another id refuses to archive (and to trim), so its parts can never be elsewhere than the watermark says.
* ``telemetry:archive:due`` — Hash vehicle id -> sequence: vehicles whose frames through that sequence are to be
  archived now (a mission COMPLETED), marked by the ``telemetry-missions`` consumer and archived by the archive
  worker (usecases/archive.py), removed once archived (unless marked higher meanwhile).
* ``telemetry:heard:{heard-<n>}`` — Sorted sets (16 shards by CRC32 of the vehicle id, so no key is hot):
  vehicle id scored by when it was last heard (Hello or heartbeat, server ms). Any replica's liveness sweep
  reads the silent end of them, so a truck whose stream was on a replica that died is still reported lost.

Durability: a frame is acknowledged only after ``WAITAOF 1 <replicas>`` confirmed it fsync'd. The commit loop
gathers the batches of every stream of this process for up to ``commit_window_seconds``, writes them in one
pipeline, and waits once per group (a probe write and ``WAITAOF`` behind the writes, in the same pipeline on one
store; :func:`services.runtime.wait_durable` per primary that took the group's writes on a cluster): with
``appendfsync everysec`` one fsync then covers thousands of frames instead of one WAITAOF (up to a second) per
batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

import redis.asyncio
from redis.asyncio.client import Pipeline

from haulmesh.events.v1 import event_pb2
from haulmesh.telemetry.v1 import stream_pb2
from services.runtime import (
    ClusterClient,
    Unavailable,
    add_event,
    confirmed_durable,
    queue_durable_wait,
    transact,
    wait_durable,
)

from . import metrics
from .config import TelemetryConfig
from .domain import Verified
from .domain.archive import PartEntry, PartPlan, trim_boundary

__all__ = ["DOORBELL", "CommitResult", "OperatorCommandRecord", "Silence", "StoredFrame", "TelemetryStore"]

_log = logging.getLogger("haulmesh.telemetry.store")

# One batch of one vehicle, atomically: the sequencing rule of domain/frames.py plan_sequences (duplicates skipped,
# gaps counted) against the stored high-water mark, then the counters. Atomic so that two writers of the
# same vehicle (a stream and IngestTelemetry, or two replicas during a stream hand-over) cannot both
# store a sequence or miscount a gap. Sequences travel as decimal strings and are compared as Lua numbers
# (exact up to 2^53, far beyond any vehicle's lifetime at 1 Hz).
# The batch's receive and reject counts ride along, so a commit group is only EVALSHA calls (one per batch).
# KEYS: frames, counters, archive. ARGV: receive_ms, received, number of reject reasons R, the high-water
# the batch needs (``after``), then R (reason, count) pairs, then (sequence, payload, signature, key_id) per frame.
# Returns: the high-water mark, the sequences skipped (gaps), then 1 (stored), 0 (duplicate: stored, or at or
# below the archived watermark) or 2 (passed: at or below the high-water, never stored) per frame. A passed
# frame is refused (counted as rejected:SEQUENCE_PASSED; it is already in ``lost``, as the gap it was).
_COMMIT_LUA = """
local hw_s = redis.call('HGET', KEYS[2], 'high_water') or '0'
local hw = tonumber(hw_s)
local now = ARGV[1]
if tonumber(ARGV[4]) > hw then
  return redis.error_reply('HIGH_WATER_BEHIND ' .. hw_s .. ' < ' .. ARGV[4])
end
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[2], 'received', ARGV[2]) end
local first = 5 + 2 * tonumber(ARGV[3])
for i = 5, first - 1, 2 do redis.call('HINCRBY', KEYS[2], 'rejected:' .. ARGV[i], ARGV[i + 1]) end
local stored, dup, lost, passed = 0, 0, 0, 0
local archived = tonumber(redis.call('HGET', KEYS[3], 'upto') or '0')
local out = {}
for i = first, #ARGV, 4 do
  local seq = tonumber(ARGV[i])
  if seq <= hw then
    -- A duplicate only if it is stored (or was, and went to the archive): a sequence passed over by a
    -- concurrent commit of the vehicle was never stored, and acking its resend as a duplicate would lose it.
    if seq <= archived or #redis.call('XRANGE', KEYS[1], ARGV[i] .. '-0', ARGV[i] .. '-0') > 0 then
      dup = dup + 1
      out[#out + 1] = 0
    else
      passed = passed + 1
      out[#out + 1] = 2
    end
  else
    lost = lost + (seq - hw - 1)
    redis.call('XADD', KEYS[1], ARGV[i] .. '-0', 'p', ARGV[i + 1], 's', ARGV[i + 2], 'k', ARGV[i + 3], 't', now)
    hw = seq
    hw_s = ARGV[i]
    stored = stored + 1
    out[#out + 1] = 1
  end
end
if stored > 0 then
  redis.call('HSET', KEYS[2], 'high_water', hw_s, 'last_frame_ms', now)
  redis.call('HINCRBY', KEYS[2], 'stored', stored)
end
if dup > 0 then redis.call('HINCRBY', KEYS[2], 'duplicates', dup) end
if lost > 0 then redis.call('HINCRBY', KEYS[2], 'lost', lost) end
if passed > 0 then redis.call('HINCRBY', KEYS[2], 'rejected:SEQUENCE_PASSED', passed) end
table.insert(out, 1, lost)
table.insert(out, 1, hw_s)
return out
"""


#: How long a command id is remembered after it was queued, so a redelivered event cannot resend it.
_ISSUED_TTL_SECONDS = 30 * 86400

#: Pub/Sub channel on which a queued command or a new session names its vehicle: the process holding the
#: vehicle's stream sends the command (or ends the replaced stream) at once instead of polling for it.
DOORBELL = "telemetry:doorbell"

# KEYS: commands stream, command id -> entry hash, issued marker. ARGV: command id, command bytes, TTL,
# vehicle id (rung on the doorbell).
_ENQUEUE_LUA = """
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[3]) == false then return false end
local entry = redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'c', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], entry)
redis.call('PUBLISH', '""" + DOORBELL + """', ARGV[4])
return entry
"""

# A truck's CommandAck: stored only for a command issued to it, once per (command, outcome); the queue entry of the
# command is removed either way (a re-sent command answered again with its known outcome). Issued: the marker
# (30 days), or the command still queued for the vehicle (older than the marker, resent until answered: its
# answer must be taken, or it would be resent forever).
# KEYS: issued marker, command id -> entry hash, commands stream, command_acks stream, the command's hash.
# ARGV: command id, ack bytes, receive ms, MAXLEN, outcome, TTL.
# Returns 'unknown' (never issued: nothing written), 'repeat' (outcome already stored) or 'stored'.
_ACK_COMMAND_LUA = """
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if not entry and redis.call('EXISTS', KEYS[1]) == 0 then return 'unknown' end
if entry then
  redis.call('XDEL', KEYS[3], entry)
  redis.call('HDEL', KEYS[2], ARGV[1])
end
if redis.call('HSETNX', KEYS[5], 'o:' .. ARGV[5], ARGV[3]) == 0 then return 'repeat' end
redis.call('HSET', KEYS[5], 'a:' .. ARGV[5], ARGV[2])
redis.call('EXPIRE', KEYS[5], ARGV[6], 'NX')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'id', ARGV[1], 'a', ARGV[2], 't', ARGV[3])
return 'stored'
"""

#: An operator's commands a vehicle's index keeps (the newest); each also expires with its record.
OPERATOR_COMMANDS_KEPT = 1000


@dataclass(frozen=True)
class OperatorCommandRecord:
    """An operator's command as stored: its VehicleCommand as created, the carrier it acts for ("" if none), and
    the vehicle's acknowledgements with their receive times (ms), oldest first."""

    record: bytes
    carrier_id: str
    acks: list[tuple[int, stream_pb2.CommandAck]]


def _operator_command(fields: dict[bytes, bytes]) -> OperatorCommandRecord | None:
    record = fields.get(b"record")
    if record is None:
        return None
    acks = sorted(((int(fields.get(b"o:" + key[2:], b"0")), stream_pb2.CommandAck.FromString(value))
                   for key, value in fields.items() if key.startswith(b"a:")), key=lambda pair: pair[0])
    return OperatorCommandRecord(record, fields.get(b"carrier", b"").decode(), acks)


#: A lost marker outlives any outage worth announcing; an expired one only means no "restored" event.
_LOST_TTL_SECONDS = 30 * 86400

# The newest mission change wins, whatever order the events are handled in (replicas of the consumer handle
# them in parallel): a change older than the one stored is ignored. An ended mission leaves a tombstone
# (empty ``mission``) so that a late change of it cannot bring it back.
# KEYS: the vehicle's mission hash. ARGV: mission name, its update time (ms), carrier id, serialized mission
# ('' when it ended).
_SET_MISSION_LUA = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'update_ms') or '-1')
if tonumber(ARGV[2]) < stored then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'update_ms', ARGV[2], 'carrier', ARGV[3], 'mission', ARGV[4])
return 1
"""


# KEYS: a carrier's fleet index. ARGV: vehicle id, update ms. Removes the vehicle unless it was indexed by a newer
# mission change than the one that showed it stale.
_UNINDEX_FLEET_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

FLEET_INDEXED_KEY = "telemetry:fleet:indexed"


# KEYS: a heard shard. ARGV: vehicle id, cutoff (ms). Removes the vehicle only if it was not heard since.
_FORGET_HEARD_LUA = """
local heard = redis.call('ZSCORE', KEYS[1], ARGV[1])
if heard and tonumber(heard) <= tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


# Record the plan of the next part of a vehicle, unless one is already pending (then it is returned: finish it
# first) or the watermark moved since the caller read it (another replica archived meanwhile).
# KEYS: archive hash. ARGV: the watermark the plan starts after, the plan (JSON).
# Returns {'pending', plan} (ours or the one already pending) or {'moved', current watermark}.
_PLAN_PART_LUA = """
local pending = redis.call('HGET', KEYS[1], 'pending')
if pending then return {'pending', pending} end
local upto = redis.call('HGET', KEYS[1], 'upto') or '0'
if upto ~= ARGV[1] then return {'moved', upto} end
redis.call('HSET', KEYS[1], 'pending', ARGV[2])
return {'pending', ARGV[2]}
"""

# Commit a written part: its entry into the parts index, the watermark to its last sequence, the totals, and the
# pending plan cleared. Idempotent: a part at or below the watermark is already committed (a second replica
# finishing the same plan) and only clears the plan.
# KEYS: archive hash, parts sorted set. ARGV: first, last, count, size, entry (JSON), plan (JSON).
# Returns 1 committed, 0 already committed.
_COMMIT_PART_LUA = """
local upto = tonumber(redis.call('HGET', KEYS[1], 'upto') or '0')
local committed = 0
if upto < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
  redis.call('HSET', KEYS[1], 'upto', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'frames', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'parts', 1)
  redis.call('HINCRBY', KEYS[1], 'bytes', ARGV[4])
  committed = 1
end
if redis.call('HGET', KEYS[1], 'pending') == ARGV[6] then redis.call('HDEL', KEYS[1], 'pending') end
return committed
"""


# Mark a vehicle due for archiving through a sequence (keep the highest). KEYS: due hash. ARGV: vehicle, through.
_MARK_DUE_LUA = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""

# Unmark a vehicle archived through a sequence, unless it was marked higher meanwhile.
# KEYS: due hash. ARGV: vehicle, through.
_CLEAR_DUE_LUA = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if current <= tonumber(ARGV[2]) then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

#: The Redis store's archive identity and the vehicles due for archiving (see the keys above).
ARCHIVE_STORE_KEY = "telemetry:archive:store"
ARCHIVE_DUE_KEY = "telemetry:archive:due"


def _k(vehicle_id: str, what: str) -> str:
    return f"telemetry:{{{vehicle_id}}}:{what}"


_HEARD_SHARDS = 16
#: Vehicles per pipelined round trip of the liveness sweep's reads and writes.
_PIPELINE_CHUNK = 500


def _fleet_key(carrier_id: str) -> str:
    return f"telemetry:fleet:{{fleet-{carrier_id}}}"


def _heard_key(shard: int) -> str:
    return f"telemetry:heard:{{heard-{shard}}}"


def _heard_of(vehicle_id: str) -> str:
    return _heard_key(zlib.crc32(vehicle_id.encode()) % _HEARD_SHARDS)


@dataclass(frozen=True)
class Silence:
    """What the liveness sweep needs to know of a vehicle that may have gone silent."""

    last_heard_ms: int
    on_mission: bool


@dataclass(frozen=True)
class CommitResult:
    """Outcome of one committed batch: sequences stored, sequences that were duplicates, new high-water, and
    sequences passed (at or below the high-water, never stored: refused, never to be acknowledged)."""

    stored: list[int]
    duplicates: list[int]
    high_water: int
    receive_ms: int
    passed: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class StoredFrame:
    """A frame as stored: sequence, the exact payload and signature, key id, receive time (ms), and the tier it
    was read from (``hot``: the stream; ``archive``: a Parquet part)."""

    sequence: int
    payload: bytes
    signature: bytes
    key_id: str
    receive_ms: int
    tier: str = "hot"


@dataclass
class _Pending:
    vehicle_id: str
    frames: list[Verified]
    received: int
    rejects: Counter[str]
    future: asyncio.Future[CommitResult] = field(repr=False)
    #: The high-water the batch must find (the stream's earlier batches landed); 0: no check.
    after: int = 0


def _decode_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> StoredFrame:
    return StoredFrame(int(entry_id.split(b"-", 1)[0]), fields[b"p"], fields[b"s"], fields[b"k"].decode(),
                       int(fields[b"t"]))


class TelemetryStore:
    """Frames, counters, keys, liveness and queued commands of one store, with group commit."""

    #: Cap on a cluster's durable waits in flight (each holds pooled connections while the fsync is pending).
    MAX_INFLIGHT_WAITS = 32

    def __init__(self, client: redis.asyncio.Redis, config: TelemetryConfig | None = None, *,
                 ack_replicas: int = 0, ack_replica_disk: bool = True,
                 blocking: redis.asyncio.Redis | None = None) -> None:
        self._redis = client
        #: Blocking reads (watches' XREAD BLOCK) go through their own pool when given: never the commit path's.
        self._blocking = blocking or client
        #: Replicas that must hold a frame too before it is acked, on disk or received (HAULMESH_STORE_ACK_*).
        self._ack_replicas, self._ack_replica_disk = ack_replicas, ack_replica_disk
        self._plan_part = client.register_script(_PLAN_PART_LUA)
        self._commit_part = client.register_script(_COMMIT_PART_LUA)
        self._mark_due = client.register_script(_MARK_DUE_LUA)
        self._clear_due = client.register_script(_CLEAR_DUE_LUA)
        self.config = config or TelemetryConfig()
        self._commit_sha = client.register_script(_COMMIT_LUA).sha  # the Script only names it; see _write
        self._enqueue = client.register_script(_ENQUEUE_LUA)
        self._set_mission = client.register_script(_SET_MISSION_LUA)
        self._unindex_fleet = client.register_script(_UNINDEX_FLEET_LUA)
        self._ack_command = client.register_script(_ACK_COMMAND_LUA)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._waits: set[asyncio.Task[None]] = set()
        self._inflight: asyncio.Semaphore | None = None

    @staticmethod
    def frames_key(vehicle_id: str) -> str:
        """The vehicle's frame stream."""
        return _k(vehicle_id, "frames")

    # ---- ingest -------------------------------------------------------------------------------------

    async def commit(self, vehicle_id: str, frames: list[Verified], *, received: int = 0,
                     rejects: Counter[str] | None = None) -> CommitResult:
        """Store ``frames`` (ascending) and count ``received``/``rejects``; returns once durable.

        Raises Unavailable when the store fails or does not confirm the fsync in time: the caller must
        not acknowledge, and the truck will resend (duplicates are then recognised).
        """
        return await self.submit(vehicle_id, frames, received=received, rejects=rejects)

    def submit(self, vehicle_id: str, frames: list[Verified], *, received: int = 0,
               rejects: Counter[str] | None = None, after: int = 0) -> asyncio.Future[CommitResult]:
        """:meth:`commit` as a future, for callers that keep several commits in flight (no task per batch).

        ``after``: the high-water the store must hold for this batch to apply (what the stream's earlier
        batches reached). With several commits in flight, an earlier one can fail (a stale connection after a
        store restart, an fsync lost with the store) while a later one lands; frame ids only grow, so the
        earlier frames could then never be stored and would pass for duplicates when resent. Refused instead
        (the stream ends, the truck resumes from the real high-water)."""
        if rejects:  # counted when rejected: whatever becomes of the batch's good frames, these are final
            metrics.record_rejects(rejects)
        if self._loop_task is None or self._loop_task.done():
            self._queue = asyncio.Queue()
            self._inflight = asyncio.Semaphore(self.MAX_INFLIGHT_WAITS)
            self._loop_task = asyncio.get_running_loop().create_task(self._commit_loop())
        future: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        assert self._queue is not None
        self._queue.put_nowait(_Pending(vehicle_id, frames, received, rejects or Counter(), future, after))
        return future

    async def close(self) -> None:
        """Stop the commit loop (pending commits fail with Unavailable)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, *self._waits, return_exceptions=True)

    async def _commit_loop(self) -> None:
        assert self._queue is not None and self._inflight is not None
        loop = asyncio.get_running_loop()
        one_store = not isinstance(self._redis, ClusterClient)
        while True:
            group = [await self._queue.get()]
            # Group commit: whatever else arrives within the window rides the same pipeline and fsync wait.
            # One sleep per group, not a timed wait per batch: the window is a fixed cost, not per frame.
            if self.config.commit_window_seconds > 0:
                await asyncio.sleep(self.config.commit_window_seconds)
            while not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                # One store: the writes and their fsync wait in one pipeline, one round trip; the next group is
                # what arrived meanwhile, so a slower fsync makes bigger groups rather than more waits.
                results = await self._write(group, durable=one_store)
            except Exception as exc:  # store down, or the fsync unconfirmed: nothing of this group is acknowledged
                _fail(group, exc)
                continue
            if one_store:
                self._settle(group, results)
                continue
            # A cluster: the writes went to several primaries, each gets its own probe and wait. Writes of the
            # next group go out while this one waits for its fsync; a later WAITAOF returning implies every
            # earlier write is on disk too, and each stream acks its batches in order.
            await self._inflight.acquire()
            task = loop.create_task(self._await_durable(group, results))
            self._waits.add(task)
            task.add_done_callback(self._waits.discard)

    async def _write(self, group: list[_Pending], *, durable: bool) -> list[object]:
        """Run the group's commit scripts; ``durable``: with the fsync wait behind them on the same connection
        (one store only), which covers them and anything applied before. Each batch's reply and receive time."""
        receive_ms = int(time.time() * 1000)
        calls = []
        for item in group:
            args: list[object] = [receive_ms, item.received, len(item.rejects), item.after]
            for reason, count in item.rejects.items():
                args += [reason, count]
            for frame in item.frames:
                args += [frame.sequence, frame.payload_bytes, frame.signature, frame.key_id]
            calls.append((_k(item.vehicle_id, "frames"), _k(item.vehicle_id, "counters"),
                          _k(item.vehicle_id, "archive"), *args))
        timeout_ms = int(self.config.durable_timeout_seconds * 1000)
        # EVALSHA directly rather than through redis-py's Script on a pipeline, which asks SCRIPT EXISTS before
        # every execution: a round trip per group. A store that lost its script cache (restarted) answers
        # NOSCRIPT to every call of the group, none of which ran, so loading it and sending them again is safe.
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            for call in calls:
                pipe.evalsha(self._commit_sha, 3, *call)
            if durable:
                queue_durable_wait(pipe, calls[0][0], timeout_ms, replicas=self._ack_replicas,
                                   replica_disk=self._ack_replica_disk)
            raw = await pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, redis.exceptions.NoScriptError) for r in raw[:len(calls)]):
                self._commit_sha = await self._redis.script_load(_COMMIT_LUA)
                continue
            break
        if durable and not confirmed_durable(raw[len(calls):], replicas=self._ack_replicas,
                                             replica_disk=self._ack_replica_disk):
            raise Unavailable("store did not confirm the fsync in time; frames not acknowledged", reason="NOT_DURABLE")
        return [(reply, receive_ms) for reply in raw[:len(calls)]]

    async def _await_durable(self, group: list[_Pending], results: list[object]) -> None:
        assert self._inflight is not None
        try:
            timeout_ms = int(self.config.durable_timeout_seconds * 1000)
            # On the stores (every primary, on a cluster) that took the group's writes: see wait_durable.
            if not await wait_durable(self._redis, [_k(item.vehicle_id, "frames") for item in group], timeout_ms,
                                      replicas=self._ack_replicas, replica_disk=self._ack_replica_disk):
                raise Unavailable("store did not confirm the fsync in time; frames not acknowledged",
                                  reason="NOT_DURABLE")
        except Exception as exc:
            _fail(group, exc)
            return
        finally:
            self._inflight.release()
        self._settle(group, results)

    def _settle(self, group: list[_Pending], results: list[object]) -> None:
        """Complete each batch of a durable group with what the store did with its frames."""
        durable_at = time.time()
        stored_total = duplicates_total = gaps_total = 0
        ages: list[float] = []
        for item, (reply, receive_ms) in zip(group, results, strict=True):
            if isinstance(reply, Exception):
                # Logged with its reason (HIGH_WATER_BEHIND, an XADD error): the stream ends on its first failed
                # commit, so a later batch's refusal is seen nowhere else.
                _log.warning("store refused a batch of %s (%d frames): %s", item.vehicle_id, len(item.frames), reply)
                if not item.future.done():
                    item.future.set_exception(Unavailable(f"store refused the batch: {reply}",
                                                          reason="STORE_ERROR"))
                continue
            high_water, lost, *flags = reply
            stored = [f.sequence for f, s in zip(item.frames, flags, strict=True) if s == 1]
            duplicates = [f.sequence for f, s in zip(item.frames, flags, strict=True) if s == 0]
            passed = [f.sequence for f, s in zip(item.frames, flags, strict=True) if s == 2]
            stored_total += len(stored)
            duplicates_total += len(duplicates)
            if passed:
                metrics.record_rejects(Counter({"SEQUENCE_PASSED": len(passed)}))
            gaps_total += lost
            # Stored frames are the batch's tail (ascending, above the high-water mark), so when the last
            # frame was stored it is the batch's newest: one freshness figure per batch.
            if flags and flags[-1] == 1:
                device_time = item.frames[-1].payload.device_time
                ages.append(durable_at - device_time.seconds - device_time.nanos * 1e-9)
            # Counted above even when nobody awaits the result any more (the stream ended): it is stored.
            if not item.future.done():
                item.future.set_result(CommitResult(
                    stored=stored, duplicates=duplicates, high_water=int(high_water), receive_ms=receive_ms,
                    passed=passed))
        metrics.record_durable(stored_total, duplicates_total, gaps_total, ages)

    # ---- reads --------------------------------------------------------------------------------------

    async def high_water(self, vehicle_id: str) -> int:
        """Highest sequence of the vehicle stored durably enough to have been acknowledged, 0 if none."""
        raw = await self._redis.hget(_k(vehicle_id, "counters"), "high_water")
        return int(raw or 0)

    async def counters(self, vehicle_id: str) -> dict[str, int]:
        """The vehicle's counters (see the module docstring)."""
        raw = await self._redis.hgetall(_k(vehicle_id, "counters"))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def frames(self, vehicle_id: str, *, after: int = 0, through: int = 0, count: int = 100) -> list[StoredFrame]:
        """Stored frames with ``after`` < sequence <= ``through`` (0: no upper bound), ascending."""
        start = f"({after}-0" if after else "-"
        end = f"{through}-0" if through else "+"
        entries = await self._redis.xrange(self.frames_key(vehicle_id), start, end, count=count)
        return [_decode_entry(i, f) for i, f in entries]

    async def frame(self, vehicle_id: str, sequence: int) -> StoredFrame | None:
        """One stored frame by sequence."""
        found = await self.frames(vehicle_id, after=sequence - 1, through=sequence, count=1)
        return found[0] if found else None

    async def wait_frames(self, vehicle_id: str, after: int, *, block_ms: int = 2000,
                          count: int = 500) -> list[StoredFrame]:
        """Frames after ``after``, waiting up to ``block_ms`` for the first to be stored (XREAD BLOCK)."""
        reply = await self._blocking.xread({self.frames_key(vehicle_id): f"{after}-0"}, count=count, block=block_ms)
        return [_decode_entry(i, f) for _, entries in reply or [] for i, f in entries]

    async def wait_fleet_frames(self, cursors: dict[str, int], *, block_ms: int = 2000,
                                count: int = 100) -> list[tuple[str, list[StoredFrame]]]:
        """Frames of several vehicles after their cursors (vehicle -> sequence), at most ``count`` per vehicle:
        ``(vehicle, frames)`` for those with any. One store: one XREAD BLOCK over every stream (one connection of
        the blocking pool, answered as soon as any vehicle has a frame). A cluster refuses a multi-key command
        across slots (every vehicle has its own), so there each vehicle is one non-blocking XREAD, pipelined per
        primary, polled every 250 ms while nothing comes (block_ms at most)."""
        keys = {self.frames_key(v).encode(): v for v in cursors}
        streams = {self.frames_key(v): f"{c}-0" for v, c in cursors.items()}
        if not streams:
            return []
        if isinstance(self._blocking, ClusterClient):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + block_ms / 1000
            while True:
                pipe = self._blocking.pipeline(transaction=False)
                for key, after in streams.items():
                    pipe.xread({key: after}, count=count)
                replies = [item for reply in await pipe.execute() for item in reply or []]
                if replies or loop.time() >= deadline:
                    break
                await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))
        else:
            replies = await self._blocking.xread(streams, count=count, block=block_ms) or []
        found = []
        for key, entries in replies:
            vehicle = keys.get(key if isinstance(key, bytes) else key.encode())
            if vehicle is not None and entries:
                found.append((vehicle, [_decode_entry(i, f) for i, f in entries]))
        return found

    # ---- keys, sessions, liveness --------------------------------------------------------------------

    async def remember_key(self, vehicle_id: str, key_id: str, spki_der: bytes,
                           certificate_pem: bytes = b"") -> dict[str, bytes]:
        """Record the key of the certificate the vehicle authenticated with (and the certificate, the first
        time its key is seen); returns every key seen."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(_k(vehicle_id, "keys"), key_id, spki_der)
        pipe.hgetall(_k(vehicle_id, "keys"))
        pipe.sadd("telemetry:vehicles", vehicle_id)
        if certificate_pem:
            pipe.hsetnx(_k(vehicle_id, "certs"), key_id, certificate_pem)
            pipe.hsetnx(_k(vehicle_id, "certs_seen"), key_id, int(time.time() * 1000))
        keys = (await pipe.execute())[1]
        return {k.decode(): v for k, v in keys.items()}

    async def certificates(self, vehicle_id: str) -> list[tuple[str, bytes, int]]:
        """``(key id, certificate PEM, first seen ms)`` of every certificate remembered, oldest first."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(_k(vehicle_id, "certs"))
        pipe.hgetall(_k(vehicle_id, "certs_seen"))
        certs, seen = await pipe.execute()
        found = [(k.decode(), pem, int(seen.get(k, 0))) for k, pem in certs.items()]
        return sorted(found, key=lambda c: (c[2], c[0]))

    async def claim_session(self, vehicle_id: str, session_id: str) -> None:
        """Make ``session_id`` the vehicle's current session (a newer stream replaces an older one); the
        doorbell tells a replica holding an older stream of the vehicle to end it."""
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(_k(vehicle_id, "session"), session_id)
        pipe.hset(_k(vehicle_id, "liveness"), "last_seen_ms", now_ms)  # a Hello is a sign of life
        pipe.zadd(_heard_of(vehicle_id), {vehicle_id: now_ms}, gt=True)
        pipe.publish(DOORBELL, vehicle_id)
        await pipe.execute()

    async def record_heartbeat(self, vehicle_id: str, heartbeat: stream_pb2.Heartbeat) -> None:
        """Last seen, edge CPU, link quality and spool state of the vehicle."""
        metrics.record_edge_cpu(heartbeat.edge_cpu_utilization_percent)
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(_heard_of(vehicle_id), {vehicle_id: now_ms}, gt=True)
        pipe.hset(_k(vehicle_id, "liveness"), mapping={
            "last_seen_ms": now_ms,
            "device_time_ms": heartbeat.device_time.ToMilliseconds(),
            "edge_cpu_utilization_percent": repr(heartbeat.edge_cpu_utilization_percent),
            "link_technology": stream_pb2.LinkQuality.Technology.Name(heartbeat.link.technology),
            "link_rssi_dbm": heartbeat.link.rssi_dbm,
            "link_rtt_ms": heartbeat.link.rtt_ms,
            "spool_depth": heartbeat.spool_depth,
            "dropped_frames": heartbeat.dropped_frames,
            "last_sequence": heartbeat.last_sequence,
        })
        await pipe.execute()

    # ---- commands -----------------------------------------------------------------------------------

    async def enqueue_command(self, vehicle_id: str, command: stream_pb2.Command) -> str:
        """Queue a command for the vehicle (delivered on its stream, now or on connect, until acked).

        Idempotent on the command id: the same command queued again (an event redelivered) is not sent
        twice, also after the truck acknowledged it. Returns the queue entry id ("" when already queued).
        """
        entry = await self._enqueue(keys=[_k(vehicle_id, "commands"), _k(vehicle_id, "command_ids"),
                                          _k(vehicle_id, f"issued:{command.command_id}")],
                                    args=[command.command_id, command.SerializeToString(), _ISSUED_TTL_SECONDS,
                                          vehicle_id])
        return entry.decode() if entry else ""

    async def poll_commands_of(self, cursors: list[tuple[str, str]],
                               ) -> list[tuple[list[tuple[str, stream_pb2.Command]], str]]:
        """For each ``(vehicle id, after)``: the queued, unacknowledged commands after entry id ``after`` in
        issue order, and the vehicle's current session id, all in one pipeline."""
        pipe = self._redis.pipeline(transaction=False)
        for vehicle_id, after in cursors:
            pipe.xrange(_k(vehicle_id, "commands"), f"({after}" if after != "0-0" else "-", "+", count=100)
            pipe.get(_k(vehicle_id, "session"))
        replies = await pipe.execute()
        results = []
        for entries, session in zip(replies[::2], replies[1::2], strict=True):
            commands = [(i.decode(), stream_pb2.Command.FromString(f[b"c"])) for i, f in entries]
            results.append((commands, session.decode() if session else ""))
        return results

    def doorbell(self) -> redis.asyncio.client.PubSub:
        """A Pub/Sub connection for :data:`DOORBELL` (subscribe to it; messages name vehicles)."""
        return self._redis.pubsub(ignore_subscribe_messages=True)

    async def remember_command(self, vehicle_id: str, command_id: str, carrier_id: str, mission: str) -> None:
        """Which carrier and mission a command acts for (commands carry no tenant; the acknowledgement needs
        one), and for an assignment which vehicle runs the mission (exception events name only the mission)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(_k(vehicle_id, f"command:{command_id}"), mapping={"carrier": carrier_id, "mission": mission})
        pipe.expire(_k(vehicle_id, f"command:{command_id}"), _ISSUED_TTL_SECONDS)
        pipe.set(f"telemetry:{{{mission}}}:vehicle", vehicle_id, ex=_ISSUED_TTL_SECONDS)
        await pipe.execute()

    async def command_context(self, vehicle_id: str, command_id: str) -> tuple[str, str]:
        """``(carrier id, mission name)`` a queued command was issued for; empty strings if unknown."""
        carrier, mission = await self._redis.hmget(_k(vehicle_id, f"command:{command_id}"), ["carrier", "mission"])
        return (carrier or b"").decode(), (mission or b"").decode()

    async def mission_vehicle(self, mission: str) -> str:
        """The vehicle a mission (``missions/{m}``) was assigned to, "" if none is known."""
        raw = await self._redis.get(f"telemetry:{{{mission}}}:vehicle")
        return raw.decode() if raw else ""

    async def command_ack_state(self, vehicle_id: str, ack: stream_pb2.CommandAck) -> str:
        """``unknown`` (the command was never issued to this vehicle), ``repeat`` (this outcome of it is already
        recorded) or ``new``: whether :meth:`ack_command` would store the ack (read only)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(_k(vehicle_id, f"issued:{ack.command_id}"))
        pipe.hexists(_k(vehicle_id, "command_ids"), ack.command_id)  # still queued: issued (see _ACK_COMMAND_LUA)
        pipe.hexists(_k(vehicle_id, f"command:{ack.command_id}"), f"o:{ack.outcome}")
        issued, queued, seen = await pipe.execute()
        return "unknown" if not (issued or queued) else "repeat" if seen else "new"

    async def ack_command(self, vehicle_id: str, ack: stream_pb2.CommandAck) -> str:
        """Record a CommandAck (once per command and outcome, only for a command issued to the vehicle) and stop
        re-sending its command; returns ``stored``, ``repeat`` or ``unknown`` (see ``_ACK_COMMAND_LUA``)."""
        outcome = await self._ack_command(
            keys=[_k(vehicle_id, f"issued:{ack.command_id}"), _k(vehicle_id, "command_ids"),
                  _k(vehicle_id, "commands"), _k(vehicle_id, "command_acks"),
                  _k(vehicle_id, f"command:{ack.command_id}")],
            args=[ack.command_id, ack.SerializeToString(), int(time.time() * 1000), self.config.command_acks_kept,
                  ack.outcome, _ISSUED_TTL_SECONDS])
        return outcome.decode() if isinstance(outcome, bytes) else str(outcome)

    async def record_operator_command(self, vehicle_id: str, command_id: str, record: bytes, create_ms: int,
                                      carrier_id: str, mission: str) -> None:
        """Keep an operator's command (its VehicleCommand as created, ``record``) with the carrier and mission it acts
        for, and index it by creation time (the vehicle's last ``OPERATOR_COMMANDS_KEPT``): before it is queued, so
        that the truck's first acknowledgement finds it."""
        index = _k(vehicle_id, "operator_commands")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_k(vehicle_id, f"command:{command_id}"),
                      mapping={"carrier": carrier_id, "mission": mission, "record": record})
            pipe.expire(_k(vehicle_id, f"command:{command_id}"), _ISSUED_TTL_SECONDS)
            pipe.zadd(index, {f"{create_ms:015d}:{command_id}": 0})
            pipe.zremrangebyrank(index, 0, -OPERATOR_COMMANDS_KEPT - 1)
            pipe.expire(index, _ISSUED_TTL_SECONDS)
            await pipe.execute()

    async def operator_command(self, vehicle_id: str, command_id: str) -> OperatorCommandRecord | None:
        """An operator's command as recorded, with the acknowledgements received for it; None if there is none of
        that id (or it has expired)."""
        fields = await self._redis.hgetall(_k(vehicle_id, f"command:{command_id}"))
        return _operator_command(fields)

    async def operator_commands(self, vehicle_id: str, after: str, count: int
                                ) -> tuple[list[OperatorCommandRecord], str]:
        """The vehicle's operator commands newest first, from the index member ``after`` (exclusive; "" from the
        newest): up to ``count`` with their acknowledgements, and the member to continue from ("" at the end)."""
        index = _k(vehicle_id, "operator_commands")
        members = await self._redis.zrange(index, f"({after}" if after else "+", "-", desc=True, bylex=True,
                                           offset=0, num=count + 1)
        page, more = members[:count], len(members) > count
        pipe = self._redis.pipeline(transaction=False)
        for member in page:
            pipe.hgetall(_k(vehicle_id, f"command:{member.decode().partition(':')[2]}"))
        found = [c for c in (_operator_command(f) for f in await pipe.execute()) if c is not None] if page else []
        return found, page[-1].decode() if more else ""

    async def command_acks(self, vehicle_id: str) -> list[stream_pb2.CommandAck]:
        """Every CommandAck received from the vehicle, in order."""
        entries = await self._redis.xrange(_k(vehicle_id, "command_acks"))
        return [stream_pb2.CommandAck.FromString(f[b"a"]) for _, f in entries]

    # ---- retention ----------------------------------------------------------------------------------

    async def trim_expired(self, vehicle_id: str, cutoff_ms: int, *, chunk: int = 500) -> int:
        """Drop the vehicle's frames received before ``cutoff_ms`` that are archived (at or below the archived
        watermark: domain trim_boundary); returns how many were dropped. Nothing archived, nothing dropped.

        Entry ids are sequences, not times, so the cut is found by walking from the oldest entry (receive
        times ascend with sequence), and never past the archived watermark (nothing above it may go): the walk
        covers at most the archived frames still hot, however many unarchived ones follow; then XTRIM MINID.
        """
        archived_upto = int(await self._redis.hget(_k(vehicle_id, "archive"), "upto") or 0)
        if not archived_upto:
            return 0
        key, after, boundary = self.frames_key(vehicle_id), "-", None
        while boundary is None:
            entries = await self._redis.xrange(key, after, f"{archived_upto}-0", count=chunk)
            if not entries:
                break
            for entry_id, fields in entries:
                if int(fields[b"t"]) >= cutoff_ms:
                    boundary = entry_id
                    break
            else:
                after = b"(" + entries[-1][0]
        if boundary is None:
            # Every archived frame still hot has expired: MINID just past the watermark drops them all and keeps
            # the stream's last id (a stream emptied by XTRIM still refuses ids at or below it).
            boundary = f"{archived_upto + 1}-0".encode()
        # MINID keeps ids >= boundary: the highest sequence dropped is boundary - 1, never past the watermark.
        through = trim_boundary(archived_upto, int(boundary.split(b"-")[0]) - 1)
        if not through:
            return 0
        return int(await self._redis.xtrim(key, minid=f"{through + 1}-0", approximate=False))

    async def sweep_retention(self) -> int:
        """Trim every vehicle's archived frames older than the retention period; returns frames dropped."""
        cutoff_ms = int((time.time() - self.config.retention_seconds) * 1000)
        dropped = 0
        for raw in await self._redis.smembers("telemetry:vehicles"):
            dropped += await self.trim_expired(raw.decode(), cutoff_ms)
        return dropped

    # ---- the archive index ----------------------------------------------------------------------------

    async def vehicles(self) -> list[str]:
        """Every vehicle with telemetry."""
        return sorted(raw.decode() for raw in await self._redis.smembers("telemetry:vehicles"))

    async def archive_state(self, vehicle_id: str) -> tuple[int, str, int, str]:
        """``(archived watermark, pending plan JSON or "", frames archived, carrier or "")`` of a vehicle."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(_k(vehicle_id, "archive"), ["upto", "pending", "frames", "carrier"])
        pipe.hget(_k(vehicle_id, "mission"), "carrier")  # kept after the mission ends (a tombstone)
        (upto, pending, frames, carrier_id), mission_carrier = await pipe.execute()
        carrier_id = carrier_id or mission_carrier or b""
        return (int(upto or 0), (pending or b"").decode(), int(frames or 0), carrier_id.decode())

    async def remember_carrier(self, vehicle_id: str, carrier_id: str) -> None:
        """The vehicle's carrier, for the partition of its parts (kept after its missions end)."""
        if carrier_id:
            await self._redis.hset(_k(vehicle_id, "archive"), "carrier", carrier_id)

    async def take_archive_lease(self, vehicle_id: str, owner: str, ttl_seconds: int) -> bool:
        """Claim the vehicle's periodic archive for ``owner`` for ``ttl_seconds``; False if another holds it."""
        return bool(await self._redis.set(_k(vehicle_id, "archive_lease"), owner, nx=True, ex=ttl_seconds))

    async def drop_archive_lease(self, vehicle_id: str, owner: str) -> None:
        """Release the lease if ``owner`` still holds it."""
        await self._redis.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
                               "end return 0", 1, _k(vehicle_id, "archive_lease"), owner)

    async def plan_part(self, vehicle_id: str, after: int, plan: PartPlan) -> PartPlan | None:
        """Record ``plan`` as the vehicle's pending part if the watermark is still ``after`` and nothing is
        pending; returns the plan to write (ours, or the one already pending), None if the watermark moved."""
        status, value = await self._plan_part(keys=[_k(vehicle_id, "archive")], args=[after, plan.to_json()])
        return PartPlan.from_json(value) if status == b"pending" else None

    async def commit_part(self, vehicle_id: str, plan: PartPlan, entry: PartEntry) -> bool:
        """Commit a written part into the index (see ``_COMMIT_PART_LUA``); False if it already was."""
        return bool(await self._commit_part(
            keys=[_k(vehicle_id, "archive"), _k(vehicle_id, "archive_parts")],
            args=[entry.first, entry.last, entry.count, entry.size, entry.to_json(), plan.to_json()]))

    async def archive_parts(self, vehicle_id: str, after: int, *, limit: int = 16) -> list[PartEntry]:
        """The committed parts holding sequences after ``after``, ascending, at most ``limit``."""
        raw = await self._redis.zrangebyscore(_k(vehicle_id, "archive_parts"), f"({after}", "+inf", start=0,
                                              num=limit)
        return [PartEntry.from_json(r) for r in raw]

    async def claim_archive_store(self, store_id: str) -> str:
        """Record ``store_id`` as the archive of this Redis store unless one is recorded (SET NX); returns the
        recorded id (``store_id`` if it was the first)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(ARCHIVE_STORE_KEY, store_id, nx=True)
        pipe.get(ARCHIVE_STORE_KEY)
        _, holder = await pipe.execute()
        return (holder or b"").decode()

    async def mark_archive_due(self, vehicle_id: str, through: int) -> None:
        """Mark the vehicle's frames through ``through`` due for archiving now (the archive worker takes it)."""
        await self._mark_due(keys=[ARCHIVE_DUE_KEY], args=[vehicle_id, through])

    async def archive_due(self, *, limit: int = 100) -> list[tuple[str, int]]:
        """Up to ``limit`` vehicles marked due, with the sequence to archive through."""
        _, found = await self._redis.hscan(ARCHIVE_DUE_KEY, 0, count=limit)
        return sorted((k.decode(), int(v)) for k, v in found.items())[:limit]

    async def clear_archive_due(self, vehicle_id: str, through: int) -> None:
        """Unmark the vehicle archived through ``through`` (kept if it was marked higher meanwhile)."""
        await self._clear_due(keys=[ARCHIVE_DUE_KEY], args=[vehicle_id, through])

    async def archive_durable(self, vehicle_id: str) -> bool:
        """Whether every write already applied to the vehicle's keys (its frames, its archive index) is fsync'd
        (see :func:`services.runtime.wait_durable`); False if the store cannot say so in time."""
        try:
            return await wait_durable(self._redis, [_k(vehicle_id, "frames")],
                                      int(self.config.durable_timeout_seconds * 1000))
        except redis.ResponseError:  # no AOF at all (appendonly no): nothing is durable
            return False

    async def first_hot(self, vehicle_id: str) -> int:
        """The lowest sequence still in the hot stream, 0 if it is empty."""
        first = await self._redis.xrange(self.frames_key(vehicle_id), "-", "+", count=1)
        return int(first[0][0].split(b"-")[0]) if first else 0

    # ---- missions and derived events ------------------------------------------------------------------

    async def set_mission(self, vehicle_id: str, carrier_id: str, name: str, update_ms: int,
                          mission: bytes | None) -> bool:
        """Record a change of the vehicle's mission (``mission`` None: it ended); False when a newer change is
        already stored (see ``_SET_MISSION_LUA``)."""
        return bool(await self._set_mission(keys=[_k(vehicle_id, "mission")],
                                            args=[name, update_ms, carrier_id, mission or b""]))

    async def index_fleet(self, carrier_id: str, vehicle_id: str, update_ms: int, *, running: bool) -> None:
        """Keep the carrier's fleet index (see the module docstring) after a mission change of the vehicle was
        recorded: in it while ``running``, out of it once the mission ended (unless indexed by a newer change)."""
        if running:
            await self._redis.zadd(_fleet_key(carrier_id), {vehicle_id: update_ms}, gt=True)
        else:
            await self._unindex_fleet(keys=[_fleet_key(carrier_id)], args=[vehicle_id, update_ms])

    async def fleet(self, carrier_id: str, limit: int) -> list[tuple[str, bytes]]:
        """``(vehicle, serialized Mission)`` of at most ``limit`` vehicles running one of the carrier's missions,
        those indexed last first. Each member of the index is checked against the vehicle's mission hash; a stale
        one (its mission ended, or another carrier's now) is dropped from the index on the way."""
        found: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        start = 0
        while len(found) < limit:
            members = await self._redis.zrevrange(_fleet_key(carrier_id), start, start + limit - 1)
            if not members:
                break
            start += len(members)
            vehicles = [v for v in (m.decode() for m in members) if v not in seen]
            seen.update(vehicles)
            pipe = self._redis.pipeline(transaction=False)
            for vehicle_id in vehicles:
                pipe.hmget(_k(vehicle_id, "mission"), ["carrier", "mission", "update_ms"])
            stale = []
            for vehicle_id, (owner, raw, update_ms) in zip(vehicles, await pipe.execute(), strict=True):
                if owner is not None and owner.decode() == carrier_id and raw:
                    found.append((vehicle_id, raw))
                else:
                    stale.append((vehicle_id, int(update_ms or 0)))
            if stale:
                pipe = self._redis.pipeline(transaction=False)
                for vehicle_id, update_ms in stale:
                    pipe.eval(_UNINDEX_FLEET_LUA, 1, _fleet_key(carrier_id), vehicle_id, update_ms)
                start -= sum(int(n) for n in await pipe.execute())  # the members after them moved up
        return found[:limit]

    async def index_fleets_once(self) -> int:
        """Index the current missions of every vehicle with telemetry, once per store (``FLEET_INDEXED_KEY``): the
        missions recorded before the fleet index existed. Returns the vehicles indexed (0 if already done). The mark
        is set once the work is done (a run cut short is run again; two at once index the same, ZADD GT)."""
        if await self._redis.exists(FLEET_INDEXED_KEY):
            return 0
        indexed = 0
        vehicles = await self.vehicles()
        for begin in range(0, len(vehicles), _PIPELINE_CHUNK):
            chunk = vehicles[begin:begin + _PIPELINE_CHUNK]
            pipe = self._redis.pipeline(transaction=False)
            for vehicle_id in chunk:
                pipe.hmget(_k(vehicle_id, "mission"), ["carrier", "mission", "update_ms"])
            writes = self._redis.pipeline(transaction=False)
            for vehicle_id, (owner, raw, update_ms) in zip(chunk, await pipe.execute(), strict=True):
                if owner and raw:
                    writes.zadd(_fleet_key(owner.decode()), {vehicle_id: int(update_ms or 0)}, gt=True)
                    indexed += 1
            await writes.execute()
        await self._redis.set(FLEET_INDEXED_KEY, int(time.time() * 1000))
        return indexed

    async def mission(self, vehicle_id: str) -> tuple[str, bytes] | None:
        """``(carrier id, serialized Mission)`` of the vehicle's current mission, None if it has none."""
        raw = await self._redis.hmget(_k(vehicle_id, "mission"), ["carrier", "mission"])
        return (raw[0].decode(), raw[1]) if raw[0] and raw[1] else None

    async def missions(self, vehicle_ids: list[str]) -> list[tuple[str, bytes] | None]:
        """:meth:`mission` of each vehicle, in order: one pipelined round trip per ``_PIPELINE_CHUNK`` vehicles."""
        found: list[tuple[str, bytes] | None] = []
        for start in range(0, len(vehicle_ids), _PIPELINE_CHUNK):
            pipe = self._redis.pipeline(transaction=False)
            for vehicle_id in vehicle_ids[start:start + _PIPELINE_CHUNK]:
                pipe.hmget(_k(vehicle_id, "mission"), ["carrier", "mission"])
            found.extend((raw[0].decode(), raw[1]) if raw[0] and raw[1] else None for raw in await pipe.execute())
        return found

    async def mark_lost(self, vehicle_id: str, marker: bytes) -> bool:
        """Record that the vehicle was reported lost; False if it already was (by this or another replica),
        so each outage is announced once across replicas."""
        return bool(await self._redis.set(_k(vehicle_id, "lost"), marker, nx=True, ex=_LOST_TTL_SECONDS))

    async def lost_of(self, vehicle_ids: list[str]) -> list[bool]:
        """Whether each vehicle has a lost marker (read only: :meth:`take_lost` takes it), in order; one pipelined
        round trip per ``_PIPELINE_CHUNK`` vehicles."""
        found: list[bool] = []
        for start in range(0, len(vehicle_ids), _PIPELINE_CHUNK):
            pipe = self._redis.pipeline(transaction=False)
            for vehicle_id in vehicle_ids[start:start + _PIPELINE_CHUNK]:
                pipe.exists(_k(vehicle_id, "lost"))
            found.extend(bool(n) for n in await pipe.execute())
        return found

    async def take_lost(self, vehicle_id: str) -> bytes | None:
        """Remove and return the lost marker: whoever takes it announces the restoration, exactly once."""
        return await self._redis.getdel(_k(vehicle_id, "lost"))

    async def silent_since(self, cutoff_ms: int, *, per_shard: int = 256) -> list[str]:
        """Vehicles last heard (Hello or heartbeat) before ``cutoff_ms``, up to ``per_shard`` of each shard."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(_HEARD_SHARDS):
            pipe.zrangebyscore(_heard_key(shard), "-inf", cutoff_ms, start=0, num=per_shard)
        return [raw.decode() for found in await pipe.execute() for raw in found]

    async def silence_of(self, vehicle_ids: list[str]) -> dict[str, Silence]:
        """For each vehicle: when it was last heard (frame stored, heartbeat or Hello; server ms, 0 if never)
        and whether it is on a mission. One pipelined round trip per ``_PIPELINE_CHUNK`` vehicles."""
        found: dict[str, Silence] = {}
        for start in range(0, len(vehicle_ids), _PIPELINE_CHUNK):
            chunk = vehicle_ids[start:start + _PIPELINE_CHUNK]
            pipe = self._redis.pipeline(transaction=False)
            for vehicle_id in chunk:
                pipe.hget(_k(vehicle_id, "counters"), "last_frame_ms")
                pipe.hget(_k(vehicle_id, "liveness"), "last_seen_ms")
                pipe.hstrlen(_k(vehicle_id, "mission"), "mission")  # empty once the mission ended
            replies = await pipe.execute()
            for i, vehicle_id in enumerate(chunk):
                frame_ms, seen_ms, mission_bytes = replies[3 * i:3 * i + 3]
                found[vehicle_id] = Silence(max(int(frame_ms or 0), int(seen_ms or 0)), bool(mission_bytes))
        return found

    async def heard_at(self, heard: dict[str, int]) -> None:
        """Move vehicles to when they were last heard (ms) in the heard index (never back in time)."""
        for start in range(0, len(heard), _PIPELINE_CHUNK):
            pipe = self._redis.pipeline(transaction=False)
            for vehicle_id, at_ms in list(heard.items())[start:start + _PIPELINE_CHUNK]:
                pipe.zadd(_heard_of(vehicle_id), {vehicle_id: at_ms}, gt=True)
            await pipe.execute()

    async def forget_heard(self, vehicle_ids: list[str], heard_before_ms: int) -> None:
        """Take vehicles silent since before ``heard_before_ms`` out of the heard index once their silence is
        dealt with; one heard since stays (its next Hello or heartbeat would put it back anyway)."""
        for start in range(0, len(vehicle_ids), _PIPELINE_CHUNK):
            pipe = self._redis.pipeline(transaction=False)
            for vehicle_id in vehicle_ids[start:start + _PIPELINE_CHUNK]:
                pipe.eval(_FORGET_HEARD_LUA, 1, _heard_of(vehicle_id), vehicle_id, heard_before_ms)
            await pipe.execute()

    async def publish(self, carrier_id: str, events: list[event_pb2.Event]) -> None:
        """Append derived events to the carrier's event stream (one transaction, in order)."""

        async def write(pipe: Pipeline) -> None:
            pipe.multi()
            for event in events:
                add_event(pipe, event)

        await transact(self._redis, carrier_id, [], write)


def _fail(group: list[_Pending], exc: BaseException) -> None:
    error = exc if isinstance(exc, Unavailable) else Unavailable(f"telemetry store unavailable: {exc}",
                                                                 reason="STORE_UNAVAILABLE")
    _log.warning("commit group of %d batches failed: %s", len(group), exc)
    for item in group:
        if not item.future.done():
            item.future.set_exception(error)
