"""005010 where it differs little from 004010: the 204 read to the same tender, the 990/214/210 written in the
partner's version (validated by their 005010 schemas, round trips byte-stable), and what one version has and the
other has not answered with the right AK4 (the differences: services/edi/domain/_set_5010.py)."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, date, datetime
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.edi.archive import RawArchive
from services.edi.config import PARTNERS_FILE_ENV, EdiConfig
from services.edi.domain import (
    CATALOG,
    SCHEMA_204,
    SCHEMA_210,
    SCHEMA_214,
    SCHEMA_990,
    SEPARATOR_CHOICES,
    Decision,
    DeclineStyle,
    Delimiters,
    FreightInvoice,
    FunctionalGroup,
    Interchange,
    LoadTender,
    Reference,
    Segment,
    ShipmentReference,
    ShipmentStatus,
    StatusError,
    StatusEvent,
    TenderResponse,
    TransactionSet,
    WriteRefused,
    acknowledge,
    invoice_210,
    read,
    read_990,
    read_load_tender,
    response_990,
    schema_for,
    status_214,
    validate,
    write,
)
from services.edi.folders import PartnerFolders
from services.edi.store import EdiStore
from services.edi.usecases import EdiDesk, TenderClient
from services.runtime import carrier_metadata, connect_async, new_id

from ..conftest import Pki
from .builders import sample
from .service.samples import load_tender_204, nothing
from .test_invoice import INVOICE, invoices
from .test_load_tender import _TEXT, tenders
from .test_load_tender import delimiters as tender_delimiters
from .test_status import _DATA_PUNCTUATION, _WORDS, events
from .test_status import delimiters as status_delimiters

FIVE = "005010"
EXAMPLE = Path(__file__).parents[2] / "services" / "edi" / "partners.example.toml"
DAY = date(2026, 3, 15)


def tender_of(data: bytes) -> LoadTender | list:
    (reading,) = read(data)
    (group,) = reading.groups
    return read_load_tender(group.sets[0].transaction, version=group.group.version)


def answer_997(data: bytes) -> list[str]:
    (reading,) = read(data)
    ack = acknowledge(reading.groups[0], control="0001")
    assert ack is not None
    return [str(s) for s in ack.segments]


# --- the schemas ---------------------------------------------------------------------------------------------------


def test_the_catalog_finds_each_set_in_either_version_and_5010_shares_what_did_not_change() -> None:
    for set_id, four in (("204", SCHEMA_204), ("990", SCHEMA_990), ("214", SCHEMA_214), ("210", SCHEMA_210)):
        five = CATALOG.find(set_id, "005010X999")  # GS08's first six characters
        assert five is not None and five.versions == {FIVE} and CATALOG.find(set_id, "004010") is four
        assert schema_for(set_id, FIVE) is five and five.set_id == four.set_id
        assert five.functional_id == four.functional_id and five.segment_ids == four.segment_ids
    five_204 = schema_for("204", FIVE)
    assert five_204.body[0] is SCHEMA_204.body[0]  # B2: the same definition, not a copy
    header_l11 = five_204.body[2]
    assert header_l11.id == "L11" and header_l11.elements[0].max == 50 and SCHEMA_204.body[2].elements[0].max == 30
    assert [e.ref for e in header_l11.elements] == ["127", "128", "352", "373", "1073"]
    assert header_l11.rules == ("P0102", "R0103")
    with pytest.raises(WriteRefused):
        schema_for("204", "003040")


# --- the 204 in --------------------------------------------------------------------------------------------------


def test_the_5010_sample_reads_to_the_same_tender_as_its_4010_twin_and_is_acknowledged_in_5010() -> None:
    five, four = sample("204_original_5010.edi"), sample("204_original.edi")
    (reading,) = read(five)
    assert reading.problems == () and reading.interchange.version == "00501"
    (group,) = reading.groups
    assert group.problems == () and group.group.version == FIVE
    (set_reading,) = group.sets
    assert set_reading.accepted and set_reading.segment_errors == () and set_reading.noted == ()
    assert set_reading.transaction.convention == FIVE  # ST03
    tender = tender_of(five)
    assert isinstance(tender, LoadTender) and tender == tender_of(four)
    assert tender.shipment_id == "PF-DAL-HOU-0315" and len(tender.stops) == 2
    assert answer_997(five) == ["AK1*SM*905*005010", "AK2*204*0001*005010", "AK5*A", "AK9*A*1*1*1"]


def test_a_5010_only_element_in_a_4010_set_is_refused_as_one_too_many() -> None:
    # L11-04 (a date) exists from 004030 on: the 004010 L11 has three elements (AK4 code 3, too many), whether
    # the partner sends it in a 004010 group or a 005010 set is read as 004010
    four = sample("204_original.edi").replace(b"L11*PO-55120*PO~", b"L11*PO-55120*PO**20260314~")
    assert answer_997(four) == ["AK1*SM*905", "AK2*204*0001", "AK3*L11*5**8", "AK4*4**3*20260314", "AK5*R*5",
                                "AK9*R*1*1*0"]
    (reading,) = read(sample("204_original_5010.edi"))
    result = read_load_tender(reading.groups[0].sets[0].transaction)  # the 004010 schema, by default
    assert isinstance(result, list)
    assert [(e.segment_id, e.code.value, [(x.position, x.code.value) for x in e.elements]) for e in result] == \
        [("L11", 8, [(4, 3)])]


def test_a_reference_of_31_to_50_characters_is_5010_and_too_long_in_4010() -> None:
    fifty = b"B" * 50
    five = sample("204_original_5010.edi").replace(b"L11*BOL-778812*BM~", b"L11*" + fifty + b"*BM~")
    tender = tender_of(five)
    assert isinstance(tender, LoadTender) and tender.reference("BM") == fifty.decode()
    assert answer_997(five)[-2:] == ["AK5*A", "AK9*A*1*1*1"]
    four = sample("204_original.edi").replace(b"L11*BOL-778812*BM~", b"L11*" + fifty + b"*BM~")
    assert answer_997(four) == ["AK1*SM*905", "AK2*204*0001", "AK3*L11*4**8", f"AK4*1*127*5*{fifty.decode()}",
                                "AK5*R*5", "AK9*R*1*1*0"]
    over = five.replace(fifty, fifty + b"B")
    assert answer_997(over) == ["AK1*SM*905*005010", "AK2*204*0001*005010", "AK3*L11*4**8",
                                f"AK4*1*127*5*{fifty.decode()}B", "AK5*R*5", "AK9*R*1*1*0"]


def test_5010_rules_the_reading_depends_on_reject_and_those_it_does_not_are_noted() -> None:
    # N4-07 (country subdivision) and N4-02 (state) exclude each other (E0207): the state is read, so the set is
    # rejected, AK4 N4-07 code 10
    both = sample("204_original_5010.edi").replace(b"N4*Dallas*TX*75202*US~", b"N4*Dallas*TX*75202*US***TX~", 1)
    assert answer_997(both) == ["AK1*SM*905*005010", "AK2*204*0001*005010", "AK3*N4*10*0100*8", "AK4*7*1715*10",
                                "AK5*R*5", "AK9*R*1*1*0"]
    # N4-07 without N4-04 (C0704), no state given: the note names N4-04, which is read: rejected, AK4 N4-04 code 2
    lone = sample("204_original_5010.edi").replace(b"N4*Dallas*TX*75202*US~", b"N4*Dallas**75202****TX~", 1)
    assert answer_997(lone)[2:4] == ["AK3*N4*10*0100*8", "AK4*4*26*2"]
    # a bad L11-04 date: not read, so noted (AK5 E) and the tender is the same
    noted = sample("204_original_5010.edi").replace(b"*PO**20260314~", b"*PO**20261399~")
    assert answer_997(noted) == ["AK1*SM*905*005010", "AK2*204*0001*005010", "AK3*L11*5**8",
                                 "AK4*4*373*8*20261399", "AK5*E*5", "AK9*E*1*1*1"]
    assert tender_of(noted) == tender_of(sample("204_original.edi"))


# --- the 990, 214 and 210 out, in the partner's version -------------------------------------------------------------


def delimiters(base, data: str):
    """005010's delimiters: ``base``'s (the 004010 strategy of the set's own tests, which keeps clear of what
    their data holds) with a repetition separator (ISA11) that is neither another delimiter nor in ``data``."""

    @st.composite
    def draw_5010(draw) -> Delimiters:
        d = draw(base())
        taken = set(data) | {d.element, d.component, d.segment}
        return dataclasses.replace(d, repetition=draw(st.sampled_from(sorted(SEPARATOR_CHOICES - taken))))

    return draw_5010()


def sent_in_5010(functional_id: str, sets: tuple[TransactionSet, ...], d: Delimiters) -> tuple[TransactionSet, ...]:
    """``sets`` in a 005010 group and interchange as we send them: each validates clean against its 005010
    schema, the interchange reads back as sent and writes again to the same bytes."""
    for transaction in sets:
        assert validate(schema_for(transaction.id, FIVE), transaction.segments) == ()
    group = FunctionalGroup(functional_id, "HAULMESH", "PRAIRIEFRT", "20260315", "1005", "31", FIVE, sets)
    sent = Interchange("ZZ", "HAULMESH", "ZZ", "PRAIRIEFRT", "260315", "1005", "000000031", groups=(group,),
                       version="00501", delimiters=d)
    data = write(sent)
    (reading,) = read(data)
    assert reading.problems == () and reading.interchange == sent
    (group_reading,) = reading.groups
    assert group_reading.problems == () and group_reading.accepted_sets == group_reading.sets
    for set_reading in group_reading.sets:
        assert set_reading.problems == () and set_reading.segment_errors == () and set_reading.noted == ()
    assert write(reading.interchange) == data
    return tuple(s.transaction for s in group_reading.sets)


_REMARKS = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.,", min_size=1, max_size=30),
                    max_size=8).map(" ".join)


@settings(max_examples=25, deadline=None)
@given(delimiters(tender_delimiters, _TEXT), tenders(), st.sampled_from(list(Decision)),
       st.from_regex(r"[A-Z]{3}", fullmatch=True), _REMARKS,
       st.sampled_from([DeclineStyle(), DeclineStyle(False, "REJ"), DeclineStyle(True, "REJ")]))
def test_any_990_in_5010_validates_reads_back_and_round_trips_byte_stable(d, tender, decision, reason, remark,
                                                                           style) -> None:
    answer = response_990(tender, decision, scac=tender.scac, date=DAY, control="4321", style=style, version=FIVE,
                          reason_code=reason if decision is Decision.DECLINE else None, remark=remark)
    (back,) = sent_in_5010("GF", (answer,), d)
    echoed = tuple(Reference(r.qualifier, r.value) for r in tender.references)
    assert read_990(back, style=style, version=FIVE) == TenderResponse(
        tender.scac, tender.shipment_id, DAY, decision, echoed, reason if decision is Decision.DECLINE else "", remark)


@settings(max_examples=40, deadline=None)
@given(st.lists(events(), min_size=1, max_size=4), st.lists(st.builds(ShipmentReference, st.sampled_from(
    ["BM", "PO", "SI"]), _WORDS), max_size=3), _WORDS, delimiters(status_delimiters, "".join(_DATA_PUNCTUATION)))
def test_any_214_in_5010_validates_and_round_trips_byte_stable(event_list, references, shipment, d) -> None:
    status = ShipmentStatus(shipment, "01HZX5M1SSION", "HMSH", tuple(event_list), tuple(references))
    sent_in_5010("QM", (status_214(status, control="0001", version=FIVE),
                        status_214(status, control="0002", time_code="UT", version=FIVE)), d)


@settings(max_examples=40, deadline=None)
@given(invoices(), delimiters(status_delimiters, "".join(_DATA_PUNCTUATION)))
def test_any_210_in_5010_validates_and_round_trips_byte_stable(invoice: FreightInvoice, d: Delimiters) -> None:
    sent_in_5010("IM", (invoice_210(invoice, control="0001", version=FIVE),
                        invoice_210(invoice, control="0002", version=FIVE)), d)


def test_a_5010_reference_of_50_characters_is_echoed_in_5010_and_refused_in_4010() -> None:
    long = "R" * 50
    five = tender_of(sample("204_original_5010.edi").replace(b"L11*BOL-778812*BM~", f"L11*{long}*BM~".encode()))
    assert isinstance(five, LoadTender)
    answer = response_990(five, Decision.ACCEPT, scac="HMSH", date=DAY, control="0001", version=FIVE)
    assert f"N9*BM*{long}" in [str(s) for s in answer.segments]
    with pytest.raises(WriteRefused):
        response_990(five, Decision.ACCEPT, scac="HMSH", date=DAY, control="0001")  # 004010: N9-02 is 1 to 30
    event = StatusEvent("X3", datetime(2026, 3, 16, 14, 5, tzinfo=UTC), zone="America/Chicago")
    status = ShipmentStatus("PF-DAL-HOU-0315", long, "HMSH", (event,), (ShipmentReference("BM", long),))
    sent_in_5010("QM", (status_214(status, control="0001", version=FIVE),), Delimiters(repetition="^"))
    with pytest.raises(StatusError):
        status_214(status, control="0001")
    invoice = dataclasses.replace(INVOICE, references=(ShipmentReference("BM", long),))
    sent_in_5010("IM", (invoice_210(invoice, control="0001", version=FIVE),), Delimiters(repetition="^"))
    with pytest.raises(WriteRefused):
        invoice_210(invoice, control="0001")
    with pytest.raises(WriteRefused):
        status_214(status, control="0001", version="003040")


# --- the service, for a 005010 partner -----------------------------------------------------------------------------


def as_5010(data: bytes, *, reference: str) -> bytes:
    """A 004010 interchange of one 204 as its partner's 005010 translator sends it: ISA12 00501 with ISA11 ``^``,
    GS08 005010, ST03, and a bill of lading ``reference`` (004010 holds 30 characters, 005010 50)."""
    (reading,) = read(data)
    ic = reading.interchange
    (group,) = ic.groups
    (transaction,) = group.sets
    body = tuple(Segment.of("L11", reference, "BM") if s.id == "L11" and s.get(2) == "BM" else s
                 for s in transaction.segments)
    five = dataclasses.replace(group, version=FIVE, sets=(dataclasses.replace(
        transaction, segments=body, convention=FIVE),))
    return write(dataclasses.replace(ic, version="00501", groups=(five,),
                                     delimiters=dataclasses.replace(ic.delimiters, repetition="^")))


async def test_a_5010_partner_gets_its_997_and_990_in_5010_and_its_tender_made(mesh, mesh_pki: Pki,
                                                                               tmp_path: Path) -> None:
    config = EdiConfig.from_env({PARTNERS_FILE_ENV: str(EXAMPLE)})
    prairie = config.partners.get("prairie")
    assert prairie is not None
    partner = dataclasses.replace(prairie, version=FIVE)  # the partners file's `version = "005010"`
    folders = PartnerFolders(tmp_path / "edi")
    folders.ensure(p.id for p in config.partners)
    shipment, isa13 = f"PF-{new_id()[-8:].upper()}", f"{random.randrange(10**8, 10**9):09d}"
    reference = f"BOL-{shipment}-" + "7" * 30  # over 004010's 30 characters
    data = as_5010(load_tender_204(shipment, isa13=isa13), reference=reference)
    client = connect_async(mesh.store.url)
    store = EdiStore(client)
    try:
        async with grpc.aio.secure_channel(mesh.address("tender"), mesh_pki.credentials("service", "edi")) as ch:
            stub = tender_service_pb2_grpc.TenderServiceStub(ch)
            outcome = await EdiDesk(
                partners=config.partners, store=store, folders=folders, durable=nothing, lanes=config.lanes,
                archive=RawArchive(str(tmp_path / "archive")), tenders=TenderClient(lambda: stub),
                duplicate_window_seconds=60).receive(partner, f"{shipment}.x12", data)
            (tender_name,) = outcome.tenders
            tender = await stub.GetTender(tender_service_pb2.GetTenderRequest(name=tender_name),
                                          metadata=carrier_metadata(partner.carrier), timeout=10)
        assert tender.tms_load_id == shipment
        out = {p.name: p.read_bytes() for p in folders.folder("prairie", "out").iterdir()}
        (ack_name,) = [n for n in outcome.sent if n.startswith("997_")]
        (ack,) = read(out[ack_name])
        assert ack.interchange.groups[0].version == FIVE
        assert [str(s) for s in ack.interchange.groups[0].sets[0].segments] == [
            f"AK1*SM*{int(isa13)}*005010", "AK2*204*0001*005010", "AK5*A", "AK9*A*1*1*1"]
        (answer_name,) = [n for n in outcome.sent if n.startswith("990_")]
        (sent,) = read(out[answer_name])
        assert sent.problems == () and sent.interchange.version == "00501"
        (group,) = sent.groups
        assert group.problems == () and group.group.version == FIVE and group.accepted_sets == group.sets
        answer = read_990(group.sets[0].transaction, version=FIVE,
                          style=partner.response.decline_style)
        assert answer.shipment_id == shipment and Reference("BM", reference) in answer.references
    finally:
        await client.aclose()
