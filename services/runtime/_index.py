"""A time-ordered index of resources in a sorted set, paged by an exclusive cursor.

Members are ``<create time ms, zero-padded>:<id>`` with score 0, so ZRANGE BYLEX orders them by creation
time and an exclusive ``(cursor`` start keeps pages stable while new resources arrive.
"""

from __future__ import annotations

import redis.asyncio

from ._paging import Page

__all__ = ["TimeIndex"]


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
