"""The OpenAPI 3.1 document of the REST API, generated from the same descriptors the gateway routes by.

Paths come from the http rules (resource patterns expanded: ``{name=tenders/*}`` becomes
``tenders/{tender}``, so a client never has to send an encoded slash), schemas from the messages with
the proto comments as descriptions, ``OUTPUT_ONLY`` fields are ``readOnly``, ``REQUIRED`` fields
``required``, every operation names its OAuth2 scope, and every error is the ``google.rpc.Status`` schema.
Every limit the server enforces on one field is stated, read from where it lives (resource id patterns from
the runtime's names, page sizes from its paging, field limits from services/runtime/limits.py and the webhook
service's constants), never copied here; answers naming a resource link to the operations on it; the webhook
events are the ``webhooks``; every operation has examples. The /docs page is plain HTML rendered here from
the document (no script, nothing fetched from a CDN).
"""

from __future__ import annotations

import html
import json
import re
import sys
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from haulmesh.events.v1 import event_pb2
from services.runtime import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, resource_id_pattern
from services.runtime.limits import FIELD_SCHEMAS, MESSAGE_SCHEMAS, REQUEST_ID, mask_schema

from ..config import DEFAULT_OAUTH_TOKEN_URL
from ..webhooks import domain as webhooks
from ..webhooks.destinations import MAX_URL_LENGTH
from ..webhooks.domain import INTERNAL_EVENT_TYPES, event_type_for_field
from .descriptors import Api, HttpBinding, HttpMethod, field_behaviors
from .errors import HTTP_STATUS

__all__ = ["DURATION_PATTERN", "INT64_PATTERN", "UINT64_PATTERN", "build_openapi", "decimal_at_most", "dump_openapi",
           "main", "render_docs"]
#: The largest oneof whose "at most one member" rule is spelled out in JSON Schema (as pairs that may not meet).
_MAX_ONEOF_PAIRED = 8

_STATUS_REF = {"$ref": "#/components/schemas/google.rpc.Status"}
_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_UINT32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64}
_UINT64 = {FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}


def decimal_at_most(bound: int) -> str:
    """A regular expression (no anchors) of the decimals 0..``bound`` written without leading zeros: proto-JSON
    sends 64-bit integers as strings, and a pattern is how JSON Schema bounds a string's value."""
    text = str(bound)
    shorter = f"[1-9][0-9]{{0,{len(text) - 2}}}" if len(text) > 2 else "[1-9]" if len(text) == 2 else ""
    options = ["0", *([shorter] if shorter else [])]
    for i, digit in enumerate(text):
        low = 1 if i == 0 else 0
        if int(digit) > low:
            top = int(digit) - 1
            rest = len(text) - i - 1
            options.append(f"{text[:i]}[{low}-{top}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    options.append(text)
    return "(?:" + "|".join(dict.fromkeys(options)) + ")"


#: The published string forms of 64-bit integers and Durations (the REST door refuses any other, transcode.py).
INT64_PATTERN = f"^(?:-{decimal_at_most(2**63)}|{decimal_at_most(2**63 - 1)})$"
UINT64_PATTERN = f"^{decimal_at_most(2**64 - 1)}$"
# google.protobuf.Duration's range: ±315,576,000,000 s (10,000 years), at most 9 fractional digits.
DURATION_PATTERN = rf"^-?{decimal_at_most(315_576_000_000)}(\.[0-9]{{1,9}})?s$"


def _webhook_limits() -> dict[str, dict[str, Any]]:
    """The webhook subscriptions' limits, from the webhook service's own constants (services/gateway/webhooks)."""
    b64 = "[A-Za-z0-9+/]"
    low, high = (n // 3 for n in webhooks.SECRET_BYTES)  # whole base64 quads: 3 bytes each
    tail = f"(?:{b64}{{2}}==|{b64}{{3}}=)"
    # 24 to 64 bytes: 8 to 20 quads and any tail, or 21 quads (63 bytes) and at most a one-byte tail.
    secret = f"^{webhooks.SECRET_PREFIX}(?:(?:{b64}{{4}}){{{low},{high - 1}}}{tail}?|(?:{b64}{{4}}){{{high}}}" \
             f"(?:{b64}{{2}}==)?)$"
    areas = sorted({t.rsplit(".", 1)[0] for t in webhooks.PUBLIC_EVENT_TYPES})
    overlap = webhooks.MAX_OVERLAP_SECONDS
    minutes = {"minimum": 0, "maximum": webhooks.MAX_ETA_POLICY_MINUTES}
    subscription = "haulmesh.gateway.v1.WebhookSubscription"
    return {
        f"{subscription}.display_name": {"maxLength": webhooks.MAX_DISPLAY_NAME},
        f"{subscription}.url": {"maxLength": MAX_URL_LENGTH, "format": "uri",
                                "pattern": rf"^https://[A-Za-z0-9.-]+(?::{decimal_at_most(65535)})?(?:[/?][^\s#]*)?$"},
        f"{subscription}.event_types": {"minItems": 1, "maxItems": webhooks.MAX_EVENT_TYPES, "items": {
            "type": "string", "enum": ["*", *(f"{a}.*" for a in areas), *sorted(webhooks.PUBLIC_EVENT_TYPES)]}},
        f"{subscription}.secret": {"pattern": secret},
        "haulmesh.gateway.v1.RotateWebhookSecretRequest.new_secret": {"pattern": secret},
        "haulmesh.gateway.v1.RotateWebhookSecretRequest.overlap": {
            "pattern": rf"^(?:{decimal_at_most(overlap - 1)}(?:\.[0-9]{{1,9}})?|{overlap}(?:\.0{{1,9}})?)s$"},
        "haulmesh.gateway.v1.UpdateWebhookSubscriptionRequest.update_mask": mask_schema(webhooks.UPDATABLE),
        "haulmesh.gateway.v1.EtaPolicy.min_change_minutes": minutes,
        "haulmesh.gateway.v1.EtaPolicy.cadence_minutes": minutes,
    }


def _with_limits(schema: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """``schema`` narrowed by ``limits``; a 64-bit integer's range goes into both its forms (number, string)."""
    if "anyOf" in schema and schema.get("format") in {"int64", "uint64"} and "maximum" in limits:
        low, high = limits["minimum"], limits["maximum"]
        if low not in (0, 1):  # the string pattern below bounds from 0 or 1 only
            raise ValueError(f"a 64-bit range from {low} cannot be stated")
        digits = decimal_at_most(high) if low == 0 else f"(?!0$){decimal_at_most(high)}"
        rest = {k: v for k, v in limits.items() if k not in {"minimum", "maximum"}}
        return {**schema, **rest, "anyOf": [{"type": "integer", "minimum": low, "maximum": high},
                                            {"type": "string", "pattern": f"^{digits}$"}]}
    return {**schema, **limits}


def _int64_schema(signed: bool) -> dict[str, Any]:
    # proto-JSON writes 64-bit integers as strings and reads either form: both are stated, with the exact range.
    if signed:
        low, high, pattern = -(2**63), 2**63 - 1, INT64_PATTERN
    else:
        low, high, pattern = 0, 2**64 - 1, UINT64_PATTERN
    return {"anyOf": [{"type": "integer", "minimum": low, "maximum": high},
                      {"type": "string", "pattern": pattern}], "format": "int64" if signed else "uint64"}

# Well-known types have a proto-JSON form of their own.
_WKT: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time",
                                  "description": "RFC 3339 timestamp, e.g. 2026-02-01T08:00:00Z."},
    "google.protobuf.Duration": {"type": "string", "pattern": "",  # bounded below, once decimal_at_most exists
                                 "description": "Duration in seconds with an `s` suffix, e.g. `90s`."},
    "google.protobuf.FieldMask": {"type": "string",
                                  "description": "Comma-separated field paths (lowerCamelCase or snake_case)."},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"],
                            "additionalProperties": True},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
    "google.protobuf.FloatValue": {"type": ["number", "null"]},
    "google.protobuf.Int32Value": {"type": ["integer", "null"]},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"]},
    "google.protobuf.Int64Value": {"type": ["string", "integer", "null"]},
    "google.protobuf.UInt64Value": {"type": ["string", "integer", "null"]},
}
_WKT["google.protobuf.Duration"]["pattern"] = DURATION_PATTERN


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    match = re.match(r"(.+?\.)(\s|$)", flat)
    return (match.group(1) if match else flat)[:120]


def _singular(collection: str) -> str:
    if collection.endswith("ies"):
        return collection[:-3] + "y"
    return collection[:-1] if collection.endswith("s") else collection


def expand_template(template: str) -> tuple[str, list[tuple[str, str, str]]]:
    """``/api/v1/{name=tenders/*}:accept`` → (``/api/v1/tenders/{tender}:accept``, [(tender, name, tenders)]).

    Each ``*`` of a variable becomes a path parameter named after the collection before it; the second
    element lists (parameter, field path, collection) in order.
    """
    params: list[tuple[str, str, str]] = []
    used: set[str] = set()

    def variable(match: re.Match[str]) -> str:
        field_path, _, pattern = match.group(1).partition("=")
        segments = (pattern or "*").split("/")
        out = []
        for i, segment in enumerate(segments):
            if segment in {"*", "**"}:
                base = _singular(segments[i - 1]) if i > 0 else field_path.replace(".", "_")
                name, n = base, 2
                while name in used:
                    name, n = f"{base}{n}", n + 1
                used.add(name)
                params.append((name, field_path, segments[i - 1] if i > 0 else ""))
                out.append(f"{{{name}}}")
            else:
                out.append(segment)
        return "/".join(out)

    return re.sub(r"\{([^}]+)\}", variable, template), params


#: Example ids of the collections whose ids are not server-assigned (ULID-like) ones.
_ID_EXAMPLES = {"vehicles": "AU-TRK-1001", "webhookSubscriptions": "01jdq3x0f8c2m5t7v9w1y3z5b7"}
_EXAMPLE_TIME = "2026-12-01T08:00:00Z"
_SAMPLE = re.compile(r"e\.g\.,?\s*[`\"]([^`\"]{1,80})[`\"]")


def _id_example(collection: str) -> str:
    return _ID_EXAMPLES.get(collection, "01jdq3x0f8c2m5t7v9w1y3z5b7")


def _example(schema: dict[str, Any], schemas: dict[str, Any], *, request: bool, depth: int = 0) -> Any:
    """An example value of ``schema``: a request's leaves out read-only fields (which a request may not set)."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if depth > 8:  # eight messages deep: a message that contains itself stops there
            return None
        return _example(schemas[ref.rsplit("/", 1)[1]], schemas, request=request, depth=depth + 1)
    if "allOf" in schema:
        return _example(schema["allOf"][0], schemas, request=request, depth=depth)
    if "const" in schema:
        return schema["const"]
    if "anyOf" in schema and "properties" not in schema:  # a message's anyOf states a rule, not alternatives
        if schema.get("format") in {"int64", "uint64"}:  # a 64-bit integer: its string form, as the API writes it
            return "42"
        return next((v for option in schema["anyOf"]
                     if (v := _example(option, schemas,
                                       request=request, depth=depth)) is not None), None)
    if "enum" in schema:
        values = [v for v in schema["enum"] if not str(v).endswith("_UNSPECIFIED")]
        return (values or schema["enum"])[0]
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), None) if isinstance(kind, list) else kind
    if kind == "object" or "properties" in schema:
        out = {}
        # One member of each oneof: the first.
        skipped = {name for members in schema.get("x-oneof", {}).values() for name in members[1:]}
        for name, sub in schema.get("properties", {}).items():
            if (request and sub.get("readOnly")) or name in skipped:
                continue
            value = _example(sub, schemas, request=request, depth=depth)
            if value is not None:
                out[name] = value
        return out
    if kind == "array":
        item = _example(schema.get("items", {}), schemas, request=request, depth=depth)
        return [] if item is None else [item]
    if kind == "integer":
        return max(int(schema.get("minimum", 0)), 0) if "minimum" in schema else 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return False
    if kind == "string":
        if schema.get("format") == "date-time":
            return _EXAMPLE_TIME
        if schema.get("contentEncoding") == "base64":
            return ""
        pattern = schema.get("pattern")
        sample = _SAMPLE.search(" ".join(str(schema.get("description", "")).split()))
        # The proto comment's own "e.g." value when it fits, else the simplest string the pattern matches.
        if sample and (pattern is None or re.fullmatch(pattern, sample.group(1))):
            return sample.group(1)
        if pattern is not None:
            text = _simplest_match(pattern)
            return text if text is not None and re.fullmatch(pattern, text) else None
        return "example"[:schema.get("maxLength", 7)]
    return None


def _simplest_match(pattern: str) -> str | None:
    """A short string ``pattern`` matches, built from its parse tree (first branch, fewest repeats, first
    character of each set); None for constructs it does not build (the caller checks the result anyway)."""
    from re import _constants as c  # type: ignore[attr-defined]  # the stdlib's own regex parser
    from re import _parser  # type: ignore[attr-defined]

    def build(items: Any) -> str:
        out = []
        for op, arg in items:
            if op is c.LITERAL:
                out.append(chr(arg))
            elif op is c.ANY:
                out.append("a")
            elif op is c.IN:
                first_op, first = arg[0]
                if first_op is c.NEGATE:
                    out.append("x")
                elif first_op is c.LITERAL:
                    out.append(chr(first))
                elif first_op is c.RANGE:
                    out.append(chr(first[0]))
                elif first_op is c.CATEGORY:
                    out.append("0" if first is c.CATEGORY_DIGIT else "a")
                else:
                    raise ValueError(op)
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
                low, _, sub = arg
                out.append(build(sub) * max(low, 1) if low else "")
            elif op is c.SUBPATTERN:
                out.append(build(arg[3]))
            elif op is c.BRANCH:
                out.append(build(arg[1][0]))
            elif op in (c.AT, c.ASSERT, c.ASSERT_NOT):
                continue
            else:
                raise ValueError(op)
        return "".join(out)

    try:
        return build(_parser.parse(pattern))
    except (ValueError, TypeError, IndexError):
        return None


class _Builder:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.schemas: dict[str, Any] = {}
        self.limits = _webhook_limits()

    # --- schemas -------------------------------------------------------------------------------------------

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        if descriptor.full_name in _WKT:
            return dict(_WKT[descriptor.full_name])
        self.message(descriptor)
        return {"$ref": f"#/components/schemas/{descriptor.full_name}"}

    def enum(self, descriptor: EnumDescriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name not in self.schemas:
            lines = [self.api.comment(name)]
            for value in descriptor.values:
                comment = " ".join(self.api.comment(f"{name}.{value.name}").split())
                lines.append(f"* `{value.name}`: {comment}")
            self.schemas[name] = {"type": "string", "enum": [v.name for v in descriptor.values],
                                  "description": "\n".join(lines).strip()}
        return {"$ref": f"#/components/schemas/{name}"}

    def scalar(self, fd: FieldDescriptor) -> dict[str, Any]:
        if fd.enum_type is not None:
            return self.enum(fd.enum_type)
        if fd.message_type is not None:
            return self.ref(fd.message_type)
        t = fd.type
        if t in _INT32:
            return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
        if t in _UINT32:
            return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
        if t in _INT64 or t in _UINT64:
            return _int64_schema(t in _INT64)
        if t in {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}:
            return {"type": "number"}
        if t == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if t == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {"type": "string"}

    def field(self, fd: FieldDescriptor) -> dict[str, Any]:
        if fd.name == "page_size" and fd.type == FieldDescriptor.TYPE_INT32:
            # AIP-158 as services/runtime/_paging.py enforces it: negative refused, 0 the default, larger clamped.
            return {"type": "integer", "format": "int32", "minimum": 0, "maximum": 2**31 - 1,
                    "description": (self.api.comment(fd.full_name) + f"\n\n0 (or absent) means {DEFAULT_PAGE_SIZE};"
                                    f" more than {MAX_PAGE_SIZE} is read as {MAX_PAGE_SIZE}.").strip()}
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            schema: dict[str, Any] = {"type": "object",
                                      "additionalProperties": self.scalar(fd.message_type.fields_by_name["value"])}
        elif fd.is_repeated:
            schema = {"type": "array", "items": self.scalar(fd)}
        else:
            schema = self.scalar(fd)
        # The limits the services enforce, from where they live (services/runtime/limits.py, the webhooks').
        schema = _with_limits(schema, FIELD_SCHEMAS.get(fd.full_name) or self.limits.get(fd.full_name, {}))
        if fd.name == "request_id" and fd.type == FieldDescriptor.TYPE_STRING:
            schema = {"type": "string", "anyOf": [{"const": ""}, {"pattern": REQUEST_ID.pattern}]}
        comment = self.api.comment(fd.full_name)
        if comment:
            schema["description"] = comment
        behaviors = field_behaviors(fd)
        if "REQUIRED" in behaviors and fd.enum_type is not None and not fd.is_repeated:
            # A required enum must be set: its zero value (..._UNSPECIFIED) is refused as absent (AIP-126).
            schema = {"allOf": [schema, {"not": {"const": fd.enum_type.values[0].name}}], **{
                k: v for k, v in schema.items() if k != "$ref"}}
        if "OUTPUT_ONLY" in behaviors:
            schema["readOnly"] = True
        if "IMMUTABLE" in behaviors:
            schema["description"] = (schema.get("description", "") + "\n\nImmutable once set.").strip()
        return schema

    def properties(self, descriptor: Descriptor, exclude: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
        props: dict[str, Any] = {}
        required: list[str] = []
        for fd in descriptor.fields:
            if fd.name in exclude:
                continue
            props[fd.json_name] = self.field(fd)
            if "REQUIRED" in field_behaviors(fd):
                required.append(fd.json_name)
        # Unknown fields are refused (proto-JSON's parser names them), so the schema says so.
        schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = required
        oneofs = {o.name: [f.json_name for f in o.fields if f.name not in exclude]
                  for o in descriptor.oneofs if not (len(o.fields) == 1 and o.name == f"_{o.fields[0].name}")}
        if oneofs:  # proto oneofs: at most one member of each is set (the proto-JSON parser refuses two)
            schema["x-oneof"] = oneofs
            # ... said in JSON Schema too, so that a client's validator (and a fuzzer) knows two are refused: no two
            # members together. Pairs grow as n²: the event envelope's data (dozens of members, output only) keeps
            # the x-oneof note alone.
            pairs = [{"required": [a, b]} for members in oneofs.values() if len(members) <= _MAX_ONEOF_PAIRED
                     for i, a in enumerate(members) for b in members[i + 1:]]
            if pairs:
                schema["not"] = {"anyOf": pairs}
        for key, rule in MESSAGE_SCHEMAS.get(descriptor.full_name, {}).items():
            schema[key] = sorted({*schema.get(key, ()), *rule}) if key == "required" else rule
        comment = self.api.comment(descriptor.full_name)
        if comment:
            schema["description"] = comment
        return schema

    def message(self, descriptor: Descriptor) -> None:
        name = descriptor.full_name
        if name in self.schemas:
            return
        self.schemas[name] = {}  # reserve first: messages may refer to themselves
        self.schemas[name] = self.properties(descriptor)

    # --- operations ----------------------------------------------------------------------------------------

    def query_parameters(self, descriptor: Descriptor, bound: set[str], prefix: str = "",
                         depth: int = 0, root: str = "") -> list[dict[str, Any]]:
        """Fields neither the path nor the body binds, as query parameters (nested ones dotted)."""
        root = root or descriptor.full_name
        params: list[dict[str, Any]] = []
        for fd in descriptor.fields:
            path = f"{prefix}{fd.name}"
            if path in bound or "OUTPUT_ONLY" in field_behaviors(fd):
                continue
            if fd.message_type is not None and fd.message_type.full_name not in _WKT:
                if not fd.is_repeated and depth < 2:
                    params.extend(self.query_parameters(fd.message_type, bound, f"{path}.", depth + 1, root))
                continue
            schema = _with_limits(self.field(fd), FIELD_SCHEMAS.get(f"{root}.{path}", {}))
            description = schema.pop("description", "")
            params.append({"name": _camel_path(path), "in": "query",
                           "required": False, "description": description, "schema": schema,
                           **({"explode": True} if schema.get("type") == "array" else {})})
        return params

    def operation(self, method: HttpMethod, binding: HttpBinding) -> tuple[str, str, dict[str, Any]]:
        path, params = expand_template(binding.template)
        descriptor = method.method
        input_type = descriptor.input_type
        bound = {field_path for _, field_path, _ in params}
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "string", "pattern": resource_id_pattern(collection).pattern},
             "example": _id_example(collection), "description": f"The id in `{field_path}`."}
            for name, field_path, collection in params
        ]
        operation: dict[str, Any] = {
            "operationId": f"{descriptor.containing_service.name}_{descriptor.name}",
            "tags": [descriptor.containing_service.name],
            "summary": _first_sentence(method.comment),
            "description": method.comment,
            # No scope: a truck's method, authenticated by its vehicle certificate on the device listener.
            "security": [{"oauth2": [method.scope]}] if method.scope else [{"mutualTLS": []}],
            "x-scope": method.scope,
        }
        if binding.body == "*":
            top = {p.split(".")[0] for p in bound}
            body = self.properties(input_type, exclude=top)
            body.pop("description", None)
            # A body with required fields is itself required: an absent body is an empty message (400).
            operation["requestBody"] = {"required": bool(body.get("required")),
                                        "content": {"application/json": {"schema": body}}}
        elif binding.body:
            fd = input_type.fields_by_name[binding.body]
            operation["requestBody"] = {
                "required": "REQUIRED" in field_behaviors(fd),
                "description": self.api.comment(fd.full_name),
                "content": {"application/json": {"schema": self.field(fd) if fd.message_type is None
                                                  else self.ref(fd.message_type)}},
            }
            bound = bound | {binding.body}
        if binding.body != "*":
            parameters.extend(self.query_parameters(input_type, bound))
        if descriptor.input_type.fields_by_name.get("request_id") is not None:
            parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                               "schema": {"type": "string", "pattern": REQUEST_ID.pattern},
                               "description": "Sets `request_id` when the body does not: a retry with the same key "
                                              "and request returns the first response."})
        responses: dict[str, Any]
        download = descriptor.server_streaming and descriptor.output_type.full_name == "google.api.HttpBody"
        if download:
            # A file download (services/gateway/rest/download.py): the body is the file, not JSON.
            responses = {"200": {"description": "The file itself (the stream's google.api.HttpBody chunks).",
                                 "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}}
        else:
            responses = {"200": {"description": "OK", "content": {
                "application/json": {"schema": self.ref(descriptor.output_type)}}}}
        if descriptor.server_streaming and not download:
            # A stream resumes by sequence only when its request can say where (sse.py): one vehicle's or mission's
            # frames, not a fleet's, whose events carry no id.
            resumable = "after_sequence" in descriptor.input_type.fields_by_name
            parameters.append({"name": "Last-Event-ID", "in": "header", "required": False,
                               # sse.resume_from: 1 to 20 digits, below 2**64 (leading zeros read).
                               "schema": {"type": "string",
                                          "pattern": f"^(?=[0-9]{{1,20}}$)0*{decimal_at_most(2**64 - 1)}$"},
                               "description": "Sent by a reconnecting client: the `id` of the last event it received; "
                                              "sets `after_sequence`, so the stream resumes without gap or duplicate."
                                              if resumable else "Checked, then ignored: this stream's events carry "
                                              "no `id` (it follows many sequences), a reconnection starts live."})
            responses["200"] = self.event_stream(descriptor.output_type, resumable=resumable)
        operation["parameters"] = parameters
        for status, text in ((400, "Invalid argument, failed precondition, or out of range"),
                             *(((401, "Missing or invalid bearer token"), (403, "The token lacks the scope"))
                               if method.scope else ((403, "The client certificate is not a vehicle's"),)),
                             (404, "Not found (or another carrier's)"), (409, "Already exists or aborted (etag)"),
                             (413, "Request body too large"), (429, "Rate limited; see Retry-After"),
                             (503, "Unavailable; retry with backoff")):
            responses[str(status)] = {"description": text, "content": {"application/json": {"schema": _STATUS_REF}}}
        responses["default"] = {"description": "Any other error (google.rpc.Status)",
                                "content": {"application/json": {"schema": _STATUS_REF}}}
        operation["responses"] = responses
        self.add_examples(operation)
        return path, binding.verb.lower(), operation

    def add_examples(self, operation: dict[str, Any]) -> None:
        """An example request body (when the operation takes one) and an example of its 200 answer."""
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None:
            body["example"] = _example(body["schema"], self.schemas, request=True)
        ok = operation["responses"]["200"]["content"]
        if "application/json" in ok:
            ok["application/json"]["example"] = _example(ok["application/json"]["schema"], self.schemas,
                                                         request=False)
        elif "text/event-stream" in ok:
            stream = ok["text/event-stream"]
            data = _example(stream["x-event-schema"], self.schemas, request=False)
            stream["example"] = f"id: 42\nevent: message\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        else:
            ok["application/zip"]["example"] = "(the evidence pack's bytes)"

    def webhooks(self) -> dict[str, Any]:
        """The OpenAPI 3.1 ``webhooks``: one POST per public event type, its body the Event with that payload."""
        event = event_pb2.Event.DESCRIPTOR
        envelope = self.ref(event)
        hooks: dict[str, Any] = {}
        for fd in event.oneofs_by_name["data"].fields:
            event_type = event_type_for_field(fd.name)
            if event_type in INTERNAL_EVENT_TYPES:
                continue
            schema = {"allOf": [envelope, {"type": "object", "required": [fd.json_name],
                                           "properties": {"type": {"const": event_type}}}]}
            example = _example(envelope, self.schemas, request=False)
            example = {k: v for k, v in example.items() if k not in {f.json_name for f in event.oneofs_by_name[
                "data"].fields}}
            example.update(type=event_type, **{fd.json_name: _example(self.ref(fd.message_type), self.schemas,
                                                                       request=False)})
            hooks[event_type] = {"post": {
                "operationId": f"webhook_{fd.name}",
                "summary": _first_sentence(self.api.comment(fd.full_name)) or event_type,
                "description": self.api.comment(fd.full_name),
                "parameters": [
                    {"name": "webhook-id", "in": "header", "required": True, "schema": {"type": "string"},
                     "description": "The event's id: deduplicate on it (delivery is at least once)."},
                    {"name": "webhook-timestamp", "in": "header", "required": True,
                     "schema": {"type": "string", "pattern": "^[0-9]{1,20}$"},
                     "description": "Unix seconds of the attempt; refuse old ones (replay protection)."},
                    {"name": "webhook-signature", "in": "header", "required": True, "schema": {"type": "string"},
                     "description": "`v1,<base64 HMAC-SHA256 of id.timestamp.body>` per signing key, "
                                    "space-separated (Standard Webhooks)."}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": schema, "example": example}}},
                "responses": {"2XX": {"description": "Received. Any other answer (or none within the timeout) "
                                                     "is retried on the subscription's schedule."}},
            }}
        return dict(sorted(hooks.items()))


    def event_stream(self, output: Descriptor, *, resumable: bool = True) -> dict[str, Any]:
        """The 200 answer of a server-streaming method: Server-Sent Events, one per response message."""
        event = next((f.json_name for f in output.fields if f.message_type is not None), "message")
        ids = ("`id:` the last segment of the resource name (the frame's sequence), " if resumable
               else "no `id:` (the frames of many vehicles have no one sequence to resume from), ")
        return {
            "description": (
                f"A Server-Sent Events stream (see services/gateway/rest/sse.py): each `{output.name}` is one event, "
                f"`event: {event}`, {ids}`data:` "
                "the message's JSON (schema `x-event-schema`); a comment line (`: heartbeat`) every 15 s; an "
                "error after the start is a final `event: error` whose data is a google.rpc.Status. Errors "
                "before the start are ordinary JSON error responses. "
                + ("Reconnect with `Last-Event-ID`." if resumable else "A reconnection starts live.")),
            "content": {"text/event-stream": {"schema": {"type": "string"},
                                              "x-event-schema": self.ref(output)}},
        }


def _add_links(paths: dict[str, dict[str, Any]], schemas: dict[str, Any]) -> None:
    """OpenAPI links from every answer that names a resource to the operations on that resource: a created
    tender's ``name`` (``tenders/{id}``) feeds GetTender, AcceptTender, ...; its ``mission`` feeds GetMission.
    Clients (and the fuzzer's stateful phase) follow them; the id is cut from the name by a regex extractor."""
    on_collection: dict[str, list[tuple[str, str]]] = {}
    for path, operations in paths.items():
        params = re.findall(r"\{([^}]+)\}", path)
        if len(params) == 1:
            collection = path.split(f"/{{{params[0]}}}", 1)[0].rsplit("/", 1)[-1]
            for op in operations.values():
                on_collection.setdefault(collection, []).append((op["operationId"], params[0]))
    for path, operations in paths.items():
        own = path.split("/")[3].split("{")[0].split(":")[0] if path.count("/") >= 3 else ""
        for op in operations.values():
            ok = op["responses"]["200"]
            ref = ok.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
            props = schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {}) if ref else {}
            links = {}
            for prop, sub in props.items():
                collection = own if prop == "name" else f"{prop}s"
                if sub.get("type") != "string" or collection not in on_collection:
                    continue
                for target, param in on_collection[collection]:
                    if target != op["operationId"]:
                        links[f"{prop}_{target}"] = {
                            "operationId": target,
                            "parameters": {f"path.{param}": f"$response.body#/{prop}#regex:^{collection}/([^/]+)"}}
            if links:
                ok["links"] = dict(sorted(links.items()))


def _camel_path(path: str) -> str:
    return ".".join(re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), part) for part in path.split("."))


def _status_schema() -> dict[str, Any]:
    """google.rpc.Status as JSON Schema: the error body of every operation."""
    return {
        "type": "object",
        "description": "google.rpc.Status: the error of every failed request (grpc-gateway's error contract). "
                       "`details` carries a google.rpc.ErrorInfo (domain `haulmesh.io`, UPPER_SNAKE `reason`) and, "
                       "for invalid input, a google.rpc.BadRequest with one field violation per field.",
        "properties": {
            "code": {"type": "integer", "description": "The google.rpc.Code.",
                     "enum": sorted(HTTP_STATUS)},
            "message": {"type": "string", "description": "A developer-facing explanation."},
            "details": {"type": "array", "items": {"type": "object", "properties": {"@type": {"type": "string"}},
                                                   "required": ["@type"], "additionalProperties": True}},
        },
        "required": ["code", "message"],
    }


def build_openapi(api: Api, token_url: str = DEFAULT_OAUTH_TOKEN_URL, *, devices: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every http-annotated method with a bearer scope; server streams are
    ``text/event-stream`` answers; the webhook events under ``webhooks``; tokens from ``token_url``.

    ``devices``: the truck listener's document instead: the methods without a scope (trucks' own), under the
    ``mutualTLS`` security scheme (the vehicle's client certificate), no OAuth2 and no webhooks."""
    if devices:
        return _device_openapi(api)
    builder = _Builder(api)
    paths: dict[str, dict[str, Any]] = {}
    scopes: dict[str, list[str]] = {}
    tags: dict[str, str] = {}
    for method in api.methods:
        if method.method.client_streaming or method.scope is None:
            continue
        service = method.method.containing_service
        tags[service.name] = api.comment(service.full_name)
        scopes.setdefault(method.scope, []).append(method.method.name)
        for binding in method.bindings:
            path, verb, operation = builder.operation(method, binding)
            paths.setdefault(path, {})[verb] = operation
    builder.schemas["google.rpc.Status"] = _status_schema()
    _add_links(paths, builder.schemas)
    webhooks = builder.webhooks()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Haulmesh API",
            "version": "v1",
            "description": "The REST API of Haulmesh for a carrier's TMS, transcoded from the gRPC contracts in "
                           "protos/ (google.api.http annotations). Bodies are proto-JSON with exactly the "
                           "lowerCamelCase names stated here (snake_case is refused). Authenticate with an "
                           "OAuth2 bearer access token (JWT, typ at+jwt) whose `carrier` claim is the tenant.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": name, "description": text} for name, text in sorted(tags.items())],
        "paths": dict(sorted(paths.items())),
        "webhooks": webhooks,
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "securitySchemes": {
                "oauth2": {"type": "oauth2",
                           "description": "OAuth2 client credentials: an access token (RFC 9068 JWT, typ at+jwt, "
                                          "ES256/RS256/EdDSA) sent as `Authorization: Bearer <token>`, whose "
                                          "`carrier` claim is the tenant. Each operation names the scope it needs.",
                           "flows": {"clientCredentials": {
                               "tokenUrl": token_url,
                               "scopes": {scope: "Allows " + ", ".join(sorted(set(names)))
                                          for scope, names in sorted(scopes.items())}}}},
            },
        },
    }


def _device_openapi(api: Api) -> dict[str, Any]:
    builder = _Builder(api)
    paths: dict[str, dict[str, Any]] = {}
    for method in api.methods:
        if method.method.client_streaming or method.scope is not None:
            continue
        for binding in method.bindings:
            path, verb, operation = builder.operation(method, binding)
            paths.setdefault(path, {})[verb] = operation
    builder.schemas["google.rpc.Status"] = _status_schema()
    return {
        "openapi": "3.1.0",
        "info": {"title": "Haulmesh device API", "version": "v1",
                 "description": "What trucks call over HTTPS on the device listener (HAULMESH_GATEWAY_DEVICE_PORT), "
                                "transcoded from the gRPC contracts in protos/. Bodies are proto-JSON "
                                "(lowerCamelCase). Authenticate with the vehicle's mTLS client certificate; no "
                                "bearer token."},
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "securitySchemes": {"mutualTLS": {
                "type": "mutualTLS",
                "description": "TLS with the vehicle's client certificate (SPIFFE id of a vehicle), issued by the "
                               "fleet's CA; the certificate is the identity, so no token is sent."}},
        },
    }


def render_docs(document: dict[str, Any]) -> str:
    """A self-contained HTML reference of the document: operations, scopes, parameters, descriptions."""
    e = html.escape
    rows: list[str] = []
    for path, operations in document["paths"].items():
        for verb, op in operations.items():
            params = "".join(
                f"<li><code>{e(p['name'])}</code> ({e(p['in'])}{', required' if p.get('required') else ''})"
                f"{' — ' + e(p['description']) if p.get('description') else ''}</li>"
                for p in op.get("parameters", []))
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            body_ref = body.get("$ref", "").rsplit("/", 1)[-1] if isinstance(body, dict) else ""
            rows.append(
                f'<section id="{e(op["operationId"])}"><h3><span class="verb">{e(verb.upper())}</span> '
                f"<code>{e(path)}</code></h3><p><b>{e(op['operationId'])}</b> — scope "
                f"<code>{e(str(op.get('x-scope')))}</code></p><pre>{e(op.get('description', ''))}</pre>"
                + (f"<p>Body: <a href='#schema-{e(body_ref)}'>{e(body_ref)}</a></p>" if body_ref else "")
                + (f"<ul>{params}</ul>" if params else "") + "</section>")
    schemas = "".join(
        f'<section id="schema-{e(name)}"><h3>{e(name)}</h3><pre>{e(schema.get("description", ""))}</pre>'
        + "<ul>" + "".join(
            f"<li><code>{e(prop)}</code>{' (read-only)' if sub.get('readOnly') else ''}"
            f"{' (required)' if prop in schema.get('required', []) else ''}: "
            f"{e(' '.join(str(sub.get('description', '')).split()))}</li>"
            for prop, sub in schema.get("properties", {}).items()) + "</ul></section>"
        for name, schema in document["components"]["schemas"].items())
    info = document["info"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(info['title'])} — reference</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
pre{{white-space:pre-wrap;background:#f6f6f6;padding:.5rem}}.verb{{font-family:monospace;color:#05a}}
section{{border-top:1px solid #ddd}}</style></head>
<body><h1>{e(info['title'])} {e(info['version'])}</h1><p>{e(info['description'])}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI {e(document['openapi'])}).</p>
<h2>Operations</h2>{''.join(rows)}<h2>Schemas</h2>{schemas}</body></html>"""


def main(argv: list[str] | None = None) -> int:
    """``python -m services.gateway.rest.openapi [PATH]`` (``make openapi``): the document the gateway serves with
    its default settings, written to PATH (default docs/openapi.json), the committed copy a test keeps current."""
    from pathlib import Path

    from .descriptors import load_api

    target = Path((argv if argv is not None else sys.argv[1:] or ["docs/openapi.json"])[0])
    target.write_text(dump_openapi(build_openapi(load_api())))
    print(f"wrote {target}")
    return 0


def dump_openapi(document: dict[str, Any]) -> str:
    """The committed file's form (and the served one's): indented, keys in the document's own order."""
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
