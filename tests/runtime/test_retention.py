"""Retention (issue 11, bounded writes): event streams are trimmed to what their consumer groups have read and
acknowledged (never an unread or pending entry), dead-letter streams are never trimmed, audit chains drop old entries
and still verify, on a real Valkey."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
import redis.asyncio

from services.runtime import AuditLog, EventConsumer, _audit, trim_audit_log, trim_event_stream, verify_audit_log
from services.runtime._audit import head_key
from services.runtime._events import dlq_key

PRIOR_DEAD_LETTERS = 10_500


def _old_id(i: int, *, days: int = 30) -> str:
    """An entry id from ``days`` ago (ids are times): what an event stream holds after a month."""
    return f"{int((time.time() - days * 86400) * 1000) + i}-0"


async def _fill(client: redis.asyncio.Redis, stream: str, old: int, new: int) -> None:
    for i in range(old):
        await client.xadd(stream, {"id": f"old-{i}", "type": "t", "event": b""}, id=_old_id(i))
    for i in range(new):
        await client.xadd(stream, {"id": f"new-{i}", "type": "t", "event": b""})


async def test_event_stream_is_trimmed_to_what_every_group_acknowledged(store_client: redis.asyncio.Redis) -> None:
    stream = "events:{retention-a}"
    await store_client.delete(stream)
    await _fill(store_client, stream, old=300, new=20)
    # Group "fast" read and acknowledged everything; group "slow" has read 200 and still holds 50 pending.
    await store_client.xgroup_create(stream, "fast", id="0")
    await store_client.xgroup_create(stream, "slow", id="0")
    read = await store_client.xreadgroup("fast", "c", {stream: ">"}, count=1000)
    await store_client.xack(stream, "fast", *[i for i, _ in read[0][1]])
    read = await store_client.xreadgroup("slow", "c", {stream: ">"}, count=200)
    ids = [i for i, _ in read[0][1]]
    await store_client.xack(stream, "slow", *ids[:150])
    # The slow group's pending entries (150..199) and everything after them stay; before them, the old ones go.
    assert await trim_event_stream(store_client, stream) == 150
    assert (await store_client.xrange(stream, count=1))[0][0] == ids[150]
    await store_client.xack(stream, "slow", *ids[150:])
    rest = await store_client.xreadgroup("slow", "c", {stream: ">"}, count=1000)
    await store_client.xack(stream, "slow", *[i for i, _ in rest[0][1]])
    # Everything acknowledged: the old entries go, the recent ones (inside the replay window) stay.
    assert await trim_event_stream(store_client, stream) == 150
    assert await store_client.xlen(stream) == 20
    assert await trim_event_stream(store_client, stream) == 0


async def test_a_group_that_read_nothing_keeps_everything(store_client: redis.asyncio.Redis) -> None:
    stream = "events:{retention-b}"
    await store_client.delete(stream)
    await _fill(store_client, stream, old=50, new=0)
    await store_client.xgroup_create(stream, "new-group", id="0")
    assert await trim_event_stream(store_client, stream) == 0
    assert await store_client.xlen(stream) == 50


async def test_consumer_applies_retention_and_never_trims_its_dead_letters(
        store_client: redis.asyncio.Redis) -> None:
    stream = "events:{retention-c}"
    dlq = dlq_key("retention-c-group")
    await store_client.delete(stream, dlq)
    await store_client.sadd("events:streams", stream)
    await _fill(store_client, stream, old=40, new=0)
    # Unresolved dead letters from before, more than any cap a stream might have had (10,000 once).
    async with store_client.pipeline(transaction=False) as pipe:
        for i in range(PRIOR_DEAD_LETTERS):
            pipe.xadd(dlq, {"id": f"prior-{i}", "error": "RuntimeError: earlier"})
        await pipe.execute()
    (first_id, _), = await store_client.xrange(dlq, count=1)

    async def fails(event) -> None:
        raise RuntimeError("always")

    consumer = EventConsumer(store_client, group="retention-c-group", handler=fails, max_deliveries=1)
    await consumer._drain(stream)  # each entry fails once and is dead-lettered (acknowledged)
    assert await consumer.apply_retention() >= 40
    assert await store_client.xlen(stream) == 0
    # Every dead letter is still there, the oldest first: only a replay or a person removes one.
    assert await store_client.xlen(dlq) == PRIOR_DEAD_LETTERS + 40
    assert (await store_client.xrange(dlq, count=1))[0][0] == first_id
    await store_client.delete(dlq)


class _Clock:
    """The audit module's clock, set back: entries appended meanwhile are genuinely old (their records' times,
    under their hashes, say so), as retention finds them after a year and more."""

    monotonic = staticmethod(time.monotonic)

    def __init__(self, days: float) -> None:
        self._offset = days * 86400

    def time(self) -> float:
        return time.time() - self._offset


async def _aged_chain(client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch, writer: str, *, old: int,
                      new: int) -> AuditLog:
    """A chain whose first ``old`` entries were written 600 days ago (record times and entry ids)."""
    log = AuditLog(client, writer)
    monkeypatch.setattr(_audit, "time", _Clock(600))
    for i in range(old):
        await log.append(actor="spiffe://haulmesh.local/service/gateway", method=f"/x/M{i}", resource=f"r/{i}")
    monkeypatch.setattr(_audit, "time", time)
    for i in range(old, old + new):
        await log.append(actor="spiffe://haulmesh.local/service/gateway", method=f"/x/M{i}", resource=f"r/{i}")
    entries = await client.xrange(log.stream)
    await client.delete(log.stream)
    for n, (_, fields) in enumerate(entries):
        await client.xadd(log.stream, fields, id=_old_id(n, days=600) if n < old else "*")
    return log


def _problems_of(store_url: str, stream: str) -> list[str]:
    """What verify finds in this chain (other tests' chains in the session store are not this test's business)."""
    return [p for p in verify_audit_log(redis.Redis.from_url(store_url)).problems if stream in p]


async def test_audit_chain_trimmed_keeps_verifying(store_client: redis.asyncio.Redis, store_url: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    log = await _aged_chain(store_client, monkeypatch, "retention", old=20, new=10)
    assert await trim_audit_log(store_client) >= 20  # (and whatever old entries other chains hold)
    left = await store_client.xrange(log.stream)
    assert [json.loads(f[b"record"])["seq"] for _, f in left] == list(range(21, 31))
    head = await store_client.hgetall(head_key(log.stream))
    assert int(head[b"base_seq"]) == 20
    assert _problems_of(store_url, log.stream) == []
    # Tampering with what is left is still found.
    first_id, fields = left[0]
    record = json.loads(fields[b"record"])
    record["actor"] = "spiffe://haulmesh.local/operator/mallory"
    sync = redis.Redis.from_url(store_url)
    sync.xdel(log.stream, first_id)
    sync.xadd(log.stream, {b"record": json.dumps(record, sort_keys=True), b"hash": fields[b"hash"]}, id="*")
    assert _problems_of(store_url, log.stream)


async def test_audit_never_trims_a_chains_newest_entry(store_client: redis.asyncio.Redis, store_url: str) -> None:
    log = AuditLog(store_client, "retention")
    await log.append(actor="a", method="/x/M")
    (_, fields), = await store_client.xrange(log.stream)
    await store_client.delete(log.stream)
    await store_client.xadd(log.stream, fields, id=_old_id(0, days=600))
    await trim_audit_log(store_client)
    assert await store_client.xlen(log.stream) == 1
    assert _problems_of(store_url, log.stream) == []


async def test_coalesced_appends_write_once_per_window(store_client: redis.asyncio.Redis) -> None:
    log = AuditLog(store_client, "coalesce")
    for _ in range(50):
        await log.append(actor="spiffe://haulmesh.local/vehicle/T1", method="/x/Ingest", resource="vehicles/T1",
                         coalesce_seconds=3600)
    await log.append(actor="spiffe://haulmesh.local/vehicle/T2", method="/x/Ingest", resource="vehicles/T2",
                     coalesce_seconds=3600)
    assert await store_client.xlen(log.stream) == 2


async def test_a_failed_coalesced_write_leaves_the_window_open(store_client: redis.asyncio.Redis) -> None:
    """The first entry of a window fails to be stored (the chain's key is of the wrong type: the store refuses
    the XADD): the next call in the window writes it, rather than the hour going unaudited."""
    log = AuditLog(store_client, "coalesce-fail")
    await store_client.set(log.stream, "not a stream")
    entry = {"actor": "spiffe://haulmesh.local/vehicle/T3", "method": "/x/Ingest", "resource": "vehicles/T3",
             "coalesce_seconds": 3600}
    with pytest.raises(redis.RedisError):
        await log.append(**entry)
    await store_client.delete(log.stream)
    await log.append(**entry)
    await log.append(**entry)  # now the window is marked: coalesced
    assert await store_client.xlen(log.stream) == 1
    # Calls while the window's first entry is being written wait for it rather than add their own.
    await asyncio.gather(*(log.append(**{**entry, "resource": "vehicles/T4"}) for _ in range(20)))
    assert await store_client.xlen(log.stream) == 2


async def test_a_rewritten_base_of_a_trimmed_chain_is_found(store_client: redis.asyncio.Redis, store_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting a trimmed chain's first entries and rewriting the head's base to the last one deleted would hide
    the deletion if verify trusted the base: it recomputes the base hash from the last trimmed entry's record and
    requires that entry to be older than the retention (only retention removes entries)."""
    log = await _aged_chain(store_client, monkeypatch, "rebase", old=20, new=10)
    await trim_audit_log(store_client)
    head = await store_client.hgetall(head_key(log.stream))
    assert json.loads(head[b"base_record"])["seq"] == 20
    assert _problems_of(store_url, log.stream) == []
    # Mallory deletes entries 21..25 (recent: no retention removes them) and rewrites the base to entry 25.
    left = await store_client.xrange(log.stream)
    await store_client.xdel(log.stream, *[i for i, _ in left[:5]])
    await store_client.hset(head_key(log.stream), mapping={"base_seq": 25, "base_hash": left[4][1][b"hash"]})
    assert _problems_of(store_url, log.stream)
    # ... and the base record too, to entry 25's own: it verifies, but it is not older than the retention.
    await store_client.hset(head_key(log.stream), "base_record", left[4][1][b"record"])
    problems = _problems_of(store_url, log.stream)
    assert problems and all("younger than the retention" in p for p in problems)
    await store_client.hdel(head_key(log.stream), "base_record")
    assert _problems_of(store_url, log.stream)


async def test_verify_during_a_trim_reports_no_false_tampering(store_client: redis.asyncio.Redis, store_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A trim that runs between verify's read of a chain's base and of its entries (every process trims hourly):
    the first entry no longer follows the base read. Verify reads the chain again and finds it intact."""
    log = await _aged_chain(store_client, monkeypatch, "trimrace", old=20, new=10)
    cutoff = f"({int((time.time() - _audit.AUDIT_RETENTION_SECONDS) * 1000)}-0"

    class TrimmedMeanwhile(redis.Redis):
        trims = 0

        def hgetall(self, name):  # the head and base are read; then a trim runs, once
            base = super().hgetall(name)
            if name == head_key(log.stream) and not TrimmedMeanwhile.trims:
                TrimmedMeanwhile.trims += 1
                self.register_script(_audit._TRIM_LUA)(keys=[log.stream, head_key(log.stream)], args=[cutoff, 1000])
            return base

    report = verify_audit_log(TrimmedMeanwhile.from_url(store_url))
    assert TrimmedMeanwhile.trims == 1 and await store_client.xlen(log.stream) == 10
    assert [p for p in report.problems if log.stream in p] == []
