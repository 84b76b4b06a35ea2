"""The envelope: interchanges (ISA/IEA), functional groups (GS/GE), transaction sets (ST/SE); read and write.

Reading never raises for bad input. :func:`read` splits a file into :class:`Reading`\\ s, one per interchange
(several may follow each other, each with its own delimiters), and records every problem where its
acknowledgement needs it: the interchange's as TA1 note codes, a group's as AK9 codes, a set's as AK5 codes and its
schema errors as AK3/AK4. A segment whose id is exactly ``ISA`` starts an interchange; ``ISAAC`` in data never
does, because segments are read one at a time with the current delimiters, never searched for as text.

Bytes are read as Latin-1 (one character a byte), so a byte outside X12's character set reaches the element it is
in and is reported there (AK4 code 6), not as a decoding failure of the whole file.

Writing computes every count (SE01, GE01, IEA01) and trailer echo (SE02, GE02, IEA02), pads the ISA to its fixed
106 characters, and refuses (:class:`WriteRefused`) any field of the wrong shape or data holding a delimiter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._codes import GroupSyntax, SetSyntax, Ta1Note
from ._errors import GroupError, InterchangeError, SetError, WriteRefused
from ._schema import Catalog, SetSchema, validate
from ._sets import CATALOG
from ._tokens import (
    INTERSEGMENT_SPACE,
    SEPARATOR_CHOICES,
    TERMINATOR_CHOICES,
    Delimiters,
    Segment,
    join_segment,
    split_segment,
)

__all__ = [
    "FunctionalGroup",
    "GroupReading",
    "Interchange",
    "Reading",
    "SetReading",
    "Ta1",
    "TransactionSet",
    "echoable_group",
    "read",
    "write",
    "write_text",
]

ISA_LENGTH = 106  # through the segment terminator
#: ISA element lengths, ISA01..ISA15 (ISA16 is the component separator).
_ISA_WIDTHS = (2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1)
_ISA_NOTES = (Ta1Note.INVALID_AUTHORIZATION_QUALIFIER, Ta1Note.INVALID_AUTHORIZATION,
              Ta1Note.INVALID_SECURITY_QUALIFIER, Ta1Note.INVALID_SECURITY, Ta1Note.INVALID_SENDER_QUALIFIER,
              Ta1Note.INVALID_SENDER_ID, Ta1Note.INVALID_RECEIVER_QUALIFIER, Ta1Note.INVALID_RECEIVER_ID,
              Ta1Note.INVALID_DATE, Ta1Note.INVALID_TIME, Ta1Note.INVALID_STANDARDS_ID, Ta1Note.INVALID_VERSION,
              Ta1Note.INVALID_CONTROL_NUMBER, Ta1Note.INVALID_ACK_REQUESTED, Ta1Note.INVALID_TEST_INDICATOR)
_DIGITS = re.compile(r"\d+")
_BOM = ("\ufeff", "\xef\xbb\xbf")
_DEFAULT_DELIMITERS = Delimiters()


def repetition_in_isa11(version: str) -> bool:
    """From ISA12 00402 on, ISA11 is the repetition separator; before, it is the standards id ``U``."""
    return version.isdigit() and version >= "00402"


@dataclass(frozen=True)
class TransactionSet:
    """ST01 (``204``), ST02, the segments between ST and SE, ST03 (005010's implementation convention)."""

    id: str
    control: str
    segments: tuple[Segment, ...] = ()
    convention: str = ""


@dataclass(frozen=True)
class FunctionalGroup:
    """GS01..GS08 and its sets. ``date`` is CCYYMMDD, ``time`` HHMM[SS[D[D]]], ``version`` e.g. ``004010``."""

    functional_id: str
    sender: str
    receiver: str
    date: str
    time: str
    control: str
    version: str
    sets: tuple[TransactionSet, ...] = ()
    agency: str = "X"


@dataclass(frozen=True)
class Ta1:
    """An interchange acknowledgement: TA1-01..03 echo ISA13/09/10; ``ack`` A/E/R; ``note`` TA1-05."""

    control: str
    date: str
    time: str
    ack: str
    note: str = Ta1Note.NO_ERROR.value


@dataclass(frozen=True)
class Interchange:
    """An ISA..IEA. Ids and security fields are held without their padding; ``date`` YYMMDD, ``time`` HHMM."""

    sender_qualifier: str
    sender_id: str
    receiver_qualifier: str
    receiver_id: str
    date: str
    time: str
    control: str
    version: str = "00401"
    ack_requested: str = "0"
    usage: str = "P"
    groups: tuple[FunctionalGroup, ...] = ()
    ta1s: tuple[Ta1, ...] = ()
    delimiters: Delimiters = _DEFAULT_DELIMITERS
    authorization_qualifier: str = "00"
    authorization: str = ""
    security_qualifier: str = "00"
    security: str = ""


# --- reading --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetReading:
    """A received set and what is wrong with it: ``problems`` and ``segment_errors`` reject it; ``noted`` are AK3
    errors confined to what the set's reading does not use (:meth:`SetSchema.tolerates`), which do not."""

    transaction: TransactionSet
    problems: tuple[SetError, ...] = ()
    segment_errors: tuple = ()
    noted: tuple = ()

    @property
    def accepted(self) -> bool:
        """Whether the set is to be acted on (accepted, with noted errors or without)."""
        return not self.problems and not self.segment_errors

    @property
    def status(self) -> str:
        """AK5-01: ``A`` accepted, ``E`` accepted with errors noted, or ``R`` rejected."""
        return "R" if not self.accepted else "E" if self.noted else "A"


@dataclass(frozen=True)
class GroupReading:
    """A received group: its problems, its sets, and GE01 as stated (``None`` when missing or not a number)."""

    group: FunctionalGroup
    problems: tuple[GroupError, ...] = ()
    sets: tuple[SetReading, ...] = ()
    stated_count: int | None = None

    @property
    def accepted_sets(self) -> tuple[SetReading, ...]:
        """The sets to act on: none when the group's envelope is in doubt."""
        return () if self.problems else tuple(s for s in self.sets if s.accepted)


@dataclass(frozen=True)
class Reading:
    """One interchange as read from a file: the interchange (``None`` when no ISA could be read), its problems
    (TA1 note codes), its groups, and where it lies in the file (``span``, character offsets)."""

    interchange: Interchange | None
    problems: tuple[InterchangeError, ...] = ()
    groups: tuple[GroupReading, ...] = ()
    span: tuple[int, int] = (0, 0)
    #: ISA13, ISA09, ISA10 as received (for the TA1 even when the ISA was malformed).
    control: str = ""
    date: str = ""
    time: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the interchange's groups are to be processed (no problem rejects it)."""
        return not any(p.note.rejects for p in self.problems)


@dataclass
class _OpenSet:
    id: str
    control: str
    convention: str
    schema: SetSchema | None
    problems: list[SetError] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


@dataclass
class _OpenGroup:
    header: Segment
    problems: list[GroupError] = field(default_factory=list)
    sets: list[SetReading] = field(default_factory=list)
    controls: set[str] = field(default_factory=set)


def read(data: bytes | str, catalog: Catalog | None = None) -> tuple[Reading, ...]:
    """Every interchange in ``data``, each with its problems; never raises for what the data holds."""
    catalog = catalog or CATALOG
    text = data.decode("latin-1") if isinstance(data, bytes | bytearray) else data
    for bom in _BOM:
        if text.startswith(bom):
            text = text[len(bom):]
    readings: list[Reading] = []
    pos = _skip_space(text, 0)
    while pos < len(text):
        reading, pos = _read_interchange(text, pos, catalog)
        readings.append(reading)
        pos = _skip_space(text, pos)
    return tuple(readings)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in INTERSEGMENT_SPACE:
        pos += 1
    return pos


def _isa_at(text: str, pos: int) -> bool:
    return text.startswith("ISA", pos) and len(text) > pos + 3 and not text[pos + 3].isalnum() \
        and text[pos + 3] not in INTERSEGMENT_SPACE


@dataclass
class _Header:
    fields: list[str]
    delimiters: Delimiters | None
    end: int
    problems: list[InterchangeError]


def _read_isa(text: str, start: int) -> _Header:
    """The ISA's fields and delimiters, split on its element separator (a fixed-width ISA splits at the fixed
    positions; one of another width is read as far as possible, for the TA1, and its wrong fields reported)."""
    def fail(note: Ta1Note, message: str, fields: list[str] | None = None) -> _Header:
        return _Header(fields or [], None, len(text), [InterchangeError(note, message)])

    if not _isa_at(text, start):
        return fail(Ta1Note.INVALID_CONTROL_STRUCTURE, f"no ISA at offset {start}")
    element = text[start + 3]
    separators = [start + 3]
    while len(separators) < 16:
        found = text.find(element, separators[-1] + 1, start + 4 * ISA_LENGTH)
        if found < 0:
            break
        separators.append(found)
    bounds = list(zip(separators, [*separators[1:], len(text)], strict=True))
    fields = [text[a + 1:b] for a, b in bounds[:15]]
    if element not in SEPARATOR_CHOICES:
        return fail(Ta1Note.INVALID_ELEMENT_SEPARATOR, f"element separator {element!r}", fields)
    if len(separators) < 16 or len(text) < separators[15] + 3:
        return fail(Ta1Note.PREMATURE_END, "the file ends inside the ISA", fields)
    component, terminator = text[separators[15] + 1], text[separators[15] + 2]
    end = separators[15] + 3
    if component not in SEPARATOR_CHOICES or component == element:
        return fail(Ta1Note.INVALID_COMPONENT_SEPARATOR, f"component separator {component!r}", fields)
    if terminator not in TERMINATOR_CHOICES or terminator in (element, component):
        return fail(Ta1Note.INVALID_SEGMENT_TERMINATOR, f"segment terminator {terminator!r}", fields)
    problems: list[InterchangeError] = []
    for index, (value, width, note) in enumerate(zip(fields, _ISA_WIDTHS, _ISA_NOTES, strict=True)):
        if len(value) != width or not _isa_field_ok(index, value):
            problems.append(InterchangeError(note, f"ISA{index + 1:02d} {value!r}"))
    version, isa11 = fields[11], fields[10]
    repetition = None
    if repetition_in_isa11(version):
        if isa11 in SEPARATOR_CHOICES and isa11 not in (element, component, terminator):
            repetition = isa11
    elif isa11 != "U" and not any(p.note is Ta1Note.INVALID_STANDARDS_ID for p in problems):
        problems.append(InterchangeError(Ta1Note.INVALID_STANDARDS_ID, f"ISA11 {isa11!r} in version {version}"))
    if version.isdigit() and len(version) == 5 and version[:3] not in ("004", "005"):
        problems.append(InterchangeError(Ta1Note.VERSION_NOT_SUPPORTED, f"ISA12 {version}"))
    line_end = ""
    if terminator not in "\r\n":
        line_end = "\r\n" if text.startswith("\r\n", end) else "\n" if text.startswith("\n", end) else ""
    elif terminator == "\r" and text.startswith("\n", end):
        line_end = "\n"
    delimiters = Delimiters(element, component, terminator, repetition, line_end)
    return _Header(fields, delimiters, end, problems)


def _isa_field_ok(index: int, value: str) -> bool:
    if index == 10:  # the standards id U, or (00402 on) the repetition separator: checked with the delimiters
        return True
    if any(c < " " or c > "~" for c in value):
        return False
    if index in (0, 2):  # qualifiers: two digits
        return value.isdigit()
    if index in (4, 6):
        return value.isalnum()
    if index in (5, 7):
        return bool(value.strip())
    if index == 8:
        return value.isdigit() and _valid_yymmdd(value)
    if index == 9:
        return value.isdigit() and int(value[:2]) < 24 and int(value[2:]) < 60
    if index in (11, 12):
        return value.isdigit()
    if index == 13:
        return value in ("0", "1")
    if index == 14:
        return value in ("P", "T", "I")
    return True


def _valid_yymmdd(value: str) -> bool:
    month, day = int(value[2:4]), int(value[4:6])
    return 1 <= month <= 12 and 1 <= day <= 31


def _read_interchange(text: str, start: int, catalog: Catalog) -> tuple[Reading, int]:
    header = _read_isa(text, start)
    fields = header.fields + [""] * (15 - len(header.fields))
    echo = {"control": fields[12], "date": fields[8], "time": fields[9]}
    d = header.delimiters
    if d is None:
        return Reading(None, tuple(header.problems), (), (start, header.end), **echo), header.end
    problems = header.problems
    groups: list[GroupReading] = []
    ta1s: list = []
    group: _OpenGroup | None = None
    current: _OpenSet | None = None
    iea: Segment | None = None
    pos = header.end
    while True:
        pos = _skip_space(text, pos)
        if pos >= len(text) or _isa_at(text, pos):
            problems.append(InterchangeError(Ta1Note.PREMATURE_END, "no IEA: the interchange is cut short"))
            break
        stop = text.find(d.segment, pos)
        if stop < 0:
            problems.append(InterchangeError(Ta1Note.PREMATURE_END, f"a segment without terminator at {pos}"))
            pos = len(text)
            break
        raw, pos = text[pos:stop], stop + 1
        segment = split_segment(raw, d, current.schema.composites if current and current.schema else None)
        kind = segment.id
        if kind == "IEA":
            iea = segment
            break
        if kind == "SE" and current is not None:
            assert group is not None
            group.sets.append(_close_set(current, segment, d))
            current = None
        elif kind == "ST":
            if group is None:
                problems.append(InterchangeError(Ta1Note.INVALID_CONTENT, "ST outside a functional group"))
                continue
            if current is not None:
                group.sets.append(_close_set(current, None, d))
            current = _open_set(segment, group, catalog)
        elif current is not None and kind not in ("GE", "GS"):
            current.segments.append(segment)
        elif kind == "GS":
            if group is not None:
                groups.append(_close_group(group, None, current, d))
                current = None
            group = _open_group(segment, catalog)
            if not _echoable(segment.get(1), segment.get(6), segment.get(8)):
                problems.append(InterchangeError(Ta1Note.INVALID_CONTENT, f"a GS no 997 can name: {raw[:40]!r}"))
        elif kind == "GE" and group is not None:
            groups.append(_close_group(group, segment, current, d))
            group, current = None, None
        elif kind == "TA1" and group is None and not groups:
            ta1s.append(Ta1(*(segment.get(i) for i in range(1, 6))))
        else:
            problems.append(InterchangeError(Ta1Note.INVALID_CONTENT, f"{kind} where it cannot stand"))
    if group is not None:
        groups.append(_close_group(group, None, current, d))
    if iea is not None:
        if iea.get(1) != str(len(groups)):
            problems.append(InterchangeError(Ta1Note.INVALID_GROUP_COUNT,
                                             f"IEA01 {iea.get(1)!r} for {len(groups)} groups"))
        if iea.get(2) != fields[12]:
            problems.append(InterchangeError(Ta1Note.CONTROL_NUMBER_MISMATCH,
                                             f"IEA02 {iea.get(2)!r}, ISA13 {fields[12]!r}"))
    interchange = Interchange(
        sender_qualifier=fields[4], sender_id=fields[5].rstrip(), receiver_qualifier=fields[6],
        receiver_id=fields[7].rstrip(), date=fields[8], time=fields[9], control=fields[12], version=fields[11],
        ack_requested=fields[13], usage=fields[14], groups=tuple(g.group for g in groups), ta1s=tuple(ta1s),
        delimiters=d, authorization_qualifier=fields[0], authorization=fields[1].rstrip(),
        security_qualifier=fields[2], security=fields[3].rstrip())
    return Reading(interchange, tuple(problems), tuple(groups), (start, pos), **echo), pos


def echoable_group(group: FunctionalGroup) -> bool:
    """Whether a 997 can name the group and answer in its version (GS01 two letters or digits, GS06 1-9 digits,
    GS08 1-12 letters or digits); a group that cannot is answered by the interchange's TA1 (note 024, invalid
    GS) instead."""
    return _echoable(group.functional_id, group.control, group.version)


def _echoable(functional_id: str, control: str, version: str) -> bool:
    return bool(re.fullmatch(r"[A-Z0-9]{2}", functional_id) and re.fullmatch(r"\d{1,9}", control)
                and re.fullmatch(r"[0-9A-Z]{1,12}", version))


def _open_group(gs: Segment, catalog: Catalog) -> _OpenGroup:
    group = _OpenGroup(gs)
    if gs.get(1) not in catalog.functional_ids:
        group.problems.append(GroupError(GroupSyntax.NOT_SUPPORTED, f"GS01 {gs.get(1)!r}"))
    if not catalog.supports_version(gs.get(8)):
        group.problems.append(GroupError(GroupSyntax.VERSION_NOT_SUPPORTED, f"GS08 {gs.get(8)!r}"))
    if not (_DIGITS.fullmatch(gs.get(6)) and len(gs.get(6)) <= 9):
        group.problems.append(GroupError(GroupSyntax.CONTROL_NUMBER_SYNTAX, f"GS06 {gs.get(6)!r}"))
    return group


def _open_set(st: Segment, group: _OpenGroup, catalog: Catalog) -> _OpenSet:
    set_id, control = st.get(1), st.get(2)
    schema = catalog.find(set_id, group.header.get(8))
    opened = _OpenSet(set_id, control, st.get(3), schema)
    if not (len(set_id) == 3 and set_id.isdigit()):
        opened.problems.append(SetError(SetSyntax.INVALID_SET_ID, f"ST01 {set_id!r}"))
    elif schema is None:
        opened.problems.append(SetError(SetSyntax.NOT_SUPPORTED, f"{set_id} in {group.header.get(8)!r}"))
    elif schema.functional_id != group.header.get(1):
        opened.problems.append(SetError(SetSyntax.INVALID_SET_ID, f"{set_id} in a {group.header.get(1)} group"))
    if not 4 <= len(control) <= 9 or any(c < " " or c > "~" for c in control):
        opened.problems.append(SetError(SetSyntax.INVALID_CONTROL_NUMBER, f"ST02 {control!r}"))
    elif control in group.controls:
        opened.problems.append(SetError(SetSyntax.CONTROL_NUMBER_NOT_UNIQUE, f"ST02 {control!r} again"))
    group.controls.add(control)
    return opened


def _close_set(opened: _OpenSet, se: Segment | None, d: Delimiters) -> SetReading:
    problems = list(opened.problems)
    if se is None:
        problems.append(SetError(SetSyntax.TRAILER_MISSING, f"ST {opened.control} has no SE"))
    else:
        if se.get(1) != str(len(opened.segments) + 2):
            problems.append(SetError(SetSyntax.SEGMENT_COUNT_MISMATCH,
                                     f"SE01 {se.get(1)!r}, counted {len(opened.segments) + 2}"))
        if se.get(2) != opened.control:
            problems.append(SetError(SetSyntax.CONTROL_NUMBER_MISMATCH, f"SE02 {se.get(2)!r}, ST02 "
                                     f"{opened.control!r}"))
    errors, noted = (), ()
    if opened.schema is not None:
        found = validate(opened.schema, opened.segments, d)
        errors = tuple(e for e in found if not opened.schema.tolerates(e))
        noted = tuple(e for e in found if opened.schema.tolerates(e))
    if errors:
        problems.append(SetError(SetSyntax.SEGMENTS_IN_ERROR, f"{len(errors)} segment errors"))
    transaction = TransactionSet(opened.id, opened.control, tuple(opened.segments), opened.convention)
    return SetReading(transaction, tuple(problems), errors, noted)


def _close_group(group: _OpenGroup, ge: Segment | None, current: _OpenSet | None, d: Delimiters) -> GroupReading:
    if current is not None:
        group.sets.append(_close_set(current, None, d))
    problems = list(group.problems)
    gs = group.header
    stated = None
    if ge is None:
        problems.append(GroupError(GroupSyntax.TRAILER_MISSING, f"GS {gs.get(6)} has no GE"))
    else:
        stated = int(ge.get(1)) if _DIGITS.fullmatch(ge.get(1)) else None
        if stated != len(group.sets):
            problems.append(GroupError(GroupSyntax.SET_COUNT_MISMATCH,
                                       f"GE01 {ge.get(1)!r} for {len(group.sets)} sets"))
        if ge.get(2) != gs.get(6):
            problems.append(GroupError(GroupSyntax.CONTROL_NUMBER_MISMATCH,
                                       f"GE02 {ge.get(2)!r}, GS06 {gs.get(6)!r}"))
    functional = FunctionalGroup(gs.get(1), gs.get(2), gs.get(3), gs.get(4), gs.get(5), gs.get(6), gs.get(8),
                                 tuple(s.transaction for s in group.sets), gs.get(7))
    return GroupReading(functional, tuple(problems), tuple(group.sets), stated)


# --- writing --------------------------------------------------------------------------------------------------


def write(interchange: Interchange) -> bytes:
    """The interchange as bytes (ASCII), counts and trailers computed; refuses what would not read back."""
    return write_text(interchange).encode("ascii")


def write_text(interchange: Interchange) -> str:
    d = interchange.delimiters
    out = [_isa_text(interchange)]
    for ta1 in interchange.ta1s:
        _require(ta1.control, r"\d{9}", "TA101")
        _require(ta1.date, r"\d{6}", "TA102")
        _require(ta1.time, r"\d{4}", "TA103")
        _require(ta1.ack, r"[AER]", "TA104")
        _require(ta1.note, r"\d{3}", "TA105")
        out.append(join_segment(Segment.of("TA1", ta1.control, ta1.date, ta1.time, ta1.ack, ta1.note), d))
    for group in interchange.groups:
        out.extend(_group_lines(group, d))
    out.append(join_segment(Segment.of("IEA", str(len(interchange.groups)), interchange.control), d))
    end = d.segment + d.line_end
    return end.join(out) + end


def _group_lines(group: FunctionalGroup, d: Delimiters) -> list[str]:
    _require(group.functional_id, r"[A-Z]{2}", "GS01")
    _require(group.sender, r".{2,15}", "GS02")
    _require(group.receiver, r".{2,15}", "GS03")
    _require(group.date, r"\d{8}", "GS04")
    _require(group.time, r"\d{4,8}", "GS05")
    _require(group.control, r"[1-9]\d{0,8}", "GS06")
    _require(group.agency, r"[TX]", "GS07")
    _require(group.version, r"[0-9A-Z]{1,12}", "GS08")
    lines = [join_segment(Segment.of("GS", group.functional_id, group.sender, group.receiver, group.date,
                                     group.time, group.control, group.agency, group.version), d)]
    controls = set()
    for transaction in group.sets:
        _require(transaction.id, r"\d{3}", "ST01")
        _require(transaction.control, r"[ -~]{4,9}", "ST02")
        if transaction.control in controls:
            raise WriteRefused(f"ST02 {transaction.control} twice in group {group.control}")
        controls.add(transaction.control)
        if transaction.convention and not group.version.startswith("005"):
            raise WriteRefused("ST03 exists from 005010 on")
        lines.append(join_segment(Segment.of("ST", transaction.id, transaction.control, transaction.convention), d))
        for segment in transaction.segments:
            if segment.id in ("ISA", "IEA", "GS", "GE", "ST", "SE", "TA1"):
                raise WriteRefused(f"{segment.id} inside set {transaction.control}: the writer makes the envelope")
            lines.append(join_segment(segment, d))
        lines.append(join_segment(Segment.of("SE", str(len(transaction.segments) + 2), transaction.control), d))
    lines.append(join_segment(Segment.of("GE", str(len(group.sets)), group.control), d))
    return lines


def _require(value: str, pattern: str, name: str) -> None:
    if not re.fullmatch(pattern, value):
        raise WriteRefused(f"{name} {value!r} is not {pattern}")


def _isa_text(ic: Interchange) -> str:
    d = ic.delimiters
    if repetition_in_isa11(ic.version):
        if d.repetition is None:
            raise WriteRefused(f"version {ic.version} needs a repetition separator in ISA11")
        isa11 = d.repetition
    else:
        if d.repetition is not None:
            raise WriteRefused(f"version {ic.version} has no repetition separator (ISA11 is U)")
        isa11 = "U"
    values = [
        _padded(ic.authorization_qualifier, 2, "ISA01"), _padded(ic.authorization, 10, "ISA02"),
        _padded(ic.security_qualifier, 2, "ISA03"), _padded(ic.security, 10, "ISA04"),
        _padded(ic.sender_qualifier, 2, "ISA05"), _padded(ic.sender_id, 15, "ISA06"),
        _padded(ic.receiver_qualifier, 2, "ISA07"), _padded(ic.receiver_id, 15, "ISA08"),
        ic.date, ic.time, isa11, ic.version, ic.control, ic.ack_requested, ic.usage,
    ]
    for index, value in enumerate(values):
        if index == 10:
            continue
        if len(value) != _ISA_WIDTHS[index] or not _isa_field_ok(index, value):
            raise WriteRefused(f"ISA{index + 1:02d} {value!r}")
        if any(c in d.reserved for c in value):
            raise WriteRefused(f"ISA{index + 1:02d} {value!r} holds a delimiter")
    text = d.element.join(["ISA", *values, d.component])
    assert len(text) == ISA_LENGTH - 1
    return text


def _padded(value: str, width: int, name: str) -> str:
    if len(value) > width or (value != value.rstrip() and value.strip()):
        raise WriteRefused(f"{name} {value!r}: at most {width} characters, no trailing spaces")
    return value.ljust(width)
