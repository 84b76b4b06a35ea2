"""The sandbox: its synthetic tenders and lanes (plain rules), and every scenario end to end on a mesh of its own:
simulated trucks as separate processes, tenders over REST, each scenario's outcome read back from the mesh."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from services.runtime import Mesh
from services.runtime.lanes import load_lane_facts
from services.runtime.sandbox import SCENARIOS, Sandbox, SandboxConfig, sandbox_lanes, synthetic_tender

from ..conftest import Pki, running_mesh, wait_for

FAST_LIVENESS = {"HAULMESH_TELEMETRY_HEARTBEAT_INTERVAL_SECONDS": "0.5",
                 "HAULMESH_TELEMETRY_LIVENESS_TIMEOUT_SECONDS": "1.5"}


def test_the_sandbox_tenders_only_lanes_the_simulator_can_drive() -> None:
    policy = {"lanes": [{"origin": "US-TX-HOU", "destination": "US-GA-ATL"},
                        {"origin": "US-GA-ATL", "destination": "US-TX-HOU"},
                        {"origin": "US-TX-HOU", "destination": "US-TX-SAT"},  # no known route: left out
                        {"origin": "US-XX-NOWHERE", "destination": "US-GA-ATL"}]}
    lanes = sandbox_lanes(policy, load_lane_facts())
    assert [(lane.origin, lane.destination) for lane in lanes] == [("US-TX-HOU", "US-GA-ATL"),
                                                                   ("US-GA-ATL", "US-TX-HOU")]


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
                                    dict(tenders_per_minute=0), dict(speedup=0.5)])
def test_a_bad_sandbox_setting_is_refused_with_its_reason(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"scenario|trucks|tenders|speedup"):
        SandboxConfig(**config)


def _exceptions(mission: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in mission.get("exceptions", []) if e.get("kind") == f"KIND_{kind}"]


async def test_every_scenario_runs_end_to_end_against_the_mesh(mesh_pki: Pki, tmp_path) -> None:
    scenarios = tuple(SCENARIOS)
    config = SandboxConfig(carrier=f"sbx-{uuid.uuid4().hex[:6]}", trucks=len(scenarios), scenarios=scenarios,
                           tenders_per_minute=30, speedup=1200, frame_every_sim_seconds=10,
                           scenario_at_sim_minutes=60, outage_real_seconds=4, pickup_dwell_real_seconds=2,
                           check_in_delay_seconds=0.5,
                           takeover_hold_seconds=2, stop_hold_real_seconds=3, seed=1)
    lines: list[str] = []
    async with running_mesh(mesh_pki, tmp_path / "mesh", env=FAST_LIVENESS) as mesh:
        sandbox = Sandbox(mesh, config, say=lines.append)
        await sandbox.start()
        try:
            by_truck = await _first_missions(sandbox, mesh)
            outcome = {truck.scenario: (truck, by_truck[truck.vehicle_id]) for truck in sandbox.trucks}

            async def mission_of(scenario: str) -> dict[str, Any]:
                answer = await sandbox._http.get(f"/api/v1/{outcome[scenario][1]}")
                return answer.json()

            async def settled(scenario: str, predicate) -> dict[str, Any]:
                async def check():
                    mission = await mission_of(scenario)
                    return mission if predicate(mission) else None
                return await wait_for(check, timeout_seconds=120, interval_seconds=0.5)

            # A clean run: delivered, its proof submitted by the truck from its own spool.
            await settled("clean", lambda m: m["state"] in ("STATE_DELIVERED", "STATE_COMPLETED"))
            # Sensor fault → minimal-risk stop, which reached the truck (its report lists the stop it obeyed).
            # (a degraded sensor first: monitored; then failed: stop)
            await settled("sensor-fault", lambda m: any(e["contingency"] == "CONTINGENCY_MINIMAL_RISK_STOP"
                                                        for e in _exceptions(m, "SENSOR_FAULT")))
            truck = outcome["sensor-fault"][0]
            await wait_for(lambda: truck.reports, timeout_seconds=60)
            assert "stop" in truck.reports[0]["commands"], truck.reports
            # Road closure → a detour the truck drove, then delivered.
            closed = await settled("road-closure", lambda m: m["state"] in ("STATE_DELIVERED", "STATE_COMPLETED"))
            closure = _exceptions(closed, "ROAD_CLOSURE")
            assert closure and closure[0]["contingency"] == "CONTINGENCY_REROUTE" and closure[0]["rerouteWaypoints"]
            assert outcome["road-closure"][0].reports[0]["rerouted"] is True
            # Connectivity loss → raised, resolved on reconnection, the spool replayed: nothing lost, then delivered.
            lost = await settled("connectivity-loss", lambda m: m["state"] in ("STATE_DELIVERED", "STATE_COMPLETED"))
            loss = _exceptions(lost, "CONNECTIVITY_LOSS")
            assert loss and all(e.get("resolveTime") for e in loss), loss
            report = outcome["connectivity-loss"][0].reports[0]
            assert report["dropped"] == 0 and report["drained"] is True and report["sessions"] >= 2, report
            # Pre-trip failure → the mission holds at the shipper, nothing driven.
            held = await settled("pre-trip-failure", lambda m: _exceptions(m, "PRE_TRIP_FAILURE"))
            assert _exceptions(held, "PRE_TRIP_FAILURE")[0]["contingency"] == "CONTINGENCY_HOLD"
            # Takeover → a remote human had control (the truck's acknowledgement), then handed it back.
            taken = await settled("takeover", lambda m: any(
                e.get("contingency") == "CONTINGENCY_HUMAN_TAKEOVER" and e.get("takeover", {}).get("handBackTime")
                for e in m.get("exceptions", [])))
            takeover = next(e for e in taken["exceptions"] if e.get("contingency") == "CONTINGENCY_HUMAN_TAKEOVER")
            assert takeover["takeover"]["controlTime"] <= takeover["takeover"]["handBackTime"]
        finally:
            await sandbox.stop()
    assert any("accepted" in line for line in lines), lines


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
