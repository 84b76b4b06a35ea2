"""The KPI projection's facts in Redis, under the carrier's hash tag.

Keys of carrier ``c`` (all tagged ``{c}``: one slot per carrier, also on Redis Cluster):

* ``kpi-mission:{c}:<mission>`` hash: the mission's compact facts (convert.py names the fields: ``lane``,
  ``dispatch``, ``ack``, ``outcome``, ``window``, ``arrive``, ``exc:<id>``, ``inv_*``, ``tel_*``);
* ``kpi-missions:{c}`` sorted set: mission ids scored by dispatch time (ms), the window's index;
* ``kpi-tender:{c}:<tender>`` hash: ``lane``, ``create`` and ``offer`` (the first offer's time, kept once);
* ``kpi-tenders:{c}`` sorted set: tender ids scored by creation time (ms).

Bounded: every key expires ``retention_days`` after its last write, and each write drops index entries older
than that, so a carrier's facts never outgrow the retention (400 days by default: a year's report and its
comparison month). Every write sets values, never increments, so a redelivered event changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio

from services.runtime import tenant_key

__all__ = ["ReportStore"]

_DAY_MS = 86_400_000
#: HGETALLs per pipeline round trip when reading a window.
_READ_CHUNK = 500


class ReportStore:
    """Writes and reads the KPI facts of one store."""

    def __init__(self, client: redis.asyncio.Redis, *, retention_days: int = 400) -> None:
        self._redis = client
        self._retention_ms = retention_days * _DAY_MS
        self._ttl_seconds = retention_days * 86_400

    async def _record(self, key: str, index: str, member: str, fields: Mapping[str, str], *,
                      once: Mapping[str, str], index_ms: int | None, now_ms: int) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            if fields:
                pipe.hset(key, mapping=dict(fields))
            for name, value in once.items():
                pipe.hsetnx(key, name, value)
            pipe.expire(key, self._ttl_seconds)
            if index_ms is not None:
                pipe.zadd(index, {member: index_ms})
                pipe.zremrangebyscore(index, "-inf", f"({now_ms - self._retention_ms}")
                pipe.expire(index, self._ttl_seconds)
            await pipe.execute()

    async def record_mission(self, carrier: str, mission_id: str, fields: Mapping[str, str], *,
                             dispatch_ms: int | None, now_ms: int) -> None:
        """Set ``fields`` of the mission's facts; index it by ``dispatch_ms`` when known."""
        await self._record(tenant_key("kpi-mission", carrier, mission_id), tenant_key("kpi-missions", carrier),
                           mission_id, fields, once={}, index_ms=dispatch_ms, now_ms=now_ms)

    async def record_tender(self, carrier: str, tender_id: str, fields: Mapping[str, str], *,
                            once: Mapping[str, str], create_ms: int, now_ms: int) -> None:
        """Set ``fields`` of the tender's facts, and ``once`` only where not set yet (the first offer)."""
        await self._record(tenant_key("kpi-tender", carrier, tender_id), tenant_key("kpi-tenders", carrier),
                           tender_id, fields, once=once, index_ms=create_ms, now_ms=now_ms)

    async def _window(self, index: str, prefix: str, start_ms: int, end_ms: int, limit: int
                      ) -> list[tuple[str, dict[str, str]]]:
        ids = [m.decode() for m in await self._redis.zrange(index, start_ms, f"({end_ms}", byscore=True,
                                                              offset=0, num=limit + 1)]
        found: list[tuple[str, dict[str, str]]] = []
        for at in range(0, len(ids), _READ_CHUNK):
            chunk = ids[at:at + _READ_CHUNK]
            async with self._redis.pipeline(transaction=False) as pipe:
                for each in chunk:
                    pipe.hgetall(f"{prefix}:{each}")
                hashes = await pipe.execute()
            # A fact that expired since its index entry was written is simply gone.
            found += [(each, {k.decode(): v.decode() for k, v in raw.items()})
                      for each, raw in zip(chunk, hashes, strict=True) if raw]
        return found

    async def missions(self, carrier: str, start_ms: int, end_ms: int, limit: int
                       ) -> list[tuple[str, dict[str, str]]]:
        """(id, facts) of the missions dispatched in [start_ms, end_ms), at most ``limit`` + 1 (so a caller can
        tell the window holds more than ``limit``)."""
        return await self._window(tenant_key("kpi-missions", carrier), tenant_key("kpi-mission", carrier),
                                  start_ms, end_ms, limit)

    async def tenders(self, carrier: str, start_ms: int, end_ms: int, limit: int
                      ) -> list[tuple[str, dict[str, str]]]:
        """(id, facts) of the tenders created in [start_ms, end_ms), at most ``limit`` + 1."""
        return await self._window(tenant_key("kpi-tenders", carrier), tenant_key("kpi-tender", carrier),
                                  start_ms, end_ms, limit)
