"""The API as the protos describe it: http-annotated methods, their scopes, field behaviors and comments.

Everything the REST side serves is read from here, so the protos stay the single source of truth: the
routes come from the ``google.api.http`` annotations, the scopes from the ``Scope: `...``` sentence of each
method's leading comment, the read-only fields from ``google.api.field_behavior``, and the OpenAPI
descriptions from the comments kept in ``haulmesh/descriptors.binpb``.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor, MethodDescriptor

from services.runtime import ConfigError

__all__ = [
    "Api",
    "HttpMethod",
    "field_behaviors",
    "load_api",
]

DESCRIPTOR_SET = Path(__file__).resolve().parents[3] / "haulmesh" / "descriptors.binpb"

_SCOPE = re.compile(r"Scope:\s*`([a-z][a-z0-9_.:-]*)`")
# A method served to trucks with their vehicle certificate instead of a bearer token says so in its comment.
_MTLS_ONLY = re.compile(r"mTLS client certificate \(no bearer token\)")
_TMS_CODE = re.compile(r'TMS code:\s*"([^"]+)"')

# google.api.HttpRule's pattern fields and the HTTP method each stands for.
_VERBS = {"get": "GET", "put": "PUT", "post": "POST", "delete": "DELETE", "patch": "PATCH"}


@dataclass(frozen=True)
class HttpBinding:
    """One HTTP binding of a method: verb, path template, and which field the body fills."""

    verb: str
    template: str
    body: str


@dataclass(frozen=True)
class HttpMethod:
    """An http-annotated RPC and what the gateway needs to serve it."""

    method: MethodDescriptor
    bindings: tuple[HttpBinding, ...]
    #: OAuth2 scope the caller's token must carry; None for the methods trucks call with mTLS.
    scope: str | None
    comment: str

    @property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def peer(self) -> str:
        """The mesh service that owns the method: ``haulmesh.tender.v1`` → ``tender``."""
        return self.method.containing_service.file.package.split(".")[1]

    @property
    def streaming(self) -> bool:
        return self.method.server_streaming or self.method.client_streaming


@dataclass
class Api:
    """The http-annotated methods of every Haulmesh service, with the comments of every element."""

    methods: list[HttpMethod]
    #: Leading comments by full name (messages, fields, enums, enum values, services, methods).
    comments: dict[str, str] = field(default_factory=dict)
    #: TMS codes accepted for enum values, by enum full name: code → value name.
    enum_aliases: dict[str, dict[str, str]] = field(default_factory=dict)

    def comment(self, full_name: str) -> str:
        return self.comments.get(full_name, "")


def field_behaviors(fd: FieldDescriptor) -> set[str]:
    """The ``google.api.field_behavior`` names of a field (``OUTPUT_ONLY``, ``REQUIRED``, ...)."""
    values = fd.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return {field_behavior_pb2.FieldBehavior.Name(v) for v in values}


def _clean(comment: str) -> str:
    return "\n".join(line[1:] if line.startswith(" ") else line for line in comment.strip("\n").split("\n")).strip()


def _collect_comments(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    """Leading comments keyed by the element's full name, from the descriptors' source info."""
    comments: dict[str, str] = {}
    for f in fds.file:
        by_path = {tuple(loc.path): loc.leading_comments for loc in f.source_code_info.location
                   if loc.leading_comments}
        prefix = f.package

        def message(m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str,
                    by_path: dict[tuple[int, ...], str] = by_path) -> None:
            name = f"{scope}.{m.name}"
            comments[name] = _clean(by_path.get(path, ""))
            for i, fl in enumerate(m.field):
                comments[f"{name}.{fl.name}"] = _clean(by_path.get((*path, 2, i), ""))
            for i, nested in enumerate(m.nested_type):
                message(nested, (*path, 3, i), name)
            for i, e in enumerate(m.enum_type):
                enum(e, (*path, 4, i), name)

        def enum(e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str,
                 by_path: dict[tuple[int, ...], str] = by_path) -> None:
            name = f"{scope}.{e.name}"
            comments[name] = _clean(by_path.get(path, ""))
            for i, v in enumerate(e.value):
                # Enum values live in the enum's parent scope in protobuf, but are unique within the enum.
                comments[f"{name}.{v.name}"] = _clean(by_path.get((*path, 2, i), ""))

        for i, m in enumerate(f.message_type):
            message(m, (4, i), prefix)
        for i, e in enumerate(f.enum_type):
            enum(e, (5, i), prefix)
        for i, s in enumerate(f.service):
            comments[f"{prefix}.{s.name}"] = _clean(by_path.get((6, i), ""))
            for j, m in enumerate(s.method):
                comments[f"{prefix}.{s.name}.{m.name}"] = _clean(by_path.get((6, i, 2, j), ""))
    return comments


def _bindings(rule: http_pb2.HttpRule) -> tuple[HttpBinding, ...]:
    out: list[HttpBinding] = []
    for r in (rule, *rule.additional_bindings):
        kind = r.WhichOneof("pattern")
        if kind in _VERBS:
            out.append(HttpBinding(_VERBS[kind], getattr(r, kind), r.body))
        elif kind == "custom":
            out.append(HttpBinding(r.custom.kind.upper(), r.custom.path, r.body))
    return tuple(out)


def _enum_aliases(pool: descriptor_pool.DescriptorPool, comments: dict[str, str],
                  enums: list[str]) -> dict[str, dict[str, str]]:
    aliases: dict[str, dict[str, str]] = {}
    for full_name in enums:
        enum: EnumDescriptor = pool.FindEnumTypeByName(full_name)
        codes = {}
        for value in enum.values:
            for code in _TMS_CODE.findall(comments.get(f"{full_name}.{value.name}", "")):
                codes[code] = value.name
        if codes:
            aliases[full_name] = codes
    return aliases


@cache
def load_api(path: Path = DESCRIPTOR_SET) -> Api:
    """Read the descriptor set, import the generated modules, and collect the http-annotated methods.

    Raises ConfigError when an annotated method names no scope (and is not a truck's mTLS method): an
    operation without a scope would otherwise be open to every token.
    """
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    comments = _collect_comments(fds)
    pool = descriptor_pool.Default()
    methods: list[HttpMethod] = []
    enums: list[str] = []
    for f in fds.file:
        if not f.package.startswith("haulmesh."):
            continue
        # Importing the generated module registers the file (and its imports) in the default pool, the one
        # the generated message classes and the google.rpc detail types live in.
        importlib.import_module(f.name.removesuffix(".proto").replace("/", ".") + "_pb2")
        fd = pool.FindFileByName(f.name)
        enums.extend(e.full_name for e in fd.enum_types_by_name.values())
        for service in fd.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                comment = comments.get(method.full_name, "")
                flat = " ".join(comment.split())
                scopes = _SCOPE.findall(flat)
                if len(scopes) != 1 and not _MTLS_ONLY.search(flat):
                    raise ConfigError(f"{method.full_name} has a google.api.http annotation but its comment names "
                                      f"{len(scopes)} scopes (expected one 'Scope: `area:action`' sentence)")
                methods.append(HttpMethod(method, _bindings(options.Extensions[annotations_pb2.http]),
                                          scopes[0] if scopes else None, comment))
    return Api(methods, comments, _enum_aliases(pool, comments, enums))
