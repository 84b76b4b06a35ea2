"""google.rpc.Status with ErrorInfo (and BadRequest) for every error a Haulmesh server returns."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ._errors import ERROR_DOMAIN, HaulmeshError

__all__ = ["abort", "describe_rpc_error", "error_info", "retry_delay_seconds", "status_of", "to_rpc_status"]


def to_rpc_status(error: HaulmeshError) -> status_pb2.Status:
    """The google.rpc.Status a client receives for ``error``: ErrorInfo always, BadRequest when fields are bad,
    RetryInfo when the error carries a retry hint."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))
    details = [info]
    if error.violations:
        bad = any_pb2.Any()
        bad.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations
        ]))
        details.append(bad)
    if error.retry_after_seconds is not None:
        retry = any_pb2.Any()
        hint = error_details_pb2.RetryInfo()
        hint.retry_delay.FromMilliseconds(int(error.retry_after_seconds * 1000))
        retry.Pack(hint)
        details.append(retry)
    return status_pb2.Status(code=code_pb2.Code.Value(error.code_name), message=error.message, details=details)


async def abort(context: grpc.aio.ServicerContext, error: HaulmeshError) -> None:
    """End the RPC with ``error`` as a rich status (raises grpc.aio.AbortError)."""
    status = rpc_status.to_status(to_rpc_status(error))
    await context.abort(status.code, status.details, status.trailing_metadata)


def status_of(rpc_error: grpc.aio.AioRpcError | grpc.RpcError) -> status_pb2.Status | None:
    """The rich status carried by a failed call, or None when the server sent only a code."""
    return rpc_status.from_call(rpc_error)  # type: ignore[arg-type]


def describe_rpc_error(rpc_error: grpc.aio.AioRpcError) -> str:
    """A failed call for a person at a terminal: code, message, and each field violation on a line of its own."""
    text = f"{rpc_error.code().name}: {rpc_error.details()}"
    status = status_of(rpc_error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            text += "".join(f"\n  {v.field}: {v.description}" for v in bad.field_violations)
    return text


def error_info(rpc_error: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call's rich status (reason, domain, metadata), or None when it has none."""
    status = status_of(rpc_error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def retry_delay_seconds(status: status_pb2.Status | None) -> float | None:
    """The google.rpc.RetryInfo delay of a status (seconds), or None when it carries no retry hint."""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            hint = error_details_pb2.RetryInfo()
            detail.Unpack(hint)
            return hint.retry_delay.ToMilliseconds() / 1000
    return None
