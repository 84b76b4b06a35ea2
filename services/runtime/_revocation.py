"""Certificate revocation: a deny-list in the store, cached in every process, checked on every call.

Two kinds of entry. A **serial** revokes one certificate. An **identity** (``haulmesh pki revoke vehicle <id>``,
``operator <name>``) revokes every certificate of that SPIFFE ID issued until the moment of revocation, the
*cut-off*, taken from the store's clock: a certificate is refused when its notBefore is at or before it. That is
what a stolen truck needs, whose certificates are short-lived and renewed by the truck itself (each renewal is a new
serial nobody could list in advance); the truck gets back in only by enrolling again with a new token, whose
certificate the gateway dates after the cut-off (:func:`revocation_cutoff`).

``haulmesh pki revoke`` writes the entries; every service process keeps the list in memory
(:class:`RevocationList`), polls the store's generation marker every ``HAULMESH_REVOCATION_REFRESH_SECONDS`` (1 s)
and re-reads the list when it moved. The authorization interceptor refuses a revoked certificate before any handler
runs (UNAUTHENTICATED, reason ``CERTIFICATE_REVOKED``), and a long-lived stream is refused at its next message
either way. docs/security.md, "Revocation".

Keys (one hash tag, so a revocation commits in one slot, on Redis Cluster too):

==============================================  =====  ====================================================
``revocation:{revocation}:serials``              ZSET   member: the serial, lowercase hex; score: when the entry
                                                        may go (the certificate's notAfter +
                                                        :data:`EXPIRY_SLACK_SECONDS`)
``revocation:{revocation}:records``              HASH   serial → JSON: identity, reason, who revoked, when,
                                                        notAfter
``revocation:{revocation}:identities``           ZSET   member: the SPIFFE ID; score: when the entry may go
``revocation:{revocation}:identity-records``     HASH   SPIFFE ID → JSON: cutoff, reason, who revoked, until
``revocation:{revocation}:generation``           STRING a fresh random value at every change: what caches poll
==============================================  =====  ====================================================

Bounded: at most :data:`MAX_REVOKED_SERIALS` live entries of each kind (a revocation beyond is refused,
RESOURCE_EXHAUSTED); an entry is removed by the next revocation after it expired (its certificates could not be
used anyway).
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import redis.asyncio
from cryptography import x509
from prometheus_client import Gauge

from ._errors import HaulmeshError, ResourceExhausted, Unauthenticated
from ._metrics import METRICS_REGISTRY

__all__ = [
    "EXPIRY_SLACK_SECONDS",
    "MAX_REVOKED_SERIALS",
    "Credential",
    "RevocationList",
    "Revoked",
    "certificate_serial",
    "credential_of",
    "revocation_cutoff",
    "revoke_certificate",
    "revoke_identity",
    "revoked_certificates",
]

_log = logging.getLogger("haulmesh.revocation")

_TAG = "{revocation}"
SERIALS_KEY = f"revocation:{_TAG}:serials"
RECORDS_KEY = f"revocation:{_TAG}:records"
IDENTITIES_KEY = f"revocation:{_TAG}:identities"
IDENTITY_RECORDS_KEY = f"revocation:{_TAG}:identity-records"
GENERATION_KEY = f"revocation:{_TAG}:generation"
ALL_KEYS = (SERIALS_KEY, RECORDS_KEY, IDENTITIES_KEY, IDENTITY_RECORDS_KEY, GENERATION_KEY)

#: Live entries the list holds at most: 100,000 serials are ≈ 10 MB in each process's cache and one read of a few
#: MB when the list changes. A fleet revoking more than that inside one certificate lifetime has a CA to replace.
MAX_REVOKED_SERIALS = 100_000
#: An entry outlives its certificate's notAfter by this much: a server whose clock runs behind still refuses it.
EXPIRY_SLACK_SECONDS = 3600
#: The gRPC status reason of a refused revoked certificate (ErrorInfo.reason).
REASON = "CERTIFICATE_REVOKED"

REVOKED_SERIALS = Gauge("haulmesh_revoked_serials", "Entries of the revocation list (serials and "
                        "identities) in this process's cache.",
                        registry=METRICS_REGISTRY)
REVOCATION_REFRESHED = Gauge("haulmesh_revocation_list_refresh_timestamp_seconds", "Unix time of this process's "
                             "last successful check of the store's revocation list (it stands still while the store "
                             "is unreachable: revocations made meanwhile are not yet enforced here).",
                             registry=METRICS_REGISTRY)

# Atomic: drop expired entries, enforce the bound, add the serial (its first record is kept), move the generation.
_REVOKE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 1, #expired do redis.call('HDEL', KEYS[2], expired[i]) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) end
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return -1 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
redis.call('SET', KEYS[3], ARGV[6])
return 1
"""

# Atomic: drop expired identity entries, enforce the bound, (re)set the identity's cut-off to the store's clock (a
# second revocation moves it: certificates issued since the first are revoked too, those the gateway dated just
# after the first cut-off included), move the generation. Returns the cut-off as a string (a Lua number would
# come back truncated to an integer).
_REVOKE_IDENTITY = """
local t = redis.call('TIME')
-- milliseconds: cjson keeps 14 significant digits, so the record and the reply hold the same value
local now = tonumber(t[1]) + math.floor(tonumber(t[2]) / 1000) / 1000
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #expired do redis.call('HDEL', KEYS[2], expired[i]) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return -1
end
local previous = redis.call('HGET', KEYS[2], ARGV[1])
if previous then
  -- a certificate dated after the previous cut-off is dated its next whole second (pki's floor): cover it
  now = math.max(now, math.floor(cjson.decode(previous)['cutoff']) + 1)
end
local record = cjson.decode(ARGV[3])
record['cutoff'] = now
redis.call('ZADD', KEYS[1], math.max(tonumber(ARGV[2]), now), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(record))
redis.call('SET', KEYS[3], ARGV[5])
return string.format('%.3f', now)
"""


def certificate_serial(pem: bytes) -> str:
    """A certificate's serial number as the deny-list keys it: lowercase hex, no leading zeros ("" if unparsable)."""
    return credential_of(pem).serial


@dataclass(frozen=True, slots=True)
class Credential:
    """What the deny-list needs of a certificate: its serial, its SPIFFE ID ("" unless exactly one URI SAN) and its
    notBefore (Unix seconds)."""

    serial: str
    identity: str
    not_before: float


@functools.lru_cache(maxsize=4096)
def credential_of(pem: bytes) -> Credential:
    """The :class:`Credential` of a PEM certificate, cached on its bytes (a stream presents the same one on every
    call). An unparsable certificate gives an empty one: the identity layer refuses it first."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return Credential("", "", float("inf"))
    try:
        uris = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        uris = []
    return Credential(format(certificate.serial_number, "x"), uris[0] if len(uris) == 1 else "",
                      certificate.not_valid_before_utc.timestamp())


@dataclass(frozen=True)
class Revoked:
    """One entry of the deny-list: a serial (``serial`` set), or an identity (``serial`` empty, ``cutoff`` set:
    its certificates with a notBefore at or before it are revoked; ``not_after`` is when the entry goes)."""

    serial: str
    identity: str
    reason: str
    revoked_by: str
    revoke_time: float
    not_after: float
    cutoff: float = 0.0


async def revoke_certificate(client: redis.asyncio.Redis, serial: str, *, not_after: float, identity: str = "",
                             reason: str = "", revoked_by: str = "") -> bool:
    """Add ``serial`` (hex) to the deny-list until ``not_after`` (Unix seconds, the certificate's notAfter) plus
    :data:`EXPIRY_SLACK_SECONDS`. True when added, False when it was already listed (the first record stays).
    RESOURCE_EXHAUSTED when :data:`MAX_REVOKED_SERIALS` live entries are listed."""
    serial = _normal_serial(serial)
    now = time.time()
    record = json.dumps({"identity": identity, "reason": reason, "revoked_by": revoked_by,
                         "revoke_time": round(now, 3), "not_after": not_after}, sort_keys=True)
    added = await client.eval(_REVOKE, 3, SERIALS_KEY, RECORDS_KEY, GENERATION_KEY, now, serial,
                              not_after + EXPIRY_SLACK_SECONDS, record, MAX_REVOKED_SERIALS, secrets.token_hex(8))
    if int(added) < 0:
        raise ResourceExhausted(f"the revocation list holds {MAX_REVOKED_SERIALS} live entries",
                                reason="REVOCATION_LIST_FULL")
    return int(added) == 1


async def revoke_identity(client: redis.asyncio.Redis, spiffe_id: str, *, until: float, reason: str = "",
                          revoked_by: str = "") -> float:
    """Revoke every certificate of ``spiffe_id`` issued until now (the store's clock): returns that cut-off (Unix
    seconds). The entry stays until ``until`` (Unix seconds; when the last certificate issued before the cut-off
    can have expired: the CA's notAfter). Revoking again moves the cut-off to the new now. RESOURCE_EXHAUSTED when
    :data:`MAX_REVOKED_SERIALS` identities are listed."""
    until = round(until, 3)  # what the script's JSON (14 significant digits) keeps
    record = json.dumps({"reason": reason, "revoked_by": revoked_by, "until": until}, sort_keys=True)
    cutoff = await client.eval(_REVOKE_IDENTITY, 3, IDENTITIES_KEY, IDENTITY_RECORDS_KEY, GENERATION_KEY,
                               spiffe_id, until, record, MAX_REVOKED_SERIALS, secrets.token_hex(8))
    if not isinstance(cutoff, bytes | str):
        raise ResourceExhausted(f"the revocation list holds {MAX_REVOKED_SERIALS} revoked identities",
                                reason="REVOCATION_LIST_FULL")
    return float(cutoff)


async def revocation_cutoff(client: redis.asyncio.Redis, spiffe_id: str) -> float | None:
    """The cut-off of ``spiffe_id``'s revocation, read from the store (not a cache: a certificate issued now must
    be dated after a revocation made a moment ago), or None when it was never revoked."""
    raw = await client.hget(IDENTITY_RECORDS_KEY, spiffe_id)
    return float(json.loads(raw)["cutoff"]) if raw else None


async def revoked_certificates(client: redis.asyncio.Redis) -> list[Revoked]:
    """Every live entry of the deny-list, with its record (for ``haulmesh pki revoked``): identities, then serials."""
    out = [Revoked("", identity, data.get("reason", ""), data.get("revoked_by", ""), float(data["cutoff"]),
                   float(data.get("until", 0)), float(data["cutoff"]))
           for identity, data in (await _identity_records(client)).items()]
    serials = await client.zrange(SERIALS_KEY, time.time(), "+inf", byscore=True)
    records = await client.hmget(RECORDS_KEY, serials) if serials else []
    for serial, raw in zip(serials, records, strict=True):
        data = json.loads(raw) if raw else {}
        out.append(Revoked(_text(serial), data.get("identity", ""), data.get("reason", ""),
                           data.get("revoked_by", ""), float(data.get("revoke_time", 0)),
                           float(data.get("not_after", 0))))
    return out


async def _identity_records(client: redis.asyncio.Redis) -> dict[str, dict]:
    """The live identity entries: SPIFFE ID → record (with its cut-off)."""
    identities = await client.zrange(IDENTITIES_KEY, time.time(), "+inf", byscore=True)
    records = await client.hmget(IDENTITY_RECORDS_KEY, identities) if identities else []
    return {_text(i): json.loads(raw) for i, raw in zip(identities, records, strict=True) if raw}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _normal_serial(serial: str) -> str:
    """Hex as :func:`certificate_serial` writes it; accepts ``0x``, colons and upper case (how tools print it)."""
    raw = serial.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(raw, 16)
    except ValueError:
        raise ValueError(f"a serial number is hexadecimal (e.g. 4f:a1:... or 4fa1...), got {serial[:80]!r}") from None
    if value <= 0 or value.bit_length() > 160:  # RFC 5280: positive, at most 20 octets
        raise ValueError(f"a serial number is positive and at most 20 octets, got {serial[:80]!r}")
    return format(value, "x")


class RevocationList:
    """This process's copy of the deny-list: refreshed from the store, read on every call without I/O.

    Fail closed for what it has: while the store is unreachable the last list stays in force (a listed serial
    stays refused); a revocation written meanwhile is enforced here once the store answers again.
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._serials: frozenset[str] = frozenset()
        #: SPIFFE ID → cut-off: its certificates with a notBefore at or before it are revoked.
        self._cutoffs: dict[str, float] = {}
        self._generation: bytes | None = None
        #: Whether the list was read from the store at least once (a server serves only after it was).
        self.loaded = False
        #: Told after each refresh that found something newly revoked (telemetry ends the open streams it holds).
        self._listeners: list[Callable[[RevocationList], None]] = []

    def on_revoked(self, listener: Callable[[RevocationList], None]) -> None:
        """Call ``listener`` with this list after each refresh that found a new entry: for what holds a certificate
        open without sending (an idle stream), which no per-message check would reach; it asks
        :meth:`is_revoked` of each credential it holds."""
        self._listeners.append(listener)

    def __contains__(self, serial: str) -> bool:
        return serial in self._serials

    def __len__(self) -> int:
        return len(self._serials) + len(self._cutoffs)

    def is_revoked(self, credential: Credential) -> bool:
        """Whether the certificate is revoked: by its serial, or by its identity's cut-off."""
        cutoff = self._cutoffs.get(credential.identity)
        return credential.serial in self._serials or (cutoff is not None and credential.not_before <= cutoff)

    async def refresh(self) -> bool:
        """Re-read the list if the store's generation moved; True when it was re-read. Store errors propagate
        (the caller retries) and leave the current list in force."""
        generation = await self._client.get(GENERATION_KEY)
        if self.loaded and generation == self._generation:
            REVOCATION_REFRESHED.set(time.time())
            return False
        # The generation is read first: a revocation landing between the two reads moves it again, so the next
        # refresh reads the list once more; never is a newer list taken for an older generation.
        serials = frozenset(_text(s) for s in await self._client.zrange(SERIALS_KEY, time.time(), "+inf",
                                                                         byscore=True))
        cutoffs = {i: float(r["cutoff"]) for i, r in (await _identity_records(self._client)).items()}
        added = len(serials - self._serials) + sum(1 for i, c in cutoffs.items() if c > self._cutoffs.get(i, -1.0))
        self._serials, self._cutoffs = serials, cutoffs
        self._generation, self.loaded = generation, True
        REVOKED_SERIALS.set(len(self))
        REVOCATION_REFRESHED.set(time.time())
        if added:
            _log.warning("revocation list: %d entr%s newly revoked; %d serial(s) and %d identit%s in force", added,
                         "y" if added == 1 else "ies", len(serials), len(cutoffs), "y" if len(cutoffs) == 1 else "ies")
            for listener in self._listeners:
                listener(self)
        return True

    async def tick(self) -> None:
        """One periodic pass (the Service's ``revocations`` loop)."""
        await self.refresh()

    @staticmethod
    def refusal(credential: Credential) -> HaulmeshError:
        """The error a revoked certificate gets: UNAUTHENTICATED ``CERTIFICATE_REVOKED``."""
        return Unauthenticated(f"certificate {credential.serial} ({credential.identity or 'no identity'}) has been "
                               "revoked", reason=REASON, metadata={"serial": credential.serial})

    def check(self, credential: Credential) -> None:
        """Raise :meth:`refusal` if the certificate is revoked."""
        if self.is_revoked(credential):
            raise self.refusal(credential)

    def check_pem(self, pem: bytes) -> Credential:
        """:meth:`check` for a PEM certificate; returns its credential."""
        credential = credential_of(pem)
        self.check(credential)
        return credential

    def check_peer(self, context: grpc.aio.ServicerContext) -> Credential:
        """:meth:`check_pem` for the client certificate of the call's own handshake; returns its credential."""
        certs = context.auth_context().get("x509_pem_cert") or [b""]
        return self.check_pem(certs[0])
