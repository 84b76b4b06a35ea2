"""The AIP-160 subset ListTenders accepts: comparisons joined by ``AND``.

Supported: ``state = OFFERED`` (a State name without ``STATE_``; ``!=`` too), ``tms_load_id = "..."``,
``lane.origin_region = "..."``, ``lane.destination_region = "..."`` (``=`` and ``!=``), and ``create_time``
with ``<``, ``<=``, ``>``, ``>=`` against an RFC 3339 timestamp in quotes. Plain Python: no gRPC, no Redis.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from haulmesh.tender.v1 import tender_pb2
from services.runtime import FieldViolation, InvalidArgument

__all__ = ["MAX_FILTER_LENGTH", "TenderFilter", "parse_filter"]

MAX_FILTER_LENGTH = 1000
_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
                    r"""|(?P<op><=|>=|!=|=|<|>)|(?P<word>[A-Za-z0-9_.:+-]+))""")
_STRING_FIELDS = {"tms_load_id": lambda t: t.tms_load_id,
                  "lane.origin_region": lambda t: t.lane.origin_region,
                  "lane.destination_region": lambda t: t.lane.destination_region}
_STATES = {name.removeprefix("STATE_"): value for name, value in tender_pb2.Tender.State.items()
           if name != "STATE_UNSPECIFIED"}


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(f"filter: {message}", reason="INVALID_FILTER",
                           violations=[FieldViolation("filter", message)])


@dataclass
class TenderFilter:
    """A parsed filter: a predicate over tenders and the create-time bounds (ms) it implies."""

    predicates: list[Callable[[tender_pb2.Tender], bool]] = field(default_factory=list)
    #: Tenders created strictly before this (ms), or None.
    before_ms: int | None = None
    #: Tenders created at or after this (ms), or None.
    since_ms: int | None = None

    def __call__(self, tender: tender_pb2.Tender) -> bool:
        return all(p(tender) for p in self.predicates)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _invalid(f"cannot parse near {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _unquote(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value[1:-1])


def _timestamp_ms(value: str) -> int:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _invalid(f"{value!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise _invalid(f"{value!r} needs a time zone offset (e.g. Z)")
    return int(parsed.timestamp() * 1000)


def parse_filter(text: str) -> TenderFilter:
    """Parse ``text``; INVALID_ARGUMENT (INVALID_FILTER) when it does not parse or names another field."""
    result = TenderFilter()
    if len(text) > MAX_FILTER_LENGTH:
        raise _invalid(f"at most {MAX_FILTER_LENGTH} characters")
    tokens = _tokens(text)
    if not tokens:
        return result
    i = 0
    while True:
        if i + 3 > len(tokens):
            raise _invalid("expected <field> <operator> <value>")
        (fk, name), (ok, op), (vk, raw) = tokens[i:i + 3]
        if fk != "word" or ok != "op" or vk == "op":
            raise _invalid("expected <field> <operator> <value>")
        _add(result, name, op, vk, raw)
        i += 3
        if i == len(tokens):
            return result
        if tokens[i] != ("word", "AND"):
            raise _invalid(f"expected AND, got {tokens[i][1]!r} (only AND is supported)")
        i += 1


def _add(result: TenderFilter, name: str, op: str, kind: str, raw: str) -> None:
    value = _unquote(raw) if kind == "str" else raw
    if name == "state":
        state = _STATES.get(value.removeprefix("STATE_"))
        if state is None:
            raise _invalid(f"unknown state {value!r}")
        if op not in {"=", "!="}:
            raise _invalid("state supports = and != only")
        result.predicates.append((lambda t, s=state: t.state == s) if op == "=" else (lambda t, s=state: t.state != s))
    elif name in _STRING_FIELDS:
        if kind != "str":
            raise _invalid(f"{name} needs a quoted string value")
        get = _STRING_FIELDS[name]
        if op not in {"=", "!="}:
            raise _invalid(f"{name} supports = and != only")
        result.predicates.append((lambda t, g=get, v=value: g(t) == v) if op == "=" else
                                 (lambda t, g=get, v=value: g(t) != v))
    elif name == "create_time":
        if kind != "str":
            raise _invalid("create_time needs a quoted RFC 3339 timestamp")
        if op not in {"<", "<=", ">", ">="}:
            raise _invalid("create_time supports <, <=, > and >=")
        ms = _timestamp_ms(value)
        # Index members are at millisecond precision: turn every comparison into [since, before).
        before = {"<": ms, "<=": ms + 1}.get(op)
        since = {">": ms + 1, ">=": ms}.get(op)
        if before is not None:
            result.before_ms = before if result.before_ms is None else min(result.before_ms, before)
        if since is not None:
            result.since_ms = since if result.since_ms is None else max(result.since_ms, since)
        result.predicates.append(_time_predicate(op, ms))
    else:
        raise _invalid(f"unsupported field {name!r} (supported: state, tms_load_id, lane.origin_region, "
                       "lane.destination_region, create_time)")


def _time_predicate(op: str, ms: int) -> Callable[[tender_pb2.Tender], bool]:
    compare = {"<": lambda a: a < ms, "<=": lambda a: a <= ms, ">": lambda a: a > ms, ">=": lambda a: a >= ms}[op]
    return lambda t: compare(t.create_time.ToMilliseconds())
