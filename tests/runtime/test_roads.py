"""The lane facts' road network and detours around a closed segment (services/runtime/roads.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.runtime import ConfigError
from services.runtime.lanes import LaneFacts, load_lane_facts

LANES = load_lane_facts({})
ATLANTA = (33.749, -84.388)
MARKET = [{"code": "US-TX-HOU", "lat": 29.7604, "lon": -95.3698, "timezone": "America/Chicago"}]


def _facts(roads: dict) -> LaneFacts:
    return LaneFacts.from_dict({"markets": MARKET, "roads": roads})


def test_the_shipped_network_covers_the_seed_route_with_a_way_around_each_of_its_segments() -> None:
    route = LANES.routes[0]
    names = route.waypoint_names
    assert all(name in LANES.roads.places for name in names)
    for a, b in itertools.pairwise(names):
        road = LANES.roads.graph.edges[a, b]["road"]
        midpoint = tuple((x + y) / 2 for x, y in zip(LANES.roads.places[a], LANES.roads.places[b], strict=True))
        detour = LANES.detour(midpoint, ATLANTA)
        assert detour is not None, f"no way around {road} {a} - {b}"
        assert detour.avoided == f"{road} {a} - {b}" and set(detour.avoided_between) == {a, b}
        assert detour.waypoints[-1] == ATLANTA and detour.miles > 0


def test_no_detour_off_the_mapped_roads_or_without_a_way_round() -> None:
    assert LANES.detour((27.0, -90.0), ATLANTA) is None  # the Gulf of Mexico
    dead_end = _facts({"places": [{"name": "A", "lat": 30.0, "lon": -95.0}, {"name": "B", "lat": 30.5, "lon": -94.5}],
                       "segments": [{"from": "A", "to": "B", "road": "I-1", "miles": 50}]})
    assert dead_end.detour((30.25, -94.75), (30.5, -94.5)) is None
    assert LaneFacts.from_dict({"markets": MARKET}).detour((30.25, -94.75), (30.5, -94.5)) is None


@pytest.mark.parametrize(("roads", "message"), [
    ({"places": [{"name": "A", "lat": 30, "lon": -95}, {"name": "A", "lat": 31, "lon": -95}]}, "duplicate place"),
    ({"places": [{"name": "A", "lat": 30, "lon": -95}], "segments": [{"from": "A", "to": "Z", "road": "I-1",
                                                                       "miles": 5}]}, "two different places"),
    ({"places": [{"name": "A", "lat": 30, "lon": -95}, {"name": "B", "lat": 31, "lon": -95}],
      "segments": [{"from": "A", "to": "B", "road": "I-1", "miles": 20}]}, "cannot be the road miles"),
    ({"places": [{"name": "A", "lat": 30, "lon": -95}, {"name": "B", "lat": 31, "lon": -95}],
      "segments": [{"from": "A", "to": "B", "miles": 80}]}, "road's name"),
    ({"places": [{"name": "A", "lat": 95, "lon": -95}]}, "out of range"),
    ({"places": [], "edges": []}, "places and segments"),
])
def test_a_bad_road_network_stops_the_service_naming_the_entry(roads: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _facts(roads)


segments = list(LANES.roads.graph.edges)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(segments), st.floats(0.05, 0.95), st.sampled_from(sorted(LANES.roads.places)))
def test_a_detour_never_takes_the_closed_segment_and_ends_at_the_destination(segment: tuple[str, str], along: float,
                                                                           destination_name: str) -> None:
    a, b = segment
    (alat, alon), (blat, blon) = LANES.roads.places[a], LANES.roads.places[b]
    position = (alat + (blat - alat) * along, alon + (blon - alon) * along)
    destination = LANES.roads.places[destination_name]
    detour = LANES.detour(position, destination)
    if detour is None:
        return  # nothing around that segment to there (a dead end of the mapped network)
    assert detour.waypoints[-1] == destination
    by_point = {point: name for name, point in LANES.roads.places.items()}
    path = [by_point[p] for p in detour.waypoints if p in by_point]
    assert path and all(LANES.roads.graph.has_edge(u, v) for u, v in itertools.pairwise(path))
    assert frozenset(detour.avoided_between) not in {frozenset(pair) for pair in itertools.pairwise(path)}
    assert LANES.roads.graph.has_edge(*detour.avoided_between)
