"""The sandbox: its synthetic tenders and lanes (plain rules), and every scenario end to end on a mesh of its own:
simulated trucks as separate processes, tenders over REST, each scenario's outcome read back from the mesh."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from haulmesh.tender.v1 import tender_pb2
from haulmesh.type.v1 import equipment_pb2, location_pb2, time_window_pb2
from services.runtime import Mesh
from services.runtime.lanes import load_lane_facts
from services.runtime.sandbox import (
    SCENARIOS,
    Sandbox,
    SandboxConfig,
    reachable_lanes,
    sandbox_lanes,
    synthetic_tender,
)
from services.tender.domain import assess
from services.tender.eligibility import DEFAULT_POLICY_FILE, load_policy

from ..conftest import Pki, running_mesh, wait_for

FAST_LIVENESS = {"HAULMESH_TELEMETRY_HEARTBEAT_INTERVAL_SECONDS": "0.5",
                 "HAULMESH_TELEMETRY_LIVENESS_TIMEOUT_SECONDS": "1.5"}


HOU, DAL, ATL, SAT, ELP, PHX = "US-TX-HOU", "US-TX-DAL", "US-GA-ATL", "US-TX-SAT", "US-TX-ELP", "US-AZ-PHX"


def test_the_sandbox_tenders_every_lane_of_the_policy_between_known_markets() -> None:
    facts = load_lane_facts()
    policy = {"lanes": [{"origin": HOU, "destination": ATL}, {"origin": ATL, "destination": HOU},
                        {"origin": HOU, "destination": SAT},  # no known route: driven straight between the stops
                        {"origin": "US-XX-NOWHERE", "destination": ATL},  # a market the facts do not know: left out
                        {"origin": ELP, "destination": PHX}]}
    lanes = sandbox_lanes(policy, facts)
    assert [(lane.origin, lane.destination) for lane in lanes] == [(HOU, ATL), (ATL, HOU), (HOU, SAT), (ELP, PHX)]
    houston, phoenix = facts.market(HOU), facts.market(PHX)
    assert lanes[0].origin_point == (houston.lat, houston.lon)  # a market's terminal where its urban core is approved
    # Phoenix's urban core is not approved: the delivery lies outside it, still in the Phoenix market
    delivery = lanes[3].destination_point
    assert phoenix.urban_core_radius_miles < phoenix.miles_to(*delivery) < phoenix.service_radius_miles
    assert facts.market_for(*delivery) == phoenix


def _tender(body: dict[str, Any]) -> tender_pb2.Tender:
    start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in body["pickupWindow"].split("/"))
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(start)
    window.end_time.FromDatetime(end)
    return tender_pb2.Tender(
        origin=location_pb2.Location(lat=body["origin"]["lat"], lon=body["origin"]["lon"]),
        destination=location_pb2.Location(lat=body["destination"]["lat"], lon=body["destination"]["lon"]),
        pickup_window=window, equipment=equipment_pb2.EQUIPMENT_DRY_VAN_53FT, weight_lb=body["weightLb"])


def test_every_lane_of_the_shipped_policy_gets_tenders_the_policy_admits() -> None:
    # By day (08:00 in Texas): the lanes without night operation admit it too. The tender service's own assessment.
    policy, now = load_policy({}), datetime(2026, 12, 4, 14, 0, tzinfo=UTC)
    lanes = sandbox_lanes(json.loads(DEFAULT_POLICY_FILE.read_text()), policy.facts)
    assert len(lanes) == len(policy.lanes) == 7
    for lane in lanes:
        assessment = assess(_tender(synthetic_tender(random.Random(1), lane, now)), policy, now)
        assert assessment.violations == [], (lane, assessment.violations)
        assert (assessment.lane.origin_region, assessment.lane.destination_region) == (lane.origin, lane.destination)


def test_the_tms_tenders_lanes_whose_origin_a_truck_reaches_in_the_pickup_window() -> None:
    facts = load_lane_facts()
    lanes = sandbox_lanes({"lanes": [{"origin": o, "destination": d} for o, d in (
        (HOU, ATL), (ATL, HOU), (DAL, HOU), (DAL, ELP), (ELP, PHX))]}, facts)
    houston, atlanta = ((m.lat, m.lon) for m in (facts.market(HOU), facts.market(ATL)))

    def pairs(trucks_at):
        return [(lane.origin, lane.destination) for lane in reachable_lanes(lanes, trucks_at, facts)]

    # from Houston: Dallas is ~5 h of deadhead, Atlanta and El Paso more than the 10 h pickup window
    assert pairs([houston]) == [(HOU, ATL), (DAL, HOU), (DAL, ELP)]
    assert pairs([atlanta]) == [(ATL, HOU)]  # a truck that delivered in Atlanta takes the load home
    assert pairs([houston, atlanta]) == [(HOU, ATL), (ATL, HOU), (DAL, HOU), (DAL, ELP)]
    assert pairs([]) == []


def test_a_synthetic_tender_is_a_valid_load_on_its_lane() -> None:
    lane = sandbox_lanes({"lanes": [{"origin": "US-TX-HOU", "destination": "US-GA-ATL"}]}, load_lane_facts())[0]
    now = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    first, again = (synthetic_tender(random.Random(7), lane, now) for _ in range(2))
    assert first["origin"]["lat"] == lane.origin_point[0] and first["destination"]["lon"] == lane.destination_point[1]
    assert 18_000 <= first["weightLb"] < 44_000 and first["equipment"] == "53FT_DRYVAN"
    start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in first["pickupWindow"].split("/"))
    assert now < start <= end and (end - start).total_seconds() == 10 * 3600
    assert first["weightLb"] == again["weightLb"] and first["tenderId"] != again["tenderId"]  # seeded, unique ids


@pytest.mark.parametrize("config", [dict(scenarios=("bogus",)), dict(scenarios=()), dict(trucks=0),
                                    dict(tenders_per_minute=0), dict(speedup=0.5),
                                    dict(closure_reopen_real_seconds=10, stop_hold_real_seconds=10)])
def test_a_bad_sandbox_setting_is_refused_with_its_reason(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"scenario|trucks|tenders|speedup|closure reopen"):
        SandboxConfig(**config)


def test_a_lane_off_the_policy_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="US-TX-SAT > US-GA-ATL"):
        Sandbox(None, SandboxConfig(lanes=((HOU, DAL), (SAT, ATL))))  # type: ignore[arg-type]  # (no mesh needed)


def _exceptions(mission: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in mission.get("exceptions", []) if e.get("kind") == f"KIND_{kind}"]


#: The end-to-end run: one truck per entry, its scenario and the lane of its first load. The TMS tenders these lanes
#: in this order and dispatch gives the k-th load to the k-th truck (all wait at Houston; a tie goes to the lowest
#: vehicle id; the loads from Dallas come early, before a truck that delivered there could be nearer). Road closure
#: twice: where the mapped roads lead around it (Houston → Atlanta: a reroute) and where they do not (Houston →
#: Dallas: a stop, the road reopened by the command centre).
E2E = (("road-closure", HOU, ATL), ("sensor-fault", DAL, HOU), ("takeover", DAL, HOU), ("clean", HOU, DAL),
       ("connectivity-loss", HOU, DAL), ("pre-trip-failure", HOU, DAL), ("road-closure", HOU, DAL))


def test_the_end_to_end_run_covers_every_scenario() -> None:
    assert {scenario for scenario, _, _ in E2E} == set(SCENARIOS)


async def test_every_scenario_runs_end_to_end_against_the_mesh(mesh_pki: Pki, tmp_path) -> None:
    config = SandboxConfig(carrier=f"sbx-{uuid.uuid4().hex[:6]}", trucks=len(E2E),
                           scenarios=tuple(scenario for scenario, _, _ in E2E),
                           lanes=tuple((origin, destination) for _, origin, destination in E2E),
                           tenders_per_minute=30, speedup=1200, frame_every_sim_seconds=10,
                           scenario_at_sim_minutes=60, outage_real_seconds=4, pickup_dwell_real_seconds=2,
                           check_in_delay_seconds=0.5, takeover_hold_seconds=2,
                           stop_hold_real_seconds=10, closure_reopen_real_seconds=1, seed=1)
    lines: list[str] = []
    async with running_mesh(mesh_pki, tmp_path / "mesh", env=FAST_LIVENESS) as mesh:
        sandbox = Sandbox(mesh, config, say=lines.append)
        await sandbox.start()
        try:
            by_truck = await _first_missions(sandbox, mesh)
            trucks = sandbox.trucks

            async def mission_of(k: int) -> dict[str, Any]:
                return (await sandbox._http.get(f"/api/v1/{by_truck[trucks[k].vehicle_id]}")).json()

            async def settled(k: int, predicate) -> dict[str, Any]:
                async def check():
                    mission = await mission_of(k)
                    return mission if predicate(mission) else None
                return await wait_for(check, timeout_seconds=120, interval_seconds=0.5)

            def delivered(mission: dict[str, Any]) -> bool:
                return mission["state"] in ("STATE_DELIVERED", "STATE_COMPLETED")

            # Each truck's first load on the lane of its entry (deterministic: the lanes in order, the trucks by id).
            for k, (scenario, origin, destination) in enumerate(E2E):
                lane = (await mission_of(k))["lane"]
                assert (trucks[k].scenario, lane["originRegion"], lane["destinationRegion"]) == \
                    (scenario, origin, destination), (k, lane)
            # A clean run: delivered, its proof submitted by the truck from its own spool.
            await settled(3, delivered)
            # Sensor fault → minimal-risk stop, which reached the truck (its report lists the stop it obeyed).
            # (a degraded sensor first: monitored; then failed: stop)
            await settled(1, lambda m: any(e["contingency"] == "CONTINGENCY_MINIMAL_RISK_STOP"
                                           for e in _exceptions(m, "SENSOR_FAULT")))
            await wait_for(lambda: trucks[1].reports, timeout_seconds=60)
            assert "stop" in trucks[1].reports[0]["commands"], trucks[1].reports
            # Road closure on the mapped roads → a detour the truck drove, then delivered.
            closure = _exceptions(await settled(0, delivered), "ROAD_CLOSURE")
            assert closure and closure[0]["contingency"] == "CONTINGENCY_REROUTE" and closure[0]["rerouteWaypoints"]
            assert trucks[0].reports[0]["rerouted"] is True
            # Road closure off the mapped roads → no detour: the truck stopped; the command centre reopened the road
            # (resume, resolved) and the truck drove on to its delivery, on the route it had.
            closure = _exceptions(await settled(6, delivered), "ROAD_CLOSURE")
            assert closure and closure[0]["contingency"] == "CONTINGENCY_MINIMAL_RISK_STOP", closure
            assert closure[0].get("resolveTime") and not closure[0].get("rerouteWaypoints"), closure
            await wait_for(lambda: trucks[6].reports, timeout_seconds=60)
            report = trucks[6].reports[0]
            assert report["arrived"] and not report["rerouted"] and {"stop", "resume"} <= set(report["commands"])
            # Connectivity loss → raised, resolved on reconnection, the spool replayed: nothing lost, then delivered.
            loss = _exceptions(await settled(4, delivered), "CONNECTIVITY_LOSS")
            assert loss and all(e.get("resolveTime") for e in loss), loss
            report = trucks[4].reports[0]
            assert report["dropped"] == 0 and report["drained"] is True and report["sessions"] >= 2, report
            # Pre-trip failure → the mission holds at the shipper, nothing driven.
            held = await settled(5, lambda m: _exceptions(m, "PRE_TRIP_FAILURE"))
            assert _exceptions(held, "PRE_TRIP_FAILURE")[0]["contingency"] == "CONTINGENCY_HOLD"
            # Takeover → a remote human had control (the truck's acknowledgement), then handed it back.
            taken = await settled(2, lambda m: any(
                e.get("contingency") == "CONTINGENCY_HUMAN_TAKEOVER" and e.get("takeover", {}).get("handBackTime")
                for e in m.get("exceptions", [])))
            takeover = next(e for e in taken["exceptions"] if e.get("contingency") == "CONTINGENCY_HUMAN_TAKEOVER")
            assert takeover["takeover"]["controlTime"] <= takeover["takeover"]["handBackTime"]
        finally:
            await sandbox.stop()
    assert any("accepted" in line for line in lines), lines
    assert any("reopened, the truck resumed" in line for line in lines), lines


async def _first_missions(sandbox: Sandbox, mesh: Mesh) -> dict[str, str]:
    """Each sandbox truck's first mission (the TMS tenders faster than the trucks take them)."""
    wanted = {f"vehicles/{truck.vehicle_id}": truck.vehicle_id for truck in sandbox.trucks}

    async def all_dispatched():
        found: dict[str, str] = {}
        for mission in reversed(await sandbox._missions()):  # oldest first
            vehicle = wanted.get(mission.get("vehicle", ""))
            if vehicle is not None:
                found.setdefault(vehicle, mission["name"])
        return found if len(found) == len(wanted) else None

    return await wait_for(all_dispatched, timeout_seconds=60, interval_seconds=0.5)
