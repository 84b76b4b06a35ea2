"""Unit tests of the tender rules: lifecycle, validation, updates, eligibility, risk (no gRPC, no Redis)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haulmesh.tender.v1 import tender_pb2
from haulmesh.type.v1 import equipment_pb2, money_pb2
from services.runtime import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    from_timestamp,
    parse_filter,
    to_timestamp,
)
from services.tender import domain
from services.tender.convert import TENDER_FILTER, tender_filter_values
from services.tender.domain import Action, State
from services.tender.eligibility import DEFAULT_POLICY_FILE, POLICY_ENV, EligibilityPolicy, load_policy

from .helpers import MIAMI, seed_tender

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
POLICY = load_policy({})
Rule = tender_pb2.EligibilityViolation.Rule
Factor = tender_pb2.RiskReason.Factor
ALL_STATES = [s for s in State.values() if s != State.STATE_UNSPECIFIED]


def fields(violations) -> set[str]:
    return {v.field for v in violations}


# --- lifecycle -----------------------------------------------------------------------------------------

LEGAL = {
    (State.STATE_PENDING, Action.OFFER), (State.STATE_PENDING, Action.REJECT), (State.STATE_PENDING, Action.CANCEL),
    (State.STATE_OFFERED, Action.OFFER), (State.STATE_OFFERED, Action.REJECT), (State.STATE_OFFERED, Action.ACCEPT),
    (State.STATE_OFFERED, Action.DECLINE), (State.STATE_OFFERED, Action.LAPSE), (State.STATE_OFFERED, Action.CANCEL),
    (State.STATE_ACCEPTED, Action.CANCEL), (State.STATE_ACCEPTED, Action.DISPATCH_FAIL),
}
REPEATS = {(State.STATE_ACCEPTED, Action.ACCEPT), (State.STATE_DECLINED, Action.DECLINE),
           (State.STATE_LAPSED, Action.LAPSE), (State.STATE_CANCELLED, Action.CANCEL),
           (State.STATE_DISPATCH_FAILED, Action.DISPATCH_FAIL)}


@pytest.mark.parametrize("state", ALL_STATES, ids=State.Name)
@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.name)
def test_transition_table(state: int, action: Action) -> None:
    if (state, action) in LEGAL:
        assert domain.transition(state, action) == (domain.target_state(action), True)
    elif (state, action) in REPEATS:
        assert domain.transition(state, action) == (state, False)
    else:
        with pytest.raises(FailedPrecondition) as caught:
            domain.transition(state, action)
        assert caught.value.reason == "INVALID_TENDER_STATE"
        assert caught.value.metadata == {"state": State.Name(state)}


@given(st.lists(st.sampled_from(list(Action)), max_size=12))
def test_terminal_states_are_final_and_every_path_is_legal(actions: list[Action]) -> None:
    """Any sequence of actions from PENDING: each step is legal, a repeat, or refused; terminal stays put."""
    state = State.STATE_PENDING
    for action in actions:
        try:
            new, changed = domain.transition(state, action)
        except FailedPrecondition:
            continue
        if state in domain.TERMINAL_STATES:
            assert not changed and new == state
        assert (state, action) in LEGAL | REPEATS
        state = new


# --- validation ----------------------------------------------------------------------------------------


def test_seed_tender_is_valid() -> None:
    assert domain.validate_tender(seed_tender(NOW), NOW) == []


def test_missing_fields_are_each_reported() -> None:
    violations = domain.validate_tender(tender_pb2.Tender(), NOW)
    assert {"tender.tms_load_id", "tender.origin", "tender.destination", "tender.pickup_window",
            "tender.equipment", "tender.weight_lb"} <= fields(violations)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda t: setattr(t.origin, "lat", 91), "tender.origin.lat"),
    (lambda t: setattr(t.destination, "lon", -181), "tender.destination.lon"),
    (lambda t: (setattr(t.origin, "lat", 0), setattr(t.origin, "lon", 0)), "tender.origin"),
    (lambda t: setattr(t, "weight_lb", 0), "tender.weight_lb"),
    (lambda t: setattr(t, "weight_lb", 80_001), "tender.weight_lb"),
    (lambda t: setattr(t, "tms_load_id", "bad id with spaces"), "tender.tms_load_id"),
    (lambda t: setattr(t, "tms_load_id", "x" * 65), "tender.tms_load_id"),
    (lambda t: setattr(t, "equipment", 0), "tender.equipment"),
    (lambda t: setattr(t, "special_instructions", "x" * 2001), "tender.special_instructions"),
    (lambda t: setattr(t, "special_instructions", "Hazmat=true"), "tender.special_instructions"),
    (lambda t: t.hazmat.MergeFrom(tender_pb2.Tender().hazmat.__class__(un_number="UN12", hazard_class="3")),
     "tender.hazmat.un_number"),
    (lambda t: t.hazmat.MergeFrom(tender_pb2.Tender().hazmat.__class__(un_number="UN1203", hazard_class="12")),
     "tender.hazmat.hazard_class"),
    (lambda t: t.hazmat.MergeFrom(tender_pb2.Tender().hazmat.__class__(un_number="UN1203", hazard_class="3",
                                                                       packing_group="IV")),
     "tender.hazmat.packing_group"),
    (lambda t: t.pickup_window.end_time.CopyFrom(t.pickup_window.start_time), "tender.pickup_window.end_time"),
    (lambda t: t.pickup_window.end_time.CopyFrom(to_timestamp(
        from_timestamp(t.pickup_window.start_time) + timedelta(minutes=29))), "tender.pickup_window.end_time"),
    (lambda t: (t.pickup_window.start_time.CopyFrom(to_timestamp(NOW - timedelta(hours=3))),
                t.pickup_window.end_time.CopyFrom(to_timestamp(NOW - timedelta(hours=1)))),
     "tender.pickup_window.end_time"),
    (lambda t: (t.pickup_window.start_time.CopyFrom(to_timestamp(NOW + timedelta(days=15))),
                t.pickup_window.end_time.CopyFrom(to_timestamp(NOW + timedelta(days=16)))),
     "tender.pickup_window.start_time"),
    (lambda t: (t.delivery_window.start_time.CopyFrom(to_timestamp(NOW - timedelta(days=2))),
                t.delivery_window.end_time.CopyFrom(to_timestamp(NOW + timedelta(hours=1)))),
     "tender.delivery_window.end_time"),
])
def test_each_invalid_field_is_named(mutate, field: str) -> None:
    tender = seed_tender(NOW)
    mutate(tender)
    assert field in fields(domain.validate_tender(tender, NOW))


def test_hazmat_note_consistent_with_field_is_valid() -> None:
    tender = seed_tender(NOW)
    tender.special_instructions = "Dock 4. Hazmat=true"
    tender.hazmat.un_number, tender.hazmat.hazard_class, tender.hazmat.packing_group = "UN1203", "3", "II"
    assert domain.validate_tender(tender, NOW) == []


@settings(max_examples=200)
@given(lat=st.floats(allow_nan=True, allow_infinity=True), lon=st.floats(allow_nan=True, allow_infinity=True),
       weight=st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_validation_accepts_exactly_the_documented_ranges(lat: float, lon: float, weight: int) -> None:
    tender = seed_tender(NOW)
    tender.origin.lat, tender.origin.lon, tender.weight_lb = lat, lon, weight
    got = fields(domain.validate_tender(tender, NOW))
    assert ("tender.origin.lat" in got) == (not (-90 <= lat <= 90))
    assert ("tender.origin.lon" in got) == (not (-180 <= lon <= 180))
    assert ("tender.weight_lb" in got) == (not 1 <= weight <= 80_000)


@given(start=st.integers(min_value=-30 * 86400, max_value=30 * 86400),
       length=st.integers(min_value=-86400, max_value=20 * 86400))
def test_pickup_window_rules(start: int, length: int) -> None:
    tender = seed_tender(NOW)
    s, e = NOW + timedelta(seconds=start), NOW + timedelta(seconds=start + length)
    tender.pickup_window.start_time.CopyFrom(to_timestamp(s))
    tender.pickup_window.end_time.CopyFrom(to_timestamp(e))
    valid = (e > s and e - s >= timedelta(minutes=30) and e - s <= timedelta(days=14) and e > NOW
             and s <= NOW + timedelta(days=14))
    pickup = {f for f in fields(domain.validate_tender(tender, NOW)) if f.startswith("tender.pickup_window")}
    assert (not pickup) == valid


@given(st.text(max_size=80))
def test_tms_load_id_rule(value: str) -> None:
    tender = seed_tender(NOW)
    tender.tms_load_id = value
    ok = 1 <= len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "._:/-") for c in value)
    assert ("tender.tms_load_id" not in fields(domain.validate_tender(tender, NOW))) == ok


def test_request_id_format() -> None:
    domain.validate_request_id("3f0c-uuid:1.2_x")
    with pytest.raises(InvalidArgument):
        domain.validate_request_id("has space")
    with pytest.raises(InvalidArgument):
        domain.validate_request_id("x" * 129)


def test_tender_names() -> None:
    assert domain.parse_tender_name("tenders/01J9Z3K6V8Q2M4N5P7R9S1T3W5") == "01j9z3k6v8q2m4n5p7r9s1t3w5"
    for bad in ("tenders/", "tenders/a b", "tenders/x/y", "missions/01J9Z3K6V8Q2M4N5P7R9S1T3W5",
                "01J9Z3K6V8Q2M4N5P7R9S1T3W5"):
        with pytest.raises(InvalidArgument):
            domain.parse_tender_name(bad)


# --- updates -------------------------------------------------------------------------------------------


def _stored(state: int) -> tender_pb2.Tender:
    tender = seed_tender(NOW)
    tender.name, tender.state = "tenders/01j9z3k6v8q2m4n5p7r9s1t3w5", state
    return tender


def test_update_before_acceptance_reevaluates() -> None:
    patch = tender_pb2.Tender(weight_lb=30_000)
    updated, reevaluate = domain.apply_update(_stored(State.STATE_OFFERED), patch, ["weight_lb"], NOW)
    assert updated.weight_lb == 30_000 and reevaluate


def test_update_special_instructions_only_does_not_reevaluate() -> None:
    patch = tender_pb2.Tender(special_instructions="Dock 7")
    for state in (State.STATE_OFFERED, State.STATE_ACCEPTED):
        updated, reevaluate = domain.apply_update(_stored(state), patch, ["specialInstructions"], NOW)
        assert updated.special_instructions == "Dock 7" and not reevaluate


def test_update_accepted_load_field_is_refused() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        domain.apply_update(_stored(State.STATE_ACCEPTED), tender_pb2.Tender(weight_lb=1), ["weight_lb"], NOW)
    assert caught.value.reason == "INVALID_TENDER_STATE"


@pytest.mark.parametrize("state", sorted(domain.TERMINAL_STATES))
def test_update_terminal_is_refused(state: int) -> None:
    with pytest.raises(FailedPrecondition):
        domain.apply_update(_stored(state), tender_pb2.Tender(special_instructions="x"), ["special_instructions"],
                            NOW)


def test_update_mask_rejects_unknown_and_immutable_fields() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.apply_update(_stored(State.STATE_OFFERED), tender_pb2.Tender(), ["tms_load_id", "state"], NOW)
    assert {v.field for v in caught.value.violations} == {"update_mask"}


def test_update_validates_new_values() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.apply_update(_stored(State.STATE_OFFERED), tender_pb2.Tender(weight_lb=90_000), ["weight_lb"], NOW)
    assert {v.field for v in caught.value.violations} == {"tender.weight_lb"}


# --- eligibility, risk, offer ---------------------------------------------------------------------------


def test_default_policy_allows_the_seed_lane() -> None:
    a = domain.assess(seed_tender(NOW), POLICY, NOW)
    assert (a.lane.origin_region, a.lane.destination_region) == ("US-TX-HOU", "US-GA-ATL")
    assert a.violations == []
    assert 780 < a.route_miles < 800


def test_ineligible_load_gets_every_reason() -> None:
    tender = seed_tender(NOW, destination=MIAMI, weight_lb=60_000)
    tender.equipment = equipment_pb2.EQUIPMENT_TANKER
    tender.special_instructions = ""
    tender.hazmat.un_number, tender.hazmat.hazard_class = "UN2814", "6.2"
    rules = {v.rule for v in domain.assess(tender, POLICY, NOW).violations}
    assert rules == {Rule.RULE_LANE_NOT_APPROVED, Rule.RULE_EQUIPMENT_NOT_SUPPORTED, Rule.RULE_OVERWEIGHT,
                     Rule.RULE_HAZMAT_NOT_PERMITTED}
    result = domain.evaluate(tender, domain.assess(tender, POLICY, NOW), POLICY, None, None, NOW)
    assert result.state == State.STATE_REJECTED and len(result.rejection_reasons) == 4 and not result.HasField("offer")


def _policy(**changes) -> EligibilityPolicy:
    data = json.loads(DEFAULT_POLICY_FILE.read_text())
    data.update(changes)
    return EligibilityPolicy.from_dict(data)


def test_hazmat_class_not_approved_on_lane() -> None:
    tender = seed_tender(NOW)
    tender.special_instructions = ""
    tender.hazmat.un_number, tender.hazmat.hazard_class = "UN1075", "2.2"
    violations = domain.assess(tender, POLICY, NOW).violations
    assert [(v.rule, v.field) for v in violations] == [(Rule.RULE_HAZMAT_NOT_PERMITTED, "hazmat.hazard_class")]


def test_weather_and_night_restrictions() -> None:
    data = json.loads(DEFAULT_POLICY_FILE.read_text())
    data["weather"] = [{"region": "US-GA-ATL", "start": "2026-01-01T00:00:00Z", "end": "2026-03-01T00:00:00Z",
                        "restricted": True, "description": "ice storm warning"}]
    for lane in data["lanes"]:
        lane["night_operation"] = False
    policy = EligibilityPolicy.from_dict(data)
    tender = seed_tender(NOW, pickup_start=timedelta(hours=9), pickup_length=timedelta(hours=2))  # 21:00-23:00
    rules = {v.rule for v in domain.assess(tender, policy, NOW).violations}
    assert rules == {Rule.RULE_WEATHER_RESTRICTED, Rule.RULE_NIGHT_OPERATION_RESTRICTED}


def test_window_infeasible() -> None:
    tender = seed_tender(NOW)
    start = from_timestamp(tender.pickup_window.start_time)
    tender.delivery_window.start_time.CopyFrom(to_timestamp(start))
    tender.delivery_window.end_time.CopyFrom(to_timestamp(start + timedelta(hours=5)))
    assert [v.rule for v in domain.assess(tender, POLICY, NOW).violations] == [Rule.RULE_WINDOW_INFEASIBLE]


def _offer(tender: tender_pb2.Tender, windows=None) -> tender_pb2.Tender:
    a = domain.assess(tender, POLICY, NOW)
    start, end = from_timestamp(tender.pickup_window.start_time), from_timestamp(
        tender.pickup_window.end_time)
    price = domain.Price("quotes/q1", money_pb2.Money(currency_code="USD", amount_minor=225_000), [], None)
    return domain.evaluate(tender, a, POLICY, domain.Capacity([(start, end)] if windows is None else windows), price,
                           NOW)


def test_offer_for_the_seed_tender() -> None:
    result = _offer(seed_tender(NOW))
    assert result.state == State.STATE_OFFERED and not result.rejection_reasons
    offer = result.offer
    assert offer.quote == "quotes/q1" and offer.price.amount_minor == 225_000
    assert 0 <= offer.risk_score <= 100
    assert offer.risk_score == min(100, sum(r.contribution for r in offer.risk_reasons))
    contributions = [r.contribution for r in offer.risk_reasons]
    assert contributions == sorted(contributions, reverse=True)
    assert Factor.FACTOR_HEAVY_LOAD in {r.factor for r in offer.risk_reasons}  # 42,000 of 45,000 lb
    assert from_timestamp(offer.expire_time) == NOW + domain.DEFAULT_OFFER_TTL


def test_offer_never_outlives_the_pickup_window() -> None:
    tender = seed_tender(NOW, pickup_start=timedelta(minutes=-40), pickup_length=timedelta(minutes=45))
    result = _offer(tender)
    assert from_timestamp(result.offer.expire_time) == NOW + timedelta(minutes=5)


def test_no_capacity_rejects() -> None:
    result = _offer(seed_tender(NOW), windows=[])
    assert result.state == State.STATE_REJECTED
    assert [r.rule for r in result.rejection_reasons] == [Rule.RULE_NO_CAPACITY]


@settings(max_examples=100, deadline=None)
@given(weight=st.integers(min_value=1, max_value=45_000), hours=st.integers(min_value=1, max_value=300),
       hazmat=st.booleans())
def test_risk_is_deterministic_and_bounded(weight: int, hours: int, hazmat: bool) -> None:
    tender = seed_tender(NOW, pickup_start=timedelta(hours=hours), weight_lb=weight)
    if hazmat:
        tender.special_instructions = ""
        tender.hazmat.un_number, tender.hazmat.hazard_class = "UN1203", "3"
    a = domain.assess(tender, POLICY, NOW)
    start = from_timestamp(tender.pickup_window.start_time)
    first = domain.risk(tender, a, POLICY, start)
    assert first == domain.risk(tender, a, POLICY, start)
    score, reasons = first
    assert 0 <= score <= 100 and all(1 <= r.contribution <= 100 for r in reasons)
    assert (Factor.FACTOR_HAZMAT in {r.factor for r in reasons}) == hazmat


def test_choose_pickup_window() -> None:
    tender = _offer(seed_tender(NOW))
    assert tender.offer.pickup_availability[0] == domain.choose_pickup_window(tender, None)
    start = from_timestamp(tender.offer.pickup_availability[0].start_time)
    inside = domain._window(start + timedelta(hours=1), start + timedelta(hours=2))
    assert domain.choose_pickup_window(tender, inside) == inside
    with pytest.raises(InvalidArgument):
        domain.choose_pickup_window(tender, domain._window(start - timedelta(hours=1), start + timedelta(hours=1)))
    with pytest.raises(InvalidArgument):
        domain.choose_pickup_window(tender, domain._window(start, start + timedelta(minutes=10)))


# --- policy file and filters ------------------------------------------------------------------------------


def test_policy_file_from_env(tmp_path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"lanes": [], "equipment": []}))
    assert load_policy({POLICY_ENV: str(path)}).lanes == ()
    path.write_text("{not json")
    with pytest.raises(ConfigError):
        load_policy({POLICY_ENV: str(path)})
    with pytest.raises(ConfigError):
        load_policy({POLICY_ENV: str(tmp_path / "missing.json")})
    with pytest.raises(ConfigError):
        _policy(lanes=[{"origin": "US-TX-HOU", "destination": "XX-XX-XXX"}])


def test_filter_parsing() -> None:
    tender = _offer(seed_tender(NOW))
    tender.create_time.CopyFrom(to_timestamp(NOW))
    def selects(text: str) -> bool:
        return parse_filter(text, TENDER_FILTER).matches(tender_filter_values(tender))

    assert selects('state = OFFERED AND lane.origin_region = "US-TX-HOU"')
    assert not selects("state = REJECTED")
    assert selects('tms_load_id = "TND-20260118-001"')
    assert selects('create_time >= "2026-01-31T12:00:00Z" AND create_time < "2026-02-01T00:00:00Z"')
    assert not selects('create_time > "2026-01-31T12:00:00Z"')
    assert selects("")
    assert selects("state != REJECTED AND state = STATE_OFFERED")
    for bad in ("state = NOPE", "color = 'red'", "state OFFERED", 'state = OFFERED OR state = REJECTED',
                'create_time > "yesterday"', "tms_load_id = bare", "x" * 1001):
        with pytest.raises(InvalidArgument) as caught:
            parse_filter(bad, TENDER_FILTER)
        assert caught.value.reason == "INVALID_FILTER"


