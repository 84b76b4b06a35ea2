"""``haulmesh edi check``: the field map of a partner's sample 204, measured on the service's own reading and
mapping, and the verdicts the service would give (TA1, 997, a 990 decline), on the samples in tests/edi/samples.

``204_hazmat.edi`` is a partner that sends what Haulmesh does not take yet (hazardous-material detail, LH1): the
997 accepts it (it is valid X12) and the check says the tender would be declined, and why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.edi.check import DEFAULT_PARTNERS_FILE, _text, check
from services.edi.config import load_partners
from services.edi.domain import write
from services.runtime.lanes import load_lane_facts

from .builders import group, interchange, set_204
from .test_load_tender import FULL_204, element_used, full_body

SAMPLES = Path(__file__).parent / "samples"
PARTNERS = load_partners(DEFAULT_PARTNERS_FILE)
LANES = load_lane_facts({})
ROOT = Path(__file__).parents[2]


def _check(name: str, partner: str = "prairie", data: bytes | None = None):
    found = PARTNERS.get(partner)
    assert found is not None
    return check(data if data is not None else (SAMPLES / name).read_bytes(), found, LANES, file_name=name)


def _uses(report) -> dict[tuple[str, str], object]:
    (only,) = report.sets
    return {(f.element, f.value): f for f in only.fields}


def test_an_original_maps_field_by_field() -> None:
    report = _check("204_original.edi")
    assert report.accepted and not report.envelope
    assert [g["status"] for g in report.groups] == ["A"]
    uses = _uses(report)
    b2 = uses[("B2-04", "PF-DAL-HOU-0315")]
    assert b2.status == "mapped" and set(b2.tender) == {"tender.tms_load_id", "tender.references[0].value"}
    postal = uses[("S5[2]/N4-03", "77002")]
    assert postal.tender == ("tender.stops[1].address.postal_code",)
    assert "ZIP centroid 77002 → 29.7594, -95.3594" in postal.note
    assert "facility registry if it holds 93 PF-HOU-02" in postal.note
    assert uses[("L3-01", "42000")].tender == ("tender.weight_lb",)
    assert uses[("L3-05", "123450")].tender == ("tender.offered_rate.amount_minor",)
    assert set(uses[("S5[1]/G62-04", "0800")].tender) == {"tender.stops[0].window.start_time"}
    assert uses[("S5[1]/L5-02", "Canned vegetables")].tender == ("tender.commodities[0].description",)
    # The bill-to party is the 210's, not the tender's; the stop's S5 weight yields to the L3's.
    assert uses[("N1[BT]/N1-02", "Prairie Freight Payables")].status == "kept"
    assert uses[("S5[1]/S5-03", "42000")].kept == ("load_tender.stops[0].weight.value",)
    # Codes the reading decides by; and what Haulmesh does not read at all (the N7 trailer number).
    assert uses[("S5[1]/G62-01", "37")].status == "checked"
    assert uses[("S5[1]/S5-02", "LD")].status == "checked"
    assert uses[("N7-02", "TRL0042")].status == "ignored"
    assert not report.sets[0].missing


def test_a_change_and_a_cancel_say_what_they_reach() -> None:
    change = _check("204_change.edi")
    assert change.accepted
    assert any("updates only tender.stops, tender.weight_lb" in n for n in change.sets[0].notes)
    cancel = _check("204_cancel.edi")
    assert cancel.accepted and cancel.sets[0].purpose == "cancel"
    assert not any(f.tender for f in cancel.sets[0].fields)  # no request is made: CancelTender by B2-04
    assert any("is cancelled" in n for n in cancel.sets[0].notes)


def test_a_malformed_group_is_said_as_the_997_says_it() -> None:
    report = _check("204_malformed.edi")
    assert not report.accepted
    (group,) = report.groups
    assert group["status"] == "P"
    assert "AK3*S5*4*0300*8" in group["ack"] and "AK4*2*163*7*ZZ" in group["ack"]
    bad = next(s for s in report.sets if s.control == "0002")
    assert bad.status == "R" and any("invalid_code 'ZZ'" in e for e in bad.errors) and not bad.fields


def test_a_partner_sending_what_haulmesh_does_not_take() -> None:
    report = _check("204_hazmat.edi")
    (only,) = report.sets
    assert only.status == "A" and "hazardous material" in only.refusal and not report.accepted
    assert {f.element for f in only.fields if f.status == "ignored"} >= {"S5[1]/LH1-01", "S5[1]/LH1-03"}
    # Times in a partner's own zone code, not the stop's local time: declined naming the stop.
    eastern = (SAMPLES / "204_original.edi").read_bytes().replace(b"*0800*LT~", b"*0800*ET~")
    report = _check("eastern.edi", data=eastern)
    assert "stop 1: time zone code 'ET' is not supported" in report.sets[0].refusal and not report.accepted


def test_an_envelope_not_from_the_partner_is_refused_whole() -> None:
    report = _check("204_original.edi", partner="lonestar")
    assert not report.accepted and not report.sets
    assert report.envelope and "TA1 R 005" in report.envelope[0]
    garbage = _check("x.edi", data=b"not x12 at all")
    assert not garbage.accepted and "TA1 R 022" in garbage.envelope[0]


@pytest.mark.parametrize(("sample", "partner", "code"), [
    ("204_original.edi", "prairie", 0), ("204_hazmat.edi", "prairie", 1), ("204_original.edi", "nobody", 2)])
def test_the_command_exit_status(sample: str, partner: str, code: int) -> None:
    done = subprocess.run([sys.executable, "-m", "services.runtime.cli", "edi", "check", str(SAMPLES / sample),
                           "--partner", partner, "--format", "json"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=False)
    assert done.returncode == code, done.stderr
    if code != 2:
        report = json.loads(done.stdout)
        assert report["accepted"] is (code == 0) and report["sets"][0]["shipment"] == "PF-DAL-HOU-0315"
    else:
        assert "no partner 'nobody'" in done.stderr


# --- accepted with errors, and the schema's "used" marks measured ----------------------------------------------


def test_a_204_with_an_error_in_what_haulmesh_ignores_is_accepted_with_errors() -> None:
    original = (SAMPLES / "204_original.edi").read_bytes()
    data = original.replace(b"N7**TRL0042~", b"N7**TRL0042~\nZZ9*A stray segment~").replace(
        b"SE*29*0001~", b"SE*30*0001~")
    report = _check("noted.edi", data=data)
    (only,) = report.sets
    assert only.status == "E" and report.accepted and [g["status"] for g in report.groups] == ["E"]
    assert "AK3*ZZ9*12*0200*6" in report.groups[0]["ack"] and "AK5*E*5" in report.groups[0]["ack"]
    assert any(e.startswith("noted (not used by Haulmesh): AK3 ZZ9@12") for e in only.errors)
    assert _uses(report)[("B2-04", "PF-DAL-HOU-0315")].status == "mapped"  # mapped as ever
    text = _text(report)
    assert "accepted with errors by its 997 (AK5 E): would become a tender request" in text
    assert text.endswith("result: accepted")


def test_what_the_check_measures_as_used_the_schema_marks_used() -> None:
    """The 204 schema's ``used`` marks and the reading agree (the marks decide what an error may be noted in): on a
    204 with every element filled, each element the check measures as mapped, kept or checked is marked used, and
    each marked unused is measured ignored. (The other way round, marked used yet measured ignored, is the safe
    side: only the stop's own AT8, which is read when its S5 gives no weight or pieces, and this S5 gives both.)"""
    data = write(interchange(group(set_204(body=full_body()))))
    report = _check("full.edi", data=data)
    (only,) = report.sets
    assert report.accepted and only.status == "A"
    elements = [(loop_id, segment, position) for loop_id, segment in FULL_204
                for position, value in enumerate(segment.elements, 1) if value]
    assert len(elements) == len(only.fields)
    unsafe, conservative = [], []
    for (loop_id, segment, position), use in zip(elements, only.fields, strict=True):
        used = element_used(loop_id, segment, position)
        if use.status != "ignored" and not used:
            unsafe.append(use.element)
        elif use.status == "ignored" and used:
            conservative.append(use.element)
    assert not unsafe, unsafe
    assert conservative == [f"S5[1]/AT8-0{n}" for n in range(1, 5)], conservative
