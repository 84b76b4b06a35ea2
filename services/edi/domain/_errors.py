"""One exception root, :class:`X12Error`, and what each kind carries for the acknowledgement it becomes.

The reader never lets these escape for bad input: it collects them on its readings (an interchange's problems
become a TA1, a group's and a set's a 997). They are raised by the writer (:class:`WriteRefused`: data that would
corrupt the document) and by readers of documents that must be whole (:class:`AcknowledgementError`).
"""

from __future__ import annotations

from ._codes import ElementSyntax, GroupSyntax, SegmentSyntax, SetSyntax, Ta1Note

__all__ = [
    "AcknowledgementError",
    "ElementError",
    "GroupError",
    "InterchangeError",
    "SegmentError",
    "SetError",
    "WriteRefused",
    "X12Error",
]


class X12Error(Exception):
    """Root of every error of the X12 layer."""


class WriteRefused(X12Error, ValueError):
    """The writer refuses a value it cannot write faithfully (a delimiter in data, a field of the wrong shape)."""


class AcknowledgementError(X12Error):
    """An inbound 997 or TA1 too malformed to say what it acknowledges."""


class InterchangeError(X12Error):
    """An interchange-level problem: becomes TA1-05 (and TA1-04 ``R`` when :attr:`Ta1Note.rejects`)."""

    def __init__(self, note: Ta1Note, message: str) -> None:
        super().__init__(f"TA1 {note.value}: {message}")
        self.note = note
        self.message = message


class _CodedError(X12Error):
    """A problem named by one code of an acknowledgement's list (the segment it goes in: ``_segment``)."""

    _segment = ""

    def __init__(self, code: GroupSyntax | SetSyntax, message: str) -> None:
        super().__init__(f"{self._segment} {int(code)}: {message}")
        self.code = code
        self.message = message


class GroupError(_CodedError):
    """A functional-group envelope problem: an AK9 syntax code; the group is rejected (AK9-01 ``R``)."""

    _segment = "AK9"
    code: GroupSyntax


class SetError(_CodedError):
    """A transaction-set envelope or content problem: an AK5 syntax code; the set is rejected (AK5-01 ``R``)."""

    _segment = "AK5"
    code: SetSyntax


class ElementError(X12Error):
    """An AK4: the element (and component) position in its segment, its data element number, code, bad value."""

    def __init__(self, position: int, code: ElementSyntax, *, component: int = 0, reference: str = "",
                 value: str = "") -> None:
        where = f"{position}.{component}" if component else str(position)
        super().__init__(f"AK4 {where} ({reference or '?'}): {code.name.lower()} {value!r}")
        self.position = position
        self.component = component
        self.reference = reference
        self.code = code
        self.value = value


class SegmentError(X12Error):
    """An AK3: segment id, its position in the set (ST is 1), loop id, code, and its elements' errors."""

    def __init__(self, segment_id: str, position: int, code: SegmentSyntax, *, loop_id: str = "",
                 elements: tuple[ElementError, ...] = ()) -> None:
        super().__init__(f"AK3 {segment_id}@{position}: {code.name.lower()}"
                         + "".join(f"; {e}" for e in elements))
        self.segment_id = segment_id
        self.position = position
        self.code = code
        self.loop_id = loop_id
        self.elements = elements
