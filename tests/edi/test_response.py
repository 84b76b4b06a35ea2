"""990 out: accept and decline write, read back and validate clean, echo B2-04 and the 204's references."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.edi.domain import (
    CATALOG,
    FUNCTIONAL_IDS,
    SCHEMA_990,
    Decision,
    DeclineStyle,
    FunctionalGroup,
    Interchange,
    LoadTender,
    Reference,
    TenderResponse,
    TransactionSet,
    WriteRefused,
    X12Error,
    acknowledge,
    read,
    read_990,
    read_load_tender,
    response_990,
    write,
)

from .builders import sample
from .test_load_tender import delimiters, tenders

DAY = date(2026, 3, 15)


def original() -> LoadTender:
    (reading,) = read(sample("204_original.edi"))
    tender = read_load_tender(reading.groups[0].sets[0].transaction)
    assert isinstance(tender, LoadTender)
    return tender


def sent_and_read(transaction: TransactionSet, delimiters=None) -> TransactionSet:
    """The 990 enveloped as we send it, written and read back: no TA1 note, the group and set accepted."""
    group = FunctionalGroup(FUNCTIONAL_IDS["990"], "HAULMESH", "PRAIRIEFRT", "20260315", "1005", "31", "004010",
                            (transaction,))
    kwargs = {"delimiters": delimiters} if delimiters else {}
    sent = Interchange("ZZ", "HAULMESH", "ZZ", "PRAIRIEFRT", "260315", "1005", "000000031", groups=(group,), **kwargs)
    (reading,) = read(write(sent))
    assert reading.problems == () and reading.interchange == sent
    (group_reading,) = reading.groups
    assert group_reading.problems == () and group_reading.accepted_sets == group_reading.sets
    (set_reading,) = group_reading.sets
    assert set_reading.segment_errors == ()
    # what the partner's 997 would say: accepted, no AK3/AK4
    assert [str(s) for s in acknowledge(group_reading, control="0001").segments] == \
        ["AK1*GF*31", f"AK2*990*{transaction.control}", "AK5*A", "AK9*A*1*1*1"]
    return set_reading.transaction


def test_the_990_schema_is_in_the_catalog() -> None:
    assert CATALOG.find("990", "004010") is SCHEMA_990 and SCHEMA_990.functional_id == "GF"


def test_an_accept_echoes_the_shipment_id_and_references_and_validates_clean() -> None:
    tender = original()
    answer = response_990(tender, Decision.ACCEPT, scac="HMSH", date=DAY, control="0007")
    assert [str(s) for s in answer.segments] == [
        "B1*HMSH*PF-DAL-HOU-0315*20260315*A", "N9*BM*BOL-778812", "N9*PO*PO-55120"]
    back = sent_and_read(answer)
    assert back == answer
    assert read_990(back) == TenderResponse("HMSH", "PF-DAL-HOU-0315", DAY, Decision.ACCEPT, tender.references)


def test_a_decline_puts_its_reason_in_k1_by_default() -> None:
    answer = response_990(original(), "D", scac="HMSH", date=DAY, control="0008", reason_code="CAP",
                          remark="No autonomous capacity on this lane before the window closes")
    assert [str(s) for s in answer.segments][3:] == [
        "K1*CAP*No autonomous capacity on this", "K1*lane before the window closes"]
    response = read_990(sent_and_read(answer))
    assert (response.decision, response.reason_code, response.shipment_id) == \
        (Decision.DECLINE, "CAP", "PF-DAL-HOU-0315")
    assert response.remark == "No autonomous capacity on this lane before the window closes"


def test_a_decline_in_v9_for_partners_that_want_it_and_extra_references() -> None:
    style = DeclineStyle(k1=False, v9_event="REJ")
    answer = response_990(original(), Decision.DECLINE, scac="HMSH", date=DAY, control="0009", reason_code="EQP",
                          style=style, extra_references=(Reference("CN", "T-9001"),))
    assert [str(s) for s in answer.segments] == [
        "B1*HMSH*PF-DAL-HOU-0315*20260315*D", "N9*BM*BOL-778812", "N9*PO*PO-55120", "N9*CN*T-9001",
        "V9*REJ*******EQP"]
    response = read_990(sent_and_read(answer), style=style)
    assert response.reason_code == "EQP" and response.references[-1] == Reference("CN", "T-9001")
    both = DeclineStyle(k1=True, v9_event="REJ")
    answer = response_990(original(), Decision.DECLINE, scac="HMSH", date=DAY, control="0010", reason_code="EQP",
                          style=both)
    assert [s.id for s in answer.segments][-2:] == ["V9", "K1"]
    assert read_990(sent_and_read(answer), style=both).reason_code == "EQP"


def test_what_the_partner_would_reject_is_refused_here() -> None:
    tender = original()
    with pytest.raises(WriteRefused, match="reason"):
        response_990(tender, Decision.DECLINE, scac="HMSH", date=DAY, control="0001")
    with pytest.raises(WriteRefused, match="accept"):
        response_990(tender, Decision.ACCEPT, scac="HMSH", date=DAY, control="0001", reason_code="CAP")
    with pytest.raises(WriteRefused, match="B1"):
        response_990(tender, Decision.ACCEPT, scac="HAULM", date=DAY, control="0001")
    with pytest.raises(WriteRefused, match="V9"):
        response_990(tender, Decision.DECLINE, scac="HMSH", date=DAY, control="0001", reason_code="CAPACITY",
                     style=DeclineStyle(v9_event="REJ"))
    with pytest.raises(WriteRefused, match="K1"):
        response_990(tender, Decision.ACCEPT, scac="HMSH", date=DAY, control="0001", remark="word " * 200)
    with pytest.raises(ValueError, match="Decision"):
        response_990(tender, "X", scac="HMSH", date=DAY, control="0001")
    with pytest.raises(ValueError):
        DeclineStyle(k1=False)
    with pytest.raises(X12Error):
        read_990(TransactionSet("990", "0001", ()))


_REMARKS = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.,", min_size=1, max_size=30),
                    max_size=12).map(" ".join)


@settings(max_examples=25, deadline=None)
@given(delimiters(), tenders(), st.sampled_from(list(Decision)), st.from_regex(r"[A-Z]{3}", fullmatch=True),
       _REMARKS, st.sampled_from([DeclineStyle(), DeclineStyle(False, "REJ"), DeclineStyle(True, "REJ")]))
def test_any_tender_answered_either_way_reads_back_as_sent(d, tender, decision, reason, remark, style) -> None:
    answer = response_990(tender, decision, scac=tender.scac, date=DAY, control="4321", style=style,
                          reason_code=reason if decision is Decision.DECLINE else None, remark=remark)
    response = read_990(sent_and_read(answer, d), style=style)
    assert response == TenderResponse(tender.scac, tender.shipment_id, DAY, decision,
                                      tuple(Reference(r.qualifier, r.value) for r in tender.references),
                                      reason if decision is Decision.DECLINE else "", remark)
