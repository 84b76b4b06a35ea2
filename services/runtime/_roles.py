"""Operator roles: what an operator certificate may do, and for which carriers (docs/security.md, "Operator roles").

An operator's role and the carriers it serves are part of its certificate, signed by the CA, in a private
extension (:data:`OPERATOR_GRANT_OID`)::

    HaulmeshOperatorGrant ::= SEQUENCE {
        version   INTEGER (1),
        role      UTF8String,                      -- fleet-operator | billing-admin | platform-admin
        carriers  SEQUENCE SIZE (0..16) OF UTF8String }

Nothing in the store can widen it (changing a grant means issuing a new certificate), and it is read from the
certificate the caller presented in its own handshake, at every call (cached on the certificate's bytes, like
its identity). An operator certificate without the extension has no role: it may read health and nothing else.
"""

from __future__ import annotations

import contextvars
import functools
from dataclasses import dataclass

from cryptography import x509
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, constraint, namedtype, univ

from ._errors import ConfigError, IdentityError
from .tokens import CARRIER_ID

__all__ = [
    "BILLING_ADMIN",
    "FLEET_OPERATOR",
    "MAX_GRANT_CARRIERS",
    "OPERATOR_GRANT_OID",
    "PLATFORM_ADMIN",
    "ROLES",
    "OperatorGrant",
    "caller_grant",
    "grant_from_pem",
]

#: One carrier's missions (and their check-ins, exceptions, telemetry, webhooks).
FLEET_OPERATOR = "fleet-operator"
#: One carrier's billing: rate cards, quotes, invoices, evidence packs, the KPI report.
BILLING_ADMIN = "billing-admin"
#: Every carrier, and what belongs to no carrier (the vehicle roster, archives, vehicle certificates).
PLATFORM_ADMIN = "platform-admin"
ROLES = (FLEET_OPERATOR, BILLING_ADMIN, PLATFORM_ADMIN)
#: Carriers one certificate may serve: an operator serving more should be a platform admin, or hold several certs.
MAX_GRANT_CARRIERS = 16

#: A private extension needs an OID nobody else uses; 2.25.<UUID> (ITU-T X.667) is exactly that, unregistered.
OPERATOR_GRANT_OID = x509.ObjectIdentifier("2.25.310526999750242301521194043087657775277")
_GRANT_VERSION = 1


class _Carriers(univ.SequenceOf):
    componentType = char.UTF8String()  # noqa: N815 (pyasn1 names its schema attributes)
    subtypeSpec = constraint.ValueSizeConstraint(0, MAX_GRANT_CARRIERS)  # noqa: N815


class _Grant(univ.Sequence):
    componentType = namedtype.NamedTypes(  # noqa: N815
        namedtype.NamedType("version", univ.Integer()),
        namedtype.NamedType("role", char.UTF8String()),
        namedtype.NamedType("carriers", _Carriers()),
    )


@dataclass(frozen=True, slots=True)
class OperatorGrant:
    """An operator's role and the carriers it serves (none for a platform admin, which serves every carrier)."""

    role: str
    carriers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"unknown operator role {self.role!r}: one of {', '.join(ROLES)}", field="role")
        bad = sorted(c for c in self.carriers if not isinstance(c, str) or not CARRIER_ID.fullmatch(c))
        if bad:
            raise ConfigError(f"carrier id {bad[0]!r} is not 1-63 of a-z, 0-9 and '-' (starting with a letter or "
                              "digit), as in carriers/{carrier}", field="carrier")
        if self.role == PLATFORM_ADMIN and self.carriers:
            raise ConfigError("a platform admin serves every carrier: name no carrier", field="carrier")
        if self.role != PLATFORM_ADMIN and not self.carriers:
            raise ConfigError(f"a {self.role} serves named carriers: name at least one", field="carrier")
        if len(self.carriers) > MAX_GRANT_CARRIERS:
            raise ConfigError(f"at most {MAX_GRANT_CARRIERS} carriers a certificate, {len(self.carriers)} given",
                              field="carrier")

    def serves(self, carrier_id: str) -> bool:
        """Whether this operator may act for ``carrier_id``."""
        return self.role == PLATFORM_ADMIN or carrier_id in self.carriers

    def extension(self) -> x509.UnrecognizedExtension:
        """The certificate extension carrying this grant (DER; carriers sorted, so one grant has one encoding)."""
        value = _Grant()
        value["version"] = _GRANT_VERSION
        value["role"] = self.role
        value["carriers"].extend(sorted(self.carriers))
        return x509.UnrecognizedExtension(OPERATOR_GRANT_OID, der_encoder.encode(value))

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate) -> OperatorGrant | None:
        """The grant a certificate carries, None if it carries none; :class:`IdentityError` if it is malformed
        (never read as "no grant": a certificate the CA signed with a broken grant is a fault to see)."""
        try:
            raw = certificate.extensions.get_extension_for_oid(OPERATOR_GRANT_OID).value
        except x509.ExtensionNotFound:
            return None
        try:
            decoded, rest = der_decoder.decode(raw.value, asn1Spec=_Grant())
            if rest or int(decoded["version"]) != _GRANT_VERSION:
                raise ValueError("trailing bytes or an unknown version")
            return cls(str(decoded["role"]), frozenset(str(c) for c in decoded["carriers"]))
        except (PyAsn1Error, ValueError, ConfigError) as exc:
            raise IdentityError(f"the certificate's operator grant is malformed: {exc}",
                                reason="INVALID_OPERATOR_GRANT") from None


@functools.lru_cache(maxsize=4096)
def grant_from_pem(pem: bytes) -> OperatorGrant | None:
    """:meth:`OperatorGrant.from_certificate` of a PEM certificate, cached on its bytes (checked at every call,
    parsed once per certificate)."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise IdentityError("peer certificate cannot be parsed") from exc
    return OperatorGrant.from_certificate(certificate)


_GRANT: contextvars.ContextVar[OperatorGrant | None] = contextvars.ContextVar("haulmesh_operator_grant", default=None)


def caller_grant() -> OperatorGrant | None:
    """The grant of the operator whose call is being handled (None for another kind of caller, or no role)."""
    return _GRANT.get()
