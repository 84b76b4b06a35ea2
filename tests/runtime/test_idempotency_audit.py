"""Idempotent requests and the hash-chained audit log, on a real Valkey."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haulmesh.tender.v1 import tender_pb2, tender_service_pb2
from services.runtime import AuditLog, Idempotency, InvalidArgument, verify_audit_log
from services.runtime._audit import head_key


def _request(load: str, request_id: str = "k1") -> tender_service_pb2.CreateTenderRequest:
    return tender_service_pb2.CreateTenderRequest(tender=tender_pb2.Tender(tms_load_id=load), request_id=request_id)


async def test_hundred_concurrent_duplicates_compute_once(client: redis.asyncio.Redis) -> None:
    idem = Idempotency(client)
    computed = 0

    async def compute() -> tender_pb2.Tender:
        nonlocal computed
        computed += 1
        await asyncio.sleep(0.05)
        return tender_pb2.Tender(name=f"tenders/t{computed}")

    replies = await asyncio.gather(*(idem.run("acme:CreateTender", "k1", _request("L1"), compute, tender_pb2.Tender)
                                     for _ in range(100)))
    assert computed == 1
    assert {r.name for r in replies} == {"tenders/t1"}


async def test_same_key_other_request_is_refused(client: redis.asyncio.Redis) -> None:
    idem = Idempotency(client)

    async def compute() -> tender_pb2.Tender:
        return tender_pb2.Tender(name="tenders/t1")

    await idem.run("acme:CreateTender", "k1", _request("L1"), compute, tender_pb2.Tender)
    # The request_id field itself is not part of the fingerprint.
    again = await idem.run("acme:CreateTender", "k1", _request("L1", request_id="k1"), compute, tender_pb2.Tender)
    assert again.name == "tenders/t1"
    with pytest.raises(InvalidArgument) as caught:
        await idem.run("acme:CreateTender", "k1", _request("L2"), compute, tender_pb2.Tender)
    assert caught.value.reason == "REQUEST_ID_REUSED"
    # Another tenant's identical key is independent.
    other = await idem.run("globex:CreateTender", "k1", _request("L2"), compute, tender_pb2.Tender)
    assert other.name == "tenders/t1"
    assert 86000 < await client.ttl("idempotency:{acme:CreateTender}:k1") <= 86400


async def test_failed_request_releases_its_key(client: redis.asyncio.Redis) -> None:
    idem = Idempotency(client)

    async def fails() -> tender_pb2.Tender:
        raise InvalidArgument("bad")

    with pytest.raises(InvalidArgument):
        await idem.run("acme:CreateTender", "k2", _request("L1"), fails, tender_pb2.Tender)

    async def works() -> tender_pb2.Tender:
        return tender_pb2.Tender(name="tenders/ok")

    assert (await idem.run("acme:CreateTender", "k2", _request("L1"), works, tender_pb2.Tender)).name == "tenders/ok"


@pytest.mark.parametrize("bad", ["", "x" * 129, "has space", "semi;colon"])
async def test_malformed_request_id(client: redis.asyncio.Redis, bad: str) -> None:
    async def compute() -> tender_pb2.Tender:
        return tender_pb2.Tender()

    if bad == "":
        await Idempotency(client).run("s", bad, _request("L"), compute, tender_pb2.Tender)  # no key: not idempotent
        return
    with pytest.raises(InvalidArgument, match="request_id"):
        await Idempotency(client).run("s", bad, _request("L"), compute, tender_pb2.Tender)


async def _fill(client: redis.asyncio.Redis, n: int, writer: str = "tender") -> tuple[str, list[bytes]]:
    """``n`` concurrent appends by one process's log: (its chain, its entry ids)."""
    log = AuditLog(client, writer)
    await asyncio.gather(*(log.append(actor="spiffe://haulmesh.local/service/gateway", method=f"/x/M{i}",
                                      carrier="carriers/acme", resource=f"tenders/t{i}") for i in range(n)))
    return log.stream, [entry_id for entry_id, _ in await client.xrange(log.stream)]


def _sync(store_url: str) -> redis.Redis:
    return redis.Redis.from_url(store_url)


async def test_intact_chains_verify(client: redis.asyncio.Redis, store_url: str) -> None:
    stream, ids = await _fill(client, 20)
    await _fill(client, 7, writer="billing")  # another process, its own chain
    assert len(ids) == 20
    records = [json.loads(f[b"record"]) for _, f in await client.xrange(stream)]
    assert [r["seq"] for r in records] == list(range(1, 21))  # concurrent appends, one gapless chain
    report = verify_audit_log(_sync(store_url))
    assert report.intact and report.entries == 27 and report.chains == 2


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tamper=st.sampled_from(["edit", "delete", "reorder", "truncate", "insert", "drop-chain"]),
       index=st.integers(0, 9))
async def test_any_tampering_is_detected(client: redis.asyncio.Redis, store_url: str, tamper: str, index: int) -> None:
    await client.flushall()
    stream, ids = await _fill(client, 10)
    await _fill(client, 3, writer="billing")  # an untouched chain beside it changes nothing
    sync = _sync(store_url)
    entries = sync.xrange(stream)
    if tamper == "edit":
        entry_id, fields = entries[index]
        record = json.loads(fields[b"record"])
        record["actor"] = "spiffe://haulmesh.local/operator/mallory"
        _rewrite(sync, stream, entries, {index: {b"record": json.dumps(record, sort_keys=True),
                                                 b"hash": fields[b"hash"]}})
    elif tamper == "delete":
        sync.xdel(stream, ids[index])
    elif tamper == "reorder":
        j = (index + 1) % 10
        _rewrite(sync, stream, entries, {index: entries[j][1], j: entries[index][1]})
    elif tamper == "truncate":
        for entry_id in ids[index:]:
            sync.xdel(stream, entry_id)
    elif tamper == "insert":
        _rewrite(sync, stream, entries, {}, insert_at=index, inserted=entries[index][1])
    else:
        sync.delete(stream, head_key(stream))
    report = verify_audit_log(sync)
    assert not report.intact, tamper
    assert all(stream in problem for problem in report.problems)


def _rewrite(sync: redis.Redis, stream: str, entries: list, replace: dict, *, insert_at: int | None = None,
             inserted: dict | None = None) -> None:
    """Rebuild the stream with some entries replaced (stream ids must grow, so rewrite it whole)."""
    head = sync.hgetall(head_key(stream))
    sync.delete(stream)
    for i, (_, fields) in enumerate(entries):
        if insert_at == i:
            sync.xadd(stream, inserted)
        sync.xadd(stream, replace.get(i, fields))
    sync.hset(head_key(stream), mapping=head)


async def test_audit_verify_command(client: redis.asyncio.Redis, store_url: str) -> None:
    import os
    import subprocess
    import sys

    stream, ids = await _fill(client, 5)
    env = {**os.environ, "REDIS_URL": store_url}
    # The hash chain alone: intact, but nothing anchors it (exit 3; tests/runtime/test_audit_anchor.py checks the
    # command with signed checkpoints).
    command = [sys.executable, "-m", "services.runtime.cli", "audit", "verify", "--no-checkpoints"]
    ok = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 3 and "5 entries in 1 chain(s), every chain intact" in ok.stdout, ok.stdout + ok.stderr
    assert "NOT ANCHORED" in ok.stdout
    await client.xdel(stream, ids[2])
    bad = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "TAMPERED" in bad.stdout
