"""Idempotent requests under store faults, on a real Valkey (through the fault proxy where the link fails): a work
whose outcome is unknown keeps its claim (no second compute at once), and the response's record survives a blip."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio

from haulmesh.tender.v1 import tender_pb2, tender_service_pb2
from services.runtime import Idempotency
from services.runtime._store import connect_async
from tests.conftest import wait_for

KEY = "idempotency:{acme:CreateTender}:k1"


class _ClaimLooks:
    """The store client, counting the reads of the idempotency record: how often a waiting retry looked at the
    claim (the Idempotency reads it only after its own claim was refused)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self.count = 0

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(key)
        if key == KEY:
            self.count += 1
        return value


def _request() -> tender_service_pb2.CreateTenderRequest:
    return tender_service_pb2.CreateTenderRequest(tender=tender_pb2.Tender(tms_load_id="L1"), request_id="k1")


async def test_a_lost_connection_after_the_work_keeps_the_claim(client: redis.asyncio.Redis) -> None:
    """The EXEC reached the store, its reply was lost: the change may be committed, so the claim stays till its lease
    runs out and a retry meanwhile does not compute again."""
    looks = _ClaimLooks(client)
    idem = Idempotency(looks, lease_seconds=30)
    computed = 0

    async def compute() -> tender_pb2.Tender:
        nonlocal computed
        computed += 1
        await client.incr("effects")  # the change, committed
        raise redis.ConnectionError("Connection closed by server.")  # its reply never arrived

    with pytest.raises(redis.ConnectionError):
        await idem.run("acme:CreateTender", "k1", _request(), compute, tender_pb2.Tender)
    assert 0 < await client.ttl(KEY) <= 30 and "response" not in json.loads(await client.get(KEY))
    retry = asyncio.ensure_future(idem.run("acme:CreateTender", "k1", _request(), compute, tender_pb2.Tender))
    # The retry has found the claim held (and no response in it) several times over, and waits on: it did not
    # compute, however often it looks.
    await wait_for(lambda: looks.count >= 5, timeout_seconds=10)
    assert computed == 1 and not retry.done() and await client.get("effects") == b"1"
    retry.cancel()


async def test_a_store_blip_after_the_work_does_not_lose_the_response(client: redis.asyncio.Redis, store_url: str,
                                                                      fault_proxy) -> None:
    upstream = store_url.split("@", 1)[1].split("/", 1)[0]
    proxy = await fault_proxy(upstream)
    through = connect_async(store_url.replace(upstream, proxy.address))
    idem = Idempotency(through, lease_seconds=30)
    computed = 0

    async def compute() -> tender_pb2.Tender:
        nonlocal computed
        computed += 1
        proxy.reset(refuse_new=True)  # the store link drops as the work finishes
        asyncio.get_running_loop().call_later(0.5, proxy.pass_through)  # and is back half a second later
        return tender_pb2.Tender(name="tenders/t1")

    try:
        reply = await asyncio.wait_for(idem.run("acme:CreateTender", "k1", _request(), compute, tender_pb2.Tender), 30)
        assert reply.name == "tenders/t1"
        again = await idem.run("acme:CreateTender", "k1", _request(), compute, tender_pb2.Tender)
        assert again.name == "tenders/t1" and computed == 1  # the TMS's retry gets the same response, not a 409
        assert "response" in json.loads(await client.get(KEY))
    finally:
        await through.aclose()
