"""Declarative set schemas and the validator that turns a set's segments into AK3/AK4 errors.

A schema is data: per set, its segments in order (:class:`Seg`: id, mandatory or not, maximum use, elements) and
its loops (:class:`Loop`: id, mandatory or not, maximum repeats, children whose first is the loop's trigger). An
element (:class:`El`) has its data element number, type (``ID``, ``AN``, ``N0``..``N9`` with implied decimals,
``R``, ``DT``, ``TM``), minimum and maximum length, whether it is mandatory, and optionally a code list or a
composite's components. A segment's X12 syntax notes are written as the standard writes them: ``P0304`` (paired),
``R0103`` (at least one), ``E0103`` (at most one), ``C0102`` (if the first then all), ``L010203`` (if the first then
at least one other).

The validator walks the segments once with a stack of loop frames (the way the standard's table is read): a
segment either continues the current frame at or after its position, starts a loop, or closes frames until one
takes it; a segment no frame takes is out of sequence (its id is in the set) or not in the set. Mandatory
segments or loops passed over are reported missing at the position where the reader noticed.

What the set's reading uses is declared here too, beside each element (one place, checked against the reader by
the tests, which corrupt every element and measure what changes): an element has ``used`` (default ``True``), a
segment ``used`` (``False``: the reading looks at neither its presence nor its elements), a segment whose
``elements`` are ``None`` has none the reading reads (at most its presence), and a loop is used when anything in
it is. :meth:`SetSchema.tolerates` says which errors are confined to what the reading does not use: those are
*noted* (AK3/AK4 in the 997, AK5 ``E``) and the set is still acted on; every other error rejects it (AK5 ``R``):

* an element error (AK3 code 8) whose elements are all unused, or (``cut``) text too long that the reading keeps
  cut to its maximum length (an NTE note); a syntax note's error is noted only when every element it names is
  unused; an element beyond the segment's definition (AK4 code 3) is never noted (the segment's shape is in doubt);
* a segment not in the set, or out of sequence (AK3 codes 6, 7), inside a loop the reading skips, when no segment
  of that id is used anywhere in the set (a used one out of place may be data the reading would miss);
* a segment used more often than allowed (code 5), or a loop repeated more often (code 4), that is not used;
* never: an unrecognised segment id (1), a missing mandatory segment (3), an unexpected one (2), nor any problem
  of the set's envelope (SE01 count, control numbers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

from ._codes import ElementSyntax, SegmentSyntax
from ._errors import ElementError, SegmentError
from ._tokens import DATA_CHARACTERS, Delimiters, Element, Segment, valid_segment_id

__all__ = ["Catalog", "El", "Loop", "Seg", "SetSchema", "validate"]

_NUMERIC = re.compile(r"-?\d+")
_DECIMAL = re.compile(r"-?(\d+(\.\d*)?|\.\d+)")
_TYPES = {"ID", "AN", "R", "DT", "TM"} | {f"N{n}" for n in range(10)}
_RULE = re.compile(r"([PRECL])((?:\d\d){2,})")


@dataclass(frozen=True)
class El:
    """A data element (or a composite's component): number, type, lengths, mandatory, codes, components."""

    ref: str
    type: str
    min: int
    max: int
    mandatory: bool = False
    codes: frozenset[str] | None = None
    components: tuple[El, ...] | None = None
    #: Whether the set's reading uses the value (``False``: an error in it is noted, not rejecting).
    used: bool = True
    #: Whether a value over ``max`` is noted and read cut to ``max`` characters (free text only, e.g. NTE-02).
    cut: bool = False

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"element {self.ref}: unknown type {self.type!r}")
        if not 0 < self.min <= self.max:
            raise ValueError(f"element {self.ref}: lengths {self.min}/{self.max}")
        if self.cut and self.type != "AN":
            raise ValueError(f"element {self.ref}: only text (AN) is cut")


@dataclass(frozen=True)
class Seg:
    """A segment's place in a set: id, mandatory, maximum use, its elements (``None``: not checked, and none read
    by the set's reading), syntax notes, and whether the reading uses it at all (``used``)."""

    id: str
    mandatory: bool = False
    max_use: int = 1
    elements: tuple[El, ...] | None = None
    rules: tuple[str, ...] = ()
    used: bool = True

    def __post_init__(self) -> None:
        for rule in self.rules:
            if not _RULE.fullmatch(rule):
                raise ValueError(f"{self.id}: syntax note {rule!r}")

    @property
    def trigger(self) -> str:
        return self.id


@dataclass(frozen=True)
class Loop:
    """A loop: its id (``0300``), mandatory, maximum repeats, children (the first is the trigger segment)."""

    id: str
    children: tuple[Seg | Loop, ...]
    mandatory: bool = False
    max_use: int = 1

    def __post_init__(self) -> None:
        if not self.children or not isinstance(self.children[0], Seg):
            raise ValueError(f"loop {self.id} starts with a segment")

    @property
    def trigger(self) -> str:
        return self.children[0].id

    @property
    def used(self) -> bool:
        """Whether the reading uses anything in the loop."""
        return any(child.used for child in self.children)


@dataclass(frozen=True)
class SetSchema:
    """A transaction set's schema for some versions (GS08's first six characters, e.g. ``004010``)."""

    set_id: str
    functional_id: str
    versions: frozenset[str]
    body: tuple[Seg | Loop, ...]
    #: Composite element positions per segment id (derived).
    composites: dict[str, frozenset[int]] = field(init=False, compare=False)
    #: Every segment id the set knows (derived).
    segment_ids: frozenset[str] = field(init=False, compare=False)
    #: (loop id an AK3 names, segment id) -> the segment or loop it is about; ``None`` where ambiguous (derived).
    _nodes: dict[tuple[str, str], Seg | Loop | None] = field(init=False, compare=False, repr=False)
    #: Loop id -> loop (derived).
    _loops: dict[str, Loop] = field(init=False, compare=False, repr=False)
    #: Segment ids the reading uses somewhere in the set (derived).
    _used_ids: frozenset[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        composites: dict[str, set[int]] = {}
        ids: set[str] = set()
        for seg in _segments(self.body):
            ids.add(seg.id)
            for position, element in enumerate(seg.elements or (), 1):
                if element.components:
                    composites.setdefault(seg.id, set()).add(position)
        object.__setattr__(self, "composites", {k: frozenset(v) for k, v in composites.items()})
        object.__setattr__(self, "segment_ids", frozenset(ids))
        nodes: dict[tuple[str, str], Seg | Loop | None] = {}
        loops: dict[str, Loop] = {}

        def index(children: tuple[Seg | Loop, ...], loop_id: str) -> None:
            # The validator names a segment's errors by the loop whose frame took it: a loop's trigger by the
            # loop itself (its elements) or by the enclosing frame (the loop's repeats).
            for child in children:
                key = (loop_id, child.trigger)
                nodes[key] = child if key not in nodes else None
                if isinstance(child, Loop):
                    loops[child.id] = child
                    index(child.children, child.id)

        index(self.body, "")
        object.__setattr__(self, "_nodes", nodes)
        object.__setattr__(self, "_loops", loops)
        object.__setattr__(self, "_used_ids", frozenset(s.id for s in _segments(self.body) if s.used))

    def tolerates(self, error: SegmentError) -> bool:
        """Whether an AK3 error (with its AK4s) is confined to what the set's reading does not use: noted in the
        997 (AK5 ``E``) while the set is acted on (the rules: the module docstring)."""
        node = self._nodes.get((error.loop_id, error.segment_id))
        if error.code is SegmentSyntax.ELEMENT_ERRORS:
            return isinstance(node, Seg) and bool(error.elements) and all(
                _element_tolerated(node, e) for e in error.elements)
        if error.code in (SegmentSyntax.NOT_IN_SET, SegmentSyntax.OUT_OF_SEQUENCE):
            loop = self._loops.get(error.loop_id)
            return loop is not None and not loop.used and error.segment_id not in self._used_ids
        if error.code is SegmentSyntax.OVER_MAXIMUM_USE:
            return isinstance(node, Seg) and not node.used
        if error.code is SegmentSyntax.LOOP_OVER_MAXIMUM:
            return isinstance(node, Loop) and not node.used
        return False

    def cut(self, segments: Sequence[Segment], errors: Iterable[SegmentError]) -> tuple[Segment, ...]:
        """``segments`` with each tolerated over-long value of a ``cut`` element cut to its maximum length (what
        the reading keeps of a too-long note)."""
        out = list(segments)
        for error in errors:
            node = self._nodes.get((error.loop_id, error.segment_id))
            if not isinstance(node, Seg) or not node.elements or not self.tolerates(error):
                continue
            for element_error in error.elements:
                spec = _element_at(node, element_error.position)
                if spec is None or not spec.cut or element_error.code is not ElementSyntax.TOO_LONG:
                    continue
                segment = out[error.position - 2]
                values = list(segment.elements)
                text = values[element_error.position - 1]
                if isinstance(text, str):
                    values[element_error.position - 1] = text[:spec.max]
                    out[error.position - 2] = Segment(segment.id, tuple(values))
        return tuple(out)


def _element_at(spec: Seg, position: int) -> El | None:
    return spec.elements[position - 1] if spec.elements and 0 < position <= len(spec.elements) else None


def _element_used(spec: Seg, position: int) -> bool:
    element = _element_at(spec, position)
    return spec.used and (element is None or element.used)


def _element_tolerated(spec: Seg, error: ElementError) -> bool:
    if spec.elements is None:  # not checked and not read (at most its presence is)
        return True
    element = _element_at(spec, error.position)
    if element is None:  # beyond the segment's definition: its shape is in doubt
        return False
    if error.code in (ElementSyntax.CONDITIONAL_MISSING, ElementSyntax.EXCLUSION_VIOLATED):
        for rule in spec.rules:
            positions = _rule_positions(rule)
            if error.position in positions and any(_element_used(spec, p) for p in positions):
                return False
    if not _element_used(spec, error.position):
        return True
    return element.cut and error.code is ElementSyntax.TOO_LONG


def _segments(nodes: Iterable[Seg | Loop]) -> Iterable[Seg]:
    for node in nodes:
        if isinstance(node, Seg):
            yield node
        else:
            yield from _segments(node.children)


@dataclass
class _Frame:
    children: tuple[Seg | Loop, ...]
    loop_id: str
    index: int = -1
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.children)

    def find(self, segment_id: str) -> int | None:
        # A loop's own trigger starts its next iteration, which is the enclosing frame's to take.
        for j in range(max(self.index, 1 if self.loop_id else 0), len(self.children)):
            if self.children[j].trigger == segment_id:
                return j
        return None


def validate(schema: SetSchema, segments: Sequence[Segment],
             delimiters: Delimiters | None = None) -> tuple[SegmentError, ...]:
    """The AK3 errors (with their AK4s) of a set's body (the segments between ST and SE; ST is position 1)."""
    errors: list[SegmentError] = []
    stack = [_Frame(schema.body, "")]
    reserved = delimiters.reserved if delimiters else frozenset()

    def missing(frame: _Frame, start: int, stop: int, position: int) -> None:
        for k in range(start, stop):
            child = frame.children[k]
            if child.mandatory and frame.counts[k] == 0:
                errors.append(SegmentError(child.trigger, position, SegmentSyntax.MANDATORY_MISSING,
                                           loop_id=frame.loop_id))

    for offset, segment in enumerate(segments):
        position = offset + 2
        if not valid_segment_id(segment.id):
            errors.append(SegmentError(segment.id[:3] or "?", position, SegmentSyntax.UNRECOGNIZED_ID))
            continue
        depth, j = len(stack) - 1, None
        while depth >= 0:
            j = stack[depth].find(segment.id)
            if j is not None:
                break
            depth -= 1
        if j is None:
            code = SegmentSyntax.OUT_OF_SEQUENCE if segment.id in schema.segment_ids else SegmentSyntax.NOT_IN_SET
            errors.append(SegmentError(segment.id, position, code, loop_id=stack[-1].loop_id))
            continue
        for frame in reversed(stack[depth + 1:]):
            missing(frame, frame.index + 1, len(frame.children), position)
        del stack[depth + 1:]
        frame = stack[depth]
        missing(frame, frame.index + 1, j, position)
        frame.counts[j] = frame.counts[j] + 1 if j == frame.index else 1
        frame.index = j
        child = frame.children[j]
        if frame.counts[j] > child.max_use:
            code = SegmentSyntax.LOOP_OVER_MAXIMUM if isinstance(child, Loop) else SegmentSyntax.OVER_MAXIMUM_USE
            errors.append(SegmentError(segment.id, position, code, loop_id=frame.loop_id))
        if isinstance(child, Loop):
            inner = _Frame(child.children, child.id, index=0)
            inner.counts[0] = 1
            stack.append(inner)
            spec, loop_id = child.children[0], child.id
        else:
            spec, loop_id = child, frame.loop_id
        element_errors = _check_elements(spec, segment, reserved)
        if element_errors:
            errors.append(SegmentError(segment.id, position, SegmentSyntax.ELEMENT_ERRORS, loop_id=loop_id,
                                       elements=element_errors))
    end = len(segments) + 2
    for frame in reversed(stack):
        missing(frame, frame.index + 1, len(frame.children), end)
    return tuple(errors)


def _check_elements(spec: Seg, segment: Segment, reserved: frozenset[str]) -> tuple[ElementError, ...]:
    errors: list[ElementError] = []
    if spec.elements is None:  # not mapped: only the character set is checked
        for position, value in enumerate(segment.elements, 1):
            for k, text in enumerate((value,) if isinstance(value, str) else value, 1):
                if _bad_characters(text, reserved):
                    errors.append(ElementError(position, ElementSyntax.INVALID_CHARACTER,
                                               component=k if isinstance(value, tuple) else 0, value=text))
        return tuple(errors)
    for position, element in enumerate(spec.elements, 1):
        value: Element = segment.elements[position - 1] if position <= len(segment.elements) else ""
        if element.components is None:
            if isinstance(value, tuple):  # cannot happen from the reader; a hand-built segment
                value = value[0] if len(value) == 1 else "\x00"
            code = _check_value(element, value, reserved)
            if code is not None:
                errors.append(ElementError(position, code, reference=element.ref, value=value))
            continue
        parts = (value,) if isinstance(value, str) else value
        if all(p == "" for p in parts):
            if element.mandatory:
                errors.append(ElementError(position, ElementSyntax.MANDATORY_MISSING, reference=element.ref))
            continue
        if len(parts) > len(element.components):
            errors.append(ElementError(position, ElementSyntax.TOO_MANY_ELEMENTS, component=len(element.components)
                                       + 1, reference=element.ref, value=parts[len(element.components)]))
        for k, component in enumerate(element.components, 1):
            text = parts[k - 1] if k <= len(parts) else ""
            code = _check_value(component, text, reserved)
            if code is not None:
                errors.append(ElementError(position, code, component=k, reference=component.ref, value=text))
    if len(segment.elements) > len(spec.elements):
        extra = segment.elements[len(spec.elements)]
        errors.append(ElementError(len(spec.elements) + 1, ElementSyntax.TOO_MANY_ELEMENTS,
                                   value=extra if isinstance(extra, str) else extra[0]))
    present = {p for p, v in enumerate(segment.elements, 1) if v not in ("", ())}
    refs = {p: e.ref for p, e in enumerate(spec.elements, 1)}
    for rule in spec.rules:
        for error in _check_rule(rule, present, refs):
            if not any(e.position == error.position and e.code == error.code for e in errors):
                errors.append(error)
    return tuple(errors)


def _bad_characters(text: str, reserved: frozenset[str]) -> bool:
    return any(c not in DATA_CHARACTERS or c in reserved for c in text)


def _check_value(element: El, value: str, reserved: frozenset[str]) -> ElementSyntax | None:
    if value == "":
        return ElementSyntax.MANDATORY_MISSING if element.mandatory else None
    if _bad_characters(value, reserved):
        return ElementSyntax.INVALID_CHARACTER
    kind = element.type
    length = len(value)
    if kind[0] == "N" or kind == "R":
        if not (_NUMERIC if kind[0] == "N" else _DECIMAL).fullmatch(value):
            return ElementSyntax.INVALID_CHARACTER
        length = sum(c.isdigit() for c in value)
    elif kind == "DT" and not value.isdigit():
        return ElementSyntax.INVALID_DATE
    elif kind == "TM" and not value.isdigit():
        return ElementSyntax.INVALID_TIME
    if length < element.min:
        return ElementSyntax.TOO_SHORT
    if length > element.max:
        return ElementSyntax.TOO_LONG
    if kind == "DT" and not _valid_date(value):
        return ElementSyntax.INVALID_DATE
    if kind == "TM" and not _valid_time(value):
        return ElementSyntax.INVALID_TIME
    if element.codes is not None and value not in element.codes:
        return ElementSyntax.INVALID_CODE
    return None


def _valid_date(value: str) -> bool:
    if len(value) == 6:
        value = ("20" if int(value[:2]) < 50 else "19") + value
    if len(value) != 8:
        return False
    try:
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return False
    return True


def _valid_time(value: str) -> bool:
    if len(value) not in (4, 6, 7, 8):
        return False
    hours, minutes = int(value[:2]), int(value[2:4])
    seconds = int(value[4:6]) if len(value) >= 6 else 0
    return hours < 24 and minutes < 60 and seconds < 60


def _rule_positions(rule: str) -> list[int]:
    """The element positions a syntax note names (``P0304`` -> 3, 4)."""
    match = _RULE.fullmatch(rule)
    assert match is not None  # checked when the schema was built
    digits = match.group(2)
    return [int(digits[i:i + 2]) for i in range(0, len(digits), 2)]


def _check_rule(rule: str, present: set[int], refs: dict[int, str]) -> list[ElementError]:
    kind, positions = rule[0], _rule_positions(rule)
    have = [p for p in positions if p in present]
    lacking = [p for p in positions if p not in present]

    def error(position: int, code: ElementSyntax) -> ElementError:
        return ElementError(position, code, reference=refs.get(position, ""))

    if kind == "P" and have and lacking:
        return [error(p, ElementSyntax.CONDITIONAL_MISSING) for p in lacking]
    if kind == "R" and not have:
        return [error(positions[0], ElementSyntax.CONDITIONAL_MISSING)]
    if kind == "E" and len(have) > 1:
        return [error(have[1], ElementSyntax.EXCLUSION_VIOLATED)]
    if kind == "C" and positions[0] in present and lacking:
        return [error(p, ElementSyntax.CONDITIONAL_MISSING) for p in lacking]
    if kind == "L" and positions[0] in present and not any(p in present for p in positions[1:]):
        return [error(positions[1], ElementSyntax.CONDITIONAL_MISSING)]
    return []


class Catalog:
    """The schemas a reader knows, found by ST01 and GS08 (its first six characters: ``004010VICS`` is 004010)."""

    def __init__(self, schemas: Iterable[SetSchema]) -> None:
        self._by_key: dict[tuple[str, str], SetSchema] = {}
        for schema in schemas:
            for version in schema.versions:
                self._by_key[(schema.set_id, version)] = schema
        self.functional_ids = frozenset(s.functional_id for s in self._by_key.values())
        self.versions = frozenset(v for _, v in self._by_key)

    def find(self, set_id: str, version: str) -> SetSchema | None:
        return self._by_key.get((set_id, version[:6]))

    def supports_version(self, version: str) -> bool:
        return version[:6] in self.versions
