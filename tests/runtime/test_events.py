"""Outbox, consumer groups, reclaim, dead letters and replay, on a real Valkey."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio

from haulmesh.events.v1 import event_pb2, tender_events_pb2
from services.runtime import (
    EventConsumer,
    Unavailable,
    add_event,
    dead_letters,
    event_stream_key,
    new_event,
    replay_dead_letters,
    tenant_key,
    transact,
)

from ..conftest import wait_for


def _offered(tender: str, carrier: str = "acme") -> event_pb2.Event:
    return new_event("tender_offered", tender_events_pb2.TenderOffered(), subject=tender, carrier_id=carrier,
                     source="tender")


def test_new_event_derives_type_and_envelope() -> None:
    event = _offered("tenders/t1")
    assert event.type == "haulmesh.tender.v1.offered"
    assert event.carrier == "carriers/acme" and event.source == "//haulmesh.io/tender"
    assert len(event.id) == 26 and event.id == event.id.lower()
    assert event.WhichOneof("data") == "tender_offered"
    with pytest.raises(ValueError, match="not a field"):
        new_event("tender_teleported", tender_events_pb2.TenderOffered(), subject="x", carrier_id=None, source="x")


async def test_state_and_event_commit_together_or_not_at_all(client: redis.asyncio.Redis) -> None:
    key = tenant_key("tender", "acme", "t1")

    async def ok(pipe):
        pipe.multi()
        pipe.set(key, b"OFFERED")
        add_event(pipe, _offered("tenders/t1"))
        return "done"

    assert await transact(client, "acme", [key], ok) == "done"
    assert await client.get(key) == b"OFFERED"
    assert await client.xlen(event_stream_key("acme")) == 1

    async def fails(pipe):
        pipe.multi()
        pipe.set(key, b"ACCEPTED")
        add_event(pipe, _offered("tenders/t1"))
        raise RuntimeError("rule violated after queuing")

    with pytest.raises(RuntimeError):
        await transact(client, "acme", [key], fails)
    assert await client.get(key) == b"OFFERED"
    assert await client.xlen(event_stream_key("acme")) == 1


async def _emit(client: redis.asyncio.Redis, carrier: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        event = _offered(f"tenders/t{i}", carrier)

        async def write(pipe, event=event):
            pipe.multi()
            add_event(pipe, event)

        await transact(client, carrier, [], write)
        ids.append(event.id)
    return ids


async def test_consumer_reads_every_carrier_stream_once(client: redis.asyncio.Redis) -> None:
    ids = await _emit(client, "acme", 3) + await _emit(client, "globex", 2)
    seen: list[str] = []

    async def handle(event):
        seen.append(event.id)

    consumer = EventConsumer(client, group="g1", handler=handle)
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: len(seen) >= 5)
    await _emit(client, "initech", 1)  # a stream that appears while running
    await wait_for(lambda: len(seen) >= 6)
    await consumer.stop()
    await task
    assert sorted(seen[:5]) == sorted(ids) and len(seen) == 6


async def test_crashed_consumers_pending_entries_are_reclaimed_and_applied_once(client: redis.asyncio.Redis) -> None:
    [event_id] = await _emit(client, "acme", 1)
    stream = event_stream_key("acme")
    # A consumer that read the entry and died before acknowledging it.
    await client.sadd("events:streams", stream)
    await client.xgroup_create(stream, "billing", id="0")
    await client.xreadgroup("billing", "crashed", {stream: ">"}, count=10)
    applied: list[str] = []

    async def handle(event):
        applied.append(event.id)

    survivor = EventConsumer(client, group="billing", handler=handle, consumer="survivor", claim_idle_ms=100)
    task = asyncio.create_task(survivor.run())
    await wait_for(lambda: applied)
    # Replaying the same event id again is skipped: the effect is applied exactly once.
    await client.xadd(stream, {"id": event_id, "type": "haulmesh.tender.v1.offered",
                               "event": _offered("tenders/t0").SerializeToString()})
    await asyncio.sleep(0.5)
    await survivor.stop()
    await task
    assert applied == [event_id]
    assert (await client.xpending(stream, "billing"))["pending"] == 0


async def test_failing_entry_goes_to_dead_letters_and_replays(client: redis.asyncio.Redis) -> None:
    [event_id] = await _emit(client, "acme", 1)
    broken = True
    attempts: list[str] = []

    async def handle(event):
        attempts.append(event.id)
        if broken:
            raise RuntimeError("receiver down")

    consumer = EventConsumer(client, group="webhooks", handler=handle, claim_idle_ms=20, max_deliveries=3)
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: len(attempts) >= 3)
    letters = await wait_for(lambda: dead_letters(client, "webhooks"))
    assert [(d.event_id, d.event_type) for d in letters] == [(event_id, "haulmesh.tender.v1.offered")]
    assert "receiver down" in letters[0].error
    assert len(attempts) == 3
    broken = False
    assert await replay_dead_letters(client, "webhooks") == 1
    await wait_for(lambda: len(attempts) == 4)
    await consumer.stop()
    await task
    assert await dead_letters(client, "webhooks") == []


async def test_transient_failures_never_dead_letter_an_event(client: redis.asyncio.Redis) -> None:
    """A peer down for longer than max_deliveries reclaims (UNAVAILABLE, connection refused) keeps the event pending,
    not dead-lettered; it is handled once the peer is back. Only failures that are not transient count."""
    [event_id] = await _emit(client, "acme", 1)
    attempts: list[str] = []

    async def handle(event):
        attempts.append(event.id)
        if len(attempts) <= 7:
            raise ConnectionRefusedError(111, "billing down")  # transient: an OSError

    consumer = EventConsumer(client, group="g-transient", handler=handle, claim_idle_ms=20, max_deliveries=3)
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: consumer.handled == 1, timeout_seconds=20)
    await consumer.stop()
    await task
    assert attempts == [event_id] * 8  # retried past max_deliveries, then handled once
    assert await dead_letters(client, "g-transient") == []


async def test_an_entry_that_is_no_event_is_parked_and_the_consumer_goes_on(client: redis.asyncio.Redis) -> None:
    [before] = await _emit(client, "acme", 1)
    await client.xadd(event_stream_key("acme"), {"n": 1})  # a stray write: not an add_event entry
    seen: list[str] = []

    async def handle(event):
        seen.append(event.id)

    consumer = EventConsumer(client, group="g-stray", handler=handle)
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: seen == [before])
    [after] = await _emit(client, "acme", 1)
    await wait_for(lambda: seen == [before, after])
    letters = await dead_letters(client, "g-stray")
    await consumer.stop()
    await task
    assert len(letters) == 1 and letters[0].event_id == "" and "not an event entry" in letters[0].error
    assert await replay_dead_letters(client, "g-stray") == 0  # nothing to replay: it stays for inspection
    print(f"stray entry parked in dlq:{{g-stray}}, events handled around it: {len(seen)}")


async def test_the_doorbell_wakes_only_the_groups_that_handle_the_type(client: redis.asyncio.Redis) -> None:
    declined = new_event("tender_declined", tender_events_pb2.TenderDeclined(), subject="tenders/d",
                         carrier_id="acme", source="tender")
    seen: list[str] = []

    async def handle(event):
        seen.append(event.type)

    # A long sweep: within this test only the doorbell can wake the consumer.
    consumer = EventConsumer(client, group="g-typed", handler=handle, types={"haulmesh.tender.v1.offered"},
                             sweep_seconds=60)
    await _emit(client, "acme", 1)  # makes the stream known before the consumer's first sweep
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: len(seen) == 1)

    async def write(pipe):
        pipe.multi()
        add_event(pipe, declined)

    await transact(client, "acme", [], write)
    await asyncio.sleep(0.5)
    [group] = [g for g in await client.xinfo_groups(event_stream_key("acme")) if g["name"] == b"g-typed"]
    assert group["lag"] == 1  # not read: nothing woke this group for a type it does not handle
    [offered] = await _emit(client, "acme", 1)
    await wait_for(lambda: len(seen) == 2)  # woken at once; the declined entry is read (and skipped) with it
    [group] = [g for g in await client.xinfo_groups(event_stream_key("acme")) if g["name"] == b"g-typed"]
    await consumer.stop()
    await task
    assert seen == ["haulmesh.tender.v1.offered"] * 2 and group["lag"] == 0 and group["pending"] == 0
    print(f"typed doorbell: {offered} handled at once, the declined event read in bulk with it")


_CRASHING_CONSUMER = """
import asyncio, sys
from services.runtime import EventConsumer, connect_async

async def main(url):
    client = connect_async(url)

    async def handle(event):
        if await client.set(f"effect:{event.id}", 1, nx=True):  # the handler is idempotent on the event id
            await client.incr("applied")
        await client.rpush("handled-before-crash", event.id)
        await asyncio.sleep(3600)  # dies here, killed, before the entry is acknowledged

    await EventConsumer(client, group="billing", handler=handle, consumer="doomed").run()

asyncio.run(main(sys.argv[1]))
"""


async def test_killed_consumer_process_entries_are_reclaimed_and_applied_once(client: redis.asyncio.Redis,
                                                                               store_url: str) -> None:
    import signal
    import sys

    ids = await _emit(client, "acme", 3)
    doomed = await asyncio.create_subprocess_exec(sys.executable, "-c", _CRASHING_CONSUMER, store_url)
    try:
        await wait_for(lambda: client.llen("handled-before-crash"), timeout_seconds=30)
    finally:
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
    stream = event_stream_key("acme")
    assert (await client.xpending(stream, "billing"))["pending"] >= 1
    assert int(await client.get("applied")) == 1

    async def handle(event):
        if await client.set(f"effect:{event.id}", 1, nx=True):
            await client.incr("applied")

    survivor = EventConsumer(client, group="billing", handler=handle, consumer="survivor", claim_idle_ms=200)
    task = asyncio.create_task(survivor.run())
    await wait_for(lambda: survivor.handled >= 3, timeout_seconds=15)
    await survivor.stop()
    await task
    print(f"killed consumer: {len(ids)} events, {survivor.handled} handled by the survivor, "
          f"applied {int(await client.get('applied'))} times")
    assert int(await client.get("applied")) == 3  # each event's effect exactly once, the crashed one included
    assert (await client.xpending(stream, "billing"))["pending"] == 0


def _through(store_url: str, proxy_address: str) -> redis.asyncio.Redis:
    """A client of the store at ``store_url`` reaching it through the fault proxy at ``proxy_address``."""
    parts = urlsplit(store_url)
    netloc = parts.netloc.rpartition("@")
    via = f"{netloc[0]}@{proxy_address}" if netloc[1] else proxy_address
    return redis.asyncio.Redis.from_url(urlunsplit(parts._replace(netloc=via)), socket_timeout=1,
                                        socket_connect_timeout=1)


async def test_a_handler_failing_on_a_transient_store_fault_is_retried_not_dead_lettered(
        client: redis.asyncio.Redis, store_url: str, fault_proxy) -> None:
    """Loose end (b) of issue 11: a store outage under a handler (its connections reset, new ones refused) lasts
    more attempts than max_deliveries allows; the event is retried with backoff, applied once when the store
    is back, never dead-lettered, and its delivery counter stays at its first delivery."""
    [event_id] = await _emit(client, "acme", 1)
    stream = event_stream_key("acme")
    proxy = await fault_proxy(urlsplit(store_url).netloc.rpartition("@")[2])
    through = _through(store_url, proxy.address)
    attempts: list[str] = []
    progress: list[tuple[str, bool]] = []

    async def handle(event):
        attempts.append(event.id)
        await through.incr(f"effects:{event.id}")  # the business effect, written through the proxy

    proxy.reset(refuse_new=True)
    consumer = EventConsumer(client, group="billing", handler=handle, claim_idle_ms=200, max_deliveries=2,
                             progress=lambda part, ok: progress.append((part, ok)))
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: len(attempts) >= 4, timeout_seconds=20)  # twice max_deliveries, still retrying
        [pending] = await client.xpending_range(stream, "billing", min="-", max="+", count=10)
        assert pending["times_delivered"] == 1 and pending["consumer"].decode() == consumer.consumer
        assert progress == [("consumer billing", False)]  # health: NOT_SERVING while the store fault holds
        proxy.pass_through()
        await wait_for(lambda: consumer.handled == 1, timeout_seconds=20)
    finally:
        await consumer.stop()
        await task
        await through.aclose()
    assert await dead_letters(client, "billing") == []
    assert await client.get(f"effects:{event_id}") == b"1"
    assert (await client.xpending(stream, "billing"))["pending"] == 0
    assert progress == [("consumer billing", False), ("consumer billing", True)]


async def test_transient_failures_outlasting_the_retry_window_count_as_a_delivery(
        client: redis.asyncio.Redis) -> None:
    """A failure that only looks transient (UNAVAILABLE for ever) still ends in the dead-letter stream: after
    transient_retry_seconds each delivery counts, and max_deliveries applies."""
    [event_id] = await _emit(client, "acme", 1)
    attempts: list[str] = []

    async def handle(event):
        attempts.append(event.id)
        raise Unavailable("the peer is never back")

    consumer = EventConsumer(client, group="webhooks", handler=handle, claim_idle_ms=50, max_deliveries=2,
                             transient_retry_seconds=0.2)
    task = asyncio.create_task(consumer.run())
    try:
        letters = await wait_for(lambda: dead_letters(client, "webhooks"), timeout_seconds=20)
    finally:
        await consumer.stop()
        await task
    assert [d.event_id for d in letters] == [event_id] and "never back" in letters[0].error
    assert len(attempts) > 2  # several tries within each of the two deliveries
