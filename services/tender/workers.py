"""The tender service's periodic loops, started through the runtime (``Service.add_periodic``).

* the offer lapser: offers past their ``expire_time`` become LAPSED (with their event).
"""

from __future__ import annotations

import logging

from services.runtime import HaulmeshError, Periodic, Service

from .usecases import TenderBook

__all__ = ["LAPSE_MAX_SLEEP_SECONDS", "OfferLapser", "register"]

_log = logging.getLogger("haulmesh.tender")

#: The lapser looks at the expiry set at least this often (it sleeps until the next expiry when sooner).
LAPSE_MAX_SLEEP_SECONDS = 0.5
#: After a failed pass (a store hiccup) the lapser tries again after at most this long.
LAPSE_MAX_BACKOFF_SECONDS = 1.0


class OfferLapser:
    """Offers past their ``expire_time`` become LAPSED (with their event).

    Each pass lapses the due offers of the fleet-wide expiry set and returns the delay until the next expiry
    (at most ``max_sleep_seconds``). Safe with several replicas: the lapse is an optimistic transaction that
    commits once.
    """

    def __init__(self, book: TenderBook, *, max_sleep_seconds: float = LAPSE_MAX_SLEEP_SECONDS) -> None:
        self._book = book
        self._max_sleep = max_sleep_seconds

    async def run_once(self) -> int:
        """Lapse every due offer; how many lapsed now."""
        now = self._book.clock()
        lapsed = 0
        for tenant, tender_id, score in await self._book.store.due_expiries(int(now.timestamp() * 1000)):
            try:
                lapsed += await self._book.lapse(tenant, tender_id, now)
            except HaulmeshError as exc:  # e.g. the tender no longer exists
                _log.info("lapse of tenders/%s skipped: %s", tender_id, exc)
            await self._book.store.forget_expiry(tenant, tender_id, score)
        return lapsed

    async def tick(self) -> float:
        """One pass; the seconds until the next offer expires (at most ``max_sleep_seconds``)."""
        await self.run_once()
        delay = self._max_sleep
        nxt = await self._book.store.next_expiry_ms()
        if nxt is not None:
            delay = max(0.01, min(delay, nxt / 1000 - self._book.clock().timestamp()))
        return delay


def register(service: Service, book: TenderBook) -> Periodic:
    """Start the tender service's loops with ``service``."""
    lapser = OfferLapser(book)
    return service.add_periodic("tender offer lapser", lapser.tick, interval_seconds=LAPSE_MAX_SLEEP_SECONDS,
                                max_backoff_seconds=LAPSE_MAX_BACKOFF_SECONDS)
