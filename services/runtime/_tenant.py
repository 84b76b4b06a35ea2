"""The tenant (carrier) a call acts for.

The gateway derives the carrier from the TMS's verified JWT and passes it to the services in the
``haulmesh-carrier`` metadata as ``carriers/{carrier}`` (see protos/haulmesh/type/v1/carrier.proto);
services pass it on to each other. Only mesh services and operators may assert a tenant: a truck acts
for no carrier, and an operator only for a carrier its certificate's grant serves (``_roles.py``).
"""

from __future__ import annotations

import re

import grpc

from ._errors import InvalidArgument, PermissionDenied
from ._identity import caller
from ._roles import caller_grant
from .tokens import CARRIER_ID

__all__ = ["CARRIER_METADATA_KEY", "carrier", "check_operator_serves"]

CARRIER_METADATA_KEY = "haulmesh-carrier"
_CARRIER = re.compile(rf"^carriers/({CARRIER_ID.pattern.strip('^$')})$")


def carrier(context: grpc.aio.ServicerContext) -> str:
    """The carrier id of the call in progress; raises when absent, malformed, asserted by a truck, or asserted by
    an operator whose grant does not serve it."""
    if caller().kind == "vehicle":
        raise PermissionDenied("vehicles do not act for a carrier", reason="TENANT_NOT_ALLOWED")
    asserted = _asserted(context)
    if asserted is None:
        raise InvalidArgument(f"exactly one {CARRIER_METADATA_KEY} metadata entry, carriers/{{carrier}}, is required",
                              reason="TENANT_REQUIRED")
    return check_operator_serves(asserted)


def check_operator_tenant(context: grpc.aio.ServicerContext) -> None:
    """Refuse, before any handler runs, an operator asserting a carrier its grant does not serve (so the refusal
    is the same whatever the request holds, and costs nothing); :func:`carrier` checks it again where used."""
    if caller().kind == "operator":
        asserted = _asserted(context)
        if asserted is not None:
            check_operator_serves(asserted)


def _asserted(context: grpc.aio.ServicerContext) -> str | None:
    """The carrier id of the call's one well-formed metadata entry; None when absent, repeated or malformed."""
    values = [v for k, v in (context.invocation_metadata() or ()) if k == CARRIER_METADATA_KEY]
    match = _CARRIER.fullmatch(values[0]) if len(values) == 1 and isinstance(values[0], str) else None
    return match.group(1) if match else None


def check_operator_serves(carrier_id: str) -> str:
    """An operator acts only for a carrier its grant serves (a platform admin for every one; no role, none): for a
    resource whose carrier comes from the store rather than from the call's metadata. Other callers pass."""
    identity = caller()
    if identity.kind != "operator":
        return carrier_id
    grant = caller_grant()
    if grant is None or not grant.serves(carrier_id):
        served = ("no carrier (no role)" if grant is None else
                  "every carrier" if not grant.carriers else ", ".join(sorted(grant.carriers)))
        raise PermissionDenied(f"{identity} serves {served}, not carriers/{carrier_id}", reason="TENANT_NOT_ALLOWED",
                               metadata={"carrier": f"carriers/{carrier_id}"})
    return carrier_id
