"""Trading partners: who sends us X12, how we answer them, validated from plain data. Plain Python, no I/O.

The service's config reads the partners file (TOML, see services/edi/partners.example.toml) and hands the parsed
mapping to :func:`parse_partners`; this module checks it whole and refuses it with every problem at once
(:class:`PartnerConfigError`, each line naming the partner, the key and what is allowed), so a carrier's typo stops
the start (exit status 2) instead of mis-answering a TMS later. Refused, among others: an ISA id longer than 15
characters, an unknown 990 policy, a carrier id that is not one, duplicate partner ids, two partners with the same
ISA qualifier and id (an inbound interchange must name one partner).

The SFTP door reads :attr:`Partner.ssh_authorized_keys` (OpenSSH ``authorized_keys`` lines) from the same type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from ._response import DeclineStyle
from ._tracking import AckSchedule

__all__ = [
    "ACK_RESEND_MINUTES",
    "CARRIER_ID",
    "STATUS_EVENT_CODES",
    "Partner",
    "PartnerConfigError",
    "Partners",
    "ResponsePolicy",
    "ResponseRule",
    "parse_partners",
]

#: A carrier (tenant) id: the same rule as services/runtime/tokens.py's CARRIER_ID (tests/edi pins they agree).
CARRIER_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: A partner's own id: a folder name under the transport's root, so no dots, slashes or upper case.
_PARTNER_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
#: ISA05/07 interchange id qualifiers X12 defines (01 DUNS, 02 SCAC, 08 UCC, 12 phone, 14 DUNS+4, 16 DUNS+4 ...,
#: ZZ mutually defined), ISA06/08 ids at most 15 characters of X12's basic set.
_ISA_QUALIFIERS = frozenset({"01", "02", "03", "04", "07", "08", "09", "10", "11", "12", "13", "14", "15", "16",
                             "17", "18", "19", "20", "27", "28", "29", "30", "33", "ZZ"})
_ISA_ID = re.compile(r"[A-Z0-9 !&()+,./:?=-]{1,15}")
_GS_ID = re.compile(r"[A-Z0-9 !&()+,./:?=-]{2,15}")
_SCAC = re.compile(r"[A-Z]{2,4}")
_VERSIONS = ("004010", "005010")
#: AT7-01 shipment status codes a partner may ask 214s for (the notes' checklist): arrived at pickup, departed,
#: en route, arrived at delivery, delivered, departed delivery, estimated delivery (ETA), delayed.
STATUS_EVENT_CODES = ("X3", "AF", "X6", "X1", "D1", "CD", "AG", "SD")
#: Default 997 resends: an outbound document without a 997 is resent (a new envelope) at these minutes after it
#: was first sent (the tracking rules, _tracking.AckSchedule, say when it is overdue and given up).
ACK_RESEND_MINUTES = (60, 240)
_REASON_CODE = re.compile(r"[A-Z0-9]{1,3}")
_MAX_KEYS = 32
_MAX_KEY_LENGTH = 16_384


class PartnerConfigError(ValueError):
    """The partners file is refused: :attr:`problems` lists every one, each naming partner, key and what is
    allowed."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


class ResponseRule(StrEnum):
    """How the fleet's offer becomes a 990."""

    #: Accept (AcceptTender, 990 A) when the offer is eligible and its price is within the tolerance of the 204's
    #: offered rate; otherwise decline with :attr:`ResponsePolicy.decline_reason`.
    ACCEPT = "accept"
    #: Always decline, with the reason code (a partner being on-boarded: the 997s flow, no loads are taken).
    DECLINE = "decline"
    #: Send nothing yet: a person in the command centre decides.
    HOLD = "hold"


@dataclass(frozen=True)
class ResponsePolicy:
    """A partner's 990 policy."""

    rule: ResponseRule = ResponseRule.HOLD
    #: How far above the 204's offered rate (L3-05) our price may be, in percent, for an automatic accept. A 204
    #: without a rate is accepted on eligibility alone.
    rate_tolerance_percent: Decimal = Decimal(0)
    #: The reason code of a policy decline (price out of tolerance, or the decline rule): K1-01 / V9-08.
    decline_reason: str = "PRC"
    #: The reason code when the fleet rejected the tender (not eligible) or a stop cannot be placed.
    ineligible_reason: str = "NCA"
    #: Where the partner wants a decline's reason (K1, a V9 event, or both).
    decline_style: DeclineStyle = field(default_factory=DeclineStyle)

    def within_tolerance(self, price: Decimal, offered: Decimal | None) -> bool:
        """Whether ``price`` is acceptable against the 204's ``offered`` rate."""
        if offered is None:
            return True
        return price <= offered * (1 + self.rate_tolerance_percent / 100)


@dataclass(frozen=True)
class Partner:
    """One trading partner: its envelope ids, ours towards it, and how it wants to be answered."""

    id: str
    #: The carrier (tenant) whose loads this partner tenders: the edi service asserts it on every call.
    carrier: str
    #: ISA05/ISA06: the partner's interchange id qualifier and id (ISA06 unpadded).
    isa_qualifier: str
    isa_id: str
    #: GS02 the partner sends (its application sender's code).
    gs_id: str
    #: Our ISA07/ISA08 and GS03 towards this partner (ISA05/06 and GS02 of what we send it).
    our_isa_qualifier: str
    our_isa_id: str
    our_gs_id: str
    #: Our SCAC (B1-01 of the 990, B10-03 of the 214, B3-11 of the 210).
    scac: str
    #: GS08 of what we send: 004010, or 005010.
    version: str = "004010"
    #: ISA15 of what we send: P production, T test.
    usage: str = "P"
    response: ResponsePolicy = field(default_factory=ResponsePolicy)
    #: TA1 wanted for every interchange (besides ISA14=1, and a bad envelope which always gets one).
    ta1_wanted: bool = False
    #: 214s: the AT7-01 codes wanted and the en-route (X6) cadence.
    status_events: tuple[str, ...] = ("X3", "AF", "X1", "D1")
    status_cadence_minutes: int = 60
    #: 997s for our documents: overdue after this many minutes without one (per transmission)...
    ack_deadline_minutes: int = 30
    #: ...resent in a new envelope at these minutes after the first send (none: never), given up after the last.
    ack_resend_minutes: tuple[int, ...] = ACK_RESEND_MINUTES
    #: OpenSSH public keys (``authorized_keys`` lines) allowed to log in as this partner on the SFTP door.
    ssh_authorized_keys: tuple[str, ...] = ()

    @property
    def ack_schedule(self) -> AckSchedule:
        """The partner's 997 habits as the tracking rules take them (services/edi/domain/_tracking.py)."""
        return AckSchedule(self.ack_deadline_minutes, self.ack_resend_minutes)

    @property
    def isa_sender(self) -> tuple[str, str]:
        """(ISA05, ISA06) of this partner's interchanges: how an inbound file is matched to it."""
        return (self.isa_qualifier, self.isa_id)


@dataclass(frozen=True)
class Partners:
    """Every partner, by id and by ISA sender."""

    partners: tuple[Partner, ...] = ()

    def __iter__(self):
        return iter(self.partners)

    def __len__(self) -> int:
        return len(self.partners)

    def get(self, partner_id: str) -> Partner | None:
        return next((p for p in self.partners if p.id == partner_id), None)

    def by_isa(self, qualifier: str, isa_id: str) -> Partner | None:
        """The partner sending as ISA05 ``qualifier`` / ISA06 ``isa_id`` (as read: unpadded)."""
        return next((p for p in self.partners if p.isa_sender == (qualifier, isa_id.strip())), None)


# --- parsing ---------------------------------------------------------------------------------------------------

_TOP_KEYS = frozenset({"partner"})
_PARTNER_KEYS = frozenset({"id", "carrier", "isa_qualifier", "isa_id", "gs_id", "our_isa_qualifier", "our_isa_id",
                           "our_gs_id", "scac", "version", "usage", "ta1", "response", "status", "acknowledgements",
                           "sftp"})
_RESPONSE_KEYS = frozenset({"rule", "rate_tolerance_percent", "decline_reason", "ineligible_reason",
                            "decline_reason_in_k1", "decline_reason_v9_event"})
_STATUS_KEYS = frozenset({"events", "cadence_minutes"})
_ACK_KEYS = frozenset({"resend_after_minutes", "deadline_minutes"})
_SFTP_KEYS = frozenset({"authorized_keys"})
_SSH_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) "
                      r"[A-Za-z0-9+/]+={0,3}( [ -~]*)?")


def parse_partners(data: Mapping[str, Any]) -> Partners:
    """The partners a parsed TOML document (``[[partner]]`` tables) describes; raises :class:`PartnerConfigError`
    with every problem found."""
    problems: list[str] = []
    for key in sorted(set(data) - _TOP_KEYS):
        problems.append(f"unknown top-level key {key!r}: the file holds [[partner]] tables only")
    raw = data.get("partner", [])
    if not isinstance(raw, list) or not all(isinstance(p, Mapping) for p in raw):
        raise PartnerConfigError([*problems, "partner: expected [[partner]] tables"])
    partners: list[Partner] = []
    for index, table in enumerate(raw):
        reader = _Reader(table, f"partner {table.get('id')!r}" if isinstance(table.get("id"), str)
                         else f"partner #{index + 1}", problems)
        partner = reader.partner()
        if partner is not None:
            partners.append(partner)
    _check_unique(partners, problems)
    if problems:
        raise PartnerConfigError(problems)
    return Partners(tuple(partners))


def _check_unique(partners: list[Partner], problems: list[str]) -> None:
    seen_ids: set[str] = set()
    seen_isa: dict[tuple[str, str], str] = {}
    for partner in partners:
        if partner.id in seen_ids:
            problems.append(f"partner {partner.id!r}: id: duplicate partner id (each partner has its own folder)")
        seen_ids.add(partner.id)
        other = seen_isa.get(partner.isa_sender)
        if other is not None and other != partner.id:
            problems.append(f"partner {partner.id!r}: isa_qualifier/isa_id: {partner.isa_qualifier}/"
                            f"{partner.isa_id} is already partner {other!r}'s (an interchange must name one partner)")
        seen_isa.setdefault(partner.isa_sender, partner.id)


class _Reader:
    """Reads one ``[[partner]]`` table, noting each problem with the partner's name and the key."""

    def __init__(self, table: Mapping[str, Any], name: str, problems: list[str]) -> None:
        self.table = table
        self.name = name
        self.problems = problems
        self.before = len(problems)

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{self.name}: {key}: {message}")

    def unknown(self, table: Mapping[str, Any], allowed: frozenset[str], prefix: str = "") -> None:
        for key in sorted(set(table) - allowed):
            self.fail(prefix + key, f"unknown key; allowed: {', '.join(sorted(allowed))}")

    def text(self, table: Mapping[str, Any], key: str, pattern: re.Pattern[str], allowed: str, *,
             default: str | None = None, prefix: str = "") -> str:
        value = table.get(key, default)
        if value is None:
            self.fail(prefix + key, f"required: {allowed}")
            return ""
        if not isinstance(value, str) or not pattern.fullmatch(value):
            self.fail(prefix + key, f"{value!r} is not {allowed}")
            return ""
        return value

    def choice(self, table: Mapping[str, Any], key: str, choices: Sequence[str], default: str, *,
               prefix: str = "") -> str:
        value = table.get(key, default)
        if value not in choices:
            self.fail(prefix + key, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def table_at(self, key: str, allowed: frozenset[str]) -> Mapping[str, Any]:
        value = self.table.get(key, {})
        if not isinstance(value, Mapping):
            self.fail(key, "expected a table")
            return {}
        self.unknown(value, allowed, f"{key}.")
        return value

    def minutes(self, table: Mapping[str, Any], key: str, default: int, prefix: str) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 7 * 24 * 60:
            self.fail(prefix + key, f"{value!r} is not a whole number of minutes from 1 to 10080")
            return default
        return value

    def partner(self) -> Partner | None:
        t = self.table
        self.unknown(t, _PARTNER_KEYS)
        partner_id = self.text(t, "id", _PARTNER_ID, "a partner id: lower-case letters, digits, - and _ (1-40)")
        carrier = self.text(t, "carrier", CARRIER_ID,
                            "a carrier id: lower-case letters, digits and - (1-63), starting with a letter or digit")
        isa_id_rule = "an ISA id: 1-15 characters, upper-case letters, digits, space and !&()+,./:?=-"
        gs_rule = "a GS application id: 2-15 characters, upper-case letters, digits, space and !&()+,./:?=-"
        qualifiers = sorted(_ISA_QUALIFIERS)
        isa_qualifier = self.choice(t, "isa_qualifier", qualifiers, "ZZ")
        isa_id = self.text(t, "isa_id", _ISA_ID, isa_id_rule)
        gs_id = self.text(t, "gs_id", _GS_ID, gs_rule, default=isa_id or None)
        our_qualifier = self.choice(t, "our_isa_qualifier", qualifiers, "ZZ")
        our_isa_id = self.text(t, "our_isa_id", _ISA_ID, isa_id_rule)
        our_gs_id = self.text(t, "our_gs_id", _GS_ID, gs_rule, default=our_isa_id or None)
        scac = self.text(t, "scac", _SCAC, "a SCAC: 2-4 upper-case letters")
        version = self.choice(t, "version", _VERSIONS, "004010")
        usage = self.choice(t, "usage", ("P", "T"), "P")
        ta1 = t.get("ta1", False)
        if not isinstance(ta1, bool):
            self.fail("ta1", f"{ta1!r} is not true or false")
        response = self._response()
        status = self.table_at("status", _STATUS_KEYS)
        events = status.get("events", ["X3", "AF", "X1", "D1"])
        if not isinstance(events, list) or any(e not in STATUS_EVENT_CODES for e in events):
            self.fail("status.events", f"{events!r} is not a list of {', '.join(STATUS_EVENT_CODES)}")
            events = []
        cadence = self.minutes(status, "cadence_minutes", 60, "status.")
        acks = self.table_at("acknowledgements", _ACK_KEYS)
        resend = acks.get("resend_after_minutes", list(ACK_RESEND_MINUTES))
        if (not isinstance(resend, list) or len(resend) > 10
                or any(isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= 10080 for m in resend)
                or resend != sorted(set(resend))):
            self.fail("acknowledgements.resend_after_minutes",
                      f"{resend!r} is not an increasing list of at most 10 minutes from 1 to 10080")
            resend = list(ACK_RESEND_MINUTES)
        deadline = self.minutes(acks, "deadline_minutes", 30, "acknowledgements.")
        keys = self._ssh_keys()
        if len(self.problems) > self.before:
            return None
        return Partner(id=partner_id, carrier=carrier, isa_qualifier=isa_qualifier, isa_id=isa_id, gs_id=gs_id,
                       our_isa_qualifier=our_qualifier, our_isa_id=our_isa_id, our_gs_id=our_gs_id, scac=scac,
                       version=version, usage=usage, response=response, ta1_wanted=bool(ta1),
                       status_events=tuple(events), status_cadence_minutes=cadence,
                       ack_deadline_minutes=deadline, ack_resend_minutes=tuple(resend), ssh_authorized_keys=keys)

    def _response(self) -> ResponsePolicy:
        r = self.table_at("response", _RESPONSE_KEYS)
        rules = [rule.value for rule in ResponseRule]
        rule = self.choice(r, "rule", rules, ResponseRule.HOLD.value, prefix="response.")
        raw = r.get("rate_tolerance_percent", 0)
        tolerance = Decimal(0)
        try:
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise InvalidOperation
            tolerance = Decimal(str(raw))
            if not Decimal(0) <= tolerance <= Decimal(100):
                raise InvalidOperation
        except InvalidOperation:
            self.fail("response.rate_tolerance_percent", f"{raw!r} is not a percentage from 0 to 100")
            tolerance = Decimal(0)
        reason_rule = "a reason code: 1-3 upper-case letters or digits"
        decline = self.text(r, "decline_reason", _REASON_CODE, reason_rule, default="PRC", prefix="response.")
        ineligible = self.text(r, "ineligible_reason", _REASON_CODE, reason_rule, default="NCA", prefix="response.")
        in_k1 = r.get("decline_reason_in_k1", True)
        v9 = r.get("decline_reason_v9_event", "")
        if not isinstance(in_k1, bool):
            self.fail("response.decline_reason_in_k1", f"{in_k1!r} is not true or false")
            in_k1 = True
        if not isinstance(v9, str) or (v9 and not re.fullmatch(r"[A-Z0-9]{2,3}", v9)):
            self.fail("response.decline_reason_v9_event", f"{v9!r} is not a V9-01 event code (2-3 characters)")
            v9 = ""
        if not in_k1 and not v9:
            self.fail("response.decline_reason_in_k1",
                      "false needs decline_reason_v9_event: a decline's reason goes in K1, a V9 or both")
            in_k1 = True
        return ResponsePolicy(ResponseRule(rule), tolerance, decline, ineligible, DeclineStyle(k1=in_k1, v9_event=v9))

    def _ssh_keys(self) -> tuple[str, ...]:
        sftp = self.table_at("sftp", _SFTP_KEYS)
        keys = sftp.get("authorized_keys", [])
        if not isinstance(keys, list) or len(keys) > _MAX_KEYS:
            self.fail("sftp.authorized_keys", f"expected a list of at most {_MAX_KEYS} OpenSSH public keys")
            return ()
        good: list[str] = []
        for k, key in enumerate(keys):
            if not isinstance(key, str) or len(key) > _MAX_KEY_LENGTH or not _SSH_KEY.fullmatch(key.strip()):
                self.fail(f"sftp.authorized_keys[{k}]", "not an OpenSSH public key line "
                          "('ssh-ed25519 AAAA... comment'; ssh-rsa and ecdsa-sha2-nistp* too)")
            else:
                good.append(key.strip())
        return tuple(good)
