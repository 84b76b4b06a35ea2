"""Generic HTTP/JSON ↔ gRPC transcoding from the google.api.http annotations (no route per RPC).

A path template such as ``/api/v1/{name=tenders/*}:accept`` or ``/api/v1/{tender.name=tenders/*}``
compiles to a regular expression whose groups fill the named (possibly nested) request fields. The
request message is built from the path variables, the body (``body: "*"`` → the whole request,
``body: "tender"`` → that field) and, for the fields neither binds, the query string. Field names are
exactly the published ones (docs/openapi.json): lowerCamelCase proto-JSON names, in the body and the query; a
snake_case name, or one field set under two names, is refused naming the field. Before parsing, declared
normalizers adapt the TMS's legacy payload (see :data:`NORMALIZERS`), read-only fields are refused (mass
assignment), and the values proto-JSON reads more loosely than the document states (a string for an int32, a
64-bit integer or a Duration outside its published pattern, a query integer that is not a plain decimal) are
refused before the parser sees them.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.runtime import FieldViolation

from .descriptors import Api, HttpBinding, HttpMethod, field_behaviors
from .errors import RestError
from .openapi import DURATION_PATTERN, INT64_PATTERN, UINT64_PATTERN

__all__ = ["MAX_JSON_DEPTH", "NORMALIZERS", "CompiledRoute", "RouteTable", "build_request", "compile_template",
           "parse_json_body", "to_json"]

#: Deepest nesting of objects and arrays a request body may have. The deepest message a request carries is a few
#: levels (a tender's stops' windows); 32 leaves room for google.protobuf.Struct values while keeping the parser and
#: protobuf's own recursion (limit 100) far from Python's stack limit.
MAX_JSON_DEPTH = 32

_FIELD_MASK = "google.protobuf.FieldMask"
# Messages whose proto-JSON form is a string or another non-object: never walked field by field.
_WELL_KNOWN = {
    "google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask",
    "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.Any",
    "google.protobuf.Empty", "google.protobuf.DoubleValue", "google.protobuf.FloatValue",
    "google.protobuf.Int64Value", "google.protobuf.UInt64Value", "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value", "google.protobuf.BoolValue", "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}


@dataclass(frozen=True)
class CompiledRoute:
    """One binding of one method: a regular expression over the path and the fields its groups fill."""

    method: HttpMethod
    binding: HttpBinding
    pattern: re.Pattern[str]
    #: Field path (``tender.name``) of each regex group, in group order (g0, g1, ...).
    variables: tuple[str, ...]


def compile_template(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """Compile an http rule path template (AIP-127 syntax) to a regex and its variables' field paths.

    ``*`` matches one path segment (no ``/``, no ``:`` so a custom verb stays a verb), ``**`` any rest of
    the path; a variable without ``=`` is ``*``. A trailing ``:verb`` is a literal.
    """
    regex = ["^"]
    variables: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch == "{":
            end = template.index("}", i)
            name, _, pattern = template[i + 1:end].partition("=")
            parts = []
            for segment in (pattern or "*").split("/"):
                if segment == "**":
                    parts.append(r"[^:]+")
                elif segment == "*":
                    parts.append(r"[^/:]+")
                else:
                    parts.append(re.escape(segment))
            regex.append(f"(?P<g{len(variables)}>{'/'.join(parts)})")
            variables.append(name.strip())
            i = end + 1
        else:
            regex.append(re.escape(ch))
            i += 1
    regex.append("$")
    return re.compile("".join(regex)), tuple(variables)


class RouteTable:
    """Every binding of every http-annotated method, matched in declaration order.

    Streaming methods are routed too, so that they can answer 501 until Server-Sent Events serve them.
    """

    def __init__(self, api: Api) -> None:
        self.routes: list[CompiledRoute] = []
        for method in api.methods:
            for binding in method.bindings:
                pattern, variables = compile_template(binding.template)
                self.routes.append(CompiledRoute(method, binding, pattern, variables))

    def match(self, verb: str, path: str) -> tuple[CompiledRoute | None, dict[str, str], set[str]]:
        """The route for ``verb path`` with its variables; else None and the verbs the path allows."""
        allowed: set[str] = set()
        for route in self.routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.binding.verb != verb:
                allowed.add(route.binding.verb)
                if route.binding.verb == "GET":  # HEAD is served wherever GET is (RFC 9110 9.3.2)
                    allowed.add("HEAD")
                continue
            return route, {var: m.group(f"g{i}") for i, var in enumerate(route.variables)}, allowed
        return None, {}, allowed


# --- the body ----------------------------------------------------------------------------------------------


class _BodyError(ValueError):
    """A body the strict reader refuses, with the ErrorInfo reason and the field (JSON path) to name."""

    def __init__(self, message: str, reason: str, field: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 8259 leaves duplicate names' meaning to the parser; Python keeps the last and a proxy in front may keep
    # the first, so the one safe answer is to refuse them (RFC 7493, I-JSON).
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _BodyError(f"the request body has the key {key!r} twice", "DUPLICATE_JSON_KEY", key)
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise _BodyError(f"the request body holds {name}, which JSON (RFC 8259) has no number for",
                     "NUMBER_OUT_OF_RANGE")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BodyError(f"the number {text[:40]} is out of range for a double", "NUMBER_OUT_OF_RANGE")
    return value


def _check_depth(value: Any) -> None:
    """Iteratively, so that a body just under the parser's own limit cannot exhaust the stack here either."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise _BodyError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels", "JSON_TOO_DEEP")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))


def parse_json_body(raw: bytes) -> Any:
    """A request body as JSON, strictly (RFC 8259 in UTF-8, I-JSON's unique keys): None when empty, else the
    value; RestError INVALID_ARGUMENT naming what is wrong (encoding, syntax, a key twice, NaN / Infinity or a
    number no double holds, nesting deeper than :data:`MAX_JSON_DEPTH`)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RestError("INVALID_ARGUMENT", f"the request body is not UTF-8 (byte {exc.start}): JSON must be",
                        reason="INVALID_ENCODING") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant,
                           parse_float=_finite)
    except _BodyError as exc:
        raise RestError("INVALID_ARGUMENT", str(exc), reason=exc.reason,
                        violations=[FieldViolation(exc.field, str(exc))] if exc.field else None) from None
    except RecursionError:  # nesting beyond the C parser's stack guard
        raise RestError("INVALID_ARGUMENT", f"the request body nests deeper than {MAX_JSON_DEPTH} levels",
                        reason="JSON_TOO_DEEP") from None
    except ValueError as exc:  # syntax, a BOM, an integer of more digits than Python converts
        raise RestError("INVALID_ARGUMENT", f"the request body is not valid JSON: {exc}",
                        reason="INVALID_JSON") from None
    try:
        _check_depth(value)
    except _BodyError as exc:
        raise RestError("INVALID_ARGUMENT", str(exc), reason=exc.reason) from None
    return value


# --- the TMS's legacy payload ------------------------------------------------------------------------------


def _interval(value: Any) -> Any:
    """An ISO 8601 interval "start/end" as a TimeWindow's proto-JSON; anything else is left for the parser."""
    if isinstance(value, str) and value.count("/") == 1:
        start, end = value.split("/")
        return {"startTime": start.strip(), "endTime": end.strip()}
    return value


@dataclass(frozen=True)
class Normalizer:
    """Declared adaptations of one message's JSON before proto-JSON parsing.

    ``renames``: legacy key → field's JSON name (applied only when the field itself is absent);
    ``values``: field JSON name → function of the sent value (e.g. an interval string to an object).
    Enum fields also accept the TMS codes declared in the enum values' comments (``TMS code: "..."``).
    """

    renames: dict[str, str]
    values: dict[str, Callable[[Any], Any]]


#: The seed's tender payload (``tenderId``, ``pickupWindow: "start/end"``, ``equipment: "53FT_DRYVAN"``) as
#: the Tender message documents it; responses are always in this API's shape.
NORMALIZERS: dict[str, Normalizer] = {
    "haulmesh.tender.v1.Tender": Normalizer(
        renames={"tenderId": "tmsLoadId"},
        values={"pickupWindow": _interval, "deliveryWindow": _interval},
    ),
}


def _camel_mask(value: Any) -> Any:
    """A FieldMask's paths in lowerCamelCase, as proto-JSON wants them; the API documents snake_case too."""
    if not isinstance(value, str):
        return value
    return ",".join(".".join(re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), part) for part in path.split("."))
                    for path in value.split(","))


def _field(descriptor: Descriptor, key: str) -> FieldDescriptor | None:
    """The field named ``key`` in snake_case or lowerCamelCase (path templates name fields in snake_case)."""
    fd = descriptor.fields_by_name.get(key)
    if fd is None:
        fd = _json_field(descriptor, key)
    return fd


def _json_field(descriptor: Descriptor, key: str) -> FieldDescriptor | None:
    """The field whose published (proto-JSON) name is ``key``; None for any other spelling."""
    return next((f for f in descriptor.fields if f.json_name == key), None)


def _not_published(descriptor: Descriptor, key: str, where: str) -> RestError | None:
    """The refusal of ``key`` when it is another spelling (snake_case) of a field: the document names only the
    lowerCamelCase one. None for a published name or a key that names no field (the parser names those)."""
    fd = descriptor.fields_by_name.get(key)
    if fd is None or fd.json_name == key:
        return None
    field = f"{where}{fd.json_name}"
    return RestError("INVALID_ARGUMENT", f"{where}{key} is not a field name of this API: send {field}",
                     reason="INVALID_FIELD_NAME", violations=[FieldViolation(field, f"send it as {fd.json_name}")])


_PLAIN_DECIMAL = re.compile(r"^-?(?:0|[1-9][0-9]*)$")
_INT64_RE, _UINT64_RE, _DURATION_RE = (re.compile(p) for p in (INT64_PATTERN, UINT64_PATTERN, DURATION_PATTERN))
#: The well-known types whose published schema admits null (google.protobuf.Value and the wrappers).
_NULLABLE = {name for name in _WELL_KNOWN if name.endswith("Value")}
_JSON_NUMBER = re.compile(r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$")
_FLOATING = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_32_BIT = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32,
           FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_64_BIT = {FieldDescriptor.TYPE_INT64: _INT64_RE, FieldDescriptor.TYPE_SINT64: _INT64_RE,
           FieldDescriptor.TYPE_SFIXED64: _INT64_RE, FieldDescriptor.TYPE_UINT64: _UINT64_RE,
           FieldDescriptor.TYPE_FIXED64: _UINT64_RE}


def _value_problem(fd: FieldDescriptor, item: Any, *, query: bool = False) -> str:
    """Why ``item`` (one value of ``fd``, from the body or, with ``query``, a query string) is outside what the
    document states, where proto-JSON would read it anyway ("0005" for an int32, "+5" or "0_5" for an int64,
    "+1s" for a Duration); "" when it is not."""
    if item is None:  # proto-JSON reads null as "unset"; the document types no field as nullable but these
        nullable = fd.message_type is not None and fd.message_type.full_name in _NULLABLE
        return "" if nullable else "must not be null (leave the field out instead)"
    if fd.message_type is not None:
        if fd.message_type.full_name == "google.protobuf.Duration" and isinstance(item, str) \
                and not _DURATION_RE.fullmatch(item):
            return "must be a Duration like 90s or 1.5s (a plain decimal of seconds and an s)"
        return ""
    numeric = fd.type in _32_BIT or fd.type in _64_BIT or fd.type in _FLOATING
    if numeric and isinstance(item, bool):
        return "must be a number, not a boolean"
    if fd.type in _FLOATING:
        if query:
            return "" if _JSON_NUMBER.fullmatch(item) else "must be a decimal number"
        return "must be a JSON number, not a string" if isinstance(item, str) else ""
    if fd.type in _32_BIT:
        if query:
            return "" if _PLAIN_DECIMAL.fullmatch(item) else "must be a plain decimal integer"
        return "must be a JSON integer, not a string" if isinstance(item, str) else ""
    pattern = _64_BIT.get(fd.type)
    if pattern is not None and isinstance(item, str) and not pattern.fullmatch(item):
        return "must be a plain decimal integer (a number or its string)"
    return ""


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _is_repeated(fd: FieldDescriptor) -> bool:
    return fd.is_repeated


def _walk(api: Api, descriptor: Descriptor, value: Any, path: str, violations: list[FieldViolation]) -> Any:
    """Normalize ``value`` (the JSON of a ``descriptor`` message) and collect read-only fields it sets."""
    if not isinstance(value, dict) or descriptor.full_name in _WELL_KNOWN:
        return value
    for key in value:
        refusal = _not_published(descriptor, key, _json_path(path))
        if refusal is not None:
            raise refusal
    normalizer = NORMALIZERS.get(descriptor.full_name)
    if normalizer is not None:
        value = dict(value)
        for old, new in normalizer.renames.items():
            if old in value:
                if new in value:  # one field set twice: neither may silently win
                    where = _json_path(path)
                    raise RestError("INVALID_ARGUMENT", f"{where}{old} and {where}{new} are the same field: send "
                                    f"one", reason="DUPLICATE_FIELD",
                                    violations=[FieldViolation(f"{where}{new}", f"also sent as {old}")])
                value[new] = value.pop(old)
        for key, convert in normalizer.values.items():
            if key in value:
                value[key] = convert(value[key])
    out: dict[str, Any] = {}
    for key, item in value.items():
        fd = _json_field(descriptor, key) if isinstance(key, str) else None
        if fd is None:
            out[key] = item  # unknown: the parser names it
            continue
        here = f"{path}{fd.name}"
        for one in item if isinstance(item, list) and fd.is_repeated else [item]:
            problem = _value_problem(fd, one)
            if problem:
                raise RestError("INVALID_ARGUMENT", f"{_json_path(path)}{key} {problem}", reason="INVALID_JSON",
                                violations=[FieldViolation(here, problem)])
        if "OUTPUT_ONLY" in field_behaviors(fd):
            violations.append(FieldViolation(here, f"{here} is output only and cannot be set by a request"))
            out[key] = item
            continue
        if fd.enum_type is not None:
            codes = api.enum_aliases.get(fd.enum_type.full_name, {})
            if isinstance(item, str):
                item = codes.get(item, item)
            elif isinstance(item, list):
                item = [codes.get(v, v) if isinstance(v, str) else v for v in item]
        elif _is_map(fd) and isinstance(item, dict):
            value_fd = fd.message_type.fields_by_name["value"]
            if value_fd.message_type is not None:
                item = {k: _walk(api, value_fd.message_type, v, f"{here}[{k}].", violations) for k, v in item.items()}
        elif fd.message_type is not None and fd.message_type.full_name == _FIELD_MASK:
            item = _camel_mask(item)
        elif fd.message_type is not None:
            if _is_repeated(fd) and isinstance(item, list):
                item = [_walk(api, fd.message_type, v, f"{here}[{i}].", violations) for i, v in enumerate(item)]
            else:
                item = _walk(api, fd.message_type, item, f"{here}.", violations)
        out[key] = item
    return out


def _json_path(path: str) -> str:
    """A violation path (``tender.pickup_window.``) as the body names it (``tender.pickupWindow.``)."""
    return ".".join(re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), part) for part in path.split("."))


# --- building the request ----------------------------------------------------------------------------------


def _resolve(descriptor: Descriptor, dotted: str, *, published: bool = False) -> list[FieldDescriptor] | None:
    """The fields along a dotted path (snake_case or lowerCamelCase segments; with ``published``, as a query
    parameter, only the lowerCamelCase names the document gives), or None if it names none."""
    chain: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for part in dotted.split("."):
        if current is None:
            fd = None
        else:
            fd = _json_field(current, part) if published else _field(current, part)
        if fd is None:
            return None
        chain.append(fd)
        current = fd.message_type
    return chain


def _set_path(target: dict[str, Any], chain: list[FieldDescriptor], value: Any) -> None:
    for fd in chain[:-1]:
        node = target.get(fd.name, target.get(fd.json_name))
        if not isinstance(node, dict):
            node = {}
        target.pop(fd.json_name, None)
        target[fd.name] = node
        target = node
    last = chain[-1]
    if last.json_name != last.name:
        target.pop(last.json_name, None)
    target[last.name] = value


def _query_value(fd: FieldDescriptor, raw: str) -> Any:
    if fd.type == FieldDescriptor.TYPE_BOOL:
        lowered = raw.lower()
        if lowered in {"true", "1"}:
            return True
        if lowered in {"false", "0"}:
            return False
    return raw  # ints, floats, enums, timestamps and strings are all accepted as strings by proto-JSON


def build_request(api: Api, route: CompiledRoute, path_vars: dict[str, str], body: Any,
                  query: list[tuple[str, str]]) -> Message:
    """The request message of ``route``'s method; RestError (INVALID_ARGUMENT) when the input is bad."""
    input_type = route.method.method.input_type
    binding = route.binding
    violations: list[FieldViolation] = []
    data: dict[str, Any] = {}
    if binding.body == "*":
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise RestError("INVALID_ARGUMENT", "the request body must be a JSON object", reason="INVALID_JSON")
        data = _walk(api, input_type, body, "", violations)
    elif binding.body:
        body_fd = input_type.fields_by_name[binding.body]
        if body is not None:
            if body_fd.message_type is not None and not _is_repeated(body_fd):
                body = _walk(api, body_fd.message_type, body, f"{body_fd.name}.", violations)
            data[body_fd.name] = body
    if violations:
        raise RestError("INVALID_ARGUMENT", "the request sets output-only fields", reason="OUTPUT_ONLY_FIELD",
                        violations=violations)
    # Query parameters fill the fields neither the path nor the body binds (none when the body is "*").
    if binding.body != "*":
        repeated: dict[str, list[Any]] = {}
        seen: set[str] = set()
        for key, raw in query:
            chain = _resolve(input_type, key, published=True)
            if chain is None and _resolve(input_type, key) is not None:
                published = ".".join(fd.json_name for fd in _resolve(input_type, key) or [])
                raise RestError("INVALID_ARGUMENT", f"query parameter {key!r} is not a name of this API: send "
                                f"{published}", reason="INVALID_FIELD_NAME",
                                violations=[FieldViolation(published, f"send it as {published}")])
            if chain is None or any(fd.message_type is not None and fd.message_type.full_name not in _WELL_KNOWN
                                    for fd in chain[-1:]):
                raise RestError("INVALID_ARGUMENT", f"unknown query parameter {key!r}", reason="INVALID_ARGUMENT",
                                violations=[FieldViolation(key, "no such field in the request")])
            if binding.body and chain[0].name == binding.body:
                raise RestError("INVALID_ARGUMENT", f"query parameter {key!r} is bound by the body",
                                reason="INVALID_ARGUMENT", violations=[FieldViolation(key, "set it in the body")])
            fd = chain[-1]
            if key in seen and not _is_repeated(fd):
                raise RestError("INVALID_ARGUMENT", f"query parameter {key!r} is sent twice", reason="DUPLICATE_FIELD",
                                violations=[FieldViolation(key, "sent more than once")])
            seen.add(key)
            problem = _value_problem(fd, raw, query=True)
            if problem:
                raise RestError("INVALID_ARGUMENT", f"query parameter {key!r} {problem}", reason="INVALID_ARGUMENT",
                                violations=[FieldViolation(key, problem)])
            value = _camel_mask(raw) if fd.message_type is not None and fd.message_type.full_name == _FIELD_MASK \
                else _query_value(fd, raw)
            if _is_repeated(fd):
                dotted = ".".join(f.name for f in chain)
                repeated.setdefault(dotted, []).append(value)
                _set_path(data, chain, repeated[dotted])
            else:
                _set_path(data, chain, value)
    for var, value in path_vars.items():
        chain = _resolve(input_type, var)
        if chain is None:  # the protos are linted; a template naming no field is a bug of ours
            raise RuntimeError(f"{route.method.method.full_name}: path variable {var} names no field")
        _set_path(data, chain, value)
    message = message_factory.GetMessageClass(input_type)()
    try:
        json_format.ParseDict(data, message)
    except (json_format.ParseError, TypeError, ValueError) as exc:  # any JSON the parser cannot take is the client's
        raise RestError("INVALID_ARGUMENT", f"the request does not match {input_type.full_name}: {exc}",
                        reason="INVALID_JSON") from None
    return message


@functools.cache
def _input_only_plan(descriptor: Descriptor) -> tuple[tuple[str, bool, Descriptor | None], ...]:
    """(json name, drop it?, message to descend into) for the fields of ``descriptor`` that are INPUT_ONLY
    or lead to one; empty for almost every message, so responses pay nothing."""
    plan: list[tuple[str, bool, Descriptor | None]] = []
    _PLANNING.add(descriptor.full_name)
    try:
        for fd in descriptor.fields:
            if "INPUT_ONLY" in field_behaviors(fd):
                plan.append((fd.json_name, True, None))
            elif (fd.message_type is not None and not _is_map(fd) and fd.message_type.full_name not in _PLANNING
                  and _input_only_plan(fd.message_type)):
                plan.append((fd.json_name, False, fd.message_type))
    finally:
        _PLANNING.discard(descriptor.full_name)
    return tuple(plan)


#: Messages whose plan is being built: recursive types (google.protobuf.Value) stop the descent.
_PLANNING: set[str] = set()


def _drop_input_only(value: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    """Remove INPUT_ONLY fields (secrets) from a response, at any depth: they are never returned."""
    for json_name, drop, child in _input_only_plan(descriptor):
        if json_name not in value:
            continue
        if drop:
            del value[json_name]
            continue
        nested = value[json_name]
        for item in nested if isinstance(nested, list) else [nested]:
            if isinstance(item, dict) and child is not None:
                _drop_input_only(item, child)
    return value


def to_json(message: Message) -> dict[str, Any]:
    """A response in proto-JSON (lowerCamelCase; fields without presence printed even when default),
    without INPUT_ONLY fields."""
    return _drop_input_only(json_format.MessageToDict(message, always_print_fields_with_no_presence=True),
                            message.DESCRIPTOR)
