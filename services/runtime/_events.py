"""Events: the transactional outbox, consumer groups with reclaim and idempotency, and the dead-letter stream.

Writers commit a state change and the event announcing it in one MULTI/EXEC (:func:`transact` +
:func:`add_event`): the event exists if and only if the change was committed. Each carrier has its own
stream ``events:{carrier}`` (fleet events go to ``events:{fleet}``), in the carrier's slot, so the
transaction never crosses slots on Redis Cluster; the set ``events:streams`` lists the streams for the
consumers.

Consumers (:class:`EventConsumer`) read every stream in a consumer group, woken by a Pub/Sub doorbell
that each commit rings with its stream's name (so an idle mesh costs nothing and an event is handled
within a round trip), with a periodic sweep of all streams as the safety net. Delivery is at least once:
an entry is acknowledged only after its handler succeeded; an entry left pending by a crashed consumer is
claimed by another after ``claim_idle_ms``; an event id already handled by the group is skipped (so a
handler runs once per event id even when an event is redelivered or replayed); an entry whose handler
keeps failing moves, after ``max_deliveries`` failures, to the group's dead-letter stream ``dlq:{<group>}``, from
where it can be inspected and replayed (``haulmesh events dlq``). A handler failing on a *transient* error (the
store or a peer briefly down: ``_retry.is_transient``) does not use up a delivery: it is retried in place with
the runtime's capped, jittered backoff (the entry kept claimed meanwhile) for up to ``transient_retry_seconds``;
only an outage longer than that counts as one failure (so an error wrongly taken for transient still reaches the
dead letters, after ``max_deliveries`` such windows). A store blip can never dead-letter an event. Failures are
counted per event id (``events:failures:{group}:<id>``), not by the stream's delivery count.

Retention (docs/capacity.md, "Retention of what the store holds"): what reads an event stream is its consumer
groups, so an entry is trimmed (XTRIM MINID, :func:`trim_event_stream`, by every consumer every
:data:`RETENTION_SWEEP_SECONDS`) once every group of the stream has acknowledged it *and* it is older than
:data:`EVENT_RETENTION_SECONDS`, the window in which a replayed event is still recognised as done (the done
markers' TTL). Nothing unread or pending is ever
trimmed. A dead-letter stream is read by people and is never trimmed: each entry is an event nobody handled, and
only a replay or a person's clear removes it (a cap would silently delete unresolved ones). Its depth is a
gauge (``haulmesh_events_dlq_depth``) with alerts (deploy/prometheus/rules.yaml) instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio
from google.protobuf.message import Message
from prometheus_client import Counter, Gauge
from redis.asyncio.client import Pipeline

from haulmesh.events.v1 import event_pb2

from ._keys import FLEET, new_id
from ._metrics import METRICS_REGISTRY
from ._retry import Backoff, is_peer_fault, is_transient
from ._tracing import event_span, inject_event_context

__all__ = [
    "STREAMS_KEY",
    "DeadLetter",
    "EventConsumer",
    "add_event",
    "dead_letters",
    "event_stream_key",
    "new_event",
    "replay_dead_letters",
    "transact",
    "trim_event_stream",
]

_log = logging.getLogger("haulmesh.events")
T = TypeVar("T")

#: The set of every event stream, for consumers to discover new carriers' streams.
STREAMS_KEY = "events:streams"
#: Pub/Sub channel on which every commit names the stream it added to: consumers wait on it, not poll.
DOORBELL = "events:doorbell"
#: Acknowledged event entries are kept this long (the done markers' TTL, see ``EventConsumer.done_ttl_seconds``).
EVENT_RETENTION_SECONDS = 7 * 86400
#: How often each consumer trims the streams it reads.
RETENTION_SWEEP_SECONDS = 600.0
#: The fields add_event writes to a stream entry.
_ENVELOPE_FIELDS = frozenset({b"id", b"type", b"event"})
_DATA_FIELDS = frozenset(f.name for f in event_pb2.Event.DESCRIPTOR.oneofs_by_name["data"].fields)
_registered: weakref.WeakKeyDictionary[redis.asyncio.Redis, set[str]] = weakref.WeakKeyDictionary()


# Consumer health, per group only (never per carrier stream: one stream per carrier would be a series per
# carrier). Every replica of a group reports the same group-wide figures, so dashboards and alerts take
# max by (group), not sum. Refreshed by the consumer loop every METRICS_REFRESH_SECONDS, not per scrape:
# the scrape runs on the metrics thread, away from the event loop that owns the store client.
CONSUMER_PENDING = Gauge("haulmesh_events_consumer_pending", "Entries delivered to the group and not yet "
                         "acknowledged, summed over every event stream (XINFO GROUPS pending).", ["group"],
                         registry=METRICS_REGISTRY)
CONSUMER_LAG = Gauge("haulmesh_events_consumer_lag", "Entries not yet delivered to the group, summed over every "
                     "event stream (XINFO GROUPS lag).", ["group"], registry=METRICS_REGISTRY)
DLQ_DEPTH = Gauge("haulmesh_events_dlq_depth", "Entries in the group's dead-letter stream (XLEN dlq:{group}).",
                  ["group"], registry=METRICS_REGISTRY)
DEAD_LETTERED = Counter("haulmesh_events_dead_lettered_total", "Events this process moved to the group's "
                        "dead-letter stream after max_deliveries failed attempts.", ["group"],
                        registry=METRICS_REGISTRY)
EVENTS_HANDLED = Counter("haulmesh_events_handled_total", "Events whose handler succeeded, by group.", ["group"],
                         registry=METRICS_REGISTRY)
#: How often a consumer refreshes its group's gauges: a few commands per carrier stream each time.
METRICS_REFRESH_SECONDS = 15.0
#: A handler's transient failures (store or peer down) are retried in place this long before they count as one
#: failed delivery: long enough for a store restart or failover, short enough that a failure which only looks
#: transient (a peer refusing an oversized call with RESOURCE_EXHAUSTED) still reaches the dead-letter stream.
TRANSIENT_RETRY_SECONDS = 600.0
#: Backoff of those in-place retries: first ceiling and cap (seconds; the cap is also kept under half the claim
#: idle time, so the entry's claim is refreshed before another consumer may take it).
TRANSIENT_BACKOFF_START_SECONDS, TRANSIENT_BACKOFF_MAX_SECONDS = 0.2, 10.0
#: Told ``(part, making progress)`` when a handler starts failing on a store fault and when it gets through.
Progress = Callable[[str, bool], None]


class _LeftPending(Exception):
    """The entry is left pending, neither acknowledged nor counted (the consumer is stopping mid-retry, or the
    entry is no longer this consumer's)."""


def event_stream_key(tag: str) -> str:
    """The stream of a carrier (its id) or of the fleet (:data:`FLEET`)."""
    return f"events:{{{tag}}}"


def dlq_key(group: str) -> str:
    return f"dlq:{{{group}}}"


def new_event(field: str, payload: Message, *, subject: str, carrier_id: str | None, source: str) -> event_pb2.Event:
    """An event whose ``data`` is ``payload`` in the oneof field ``field`` (e.g. ``tender_offered``).

    The type follows event.proto's rule: ``tender_offered`` → ``haulmesh.tender.v1.offered``.
    """
    if field not in _DATA_FIELDS:
        raise ValueError(f"{field!r} is not a field of Event.data")
    area, _, name = field.partition("_")
    event = event_pb2.Event(
        id=new_id(), type=f"haulmesh.{area}.v1.{name}", source=f"//haulmesh.io/{source}", subject=subject,
        carrier=f"carriers/{carrier_id}" if carrier_id else "", spec_version="1.0",
    )
    event.time.GetCurrentTime()
    getattr(event, field).CopyFrom(payload)
    return event


def _tag_of(event: event_pb2.Event) -> str:
    return event.carrier.removeprefix("carriers/") if event.carrier else FLEET


def add_event(pipe: Pipeline, event: event_pb2.Event) -> None:
    """Queue the event in the open MULTI of ``pipe``: it commits with the state change, or not at all.

    The doorbell (a PUBLISH of the stream's name and the event's type in the same transaction) wakes the
    consumers that handle that type at once; the others read it in bulk at their next sweep.
    """
    stream = event_stream_key(_tag_of(event))
    inject_event_context(event)  # consumers continue the committing operation's trace
    pipe.xadd(stream, {"id": event.id, "type": event.type, "event": event.SerializeToString()})
    pipe.publish(DOORBELL, f"{stream} {event.type}")


async def _register_stream(client: redis.asyncio.Redis, tag: str) -> None:
    key = event_stream_key(tag)
    known = _registered.setdefault(client, set())
    if key not in known:
        # Outside the transaction (another slot); idempotent, and done before the first event is written.
        await client.sadd(STREAMS_KEY, key)
        known.add(key)


async def transact(client: redis.asyncio.Redis, tag: str, watch_keys: Sequence[str],
                   fn: Callable[[Pipeline], Awaitable[T]]) -> T:
    """Run ``fn`` as an optimistic transaction over ``watch_keys`` (all tagged ``{tag}``).

    ``fn`` reads through the pipeline (immediate mode while watching), calls ``pipe.multi()``, queues its
    writes and :func:`add_event` calls, and returns the result. A concurrent change to a watched key
    re-runs ``fn`` from the start. Errors raised by ``fn`` abort without writing.
    """
    await _register_stream(client, tag)
    return await client.transaction(fn, *watch_keys, value_from_callable=True)


def _entry_id(raw: Any) -> tuple[int, int]:
    ms, _, seq = _text(raw).partition("-")
    return int(ms), int(seq or 0)


async def trim_event_stream(client: redis.asyncio.Redis, stream: str, *,
                            retention_seconds: float = EVENT_RETENTION_SECONDS) -> int:
    """Trim the entries of ``stream`` that every consumer group has acknowledged and that are older than
    ``retention_seconds``; returns how many were removed. A group's unread entries (after its last delivered
    id) and its pending ones are never trimmed; a stream without groups keeps only the age rule."""
    floor = (int((time.time() - retention_seconds) * 1000), 0)
    for info in await client.xinfo_groups(stream):
        delivered_ms, delivered_seq = _entry_id(info.get("last-delivered-id") or "0-0")
        floor = min(floor, (delivered_ms, delivered_seq + 1))
        if int(info.get("pending") or 0):
            oldest = (await client.xpending(stream, _text(info["name"]))).get("min")
            if oldest:
                floor = min(floor, _entry_id(oldest))
    if floor <= (0, 1):
        return 0
    return int(await client.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))


Handler = Callable[[event_pb2.Event], Awaitable[None]]


class EventConsumer:
    """One consumer of a group, reading every event stream.

    Streams are read one by one (no multi-key command, so it works on Redis Cluster), when the doorbell
    names them or at the periodic sweep.
    """

    def __init__(self, client: redis.asyncio.Redis, *, group: str, handler: Handler,
                 types: set[str] | None = None, consumer: str | None = None, max_deliveries: int = 5,
                 claim_idle_ms: int = 30_000, count: int = 100, sweep_seconds: float = 2.0,
                 done_ttl_seconds: int = 7 * 86400, transient_retry_seconds: float = TRANSIENT_RETRY_SECONDS,
                 progress: Progress | None = None) -> None:
        self._redis = client
        self.group = group
        self._handler = handler
        self._types = types
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._max_deliveries = max_deliveries
        self._claim_idle_ms = claim_idle_ms
        self._count = count
        self._sweep_seconds = sweep_seconds
        self._done_ttl = done_ttl_seconds
        self._transient_retry_seconds = transient_retry_seconds
        self._transient_backoff_max = max(0.005, min(TRANSIENT_BACKOFF_MAX_SECONDS, claim_idle_ms / 2000))
        self._progress = progress
        self._grouped: set[str] = set()
        self._stopping = asyncio.Event()
        self.handled = 0
        #: Called after every pass that reached the store (its streams swept, drained, reclaimed): the progress
        #: signal the Service's health waits for before a restarted consumer counts as recovered.
        self.on_progress: Callable[[], None] | None = None
        self._streams_cache: list[str] = []
        self._streams_checked = 0.0
        # Claims are for entries idle for claim_idle_ms: looking twice as often is soon enough.
        self._reclaim_interval = max(0.01, min(claim_idle_ms / 2000, 5.0))
        self._reclaimed_at = 0.0
        self._measured_at = -METRICS_REFRESH_SECONDS
        self._trimmed_at = time.monotonic()  # the first trim one sweep interval after start
        self._dead_lettered = DEAD_LETTERED.labels(group)
        self._handled_counter = EVENTS_HANDLED.labels(group)
        DLQ_DEPTH.labels(group)  # exported (at 0) from the start, so an alert sees the group before a failure

    def _done_key(self, event_id: str) -> str:
        return f"events:done:{{{self.group}}}:{event_id}"

    def _failures_key(self, event_id: str) -> str:
        """The count of an event's failures that were not transient (the ones that lead to the dead letters)."""
        return f"events:failures:{{{self.group}}}:{event_id}"

    async def _streams(self, *, refresh: bool = False) -> list[str]:
        now = time.monotonic()
        if not refresh and now - self._streams_checked < self._sweep_seconds:
            return self._streams_cache
        self._streams_checked = now
        streams = sorted(s.decode() for s in await self._redis.smembers(STREAMS_KEY))
        for stream in streams:
            if stream not in self._grouped:
                try:
                    # From the stream's beginning: a new group (or stream) misses nothing still retained (7 days).
                    await self._redis.xgroup_create(stream, self.group, id="0", mkstream=True)
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                self._grouped.add(stream)
        self._streams_cache = streams
        return streams

    async def run(self) -> None:
        """Consume until :meth:`stop`.

        Woken by the doorbell for the streams that received events; every ``sweep_seconds`` all streams
        are read anyway (a doorbell is a hint: a message lost with a dropped connection delays, never
        loses, an event), and pending entries are reclaimed at their own interval.
        """
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(DOORBELL)
        try:
            dirty: set[str] = set()
            swept = 0.0
            while not self._stopping.is_set():
                now = time.monotonic()
                if now - swept >= self._sweep_seconds:
                    dirty.update(await self._streams(refresh=True))
                    swept = now
                if now - self._measured_at >= METRICS_REFRESH_SECONDS:
                    self._measured_at = now
                    await self._measure()
                if now - self._trimmed_at >= RETENTION_SWEEP_SECONDS:
                    self._trimmed_at = now
                    await self.apply_retention()
                if now - self._reclaimed_at >= self._reclaim_interval:
                    self._reclaimed_at = now
                    for stream in await self._streams():
                        await self._reclaim(stream)
                for stream in sorted(dirty):
                    await self._drain(stream)
                dirty.clear()
                if self.on_progress is not None:
                    self.on_progress()
                wait = max(0.0, min(self._sweep_seconds - (time.monotonic() - swept),
                                    self._reclaim_interval - (time.monotonic() - self._reclaimed_at)))
                message = await pubsub.get_message(timeout=wait)
                while message is not None:
                    # "<stream> <type>"; a group woken only for types it handles (a bare stream name wakes all).
                    stream, _, event_type = message["data"].decode().partition(" ")
                    if not event_type or self._types is None or event_type in self._types:
                        dirty.add(stream)
                    message = await pubsub.get_message(timeout=0)
        finally:
            await pubsub.aclose()

    async def apply_retention(self) -> int:
        """Trim every event stream this consumer reads (:func:`trim_event_stream`); a failure only logs (the next
        sweep tries again). Returns the entries removed."""
        removed = 0
        try:
            for stream in await self._streams():
                removed += await trim_event_stream(self._redis, stream,
                                                   retention_seconds=max(EVENT_RETENTION_SECONDS, self._done_ttl))
        except redis.RedisError as exc:
            _log.warning("group %s: event streams not trimmed: %s", self.group, exc)
        return removed

    async def _measure(self) -> None:
        """Refresh the group's pending, lag and dead-letter gauges (read-only; a failure only logs)."""
        pending = lag = 0
        try:
            for stream in list(self._grouped):
                for info in await self._redis.xinfo_groups(stream):
                    if _text(info.get("name")) == self.group:
                        pending += int(info.get("pending") or 0)
                        # lag is nil when Redis cannot tell (entries deleted mid-stream): count none then.
                        lag += int(info.get("lag") or 0)
            depth = await self._redis.xlen(dlq_key(self.group))
        except redis.RedisError as exc:
            _log.debug("group %s: metrics not refreshed: %s", self.group, exc)
            return
        CONSUMER_PENDING.labels(self.group).set(pending)
        CONSUMER_LAG.labels(self.group).set(lag)
        DLQ_DEPTH.labels(self.group).set(depth)

    async def _drain(self, stream: str) -> None:
        if stream not in self._grouped:
            await self._streams(refresh=True)
        while not self._stopping.is_set():
            replies = await self._redis.xreadgroup(self.group, self.consumer, {stream: ">"}, count=self._count)
            read = 0
            for _, entries in replies or ():
                read += await self._process_batch(stream, entries)
            if read < self._count:
                return

    async def stop(self) -> None:
        self._stopping.set()

    async def _reclaim(self, stream: str) -> int:
        pending = await self._redis.xpending_range(stream, self.group, min="-", max="+", count=self._count,
                                                   idle=self._claim_idle_ms)
        claimed = 0
        for entry in pending:
            got = await self._redis.xclaim(stream, self.group, self.consumer, self._claim_idle_ms,
                                           [entry["message_id"]])
            for entry_id, fields in got:
                if fields:  # an entry trimmed from the stream comes back without fields
                    await self._process(stream, entry_id, fields, deliveries=entry["times_delivered"] + 1)
                    claimed += 1
        return claimed

    async def _process_batch(self, stream: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        """First deliveries of a batch; entries of types this group does not handle are acked in one call."""
        skipped = []
        for entry_id, fields in entries:
            if not _ENVELOPE_FIELDS <= fields.keys():
                # Not written by add_event (a tool or a bug): park it for a human, never crash the consumer.
                await self._dead_letter(stream, entry_id, fields, ValueError("not an event entry: it lacks "
                                        + ", ".join(sorted(f.decode() for f in _ENVELOPE_FIELDS - fields.keys()))))
            elif self._types is not None and fields[b"type"].decode() not in self._types:
                skipped.append(entry_id)
            else:
                await self._process(stream, entry_id, fields, deliveries=1)
        if skipped:
            await self._redis.xack(stream, self.group, *skipped)
        return len(entries)

    async def _process(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], *, deliveries: int) -> None:
        if not _ENVELOPE_FIELDS <= fields.keys():
            await self._dead_letter(stream, entry_id, fields, ValueError("not an event entry"))
            return
        event_id = fields[b"id"].decode()
        event_type = fields[b"type"].decode()
        if (self._types is not None and event_type not in self._types) or await self._redis.exists(
                self._done_key(event_id)):
            await self._redis.xack(stream, self.group, entry_id)
            return
        try:
            event = event_pb2.Event.FromString(fields[b"event"])
            with event_span(event, self.group):
                _log.debug("group %s: handling event %s (%s)", self.group, event_id, event_type)
                await self._handle(stream, entry_id, event)
        except _LeftPending:
            return
        except Exception as exc:  # not transient, or transient beyond the in-place window: one failure
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(self._failures_key(event_id))
                pipe.expire(self._failures_key(event_id), self._done_ttl)
                failures, _ = await pipe.execute()
            if failures >= self._max_deliveries:
                await self._dead_letter(stream, entry_id, fields, exc)
                await self._redis.delete(self._failures_key(event_id))  # a replay starts counting again
            else:
                _log.warning("group %s: event %s (%s) failed (%d of %d before the dead letters): %s", self.group,
                             event_id, event_type, failures, self._max_deliveries, exc)
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._done_key(event_id), b"1", ex=self._done_ttl)
            pipe.delete(self._failures_key(event_id))
            pipe.xack(stream, self.group, entry_id)
            await pipe.execute()
        self.handled += 1
        self._handled_counter.inc()

    async def _handle(self, stream: str, entry_id: bytes, event: event_pb2.Event) -> None:
        """Run the handler; retry it in place while it fails on a transient error (see the module docstring).

        Raises the handler's error when it is not transient, or when transient failures outlast
        ``transient_retry_seconds`` (the caller then counts one delivery); :class:`_LeftPending` when the
        consumer stops meanwhile or the entry is no longer this consumer's.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._transient_retry_seconds
        backoff = Backoff(min(TRANSIENT_BACKOFF_START_SECONDS, self._transient_backoff_max),
                          self._transient_backoff_max)
        part = f"consumer {self.group}"
        stuck = False  # told progress that a store fault holds this group
        try:
            while True:
                try:
                    await self._handler(event)
                    return
                except Exception as exc:
                    if not is_transient(exc) or loop.time() >= give_up:
                        raise
                    if self._stopping.is_set():
                        raise _LeftPending from exc
                    if not stuck and self._progress is not None and not is_peer_fault(exc):
                        self._progress(part, False)
                        stuck = True
                    delay = min(backoff.next(), max(0.0, give_up - loop.time()))
                    _log.warning("group %s: event %s failed on a transient error (%s: %s); retry %d in %.2fs, "
                                 "not counted as a delivery", self.group, event.id, type(exc).__name__, exc,
                                 backoff.failures, delay)
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                    raise _LeftPending  # stopping: the entry stays pending for the next consumer
                except TimeoutError:
                    pass
                await self._keep_claim(stream, entry_id)
        finally:
            if stuck and self._progress is not None:
                self._progress(part, True)

    async def _keep_claim(self, stream: str, entry_id: bytes) -> None:
        """Reset the entry's idle time (XCLAIM JUSTID: the delivery counter is not incremented), so no other
        consumer reclaims it while this one retries; :class:`_LeftPending` if it is no longer pending (another
        consumer took and finished it). A store still down is no reason to stop retrying."""
        try:
            claimed = await self._redis.xclaim(stream, self.group, self.consumer, 0, [entry_id], justid=True)
        except Exception as exc:
            if is_transient(exc):
                return
            raise
        if not claimed:
            raise _LeftPending

    async def _dead_letter(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], exc: Exception) -> None:
        _log.error("group %s: entry %s (event %s) dead-lettered: %s", self.group, entry_id.decode(),
                   fields.get(b"id", b"?").decode(errors="replace"), exc)
        await self._redis.xadd(dlq_key(self.group), {
            **fields, "stream": stream, "entry": entry_id, "error": f"{type(exc).__name__}: {exc}"[:500]})
        await self._redis.xack(stream, self.group, entry_id)
        self._dead_lettered.inc()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class DeadLetter:
    """An event a group gave up on, as kept in its dead-letter stream."""

    entry_id: str
    event_id: str
    event_type: str
    stream: str
    error: str


async def dead_letters(client: redis.asyncio.Redis, group: str, *, count: int = 1000) -> list[DeadLetter]:
    """The dead-lettered events of ``group``, oldest first."""
    entries = await client.xrange(dlq_key(group), count=count)
    return [DeadLetter(entry_id.decode(), f.get(b"id", b"").decode(errors="replace"),
                       f.get(b"type", b"").decode(errors="replace"), f[b"stream"].decode(),
                       f.get(b"error", b"").decode()) for entry_id, f in entries]


async def replay_dead_letters(client: redis.asyncio.Redis, group: str, entry_ids: Sequence[str] = ()) -> int:
    """Put dead-lettered events (all, or ``entry_ids``) back on their streams; returns how many (entries that
    are not events, parked as malformed, stay).

    Other groups have already handled these event ids and skip them; ``group`` handles them again.
    """
    replayed = 0
    for entry_id, fields in await client.xrange(dlq_key(group)):
        if entry_ids and entry_id.decode() not in entry_ids:
            continue
        if not _ENVELOPE_FIELDS <= fields.keys():
            continue  # a malformed entry parked for inspection: replaying it would only park it again
        original: dict[Any, Any] = {k: fields[k] for k in (b"id", b"type", b"event")}
        await client.xadd(fields[b"stream"].decode(), original)
        await client.xdel(dlq_key(group), entry_id)
        replayed += 1
    return replayed
