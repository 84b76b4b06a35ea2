"""The KPI report's rules against figures worked out by hand, and its properties over any facts (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.billing.domain import Lane, Money
from services.billing.reports import domain
from services.billing.reports.domain import Invoiced, MissionFacts, Percentiles, Telemetry, TenderFacts
from services.runtime import FailedPrecondition, InvalidArgument

HOU_ATL = Lane("US-TX-HOU", "US-GA-ATL")
DAL_ATL = Lane("US-TX-DAL", "US-GA-ATL")
T0 = 1_793_491_200_000  # 2026-11-01T00:00:00Z in ms
H, S = 3_600_000, 1_000
START, END = T0, T0 + 30 * 24 * H


def usd(minor: int) -> Money:
    return Money("USD", minor)


# The delivery window of every mission below: [T0 + 20 h, T0 + 30 h).
WINDOW = (T0 + 20 * H, T0 + 30 * H)

MISSIONS = [
    # HOU → ATL
    MissionFacts("m1", HOU_ATL, T0 + 1 * H, ack_ms=T0 + 1 * H + 12 * S, outcome="COMPLETED",
                 exceptions={"exc-1": ("SENSOR_FAULT", "REROUTE")},
                 delivery_window_ms=WINDOW, delivery_arrive_ms=T0 + 25 * H,  # on time
                 invoice=Invoiced(800.0, usd(300_000)), telemetry=Telemetry(3000, 3, 1500)),
    MissionFacts("m2", HOU_ATL, T0 + 2 * H, ack_ms=T0 + 2 * H + 20 * S, outcome="COMPLETED",
                 exceptions={"exc-1": ("CONNECTIVITY_LOSS", "CONTINUE"), "exc-2": ("VEHICLE_FAULT", "HUMAN_TAKEOVER")},
                 delivery_window_ms=WINDOW, delivery_arrive_ms=T0 + 30 * H,  # the window's end is exclusive: late
                 invoice=Invoiced(400.0, usd(140_000)), telemetry=Telemetry(1497, 0, 2500)),
    MissionFacts("m3", HOU_ATL, T0 + 3 * H, ack_ms=T0 + 3 * H + 5 * S, outcome="ABORTED",
                 exceptions={"exc-1": ("ADVERSE_WEATHER", "MINIMAL_RISK_STOP")}, delivery_window_ms=WINDOW),
    MissionFacts("m4", HOU_ATL, T0 + 4 * H, outcome="CANCELLED", delivery_window_ms=WINDOW),  # never acknowledged
    MissionFacts("m5", HOU_ATL, T0 + 5 * H, ack_ms=T0 + 5 * H + 40 * S,  # in progress
                 delivery_window_ms=WINDOW, delivery_arrive_ms=T0 + 19 * H),  # early: not on time
    # DAL → ATL
    MissionFacts("m8", DAL_ATL, T0 + 6 * H, ack_ms=T0 + 6 * H + 8 * S, outcome="COMPLETED",
                 delivery_window_ms=WINDOW, delivery_arrive_ms=T0 + 20 * H,  # the window's start: on time
                 invoice=Invoiced(250.0, usd(70_000))),  # no telemetry provenance
    # Outside the window: dispatched before its start, and at its (exclusive) end.
    MissionFacts("m6", HOU_ATL, T0 - 1 * H, ack_ms=T0 - 1 * H + 1 * S, outcome="COMPLETED",
                 invoice=Invoiced(100.0, usd(99_999))),
    MissionFacts("m7", HOU_ATL, END, ack_ms=END + 1 * S, outcome="ABORTED"),
]

TENDERS = [
    TenderFacts("t1", HOU_ATL, T0 + 600_000, offer_ms=T0 + 600_000 + 150),
    TenderFacts("t2", HOU_ATL, T0 + 700_000, offer_ms=T0 + 700_000 + 300),
    TenderFacts("t3", HOU_ATL, T0 + 800_000, offer_ms=T0 + 800_000 + 90),
    TenderFacts("t4", HOU_ATL, T0 + 900_000),  # never offered: no latency
    TenderFacts("t5", DAL_ATL, T0 + 1_000_000, offer_ms=T0 + 1_000_000 + 1000),
    TenderFacts("t0", HOU_ATL, T0 - 1, offer_ms=T0 + 5000),  # created before the window
]


def test_the_report_equals_the_figures_worked_out_by_hand() -> None:
    report = domain.build_report(MISSIONS, TENDERS, start_ms=START, end_ms=END, baseline=usd(350))
    assert [row.lane for row in report.rows] == [DAL_ATL, HOU_ATL]  # lane order: US-TX-DAL < US-TX-HOU
    dal, hou = report.rows

    # HOU → ATL: m1..m5 (m6 before the window, m7 at its exclusive end).
    assert hou.missions == 5
    assert (hou.missions_completed, hou.missions_aborted, hou.missions_cancelled, hou.missions_in_progress) == \
        (2, 1, 1, 1)                                   # m1 m2 | m3 | m4 | m5
    assert hou.success_rate == pytest.approx(2 / 3)    # 2 completed / (2 completed + 1 aborted)
    assert (hou.takeovers, hou.minimal_risk_stops) == (1, 1)  # m2 exc-2; m3 exc-1
    assert hou.handovers_per_mission == pytest.approx(0.4)    # (1 + 1) / 5
    assert hou.exceptions_by_kind == {"ADVERSE_WEATHER": 1, "CONNECTIVITY_LOSS": 1, "SENSOR_FAULT": 1,
                                      "VEHICLE_FAULT": 1}
    # Ack latencies sorted: 5, 12, 20, 40 s (m4 never acknowledged). Nearest rank, n = 4:
    # p50 rank ceil(0.50 x 4) = 2 → 12 s; p95 rank ceil(3.80) = 4 → 40 s; p99 rank ceil(3.96) = 4 → 40 s.
    assert hou.dispatch_ack_latency_ms == Percentiles(4, 12_000, 40_000, 40_000)
    # Offer latencies sorted: 90, 150, 300 ms (t4 not offered, t0 before the window). n = 3:
    # p50 rank ceil(1.5) = 2 → 150; p95 rank ceil(2.85) = 3 → 300; p99 rank ceil(2.97) = 3 → 300.
    assert hou.tender_to_offer_latency_ms == Percentiles(3, 150, 300, 300)
    # Telemetry of m1 and m2: loss = (3 + 0) missing / (3000 + 1497 stored + 3 missing) = 3 / 4500.
    assert hou.telemetry_missions == 2
    assert hou.packet_loss_ratio == pytest.approx(3 / 4500)
    # Freshness p95 over the missions' p95s 1.5 s and 2.5 s: rank ceil(0.95 x 2) = 2 → 2.5 s.
    assert hou.telemetry_freshness_p95_ms == 2500
    # Arrivals with a window: m1 (on time), m2 (at the exclusive end: late), m5 (early: not on time) → 1 / 3.
    assert hou.arrivals == 3
    assert hou.on_time_arrival_rate == pytest.approx(1 / 3)
    # Cost per mile: (3000.00 + 1400.00) / (800 + 400 mi) = 440000 / 1200 = 366.67 cents → USD 3.67.
    assert (hou.invoiced_missions, hou.measured_miles, hou.invoiced_total) == (2, 1200.0, usd(440_000))
    assert hou.measured_cost_per_mile == usd(367)
    assert hou.cost_per_mile_vs_baseline == usd(17)          # 367 - 350
    assert hou.cost_per_mile_vs_baseline_bps == 476          # (366.667 - 350) / 350 x 10^4 = 476.19
    assert hou.unavailable == ()

    # DAL → ATL: m8 alone.
    assert (dal.missions, dal.missions_completed, dal.success_rate) == (1, 1, 1.0)
    assert (dal.takeovers, dal.minimal_risk_stops, dal.handovers_per_mission) == (0, 0, 0.0)
    assert dal.exceptions_by_kind == {}
    assert dal.dispatch_ack_latency_ms == Percentiles(1, 8000, 8000, 8000)
    assert dal.tender_to_offer_latency_ms == Percentiles(1, 1000, 1000, 1000)
    assert (dal.arrivals, dal.on_time_arrival_rate) == (1, 1.0)  # arrived at the window's (inclusive) start
    assert dal.measured_cost_per_mile == usd(280)                # 70000 / 250
    assert dal.cost_per_mile_vs_baseline == usd(-70)
    assert dal.cost_per_mile_vs_baseline_bps == -2000            # (280 - 350) / 350 x 10^4
    assert dal.telemetry_missions == 0 and dal.packet_loss_ratio is None and dal.telemetry_freshness_p95_ms is None
    assert dict(dal.unavailable).keys() == {"packet_loss_ratio", "telemetry_freshness_p95"}

    # Every lane: m1..m5 and m8.
    total = report.total
    assert total.lane is None
    assert (total.missions, total.missions_completed, total.missions_aborted) == (6, 3, 1)
    assert total.success_rate == pytest.approx(0.75)             # 3 / (3 + 1)
    assert total.handovers_per_mission == pytest.approx(2 / 6)
    # Ack latencies 5, 8, 12, 20, 40 s, n = 5: p50 rank ceil(2.5) = 3 → 12 s; p95 rank ceil(4.75) = 5 → 40 s.
    assert total.dispatch_ack_latency_ms == Percentiles(5, 12_000, 40_000, 40_000)
    # Offer latencies 90, 150, 300, 1000 ms, n = 4: p50 rank 2 → 150; p95 rank ceil(3.8) = 4 → 1000.
    assert total.tender_to_offer_latency_ms == Percentiles(4, 150, 1000, 1000)
    assert (total.arrivals, total.on_time_arrival_rate) == (4, 0.5)  # m1, m8 on time of m1, m2, m5, m8
    # (300000 + 140000 + 70000) / (800 + 400 + 250) = 510000 / 1450 = 351.72 cents → USD 3.52.
    assert (total.measured_miles, total.invoiced_total, total.measured_cost_per_mile) == \
        (1450.0, usd(510_000), usd(352))
    assert total.cost_per_mile_vs_baseline == usd(2)
    assert total.cost_per_mile_vs_baseline_bps == 49             # (351.724 - 350) / 350 x 10^4 = 49.26


def test_a_lane_filter_keeps_that_lane_only() -> None:
    report = domain.build_report(MISSIONS, TENDERS, start_ms=START, end_ms=END, lane=DAL_ATL)
    assert [row.lane for row in report.rows] == [DAL_ATL]
    assert report.total.missions == 1 and report.total.tender_to_offer_latency_ms.count == 1


def test_an_empty_window_says_what_is_unavailable() -> None:
    report = domain.build_report(MISSIONS, TENDERS, start_ms=END + 1, end_ms=END + 2)
    assert report.rows == ()
    assert report.total.missions == 0 and report.total.success_rate is None
    assert {kpi for kpi, _ in report.total.unavailable} == {
        "success_rate", "handovers_per_mission", "packet_loss_ratio", "telemetry_freshness_p95",
        "on_time_arrival_rate", "measured_cost_per_mile", "cost_per_mile_vs_baseline"}


def test_cost_per_mile_rounds_half_to_even_and_refuses_to_mix_currencies() -> None:
    def cost(*invoices: Invoiced, baseline: Money | None = None) -> domain.KpiRow:
        facts = [MissionFacts(f"m{i}", HOU_ATL, T0, invoice=inv) for i, inv in enumerate(invoices)]
        return domain.build_report(facts, [], start_ms=START, end_ms=END, baseline=baseline).total

    assert cost(Invoiced(2.0, usd(1001))).measured_cost_per_mile == usd(500)  # 500.5 → 500 (even)
    assert cost(Invoiced(2.0, usd(1003))).measured_cost_per_mile == usd(502)  # 501.5 → 502 (even)
    mixed = cost(Invoiced(10.0, usd(1000)), Invoiced(10.0, Money("EUR", 1000)))
    assert mixed.measured_cost_per_mile is None and mixed.invoiced_total is None
    assert "EUR, USD" in dict(mixed.unavailable)["measured_cost_per_mile"]
    other = cost(Invoiced(10.0, usd(3000)), baseline=Money("EUR", 250))
    assert other.measured_cost_per_mile == usd(300) and other.cost_per_mile_vs_baseline is None
    assert "EUR" in dict(other.unavailable)["cost_per_mile_vs_baseline"]
    assert cost(Invoiced(0.0, usd(45_000))).measured_cost_per_mile is None  # a minimum charge, no miles


def test_the_window_defaults_and_bounds() -> None:
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    assert domain.resolve_window(None, None, now) == (now - timedelta(days=30), now)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert domain.resolve_window(start, start + timedelta(days=366), now) == (start, start + timedelta(days=366))
    for bad_end in (start, start - timedelta(seconds=1), start + timedelta(days=366, microseconds=1)):
        with pytest.raises(InvalidArgument) as caught:
            domain.resolve_window(start, bad_end, now)
        assert [v.field for v in caught.value.violations] == ["end_time"]
    with pytest.raises(InvalidArgument) as caught:
        domain.resolve_window(now, None, now)  # a start in the future, and no end: the start is what is wrong
    assert [v.field for v in caught.value.violations] == ["start_time"]


def test_lane_baseline_and_size_checks() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_lane(Lane("Houston", "US-GA-ATL"))
    assert [v.field for v in caught.value.violations] == ["lane.origin_region"]
    for bad, fields in ((Money("usd", 210), ["currency_code"]), (Money("USD", 0), ["amount_minor"]),
                        (Money("US", -5), ["currency_code", "amount_minor"])):
        with pytest.raises(InvalidArgument) as caught:
            domain.validate_baseline(bad)
        assert [v.field for v in caught.value.violations] == [f"baseline_cost_per_mile.{f}" for f in fields]
    domain.check_report_size(10, 10, "missions")
    with pytest.raises(FailedPrecondition) as caught:
        domain.check_report_size(11, 10, "missions")
    assert caught.value.reason == "REPORT_TOO_LARGE" and caught.value.metadata["limit"] == "10"
    # The limit counts every lane of the window (before the lane filter): the advice must not be "one lane".
    assert "shorter window" in str(caught.value) and "one lane" not in str(caught.value)


# --- properties ----------------------------------------------------------------------------------------

LANES = [HOU_ATL, DAL_ATL, Lane("US-GA-ATL", "US-TX-HOU")]
KINDS = ["SENSOR_FAULT", "VEHICLE_FAULT", "CONNECTIVITY_LOSS", "CHECK_IN_HOLD"]
CONTINGENCIES = ["CONTINUE", "REROUTE", "HUMAN_TAKEOVER", "MINIMAL_RISK_STOP", "HOLD"]
SPAN = END - START


@st.composite
def mission_facts(draw, name: str | None = None) -> MissionFacts:
    dispatch = draw(st.integers(START - H, END + H))
    window_start = draw(st.integers(START, END))
    invoiced = draw(st.none() | st.builds(Invoiced, st.floats(0, 5000, allow_nan=False),
                                          st.builds(usd, st.integers(0, 10_000_000))))
    telemetry = draw(st.none() | st.builds(Telemetry, st.integers(0, 10_000), st.integers(0, 500),
                                           st.none() | st.integers(0, 600_000)))
    return MissionFacts(
        name or f"m{draw(st.integers(0, 10**6))}", draw(st.sampled_from(LANES)), dispatch,
        ack_ms=draw(st.none() | st.integers(dispatch, dispatch + 600_000)),
        outcome=draw(st.sampled_from([None, "COMPLETED", "ABORTED", "CANCELLED"])),
        exceptions=draw(st.dictionaries(st.sampled_from(["exc-1", "exc-2", "exc-3"]),
                                        st.tuples(st.sampled_from(KINDS), st.sampled_from(CONTINGENCIES)), max_size=3)),
        delivery_window_ms=draw(st.none() | st.just((window_start, window_start + 6 * H))),
        delivery_arrive_ms=draw(st.none() | st.integers(window_start - 3 * H, window_start + 9 * H)),
        invoice=invoiced, telemetry=telemetry)


tender_facts = st.builds(
    lambda lane, created, latency, name: TenderFacts(name, lane, created,
                                                     None if latency is None else created + latency),
    st.sampled_from(LANES), st.integers(START - H, END + H), st.none() | st.integers(0, 60_000),
    st.integers(0, 10**6).map(lambda n: f"t{n}"))


def _rows(report: domain.Report) -> list[domain.KpiRow]:
    return [*report.rows, report.total]


@given(st.lists(mission_facts(), max_size=12), st.lists(tender_facts, max_size=12),
       st.none() | st.builds(usd, st.integers(1, 1000)))
def test_rates_are_shares_and_percentiles_are_ordered(missions, tenders, baseline) -> None:
    report = domain.build_report(missions, tenders, start_ms=START, end_ms=END, baseline=baseline)
    for row in _rows(report):
        for rate in (row.success_rate, row.packet_loss_ratio, row.on_time_arrival_rate):
            assert rate is None or 0.0 <= rate <= 1.0
        assert row.missions == (row.missions_completed + row.missions_aborted + row.missions_cancelled
                                + row.missions_in_progress)
        for p in (row.dispatch_ack_latency_ms, row.tender_to_offer_latency_ms):
            assert p.count == 0 or 0 <= p.p50 <= p.p95 <= p.p99
        named = {kpi for kpi, _ in row.unavailable}
        assert (row.success_rate is None) == ("success_rate" in named)
        assert (row.measured_cost_per_mile is None) == ("measured_cost_per_mile" in named)
    assert sum(row.missions for row in report.rows) == report.total.missions
    assert sum(row.takeovers for row in report.rows) == report.total.takeovers


@given(st.lists(mission_facts(), max_size=12), mission_facts(name="added"))
def test_adding_a_mission_changes_the_counts_by_one(missions, added) -> None:
    added = replace(added, dispatch_ms=START + (added.dispatch_ms % SPAN))  # inside the window
    before = domain.build_report(missions, [], start_ms=START, end_ms=END)
    after = domain.build_report([*missions, added], [], start_ms=START, end_ms=END)
    assert after.total.missions == before.total.missions + 1
    lane_before = {row.lane: row for row in before.rows}
    lane_after = {row.lane: row for row in after.rows}
    assert lane_after[added.lane].missions == (lane_before[added.lane].missions if added.lane in lane_before else 0) + 1
    for lane, row in lane_before.items():
        if lane != added.lane:
            assert lane_after[lane] == row
    outcome = added.outcome or "in_progress"
    field = {"COMPLETED": "missions_completed", "ABORTED": "missions_aborted", "CANCELLED": "missions_cancelled",
             "in_progress": "missions_in_progress"}[outcome]
    assert getattr(after.total, field) == getattr(before.total, field) + 1
    assert after.total.invoiced_missions == before.total.invoiced_missions + (added.invoice is not None)
    assert after.total.dispatch_ack_latency_ms.count == \
        before.total.dispatch_ack_latency_ms.count + (added.ack_ms is not None)


@given(st.lists(st.integers(-10**9, 10**9), min_size=1, max_size=200), st.integers(1, 100))
def test_nearest_rank_is_a_measured_value_with_at_least_p_percent_at_or_below(values, p) -> None:
    ordered = sorted(values)
    value = domain.nearest_rank(ordered, p)
    assert value in values
    at_or_below = sum(1 for v in values if v <= value)
    assert at_or_below * 100 >= p * len(values)           # at least p % of the values are ≤ it
    assert sum(1 for v in values if v < value) * 100 < p * len(values)  # and fewer than p % are below it
