"""The tamper-evident audit log: every successful mutating call, hash-chained.

Each process writes its own chain (``audit:{<writer>}``, the writer being service, host, pid and start
time), listed in ``audit:chains``. One writer per chain means no cross-process contention on a hot head
key: appends queued while a write is in flight are committed together in the next one (group commit),
one round trip per batch, and the caller's RPC answers once its entry is stored.

Each entry holds its sequence number, the previous entry's hash and its own hash, SHA-256 over the
previous hash and the entry's canonical JSON; each chain's head (last sequence and hash) is stored
beside it in the same transaction. :func:`verify` detects an edited, deleted, reordered or inserted entry
(a broken link or a sequence gap), a truncated tail (the head names an entry that is gone) and a chain
removed while still listed. Whoever can rewrite every entry, every head *and* the list could still forge
history, or put back an older copy of the store: so each process also signs its chain's head with a key the
store never sees and exports it off the store (:mod:`.audit_anchor`), and :func:`verify` given those signed
checkpoints detects a recomputed chain and a rollback too (docs/security.md, "Audit anchor").

For a TMS's call the gateway forwards who is behind the token (its subject and client) as request metadata;
the writer records them as the entry's ``actor`` (``token:<sub>``) and ``client``, with the gateway as ``via``
(:data:`ACTOR_SUBJECT_METADATA_KEY`), believed only from the gateway's own identity.

Retention (docs/capacity.md, "Retention of what the store holds"): what reads the chains is
``haulmesh audit verify`` and the evidence packs of missions (:func:`entries_touching`), exported after
delivery and within the dispute window; entries older than :data:`AUDIT_RETENTION_SECONDS` are trimmed by
:func:`trim` (each process runs it over every chain every :data:`TRIM_INTERVAL_SECONDS`). A trim removes a
chain's oldest entries and records, in the same script, the sequence and hash of the last one removed as the
head's ``base_seq`` / ``base_hash`` and that entry's whole record (``base_record``): the chain left verifies from
there, and the newest entry of a chain is never trimmed (its head stays linked). Verify does not trust the base:
``base_record`` must hash to ``base_hash``, carry ``base_seq`` and be older than the retention, so deleting a
chain's first entries and rewriting the base to match is found.

High-volume methods (a truck's IngestTelemetry, one frame a call) are coalesced: ``append(coalesce_seconds=N)``
writes one entry per (actor, method, carrier, resource) per N seconds, not one per call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import redis
import redis.asyncio

from ._errors import HaulmeshError
from ._keys import new_id

if TYPE_CHECKING:
    from .audit_anchor import Checkpoint

__all__ = ["ACTOR_CLIENT_METADATA_KEY", "ACTOR_SUBJECT_METADATA_KEY", "AUDIT_RETENTION_SECONDS", "CHAINS_KEY",
           "AuditEntry", "AuditLog", "AuditReport", "TooManyAuditEntries", "UnusableCheckpoints", "actor_from_metadata",
           "actor_metadata", "entries_touching", "trim", "verify", "verify_entries"]

CHAINS_KEY = "audit:chains"
_GENESIS = "0" * 64
#: How long audit entries stay in the store: a year of disputes on an invoice, plus a month to export the pack.
AUDIT_RETENTION_SECONDS = 395 * 86400
#: How often each process trims every chain (cheap: one script call per chain).
TRIM_INTERVAL_SECONDS = 3600.0
#: Coalesced appends remembered per process (least recently written first out).
_COALESCE_KEYS = 10_000
#: Request metadata by which the gateway names who is behind a TMS's token: its subject (``sub``) and its client
#: (``azp`` / ``client_id``), percent-encoded. Believed only from the gateway's identity (see _authz.py).
ACTOR_SUBJECT_METADATA_KEY = "haulmesh-actor-subject"
ACTOR_CLIENT_METADATA_KEY = "haulmesh-actor-client"
#: Recorded before a token's subject as the actor (``token:<sub>``): whatever the subject says, it never reads as a
#: mesh identity. A token without a subject is recorded as the caller (the gateway), its client still named.
TOKEN_ACTOR_PREFIX = "token:"  # noqa: S105 (an actor prefix, not a secret)
#: Entries read per page by :func:`verify` (one XRANGE); the next page is read while this one is hashed.
VERIFY_PAGE_ENTRIES = 5000

# Trim a chain's entries older than a cutoff, keeping its newest entry, and record the base the rest links to.
# KEYS: the chain, its head. ARGV: cutoff entry id (exclusive upper bound, "(<ms>-0"), max entries per call.
# Returns the number of entries removed.
_TRIM_LUA = """
local old = redis.call('XRANGE', KEYS[1], '-', ARGV[1], 'COUNT', ARGV[2])
if #old == 0 then return 0 end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1][1] == old[#old][1] then table.remove(old) end
if #old == 0 then return 0 end
local last = old[#old][2]
local record, digest
for i = 1, #last, 2 do
  if last[i] == 'record' then record = last[i + 1] elseif last[i] == 'hash' then digest = last[i + 1] end
end
local ids = {}
for i, entry in ipairs(old) do ids[i] = entry[1] end
redis.call('XDEL', KEYS[1], unpack(ids))
redis.call('HSET', KEYS[2], 'base_seq', cjson.decode(record)['seq'], 'base_hash', digest, 'base_record', record)
return #ids
"""


def _entry_hash(prev: str, record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev + canonical).encode()).hexdigest()


#: Longest subject or client recorded from a token (characters, before percent-encoding); longer ones are cut.
MAX_ACTOR_CHARS = 256


def actor_metadata(subject: str, client: str) -> tuple[tuple[str, str], ...]:
    """The gateway's request metadata naming who is behind a TMS's token (percent-encoded: gRPC metadata is
    printable ASCII, a ``sub`` may be anything); empty parts are left out."""
    return tuple((key, quote(value[:MAX_ACTOR_CHARS], safe="@:._-~+"))
                 for key, value in ((ACTOR_SUBJECT_METADATA_KEY, subject), (ACTOR_CLIENT_METADATA_KEY, client))
                 if value)


def actor_from_metadata(metadata: Iterable[tuple[str, Any]]) -> tuple[str, str]:
    """(subject, client) from :func:`actor_metadata`'s entries ("" when absent, or given more than once)."""
    found: dict[str, list[str]] = {}
    for key, value in metadata:
        if key in (ACTOR_SUBJECT_METADATA_KEY, ACTOR_CLIENT_METADATA_KEY) and isinstance(value, str):
            found.setdefault(key, []).append(value)

    def one(key: str) -> str:
        values = found.get(key, [])
        return unquote(values[0])[:MAX_ACTOR_CHARS] if len(values) == 1 else ""

    return one(ACTOR_SUBJECT_METADATA_KEY), one(ACTOR_CLIENT_METADATA_KEY)


def head_key(stream: str) -> str:
    return f"{stream}:head"


class AuditLog:
    """This process's audit chain on one store."""

    def __init__(self, client: redis.asyncio.Redis, writer: str = "audit") -> None:
        self._redis = client
        self.stream = f"audit:{{{writer}-{socket.gethostname()}-{os.getpid()}-{new_id()}}}"
        #: The chains of this writer's every process (its store user may write those only: _store_acl.py).
        self._own_chains = f"audit:{{{writer}-"
        self._seq, self._hash = 0, _GENESIS
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writing: asyncio.Task[None] | None = None
        self._registered = False
        self._head_uncertain = False
        #: The head a write in flight would leave: after a failure, the store's head is believed only if it is
        #: this or the head before.
        self._tried: tuple[int, str] | None = None
        #: When each coalesced (actor, method, carrier, resource) was last written (monotonic seconds).
        self._coalesced: OrderedDict[tuple[str, str, str, str], float] = OrderedDict()
        #: Coalesced entries being written, by key: calls meanwhile wait for that write rather than add one.
        self._coalescing: dict[tuple[str, str, str, str], asyncio.Future[None]] = {}
        self._trimmed_at = time.monotonic()
        self._trimming: asyncio.Task[int] | None = None

    def head(self) -> tuple[int, str]:
        """The last sequence and hash this process stored (from memory, not read back from the store): what its
        checkpoints sign."""
        return self._seq, self._hash

    async def append(self, *, actor: str, method: str, carrier: str = "", resource: str = "",
                     outcome: str = "OK", coalesce_seconds: float = 0.0, client: str = "", via: str = "") -> None:
        """Add an entry; returns once it is stored (with whatever else was queued meanwhile).

        ``coalesce_seconds``: skip the entry if the same actor, method, carrier and resource was written less
        than that long ago by this process (one entry per truck session, not per frame). ``client`` and ``via``
        (recorded only when given): the OAuth2 client behind a TMS's call, and the identity that relayed it
        (the gateway) when ``actor`` is the token's subject rather than the caller."""
        now = time.monotonic()
        key = (actor if not client else f"{actor} {client}", method, carrier, resource)
        if coalesce_seconds > 0:
            last = self._coalesced.get(key)
            if last is not None and now - last < coalesce_seconds:
                return
            pending = self._coalescing.get(key)
            if pending is not None:  # the window's entry is being written: its outcome is this call's too
                await asyncio.shield(pending)
                return
        if now - self._trimmed_at >= TRIM_INTERVAL_SECONDS and (self._trimming is None or self._trimming.done()):
            self._trimmed_at = now
            self._trimming = asyncio.get_running_loop().create_task(self._trim_quietly())
        record = {"time": round(time.time(), 3), "actor": actor, "method": method, "carrier": carrier,
                  "resource": resource, "outcome": outcome}
        if client:
            record["client"] = client
        if via:
            record["via"] = via
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((record, done))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.get_running_loop().create_task(self._write())
        if coalesce_seconds <= 0:
            await done
            return
        # The window is marked only once its entry is stored: a failed write leaves the window open, so the
        # next call writes it (an hour of a truck's frames is never left without its entry).
        self._coalescing[key] = done
        try:
            await asyncio.shield(done)
        finally:
            if self._coalescing.get(key) is done:
                del self._coalescing[key]
        self._coalesced[key] = now
        self._coalesced.move_to_end(key)
        while len(self._coalesced) > _COALESCE_KEYS:
            self._coalesced.popitem(last=False)

    async def _write(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                if not self._registered:
                    await self._redis.sadd(CHAINS_KEY, self.stream)
                    self._registered = True
                if self._head_uncertain:  # a failed write may have committed after all
                    await self._settle_head()
                seq, digest = self._seq, self._hash
                async with self._redis.pipeline(transaction=True) as pipe:
                    for record, _ in batch:
                        seq += 1
                        entry = {**record, "seq": seq, "prev": digest}
                        digest = _entry_hash(digest, entry)
                        pipe.xadd(self.stream, {"record": json.dumps(entry, sort_keys=True), "hash": digest})
                    pipe.hset(head_key(self.stream), mapping={"seq": seq, "hash": digest})
                    self._tried = (seq, digest)
                    await pipe.execute()
            except Exception as exc:  # every waiter of the batch learns it failed
                self._head_uncertain = self._tried is not None
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            self._seq, self._hash = seq, digest
            self._tried = None
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _settle_head(self) -> None:
        """After a failed write, learn whether it committed (one transaction: all or nothing). The store's head
        is believed only if it is this process's own head before the write or the one the write would have left;
        anything else means somebody else wrote the head, and this process keeps its own (its checkpoints sign
        what it wrote; the next entry's link to it shows the break to verify)."""
        head = await self._redis.hgetall(head_key(self.stream))
        stored = (int(head.get(b"seq", 0)), head.get(b"hash", _GENESIS.encode()).decode())
        if stored == self._tried:
            self._seq, self._hash = stored
        elif stored != (self._seq, self._hash):
            logging.getLogger("haulmesh.audit").error(
                "AUDIT: %s head in the store is seq %d, which this process did not write (it wrote up to %d)",
                self.stream, stored[0], self._seq)
        self._head_uncertain, self._tried = False, None

    async def _trim_quietly(self) -> int:
        try:
            return await trim(self._redis, prefix=self._own_chains)
        except Exception as exc:  # retention is housekeeping: the next interval tries again
            logging.getLogger("haulmesh.audit").warning("audit chains not trimmed: %s", exc)
            return 0


async def trim(client: redis.asyncio.Redis, *, retention_seconds: float = AUDIT_RETENTION_SECONDS,
               chunk: int = 1000, prefix: str = "") -> int:
    """Remove every chain's entries older than ``retention_seconds`` (never a chain's newest), each chain's
    head recording where its remaining entries start; returns the entries removed. ``prefix``: only the chains
    whose key starts with it (a service trims its own processes' chains: its store user may write no other)."""
    cutoff = f"({int((time.time() - retention_seconds) * 1000)}-0"
    script = client.register_script(_TRIM_LUA)
    removed = 0
    for raw in sorted(await client.smembers(CHAINS_KEY)):
        stream = raw.decode() if isinstance(raw, bytes) else raw
        if not stream.startswith(prefix):
            continue
        while True:
            n = int(await script(keys=[stream, head_key(stream)], args=[cutoff, chunk]))
            removed += n
            if n < chunk - 1:
                break
    return removed


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify` found: ``problems`` is empty when every chain is intact.

    With checkpoints: ``checkpoints`` were checked against the store (every one of them, signature first),
    ``anchored_chains`` of the ``chains`` have at least one, and ``unanchored_entries`` entries lie after their
    chain's last checkpoint (covered by the hash chain alone until the next one); ``unanchored_chains`` names the
    listed chains with no checkpoint at all whose first entry is older than the checkpoint interval plus
    :data:`CHECKPOINT_SLACK_SECONDS` (their writer should have anchored them by now: not proof of tampering, but
    nothing vouches for them)."""

    entries: int
    chains: int
    problems: list[str]
    checkpoints: int = 0
    anchored_chains: int = 0
    unanchored_entries: int = 0
    unanchored_chains: tuple[str, ...] = ()

    @property
    def intact(self) -> bool:
        return not self.problems


def _base_problems(stream: str, base_seq: int, base_hash: str, base_record: bytes | None) -> list[str]:
    """What is wrong with a trimmed chain's base: the last trimmed entry's record, kept in the head, must hash to
    ``base_hash``, carry ``base_seq`` and be older than the retention (else entries were deleted and the base
    rewritten to hide it: only retention removes entries, and only old ones)."""
    where = f"{stream}: trimmed base (seq {base_seq})"
    if base_record is None:
        return [f"{where}: the last trimmed entry's record is missing (base rewritten)"]
    try:
        record = json.loads(base_record)
        seq, at = int(record["seq"]), float(record["time"])
    except (ValueError, KeyError, TypeError):
        return [f"{where}: the last trimmed entry's record is unreadable"]
    problems = []
    if _entry_hash(str(record.get("prev", "")), record) != base_hash:
        problems.append(f"{where}: the last trimmed entry's record does not match the base hash (rewritten)")
    if seq != base_seq:
        problems.append(f"{where}: the last trimmed entry is seq {seq} (base rewritten)")
    if at >= time.time() - AUDIT_RETENTION_SECONDS:
        problems.append(f"{where}: the last trimmed entry is younger than the retention (entries deleted)")
    return problems


@dataclass
class _ChainWalk:
    """One chain's verification: what was read, and what the signed checkpoints said about it."""

    count: int = 0
    first_off_base: bool = False
    head_seq: int = 0
    unanchored: int = 0
    #: The first entry's stream id time (Unix ms), 0 when the chain has none.
    first_ms: int = 0


#: How much later than its entry a checkpoint may be signed beyond one checkpoint interval: retries every 30 s
#: through a checkpoint store outage of up to a day, and clock skew between hosts. Used twice by :func:`verify`: a
#: checkpoint below a trimmed chain's base must be older than the retention by at least interval + this (else its
#: entries were removed before their time), and a chain without any checkpoint is reported once it is older than
#: interval + this.
CHECKPOINT_SLACK_SECONDS = 86400.0


class UnusableCheckpoints(HaulmeshError):
    """What :func:`verify` was given as checkpoints cannot be checked against: not the signed checkpoints
    :func:`.audit_anchor.read_checkpoints` returns (a bare hash has no signing time or final flag, so the retention
    and final checks would be skipped in silence), or a checkpoint filed under another chain or sequence.
    ``haulmesh audit verify`` exits 2 (cannot check), never a check with parts silently left out."""

    code_name = "INVALID_ARGUMENT"
    default_reason = "UNUSABLE_CHECKPOINTS"


@dataclass(frozen=True)
class _Anchors:
    """One chain's signed checkpoints, as :func:`verify` uses them: hash and time by sequence, and whether the
    newest was written as its process stopped (``final``)."""

    hashes: dict[int, str]
    times: dict[int, float]
    final: bool

    @classmethod
    def of(cls, chain: str, by_seq: Mapping[int, Any]) -> _Anchors:
        """From sequence → :class:`.audit_anchor.Checkpoint` of ``chain``; :class:`UnusableCheckpoints` for anything
        else (a bare hash, a checkpoint of another chain or sequence)."""
        from .audit_anchor import Checkpoint  # here, not at the top: audit_anchor (the layer above) uses this module

        for seq, checkpoint in by_seq.items():
            if not isinstance(checkpoint, Checkpoint):
                raise UnusableCheckpoints(
                    f"checkpoint {chain} sequence {seq} is a {type(checkpoint).__name__}, not a signed Checkpoint "
                    "(audit_anchor.read_checkpoints(...).by_chain): without its signing time and final flag the "
                    "retention and final checks cannot be made")
            if (checkpoint.chain, checkpoint.seq) != (chain, seq):
                raise UnusableCheckpoints(f"checkpoint {checkpoint.chain} sequence {checkpoint.seq} is filed as "
                                          f"{chain} sequence {seq}")
        newest = by_seq[max(by_seq)] if by_seq else None
        return cls({seq: c.hash for seq, c in by_seq.items()}, {seq: float(c.time) for seq, c in by_seq.items()},
                   bool(newest is not None and newest.final))


# One page of a chain for verify, flattened in the store: [id, record, hash, id, record, hash, ...] (a missing field
# is nil). The client then parses three strings per entry instead of XRANGE's nested arrays: a third of the
# verifier's CPU per entry (pure-Python reply parsing was its largest cost). KEYS: the chain. ARGV: the start id
# (inclusive, or "(<id>" exclusive), the page size.
_PAGE_LUA = """
local page = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local out = {}
for _, entry in ipairs(page) do
  local fields, record, digest = entry[2], false, false
  for i = 1, #fields, 2 do
    if fields[i] == 'record' then record = fields[i + 1] elseif fields[i] == 'hash' then digest = fields[i + 1] end
  end
  out[#out + 1] = entry[1]
  out[#out + 1] = record
  out[#out + 1] = digest
end
return out
"""


def _pages(client: redis.Redis, stream: str, pool: ThreadPoolExecutor) -> Iterator[list[Any]]:
    """The chain's entries, a page at a time, flat (``[id, record, hash, ...]``); the next page is read (in
    ``pool``) while the caller checks this one, so the store's time and the hashing overlap (docs/security.md:
    1,000,000 entries within a minute)."""
    # EVAL_RO, not EVALSHA: a script's keys count as written unless it runs read-only, and verify runs as a user
    # that may only read the chains (the store user "operator": docs/security.md, "Store users"). The server
    # caches the script by its digest, so resending it costs a few hundred bytes a page.
    def read(start: str) -> list[Any]:
        return client.eval_ro(_PAGE_LUA, 1, stream, start, VERIFY_PAGE_ENTRIES)  # type: ignore[no-any-return]

    page = read("-")
    while page:
        following = None
        if len(page) == 3 * VERIFY_PAGE_ENTRIES:
            following = pool.submit(read, f"({page[-3].decode()}")
        yield page
        page = following.result() if following is not None else []


def _seq_of(raw_record: bytes) -> int:
    """An entry's sequence, or -1 when unreadable (so it is walked, and reported)."""
    try:
        seq = json.loads(raw_record).get("seq")
    except (ValueError, AttributeError):
        return -1
    return seq if isinstance(seq, int) else -1


def _verify_chain(client: redis.Redis, stream: str, problems: list[str], pool: ThreadPoolExecutor,
                  chain_anchors: _Anchors | None = None, *, interval_seconds: float = 300.0) -> _ChainWalk:
    """Check one chain into ``problems``; ``chain_anchors`` are its signed checkpoints, each checked against the
    stored entry of that sequence and against the head. Returns what was read and whether the first entry did not
    follow the base read before it (which a trim running meanwhile also causes: the caller reads the chain again).

    The head (and the base) are read once, before the walk, and the walk stops at the head's entry: head and
    entries are written in one transaction, so entries a live writer adds meanwhile are beyond it and never taken
    for a mismatch (the next verify checks them)."""
    walk = _ChainWalk()
    chain_anchors = chain_anchors or _Anchors({}, {}, False)
    anchors = chain_anchors.hashes
    head = client.hgetall(head_key(stream))
    walk.head_seq = int(head.get(b"seq", 0))
    head_hash = head.get(b"hash", _GENESIS.encode()).decode()
    # Set once retention trimmed the chain.
    base = (head.get(b"base_seq"), head.get(b"base_hash"), head.get(b"base_record"))
    prev, expected_seq = (base[1] or _GENESIS.encode()).decode(), int(base[0] or 0) + 1
    if base[0] is not None:
        base_seq = int(base[0])
        problems.extend(_base_problems(stream, base_seq, prev, base[2]))
        signed = anchors.get(base_seq)
        if signed is not None and signed != prev:
            problems.append(f"{stream}: trimmed base (seq {base[0]}) differs from the signed checkpoint of that "
                            "sequence (rewritten)")
        # Only retention removes entries, and only entries older than it: a checkpoint below the base signed more
        # recently than that (plus the time a checkpoint may lag its entry) anchored entries removed early.
        newest_allowed = time.time() - AUDIT_RETENTION_SECONDS + interval_seconds + CHECKPOINT_SLACK_SECONDS
        early = [seq for seq, at in chain_anchors.times.items() if seq < base_seq and at > newest_allowed]
        if early:
            problems.append(f"{stream}: signed entries removed before their retention: checkpoint(s) up to sequence "
                            f"{max(early)} were signed less than {AUDIT_RETENTION_SECONDS // 86400} days ago, but "
                            f"the store's chain starts after sequence {base_seq} (history erased, base forged)")
    first: bool | None = None
    last_anchor = max(anchors, default=0)
    at_head = False
    for page in _pages(client, stream, pool):
        for at in range(0, len(page), 3):
            entry_id, raw_record, raw_hash = page[at:at + 3]
            if at_head and raw_record and _seq_of(raw_record) > walk.head_seq:
                break  # written after the head was read (a live writer): the next verify checks it
            walk.count += 1
            if first is None:
                walk.first_ms = int(entry_id.split(b"-")[0])
            try:
                record = json.loads(raw_record)
                stored_hash = raw_hash.decode()
                if not isinstance(record, dict):
                    raise TypeError("not an object")
            except (TypeError, ValueError, AttributeError):
                problems.append(f"{stream} entry {entry_id.decode()}: unreadable")
                continue
            seq, linked = record.get("seq"), record.get("prev")
            if first is None:
                first = seq != expected_seq
            # The common case first, each check once: every message is built only for a problem.
            recomputed = _entry_hash(linked if isinstance(linked, str) else "", record)
            signed = anchors.get(seq) if isinstance(seq, int) else None
            if seq != expected_seq or linked != prev or recomputed != stored_hash or signed not in (None, stored_hash):
                where = f"{stream} entry {entry_id.decode()}"
                if seq != expected_seq:
                    problems.append(f"{where}: sequence {seq}, expected {expected_seq}"
                                    " (entries deleted, inserted or reordered)")
                if linked != prev:
                    problems.append(f"{where} (seq {seq}): does not follow the previous entry "
                                    "(deleted, inserted or reordered)")
                if recomputed != stored_hash:
                    problems.append(f"{where} (seq {seq}): content does not match its hash (edited)")
                if signed not in (None, stored_hash):
                    problems.append(f"{where} (seq {seq}): differs from the signed checkpoint of that sequence "
                                    "(edited and the chain recomputed, or replaced)")
            if isinstance(seq, int) and seq > last_anchor:
                walk.unanchored += 1
            prev, expected_seq = stored_hash, (seq if isinstance(seq, int) else expected_seq) + 1
            if seq == walk.head_seq and stored_hash == head_hash and head:
                at_head = True  # the head read before the walk: entries beyond its sequence came after it
        else:
            continue
        break
    walk.first_off_base = bool(first)
    if chain_anchors.final and expected_seq - 1 > last_anchor:
        problems.append(f"{stream}: {expected_seq - 1 - last_anchor} entries after sequence {last_anchor}, whose "
                        "signed checkpoint was its process's last (written as it stopped): added afterwards "
                        "(forged)")
    if not head:
        problems.append(f"{stream}: listed but its head is gone (chain removed)")
    elif walk.head_seq != expected_seq - 1 or head_hash != prev:
        problems.append(f"{stream}: ends at sequence {expected_seq - 1} but its head says {walk.head_seq} "
                        "(truncated or rewritten)")
    if last_anchor > expected_seq - 1:
        problems.append(f"{stream}: a signed checkpoint names sequence {last_anchor}, beyond the store's last "
                        f"entry {expected_seq - 1} (truncated, or the store rolled back to an older state)")
    return walk


def bases(client: redis.Redis) -> dict[str, int]:
    """Every listed chain's base sequence (0 when retention never trimmed it): what
    :func:`.audit_anchor.read_checkpoints` needs to read only the checkpoints :func:`verify` uses."""
    chains = sorted(s.decode() for s in client.smembers(CHAINS_KEY))
    with client.pipeline(transaction=False) as pipe:
        for chain in chains:
            pipe.hget(head_key(chain), "base_seq")
        found = pipe.execute()
    return {chain: int(base or 0) for chain, base in zip(chains, found, strict=True)}


def verify(client: redis.Redis, *, checkpoints: Mapping[str, Mapping[int, Checkpoint]] | None = None,
           checkpoint_interval_seconds: float = 300.0) -> AuditReport:
    """Walk every chain (synchronously: it is a command-line check) and report every break.

    ``checkpoints``: the signed checkpoints, already signature-checked (:func:`.audit_anchor.read_checkpoints`),
    as chain → sequence → :class:`.audit_anchor.Checkpoint`; anything else (a bare hash, which would silently skip
    the checks needing the checkpoint's time and final flag) raises :class:`UnusableCheckpoints` before any chain is
    read (``haulmesh audit verify``: exit 2, cannot check). Read them *before* calling: a checkpoint is written only
    after its entries are stored, so every one read before the walk must be matched by the store; a chain they name
    that the store does not list was deleted or the store rolled back. ``checkpoint_interval_seconds``: the writers'
    interval (``HAULMESH_AUDIT_CHECKPOINT_INTERVAL_SECONDS``), for how late a checkpoint may be."""
    problems: list[str] = []
    anchors = {chain: _Anchors.of(chain, by_seq) for chain, by_seq in (checkpoints or {}).items()}
    chains = sorted(s.decode() for s in client.smembers(CHAINS_KEY))
    entries = unanchored = 0
    bare: list[str] = []
    overdue_ms = (time.time() - checkpoint_interval_seconds - CHECKPOINT_SLACK_SECONDS) * 1000
    with ThreadPoolExecutor(1) as pool:
        for stream in chains:
            found: list[str] = []
            walk = _verify_chain(client, stream, found, pool, anchors.get(stream),
                                 interval_seconds=checkpoint_interval_seconds)
            if walk.first_off_base and found:
                # The first entry does not follow the base: a trim (every process runs one hourly) may have removed
                # entries and moved the base between the two reads. Read the base and the chain once more: a
                # deletion stays a deletion, a trim now verifies.
                found = []
                walk = _verify_chain(client, stream, found, pool, anchors.get(stream),
                                     interval_seconds=checkpoint_interval_seconds)
            problems.extend(found)
            entries += walk.count
            unanchored += walk.unanchored
            if checkpoints is not None and stream not in anchors and walk.count and walk.first_ms < overdue_ms:
                bare.append(stream)
    listed = set(chains)
    for chain in sorted(set(anchors) - listed):
        problems.append(f"{chain}: signed checkpoints up to sequence {max(anchors[chain].hashes)}, but the store "
                        "does not list the chain (deleted, or the store rolled back to before it)")
    return AuditReport(entries, len(chains), problems, checkpoints=sum(len(a.hashes) for a in anchors.values()),
                       anchored_chains=len(listed & {c for c, a in anchors.items() if a.hashes}),
                       unanchored_entries=unanchored, unanchored_chains=tuple(bare))


@dataclass(frozen=True)
class AuditEntry:
    """One stored audit entry, exactly as stored: its chain, its stream id, the record's JSON text and its hash.

    ``record`` stays the stored text (never re-serialized) so a copy outside the store (an evidence pack) can
    be checked with :func:`verify_entries` alone.
    """

    chain: str
    entry_id: str
    record: str
    hash: str


def verify_entries(entries: list[AuditEntry]) -> list[str]:
    """Check audit entries taken out of the store (no store needed); returns the problems, empty if sound.

    Every entry's hash must recompute from its record; within a chain, sequence numbers must ascend without
    repeats, and an entry whose sequence follows the previous one's directly must name that entry's hash as
    ``prev`` (the link). Entries need not be contiguous (a pack carries excerpts): a gap is not a problem, but
    links are checked across every pair of neighbours.
    """
    problems: list[str] = []
    last: dict[str, tuple[int, str]] = {}
    for entry in entries:
        where = f"{entry.chain} entry {entry.entry_id}"
        try:
            record = json.loads(entry.record)
            seq = int(record["seq"])
            prev = str(record["prev"])
        except (ValueError, KeyError, TypeError):
            problems.append(f"{where}: unreadable record")
            continue
        if _entry_hash(prev, record) != entry.hash:
            problems.append(f"{where} (seq {seq}): content does not match its hash (edited)")
        before = last.get(entry.chain)
        if before is not None:
            if seq <= before[0]:
                problems.append(f"{where}: sequence {seq} after {before[0]} (reordered or repeated)")
            elif seq == before[0] + 1 and prev != before[1]:
                problems.append(f"{where} (seq {seq}): does not follow the previous entry (link broken)")
        elif seq == 1 and prev != _GENESIS:
            problems.append(f"{where}: the first entry of a chain must follow the genesis hash")
        last[entry.chain] = (seq, entry.hash)
    return problems


class TooManyAuditEntries(Exception):
    """More audit entries touch the resources than the caller's bound (:func:`entries_touching`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} audit entries touch the resources")
        self.limit = limit


async def entries_touching(client: redis.asyncio.Redis, resources: set[str], *, carrier: str | None = None,
                           since_ms: int = 0, max_entries: int = 10_000) -> list[AuditEntry]:
    """The audit entries whose resource is one of ``resources``, and no other entry, chain by chain.

    Only the touching entries leave the store: a chain interleaves every carrier's calls, so the entries between
    two touching ones are other tenants' records and never go into one carrier's pack. Each entry carries its
    own ``prev`` hash and its hash, so :func:`verify_entries` checks that every entry is unaltered (its hash
    recomputes over its prev and content) and, where two kept entries are adjacent in their chain, the link
    between them; what lies between non-adjacent ones is vouched for by the store's whole-chain check (``haulmesh
    audit verify``), not by the excerpt. With ``carrier``, an entry made for another carrier is dropped even if
    it names the resource (entries made for no carrier, a truck's or a service's call, stay; ``acme`` and
    ``carriers/acme`` are one carrier).

    ``since_ms`` starts each chain's scan at that Unix time (stream ids are times: the mission's dispatch, before
    which nothing can touch it); more than ``max_entries`` touching entries raises :class:`TooManyAuditEntries`, so
    an export's memory stays bounded whatever the chains hold.
    """
    found: list[AuditEntry] = []
    start = f"{max(0, int(since_ms))}-0"
    tenant = None if carrier is None else carrier.removeprefix("carriers/")  # recorded as given: "carriers/<id>"
    for raw in sorted(await client.smembers(CHAINS_KEY)):
        stream = raw.decode() if isinstance(raw, bytes) else raw
        last_id = start
        first_page = True
        while True:
            batch = await client.xrange(stream, min=last_id, count=1000)
            if not first_page:
                batch = batch[1:]
            first_page = False
            if not batch:
                break
            for entry_id, fields in batch:
                try:
                    text = fields[b"record"].decode()
                    record = json.loads(text)
                    touches = record.get("resource") in resources
                    made_for = str(record.get("carrier", "")).removeprefix("carriers/")
                    if touches and tenant is not None and made_for not in ("", tenant):
                        touches = False  # another tenant's call naming the resource: not this carrier's evidence
                    entry = AuditEntry(stream, entry_id.decode(), text, fields[b"hash"].decode()) if touches else None
                except (KeyError, ValueError, AttributeError):
                    continue  # unreadable: `haulmesh audit verify` reports it; a pack carries only what parses
                if entry is not None:
                    found.append(entry)
                    if len(found) > max_entries:
                        raise TooManyAuditEntries(max_entries)
            last_id = batch[-1][0].decode()
    return found
