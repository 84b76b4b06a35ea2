"""The 990, Response to a Load Tender: our accept or decline of a 204, and the same read back.

* B1-01 is our SCAC, B1-02 echoes the 204's B2-04 (the join key), B1-03 the answer's date, B1-04 ``A`` accepts and
  ``D`` declines;
* the 204's header references (L11) are echoed as N9s (qualifier and value; an L11 description is not echoed: N9-03
  is shorter), then any ``extra_references`` of ours (e.g. our tender's id under ``CN``);
* 004010's B1 has no decline reason, so a decline's reason code goes where the partner's guide says
  (:class:`DeclineStyle`): K1-01 of the first K1 (Arrive Logistics and others), and/or V9-08 of a V9 whose V9-01
  event code the partner names (Hershey's N9 + V9). A decline carries a reason code; a remark (accept or decline)
  goes in K1s, after the reason: lines of at most 30 characters broken between words, two lines a K1 (read
  back joined by single spaces);
* the set is validated against the 990 schema before it is returned: a value the partner's translator would reject
  (a SCAC of 5 letters, a reason code V9-08 cannot hold, a remark longer than ten K1s) is refused here
  (:class:`WriteRefused`), never sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from ._envelope import TransactionSet
from ._errors import WriteRefused, X12Error
from ._load_tender import LoadTender, Reference
from ._schema import SetSchema, validate
from ._set_990 import SCHEMA_990
from ._sets import schema_for
from ._tokens import Segment
from ._values import format_date, parse_date

__all__ = ["Decision", "DeclineStyle", "TenderResponse", "read_990", "response_990"]

_K1_TEXT = 30
_K1_MOST = 10


class Decision(StrEnum):
    """B1-04: the carrier's answer."""

    ACCEPT = "A"
    DECLINE = "D"


@dataclass(frozen=True)
class DeclineStyle:
    """Where a trading partner wants a decline's reason code (a per-partner option)."""

    #: The reason code in K1-01 of the first K1.
    k1: bool = True
    #: When set, a V9 with this V9-01 event code carries the reason code in V9-08 (three characters).
    v9_event: str = ""

    def __post_init__(self) -> None:
        if not self.k1 and not self.v9_event:
            raise ValueError("a decline's reason goes in K1, V9 or both")


@dataclass(frozen=True)
class TenderResponse:
    """What a 990 says."""

    scac: str
    shipment_id: str
    date: date
    decision: Decision
    references: tuple[Reference, ...] = ()
    reason_code: str = ""
    remark: str = ""


def response_990(tender: LoadTender, decision: Decision | str, *, scac: str, date: date, control: str,
                 reason_code: str | None = None, remark: str | None = None, style: DeclineStyle | None = None,
                 extra_references: tuple[Reference, ...] = (), schema: SetSchema = SCHEMA_990,
                 version: str | None = None) -> TransactionSet:
    """The 990 (ST02 ``control``) answering ``tender``; refuses what the 990 schema would reject. ``version``
    (the partner's GS08) picks the schema; the segments written are the same in 004010 and 005010."""
    if version is not None:
        schema = schema_for("990", version)
    decision = Decision(decision)
    style = style or DeclineStyle()
    if decision is Decision.DECLINE and not reason_code:
        raise WriteRefused("a decline carries a reason code")
    if decision is Decision.ACCEPT and reason_code:
        raise WriteRefused("an accept carries no reason code (a remark may say more)")
    if not tender.shipment_id:
        raise WriteRefused("B1-02 echoes the 204's B2-04, which this tender lacks")
    body = [Segment.of("B1", scac, tender.shipment_id, format_date(date), decision.value)]
    for reference in (*tender.references, *extra_references):
        body.append(Segment.of("N9", reference.qualifier, reference.value))
    if decision is Decision.DECLINE and style.v9_event:
        body.append(Segment.of("V9", style.v9_event, "", "", "", "", "", "", reason_code or ""))
    texts = [reason_code] if decision is Decision.DECLINE and style.k1 and reason_code else []
    texts += _wrap(remark or "")
    if len(texts) > 2 * _K1_MOST:
        raise WriteRefused(f"a remark of {len(remark or '')} characters does not fit in {_K1_MOST} K1s")
    body += [Segment.of("K1", *texts[k:k + 2]) for k in range(0, len(texts), 2)]
    errors = validate(schema, body)
    if errors:
        raise WriteRefused("; ".join(str(e) for e in errors))
    return TransactionSet("990", control, tuple(body))


def _wrap(remark: str) -> list[str]:
    """A remark in lines of at most 30 characters, broken between words (a translator may trim an element's
    edge spaces); runs of white space become one space, a word over 30 characters is cut."""
    lines: list[str] = []
    for word in remark.split():
        while len(word) > _K1_TEXT:
            lines.append(word[:_K1_TEXT])
            word = word[_K1_TEXT:]
        if lines and len(lines[-1]) + 1 + len(word) <= _K1_TEXT and len(lines[-1]) < _K1_TEXT:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def read_990(transaction: TransactionSet, *, style: DeclineStyle | None = None,
             version: str = "004010") -> TenderResponse:
    """A 990 as a :class:`TenderResponse` (the partner's side, and our tests); raises :class:`X12Error` for a set
    that is not a valid 990 of ``version``. ``style`` says where a decline's reason is (K1-01 first when both)."""
    style = style or DeclineStyle()
    if transaction.id != "990":
        raise X12Error(f"set {transaction.id} is not a 990")
    errors = validate(schema_for("990", version), transaction.segments)
    if errors:
        raise X12Error("; ".join(str(e) for e in errors))
    b1 = transaction.segments[0]
    decision = Decision(b1.get(4))
    references = tuple(Reference(s.get(1), s.get(2)) for s in transaction.segments if s.id == "N9")
    texts = [s.get(k) for s in transaction.segments if s.id == "K1" for k in (1, 2) if s.get(k)]
    reason = ""
    if decision is Decision.DECLINE and style.k1 and texts:
        reason, texts = texts[0], texts[1:]
    v9 = next((s for s in transaction.segments if s.id == "V9"), None)
    if decision is Decision.DECLINE and not reason and v9 is not None:
        reason = v9.get(8)
    return TenderResponse(b1.get(1), b1.get(2), parse_date(b1.get(3)), decision, references, reason, " ".join(texts))
