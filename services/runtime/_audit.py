"""The tamper-evident audit log: every successful mutating call, hash-chained.

Each entry holds its sequence number, the previous entry's hash and its own hash, SHA-256 over the
previous hash and the entry's canonical JSON. The head (last sequence and hash) is kept beside the
stream, so :func:`verify` detects an edited, deleted, reordered or inserted entry (a broken link or a
sequence gap) and a truncated tail (the head names an entry that is gone). Whoever can rewrite every
entry *and* the head can still forge history: production deployments anchor the head elsewhere
(periodic signed checkpoints shipped to the SIEM), as the seed's "immutable audit logs" asks.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

__all__ = ["AUDIT_STREAM", "AuditLog", "AuditReport", "verify"]

AUDIT_STREAM = "audit:{log}"
AUDIT_HEAD = "audit:{log}:head"
_GENESIS = "0" * 64


def _entry_hash(prev: str, record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev + canonical).encode()).hexdigest()


class AuditLog:
    """Appends to the audit chain of one store (safe across processes: optimistic transaction on the head)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client

    async def append(self, *, actor: str, method: str, carrier: str = "", resource: str = "",
                     outcome: str = "OK") -> None:
        record_base = {"time": round(time.time(), 3), "actor": actor, "method": method, "carrier": carrier,
                       "resource": resource, "outcome": outcome}

        async def write(pipe: Any) -> None:
            head = await pipe.hgetall(AUDIT_HEAD)
            seq = int(head.get(b"seq", 0)) + 1
            prev = head.get(b"hash", _GENESIS.encode()).decode()
            record = {**record_base, "seq": seq, "prev": prev}
            digest = _entry_hash(prev, record)
            pipe.multi()
            pipe.xadd(AUDIT_STREAM, {"record": json.dumps(record, sort_keys=True), "hash": digest})
            pipe.hset(AUDIT_HEAD, mapping={"seq": seq, "hash": digest})

        await self._redis.transaction(write, AUDIT_HEAD)


@dataclass(frozen=True)
class AuditReport:
    """What :func:`verify` found: ``problems`` is empty when the chain is intact."""

    entries: int
    problems: list[str]

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(client: redis.Redis) -> AuditReport:
    """Walk the whole chain (synchronously: it is a command-line check) and report every break."""
    problems: list[str] = []
    prev, expected_seq, count = _GENESIS, 1, 0
    last_id = "-"
    while True:
        batch = client.xrange(AUDIT_STREAM, min=last_id, count=1000)
        if last_id != "-":
            batch = batch[1:]
        if not batch:
            break
        for entry_id, fields in batch:
            count += 1
            try:
                record = json.loads(fields[b"record"])
                stored_hash = fields[b"hash"].decode()
            except (KeyError, ValueError):
                problems.append(f"entry {entry_id.decode()}: unreadable")
                continue
            if record.get("seq") != expected_seq:
                problems.append(f"entry {entry_id.decode()}: sequence {record.get('seq')}, expected {expected_seq}"
                                " (entries deleted, inserted or reordered)")
            if record.get("prev") != prev:
                problems.append(f"entry {entry_id.decode()} (seq {record.get('seq')}): does not follow the "
                                "previous entry (deleted, inserted or reordered)")
            if _entry_hash(record.get("prev", ""), record) != stored_hash:
                problems.append(f"entry {entry_id.decode()} (seq {record.get('seq')}): content does not match "
                                "its hash (edited)")
            prev, expected_seq = stored_hash, int(record.get("seq", expected_seq)) + 1
        last_id = batch[-1][0].decode()
    head = client.hgetall(AUDIT_HEAD)
    head_seq, head_hash = int(head.get(b"seq", 0)), head.get(b"hash", _GENESIS.encode()).decode()
    if head_seq != expected_seq - 1 or head_hash != prev:
        problems.append(f"the log ends at sequence {expected_seq - 1} but its head says {head_seq} "
                        "(truncated or rewritten)")
    return AuditReport(count, problems)
