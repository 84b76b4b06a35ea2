"""The REST door: one generic handler that authenticates, limits, transcodes and calls the owning service.

Order of checks for a request: route (404 / 405) → declared size (413) → bearer token, or without one the
console's session cookie (401; console/app.py) → scope (403)
→ the tenant's rate limit (429) → body size while reading (413) → JSON and fields (400, including
output-only fields) → the gRPC call over mTLS with the token's carrier as ``haulmesh-carrier`` metadata (and
its subject and client as ``haulmesh-actor-subject`` / ``-client``, which the audit log records), whose
status comes back through grpc-gateway's code → HTTP map. A server-streaming route passes the same
checks and is then answered as Server-Sent Events (:mod:`.sse`), or, when it streams ``google.api.HttpBody``,
as the file itself (:mod:`.download`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.runtime import CARRIER_METADATA_KEY, HaulmeshError, actor_metadata

from ..config import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_OAUTH_TOKEN_URL
from .auth import Authenticator, Principal, require_scope
from .descriptors import Api
from .download import is_download, open_download
from .errors import RestError, error_response, method_not_allowed, rpc_error_response
from .ratelimit import TenantRateLimiter
from .sse import StreamSlots, open_event_stream, resume_from
from .transcode import RouteTable, build_request, parse_json_body, to_json

__all__ = ["RestGateway"]

_log = logging.getLogger("haulmesh.gateway.rest")
IDEMPOTENCY_HEADER = "idempotency-key"


@dataclass
class RestGateway:
    """What the generic handler needs: the API, its routes, the checks, and a channel to each service."""

    api: Api
    authenticator: Authenticator
    limiter: TenantRateLimiter
    #: The mTLS channel to a mesh service by name (``tender``, ..., ``gateway`` for the gateway's own).
    channel: Callable[[str], grpc.aio.Channel]
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    #: Awaited after a change succeeded and before it is acknowledged: the TMS is told 2xx only once every
    #: write the services made for it is on disk (Service.durable; None only in unit tests of the routing).
    durable: Callable[[], Awaitable[None]] | None = None
    #: Caps on concurrent SSE streams (per process, per carrier).
    streams: StreamSlots = field(default_factory=StreamSlots)
    #: The token endpoint the published OpenAPI document names (HAULMESH_OAUTH_TOKEN_URL).
    token_url: str = DEFAULT_OAUTH_TOKEN_URL
    #: The console's session check (console/app.py): the Principal of a request that carries the console's session
    #: cookie and no bearer token; None when it carries neither (or no console is served).
    session_principal: Callable[[Request], Awaitable[Principal | None]] | None = None

    def __post_init__(self) -> None:
        self.routes = RouteTable(self.api)

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except HaulmeshError as exc:
            return error_response(exc)
        except grpc.aio.AioRpcError as exc:
            return rpc_error_response(exc)
        except Exception:
            _log.exception("%s %s failed", request.method, request.url.path)
            return error_response(RestError("INTERNAL", "internal error", reason="INTERNAL"))

    #: Said after "no route for <path>" when nothing matches (the device listener points at the TMS's).
    not_found_hint = ""
    #: The listener's /openapi.json: the TMS's API (OAuth2) or, on the device listener, the trucks' (mutualTLS).
    serves_devices = False

    def _match(self, request: Request) -> tuple[Any, dict[str, str]]:
        """The route and its path variables; 405 (with Allow) or 404 when there is none. The declared body
        size is checked here too, before anything reads or authenticates."""
        verb = "GET" if request.method == "HEAD" else request.method
        route, path_vars, allowed = self.routes.match(verb, request.url.path)
        if route is None:
            if allowed:
                raise method_not_allowed(request.method, ", ".join(sorted(allowed)))
            raise RestError("NOT_FOUND", f"no route for {request.url.path}{self.not_found_hint}",
                            reason="ROUTE_NOT_FOUND")
        self._check_declared_size(request.headers.get("content-length"))
        return route, path_vars

    async def _call_unary(self, route: Any, message: Any, metadata: tuple[tuple[str, Any], ...]) -> Response:
        response_class = message_factory.GetMessageClass(route.method.method.output_type)
        call = self.channel(route.method.peer).unary_unary(
            route.method.grpc_path, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString)
        return JSONResponse(to_json(await call(message, metadata=metadata)))

    async def _handle(self, request: Request) -> Response:
        route, path_vars = self._match(request)
        if route.method.scope is None:
            # Trucks call these with their client certificate on the device listener (device.py), never here.
            raise RestError("UNIMPLEMENTED", f"{route.method.method.name} is served to vehicles over mTLS only: "
                            "HTTPS with the truck's client certificate on the gateway's device port "
                            "(HAULMESH_GATEWAY_DEVICE_PORT, default 8443), no bearer token",
                            reason="MTLS_REQUIRED", metadata={"port_setting": "HAULMESH_GATEWAY_DEVICE_PORT"})
        if route.method.method.client_streaming:  # only server streams have an HTTP form (Server-Sent Events)
            raise RestError("UNIMPLEMENTED", f"{route.method.method.name} streams requests; it has no REST form",
                            reason="STREAMING_NOT_SUPPORTED")
        principal = await self._principal(request)
        require_scope(principal, route.method.scope)
        await self.limiter.check(principal.carrier)
        body = await self._read_json(request)
        message = build_request(self.api, route, path_vars, body, list(request.query_params.multi_items()))
        self._apply_idempotency_key(message, request.headers.get(IDEMPOTENCY_HEADER))
        # The carrier, and who is behind the token for the audit log (services believe both only from the gateway).
        metadata = ((CARRIER_METADATA_KEY, f"carriers/{principal.carrier}"),
                    *actor_metadata(principal.subject, principal.client))
        if is_download(route.method):  # a file (google.api.HttpBody chunks), e.g. an evidence pack
            return await open_download(self.channel(route.method.peer), route.method, message, metadata)
        if route.method.streaming:
            resume_from(message, request.headers.get("last-event-id"))
            # The channel first: a slot is taken only when nothing but open_event_stream (which releases it on
            # every path) stands between it and the stream.
            channel = self.channel(route.method.peer)
            release = self.streams.acquire(principal.carrier)
            return await open_event_stream(channel, route.method, message, metadata, release)
        response = await self._call_unary(route, message, metadata)
        if self.durable is not None and route.binding.verb != "GET":
            await self.durable()
        return response

    async def _principal(self, request: Request) -> Principal:
        """The bearer token's principal or, without an Authorization header, the console session's."""
        authorization = request.headers.get("authorization")
        if not authorization and self.session_principal is not None:
            principal = await self.session_principal(request)
            if principal is not None:
                return principal
        return await self.authenticator.authenticate(authorization)

    def remembered_refusal(self, method: str, path: str, headers: Mapping[str, str]) -> Response | None:
        """The 429 :meth:`handle` would answer, when this process knows it without a store trip or a token check:
        a token verified before, on a route of its scope, of a carrier the store refused moments ago
        (ratelimit.py). None whenever anything else could decide the answer (an unknown route, a body over the
        limit, a token not yet verified, a carrier not refused): such requests take the whole path.

        The app asks this before its routing (app.py): a tenant flooding at many times its quota then costs the
        event loop it shares with every other tenant little more than the HTTP parse (AT-18, docs/gateway.md)."""
        principal = self.authenticator.remembered(headers.get("authorization"))
        if principal is None or self.limiter.item is None:
            return None
        route, _, _ = self.routes.match("GET" if method == "HEAD" else method, path)
        if route is None or route.method.scope is None or route.method.method.client_streaming:
            return None
        try:
            self._check_declared_size(headers.get("content-length"))
            require_scope(principal, route.method.scope)
        except RestError:
            return None  # a 400, 413 or 403 is the whole path's to give
        try:
            self.limiter.check_remembered(principal.carrier)
        except RestError as exc:
            return error_response(exc)
        return None

    def _check_declared_size(self, declared: str | None) -> None:
        if declared is not None:
            if not declared.isdigit():
                raise RestError("INVALID_ARGUMENT", "Content-Length is not a number", reason="INVALID_ARGUMENT")
            self._check_size(int(declared))

    def _check_size(self, size: int) -> None:
        if size > self.max_request_bytes:
            raise RestError("RESOURCE_EXHAUSTED", f"the request body exceeds {self.max_request_bytes} bytes",
                            reason="REQUEST_TOO_LARGE", metadata={"max_bytes": str(self.max_request_bytes)},
                            http_status=413)

    async def _read_json(self, request: Request) -> Any:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            self._check_size(size)  # also bounds chunked bodies that declared no length
            chunks.append(chunk)
        return parse_json_body(b"".join(chunks))

    @staticmethod
    def _apply_idempotency_key(message: Any, key: str | None) -> None:
        fd = message.DESCRIPTOR.fields_by_name.get("request_id")
        if key and fd is not None and fd.type == FieldDescriptor.TYPE_STRING and not message.request_id:
            message.request_id = key
