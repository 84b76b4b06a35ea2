"""Metering from signed telemetry (services/runtime/metering.py): miles, hours, gaps, the log digest."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import great_circle_miles, to_timestamp
from services.runtime.lanes import load_lane_facts
from services.runtime.metering import (
    ODOMETER,
    POSITIONS,
    Fix,
    fixes_from_payloads,
    freshness_percentiles,
    measure,
    missing_sequences,
    route_miles_between,
    telemetry_log_sha256,
)

T0 = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
FACTS = load_lane_facts({})
ROUTE = FACTS.plan([(29.7604, -95.3698), (33.749, -84.388)]).points  # the seed's Houston → Atlanta road


def _fix(seq: int, seconds: float, lat: float, lon: float, odometer: float | None = None) -> Fix:
    return Fix(seq, T0 + timedelta(seconds=seconds), lat, lon, odometer)


def _drive(n: int, *, step_seconds: float = 15.0, start: int = 1) -> list[Fix]:
    """n fixes along the seed route's first leg, one every ``step_seconds``."""
    (a_lat, a_lon), (b_lat, b_lon) = ROUTE[0], ROUTE[1]
    return [_fix(start + i, i * step_seconds, a_lat + (b_lat - a_lat) * i / max(1, n - 1),
                 a_lon + (b_lon - a_lon) * i / max(1, n - 1)) for i in range(n)]


# --- examples -------------------------------------------------------------------------------------------

def test_miles_are_the_great_circle_sum_and_hours_device_time() -> None:
    fixes = _drive(41)
    m = measure(fixes, gap_seconds=60)
    expected = sum(great_circle_miles(a.lat, a.lon, b.lat, b.lon) for a, b in itertools.pairwise(fixes))
    assert m.miles == round(expected, 1) and m.source == POSITIONS
    assert m.hours == round(40 * 15 / 3600, 3)
    assert (m.first_sequence, m.last_sequence, m.frames, m.gaps) == (1, 41, 41, ())


def test_a_gap_is_bridged_along_the_planned_route_and_listed() -> None:
    # Fixes at the ends of the route's first three waypoints, the middle one missing for 100 minutes.
    a, b = _fix(10, 0, *ROUTE[0]), _fix(11, 6000, *ROUTE[2])
    m = measure([a, b], gap_seconds=60, planned_route=ROUTE)
    along = great_circle_miles(*ROUTE[0], *ROUTE[1]) + great_circle_miles(*ROUTE[1], *ROUTE[2])
    assert m.miles == round(along, 1) > round(great_circle_miles(*ROUTE[0], *ROUTE[2]), 1)
    (gap,) = m.gaps
    assert (gap.after_sequence, gap.before_sequence, gap.seconds) == (10, 11, 6000.0)
    assert gap.bridged_miles == round(along, 1) == m.bridged_miles


def test_without_a_route_a_gap_is_the_straight_line_times_circuity() -> None:
    a, b = _fix(1, 0, *ROUTE[0]), _fix(2, 3600, *ROUTE[2])
    m = measure([a, b], gap_seconds=60, circuity_factor=FACTS.circuity_factor)
    assert m.miles == round(great_circle_miles(*ROUTE[0], *ROUTE[2]) * FACTS.circuity_factor, 1)


def test_off_route_a_bridge_is_never_shorter_than_the_straight_line() -> None:
    # Both fixes project onto the same point of the route: along-route distance 0, the road still exists.
    a, b = _fix(1, 0, 29.9, -95.0), _fix(2, 3600, 29.2, -95.0)
    route = [(30.5, -96.0), (30.5, -94.0)]
    m = measure([a, b], gap_seconds=60, planned_route=route)
    assert m.miles == round(great_circle_miles(29.9, -95.0, 29.2, -95.0), 1)


def test_the_odometer_wins_when_every_fix_has_one() -> None:
    fixes = [_fix(1, 0, *ROUTE[0], 1000.0), _fix(2, 15, *ROUTE[1], 1012.5), _fix(3, 9000, *ROUTE[2], 1100.25)]
    m = measure(fixes, gap_seconds=60, planned_route=ROUTE)
    assert (m.source, m.miles) == (ODOMETER, 100.2)
    assert [g.bridged_miles for g in m.gaps] == [87.8] and m.bridged_miles == 0.0  # listed, not added
    # One reading missing, or one going backwards: positions measure the whole run.
    assert measure([*fixes[:2], _fix(3, 9000, *ROUTE[2])], gap_seconds=60).source == POSITIONS
    assert measure([*fixes[:2], _fix(3, 9000, *ROUTE[2], 5.0)], gap_seconds=60).source == POSITIONS


def test_no_fixes_measure_nothing_and_the_threshold_must_be_positive() -> None:
    assert measure([], gap_seconds=60).miles == 0.0
    assert measure([_fix(5, 0, 30.0, -95.0)], gap_seconds=60).frames == 1
    with pytest.raises(ValueError):
        measure([], gap_seconds=0)


def test_route_miles_between_follow_the_polyline() -> None:
    total = sum(great_circle_miles(*a, *b) for a, b in itertools.pairwise(ROUTE))
    assert route_miles_between(ROUTE, ROUTE[0], ROUTE[-1]) == pytest.approx(total)
    assert route_miles_between(ROUTE, ROUTE[-1], ROUTE[0]) == pytest.approx(total)


def _payload(seq: int, *, position: bool = True, odometer: float = 0.0, mission: str = "M1") -> bytes:
    p = frame_pb2.FramePayload(vehicle_id="AU-TRK-1001", sequence=seq, boot_id="b",
                               device_time=to_timestamp(T0 + timedelta(seconds=15 * seq)),
                               kind=frame_pb2.FramePayload.KIND_POSITION, mission_id=mission, odometer_miles=odometer)
    if position:
        p.position.lat, p.position.lon = 30.0 + seq / 100, -95.0
    return p.SerializeToString(deterministic=True)


def test_fixes_from_payloads_keep_positions_in_sequence_once() -> None:
    payloads = [_payload(3), _payload(1, odometer=10.0), _payload(2, position=False), _payload(3)]
    fixes = fixes_from_payloads(payloads)
    assert [f.sequence for f in fixes] == [1, 3]
    assert fixes[0].odometer_miles == 10.0 and fixes[1].odometer_miles is None
    assert fixes[0].device_time == T0 + timedelta(seconds=15)
    with pytest.raises(ValueError, match="sequence 3"):
        fixes_from_payloads([_payload(3), _payload(3, mission="M2")])


def test_the_log_digest_refuses_two_payloads_for_one_sequence() -> None:
    assert telemetry_log_sha256([_payload(1), _payload(2)]) == telemetry_log_sha256([_payload(2), _payload(1)])
    with pytest.raises(ValueError):
        telemetry_log_sha256([_payload(1), _payload(1, mission="M2")])


def test_holes_and_freshness() -> None:
    assert missing_sequences([1, 2, 4, 9], 1, 5) == 2  # 3 and 5
    assert missing_sequences([], 3, 2) == 0
    pairs = [(T0, T0 + timedelta(seconds=s)) for s in [0.2] * 18 + [60.0, 6000.0]]
    assert freshness_percentiles(pairs) == (0.2, 60.0)
    assert freshness_percentiles([]) == (0.0, 0.0)


# --- properties -----------------------------------------------------------------------------------------

@st.composite
def _fixes(draw: st.DrawFn, *, odometer: bool = False) -> list[Fix]:
    n = draw(st.integers(0, 40))
    seqs = sorted(draw(st.sets(st.integers(1, 10_000), min_size=n, max_size=n)))
    fixes, seconds, reading = [], 0.0, 500.0
    for seq in seqs:
        seconds += draw(st.floats(0, 900))
        reading += draw(st.floats(0, 20))
        fixes.append(_fix(seq, seconds, draw(st.floats(25, 36)), draw(st.floats(-100, -80)),
                          round(reading, 3) if odometer else None))
    return fixes


@settings(max_examples=150, deadline=None)
@given(_fixes(), st.randoms(use_true_random=False), st.booleans())
def test_the_order_of_the_input_and_repeats_do_not_matter(fixes: list[Fix], rnd: random.Random, route: bool) -> None:
    kwargs = {"gap_seconds": 300.0, "planned_route": ROUTE if route else ()}
    shuffled = fixes + fixes[: len(fixes) // 2]
    rnd.shuffle(shuffled)
    assert measure(shuffled, **kwargs) == measure(fixes, **kwargs)


@settings(max_examples=150, deadline=None)
@given(st.one_of(_fixes(), _fixes(odometer=True)), st.integers(0, 40), st.booleans())
def test_splitting_at_a_fix_adds_up(fixes: list[Fix], cut: int, route: bool) -> None:
    """Measuring [..k] and [k..] (sharing fix k) gives the whole: miles and hours to their rounding, gaps
    exactly. Billing a mission in parts can never bill more or less than billing it at once."""
    if len(fixes) < 2:
        return
    k = cut % len(fixes)
    kwargs = {"gap_seconds": 300.0, "planned_route": ROUTE if route else ()}
    whole, left, right = measure(fixes, **kwargs), measure(fixes[: k + 1], **kwargs), measure(fixes[k:], **kwargs)
    if whole.source == left.source == right.source:
        assert abs(left.miles + right.miles - whole.miles) <= 0.15 + 1e-9  # three roundings to 0.1
        assert left.gaps + right.gaps == whole.gaps
    assert abs(left.hours + right.hours - whole.hours) <= 0.0015 + 1e-9
    assert left.frames + right.frames == whole.frames + 1


@settings(max_examples=150, deadline=None)
@given(_fixes(), st.floats(1, 3600))
def test_bounds_and_gaps(fixes: list[Fix], gap_seconds: float) -> None:
    m = measure(fixes, gap_seconds=gap_seconds, planned_route=ROUTE)
    chord = sum(great_circle_miles(a.lat, a.lon, b.lat, b.lon) for a, b in itertools.pairwise(fixes))
    # Bridges never shorten the road, so the miles are at least the chord sum (and the straight line).
    assert m.miles >= round(chord, 1) - 0.1
    # Without gaps the miles are exactly the chord sum.
    if not m.gaps:
        assert m.miles == round(chord, 1)
    # A gap is listed exactly where consecutive fixes are further apart than the threshold.
    expected = [(a.sequence, b.sequence) for a, b in itertools.pairwise(fixes)
                if (b.device_time - a.device_time).total_seconds() > gap_seconds]
    assert [(g.after_sequence, g.before_sequence) for g in m.gaps] == expected
    assert m.hours >= 0 and m.frames == len(fixes)
    if fixes:
        assert (m.first_sequence, m.last_sequence) == (fixes[0].sequence, fixes[-1].sequence)


@settings(max_examples=100, deadline=None)
@given(_fixes(odometer=True))
def test_the_odometer_measures_last_minus_first(fixes: list[Fix]) -> None:
    m = measure(fixes, gap_seconds=300.0)
    if len(fixes) >= 2:
        assert m.source == ODOMETER
        assert m.miles == round(fixes[-1].odometer_miles - fixes[0].odometer_miles, 1)
