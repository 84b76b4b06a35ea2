"""A time-ordered index of resources in a sorted set, paged by an exclusive cursor.

Members are ``<create time ms, zero-padded>:<id>`` with score 0, so ZRANGE BYLEX orders them by creation
time and an exclusive ``(cursor`` start keeps pages stable while new resources arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import redis.asyncio
from google.protobuf.message import Message

from ._paging import Page

__all__ = ["Collection", "TimeIndex"]


class TimeIndex:
    """The sorted-set index at ``key``."""

    def __init__(self, key: str) -> None:
        self.key = key

    @staticmethod
    def member(create_time_ms: int, resource_id: str) -> str:
        return f"{create_time_ms:015d}:{resource_id}"

    @staticmethod
    def resource_id(member: bytes | str) -> str:
        text = member.decode() if isinstance(member, bytes) else member
        return text.split(":", 1)[1]

    async def members(self, client: redis.asyncio.Redis, after: str, count: int, *, newest_first: bool = True
                      ) -> list[str]:
        """Up to ``count`` members after the member ``after`` (exclusive; "" from the start), in index order."""
        if newest_first:
            raw = await client.zrange(self.key, f"({after}" if after else "+", "-", desc=True, bylex=True,
                                      offset=0, num=count)
        else:
            raw = await client.zrange(self.key, f"({after}" if after else "-", "+", bylex=True, offset=0, num=count)
        return [m.decode() for m in raw]

    async def page(self, client: redis.asyncio.Redis, page: Page, *, newest_first: bool = True
                   ) -> tuple[list[str], str]:
        """(resource ids of this page, cursor of the next page or "" when this is the last)."""
        if newest_first:
            start = f"({page.after}" if page.after else "+"
            members = await client.zrange(self.key, start, "-", desc=True, bylex=True, offset=0,
                                          num=page.size + 1)
        else:
            start = f"({page.after}" if page.after else "-"
            members = await client.zrange(self.key, start, "+", bylex=True, offset=0, num=page.size + 1)
        more = len(members) > page.size
        members = members[: page.size]
        cursor = members[-1].decode() if more and members else ""
        return [self.resource_id(m) for m in members], cursor


M = TypeVar("M", bound=Message)


class Collection(Generic[M]):
    """Protobuf resources stored one key each (``{prefix}:{id}``) with a :class:`TimeIndex` beside them.

    ``prefix`` should end in a hash tag (``tender:{CARRIER-1}``) so the resources and their index share a
    Redis Cluster slot and can commit together.
    """

    def __init__(self, client: redis.asyncio.Redis, message: type[M], *, prefix: str, index_key: str) -> None:
        self._redis = client
        self._message = message
        self._prefix = prefix
        self.index = TimeIndex(index_key)

    def key(self, resource_id: str) -> str:
        return f"{self._prefix}:{resource_id}"

    async def get(self, resource_id: str) -> M | None:
        raw = await self._redis.get(self.key(resource_id))
        return None if raw is None else self._message.FromString(raw)

    async def filtered_page(self, page: Page, keep: Callable[[M], bool], *, newest_first: bool = True,
                            batch: int = 200) -> tuple[list[M], str]:
        """A page of ``page.size`` resources that ``keep`` accepts, scanning the index in batches from the
        page's cursor, and the next page's cursor ("" when no match follows).

        The cursor is the index member of the last resource returned, so the next page resumes right after it
        whatever the filter skipped: a page never skips or repeats a match.
        """
        found: list[tuple[str, M]] = []
        after = page.after
        while len(found) <= page.size:
            members = await self.index.members(self._redis, after, max(batch, page.size + 1),
                                               newest_first=newest_first)
            if not members:
                break
            raws = await self._redis.mget([self.key(TimeIndex.resource_id(m)) for m in members])
            for member, raw in zip(members, raws, strict=True):
                if raw is None:
                    continue
                resource = self._message.FromString(raw)
                if keep(resource):
                    found.append((member, resource))
                    if len(found) > page.size:
                        break
            after = members[-1]
        more = len(found) > page.size
        found = found[: page.size]
        return [resource for _, resource in found], found[-1][0] if more else ""

    async def page(self, page: Page, *, newest_first: bool = True) -> tuple[list[M], str]:
        """One page of resources and the cursor of the next page ("" on the last)."""
        ids, cursor = await self.index.page(self._redis, page, newest_first=newest_first)
        if not ids:
            return [], cursor
        raws = await self._redis.mget([self.key(i) for i in ids])
        return [self._message.FromString(r) for r in raws if r is not None], cursor
