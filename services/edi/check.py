"""``haulmesh edi check FILE --partner P``: the seed's schema compatibility check of a partner's sample 204.

It runs what the service runs on a received file, offline (no store, no mesh, nothing sent): the envelope read and
checked against the partner (the TA1 it would get), each group's 997 as the service would write it, each 204 read
(:func:`read_load_tender`) and mapped (:func:`convert.tender_request`) into the CreateTender request. Then it says,
field by field, what maps where, and what is missing or unsupported.

The field map is not a table kept beside the code (it would drift from it): it is measured on the code itself.
Each element present is changed, one at a time, to another value of its kind (a date a day later, a number one
more, another code of its code list, a text with a letter changed), the 204 is read and mapped again, and the
fields that changed are where that element goes:

* ``mapped``: a field of the tender request changed (``B2-04 → tender.tms_load_id, tender.references[0].value``);
* ``kept``: only the read tender changed (what the 990, 214 and 210 echo, e.g. the bill-to party, the SCAC);
* ``checked``: some other value tried is refused and none reaches the request (a code or qualifier the reading
  decides by, e.g. G62-01, or S5-02: another loading code reads the same, an unloading one on a first stop is
  refused);
* ``ignored``: nothing changed: Haulmesh does not use it (an N7 trailer number, a G61 contact's extension).

A stop's place is the tender service's to resolve (the carrier's facility registry by N1-03/N1-04, else the ZIP
code's centroid): the check says which would be tried, with the centroid from the same offline ``zipcodes`` data.

A set whose errors are all in data the 204 reading does not use is accepted with errors (AK5 ``E``): it is
mapped like an accepted one and its noted errors listed. Exit status 0 when every interchange would be accepted
(TA1 and 997 accepting, with errors noted or without, every 204 mapped to a request), 1
otherwise, 2 for a usage or configuration error. ``--format json`` prints the same report as one JSON object.
The tender service may still refuse what the check passes (an unknown facility without a ZIP, a lane the fleet
does not serve): that is the 990's answer, not the 997's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

import zipcodes
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.runtime import ConfigError
from services.runtime.lanes import LaneFacts, load_lane_facts

from .config import PARTNERS_FILE_ENV, load_partners
from .convert import UPDATE_PATHS, Refusal, tender_request
from .domain import (
    SCHEMA_204,
    El,
    GroupReading,
    LoadTender,
    Loop,
    Partner,
    Purpose,
    Reading,
    Seg,
    Segment,
    SetError,
    SetSyntax,
    Ta1Note,
    TransactionSet,
    acknowledge,
    format_date,
    parse_date,
    read,
    read_997,
    read_load_tender,
    ta1_for,
)

__all__ = ["DEFAULT_PARTNERS_FILE", "ElementUse", "Report", "SetReport", "check", "main"]

#: The partners file when neither --partners-file nor HAULMESH_EDI_PARTNERS_FILE names one.
DEFAULT_PARTNERS_FILE = Path(__file__).with_name("partners.example.toml")
#: How many other codes of a code list are tried for one element (the lists are short; B2-06's has 29).
_MOST_CODES_TRIED = 8
_REQUEST_ID = "edi-check"
#: AK5 / AK9 statuses of a set or group the service acts on (E: errors noted in data it does not use).
_ACCEPTING = ("A", "E")


@dataclass(frozen=True)
class ElementUse:
    """Where one element of the 204 goes (see the module docstring for ``status``)."""

    element: str
    value: str
    status: str
    tender: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    note: str = ""


@dataclass
class SetReport:
    """One transaction set: its 997 verdict and, for a 204 that reads, its map."""

    set_id: str
    control: str
    status: str = ""
    errors: list[str] = field(default_factory=list)
    shipment: str = ""
    purpose: str = ""
    refusal: str = ""
    fields: list[ElementUse] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: What the purpose (B2A-01) makes of the 204: a change's update mask, a cancel's reach.
    notes: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.status in _ACCEPTING and not self.refusal


@dataclass
class Report:
    """The whole file: per interchange, its TA1 verdict, per group its 997, per set its map."""

    partner: str
    file: str
    envelope: list[str] = field(default_factory=list)
    groups: list[dict[str, object]] = field(default_factory=list)
    sets: list[SetReport] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return (not self.envelope and bool(self.sets) and all(s.accepted for s in self.sets)
                and all(g["status"] in _ACCEPTING for g in self.groups))

    def to_dict(self) -> dict[str, object]:
        return {"partner": self.partner, "file": self.file, "accepted": self.accepted, "envelope": self.envelope,
                "groups": self.groups, "sets": [{**dataclasses.asdict(s), "accepted": s.accepted} for s in self.sets]}


# --- the check --------------------------------------------------------------------------------------------------


def check(data: bytes, partner: Partner, lanes: LaneFacts, *, file_name: str = "") -> Report:
    """What the service would do with ``data`` received from ``partner``, and the field map of each 204."""
    report = Report(partner.id, file_name)
    readings = read(data)
    if not readings:
        report.envelope.append("no interchange (no ISA) in the file: kept in failed/, nothing answered")
    for reading in readings:
        if not _envelope(reading, partner, report):
            continue
        for group_reading in reading.groups:
            _group(group_reading, lanes, report)
    return report


def _envelope(reading: Reading, partner: Partner, report: Report) -> bool:
    """Whether the interchange would be read past its envelope; what is wrong with it in ``report.envelope``."""
    ic = reading.interchange
    if ic is None or not reading.accepted:
        ta1 = ta1_for(reading)
        report.envelope.append(f"interchange {reading.control or '?'}: TA1 {ta1.ack} {ta1.note} ("
                               + "; ".join(str(p) for p in reading.problems) + "): nothing in it is read")
        return False
    ours = {"ISA05": (ic.sender_qualifier, partner.isa_qualifier, Ta1Note.INVALID_SENDER_QUALIFIER),
            "ISA06": (ic.sender_id, partner.isa_id, Ta1Note.INVALID_SENDER_ID),
            "ISA07": (ic.receiver_qualifier, partner.our_isa_qualifier, Ta1Note.INVALID_RECEIVER_QUALIFIER),
            "ISA08": (ic.receiver_id, partner.our_isa_id, Ta1Note.UNKNOWN_RECEIVER_ID)}
    for element, (got, expected, note) in ours.items():
        if got != expected:
            report.envelope.append(f"interchange {ic.control}: {element} is {got!r}, partner {partner.id} is "
                                   f"{expected!r} in the partners file: TA1 R {note.value}, nothing in it is read")
            return False
    for problem in reading.problems:  # read on, with a TA1 naming it
        report.envelope.append(f"interchange {ic.control}: {problem} (TA1 {ta1_for(reading).note})")
    return True


def _group(group_reading: GroupReading, lanes: LaneFacts, report: Report) -> None:
    group = group_reading.group
    sets: list = []
    tenders: dict[str, LoadTender] = {}
    for set_reading in group_reading.sets:
        transaction = set_reading.transaction
        if set_reading.accepted and transaction.id == "204":
            result = read_load_tender(transaction, version=group.version)
            if isinstance(result, LoadTender):
                tenders[transaction.control] = result
            else:  # as the service does: the 204's content errors become the set's AK3/AK4s
                set_reading = dataclasses.replace(
                    set_reading, problems=(*set_reading.problems, SetError(
                        SetSyntax.SEGMENTS_IN_ERROR, f"{len(result)} segment errors")),
                    segment_errors=(*set_reading.segment_errors, *result))
        sets.append(set_reading)
    group_reading = dataclasses.replace(group_reading, sets=tuple(sets))
    ack = acknowledge(group_reading, control="0001")
    if ack is None:
        report.groups.append({"control": group.control, "functional_id": group.functional_id, "status": "-",
                              "ack": []})
        return
    verdict = read_997(ack)
    report.groups.append({"control": group.control, "functional_id": group.functional_id, "status": verdict.status,
                          "ack": [str(s) for s in ack.segments]})
    for set_reading in group_reading.sets:
        transaction = set_reading.transaction
        out = SetReport(transaction.id, transaction.control, status=set_reading.status,
                        errors=[str(e) for e in set_reading.segment_errors] + [str(p) for p in set_reading.problems]
                        + [f"noted (not used by Haulmesh): {e}" for e in set_reading.noted])
        report.sets.append(out)
        tender = tenders.get(transaction.control)
        if tender is None:
            if transaction.id != "204":
                out.errors.append(f"a {transaction.id} is not a set Haulmesh reads from a partner (204 and 997 are)")
                out.status = "R" if out.status in _ACCEPTING else out.status
            continue
        out.shipment, out.purpose = tender.shipment_id, tender.purpose.name.lower()
        request: Message | Refusal | None = None
        if tender.purpose is Purpose.CANCEL:  # CancelTender of the shipment's tender: nothing else is read
            out.notes.append(f"a cancel: the tender of shipment {tender.shipment_id} (B2-04) is cancelled; the "
                               "rest of the 204 is not read")
        else:
            request = tender_request(tender, lanes, request_id=_REQUEST_ID)
            if isinstance(request, Refusal):
                out.refusal = request.remark
        if tender.purpose is Purpose.CHANGE:
            out.notes.append("a change updates only " + ", ".join(f"tender.{p}" for p in UPDATE_PATHS)
                               + " of the shipment's tender; other fields stay as first tendered")
        out.fields = list(_field_map(transaction, tender, request, lanes))
        out.missing = _missing(tender) if request is not None else []


# --- the field map, measured --------------------------------------------------------------------------------------


def _field_map(transaction: TransactionSet, tender: LoadTender, request: Message | Refusal | None,
               lanes: LaneFacts) -> Iterator[ElementUse]:
    base_kept = _flat(tender, "load_tender")
    base_tender = _flat(request, "") if isinstance(request, Message) else {}
    places = _placements(request) if isinstance(request, Message) else {}
    specs = _element_specs()
    for index, (label, segment) in enumerate(_labelled(transaction)):
        for position, value in enumerate(segment.elements, start=1):
            if not isinstance(value, str) or not value:
                continue  # composites: none in a 004010 204 that Haulmesh reads
            spec = specs.get((segment.id, position))
            name = f"{label}{segment.id}-{position:02d}"
            tender_paths: set[str] = set()
            kept_paths: set[str] = set()
            refused = 0
            for other in _other_values(value, spec):
                changed = _replace(transaction, index, position, other)
                read_again = read_load_tender(changed)
                if not isinstance(read_again, LoadTender):
                    refused += 1
                    continue
                kept_paths |= _differences(base_kept, _flat(read_again, "load_tender"))
                if request is None:
                    continue
                mapped = tender_request(read_again, lanes, request_id=_REQUEST_ID)
                if isinstance(mapped, Refusal) != isinstance(request, Refusal):
                    refused += 1
                    continue
                if isinstance(mapped, Message):
                    tender_paths |= _differences(base_tender, _flat(mapped, ""))
            if tender_paths:
                status = "mapped"
            elif refused:  # S5-02: another loading code reads the same; an unloading one first is refused
                status = "checked"
            elif kept_paths:
                status = "kept"
            else:
                status = "ignored"
            note = next((places[p] for p in sorted(tender_paths) if p in places), "")
            yield ElementUse(name, value, status, tuple(sorted(tender_paths, key=_path_order)),
                             tuple(sorted(kept_paths, key=_path_order)) if not tender_paths else (), note)


def _labelled(transaction: TransactionSet) -> Iterator[tuple[str, Segment]]:
    """Each segment with the loop it is in: ``N1[BT]/`` for a header party, ``S5[2]/`` for stop 2 (its S5-01)."""
    label = ""
    for segment in transaction.segments:
        if segment.id == "S5":
            label = f"S5[{segment.get(1)}]/"
        elif segment.id == "N1" and not label.startswith("S5"):
            label = f"N1[{segment.get(1)}]/"
        elif segment.id == "L3" or (label.startswith("N1") and segment.id not in _PARTY_SEGMENTS):
            label = ""
        yield label, segment


#: The segments of a header party's N1 loop.
_PARTY_SEGMENTS = frozenset({"N1", "N2", "N3", "N4", "L11", "G61"})


def _element_specs() -> dict[tuple[str, int], El]:
    """(segment id, position) → the 204 schema's element (the same id has the same elements wherever it stands)."""
    found: dict[tuple[str, int], El] = {}

    def walk(nodes: Sequence[Seg | Loop]) -> None:
        for node in nodes:
            if isinstance(node, Loop):
                walk(node.children)
            elif node.elements:
                for k, element in enumerate(node.elements, start=1):
                    found.setdefault((node.id, k), element)

    walk(SCHEMA_204.body)
    return found


def _other_values(value: str, spec: El | None) -> list[str]:
    """Other values of the element's kind to try, a few each way (a later date alone could pass the window's end,
    one other ZIP code could be no ZIP code at all); see the module docstring."""
    kind = spec.type if spec is not None else "AN"
    if spec is not None and spec.codes:
        return sorted(spec.codes - {value})[:_MOST_CODES_TRIED]
    if kind == "DT":
        try:
            day = parse_date(value)
        except ValueError:
            return []
        return [format_date(day + timedelta(days=n))[-len(value):] for n in (1, -1)]
    if kind == "TM" and value[:4].isdigit():
        minutes = int(value[:2]) * 60 + int(value[2:4])
        return [f"{m // 60:02d}{m % 60:02d}{value[4:]}" for m in ((minutes + 1) % 1440, (minutes - 1) % 1440)]
    if kind in ("N0", "N2", "R"):
        try:
            number = Decimal(value)
        except InvalidOperation:
            return []
        return [format(number + n, "f") for n in (1, -1) if number + n >= 0]
    last = value[-1]
    pool = "0123456789" if last.isdigit() else "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    start = pool.find(last.upper())
    return [value[:-1] + pool[(start + n) % len(pool)] for n in (1, -1, 2)]


def _replace(transaction: TransactionSet, index: int, position: int, value: str) -> TransactionSet:
    segment = transaction.segments[index]
    elements = list(segment.elements)
    elements[position - 1] = value
    segments = list(transaction.segments)
    segments[index] = dataclasses.replace(segment, elements=tuple(elements))
    return dataclasses.replace(transaction, segments=tuple(segments))


def _flat(thing: object, path: str) -> dict[str, str]:
    """A read tender (dataclasses) or a request (protobuf) as path → value, for telling what changed."""
    out: dict[str, str] = {}
    if isinstance(thing, Message):
        for descriptor, value in thing.ListFields():
            if descriptor.name == "request_id":
                continue
            inner = f"{path}.{descriptor.name}" if path else descriptor.name
            if descriptor.is_repeated:
                for k, item in enumerate(value):
                    out.update(_flat(item, f"{inner}[{k}]"))
            elif descriptor.enum_type is not None:
                out[inner] = descriptor.enum_type.values_by_number[value].name
            elif isinstance(value, Timestamp):
                out[inner] = value.ToJsonString()
            else:
                out.update(_flat(value, inner))
    elif dataclasses.is_dataclass(thing):
        for item in dataclasses.fields(thing):
            if item.compare:  # not where a segment stood
                out.update(_flat(getattr(thing, item.name), f"{path}.{item.name}"))
    elif isinstance(thing, tuple):
        for k, item in enumerate(thing):
            out.update(_flat(item, f"{path}[{k}]"))
    elif thing is not None and thing != "":
        out[path] = str(thing)
    return out


def _differences(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


def _path_order(path: str) -> tuple[int, str]:
    return (0 if path.startswith(("tender.tms_load_id", "tender.stops")) else 1, path)


def _placements(request: Message) -> dict[str, str]:
    """Each stop's address paths → how the tender service would place it."""
    out: dict[str, str] = {}
    for k, stop in enumerate(request.tender.stops):
        how = []
        if stop.facility_code.code:
            how.append(f"the carrier's facility registry if it holds {stop.facility_code.qualifier} "
                       f"{stop.facility_code.code}")
        postal = stop.address.postal_code[:5]
        found = zipcodes.matching(postal) if len(postal) == 5 and postal.isdigit() else []
        if found:
            how.append(f"ZIP centroid {postal} → {float(found[0]['lat']):.4f}, {float(found[0]['long']):.4f}")
        text = ("placed by " + ", else by ".join(how)) if how else \
            "cannot be placed: no facility code nor known ZIP (STOP_NOT_PLACEABLE, a 990 decline)"
        for path in (f"stops[{k}].address.postal_code", f"stops[{k}].facility_code.code"):
            out[f"tender.{path}"] = text
    return out


def _missing(tender: LoadTender) -> list[str]:
    """Facts a 204 may leave out, and what Haulmesh does without them."""
    out = []
    if tender.offered_rate is None:
        out.append("no offered rate (L3-05): an accepting 990 policy accepts on eligibility alone, no tolerance")
    if not tender.reference("BM"):
        out.append("no bill of lading (L11 qualifier BM): the 210 echoes none")
    for stop in tender.stops:
        if stop.window is None:
            out.append(f"stop {stop.sequence} has no G62 window: it is tendered without one")
    if not tender.commodities:
        out.append("no commodity (L5): the tender carries weight only")
    return out


# --- the command --------------------------------------------------------------------------------------------------


def _text(report: Report) -> str:
    lines = [f"{report.file}: partner {report.partner}"]
    lines += [f"  envelope: {problem}" for problem in report.envelope]
    for group in report.groups:
        lines.append(f"  group {group['control']} ({group['functional_id']}): the 997 would say "
                     f"{group['status']}: " + " / ".join(str(s) for s in group["ack"]))  # type: ignore[attr-defined]
    for out in report.sets:
        head = f"  set {out.set_id} {out.control}"
        if out.shipment:
            head += f", shipment {out.shipment}, {out.purpose}"
        if out.status not in _ACCEPTING:
            verdict = f"REJECTED by its 997 (AK5 {out.status})"
        elif out.refusal:
            verdict = f"{_accepted_by(out)}, then DECLINED by a 990"
        else:
            verdict = {"cancel": "would cancel the shipment's tender",
                       "change": "would update the shipment's tender"}.get(out.purpose, "would become a tender request")
            verdict = f"{_accepted_by(out)}: {verdict}" if out.status == "E" else verdict
        lines.append(f"{head}: {verdict}")
        lines += [f"    note: {n}" for n in out.notes]
        lines += [f"    error: {e}" for e in out.errors]
        if out.refusal:
            lines.append(f"    refused (a 990 decline with the partner's ineligible reason): {out.refusal}")
        for status, title in (("mapped", "maps to the tender"), ("kept", "kept for the 990/214/210, not on the "
                                                                         "tender"),
                              ("checked", "codes the reading decides by (some other values are refused)"),
                              ("ignored", "present, not used by Haulmesh")):
            chosen = [f for f in out.fields if f.status == status]
            if not chosen:
                continue
            lines.append(f"    {title}:")
            width = max(len(f.element) for f in chosen)
            for f in chosen:
                where = ", ".join(f.tender or f.kept)
                lines.append(f"      {f.element:<{width}}  {f.value[:24]!r}" + (f" → {where}" if where else "")
                             + (f" ({f.note})" if f.note else ""))
        if out.missing:
            lines.append("    missing:")
            lines += [f"      {m}" for m in out.missing]
    lines.append(f"result: {'accepted' if report.accepted else 'NOT accepted'}")
    return "\n".join(lines)


def _accepted_by(out: SetReport) -> str:
    return "accepted with errors by its 997 (AK5 E)" if out.status == "E" else "accepted by its 997"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="haulmesh edi check", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="a partner's sample interchange (a 204)")
    parser.add_argument("--partner", required=True, help="the partner id (its [[partner]] id in the partners file)")
    parser.add_argument("--partners-file", type=Path, help=f"the partners file (default ${PARTNERS_FILE_ENV}, else "
                        "services/edi/partners.example.toml)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    partners_file = args.partners_file or Path(os.environ.get(PARTNERS_FILE_ENV) or DEFAULT_PARTNERS_FILE)
    try:
        partners = load_partners(partners_file)
        lanes = load_lane_facts()
        data = args.file.read_bytes()
    except ConfigError as exc:
        print(f"haulmesh edi check: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"haulmesh edi check: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    partner = partners.get(args.partner)
    if partner is None:
        print(f"haulmesh edi check: no partner {args.partner!r} in {partners_file} (partners: "
              f"{', '.join(p.id for p in partners) or 'none'})", file=sys.stderr)
        return 2
    report = check(data, partner, lanes, file_name=str(args.file))
    print(json.dumps(report.to_dict(), indent=2) if args.format == "json" else _text(report))
    return 0 if report.accepted else 1


if __name__ == "__main__":
    sys.exit(main())
