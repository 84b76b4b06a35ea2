"""Vehicles and missions in Redis.

Key layout (``{tag}`` is the Redis Cluster hash tag; what commits together shares it):

* Fleet-wide, tag ``{fleet}``: ``vehicle:{fleet}:<id>`` (a Vehicle) with the roster index
  ``vehicles:{fleet}:by-time``; ``vehicle-cert:{fleet}:<id>`` (PEM of the certificate the vehicle last
  presented); ``mission-carrier:{fleet}`` (hash mission id → carrier, for callers that act for no
  carrier: trucks); ``lane-missions:{fleet}`` (hash lane ``ORIGIN>DESTINATION`` → missions dispatched on it).
  (``vehicle-carrier:{fleet}``, once the carrier told of an idle vehicle's connectivity, is no longer written
  nor read: idle vehicles are the fleet's business only.)
* Per carrier, tag ``{<carrier>}``: ``mission:{c}:<id>`` (a Mission), ``missions:{c}:by-time``,
  ``mission-by-tender:{c}`` (hash tender id → mission id: a tender has at most one mission),
  ``billing-pending:{c}`` (sorted set of DELIVERED missions whose usage billing has not recorded yet,
  scored by the time of the next attempt), ``billing-attempts:{c}:<id>`` (billing attempts of a pending
  mission, kept a day), ``billing-usage:{c}:<id>`` (the RecordUsageRequest the first billing attempt
  measured: every retry sends exactly it), ``billing-disputed:{c}`` (sorted set of DELIVERED missions whose
  DISPUTED proof outlived HAULMESH_POD_DISPUTE_SECONDS → when escalated, ms: an operator's list),
  ``check-ins-due:{c}`` (sorted set of missions whose required check-in is pending and not yet escalated, scored by
  its due time, ms: the overdue sweep's), and the carrier's event stream.
* ``mission:billing-carriers``: the carriers that ever had a mission awaiting billing (untagged, like
  the runtime's stream registry; written before the first such mission); ``mission:check-in-carriers`` likewise,
  the carriers that ever had a mission written (the overdue check-in sweep's list).

A dispatch touches both tags: the vehicle is reserved in the fleet slot, then the mission is written in
the carrier's slot; the use case compensates (releases the vehicle) when the second step fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio
from redis.asyncio.client import Pipeline

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2, vehicle_pb2
from haulmesh.type.v1 import lane_pb2
from services.runtime import FLEET, AlreadyExists, Collection, NotFound, Page, add_event, new_id, tenant_key, transact

__all__ = ["MissionStore"]

Mutation = Callable[[mission_pb2.Mission], Callable[[mission_pb2.Mission], list[event_pb2.Event]] | None]
VehicleMutation = Callable[[vehicle_pb2.Vehicle], bool]
#: An observation of a vehicle: the vehicle → None (unchanged) or its events (for the fleet's stream).
Observe = Callable[[vehicle_pb2.Vehicle], list[event_pb2.Event] | None]

_BILLING_CARRIERS = "mission:billing-carriers"
_CHECK_IN_CARRIERS = "mission:check-in-carriers"
_DELIVERED = mission_pb2.Mission.STATE_DELIVERED


def _now_ms() -> int:
    return int(time.time() * 1000)


def _lane_field(lane: lane_pb2.Lane) -> str:
    """The lane's field in ``lane-missions``."""
    return f"{lane.origin_region}>{lane.destination_region}"


class MissionStore:
    """Reads and writes the roster and missions of one store."""

    def __init__(self, client: redis.asyncio.Redis, *, billing_grace_seconds: float = 30.0) -> None:
        self.redis = client
        self._billing_grace_ms = int(billing_grace_seconds * 1000)
        self._vehicles = Collection(client, vehicle_pb2.Vehicle, prefix=f"vehicle:{{{FLEET}}}",
                                    index_key=tenant_key("vehicles", FLEET, "by-time"))
        self._billing_carriers_known: set[str] = set()
        self._check_in_carriers_known: set[str] = set()

    # --- vehicles ------------------------------------------------------------------------------------

    async def get_vehicle(self, vehicle_id: str) -> vehicle_pb2.Vehicle | None:
        return await self._vehicles.get(vehicle_id)

    async def list_vehicles(self, page: Page, keep: Callable[[vehicle_pb2.Vehicle], bool] | None = None
                            ) -> tuple[list[vehicle_pb2.Vehicle], str]:
        """One page of the roster by creation; ``keep`` filters (the scan goes on until the page is full)."""
        if keep is None:
            return await self._vehicles.page(page, newest_first=False)
        return await self._vehicles.filtered_page(page, keep, newest_first=False)

    async def all_vehicles(self) -> list[vehicle_pb2.Vehicle]:
        """The whole roster (dispatch and capacity rank every vehicle; a fleet is thousands, not millions)."""
        ids = [self._vehicles.index.resource_id(m) for m in await self.redis.zrange(self._vehicles.index.key, 0, -1)]
        if not ids:
            return []
        raws = await self.redis.mget([self._vehicles.key(i) for i in ids])
        return [vehicle_pb2.Vehicle.FromString(r) for r in raws if r is not None]

    async def create_vehicle(self, vehicle_id: str, vehicle: vehicle_pb2.Vehicle) -> vehicle_pb2.Vehicle:
        """Add ``vehicle`` (already stamped); ALREADY_EXISTS if the id is taken."""
        key = self._vehicles.key(vehicle_id)

        async def write(pipe: Pipeline) -> vehicle_pb2.Vehicle:
            if await pipe.exists(key):
                raise AlreadyExists(f"vehicles/{vehicle_id} already exists", reason="VEHICLE_ALREADY_EXISTS",
                                    metadata={"name": f"vehicles/{vehicle_id}"})
            pipe.multi()
            pipe.set(key, vehicle.SerializeToString())
            pipe.zadd(self._vehicles.index.key,
                      {self._vehicles.index.member(vehicle.create_time.ToMilliseconds(), vehicle_id): 0})
            return vehicle

        return await transact(self.redis, FLEET, [key], write)

    async def update_vehicle(self, vehicle_id: str, mutate: VehicleMutation) -> vehicle_pb2.Vehicle:
        """Apply ``mutate`` (returns False for no change) atomically; NOT_FOUND if there is no such vehicle."""
        key = self._vehicles.key(vehicle_id)

        async def write(pipe: Pipeline) -> vehicle_pb2.Vehicle:
            raw = await pipe.get(key)
            if raw is None:
                raise NotFound(f"vehicles/{vehicle_id} does not exist", reason="VEHICLE_NOT_FOUND",
                               metadata={"name": f"vehicles/{vehicle_id}"})
            vehicle = vehicle_pb2.Vehicle.FromString(raw)
            changed = mutate(vehicle)
            pipe.multi()
            if changed:
                vehicle.update_time.GetCurrentTime()
                vehicle.etag = new_id()
                pipe.set(key, vehicle.SerializeToString())
            return vehicle

        return await transact(self.redis, FLEET, [key], write)

    async def reserve_vehicle(self, vehicle_id: str, mission_name: str, carrier: str, lane: lane_pb2.Lane
                              ) -> int | None:
        """Assign an AVAILABLE vehicle to ``mission_name``; the lane's mission ordinal, or None if taken.

        One fleet-slot transaction: the vehicle, the mission → carrier map and the lane counter.
        """
        key = self._vehicles.key(vehicle_id)
        lanes, lane_field = tenant_key("lane-missions", FLEET), _lane_field(lane)

        async def write(pipe: Pipeline) -> int | None:
            raw = await pipe.get(key)
            if raw is None:
                return None
            vehicle = vehicle_pb2.Vehicle.FromString(raw)
            if vehicle.availability != vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE:
                return None
            ordinal = int(await pipe.hget(lanes, lane_field) or 0) + 1
            vehicle.availability = vehicle_pb2.Vehicle.AVAILABILITY_ASSIGNED
            vehicle.current_mission = mission_name
            vehicle.update_time.GetCurrentTime()
            vehicle.etag = new_id()
            pipe.multi()
            pipe.set(key, vehicle.SerializeToString())
            pipe.hset(tenant_key("mission-carrier", FLEET), mission_name.removeprefix("missions/"), carrier)
            pipe.hset(lanes, lane_field, ordinal)
            return ordinal

        return await transact(self.redis, FLEET, [key, lanes], write)

    async def release_vehicle(self, vehicle_id: str, mission_name: str, *, lane: lane_pb2.Lane | None = None
                              ) -> bool:
        """Free the vehicle if it is still assigned to ``mission_name`` (idempotent); True if it was.

        ``lane``: give back the lane ordinal too (compensation of a dispatch whose mission was never written).
        """
        key = self._vehicles.key(vehicle_id)
        lanes = tenant_key("lane-missions", FLEET)

        async def write(pipe: Pipeline) -> bool:
            raw = await pipe.get(key)
            vehicle = None if raw is None else vehicle_pb2.Vehicle.FromString(raw)
            pipe.multi()
            if vehicle is None or vehicle.current_mission != mission_name:
                return False
            vehicle.current_mission = ""
            if vehicle.availability == vehicle_pb2.Vehicle.AVAILABILITY_ASSIGNED:
                vehicle.availability = vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE
            vehicle.update_time.GetCurrentTime()
            vehicle.etag = new_id()
            pipe.set(key, vehicle.SerializeToString())
            if lane is not None:
                pipe.hincrby(lanes, _lane_field(lane), -1)
                pipe.hdel(tenant_key("mission-carrier", FLEET), mission_name.removeprefix("missions/"))
            return True

        return await transact(self.redis, FLEET, [key], write)

    async def observe_vehicles(self, vehicle_ids: list[str], observe: Observe) -> tuple[int, list[str]]:
        """Apply telemetry's observations to many vehicles in one fleet-slot transaction.

        ``observe(vehicle)`` changes the vehicle in place and returns None (unchanged) or the events announcing
        the change, which commit with the vehicles on the fleet's stream (they must carry no carrier: vehicles
        are not exposed to carriers). The vehicles are written as they are: these are observations, so
        ``update_time`` and ``etag`` stay. Returns (vehicles changed, ids not on the roster).
        """
        keys = [self._vehicles.key(v) for v in vehicle_ids]

        async def write(pipe: Pipeline) -> tuple[int, list[str]]:
            raws = await pipe.mget(keys)
            changed, unknown = 0, []
            writes: list[tuple[str | None, object]] = []
            for vehicle_id, key, raw in zip(vehicle_ids, keys, raws, strict=True):
                if raw is None:
                    unknown.append(vehicle_id)
                    continue
                vehicle = vehicle_pb2.Vehicle.FromString(raw)
                events = observe(vehicle)
                if events is None:
                    continue
                if any(e.carrier for e in events):
                    raise ValueError("a vehicle observation's events belong to the fleet's stream only")
                changed += 1
                writes.append((key, vehicle.SerializeToString()))
                writes.extend((None, e) for e in events)
            pipe.multi()
            for key, value in writes:
                if key is None:
                    add_event(pipe, value)
                else:
                    pipe.set(key, value)
            return changed, unknown

        return await transact(self.redis, FLEET, keys, write)

    async def observe_mission(self, mission_id: str, observe: Callable[[mission_pb2.Mission], bool]) -> bool:
        """Apply an observation (ETAs) to a mission of any carrier; written as it is, without a new ``etag`` or
        ``update_time`` and without events. Whether it changed (False: no such mission)."""
        carrier = await self.mission_carrier(mission_id)
        if carrier is None:
            return False
        key = self._missions(carrier).key(mission_id)

        async def write(pipe: Pipeline) -> bool:
            raw = await pipe.get(key)
            pipe.multi()
            if raw is None:
                return False
            mission = mission_pb2.Mission.FromString(raw)
            if not observe(mission):
                return False
            pipe.set(key, mission.SerializeToString())
            return True

        return await transact(self.redis, carrier, [key], write)

    async def observe_carrier_mission(self, carrier: str, mission_id: str,
                                      observe: Callable[[mission_pb2.Mission], bool]) -> mission_pb2.Mission | None:
        """:meth:`observe_mission` for a known carrier; the mission as stored afterwards (None: no such mission)."""
        key = self._missions(carrier).key(mission_id)

        async def write(pipe: Pipeline) -> mission_pb2.Mission | None:
            raw = await pipe.get(key)
            pipe.multi()
            if raw is None:
                return None
            mission = mission_pb2.Mission.FromString(raw)
            if observe(mission):
                pipe.set(key, mission.SerializeToString())
            return mission

        return await transact(self.redis, carrier, [key], write)

    async def mission_carrier(self, mission_id: str) -> str | None:
        """The carrier of a mission, for callers that act for no carrier (the mission's truck)."""
        raw = await self.redis.hget(tenant_key("mission-carrier", FLEET), mission_id)
        return None if raw is None else raw.decode()

    async def pin_vehicle_certificate(self, vehicle_id: str, certificate_pem: bytes) -> None:
        """Remember the certificate the vehicle presented (operators' PoD submissions verify against it)."""
        await self.redis.set(tenant_key("vehicle-cert", FLEET, vehicle_id), certificate_pem)

    async def vehicle_certificate(self, vehicle_id: str) -> bytes | None:
        return await self.redis.get(tenant_key("vehicle-cert", FLEET, vehicle_id))

    # --- missions ------------------------------------------------------------------------------------

    def _missions(self, carrier: str) -> Collection[mission_pb2.Mission]:
        return Collection(self.redis, mission_pb2.Mission, prefix=f"mission:{{{carrier}}}",
                          index_key=tenant_key("missions", carrier, "by-time"))

    async def get_mission(self, carrier: str, mission_id: str) -> mission_pb2.Mission | None:
        return await self._missions(carrier).get(mission_id)

    async def list_missions(self, carrier: str, page: Page, keep: Callable[[mission_pb2.Mission], bool] | None = None
                            ) -> tuple[list[mission_pb2.Mission], str]:
        """One page of the carrier's missions, newest first; ``keep`` filters."""
        if keep is None:
            return await self._missions(carrier).page(page, newest_first=True)
        return await self._missions(carrier).filtered_page(page, keep)

    async def mission_of_tender(self, carrier: str, tender_id: str) -> str | None:
        raw = await self.redis.hget(tenant_key("mission-by-tender", carrier), tender_id)
        return None if raw is None else raw.decode()

    async def create_mission(self, carrier: str, mission: mission_pb2.Mission, tender_id: str,
                             event: event_pb2.Event) -> str | None:
        """Write a new mission with its dispatched event; the existing mission id if the tender has one."""
        missions = self._missions(carrier)
        mission_id = mission.name.removeprefix("missions/")
        by_tender = tenant_key("mission-by-tender", carrier)

        async def write(pipe: Pipeline) -> str | None:
            existing = await pipe.hget(by_tender, tender_id)
            if existing is not None:
                pipe.multi()
                return existing.decode()
            pipe.multi()
            pipe.set(missions.key(mission_id), mission.SerializeToString())
            pipe.zadd(missions.index.key, {missions.index.member(mission.create_time.ToMilliseconds(), mission_id): 0})
            pipe.hset(by_tender, tender_id, mission_id)
            _index_check_in(pipe, carrier, mission_id, mission)
            add_event(pipe, event)
            return None

        await self._know_check_in_carrier(carrier)
        return await transact(self.redis, carrier, [by_tender], write)

    async def update_mission(self, carrier: str, mission_id: str, mutate: Mutation
                             ) -> tuple[mission_pb2.Mission, bool]:
        """Apply ``mutate`` to the mission atomically with the events it announces.

        ``mutate`` changes the mission in place and returns a function from the stamped mission to its
        events, or None for no change. Returns (the mission, whether it changed). The mission's
        ``update_time`` and ``etag`` are stamped here; a mission entering DELIVERED joins the carrier's
        billing-pending set, one leaving it leaves the set, in the same transaction.
        """
        missions = self._missions(carrier)
        key = missions.key(mission_id)
        pending = tenant_key("billing-pending", carrier)
        if carrier not in self._billing_carriers_known:
            await self.redis.sadd(_BILLING_CARRIERS, carrier)  # before any mission can wait for billing
            self._billing_carriers_known.add(carrier)

        async def write(pipe: Pipeline) -> tuple[mission_pb2.Mission, bool]:
            raw = await pipe.get(key)
            if raw is None:
                raise NotFound(f"missions/{mission_id} does not exist", reason="MISSION_NOT_FOUND",
                               metadata={"name": f"missions/{mission_id}"})
            mission = mission_pb2.Mission.FromString(raw)
            before = mission.state
            announce = mutate(mission)
            pipe.multi()
            if announce is None:
                return mission, False
            mission.update_time.GetCurrentTime()
            mission.etag = new_id()
            pipe.set(key, mission.SerializeToString())
            if mission.state == _DELIVERED and before != _DELIVERED:
                # The event consumer bills at once; the sweeper takes over only after the grace period.
                pipe.zadd(pending, {mission_id: _now_ms() + self._billing_grace_ms})
            elif before == _DELIVERED and mission.state != _DELIVERED:
                pipe.zrem(pending, mission_id)
                pipe.zrem(tenant_key("billing-disputed", carrier), mission_id)
                pipe.delete(tenant_key("billing-usage", carrier, mission_id))
            _index_check_in(pipe, carrier, mission_id, mission)
            for event in announce(mission):
                add_event(pipe, event)
            return mission, True

        await self._know_check_in_carrier(carrier)
        return await transact(self.redis, carrier, [key], write)

    async def _know_check_in_carrier(self, carrier: str) -> None:
        if carrier not in self._check_in_carriers_known:
            await self.redis.sadd(_CHECK_IN_CARRIERS, carrier)  # before any of its missions can be due
            self._check_in_carriers_known.add(carrier)

    async def overdue_check_ins(self, grace_seconds: float, limit: int = 100) -> list[tuple[str, str]]:
        """(carrier, mission id) of missions whose pending check-in was due more than ``grace_seconds`` ago and is
        not escalated yet, earliest first per carrier."""
        due, cutoff = [], _now_ms() - int(grace_seconds * 1000)
        for raw in sorted(await self.redis.smembers(_CHECK_IN_CARRIERS)):
            carrier = raw.decode()
            ids = await self.redis.zrangebyscore(tenant_key("check-ins-due", carrier), "-inf", cutoff, start=0,
                                                 num=limit - len(due))
            due.extend((carrier, i.decode()) for i in ids)
            if len(due) >= limit:
                break
        return due

    async def forget_check_in_due(self, carrier: str, mission_id: str) -> None:
        """Drop a mission that no longer exists from the carrier's due check-ins."""
        await self.redis.zrem(tenant_key("check-ins-due", carrier), mission_id)

    async def due_for_billing(self, limit: int = 100) -> list[tuple[str, str]]:
        """(carrier, mission id) of DELIVERED missions whose next billing attempt is due."""
        due = []
        now = _now_ms()
        for raw in await self.redis.smembers(_BILLING_CARRIERS):
            carrier = raw.decode()
            ids = await self.redis.zrangebyscore(tenant_key("billing-pending", carrier), "-inf", now,
                                                 start=0, num=limit)
            due.extend((carrier, i.decode()) for i in ids)
        return due[:limit]

    async def postpone_billing(self, carrier: str, mission_id: str, delay_seconds: float) -> None:
        """Set the next billing attempt of a pending mission (only if it is still pending)."""
        await self.redis.zadd(tenant_key("billing-pending", carrier),
                              {mission_id: _now_ms() + int(delay_seconds * 1000)}, xx=True)

    async def keep_billing_usage(self, carrier: str, mission_id: str, request: bytes) -> bytes:
        """Keep the first measured RecordUsageRequest of a mission (SET NX) and return the one kept: a retry
        sends exactly what the first attempt measured, so billing never sees two usages for one mission. Deleted
        when the mission leaves DELIVERED; the TTL only bounds a key whose mission vanished."""
        key = tenant_key("billing-usage", carrier, mission_id)
        kept = await self.redis.set(key, request, nx=True, get=True, ex=90 * 86400)
        return request if kept is None else bytes(kept)

    async def billing_usage(self, carrier: str, mission_id: str) -> bytes | None:
        """The RecordUsageRequest kept by :meth:`keep_billing_usage`, if any."""
        return await self.redis.get(tenant_key("billing-usage", carrier, mission_id))

    async def escalate_dispute(self, carrier: str, mission_id: str) -> bool:
        """List a mission whose disputed proof needs an operator; True the first time."""
        return bool(await self.redis.zadd(tenant_key("billing-disputed", carrier), {mission_id: _now_ms()}, nx=True))

    async def disputed_missions(self, carrier: str) -> list[str]:
        """Ids of the carrier's delivered missions escalated for a disputed proof, oldest first."""
        return [m.decode() for m in await self.redis.zrange(tenant_key("billing-disputed", carrier), 0, 999)]

    async def billing_attempts(self, carrier: str, mission_id: str) -> int:
        """Count one more billing attempt for the mission; returns the count (kept a day)."""
        key = tenant_key("billing-attempts", carrier, mission_id)
        count = await self.redis.incr(key)
        await self.redis.expire(key, 86400)
        return int(count)


def _index_check_in(pipe: Pipeline, carrier: str, mission_id: str, mission: mission_pb2.Mission) -> None:
    """Keep the carrier's due check-ins in step with the mission (same slot, same transaction): listed, scored by
    its due time, while a required check-in is pending and not yet escalated."""
    requirement = mission.check_in_requirement
    due = tenant_key("check-ins-due", carrier)
    if requirement.required and requirement.HasField("next_due_time") and not requirement.HasField("escalate_time"):
        pipe.zadd(due, {mission_id: requirement.next_due_time.ToMilliseconds()})
    else:
        pipe.zrem(due, mission_id)
