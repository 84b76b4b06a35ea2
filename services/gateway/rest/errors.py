"""grpc-gateway's error contract: gRPC code → HTTP status, and a google.rpc.Status JSON body.

Every error the REST side answers — the services' and the gateway's own (401, 403, 404, 413, 429, bad
JSON) — is a ``google.rpc.Status`` in proto-JSON: ``{"code": 3, "message": "...", "details": [{"@type":
"type.googleapis.com/google.rpc.ErrorInfo", "reason": "...", "domain": "haulmesh.io", ...}]}``.
"""

from __future__ import annotations

import functools
import json
import math

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from starlette.responses import Response

from services.runtime import ERROR_DOMAIN, FieldViolation, HaulmeshError, retry_delay_seconds, status_of, to_rpc_status

__all__ = ["HTTP_STATUS", "RestError", "error_response", "http_status", "method_not_allowed", "rpc_error_response"]

#: runtime.HTTPStatusFromCode of grpc-gateway v2, for every google.rpc.Code. FAILED_PRECONDITION is 400 (not
#: 412, which is about HTTP conditional headers) and CANCELLED is nginx's 499, as grpc-gateway has them.
HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
    code_pb2.UNAUTHENTICATED: 401,
}


def http_status(code: int) -> int:
    """The HTTP status of a google.rpc.Code; an unknown code is a server error, as in grpc-gateway."""
    return HTTP_STATUS.get(code, 500)


class RestError(HaulmeshError):
    """An error of the gateway's own (authentication, scope, limits, bad JSON) with its gRPC code name.

    ``http_status`` overrides the map where HTTP has a more precise status than the code's (413 for a
    body over the size limit, 405 for a known path with another verb), as grpc-gateway's own routing
    and size errors do.
    """

    def __init__(self, code_name: str, message: str, *, reason: str | None = None,
                 metadata: dict[str, str] | None = None, violations: list[FieldViolation] | None = None,
                 headers: dict[str, str] | None = None, http_status: int | None = None) -> None:
        self.code_name = code_name
        super().__init__(message, reason=reason or code_name, metadata=metadata, violations=violations)
        self.headers = dict(headers or {})
        self.http_status = http_status


def method_not_allowed(method: str, allowed: str) -> RestError:
    """405 for ``method`` on a path that serves others, with the ``Allow`` header RFC 9110 requires."""
    return RestError("UNIMPLEMENTED", f"{method} is not allowed here", reason="METHOD_NOT_ALLOWED",
                     headers={"Allow": allowed}, http_status=405)


def _render_status(serialized: bytes) -> bytes:
    status = status_pb2.Status.FromString(serialized)
    body = json_format.MessageToDict(status, preserving_proto_field_name=False)
    body.setdefault("code", status.code)
    body.setdefault("message", status.message)
    body.setdefault("details", [])
    # ASCII-escaped: an error message may quote the client's input, which may hold lone surrogates that UTF-8
    # cannot encode.
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


#: The last 256 distinct error bodies, kept rendered: a tenant over its quota, or a client retrying a bad token,
#: gets the same Status thousands of times, and rendering it (proto → dict → JSON) was a sixth of the gateway's work
#: per refused request (AT-18, docs/gateway.md). Only statuses of at most 2 KiB are kept (about 1 MiB in all), so a
#: message quoting a long input cannot fill the cache.
_rendered_status = functools.lru_cache(maxsize=256)(_render_status)
_KEPT_STATUS_BYTES = 2048


def _status_response(status: status_pb2.Status, headers: dict[str, str] | None = None,
                     status_code: int | None = None) -> Response:
    serialized = status.SerializeToString(deterministic=True)
    render = _rendered_status if len(serialized) <= _KEPT_STATUS_BYTES else _render_status
    return Response(render(serialized), status_code=status_code or http_status(status.code), headers=headers,
                    media_type="application/json")


def error_response(error: HaulmeshError) -> Response:
    """The response for an error raised in the gateway (Status with ErrorInfo, BadRequest if fields)."""
    return _status_response(to_rpc_status(error), getattr(error, "headers", None),
                            getattr(error, "http_status", None))


def rpc_error_response(error: grpc.aio.AioRpcError | grpc.RpcError) -> Response:
    """The response for a failed call to a service: its rich status passed on (a RetryInfo as Retry-After),
    or one built from the code."""
    status = None
    try:
        status = status_of(error)
    except ValueError:  # a status whose code disagrees with the call's: trust the call, as grpc-gateway does
        status = None
    if status is None:
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        numeric = code.value[0]
        info = error_details_pb2.ErrorInfo(reason=code.name, domain=ERROR_DOMAIN)
        status = status_pb2.Status(code=numeric, message=error.details() or code.name)
        status.details.add().Pack(info)
    return _status_response(status, _retry_after(status), _REASON_STATUS.get(_reason(status)))


#: Reasons HTTP has a more precise status for than their gRPC code's: an ``Idempotency-Key`` reused with another
#: body is 422, as the IETF Idempotency-Key header draft says (gRPC keeps INVALID_ARGUMENT / REQUEST_ID_REUSED).
_REASON_STATUS = {"REQUEST_ID_REUSED": 422}


def _reason(status: status_pb2.Status) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def _retry_after(status: status_pb2.Status) -> dict[str, str] | None:
    """A service's retry hint as the HTTP header clients know: google.rpc.RetryInfo (e.g. too many watches),
    else ErrorInfo metadata ``retry_after_seconds`` (e.g. telemetry's TELEMETRY_BUSY)."""
    delay = retry_delay_seconds(status)
    if delay is not None:
        return {"Retry-After": str(max(1, math.ceil(delay)))}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            seconds = info.metadata.get("retry_after_seconds", "")
            if seconds.isdigit():
                return {"Retry-After": seconds}
    return None
