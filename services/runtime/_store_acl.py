"""Least-privilege store users: one Redis / Valkey ACL user per service, the one table of what each may touch.

Every service connects as its own user (its name is the service's), allowed only the key patterns of its own
data (derived from the key maps at the top of each ``services/*/store.py`` and the runtime's shared keys) and
the commands a service needs: never ``CONFIG``, ``FLUSH*``, ``DEBUG``, ``KEYS``, ``SHUTDOWN``, ``ACL``,
``MODULE``, ``SCRIPT KILL``/``FLUSH``, ``FUNCTION``, ``MONITOR``, ``SCAN`` (key names are other services' data
too), ``SORT``, ``RESTORE``/``MIGRATE`` nor ``INFO``/``CLIENT LIST`` (the ``@dangerous`` category and more).

This table is used twice: by the embedded store (``haulmesh run``, the tests' meshes), which writes it as its
ACL file at every start, and by the Helm chart, whose ``files/store-users.acl`` is rendered from it by
``haulmesh store acl-file --template`` (tests/deploy checks the committed file is current). Passwords are never
part of it: the ACL file carries their SHA-256 (``#<hex>``), the embedded store keeps them in ``users.json``
(0600) beside its data, the chart in a Secret.

Shared keys every service needs: the outbox streams ``events:{<carrier or fleet>}`` (each service writes its own
events into them in the transaction of the change, and its consumers read every one), ``events:streams`` (the
registry of streams), the Pub/Sub channel ``events:doorbell``, its own audit chains ``audit:{<service>-...}``
and the chain registry ``audit:chains``, the durability probe ``fsync-probe:{<tag>}`` (``WAITAOF`` on a cluster),
and per consumer group ``events:done:{<group>}:*``, ``events:failures:{<group>}:*`` and ``dlq:{<group>}``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

__all__ = [
    "ADMIN_USER",
    "STORE_COMMAND_RULES",
    "STORE_USERS",
    "StoreUser",
    "new_store_password",
    "render_acl_file",
    "store_user_url",
]

#: The embedded store's own full-rights user (the operator's CLI on a dev machine, tests); never a service's.
ADMIN_USER = "admin"

#: The commands of every service user: all but the dangerous and administrative ones, scripts to run but not to
#: manage (redis-py's ``register_script`` runs EVALSHA and loads on NOSCRIPT), and no command that lists key
#: names beyond the user's own patterns (SCAN, RANDOMKEY) or reaches other databases' data by moving it.
STORE_COMMAND_RULES = (
    "-@all", "+@all", "-@dangerous", "-@scripting",
    "+eval", "+evalsha", "+eval_ro", "+evalsha_ro", "+script|load", "+script|exists",
    "-scan", "-randomkey", "-move", "-swapdb", "-copy",
)
#: What the ACL file must never grant a service user (tests/runtime/test_store_acl.py tries each for real).
FORBIDDEN_COMMANDS = ("config|set", "config|get", "flushall", "flushdb", "keys", "debug", "shutdown", "acl|setuser",
                      "module|load", "script|kill", "script|flush", "function|load", "monitor", "scan", "info")

_USER_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")


@dataclass(frozen=True)
class StoreUser:
    """One ACL user: the key patterns it may read and write, those it may only read, its Pub/Sub channels and
    the consumer groups it runs (each group's bookkeeping keys are its own)."""

    name: str
    #: Glob patterns (Redis ``~pattern``) of the keys it reads and writes.
    keys: tuple[str, ...]
    #: Patterns it may only read (``%R~pattern``).
    read_keys: tuple[str, ...] = ()
    #: Pub/Sub channels (``&channel``) it publishes or subscribes to.
    channels: tuple[str, ...] = ()
    #: Event consumer groups it runs: ``events:done:{g}:*``, ``events:failures:{g}:*`` and ``dlq:{g}`` are its.
    groups: tuple[str, ...] = ()
    #: Idempotent methods whose request-id keys (``idempotency:{<carrier>:<method>}:<id>``) are its.
    idempotent_methods: tuple[str, ...] = ()
    #: Whether it runs as a mesh service (shared keys, its own audit chains).
    service: bool = True
    commands: tuple[str, ...] = field(default=STORE_COMMAND_RULES)

    def key_patterns(self) -> tuple[str, ...]:
        """Every read-write pattern, the shared ones included."""
        shared = (("events:{*}", "events:streams", "audit:chains", f"audit:{{{self.name}-*", "fsync-probe:*")
                  if self.service else ())
        groups = tuple(p for g in self.groups for p in (f"events:done:{{{g}}}:*", f"events:failures:{{{g}}}:*",
                                                         f"dlq:{{{g}}}"))
        idempotency = tuple(f"idempotency:{{*:{m}}}:*" for m in self.idempotent_methods)
        return (*self.keys, *shared, *groups, *idempotency)

    def rules(self) -> str:
        """The ACL rules after ``user <name>`` (passwords aside): keys, channels, commands."""
        channels = (*self.channels, "events:doorbell") if self.service else self.channels
        # Every service reads the certificate deny-list (services/runtime/_revocation.py) to refuse revoked peers.
        read_keys = (*self.read_keys, "revocation:*") if self.service else self.read_keys
        parts = ["resetkeys", *(f"~{p}" for p in self.key_patterns()), *(f"%R~{p}" for p in read_keys),
                 "resetchannels", *(f"&{c}" for c in channels), *self.commands]
        return " ".join(parts)


def _users(*users: StoreUser) -> dict[str, StoreUser]:
    return {u.name: u for u in users}


#: The one table: every store user of the mesh. Key maps: the docstring of each ``store.py`` named.
STORE_USERS: dict[str, StoreUser] = _users(
    # services/tender/store.py
    StoreUser("tender", keys=("tender:*", "tenders:*", "tender-load:*", "tender-expiries:*"),
              idempotent_methods=("CreateTender", "CreateFacility")),
    # services/mission/store.py (the roster, missions, the billing hand-off it retries)
    StoreUser("mission", keys=("vehicle:*", "vehicles:*", "vehicle-cert:*", "mission:*", "missions:*",
                               "mission-carrier:*", "mission-by-tender:*", "lane-missions:*", "billing-pending:*",
                               "billing-attempts:*", "billing-usage:*", "billing-disputed:*", "check-ins-due:*"),
              groups=("mission",), idempotent_methods=("CreateMission", "RaiseMissionException", "RecordCheckIn")),
    # services/telemetry/store.py (frames, commands, liveness, archive bookkeeping; its own doorbell)
    StoreUser("telemetry", keys=("telemetry:*",), channels=("telemetry:doorbell",),
              groups=("telemetry-missions", "telemetry-actions"), idempotent_methods=("CreateVehicleCommand",)),
    # services/billing/store.py, billing/reports/store.py; evidence packs read every audit chain
    StoreUser("billing", keys=("ratecard:*", "ratecards:*", "quote:*", "quote-basis:*", "quote-accepted:*",
                               "invoice:*", "invoices:*", "invoice-by-mission:*", "invoice-seq:*",
                               "kpi-mission:*", "kpi-missions:*", "kpi-tender:*", "kpi-tenders:*"),
              read_keys=("audit:*",), groups=("billing-quote-acceptances", "billing-kpi"),
              idempotent_methods=("CreateRateCard", "CreateQuote")),
    # services/gateway/webhooks/store.py; the REST door's rate limit counters (limits, key prefix "ratelimit");
    # the enrolment tokens it consumes (services/runtime/enrolment.py); the console's sessions and sign-ins under
    # way (services/gateway/console/sessions.py)
    StoreUser("gateway", keys=("webhook:*", "webhooks:*", "webhook-secret:*", "webhook-delivery:*",
                               "webhook-deliveries:*", "webhook-event:*", "webhook-failing:*", "webhook-eta:*",
                               "ratelimit*", "enrol:*", "console-session:*", "console-login:*"),
              groups=("webhooks",), idempotent_methods=("CreateWebhookSubscription",)),
    # services/edi/store.py (control numbers, received interchanges, documents, shipment <-> tender, per partner)
    StoreUser("edi", keys=("edi:*",), groups=("edi-tender-answers", "edi-shipments")),
    # The operator's CLI against a shared store: `haulmesh audit verify` (reads every chain), `haulmesh dlq`
    # (lists and replays dead letters into the event streams), `haulmesh report` (the stream registry).
    # `haulmesh pki revoke` (the deny-list, and its own audit chain), `haulmesh pki enrol-token` (one-time tokens).
    StoreUser("operator", keys=("dlq:*", "events:{*}", "revocation:*", "enrol:*", "audit:{pki-cli-*",
                                "audit:chains"),
              read_keys=("audit:*", "events:*"), service=False),
)


def new_store_password() -> str:
    """A fresh password: 32 random bytes, URL-safe (it goes into REDIS_URL unquoted)."""
    return secrets.token_urlsafe(32)


def _hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def render_acl_file(passwords: Mapping[str, Sequence[str]], *, admin_passwords: Sequence[str] = (),
                    template: bool = False) -> str:
    """The ACL file (``aclfile``) of the table: ``default`` off, each user with the SHA-256 of its passwords
    (two during a rotation: the new and the previous), the admin user with every right when given one.

    ``template``: instead of hashes, a ``{{HASH:<user>}}`` placeholder per user (the chart fills them in from its
    Secret with Helm's ``sha256sum``), no admin user.
    """
    # An ACL file has no comments: what made it is said where it is written (the embedded store, the chart).
    # `default` is off and has no password: nobody can log in as it, and a new connection starts unauthenticated.
    # Its rights must still be all of them: the server replays its AOF as `default`, and EXEC checks the ACL again,
    # so a `default` refused commands drops every MULTI/EXEC a service committed at the next start (seen: the W-2
    # restart test lost acknowledged frames; tests/runtime/test_store_acl.py holds it).
    lines = ["user default off resetpass ~* &* +@all"]
    if not template and admin_passwords:
        lines.append(f"user {ADMIN_USER} on " + " ".join(f"#{_hash(p)}" for p in admin_passwords)
                     + " ~* &* +@all")
    for name, user in STORE_USERS.items():
        if not _USER_NAME.fullmatch(name):
            raise ValueError(f"store user name {name!r} is not [a-z][a-z0-9-]{{0,31}}")
        if template:
            secret = f"{{{{HASH:{name}}}}}"
        else:
            given = [p for p in passwords.get(name, ()) if p]
            if not given:
                raise ValueError(f"no password for store user {name!r}")
            secret = " ".join(f"#{_hash(p)}" for p in given)
        lines.append(f"user {name} reset on {secret} {user.rules()}")
    return "\n".join(lines) + "\n"


def store_user_url(url: str, user: str, password: str) -> str:
    """``url`` (any ``redis://``/``rediss://``/cluster URL) logging in as ``user`` with ``password`` instead."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}").geturl()


def load_passwords(text: str) -> dict[str, list[str]]:
    """``users.json`` of the embedded store: ``{"<user>": ["<current>", "<previous>"?], ...}``."""
    raw = json.loads(text)
    if not isinstance(raw, dict) or not all(isinstance(v, list) and v and all(isinstance(p, str) for p in v)
                                            for v in raw.values()):
        raise ValueError("users.json: expected {user: [password, ...]}")
    return {str(k): list(v) for k, v in raw.items()}
