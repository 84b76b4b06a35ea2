"""Certificate revocation: a serial deny-list in the store, cached in every process, checked on every call.

``haulmesh pki revoke`` writes a certificate's serial with the time its certificate expires; every service process
keeps the list in memory (:class:`RevocationList`), polls the store's generation marker every
``HAULMESH_REVOCATION_REFRESH_SECONDS`` (1 s) and re-reads the list when it moved. The authorization interceptor
refuses a revoked certificate before any handler runs (UNAUTHENTICATED, reason ``CERTIFICATE_REVOKED``), and a
long-lived stream is refused at its next message either way. docs/security.md, "Revocation".

Keys (one hash tag, so a revocation commits in one slot, on Redis Cluster too):

========================================  =====  ==========================================================
``revocation:{revocation}:serials``        ZSET   member: the serial, lowercase hex; score: when the entry may go
                                                  (the certificate's notAfter + :data:`EXPIRY_SLACK_SECONDS`)
``revocation:{revocation}:records``        HASH   serial → JSON: identity, reason, who revoked, when, notAfter
``revocation:{revocation}:generation``     STRING a fresh random value at every change: what the caches poll
========================================  =====  ==========================================================

Bounded: at most :data:`MAX_REVOKED_SERIALS` live entries (a revocation beyond is refused, RESOURCE_EXHAUSTED);
an entry is removed by the next revocation after it expired (the certificate could not be used anyway).
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
    "RevocationList",
    "Revoked",
    "certificate_serial",
    "revoke_certificate",
    "revoked_certificates",
]

_log = logging.getLogger("haulmesh.revocation")

_TAG = "{revocation}"
SERIALS_KEY = f"revocation:{_TAG}:serials"
RECORDS_KEY = f"revocation:{_TAG}:records"
GENERATION_KEY = f"revocation:{_TAG}:generation"

#: Live entries the list holds at most: 100,000 serials are ≈ 10 MB in each process's cache and one read of a few
#: MB when the list changes. A fleet revoking more than that inside one certificate lifetime has a CA to replace.
MAX_REVOKED_SERIALS = 100_000
#: An entry outlives its certificate's notAfter by this much: a server whose clock runs behind still refuses it.
EXPIRY_SLACK_SECONDS = 3600
#: The gRPC status reason of a refused revoked certificate (ErrorInfo.reason).
REASON = "CERTIFICATE_REVOKED"

REVOKED_SERIALS = Gauge("haulmesh_revoked_serials", "Revoked certificate serials in this process's cache.",
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


@functools.lru_cache(maxsize=4096)
def certificate_serial(pem: bytes) -> str:
    """A certificate's serial number as the deny-list keys it: lowercase hex, no leading zeros.

    Cached on the bytes, as :func:`identity_from_pem` is: a stream presents the same certificate on every call.
    """
    try:
        return format(x509.load_pem_x509_certificate(pem).serial_number, "x")
    except ValueError:
        return ""  # unparsable: identity_from_pem refuses it first


@dataclass(frozen=True)
class Revoked:
    """One entry of the deny-list."""

    serial: str
    identity: str
    reason: str
    revoked_by: str
    revoke_time: float
    not_after: float


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


async def revoked_certificates(client: redis.asyncio.Redis) -> list[Revoked]:
    """Every live entry of the deny-list, with its record (for ``haulmesh pki revoked``)."""
    serials = await client.zrange(SERIALS_KEY, time.time(), "+inf", byscore=True)
    records = await client.hmget(RECORDS_KEY, serials) if serials else []
    out = []
    for serial, raw in zip(serials, records, strict=True):
        data = json.loads(raw) if raw else {}
        out.append(Revoked(_text(serial), data.get("identity", ""), data.get("reason", ""),
                           data.get("revoked_by", ""), float(data.get("revoke_time", 0)),
                           float(data.get("not_after", 0))))
    return out


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
        self._generation: bytes | None = None
        #: Whether the list was read from the store at least once (a server serves only after it was).
        self.loaded = False
        #: Told the serials each refresh newly found revoked (telemetry ends the open streams they hold).
        self._listeners: list[Callable[[frozenset[str]], None]] = []

    def on_revoked(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Call ``listener`` with the newly revoked serials after each refresh that found some: for what holds a
        certificate open without sending (an idle stream), which no per-message check would reach."""
        self._listeners.append(listener)

    def __contains__(self, serial: str) -> bool:
        return serial in self._serials

    def __len__(self) -> int:
        return len(self._serials)

    async def refresh(self) -> bool:
        """Re-read the list if the store's generation moved; True when it was re-read. Store errors propagate
        (the caller retries) and leave the current list in force."""
        generation = await self._client.get(GENERATION_KEY)
        if self.loaded and generation == self._generation:
            REVOCATION_REFRESHED.set(time.time())
            return False
        # The generation is read first: a revocation landing between the two reads moves it again, so the next
        # refresh reads the list once more; never is a newer list taken for an older generation.
        serials = await self._client.zrange(SERIALS_KEY, time.time(), "+inf", byscore=True)
        added = {_text(s) for s in serials} - self._serials
        self._serials = frozenset(_text(s) for s in serials)
        self._generation, self.loaded = generation, True
        REVOKED_SERIALS.set(len(self._serials))
        REVOCATION_REFRESHED.set(time.time())
        if added:
            _log.warning("revocation list: %d serial(s) newly revoked, %d in force", len(added), len(self._serials))
            for listener in self._listeners:
                listener(frozenset(added))
        return True

    async def tick(self) -> None:
        """One periodic pass (the Service's ``revocations`` loop)."""
        await self.refresh()

    @staticmethod
    def refusal(serial: str) -> HaulmeshError:
        """The error a revoked certificate gets: UNAUTHENTICATED ``CERTIFICATE_REVOKED``."""
        return Unauthenticated(f"certificate {serial} has been revoked", reason=REASON, metadata={"serial": serial})

    def check(self, serial: str) -> None:
        """Raise :meth:`refusal` if ``serial`` is listed."""
        if serial in self._serials:
            raise self.refusal(serial)

    def check_pem(self, pem: bytes) -> str:
        """:meth:`check` for a PEM certificate; returns its serial."""
        serial = certificate_serial(pem)
        self.check(serial)
        return serial

    def check_peer(self, context: grpc.aio.ServicerContext) -> str:
        """:meth:`check_pem` for the client certificate of the call's own handshake; returns its serial."""
        certs = context.auth_context().get("x509_pem_cert") or [b""]
        return self.check_pem(certs[0])
