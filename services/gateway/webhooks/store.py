"""Webhook subscriptions, their secrets and their delivery log in Redis, under the carrier's hash tag.

Keys (``{c}`` is the carrier's hash tag, so everything of one carrier commits together):

* ``webhook:{c}:<sub>`` the subscription (protobuf, ``secret`` always empty), indexed by
  ``webhooks:{c}:by-time``;
* ``webhook-secret:{c}:<sub>`` its signing keys (JSON: the current secret and, during a rotation's
  overlap, the previous one with its expiry) — kept apart so that a subscription read never carries them;
* ``webhook-delivery:{c}:<delivery>`` one delivery (protobuf), indexed per subscription by
  ``webhook-deliveries:{c}:<sub>:by-time``; kept 30 days;
* ``webhook-event:{c}:<sub>:<event id>`` → delivery id: one delivery per (subscription, event); for an ETA
  event the subscription's policy held back, ``HELD_BACK`` instead (so a redelivery is known as one);
* ``webhook-failing:{c}:<sub>`` since when every attempt to the subscription failed (suspension);
* ``webhook-eta:{c}:<sub>:<mission>:<stop>`` the last ETA sent to the subscription for a mission's stop (JSON:
  estimate, event time, late), which its ETA policy compares the next one with; expires
  ``ETA_STATE_TTL_SECONDS`` after the last one sent, so finished missions leave nothing behind;
* ``webhook:due`` (no tag: one set for all carriers) — a sorted set of ``<carrier>/<delivery>`` by the time
  the next attempt is due. A member's score also serves as a lease: a worker that claims a member pushes
  its score past the attempt's time-out, so a crashed worker's attempt is picked up again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis.asyncio
from redis.asyncio.client import Pipeline

from haulmesh.gateway.v1 import webhook_pb2
from services.runtime import Collection, Page, TimeIndex

from .domain import MAX_SUBSCRIPTIONS, EtaSent, SigningKey, SubscriptionLimitReached

__all__ = ["DELIVERY_TTL_SECONDS", "DUE_KEY", "ETA_STATE_TTL_SECONDS", "HELD_BACK", "WebhookStore"]

# --- the key map (``{c}``: the carrier's hash tag) ------------------------------------------------------

DUE_KEY = "webhook:due"


def _subscription_prefix(carrier: str) -> str:
    return f"webhook:{{{carrier}}}"


def _subscription_index_key(carrier: str) -> str:
    return f"webhooks:{{{carrier}}}:by-time"


def _secret_key(carrier: str, subscription_id: str) -> str:
    return f"webhook-secret:{{{carrier}}}:{subscription_id}"


def _delivery_key(carrier: str, delivery_id: str) -> str:
    return f"webhook-delivery:{{{carrier}}}:{delivery_id}"


def _log_index_key(carrier: str, subscription_id: str) -> str:
    return f"webhook-deliveries:{{{carrier}}}:{subscription_id}:by-time"


def _event_key(carrier: str, subscription_id: str, event_id: str) -> str:
    return f"webhook-event:{{{carrier}}}:{subscription_id}:{event_id}"


def _failing_key(carrier: str, subscription_id: str) -> str:
    return f"webhook-failing:{{{carrier}}}:{subscription_id}"


def _eta_key(carrier: str, subscription_id: str, mission_id: str, stop_index: int) -> str:
    return f"webhook-eta:{{{carrier}}}:{subscription_id}:{mission_id}:{stop_index}"


def _due_member(carrier: str, delivery_id: str) -> str:
    return f"{carrier}/{delivery_id}"


#: Deliveries are kept 30 days (webhook_service.proto).
DELIVERY_TTL_SECONDS = 30 * 86400
#: The last ETA sent per (subscription, mission, stop) is kept this long after it was sent: longer than any
#: trip's silence between two ETA updates, and then it is gone with the mission.
ETA_STATE_TTL_SECONDS = 7 * 86400
#: What ``webhook-event`` holds for an ETA event the subscription's policy held back (no delivery id is this).
HELD_BACK = "held-back"

# Claim the due members whose time has come by moving them to now + lease, atomically, so that two
# gateway replicas never attempt the same delivery at once.
_CLAIM = """
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
"""


def _ms() -> int:
    return time.time_ns() // 1_000_000


class WebhookStore:
    """Reads and writes webhook subscriptions and deliveries of one store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client
        self._claim = client.register_script(_CLAIM)

    # --- subscriptions -------------------------------------------------------------------------------

    def _subscriptions(self, carrier: str) -> Collection[webhook_pb2.WebhookSubscription]:
        return Collection(self._redis, webhook_pb2.WebhookSubscription, prefix=_subscription_prefix(carrier),
                          index_key=_subscription_index_key(carrier))

    async def get(self, carrier: str, subscription_id: str) -> webhook_pb2.WebhookSubscription | None:
        return await self._subscriptions(carrier).get(subscription_id)

    async def list(self, carrier: str, page: Page) -> tuple[list[webhook_pb2.WebhookSubscription], str]:
        """Oldest first (webhook_service.proto)."""
        return await self._subscriptions(carrier).page(page, newest_first=False)

    async def all(self, carrier: str) -> list[webhook_pb2.WebhookSubscription]:
        """Every subscription of ``carrier`` (at most :data:`MAX_SUBSCRIPTIONS`, plus slack)."""
        subscriptions, _ = await self._subscriptions(carrier).page(Page("", MAX_SUBSCRIPTIONS * 5),
                                                                   newest_first=False)
        return subscriptions

    async def create(self, carrier: str, subscription: webhook_pb2.WebhookSubscription, subscription_id: str,
                     secret: str) -> webhook_pb2.WebhookSubscription:
        """Store a new subscription and its secret; RESOURCE_EXHAUSTED beyond the per-carrier limit."""
        collection = self._subscriptions(carrier)
        member = TimeIndex.member(subscription.create_time.ToMilliseconds(), subscription_id)

        async def write(pipe: Pipeline) -> None:
            if await pipe.zcard(collection.index.key) >= MAX_SUBSCRIPTIONS:
                raise SubscriptionLimitReached(f"a carrier has at most {MAX_SUBSCRIPTIONS} webhook subscriptions")
            pipe.multi()
            pipe.set(collection.key(subscription_id), subscription.SerializeToString())
            pipe.zadd(collection.index.key, {member: 0})
            pipe.set(_secret_key(carrier, subscription_id), _encode_keys([SigningKey(secret)]))

        await self._redis.transaction(write, collection.index.key)
        return subscription

    async def update(self, carrier: str, subscription_id: str,
                     change: Callable[[webhook_pb2.WebhookSubscription, list[SigningKey]],
                                      tuple[webhook_pb2.WebhookSubscription, list[SigningKey] | None]]
                     ) -> webhook_pb2.WebhookSubscription | None:
        """Apply ``change(current, keys) -> (new, new keys or None)`` atomically; None if there is none.

        ``change`` may raise (etag mismatch, invalid values) to abort without writing.
        """
        key = self._subscriptions(carrier).key(subscription_id)
        secret_key = _secret_key(carrier, subscription_id)

        async def write(pipe: Pipeline) -> webhook_pb2.WebhookSubscription | None:
            raw, raw_keys = await pipe.mget(key, secret_key)
            if raw is None:
                return None
            updated, keys = change(webhook_pb2.WebhookSubscription.FromString(raw), _decode_keys(raw_keys))
            pipe.multi()
            pipe.set(key, updated.SerializeToString())
            if keys is not None:
                pipe.set(secret_key, _encode_keys(keys))
            return updated

        return await self._redis.transaction(write, key, secret_key, value_from_callable=True)

    async def delete(self, carrier: str, subscription_id: str,
                     check: Callable[[webhook_pb2.WebhookSubscription], None]) -> bool:
        """Delete a subscription, its secret and its delivery log (``check`` may raise to refuse)."""
        collection = self._subscriptions(carrier)
        key = collection.key(subscription_id)
        log = self._log_index(carrier, subscription_id)

        async def write(pipe: Pipeline) -> bool:
            raw = await pipe.get(key)
            if raw is None:
                return False
            subscription = webhook_pb2.WebhookSubscription.FromString(raw)
            check(subscription)
            delivery_ids = [TimeIndex.resource_id(m) for m in await pipe.zrange(log.key, 0, -1)]
            pipe.multi()
            pipe.delete(key, _secret_key(carrier, subscription_id), log.key,
                        *(_delivery_key(carrier, d) for d in delivery_ids))
            pipe.zrem(collection.index.key,
                      TimeIndex.member(subscription.create_time.ToMilliseconds(), subscription_id))
            return True

        # Due-set members of the dropped deliveries are discarded by the dispatcher when it finds no delivery.
        return await self._redis.transaction(write, key, log.key, value_from_callable=True)

    async def signing_keys(self, carrier: str, subscription_id: str) -> list[SigningKey]:
        """The keys a delivery is signed with now: the current secret and an unexpired previous one."""
        now = _ms()
        keys = _decode_keys(await self._redis.get(_secret_key(carrier, subscription_id)))
        return [k for k in keys if k.until_ms == 0 or k.until_ms > now]

    # --- deliveries ----------------------------------------------------------------------------------

    @staticmethod
    def _log_index(carrier: str, subscription_id: str) -> TimeIndex:
        return TimeIndex(_log_index_key(carrier, subscription_id))

    async def add_delivery(self, carrier: str, subscription_id: str, delivery_id: str,
                           delivery: webhook_pb2.WebhookDelivery, *, due_at: float | None,
                           event_id: str | None = None) -> tuple[str, bool]:
        """Record a delivery (and schedule it at ``due_at``, Unix seconds, unless None).

        With ``event_id``, at most one delivery exists per (subscription, event): a repeat returns the
        existing delivery's id and False.
        """
        log = self._log_index(carrier, subscription_id)
        event_key = _event_key(carrier, subscription_id, event_id) if event_id else None
        created_ms = delivery.create_time.ToMilliseconds()

        async def write(pipe: Pipeline) -> tuple[str, bool]:
            if event_key is not None:
                existing = await pipe.get(event_key)
                if existing is not None:
                    return existing.decode(), False
            pipe.multi()
            if event_key is not None:
                pipe.set(event_key, delivery_id, ex=DELIVERY_TTL_SECONDS)
            pipe.set(_delivery_key(carrier, delivery_id), delivery.SerializeToString(), ex=DELIVERY_TTL_SECONDS)
            pipe.zadd(log.key, {TimeIndex.member(created_ms, delivery_id): 0})
            # The log keeps 30 days, like the deliveries themselves.
            pipe.zremrangebylex(log.key, "-", f"({TimeIndex.member(created_ms - DELIVERY_TTL_SECONDS * 1000, '')}")
            return delivery_id, True

        watch = [event_key] if event_key else []
        result = await self._redis.transaction(write, *watch, value_from_callable=True)
        if result[1] and due_at is not None:
            await self.schedule(carrier, delivery_id, due_at)
        return result

    async def add_eta_delivery(self, carrier: str, subscription_id: str, delivery_id: str,
                               delivery: webhook_pb2.WebhookDelivery, *, mission_id: str, stop_index: int,
                               event_id: str, due_at: float,
                               decide: Callable[[EtaSent | None], EtaSent | None]) -> tuple[str, bool]:
        """Record (and schedule) an ETA delivery if ``decide(last sent)`` returns the update to remember.

        The last ETA sent for the (subscription, mission, stop), the decision, the delivery and the new last
        ETA are one transaction, so two consumers deciding on two updates of one stop at once cannot both
        send on the same reference. A repeated event returns the existing delivery, as :meth:`add_delivery`
        (:data:`HELD_BACK` for an event the policy held back before). Returns (delivery id, whether a delivery
        was created); ("", False) when the policy holds it back now.
        """
        log = self._log_index(carrier, subscription_id)
        event_key = _event_key(carrier, subscription_id, event_id)
        state_key = _eta_key(carrier, subscription_id, mission_id, stop_index)
        created_ms = delivery.create_time.ToMilliseconds()

        async def write(pipe: Pipeline) -> tuple[str, bool]:
            existing, raw_state = await pipe.mget(event_key, state_key)
            if existing is not None:
                pipe.multi()
                return existing.decode(), False
            remember = decide(_decode_eta(raw_state))
            pipe.multi()
            if remember is None:
                # Judged once: a redelivery of this event is a duplicate, not another update held back.
                pipe.set(event_key, HELD_BACK, ex=DELIVERY_TTL_SECONDS)
                return "", False
            pipe.set(state_key, _encode_eta(remember), ex=ETA_STATE_TTL_SECONDS)
            pipe.set(event_key, delivery_id, ex=DELIVERY_TTL_SECONDS)
            pipe.set(_delivery_key(carrier, delivery_id), delivery.SerializeToString(), ex=DELIVERY_TTL_SECONDS)
            pipe.zadd(log.key, {TimeIndex.member(created_ms, delivery_id): 0})
            pipe.zremrangebylex(log.key, "-", f"({TimeIndex.member(created_ms - DELIVERY_TTL_SECONDS * 1000, '')}")
            return delivery_id, True

        result = await self._redis.transaction(write, event_key, state_key, value_from_callable=True)
        if result[1]:
            await self.schedule(carrier, delivery_id, due_at)
        return result

    async def get_delivery(self, carrier: str, delivery_id: str) -> webhook_pb2.WebhookDelivery | None:
        raw = await self._redis.get(_delivery_key(carrier, delivery_id))
        return None if raw is None else webhook_pb2.WebhookDelivery.FromString(raw)

    async def save_delivery(self, carrier: str, delivery_id: str, delivery: webhook_pb2.WebhookDelivery) -> bool:
        """Overwrite an existing delivery (keeping its expiry); False if it is gone (subscription deleted)."""
        return bool(await self._redis.set(_delivery_key(carrier, delivery_id), delivery.SerializeToString(),
                                          xx=True, keepttl=True))

    async def list_deliveries(self, carrier: str, subscription_id: str, page: Page,
                              keep: Callable[[webhook_pb2.WebhookDelivery], bool] | None = None,
                              *, max_scanned: int = 5000) -> tuple[list[webhook_pb2.WebhookDelivery], str]:
        """Newest first; with ``keep``, only the deliveries it accepts.

        A filtered page scans the log in chunks until the page is full, the log ends, or ``max_scanned``
        entries were read (then the page may be short, with a cursor to continue: AIP-158 allows that).
        """
        index = self._log_index(carrier, subscription_id)
        found: list[webhook_pb2.WebhookDelivery] = []
        after, scanned = page.after, 0
        while True:
            chunk = page.size if keep is None else max(page.size, 100)
            ids, cursor = await index.page(self._redis, Page(after, chunk), newest_first=True)
            raws = await self._redis.mget([_delivery_key(carrier, i) for i in ids]) if ids else []
            for delivery_id, raw in zip(ids, raws, strict=True):
                scanned += 1
                if raw is None:
                    continue
                delivery = webhook_pb2.WebhookDelivery.FromString(raw)
                if keep is None or keep(delivery):
                    found.append(delivery)
                if len(found) == page.size:
                    last = TimeIndex.member(delivery.create_time.ToMilliseconds(), delivery_id)
                    more = bool(cursor) or delivery_id != ids[-1]
                    return found, last if more else ""
            if not cursor:
                return found, ""
            if scanned >= max_scanned:
                return found, cursor
            after = cursor

    # --- failure streak (suspension) -----------------------------------------------------------------

    async def record_outcome(self, carrier: str, subscription_id: str, *, succeeded: bool, now: float) -> float | None:
        """Track since when every attempt to a subscription failed; returns that time, None after a success."""
        key = _failing_key(carrier, subscription_id)
        if succeeded:
            await self._redis.delete(key)
            return None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, repr(now), nx=True, ex=DELIVERY_TTL_SECONDS)
            pipe.get(key)
            _, since = await pipe.execute()
        return float(since) if since is not None else None

    async def clear_failures(self, carrier: str, subscription_id: str) -> None:
        await self._redis.delete(_failing_key(carrier, subscription_id))

    # --- the due set ---------------------------------------------------------------------------------

    async def schedule(self, carrier: str, delivery_id: str, due_at: float) -> None:
        await self._redis.zadd(DUE_KEY, {_due_member(carrier, delivery_id): due_at})

    async def unschedule(self, carrier: str, delivery_id: str) -> None:
        await self._redis.zrem(DUE_KEY, _due_member(carrier, delivery_id))

    async def claim_due(self, now: float, lease_seconds: float, limit: int) -> list[tuple[str, str]]:
        """(carrier, delivery id) of up to ``limit`` due deliveries, leased for ``lease_seconds``."""
        members = await self._claim(keys=[DUE_KEY], args=[now, now + lease_seconds, limit])
        return [tuple(m.decode().split("/", 1)) for m in members]  # type: ignore[misc]

    async def next_due(self) -> float | None:
        """When the earliest scheduled attempt is due (Unix seconds), or None."""
        first = await self._redis.zrange(DUE_KEY, 0, 0, withscores=True)
        return first[0][1] if first else None


def _encode_keys(keys: list[SigningKey]) -> str:
    return json.dumps([{"secret": k.secret, "until_ms": k.until_ms} for k in keys])


def _decode_keys(raw: bytes | None) -> list[SigningKey]:
    return [SigningKey(k["secret"], int(k["until_ms"])) for k in json.loads(raw)] if raw else []


def _encode_eta(sent: EtaSent) -> str:
    return json.dumps({"eta_ms": int(sent.eta.timestamp() * 1000), "time_ms": int(sent.event_time.timestamp() * 1000),
                       "late": sent.late})


def _decode_eta(raw: bytes | None) -> EtaSent | None:
    if not raw:
        return None
    data = json.loads(raw)
    return EtaSent(datetime.fromtimestamp(data["eta_ms"] / 1000, UTC),
                   datetime.fromtimestamp(data["time_ms"] / 1000, UTC), bool(data["late"]))
