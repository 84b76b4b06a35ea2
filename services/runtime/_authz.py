"""Per-method authorization on the peer's certificate identity, enforced before any handler runs.

A policy maps full method names (``/haulmesh.tender.v1.TenderService/CreateTender``, or ``/<service>/*``
for every method of a service) to the identities allowed to call them: ``service/gateway``,
``vehicle/*`` (any vehicle), ``role:<role>`` (an operator whose certificate grants that role, see
``_roles.py``) or ``*`` (any identity of the trust domain). Operators are allowed by role only, never by name
or as ``operator/*``: an operator without a role may call what ``*`` allows (health) and nothing else. A
method the policy does not name is denied: a new RPC is closed until somebody decides who may call it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
import redis

from ._audit import TOKEN_ACTOR_PREFIX, AuditLog, actor_from_metadata
from ._errors import HaulmeshError, IdentityError, PermissionDenied, Unauthenticated, Unavailable
from ._identity import _CALLER, KINDS, Identity, caller, identity_from_pem
from ._retry import is_transient
from ._revocation import Credential, RevocationList
from ._roles import _GRANT, BILLING_ADMIN, FLEET_OPERATOR, PLATFORM_ADMIN, ROLES, OperatorGrant, grant_from_pem
from ._rpcmetrics import count_handler_invocation
from ._status import abort
from ._tenant import CARRIER_METADATA_KEY, check_operator_tenant

__all__ = ["BILLING_ADMINS", "FLEET_OPERATORS", "PLATFORM_ADMINS", "AuthorizationInterceptor", "Policy", "caller",
           "caller_may", "requester"]

#: Policy patterns of the operator roles (docs/security.md, "Operator roles").
FLEET_OPERATORS = f"role:{FLEET_OPERATOR}"
BILLING_ADMINS = f"role:{BILLING_ADMIN}"
PLATFORM_ADMINS = f"role:{PLATFORM_ADMIN}"
_ROLE_PATTERNS = frozenset(f"role:{r}" for r in ROLES)

_log = logging.getLogger("haulmesh.authz")
#: The one identity whose word on who is behind a call (the token's subject and client) the audit log records.
GATEWAY = Identity("service", "gateway")

#: Rules every server gets. Health is open to every identity (probes, ``haulmesh status``, ``edge_client check``);
#: reflection (``buf curl``, grpcurl) to services and operators only: a truck's certificate is the one most
#: likely to be stolen, and nothing on a truck needs the mesh's whole schema (least privilege, issue 12).
BUILTIN_RULES: dict[str, tuple[str, ...]] = {
    "/grpc.health.v1.Health/*": ("*",),
    "/grpc.reflection.v1alpha.ServerReflection/*": ("service/*", *sorted(_ROLE_PATTERNS)),
    "/grpc.reflection.v1.ServerReflection/*": ("service/*", *sorted(_ROLE_PATTERNS)),
}


class Policy:
    """Who may call which method; anything not listed is denied."""

    def __init__(self, rules: Mapping[str, Iterable[str]],
                 audit_coalesce_seconds: Mapping[str, float] | None = None) -> None:
        #: Methods audited once per (caller, resource) per this many seconds rather than per call: high-volume
        #: writes whose content is its own evidence (a truck's IngestTelemetry frames are signed and sequenced).
        self.audit_coalesce_seconds: dict[str, float] = dict(audit_coalesce_seconds or {})
        self._rules: dict[str, frozenset[str]] = {}
        for method, patterns in {**BUILTIN_RULES, **rules}.items():
            if not method.startswith("/") or method.count("/") != 2:
                raise ValueError(f"policy key {method!r} must be /<package.Service>/<Method> or /<service>/*")
            pats = frozenset(patterns)
            for pattern in pats:
                _check_pattern(pattern)
            self._rules[method] = pats

    @property
    def methods(self) -> frozenset[str]:
        return frozenset(self._rules)

    def __or__(self, other: Policy) -> Policy:
        """Both policies, for a server that serves the APIs of two (billing's BillingService and ReportService):
        a method is allowed to whom either allows it."""
        return Policy({method: self._rules.get(method, frozenset()) | other._rules.get(method, frozenset())
                       for method in self._rules.keys() | other._rules.keys()},
                      {**self.audit_coalesce_seconds, **other.audit_coalesce_seconds})

    def allows(self, method: str, identity: Identity, grant: OperatorGrant | None = None) -> bool:
        """Whether ``identity`` (an operator with ``grant``, its certificate's) may call ``method``."""
        patterns = self._rules.get(method)
        if patterns is None:
            patterns = self._rules.get(method.rsplit("/", 1)[0] + "/*", frozenset())
        return _matches(patterns, identity, grant)


def _check_pattern(pattern: str) -> None:
    if pattern == "*" or pattern in _ROLE_PATTERNS:
        return
    kind, _, name = pattern.partition("/")
    if kind == "operator" or pattern.startswith("role:"):
        raise ValueError(f"policy pattern {pattern!r}: operators are allowed by role, one of "
                         f"{', '.join(sorted(_ROLE_PATTERNS))}")
    if kind not in KINDS or not name:
        raise ValueError(f"policy pattern {pattern!r} must be '*', '<kind>/*', '<kind>/<name>' or 'role:<role>'")


def _matches(patterns: frozenset[str], identity: Identity, grant: OperatorGrant | None) -> bool:
    if "*" in patterns:
        return True
    if identity.kind == "operator":  # by role only: a name or "operator/*" never admits an operator
        return grant is not None and f"role:{grant.role}" in patterns
    return f"{identity.kind}/*" in patterns or f"{identity.kind}/{identity.name}" in patterns


def caller_may(patterns: Iterable[str]) -> bool:
    """Whether the caller of the RPC being handled matches one of ``patterns`` (policy syntax): for a rule a
    handler applies on top of the method's policy (telemetry: only some callers may name a vehicle)."""
    pats = frozenset(patterns)
    for pattern in pats:
        _check_pattern(pattern)
    return _matches(pats, caller(), _GRANT.get())


def requester(context: grpc.aio.ServicerContext) -> str:
    """Who asked for the call being handled, for a record that names a person (a command's requester, a check-in's
    recorder): the caller's identity, or, when the gateway calls, the subject and client its token or console
    session named (``ann@acme.example via haulmesh-console``), which the gateway alone may vouch for."""
    identity = caller()
    if identity == GATEWAY:
        subject, client = actor_from_metadata(context.invocation_metadata() or ())
        if subject:
            return f"{subject} via {client}" if client else subject
    return str(identity)


#: AIP read methods (and health's Check, reflection). "BatchGet", not "Batch": a BatchCreate changes state and is
#: audited and made durable like any write.
_READ_PREFIXES = ("Get", "List", "Watch", "Check", "BatchGet", "Search", "ServerReflectionInfo")


def _is_mutating(method: str) -> bool:
    """Whether a unary method changes state (AIP naming: reads are Get/List/Watch/...)."""
    return not method.rsplit("/", 1)[1].startswith(_READ_PREFIXES)


def _peer_identity(context: grpc.aio.ServicerContext) -> Identity:
    certs = context.auth_context().get("x509_pem_cert")
    if not certs:
        raise Unauthenticated("a client certificate is required", reason="CLIENT_CERTIFICATE_REQUIRED")
    return identity_from_pem(certs[0])


def _operator_grant(context: grpc.aio.ServicerContext, identity: Identity) -> OperatorGrant | None:
    """The role an operator's own certificate grants (cached per certificate); None for other kinds: a grant
    counts only on an operator's certificate, so a service or truck certificate carrying one gains nothing."""
    if identity.kind != "operator":
        return None
    return grant_from_pem(context.auth_context()["x509_pem_cert"][0])


Behavior = Callable[..., Any]


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates the caller, applies the policy, and turns Haulmesh errors into rich statuses.

    Handlers run only after the check passes; they read the caller with :func:`caller`.
    """

    def __init__(self, policy: Policy, audit: AuditLog | None = None,
                 durable: Callable[[], Awaitable[None]] | None = None,
                 revocations: RevocationList | None = None) -> None:
        self._policy = policy
        self._audit = audit
        #: The certificate deny-list (docs/security.md, "Revocation"); checked on every call and stream message.
        self._revocations = revocations
        #: Awaited before a change is acknowledged to a caller from outside the mesh (see ``_wrap_unary``).
        self._durable = durable

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method),
                handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, method),
            handler.request_deserializer, handler.response_serializer)

    async def _authorize(self, context: grpc.aio.ServicerContext, method: str) -> None:
        try:
            identity = _peer_identity(context)
            grant = _operator_grant(context, identity)
        except IdentityError as exc:
            _log.warning("rejected peer %s on %s: %s", context.peer(), method, exc)
            await abort(context, exc)
            return
        await self._refuse_revoked(context, method, identity)
        if not self._policy.allows(method, identity, grant):
            _log.warning("denied %s on %s", identity, method)
            who = identity if identity.kind != "operator" else f"{identity} ({_role_of(grant)})"
            await abort(context, PermissionDenied(f"{who} may not call {method}", reason="METHOD_NOT_ALLOWED",
                                                  metadata={"method": method, "caller": str(identity),
                                                            **({"role": _role_of(grant)}
                                                               if identity.kind == "operator" else {})}))
        _CALLER.set(identity)
        _GRANT.set(grant)
        try:
            check_operator_tenant(context)
        except PermissionDenied as exc:
            _log.warning("denied %s on %s: %s", identity, method, exc.message)
            await abort(context, exc)
        count_handler_invocation(method)  # AT-14's proof: counted only past every check

    async def _refuse_revoked(self, context: grpc.aio.ServicerContext, method: str, identity: Identity) -> None:
        """Abort the call if the peer's certificate is on the deny-list."""
        if self._revocations is None:
            return
        try:
            self._revocations.check_peer(context)
        except Unauthenticated as exc:
            _log.warning("refused revoked certificate of %s on %s", identity, method)
            await abort(context, exc)

    def _revoked_on_next_message(self, requests: Any, credential: Credential) -> Any:
        """The request stream, checked against the deny-list before each message is handed on: a certificate
        revoked while its stream is open ends the stream at the next message (the handler sees the error)."""
        revocations = self._revocations
        if revocations is None or not hasattr(requests, "__aiter__"):
            return requests

        async def checked() -> Any:
            async for message in requests:
                revocations.check(credential)
                yield message

        return checked()

    def _wrap_unary(self, inner: Behavior, method: str) -> Behavior:
        mutating = _is_mutating(method)
        audited = self._audit is not None and mutating
        durable = self._durable if mutating else None

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._authorize(context, method)
            try:
                response = await inner(request, context)
            except HaulmeshError as exc:
                await abort(context, exc)
                return None
            except redis.RedisError as exc:
                await _abort_store_fault(context, exc)
                return None
            if audited:
                await self._record(method, context, request, response)
            # Nothing is acknowledged to an operator or a vehicle before it is on disk. A mesh service calling
            # is not waited for here: whoever answers outside the mesh waits once, for every write before it
            # (the gateway for the TMS, see services/gateway/rest/handler.py).
            if durable is not None and caller().kind != "service":
                try:
                    await durable()
                except HaulmeshError as exc:
                    await abort(context, exc)
                    return None
            return response

        return behavior

    async def _record(self, method: str, context: grpc.aio.ServicerContext, request: Any, response: Any) -> None:
        metadata = context.invocation_metadata() or ()
        carriers = [v for k, v in metadata if k == CARRIER_METADATA_KEY]
        resource = getattr(response, "name", "") or getattr(request, "name", "")
        if not resource and getattr(request, "vehicle_id", ""):  # a truck's write (relayed or its own)
            resource = f"vehicles/{request.vehicle_id}"
        actor, client, via = str(caller()), "", ""
        if caller() == GATEWAY:  # a TMS's call: the actor is who is behind the token, believed from the gateway only
            subject, client = actor_from_metadata(metadata)
            if subject:  # prefixed: a token's `sub` can never read as a mesh identity (a spiffe:// one, say)
                actor, via = f"{TOKEN_ACTOR_PREFIX}{subject}", str(caller())
        try:
            await self._audit.append(actor=actor, method=method, carrier=str(carriers[0]) if carriers else "",
                                     resource=str(resource), client=client, via=via,
                                     coalesce_seconds=self._policy.audit_coalesce_seconds.get(method, 0.0))
        except Exception:  # the change is committed; a lost audit entry is logged loudly, not turned into an error
            _log.exception("AUDIT: could not record %s by %s on %s", method, caller(), resource)

    def _wrap_stream(self, inner: Behavior, method: str) -> Behavior:
        if inspect.isasyncgenfunction(inner):
            async def generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await self._authorize(context, method)
                revocations = self._revocations
                try:
                    if revocations is not None:
                        credential = revocations.check_peer(context)
                        request = self._revoked_on_next_message(request, credential)
                    async for response in inner(request, context):
                        if revocations is not None:  # a server stream (a watch): at its next message too
                            revocations.check(credential)
                        yield response
                except HaulmeshError as exc:
                    await abort(context, exc)
                except redis.RedisError as exc:
                    await _abort_store_fault(context, exc)

            return generator

        # Handlers that write with context.write() (the library's health Watch) stay coroutines.
        return self._wrap_unary(inner, method)


async def _abort_store_fault(context: grpc.aio.ServicerContext, exc: redis.RedisError) -> None:
    """A store fault that escaped a handler: a transient one (store restarting, pool exhausted) is UNAVAILABLE
    STORE_UNAVAILABLE, which clients retry (gRPC's UNKNOWN for an unexpected exception is not); anything else is
    a bug and stays one."""
    if not is_transient(exc):
        raise exc
    _log.warning("store fault in a handler: %s", exc)
    await abort(context, Unavailable(f"the store is unavailable ({type(exc).__name__}); retry",
                                     reason="STORE_UNAVAILABLE"))


def _role_of(grant: OperatorGrant | None) -> str:
    return grant.role if grant is not None else "no role"
