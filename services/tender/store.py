"""The tender book in Redis.

Keys of a carrier carry the carrier as their hash tag (``{carrier}``), so a tender, its time index, the
carrier's natural-key map and the outbox event commit in one MULTI/EXEC in one Redis Cluster slot:

* ``tender:{carrier}:<id>``            the Tender (serialized protobuf);
* ``tenders:{carrier}:by-time``        creation-time index (sorted set, see runtime TimeIndex);
* ``tender-load:{carrier}``            hash tms_load_id -> id of the carrier's non-terminal tender for it;
* ``events:{carrier}``                 the outbox stream (runtime ``add_event``).

The carrier's facility registry (:class:`FacilityStore`), in the same slot:

* ``tender:{carrier}:facility:<id>``              the Facility (serialized protobuf);
* ``tenders:{carrier}:facilities:by-time``        its creation-time index;
* ``tender:{carrier}:facility-code:<qualifier>/<code>``  the id of the facility holding that code (a code
  belongs to one facility of the carrier: the key is the uniqueness and the placement lookup at once).

Offer expiries live in one fleet-wide sorted set, ``tender-expiries:{fleet}`` (member ``<carrier>/<id>``,
score the expiry in ms). It is another slot, so it is written *before* the commit that makes the offer:
an entry whose offer was never committed, or was answered meanwhile, is dropped by the lapse loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio
from redis.asyncio.client import Pipeline

from haulmesh.events.v1 import event_pb2
from haulmesh.tender.v1 import facility_pb2, tender_pb2
from services.runtime import (
    FLEET,
    AlreadyExists,
    Collection,
    NotFound,
    Page,
    add_event,
    check_etag,
    tenant_key,
    transact,
)

from .domain import TERMINAL_STATES, EtagMismatch, compute_etag, facility_code_key, facility_name, tender_name

__all__ = ["EXPIRIES_KEY", "UNCHANGED", "FacilityStore", "Mutation", "TenderStore", "already_exists",
           "event_payload_set", "facility_not_found"]

EXPIRIES_KEY = tenant_key("tender-expiries", FLEET)

#: Changes a tender in place; returns the event announcing the change (None: no event), or raises.
#: Returning the sentinel :data:`UNCHANGED` means nothing changed and nothing is written.
Mutation = Callable[[tender_pb2.Tender], "event_pb2.Event | object | None"]
UNCHANGED = object()


def _not_found(tender_id: str) -> NotFound:
    name = tender_name(tender_id)
    return NotFound(f"{name} does not exist", reason="TENDER_NOT_FOUND", metadata={"name": name})


class TenderStore:
    """Reads and writes tenders of one store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.redis = client

    def _tenders(self, carrier: str) -> Collection[tender_pb2.Tender]:
        return Collection(self.redis, tender_pb2.Tender, prefix=f"tender:{{{carrier}}}",
                          index_key=f"tenders:{{{carrier}}}:by-time")

    @staticmethod
    def _load_key(carrier: str, tms_load_id: str) -> str:
        # One key per load, not one hash per carrier: a transaction watches only its own load, so the
        # carrier's concurrent creates do not abort each other.
        return tenant_key("tender-load", carrier, tms_load_id)

    async def get(self, carrier: str, tender_id: str) -> tender_pb2.Tender | None:
        return await self._tenders(carrier).get(tender_id)

    async def require(self, carrier: str, tender_id: str) -> tender_pb2.Tender:
        tender = await self.get(carrier, tender_id)
        if tender is None:
            raise _not_found(tender_id)
        return tender

    async def open_tender_for_load(self, carrier: str, tms_load_id: str) -> str | None:
        """The id of the carrier's non-terminal tender for ``tms_load_id``, if any."""
        raw = await self.redis.get(self._load_key(carrier, tms_load_id))
        return None if raw is None else raw.decode()

    async def scan(self, carrier: str, after: str, size: int, keep: Callable[[tender_pb2.Tender], bool], *,
                   upper: str = "", lower: str = "", scan_limit: int = 2000) -> tuple[list[tender_pb2.Tender], str]:
        """Newest first from the index member ``after`` (exclusive): up to ``size`` tenders passing ``keep``,
        examining at most ``scan_limit`` index entries; returns them and the cursor to continue from ("" at
        the end). ``upper``/``lower`` bound the index members (exclusive upper, inclusive lower)."""
        tenders = self._tenders(carrier)
        out: list[tender_pb2.Tender] = []
        start = f"({after}" if after else (f"({upper}" if upper else "+")
        if after and upper and after > upper:
            start = f"({upper}"
        stop = f"[{lower}" if lower else "-"
        examined = 0
        batch = max(size + 1, 100) if keep is not None else size + 1
        while True:
            members = await self.redis.zrange(tenders.index.key, start, stop, desc=True, bylex=True, offset=0,
                                              num=batch)
            if not members:
                return out, ""
            ids = [tenders.index.resource_id(m) for m in members]
            raws = await self.redis.mget([tenders.key(i) for i in ids])
            for member, raw in zip(members, raws, strict=True):
                examined += 1
                if raw is not None:
                    tender = tender_pb2.Tender.FromString(raw)
                    if keep(tender):
                        out.append(tender)
                cursor = member.decode()
                if len(out) == size:
                    more = await self.redis.zrange(tenders.index.key, f"({cursor}", stop, desc=True, bylex=True,
                                                   offset=0, num=1)
                    return out, cursor if more else ""
                if examined >= scan_limit:
                    return out, cursor
            start = f"({members[-1].decode()}"

    async def create(self, carrier: str, tender: tender_pb2.Tender, event: event_pb2.Event) -> tender_pb2.Tender:
        """Commit a new (evaluated) tender with its event; ALREADY_EXISTS if the load has an open tender."""
        tenders = self._tenders(carrier)
        tender_id = tender.name.removeprefix("tenders/")
        load = self._load_key(carrier, tender.tms_load_id)
        tender.etag = compute_etag(tender)
        if tender.state == tender_pb2.Tender.STATE_OFFERED:
            await self._schedule_expiry(carrier, tender)

        async def write(pipe: Pipeline) -> tender_pb2.Tender:
            existing = await pipe.get(load)
            if existing is not None and existing.decode() != tender_id:
                other = await pipe.get(tenders.key(existing.decode()))
                if other is not None and tender_pb2.Tender.FromString(other).state not in TERMINAL_STATES:
                    raise already_exists(tender.tms_load_id, existing.decode())
            pipe.multi()
            pipe.set(tenders.key(tender_id), tender.SerializeToString())
            pipe.zadd(tenders.index.key, {tenders.index.member(tender.create_time.ToMilliseconds(), tender_id): 0})
            if tender.state not in TERMINAL_STATES:
                pipe.set(load, tender_id)
            elif existing is not None:
                pipe.delete(load)  # the previous open tender is terminal by now
            event_payload_set(event, tender)
            add_event(pipe, event)
            return tender

        return await transact(self.redis, carrier, [load], write)

    async def update(self, carrier: str, tender_id: str, mutate: Mutation, *, etag: str = "",
                     respect_etag: Callable[[tender_pb2.Tender], bool] | None = None
                     ) -> tuple[tender_pb2.Tender, bool]:
        """Apply ``mutate`` atomically with the event it returns; (tender, changed).

        ``etag``: if set, and ``respect_etag(tender)`` (default: always) is true, the tender's current etag
        must equal it (else ABORTED, ETAG_MISMATCH). Stamps ``update_time`` and ``etag``; keeps the
        natural-key map in step (a tender entering a terminal state frees its tms_load_id).
        """
        tenders = self._tenders(carrier)
        key = tenders.key(tender_id)

        async def write(pipe: Pipeline) -> tuple[tender_pb2.Tender, bool]:
            raw = await pipe.get(key)
            if raw is None:
                raise _not_found(tender_id)
            tender = tender_pb2.Tender.FromString(raw)
            if etag and (respect_etag is None or respect_etag(tender)) and etag != tender.etag:
                raise EtagMismatch(tender_name(tender_id))
            event = mutate(tender)
            load = self._load_key(carrier, tender.tms_load_id)  # tms_load_id never changes once created
            if tender.state in TERMINAL_STATES:
                await pipe.watch(load)
            owner = await pipe.get(load) if tender.state in TERMINAL_STATES else None
            pipe.multi()
            if event is UNCHANGED:
                return tender, False
            tender.update_time.GetCurrentTime()
            tender.etag = compute_etag(tender)
            pipe.set(key, tender.SerializeToString())
            if owner is not None and owner.decode() == tender_id:
                pipe.delete(load)  # a terminal tender frees its load (if it still holds it)
            if isinstance(event, event_pb2.Event):
                event_payload_set(event, tender)
                add_event(pipe, event)
            return tender, True

        result, changed = await transact(self.redis, carrier, [key], write)
        if changed and result.state == tender_pb2.Tender.STATE_OFFERED:
            await self._schedule_expiry(carrier, result)
        return result, changed

    async def _schedule_expiry(self, carrier: str, tender: tender_pb2.Tender) -> None:
        tender_id = tender.name.removeprefix("tenders/")
        await self.redis.zadd(EXPIRIES_KEY, {f"{carrier}/{tender_id}": tender.offer.expire_time.ToMilliseconds()})

    async def due_expiries(self, now_ms: int | None = None, limit: int = 100) -> list[tuple[str, str, int]]:
        """(carrier, tender id, expiry ms) of offers due to lapse, earliest first."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        rows = await self.redis.zrangebyscore(EXPIRIES_KEY, "-inf", now_ms, start=0, num=limit, withscores=True)
        out = []
        for member, score in rows:
            carrier, _, tender_id = member.decode().partition("/")
            out.append((carrier, tender_id, int(score)))
        return out

    async def next_expiry_ms(self) -> int | None:
        rows = await self.redis.zrange(EXPIRIES_KEY, 0, 0, withscores=True)
        return int(rows[0][1]) if rows else None

    async def forget_expiry(self, carrier: str, tender_id: str, score_ms: int) -> None:
        """Drop the expiry entry, unless it was rescheduled meanwhile (a new offer)."""
        member = f"{carrier}/{tender_id}"
        await self.redis.eval(_FORGET, 1, EXPIRIES_KEY, member, score_ms)


_FORGET = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) <= tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


def already_exists(tms_load_id: str, tender_id: str) -> AlreadyExists:
    return AlreadyExists(f"the carrier already has an open tender for tms_load_id {tms_load_id!r}",
                         reason="TENDER_ALREADY_EXISTS", metadata={"tender": tender_name(tender_id)})


def event_payload_set(event: event_pb2.Event, tender: tender_pb2.Tender) -> None:
    """Put the committed tender (with its final etag) in the event's payload."""
    field = event.WhichOneof("data")
    if field is not None:
        getattr(event, field).tender.CopyFrom(tender)



def facility_not_found(facility_id: str) -> NotFound:
    name = facility_name(facility_id)
    return NotFound(f"{name} does not exist", reason="FACILITY_NOT_FOUND", metadata={"name": name})


def _code_in_use(code: tender_pb2.FacilityCode, holder: str) -> AlreadyExists:
    return AlreadyExists(f"the code {code.qualifier}/{code.code} belongs to {facility_name(holder)}",
                         reason="FACILITY_CODE_IN_USE", metadata={"facility": facility_name(holder)})


class FacilityStore:
    """The carrier's facility registry: facilities and the codes that find them, committed together."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.redis = client

    def _facilities(self, carrier: str) -> Collection[facility_pb2.Facility]:
        return Collection(self.redis, facility_pb2.Facility, prefix=f"tender:{{{carrier}}}:facility",
                          index_key=f"tenders:{{{carrier}}}:facilities:by-time")

    @staticmethod
    def _code_key(carrier: str, code: tender_pb2.FacilityCode) -> str:
        return f"tender:{{{carrier}}}:facility-code:{facility_code_key(code)}"

    async def get(self, carrier: str, facility_id: str) -> facility_pb2.Facility | None:
        return await self._facilities(carrier).get(facility_id)

    async def require(self, carrier: str, facility_id: str) -> facility_pb2.Facility:
        facility = await self.get(carrier, facility_id)
        if facility is None:
            raise facility_not_found(facility_id)
        return facility

    async def by_code(self, carrier: str, code: tender_pb2.FacilityCode) -> facility_pb2.Facility | None:
        """The carrier's facility holding ``code``, if any."""
        holder = await self.redis.get(self._code_key(carrier, code))
        return None if holder is None else await self.get(carrier, holder.decode())

    async def page(self, carrier: str, page: Page) -> tuple[list[facility_pb2.Facility], str]:
        return await self._facilities(carrier).page(page)

    async def _claim_codes(self, pipe: Pipeline, carrier: str, facility_id: str,
                           codes: list[tender_pb2.FacilityCode]) -> None:
        """ALREADY_EXISTS unless every code is free or already the facility's (keys watched by the caller)."""
        for code in codes:
            holder = await pipe.get(self._code_key(carrier, code))
            if holder is not None and holder.decode() != facility_id:
                raise _code_in_use(code, holder.decode())

    async def create(self, carrier: str, facility: facility_pb2.Facility) -> facility_pb2.Facility:
        facilities = self._facilities(carrier)
        facility_id = facility.name.removeprefix("facilities/")
        facility.etag = compute_etag(facility)
        code_keys = [self._code_key(carrier, c) for c in facility.codes]

        async def write(pipe: Pipeline) -> facility_pb2.Facility:
            await self._claim_codes(pipe, carrier, facility_id, list(facility.codes))
            pipe.multi()
            pipe.set(facilities.key(facility_id), facility.SerializeToString())
            pipe.zadd(facilities.index.key,
                      {facilities.index.member(facility.create_time.ToMilliseconds(), facility_id): 0})
            for key in code_keys:
                pipe.set(key, facility_id)
            return facility

        return await transact(self.redis, carrier, code_keys, write)

    async def update(self, carrier: str, facility_id: str, etag: str,
                     change: Callable[[facility_pb2.Facility], facility_pb2.Facility]) -> facility_pb2.Facility:
        """Replace the facility with ``change(current)`` (its codes re-claimed), if ``etag`` is empty or current."""
        facilities = self._facilities(carrier)
        key = facilities.key(facility_id)

        async def write(pipe: Pipeline) -> facility_pb2.Facility:
            raw = await pipe.get(key)
            if raw is None:
                raise facility_not_found(facility_id)
            current = facility_pb2.Facility.FromString(raw)
            check_etag(etag, current.etag, current.name)
            updated = change(current)
            new_keys = {self._code_key(carrier, c) for c in updated.codes}
            old_keys = {self._code_key(carrier, c) for c in current.codes}
            if new_keys:
                await pipe.watch(*new_keys)
            await self._claim_codes(pipe, carrier, facility_id, list(updated.codes))
            pipe.multi()
            updated.update_time.GetCurrentTime()
            updated.etag = compute_etag(updated)
            pipe.set(key, updated.SerializeToString())
            for stale in old_keys - new_keys:
                pipe.delete(stale)
            for fresh in new_keys - old_keys:
                pipe.set(fresh, facility_id)
            return updated

        return await transact(self.redis, carrier, [key], write)

    async def delete(self, carrier: str, facility_id: str, etag: str) -> None:
        facilities = self._facilities(carrier)
        key = facilities.key(facility_id)

        async def write(pipe: Pipeline) -> None:
            raw = await pipe.get(key)
            if raw is None:
                raise facility_not_found(facility_id)
            current = facility_pb2.Facility.FromString(raw)
            check_etag(etag, current.etag, current.name)
            pipe.multi()
            pipe.delete(key)
            pipe.zrem(facilities.index.key,
                      facilities.index.member(current.create_time.ToMilliseconds(), facility_id))
            for code in current.codes:
                pipe.delete(self._code_key(carrier, code))

        await transact(self.redis, carrier, [key], write)
