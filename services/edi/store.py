"""The EDI service's records in Redis, under the trading partner's hash tag.

Keys of partner ``p`` (all tagged ``{p}``: what commits together shares a slot, also on Redis Cluster):

* ``edi:{p}:control`` hash ``interchange`` / ``group`` / ``set``: the last ISA13 / GS06 / ST02 counter used
  towards the partner. Only ever grows (``HINCRBY`` in one MULTI/EXEC per outbound interchange), so a control
  number is never reused, also across restarts; the domain's ``control_number`` formats them.
* ``edi:{p}:seen:<sha256 of ISA05, ISA06, ISA07, ISA08, ISA13, ISA15>`` the interchanges received: ``processing``
  (``SET NX`` when first read) then ``done``; kept ``duplicate_window_seconds`` (30 days). A re-read of a file
  whose processing a crash cut short finds ``processing`` and finishes it (every step is idempotent); ``done`` is
  a duplicate interchange.
* ``edi:{p}:doc:<id>`` hash: one document in or out (``direction``, ``set``, ``isa13``, ``gs06``, ``st02``,
  ``shipment`` B2-04, ``tender`` name, ``state``, ``file``, ``archive`` key, ``detail``, ``created_ms``,
  ``updated_ms``); ``edi:{p}:docs`` sorted set of the ids by creation time.
  States: in ``received`` / ``accepted_with_errors`` (our 997 said AK5 E: noted, acted on) / ``rejected`` /
  ``duplicate``; out ``awaiting_997`` / ``overdue`` / ``accepted`` / ``accepted_with_errors`` / ``rejected`` /
  ``given_up`` / ``refused`` (a 214 or 210 our writer could not express; 997s and TA1s are never acknowledged:
  ``sent``).
* ``edi:{p}:out:<GS06>`` hash ST02 -> the id of our outbound document: what a partner's 997 answers (AK1-02,
  and AK2-02, or every set of the group when an accepting 997 lists none).
* ``edi:{p}:awaiting`` sorted set of our documents awaiting a 997, by when their tracking is next due (ms): what
  the acknowledgement chaser looks at (overdue, resend, give up: services/edi/domain/_tracking.py). A document's
  tracking (``OutboundDocument`` as JSON) is its record's ``tracking`` field; it leaves the set once final.
* ``edi:{p}:answered:<tender id>`` set once a person's answer to a held tender was sent as a 990 (an event
  redelivered sends none again).
* ``edi:{p}:unacknowledged`` sorted set of the same documents by when they were first sent (ms): the oldest is
  the unacknowledged age (a gauge the chaser sets); a document leaves it with the ``awaiting`` set.
* ``edi:{p}:shipment:<B2-04>`` the tender (``tenders/<id>``) a shipment id created; ``edi:{p}:tender:<id>`` the
  shipment id back (the 214s and 210s of a tender echo it).
* ``edi:{p}:load:<B2-04>`` the 204 a tender was created or last changed from (one set in an interchange of its
  own): the stops, parties and references its 214s and 210 echo. Kept :data:`SHIPMENT_TTL_SECONDS`.
* ``edi:{p}:mission:<mission id>`` the B2-04 a mission hauls, or empty when it is not one of the partner's
  (remembered :data:`NOT_OURS_TTL_SECONDS`, so the carrier's other missions cost one lookup);
  ``edi:{p}:status:<B2-04>`` the shipment's 214 state (domain/_milestones.py's ``MilestoneState`` as JSON).
* ``edi:{p}:invoiced:<invoice id>`` set once the invoice's 210 was sent (or refused and recorded).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum

import redis.asyncio

from services.runtime import new_id, tenant_key

from .domain import Allocation, ControlCounters

__all__ = ["DocumentState", "EdiStore", "InterchangeClaim"]

#: How long a held tender's 990 is remembered as sent (an offer lapses within a day; events are not older).
ANSWERED_TTL_SECONDS = 30 * 86400
#: The most documents a partner's index keeps (oldest trimmed; the raw archive keeps every interchange).
MAX_DOCUMENTS_PER_PARTNER = 100_000
#: How long a shipment's 204, 214 state and mission link are kept (a run and its invoice take days, not months).
SHIPMENT_TTL_SECONDS = 90 * 86400
#: How long a mission that is not a partner's is remembered as such (the event streams' retention).
NOT_OURS_TTL_SECONDS = 7 * 86400


class InterchangeClaim(StrEnum):
    """What a received interchange is to this partner."""

    NEW = "new"
    #: Its processing began and did not finish (a crash): finish it, every step is idempotent.
    UNFINISHED = "processing"
    #: Processed before: a duplicate interchange.
    DONE = "done"


class DocumentState(StrEnum):
    RECEIVED = "received"
    DUPLICATE = "duplicate"
    SENT = "sent"
    AWAITING_997 = "awaiting_997"
    ACCEPTED = "accepted"
    ACCEPTED_WITH_ERRORS = "accepted_with_errors"
    REJECTED = "rejected"
    OVERDUE = "overdue"
    GIVEN_UP = "given_up"
    #: A 214 or 210 our writer refused (the content cannot be expressed): recorded, logged, never sent.
    REFUSED = "refused"


def _ms() -> int:
    return int(time.time() * 1000)


class EdiStore:
    """Reads and writes the EDI records of one store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client

    # --- control numbers ----------------------------------------------------------------------------------

    async def allocate(self, partner: str, sets_per_group: tuple[int, ...] = (1,)) -> Allocation:
        """Control numbers for one outbound interchange of ``len(sets_per_group)`` groups: the counters grow in one
        MULTI/EXEC, so two allocations never share a number, whatever runs at the same time."""
        key = tenant_key("edi", partner, "control")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "interchange", 1)
            pipe.hincrby(key, "group", len(sets_per_group))
            pipe.hincrby(key, "set", sum(sets_per_group))
            interchange, group, sets = await pipe.execute()
        before = ControlCounters(interchange - 1, group - len(sets_per_group), sets - sum(sets_per_group))
        allocation, _ = before.allocate(sets_per_group)
        return allocation

    async def counters(self, partner: str) -> ControlCounters:
        raw = await self._redis.hgetall(tenant_key("edi", partner, "control"))
        return ControlCounters(*(int(raw.get(k.encode(), 0)) for k in ("interchange", "group", "set")))

    # --- received interchanges -----------------------------------------------------------------------------

    @staticmethod
    def _seen_key(partner: str, envelope: tuple[str, ...]) -> str:
        digest = hashlib.sha256("\x1f".join(envelope).encode()).hexdigest()
        return tenant_key("edi", partner, "seen", digest)

    async def claim_interchange(self, partner: str, envelope: tuple[str, ...], *, ttl_seconds: int) \
            -> InterchangeClaim:
        """Note a received interchange (``envelope``: ISA05, ISA06, ISA07, ISA08, ISA13, ISA15) as being processed;
        what it was before (``NEW`` when first seen)."""
        key = self._seen_key(partner, envelope)
        if await self._redis.set(key, InterchangeClaim.UNFINISHED.value, nx=True, ex=ttl_seconds):
            return InterchangeClaim.NEW
        value = await self._redis.get(key)
        return InterchangeClaim(value.decode()) if value else InterchangeClaim.NEW

    async def finish_interchange(self, partner: str, envelope: tuple[str, ...], *, ttl_seconds: int) -> None:
        await self._redis.set(self._seen_key(partner, envelope), InterchangeClaim.DONE.value, ex=ttl_seconds)

    # --- documents -------------------------------------------------------------------------------------------

    async def record_document(self, partner: str, fields: Mapping[str, str], *, doc_id: str | None = None,
                              due_ms: int | None = None, sent_ms: int | None = None) -> str:
        """Record a document in or out; its id. An outbound one is findable by its GS06 and ST02; one with
        ``due_ms`` is tracked for its 997 (:meth:`due` from then), sent at ``sent_ms`` (default: now)."""
        doc_id = doc_id or new_id()
        now = _ms()
        record = {**{k: str(v) for k, v in fields.items()}, "id": doc_id, "partner": partner,
                  "created_ms": str(now), "updated_ms": str(now)}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(tenant_key("edi", partner, "doc", doc_id), mapping=record)
            pipe.zadd(tenant_key("edi", partner, "docs"), {doc_id: now})
            pipe.zremrangebyrank(tenant_key("edi", partner, "docs"), 0, -MAX_DOCUMENTS_PER_PARTNER - 1)
            if fields.get("direction") == "out" and fields.get("gs06") and fields.get("st02"):
                pipe.hset(tenant_key("edi", partner, "out", fields["gs06"]), fields["st02"], doc_id)
            if due_ms is not None:
                pipe.zadd(tenant_key("edi", partner, "awaiting"), {doc_id: due_ms})
                pipe.zadd(tenant_key("edi", partner, "unacknowledged"), {doc_id: sent_ms or now})
            await pipe.execute()
        return doc_id

    async def document(self, partner: str, doc_id: str) -> dict[str, str] | None:
        raw = await self._redis.hgetall(tenant_key("edi", partner, "doc", doc_id))
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    async def documents(self, partner: str, *, limit: int = 100) -> list[dict[str, str]]:
        """The partner's latest documents, newest first."""
        ids = await self._redis.zrevrange(tenant_key("edi", partner, "docs"), 0, limit - 1)
        found = [await self.document(partner, i.decode()) for i in ids]
        return [d for d in found if d is not None]

    async def outbound_for(self, partner: str, gs06: str, st02: str) -> str | None:
        """The id of our document with GS06 ``gs06`` and ST02 ``st02`` (what an inbound 997 answers)."""
        value = await self._redis.hget(tenant_key("edi", partner, "out", gs06), st02)
        return value.decode() if value else None

    async def outbound_group(self, partner: str, gs06: str) -> dict[str, str]:
        """Our documents of the group GS06 ``gs06``: ST02 -> document id."""
        raw = await self._redis.hgetall(tenant_key("edi", partner, "out", gs06))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def set_state(self, partner: str, doc_id: str, state: DocumentState, detail: str = "") -> None:
        update = {"state": state.value, "updated_ms": str(_ms())}
        if detail:
            update["detail"] = detail
        await self._redis.hset(tenant_key("edi", partner, "doc", doc_id), mapping=update)

    async def annotate(self, partner: str, doc_id: str, **fields: str) -> None:
        """Add what was learnt since a document was recorded (the tender a 204 created)."""
        await self._redis.hset(tenant_key("edi", partner, "doc", doc_id),
                               mapping={**fields, "updated_ms": str(_ms())})

    async def track(self, partner: str, doc_id: str, tracking: str, state: str, *, due_ms: int | None,
                    transmission: tuple[str, str] | None = None) -> None:
        """Save a document's 997 tracking and state; next due at ``due_ms`` (None: final, no longer looked at). A
        resend's ``transmission`` (GS06, ST02) finds the document too."""
        key = tenant_key("edi", partner, "doc", doc_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"tracking": tracking, "state": state, "updated_ms": str(_ms())})
            if due_ms is None:
                pipe.zrem(tenant_key("edi", partner, "awaiting"), doc_id)
                pipe.zrem(tenant_key("edi", partner, "unacknowledged"), doc_id)
            else:
                pipe.zadd(tenant_key("edi", partner, "awaiting"), {doc_id: due_ms})
            if transmission is not None:
                pipe.hset(tenant_key("edi", partner, "out", transmission[0]), transmission[1], doc_id)
            await pipe.execute()

    async def due(self, partner: str, *, now_ms: int, limit: int = 100) -> list[dict[str, str]]:
        """Our tracked documents whose tracking is due at ``now_ms``, the longest due first."""
        ids = await self._redis.zrangebyscore(tenant_key("edi", partner, "awaiting"), "-inf", now_ms, start=0,
                                              num=limit)
        found = [await self.document(partner, i.decode()) for i in ids]
        return [d for d in found if d is not None and d.get("tracking")]

    async def oldest_unacknowledged(self, partner: str) -> datetime | None:
        """When the oldest document of ours still awaiting the partner's 997 was first sent (None: none is)."""
        found = await self._redis.zrange(tenant_key("edi", partner, "unacknowledged"), 0, 0, withscores=True)
        return datetime.fromtimestamp(found[0][1] / 1000, UTC) if found else None

    # --- shipments and tenders -------------------------------------------------------------------------------

    async def link_tender(self, partner: str, shipment_id: str, tender_name: str) -> None:
        tender_id = tender_name.rsplit("/", 1)[-1]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(tenant_key("edi", partner, "shipment", shipment_id), tender_name)
            pipe.set(tenant_key("edi", partner, "tender", tender_id), shipment_id)
            await pipe.execute()

    async def tender_for(self, partner: str, shipment_id: str) -> str | None:
        value = await self._redis.get(tenant_key("edi", partner, "shipment", shipment_id))
        return value.decode() if value else None

    async def answered(self, partner: str, tender_name: str) -> bool:
        return bool(await self._redis.exists(tenant_key("edi", partner, "answered", tender_name.rsplit("/", 1)[-1])))

    async def mark_answered(self, partner: str, tender_name: str) -> None:
        await self._redis.set(tenant_key("edi", partner, "answered", tender_name.rsplit("/", 1)[-1]), "1",
                              ex=ANSWERED_TTL_SECONDS)

    async def shipment_for(self, partner: str, tender_name: str) -> str | None:
        value = await self._redis.get(tenant_key("edi", partner, "tender", tender_name.rsplit("/", 1)[-1]))
        return value.decode() if value else None


    async def keep_load_tender(self, partner: str, shipment_id: str, data: bytes | None) -> None:
        if data is not None:
            await self._redis.set(tenant_key("edi", partner, "load", shipment_id), data, ex=SHIPMENT_TTL_SECONDS)

    async def load_tender(self, partner: str, shipment_id: str) -> bytes | None:
        return await self._redis.get(tenant_key("edi", partner, "load", shipment_id))

    # --- shipments followed (214s, 210s) ---------------------------------------------------------------------

    async def followed(self, partner: str, mission_id: str) -> str | None:
        """The B2-04 the mission hauls, ``""`` when it is known not to be the partner's, None when not known."""
        value = await self._redis.get(tenant_key("edi", partner, "mission", mission_id))
        return None if value is None else value.decode()

    async def follow(self, partner: str, mission_id: str, shipment_id: str, state: str | None = None) -> None:
        """Note what the mission is to the partner (``shipment_id`` empty: not its); a shipment's first 214
        ``state`` is written unless one is there (a mission link that expired never resets what was said)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(tenant_key("edi", partner, "mission", mission_id), shipment_id,
                     ex=SHIPMENT_TTL_SECONDS if shipment_id else NOT_OURS_TTL_SECONDS)
            if shipment_id and state is not None:
                pipe.set(tenant_key("edi", partner, "status", shipment_id), state, nx=True, ex=SHIPMENT_TTL_SECONDS)
            await pipe.execute()

    async def shipment_state(self, partner: str, shipment_id: str) -> str | None:
        value = await self._redis.get(tenant_key("edi", partner, "status", shipment_id))
        return value.decode() if value else None

    async def save_shipment_state(self, partner: str, shipment_id: str, state: str) -> None:
        await self._redis.set(tenant_key("edi", partner, "status", shipment_id), state, ex=SHIPMENT_TTL_SECONDS)

    async def invoiced(self, partner: str, invoice_id: str) -> bool:
        return bool(await self._redis.exists(tenant_key("edi", partner, "invoiced", invoice_id)))

    async def mark_invoiced(self, partner: str, invoice_id: str) -> None:
        await self._redis.set(tenant_key("edi", partner, "invoiced", invoice_id), "1", ex=SHIPMENT_TTL_SECONDS)


def detail_json(**values: object) -> str:
    """A document's ``detail``: what happened, as compact JSON."""
    return json.dumps(values, separators=(",", ":"), sort_keys=True, default=str)
