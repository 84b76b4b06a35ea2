"""The lane facts every service reads: markets, planning numbers, known routes, night hours, the file format."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.runtime import ConfigError, great_circle_miles
from services.runtime.lanes import DEFAULT_LANES_FILE, LANES_FILE_ENV, LaneFacts, load_lane_facts

FACTS = load_lane_facts({})
HOUSTON, ATLANTA, DALLAS, MIAMI = (29.7604, -95.3698), (33.749, -84.388), (32.7767, -96.797), (25.7617, -80.1918)


def test_markets_resolve_within_their_service_radius() -> None:
    assert FACTS.market_for(*HOUSTON).code == "US-TX-HOU"
    assert FACTS.market_for(*ATLANTA).code == "US-GA-ATL"
    assert FACTS.market_for(*MIAMI).code == "US-FL-MIA"
    kansas = (38.5, -98.0)
    assert FACTS.market_for(*kansas) is None  # outside every service area
    assert FACTS.nearest_market(*kansas).code == "US-OK-OKC"  # a lane is still labelled
    assert FACTS.timezone_at(*HOUSTON) == "America/Chicago"


def test_the_seed_lane_is_planned_on_its_known_route() -> None:
    plan = FACTS.plan([HOUSTON, ATLANTA])
    assert plan.route_name.startswith("Houston, TX to Atlanta, GA")
    assert plan.miles == 789.0  # the route's road mileage, the stops being its ends
    assert plan.points[0] == HOUSTON and plan.points[-1] == ATLANTA and len(plan.points) == 14
    # A route has a direction: Atlanta -> Houston is not the mapped route and gets the circuity estimate.
    back = FACTS.plan([ATLANTA, HOUSTON])
    assert back.points == () and back.route_name == ""
    assert back.miles == round(great_circle_miles(*ATLANTA, *HOUSTON) * FACTS.circuity_factor, 1)


def test_stops_near_a_route_end_add_their_road_miles() -> None:
    katy = (29.7858, -95.8245)  # ~27 mi west of the route's start: too far to match
    assert FACTS.plan([katy, ATLANTA]).route_name == ""
    pasadena = (29.6911, -95.2091)  # ~11 mi from the route's start
    plan = FACTS.plan([pasadena, ATLANTA])
    assert plan.route_name and plan.miles == pytest.approx(
        789 + great_circle_miles(*pasadena, *HOUSTON) * FACTS.circuity_factor, abs=0.05)


def test_a_move_with_stops_between_keeps_the_route_but_is_measured_through_its_stops() -> None:
    baton_rouge = (30.4515, -91.1871)
    plan = FACTS.plan([HOUSTON, baton_rouge, ATLANTA])
    assert plan.route_name and plan.points[0] == HOUSTON and plan.points[-1] == ATLANTA
    through = great_circle_miles(*HOUSTON, *baton_rouge) + great_circle_miles(*baton_rouge, *ATLANTA)
    assert plan.miles == round(through * FACTS.circuity_factor, 1)


def test_transit_and_night_hours() -> None:
    assert FACTS.transit(550) == timedelta(hours=10)
    # 18:00 UTC = 12:00 Chicago in January; 14 h runs to 02:00: night 22:00-02:00 = 240 minutes.
    start = datetime(2026, 1, 15, 18, tzinfo=UTC)
    assert FACTS.night_minutes(start, timedelta(hours=14), "America/Chicago") == 240
    assert FACTS.night_minutes(start, timedelta(hours=8), "America/Chicago") == 0
    assert FACTS.touches_night(start + timedelta(hours=10), start + timedelta(hours=10), "America/Chicago")
    assert not FACTS.touches_night(start, start + timedelta(hours=9), "America/Chicago")


@settings(max_examples=200, deadline=None)
@given(lat1=st.floats(24, 37), lon1=st.floats(-118, -80), lat2=st.floats(24, 37), lon2=st.floats(-118, -80))
def test_planned_miles_are_never_shorter_than_the_great_circle(lat1, lon1, lat2, lon2) -> None:
    plan = FACTS.plan([(lat1, lon1), (lat2, lon2)])
    assert plan.miles >= round(great_circle_miles(lat1, lon1, lat2, lon2), 1) - 0.1


@settings(max_examples=200, deadline=None)
@given(start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)),
       minutes=st.integers(0, 5 * 24 * 60), zone=st.sampled_from([m.timezone for m in FACTS.markets]))
def test_night_minutes_are_within_the_trip(start, minutes, zone) -> None:
    night = FACTS.night_minutes(start, timedelta(minutes=minutes), zone)
    assert 0 <= night <= minutes
    # Every day has 7 night hours (22:00-05:00): a trip of whole days has 7 h of night per day, give or take
    # a daylight-saving hour per change.
    if minutes % (24 * 60) == 0:
        assert abs(night - minutes // (24 * 60) * 7 * 60) <= 60 * max(1, minutes // (24 * 60 * 90))


@settings(max_examples=300, deadline=None)
@given(start=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)),
       minutes=st.integers(0, 4 * 24 * 60),
       zone=st.sampled_from(["America/Chicago", "America/New_York", "America/Phoenix", "UTC"]),
       hours=st.tuples(st.integers(0, 23), st.integers(0, 23)))
def test_night_minutes_match_a_minute_by_minute_count(start: datetime, minutes: int, zone: str,
                                                      hours: tuple[int, int]) -> None:
    """Also on the nights the clocks change (the case a wall-clock subtraction got wrong)."""
    night_start, night_end = hours
    facts = dataclasses.replace(FACTS, night_start_hour=night_start, night_end_hour=night_end)
    start = start.replace(second=0, microsecond=0)
    tz = ZoneInfo(zone)

    def at_night(t: datetime) -> bool:
        hour = t.astimezone(tz).hour
        return (night_start <= hour or hour < night_end) if night_start > night_end else night_start <= hour < night_end

    expected = sum(at_night(start + timedelta(minutes=i)) for i in range(minutes))
    assert facts.night_minutes(start, timedelta(minutes=minutes), zone) == expected


def test_night_minutes_on_the_spring_forward_night() -> None:
    facts = dataclasses.replace(FACTS, night_start_hour=0, night_end_hour=3)
    # 2027-03-14 in New York: 02:00 does not exist, so the night 00:00-03:00 lasts two hours.
    start = datetime(2027, 3, 14, 4, tzinfo=UTC)  # 23:00 EST on the 13th
    assert facts.night_minutes(start, timedelta(hours=6), "America/New_York") == 120


def _document() -> dict:
    return json.loads(DEFAULT_LANES_FILE.read_text())


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d["markets"].append(dict(d["markets"][0])), "duplicate market"),
    (lambda d: d["markets"][0].update(timezone="Mars/Olympus"), "unknown time zone"),
    (lambda d: d["markets"][0].update(code="houston"), "US-TX-HOU"),
    (lambda d: d["markets"][1].update(lat=123), "out of range"),
    (lambda d: d["planning"].update(circuity_factor=0.9), "circuity_factor"),
    (lambda d: d["planning"].update(planning_speed_mph=0), "planning_speed_mph"),
    (lambda d: d["planning"]["night_hours"].update(start=24), "night_hours"),
    (lambda d: d["routes"][0].update(miles=100), "cannot be the length"),
    (lambda d: d["routes"][0].update(waypoints=d["routes"][0]["waypoints"][:1]), "waypoints"),
    (lambda d: d["routes"][0]["waypoints"][3].update(lat=91), "routes[0].waypoints[3]: coordinates out of range"),
    (lambda d: d["routes"][0]["waypoints"][0].update(lon="-95.3"), "must be numbers"),
    (lambda d: d.update(routes={}), "routes must be a list"),
    (lambda d: d.update(lanes=[]), "unknown keys"),
    (lambda d: d.pop("markets"), "markets"),
])
def test_a_bad_file_is_refused_naming_the_variable_and_the_entry(tmp_path, change, words) -> None:
    document = _document()
    change(document)
    path = tmp_path / "lanes.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError) as caught:
        load_lane_facts({LANES_FILE_ENV: str(path)})
    assert caught.value.field == LANES_FILE_ENV and words in str(caught.value) and str(path) in str(caught.value)


def test_unreadable_or_not_json(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_lane_facts({LANES_FILE_ENV: str(tmp_path / "missing.json")})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        load_lane_facts({LANES_FILE_ENV: str(tmp_path / "bad.json")})


def test_a_file_of_its_own_replaces_the_shipped_one(tmp_path) -> None:
    document = {"markets": [{"code": "US-TX-HOU", "lat": 29.7604, "lon": -95.3698, "timezone": "America/Chicago"}],
                "planning": {"circuity_factor": 1.2}}
    path = tmp_path / "lanes.json"
    path.write_text(json.dumps(document))
    facts = load_lane_facts({LANES_FILE_ENV: str(path)})
    assert facts == LaneFacts.from_dict(document)
    assert [m.code for m in facts.markets] == ["US-TX-HOU"] and facts.routes == () and facts.circuity_factor == 1.2


def test_a_market_code_is_the_one_the_api_publishes(tmp_path) -> None:
    """One pattern (limits.MARKET_CODE) for the file and the API: a code the API takes loads from the file."""
    document = {"markets": [{"code": "MX-CMX-MEX", "lat": 19.4326, "lon": -99.1332, "timezone": "America/Mexico_City"}]}
    path = tmp_path / "lanes.json"
    path.write_text(json.dumps(document))
    assert [m.code for m in load_lane_facts({LANES_FILE_ENV: str(path)}).markets] == ["MX-CMX-MEX"]


def test_the_shipped_planning_numbers_are_the_code_defaults() -> None:
    """The file states them for operators to read; a file that leaves them out gets the same numbers."""
    document = _document()
    bare = LaneFacts.from_dict({"markets": document["markets"], "routes": document["routes"],
                                "roads": document["roads"]})
    assert bare == FACTS
