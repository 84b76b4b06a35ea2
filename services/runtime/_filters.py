"""The AIP-160 subset every List method accepts: comparisons joined by ``AND``.

One grammar for every service, so a TMS learns it once: ``field op value`` where ``field`` is one the method
lists, ``op`` is ``=`` or ``!=`` (strings, enums, booleans; for a repeated enum ``=`` means "has") or any of
``= != < <= > >=`` for times; strings and times are quoted (``"..."`` or ``'...'``, backslash escapes), enum
names and ``true``/``false`` may be bare. ``OR``, ``NOT``, parentheses and functions are refused, never ignored:
INVALID_ARGUMENT with reason INVALID_FILTER and a ``filter`` field violation that says what went wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ._errors import FieldViolation, InvalidArgument

__all__ = ["BOOL_FIELD", "MAX_FILTER_LENGTH", "STRING_FIELD", "TIME_FIELD", "Filter", "FilterField", "enum_field",
           "parse_filter"]

#: Longest filter text accepted (characters).
MAX_FILTER_LENGTH = 1000
_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
                    r"""|(?P<op><=|>=|!=|=|<|>)|(?P<word>[A-Za-z0-9_.:+-]+))""")
_EQUALITY = ("=", "!=")
_ORDER = ("=", "!=", "<", "<=", ">", ">=")


@dataclass(frozen=True)
class FilterField:
    """What one filterable field takes: ``kind`` is "string", "enum", "bool" or "time".

    An enum lists its ``values`` (names without the enum's prefix) and accepts them with ``prefix`` too
    (``STATE_OFFERED`` as well as ``OFFERED``); a ``repeated`` enum matches when the resource has the value.
    """

    kind: str
    values: frozenset[str] = frozenset()
    prefix: str = ""
    repeated: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("string", "enum", "bool", "time"):
            raise ValueError(f"unknown filter field kind {self.kind!r}")


def enum_field(names: Iterable[str], *, prefix: str = "", repeated: bool = False) -> FilterField:
    """An enum field from the generated enum's names (``Tender.State.keys()``): the prefix is taken off and
    the UNSPECIFIED value left out, since no resource is in it."""
    values = frozenset(n.removeprefix(prefix) for n in names if not n.endswith("UNSPECIFIED"))
    return FilterField("enum", values, prefix, repeated)


#: The field kinds that take no options.
STRING_FIELD, BOOL_FIELD, TIME_FIELD = FilterField("string"), FilterField("bool"), FilterField("time")


@dataclass(frozen=True)
class Comparison:
    """One ``field op value``: a str (string, enum), a bool, or an aware UTC datetime (time)."""

    field: str
    op: str
    value: str | bool | datetime


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "=":
        return actual == expected
    if op == "!=":
        return actual != expected
    return {"<": actual < expected, "<=": actual <= expected, ">": actual > expected,
            ">=": actual >= expected}[op]


@dataclass(frozen=True)
class Filter:
    """A parsed filter; empty (matches everything) for an empty text."""

    comparisons: tuple[Comparison, ...] = ()

    def matches(self, values: Mapping[str, object]) -> bool:
        """Whether a resource whose filterable fields are ``values`` satisfies every comparison.

        ``values``: strings and enum names (without prefix) as str, a repeated enum as a set of names, bools,
        times as aware datetimes; None (unset) matches no comparison.
        """
        for c in self.comparisons:
            actual = values.get(c.field)
            if actual is None:
                return False
            if isinstance(actual, (set, frozenset)):
                ok = (c.value in actual) == (c.op == "=")
            else:
                ok = _compare(actual, c.op, c.value)
            if not ok:
                return False
        return True

    def time_range_ms(self, field: str) -> tuple[int | None, int | None]:
        """The half-open range [since, before) in epoch milliseconds that the comparisons on time ``field``
        allow (None: unbounded), for a range scan of an index kept at millisecond precision."""
        since = before = None
        for c in self.comparisons:
            if c.field != field or not isinstance(c.value, datetime):
                continue
            ms = round(c.value.timestamp() * 1000)
            low = {">": ms + 1, ">=": ms, "=": ms}.get(c.op)
            high = {"<": ms, "<=": ms + 1, "=": ms + 1}.get(c.op)
            if low is not None:
                since = low if since is None else max(since, low)
            if high is not None:
                before = high if before is None else min(before, high)
        return since, before

    def __bool__(self) -> bool:
        return bool(self.comparisons)


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(f"filter: {message}", reason="INVALID_FILTER",
                           violations=[FieldViolation("filter", message)])


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos, text = [], 0, text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise _invalid(f"cannot parse near {text[pos:pos + 20]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _value(name: str, spec: FilterField, op: str, kind: str, raw: str) -> str | bool | datetime:
    quoted = kind == "str"
    value = re.sub(r"\\(.)", r"\1", raw[1:-1]) if quoted else raw
    if op not in (_ORDER if spec.kind == "time" else _EQUALITY):
        raise _invalid(f"{name} supports {' '.join(_ORDER if spec.kind == 'time' else _EQUALITY)} only")
    if spec.kind == "string":
        if not quoted:
            raise _invalid(f"{name} takes a value in double quotes")
        return value
    if spec.kind == "time":
        if not quoted:
            raise _invalid(f"{name} takes an RFC 3339 timestamp in quotes")
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise _invalid(f"{value!r} is not an RFC 3339 timestamp") from None
        if when.tzinfo is None:
            raise _invalid(f"{value!r} needs a time zone offset (e.g. Z)")
        return when.astimezone(UTC)
    if spec.kind == "bool":
        if value not in ("true", "false"):
            raise _invalid(f"{name} takes true or false")
        return value == "true"
    name_ = value.removeprefix(spec.prefix) if spec.prefix else value
    if name_ not in spec.values:
        raise _invalid(f"{name} takes one of {', '.join(sorted(spec.values))}; got {value[:40]!r}")
    return name_


def parse_filter(text: str, fields: Mapping[str, FilterField]) -> Filter:
    """Parse ``text`` against the method's ``fields``; INVALID_ARGUMENT (INVALID_FILTER) otherwise."""
    if len(text) > MAX_FILTER_LENGTH:
        raise _invalid(f"at most {MAX_FILTER_LENGTH} characters")
    tokens = _tokens(text)
    comparisons: list[Comparison] = []
    i = 0
    while i < len(tokens):
        if i + 3 > len(tokens):
            raise _invalid("expected <field> <operator> <value>")
        (field_kind, name), (op_kind, op), (value_kind, raw) = tokens[i:i + 3]
        if field_kind != "word" or op_kind != "op" or value_kind == "op":
            raise _invalid("expected <field> <operator> <value> joined by AND")
        spec = fields.get(name)
        if spec is None:
            raise _invalid(f"{name[:40]!r} is not filterable; supported: {', '.join(sorted(fields))}")
        comparisons.append(Comparison(name, op, _value(name, spec, op, value_kind, raw)))
        i += 3
        if i < len(tokens):
            if tokens[i] != ("word", "AND"):
                raise _invalid(f"expected AND, got {tokens[i][1][:20]!r} (only AND is supported)")
            i += 1
            if i == len(tokens):
                raise _invalid("expected a comparison after AND")
    return Filter(tuple(comparisons))
