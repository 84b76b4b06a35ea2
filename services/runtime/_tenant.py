"""The tenant (carrier) a call acts for.

The gateway derives the carrier from the TMS's verified JWT and passes it to the services in the
``x-haulmesh-carrier`` metadata; services pass it on to each other. Only mesh services and operators may
assert a tenant: a truck acts for no carrier.
"""

from __future__ import annotations

import re

import grpc

from ._authz import caller
from ._errors import InvalidArgument, PermissionDenied

__all__ = ["CARRIER_METADATA_KEY", "carrier"]

CARRIER_METADATA_KEY = "x-haulmesh-carrier"
_CARRIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def carrier(context: grpc.aio.ServicerContext) -> str:
    """The carrier of the call in progress; raises when absent, malformed or asserted by a truck."""
    values = [v for k, v in (context.invocation_metadata() or ()) if k == CARRIER_METADATA_KEY]
    if caller().kind == "vehicle":
        raise PermissionDenied("vehicles do not act for a carrier", reason="TENANT_NOT_ALLOWED")
    if len(values) != 1 or not isinstance(values[0], str) or not _CARRIER.match(values[0]):
        raise InvalidArgument(f"exactly one {CARRIER_METADATA_KEY} metadata entry (the carrier id) is required",
                              reason="TENANT_REQUIRED")
    return values[0]
