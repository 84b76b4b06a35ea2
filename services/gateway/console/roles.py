"""Who a person signed in to the console is, and what each of their roles lets them do (plain rules, no I/O).

A person's identity provider says who they are (``sub``), which carrier they work for (the ``carrier`` claim, as in
the TMS's access tokens) and their roles (a list claim, ``roles`` by default: HAULMESH_OIDC_ROLES_CLAIM). Each role
grants TMS scopes (what the REST API checks) and, for the operator roles, the role the mesh knows from operator
certificates (services/runtime/_roles.py). A role the console does not know is ignored; a person with none of
the known roles is refused at sign-in, with the roles listed (docs/console.md, "Roles").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.runtime.pki import BILLING_ADMIN, FLEET_OPERATOR, PLATFORM_ADMIN
from services.runtime.tokens import CARRIER_ID

__all__ = ["CONSOLE_ROLES", "MAX_NAME_CHARS", "ROLE_SCOPES", "TMS_USER", "ConsoleUser", "SignInRefused",
           "user_from_claims"]

#: A carrier's own planners and dispatchers using the TMS's side of the console (tender board, missions, webhooks).
TMS_USER = "tms-user"

_READ = frozenset({"tender:read", "mission:read", "telemetry:read", "report:read"})
_TMS = _READ | {"tender:create", "tender:update", "tender:respond", "tender:cancel", "mission:checkin",
                "billing:read", "webhook:read", "webhook:write", "facility:read"}
# The facility registry (where tenders' stops are placed, and the missions' geofences drawn) is kept by the fleet's
# operators; the carrier's planners read it.
_FLEET = _READ | {"mission:checkin", "mission:exception", "webhook:read", "vehicle:command", "facility:read",
                  "facility:write"}
_BILLING = _READ | {"billing:read", "billing:reconcile"}

#: The TMS scopes each role grants. A platform admin gets every scope of the others (one carrier at a time: the
#: carrier claim still names which).
ROLE_SCOPES: Mapping[str, frozenset[str]] = {
    TMS_USER: frozenset(_TMS),
    FLEET_OPERATOR: frozenset(_FLEET),
    BILLING_ADMIN: frozenset(_BILLING),
    PLATFORM_ADMIN: frozenset(_TMS | _FLEET | _BILLING),
}
CONSOLE_ROLES = tuple(ROLE_SCOPES)
#: The most roles one person may hold as the identity provider says them (anything longer is not a role list).
MAX_ROLES = 32
MAX_SUBJECT_CHARS = 255
MAX_NAME_CHARS = 120


class SignInRefused(Exception):
    """The identity provider's answer does not let this person into the console; the message says why."""


@dataclass(frozen=True)
class ConsoleUser:
    """A person signed in to the console."""

    subject: str
    carrier: str
    #: The known roles they hold, in :data:`CONSOLE_ROLES` order.
    roles: tuple[str, ...]
    #: What the console shows as their name (the ``name`` claim, else ``email``, else the subject).
    display_name: str
    #: Where they signed in: the OIDC issuer, or ``dev`` for the dev login.
    issuer: str

    @property
    def scopes(self) -> frozenset[str]:
        """Every TMS scope their roles grant."""
        return frozenset().union(*(ROLE_SCOPES[role] for role in self.roles))

    def to_record(self) -> dict[str, object]:
        return {"sub": self.subject, "carrier": self.carrier, "roles": list(self.roles),
                "name": self.display_name, "iss": self.issuer}

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> ConsoleUser:
        return user_from_claims(record, issuer=str(record.get("iss", "")), roles_claim="roles")


def known_roles(values: Iterable[str]) -> tuple[str, ...]:
    held = set(values)
    return tuple(role for role in CONSOLE_ROLES if role in held)


def user_from_claims(claims: Mapping[str, object], *, issuer: str, roles_claim: str = "roles",
                     carrier_claim: str = "carrier") -> ConsoleUser:
    """The console user an identity provider's verified claims describe; :class:`SignInRefused` when the subject,
    the carrier or every known role is missing or malformed."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_CHARS:
        raise SignInRefused(f"the identity provider's sub claim must be a string of 1-{MAX_SUBJECT_CHARS} characters")
    carrier = claims.get(carrier_claim)
    if not isinstance(carrier, str) or not CARRIER_ID.fullmatch(carrier):
        raise SignInRefused(f"the identity provider gave no {carrier_claim!r} claim naming a carrier "
                            "(lowercase letters, digits and '-', at most 63): the console shows one carrier's work")
    raw_roles = claims.get(roles_claim, ())
    if isinstance(raw_roles, str):
        raw_roles = raw_roles.split()
    if not isinstance(raw_roles, list | tuple) or len(raw_roles) > MAX_ROLES or \
            not all(isinstance(role, str) for role in raw_roles):
        raise SignInRefused(f"the {roles_claim!r} claim must be a list of at most {MAX_ROLES} role names")
    roles = known_roles(raw_roles)
    if not roles:
        raise SignInRefused(f"{subject} holds none of the console's roles ({', '.join(CONSOLE_ROLES)}) in the "
                            f"{roles_claim!r} claim")
    name = next((value for value in (claims.get("name"), claims.get("email"))
                 if isinstance(value, str) and value.strip()), subject)
    return ConsoleUser(subject=subject, carrier=carrier, roles=roles, display_name=name.strip()[:MAX_NAME_CHARS],
                       issuer=issuer)
