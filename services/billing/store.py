"""Rate cards, quotes and invoices in Redis, under the carrier's hash tag.

Keys of carrier ``c`` (all tagged ``{c}``, so each change commits with its index entries and its outbox
event in one MULTI/EXEC, also on Redis Cluster):

* ``ratecard:{c}:<id>`` RateCard; ``ratecards:{c}:by-effective`` TimeIndex by ``effective_time``.
* ``quote:{c}:<id>`` Quote; ``quote-basis:{c}:<id>`` the RateCard as it was when the quote was made (a
  later rate card change never reprices a quote or its invoice, detention terms included).
* ``invoice:{c}:<id>`` Invoice; ``invoices:{c}:by-time`` TimeIndex by ``issue_time``;
  ``invoice-by-mission:{c}:<mission>`` the mission's invoice id (a mission has at most one invoice);
  ``invoice-seq:{c}`` the counter behind invoice numbers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import redis.asyncio
from google.protobuf.message import Message
from redis.asyncio.client import Pipeline

from haulmesh.billing.v1 import invoice_pb2, quote_pb2, rate_card_pb2
from haulmesh.events.v1 import event_pb2
from services.runtime import Collection, Page, TimeIndex, add_event, tenant_key, transact

__all__ = ["BillingStore"]

M = TypeVar("M", bound=Message)
#: What a mutation callback returns: the new resource and the event announcing it, or None for "unchanged".
Change = tuple[M, event_pb2.Event | None] | None


def _ms(timestamp) -> int:
    return timestamp.seconds * 1000 + timestamp.nanos // 1_000_000


class BillingStore:
    """Reads and writes billing records of one store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client

    # --- rate cards -----------------------------------------------------------------------------------

    def _rate_cards(self, carrier: str) -> Collection[rate_card_pb2.RateCard]:
        return Collection(self._redis, rate_card_pb2.RateCard, prefix=tenant_key("ratecard", carrier),
                          index_key=tenant_key("ratecards", carrier, "by-effective"))

    async def get_rate_card(self, carrier: str, card_id: str) -> rate_card_pb2.RateCard | None:
        return await self._rate_cards(carrier).get(card_id)

    async def list_rate_cards(self, carrier: str, page: Page, keep: Callable[[rate_card_pb2.RateCard], bool]
                              ) -> tuple[list[rate_card_pb2.RateCard], str]:
        """One page of the cards ``keep`` accepts, latest ``effective_time`` first."""
        return await self._rate_cards(carrier).filtered_page(page, keep)

    async def rate_cards_effective_before(self, carrier: str, at_ms: int
                                          ) -> AsyncIterator[list[rate_card_pb2.RateCard]]:
        """Chunks of the cards effective at or before ``at_ms``, latest ``effective_time`` first."""
        cards = self._rate_cards(carrier)
        start = f"[{TimeIndex.member(at_ms, '~')}"
        while True:
            members = await self._redis.zrange(cards.index.key, start, "-", desc=True, bylex=True, offset=0,
                                               num=100)
            if not members:
                return
            raws = await self._redis.mget([cards.key(TimeIndex.resource_id(m)) for m in members])
            yield [rate_card_pb2.RateCard.FromString(r) for r in raws if r is not None]
            start = f"({members[-1].decode()}"

    async def create_rate_card(self, carrier: str, card_id: str, card: rate_card_pb2.RateCard, *,
                               only_if_none: bool = False) -> bool:
        """Store a new card; with ``only_if_none`` only if the carrier has no card at all (the default card)."""
        cards = self._rate_cards(carrier)

        async def write(pipe: Pipeline) -> bool:
            if only_if_none and await pipe.zcard(cards.index.key):
                return False
            pipe.multi()
            pipe.set(cards.key(card_id), card.SerializeToString())
            pipe.zadd(cards.index.key, {TimeIndex.member(_ms(card.effective_time), card_id): 0})
            return True

        return await transact(self._redis, carrier, [cards.index.key], write)

    async def update_rate_card(self, carrier: str, card_id: str,
                               mutate: Callable[[rate_card_pb2.RateCard | None], rate_card_pb2.RateCard]
                               ) -> rate_card_pb2.RateCard:
        """Replace the card with ``mutate(current)`` (which may raise) atomically; re-index if it moved."""
        cards = self._rate_cards(carrier)
        key = cards.key(card_id)

        async def write(pipe: Pipeline) -> rate_card_pb2.RateCard:
            raw = await pipe.get(key)
            current = None if raw is None else rate_card_pb2.RateCard.FromString(raw)
            updated = mutate(current)
            pipe.multi()
            pipe.set(key, updated.SerializeToString())
            if current is not None and _ms(current.effective_time) != _ms(updated.effective_time):
                pipe.zrem(cards.index.key, TimeIndex.member(_ms(current.effective_time), card_id))
                pipe.zadd(cards.index.key, {TimeIndex.member(_ms(updated.effective_time), card_id): 0})
            return updated

        return await transact(self._redis, carrier, [key], write)

    # --- quotes ---------------------------------------------------------------------------------------

    async def create_quote(self, carrier: str, quote_id: str, quote: quote_pb2.Quote,
                           basis: rate_card_pb2.RateCard) -> None:
        """Store a quote with the rate card it was priced with, together."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(tenant_key("quote", carrier, quote_id), quote.SerializeToString())
            pipe.set(tenant_key("quote-basis", carrier, quote_id), basis.SerializeToString())
            await pipe.execute()

    async def get_quote(self, carrier: str, quote_id: str
                        ) -> tuple[quote_pb2.Quote, rate_card_pb2.RateCard, int | None] | None:
        """The quote, the rate card it was priced with, and when it was accepted (ms; None: not known)."""
        raw, basis, accepted = await self._redis.mget([tenant_key("quote", carrier, quote_id),
                                                       tenant_key("quote-basis", carrier, quote_id),
                                                       tenant_key("quote-accepted", carrier, quote_id)])
        if raw is None or basis is None:
            return None
        return (quote_pb2.Quote.FromString(raw), rate_card_pb2.RateCard.FromString(basis),
                None if accepted is None else int(accepted))

    async def record_acceptance(self, carrier: str, quote_id: str, accept_ms: int) -> bool:
        """Remember when the quote's offer was accepted (the first report wins: redelivery changes nothing)."""
        return bool(await self._redis.set(tenant_key("quote-accepted", carrier, quote_id), accept_ms, nx=True))

    # --- invoices -------------------------------------------------------------------------------------

    def _invoices(self, carrier: str) -> Collection[invoice_pb2.Invoice]:
        return Collection(self._redis, invoice_pb2.Invoice, prefix=tenant_key("invoice", carrier),
                          index_key=tenant_key("invoices", carrier, "by-time"))

    async def get_invoice(self, carrier: str, invoice_id: str) -> invoice_pb2.Invoice | None:
        return await self._invoices(carrier).get(invoice_id)

    async def get_invoice_of_mission(self, carrier: str, mission_id: str) -> invoice_pb2.Invoice | None:
        """The mission's invoice, or None while it has none."""
        invoice_id = await self._redis.get(tenant_key("invoice-by-mission", carrier, mission_id))
        return None if invoice_id is None else await self.get_invoice(carrier, invoice_id.decode())

    async def list_invoices(self, carrier: str, page: Page, keep: Callable[[invoice_pb2.Invoice], bool]
                            ) -> tuple[list[invoice_pb2.Invoice], str]:
        """One page of the invoices ``keep`` accepts, newest ``issue_time`` first."""
        return await self._invoices(carrier).filtered_page(page, keep)

    async def issue_invoice(self, carrier: str, mission_id: str,
                            existing: Callable[[invoice_pb2.Invoice], invoice_pb2.Invoice],
                            build: Callable[[int], tuple[invoice_pb2.Invoice, event_pb2.Event]]
                            ) -> invoice_pb2.Invoice:
        """The mission's invoice: ``existing(invoice)`` if it has one (which may raise), else a new one.

        ``build(sequence)`` makes the invoice (its id in ``name``) and its event from the carrier's next
        invoice sequence number; invoice, index entry, mission link, counter and event commit together.
        """
        invoices = self._invoices(carrier)
        link = tenant_key("invoice-by-mission", carrier, mission_id)
        counter = tenant_key("invoice-seq", carrier)

        async def write(pipe: Pipeline) -> invoice_pb2.Invoice:
            invoice_id = await pipe.get(link)
            if invoice_id is not None:
                raw = await pipe.get(invoices.key(invoice_id.decode()))
                return existing(invoice_pb2.Invoice.FromString(raw))
            sequence = int(await pipe.get(counter) or 0) + 1
            invoice, event = build(sequence)
            new_id = invoice.name.removeprefix("invoices/")
            pipe.multi()
            pipe.set(invoices.key(new_id), invoice.SerializeToString())
            pipe.zadd(invoices.index.key, {TimeIndex.member(_ms(invoice.issue_time), new_id): 0})
            pipe.set(link, new_id)
            pipe.set(counter, sequence)
            add_event(pipe, event)
            return invoice

        return await transact(self._redis, carrier, [link, counter], write)

    async def update_invoice(self, carrier: str, invoice_id: str,
                             mutate: Callable[[invoice_pb2.Invoice | None], Change[invoice_pb2.Invoice]]
                             ) -> invoice_pb2.Invoice | None:
        """Apply ``mutate(current)`` atomically: (new, event) is written with its event; None changes nothing.

        Returns the invoice after the call (the current one when unchanged, None when there is none).
        """
        key = self._invoices(carrier).key(invoice_id)

        async def write(pipe: Pipeline) -> invoice_pb2.Invoice | None:
            raw = await pipe.get(key)
            current = None if raw is None else invoice_pb2.Invoice.FromString(raw)
            change = mutate(current)
            if change is None:
                return current
            updated, event = change
            pipe.multi()
            pipe.set(key, updated.SerializeToString())
            if event is not None:
                add_event(pipe, event)
            return updated

        return await transact(self._redis, carrier, [key], write)
