"""Delimiters, segments, and the split and join of one segment.

An interchange names its own delimiters in its ISA: the element separator is the character after ``ISA``
(index 3), the component separator is ISA16 (index 104) and the segment terminator follows it (index 105); from
version 00402 on, ISA11 (index 82) is the repetition separator, before that it is the standards id ``U`` and
never splits data. Between segments a reader skips CR, LF, spaces and tabs, so ``~``, ``~\\n``, ``~\\r\\n`` and a
bare ``\\n`` terminator read alike.

Components are split only where a set's schema says an element is a composite (a simple element holding the
component separator is the schema's to flag); repetitions are not split (no set mapped here repeats an element),
so data is never cut at an ISA11 that is not a separator. Trailing empty elements (and components) are dropped,
as X12 requires of a writer: a segment reads and writes the same way.

Data characters are X12's basic and extended sets: printable ASCII (``0x20``-``0x7E``) less the delimiters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ._errors import WriteRefused

__all__ = [
    "DATA_CHARACTERS",
    "SEPARATOR_CHOICES",
    "TERMINATOR_CHOICES",
    "Delimiters",
    "Element",
    "Segment",
    "join_segment",
    "split_segment",
    "valid_segment_id",
]

#: X12's basic and extended character sets: printable ASCII.
DATA_CHARACTERS = frozenset(chr(c) for c in range(0x20, 0x7F))
#: What may separate elements, components or repetitions: printable ASCII that is neither a letter, a digit nor a
#: space, and the information separators FS/GS/RS/US some translators use.
SEPARATOR_CHOICES = frozenset(c for c in DATA_CHARACTERS if not c.isalnum() and c != " ") | frozenset(
    "\x1c\x1d\x1e\x1f")
#: What may end a segment: a separator character, or CR or LF on their own.
TERMINATOR_CHOICES = SEPARATOR_CHOICES | frozenset("\r\n")
#: Skipped between segments.
INTERSEGMENT_SPACE = " \t\r\n"
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{1,2}")

#: An element: a simple element's text, or a composite's components.
Element = str | tuple[str, ...]


def valid_segment_id(segment_id: str) -> bool:
    """Two or three upper-case letters and digits, starting with a letter."""
    return _SEGMENT_ID.fullmatch(segment_id) is not None


@dataclass(frozen=True)
class Delimiters:
    """The delimiters of one interchange, and what follows each terminator when written (``line_end``)."""

    element: str = "*"
    component: str = ">"
    segment: str = "~"
    #: ISA11 from version 00402 on; ``None`` in 004010, where ISA11 is ``U``.
    repetition: str | None = None
    #: Written after each terminator: ``""``, ``"\n"`` or ``"\r\n"`` (a reader skips any of them).
    line_end: str = ""

    def __post_init__(self) -> None:
        chosen = [self.element, self.component, self.segment] + ([self.repetition] if self.repetition else [])
        if any(len(c) != 1 for c in chosen):
            raise WriteRefused(f"a delimiter is one character: {chosen!r}")
        if self.element not in SEPARATOR_CHOICES or self.component not in SEPARATOR_CHOICES or (
                self.repetition is not None and self.repetition not in SEPARATOR_CHOICES):
            raise WriteRefused(f"not a separator character: {chosen!r}")
        if self.segment not in TERMINATOR_CHOICES:
            raise WriteRefused(f"not a segment terminator: {self.segment!r}")
        if len(set(chosen)) != len(chosen):
            raise WriteRefused(f"delimiters must differ: {chosen!r}")
        allowed_ends = ("", "\n") if self.segment == "\r" else ("",) if self.segment == "\n" else ("", "\n", "\r\n")
        if self.line_end not in allowed_ends:
            raise WriteRefused(f"line end {self.line_end!r} after terminator {self.segment!r}")

    @property
    def reserved(self) -> frozenset[str]:
        """Characters no data element may hold."""
        return frozenset(c for c in (self.element, self.component, self.segment, self.repetition) if c)


@dataclass(frozen=True)
class Segment:
    """A segment: its id and its elements (1-based through :meth:`get`), trailing empty elements dropped."""

    id: str
    elements: tuple[Element, ...] = ()

    @classmethod
    def of(cls, segment_id: str, *elements: Element) -> Segment:
        """A segment in its canonical form (what a reader gives back for what a writer writes)."""
        return cls(segment_id, _trim(tuple(_trim_composite(e) for e in elements)))

    def get(self, position: int) -> str:
        """Element ``position`` (1-based) as text, ``""`` when absent; a composite's first component."""
        if position < 1 or position > len(self.elements):
            return ""
        value = self.elements[position - 1]
        return value if isinstance(value, str) else (value[0] if value else "")

    def component(self, position: int, component: int) -> str:
        """Component ``component`` (1-based) of element ``position``; a simple element is its own component 1."""
        if position < 1 or position > len(self.elements):
            return ""
        value = self.elements[position - 1]
        parts = (value,) if isinstance(value, str) else value
        return parts[component - 1] if 1 <= component <= len(parts) else ""

    def __str__(self) -> str:
        shown = ["|".join(e) if isinstance(e, tuple) else e for e in self.elements]
        return "*".join([self.id, *shown])


def _trim(values: tuple, empty: object = "") -> tuple:
    end = len(values)
    while end and values[end - 1] == empty:
        end -= 1
    return values[:end]


def _trim_composite(value: Element) -> Element:
    if isinstance(value, str):
        return value
    trimmed = _trim(tuple(value))
    return trimmed if trimmed else ""


def split_segment(raw: str, delimiters: Delimiters,
                  composites: Mapping[str, frozenset[int]] | None = None) -> Segment:
    """One segment's text (without its terminator) as a :class:`Segment`.

    ``composites`` maps a segment id to the element positions its schema declares composite; only those split.
    """
    parts = raw.split(delimiters.element)
    segment_id, values = parts[0], parts[1:]
    split_at = (composites or {}).get(segment_id, frozenset())
    elements: list[Element] = []
    for position, value in enumerate(values, 1):
        if position in split_at and value:
            elements.append(_trim_composite(tuple(value.split(delimiters.component))))
        else:
            elements.append(value)
    return Segment(segment_id, _trim(tuple(elements)))


def join_segment(segment: Segment, delimiters: Delimiters) -> str:
    """A segment's text (without its terminator); refuses what would not read back the same."""
    if not valid_segment_id(segment.id):
        raise WriteRefused(f"not a segment id: {segment.id!r}")
    if segment.elements and segment.elements[-1] in ("", ()):
        raise WriteRefused(f"{segment.id}: trailing empty element (build segments with Segment.of)")
    out = [segment.id]
    for position, value in enumerate(segment.elements, 1):
        if isinstance(value, tuple):
            if not value or value[-1] == "":
                raise WriteRefused(f"{segment.id}{position:02d}: trailing empty component")
            for component in value:
                _check_data(segment.id, position, component, delimiters)
            out.append(delimiters.component.join(value))
        else:
            _check_data(segment.id, position, value, delimiters)
            out.append(value)
    return delimiters.element.join(out)


def _check_data(segment_id: str, position: int, value: str, delimiters: Delimiters) -> None:
    reserved = delimiters.reserved
    for char in value:
        if char in reserved:
            raise WriteRefused(f"{segment_id}{position:02d}: {value!r} holds the delimiter {char!r}")
        if char not in DATA_CHARACTERS:
            raise WriteRefused(f"{segment_id}{position:02d}: {value!r} holds {char!r}, outside X12's character set")
