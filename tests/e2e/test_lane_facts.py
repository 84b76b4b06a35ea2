"""One set of lane facts: the tender's offer, the quote and the mission's plan carry the same miles.

The seed lane (Houston -> Atlanta) through the real rules of both services, in process: tender assesses the
seed tender and builds the mission it will ask for on acceptance; mission plans that mission for dispatch.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.mission import domain as mission_domain
from services.runtime.lanes import load_lane_facts
from services.tender import domain as tender_domain
from services.tender.eligibility import load_policy
from tests.tender.helpers import seed_tender

NOW = datetime(2026, 1, 31, 12, tzinfo=UTC)
POLICY = load_policy({})


def _accepted(tender):
    offered = tender_domain.assess(tender, POLICY, NOW)
    tender.accepted_pickup_window.CopyFrom(tender.pickup_window)
    return offered, tender_domain.mission_for(tender)


def test_the_seed_lanes_offer_and_mission_plan_the_same_miles() -> None:
    offered, mission = _accepted(seed_tender(NOW))
    plan = mission_domain.plan_dispatch(mission, NOW, POLICY.facts)
    assert offered.route_miles == plan.route_miles
    # The seed route's 789 road miles, plus the mile from the seed's pickup address to the route's start.
    assert 789 < plan.route_miles < 791
    assert (plan.lane.origin_region, plan.lane.destination_region) == ("US-TX-HOU", "US-GA-ATL")
    assert offered.lane == plan.lane
    assert plan.route_points  # the mission follows the known route the miles were measured on


@settings(max_examples=100, deadline=None)
@given(lat=st.floats(29.0, 34.0), lon=st.floats(-97.5, -84.0))
def test_any_destination_is_planned_alike_by_both_services(lat: float, lon: float) -> None:
    offered, mission = _accepted(seed_tender(NOW, destination=(lat, lon)))
    plan = mission_domain.plan_dispatch(mission, NOW, POLICY.facts)
    assert offered.route_miles == pytest.approx(plan.route_miles, abs=1e-9)


def test_transit_and_deadhead_share_the_planning_speed() -> None:
    facts = load_lane_facts({})
    offered = tender_domain.assess(seed_tender(NOW), POLICY, NOW)
    assert offered.transit == facts.transit(offered.route_miles)
    assert offered.transit == timedelta(minutes=round(offered.route_miles / 55 * 60))  # the shipped 55 mph
    # Mission's capacity: a truck at the Dallas terminal reaches a Houston pickup after its deadhead (the same
    # road-miles estimate and the same speed), not before.
    dallas, houston = facts.market("US-TX-DAL"), (29.7499, -95.3584)
    caps = mission_domain.Capabilities(frozenset({1}), False, 45_000, True)
    truck = mission_domain.VehicleView("DAL-1", caps, mission_domain.Availability.AVAILABLE, "US-TX-DAL",
                                       (dallas.lat, dallas.lon))
    windows, eligible = mission_domain.capacity_windows(
        [truck], mission_domain.Load(1, 1_000, False, False), houston, NOW, NOW + timedelta(days=1), NOW, facts)
    deadhead = timedelta(hours=facts.road_miles((dallas.lat, dallas.lon), houston) / 55)
    assert eligible == 1 and windows[0].start == (NOW + deadhead).replace(microsecond=0)
