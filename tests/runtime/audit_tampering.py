"""AT-20's attacks on the audit log, written once for the short and the full test (and for nothing else).

Each attack is what somebody who can write the store (but not the checkpoint store, and without the signing key)
does to a chain that a process wrote and anchored: it runs on a real Valkey against a chain written by the runtime's
own :class:`AuditLog`, whose :class:`CheckpointWriter` exported a signed checkpoint of its head first.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
import redis.asyncio

from services.runtime import AuditLog, verify_audit_log
from services.runtime._audit import _GENESIS, AUDIT_RETENTION_SECONDS, _entry_hash, head_key
from services.runtime._audit import bases as audit_bases
from services.runtime.audit_anchor import AuditSigner, CheckpointWriter, load_public_keys, read_checkpoints
from services.runtime.objectstore import ObjectStore

#: Every attack of AT-20 (issue 12): the naive ones the hash chain alone shows, and the careful ones (the chain
#: recomputed, the head rewritten, an older copy of the chain put back, the whole history erased behind a made-up
#: retention base) that only the signed checkpoints show.
ATTACKS = ("edit", "delete", "reorder", "truncate", "recompute", "rollback", "erase")
#: The attacks a careful attacker makes invisible to the hash chain alone (the anchor is what finds them).
CHAIN_BLIND = frozenset({"truncate", "recompute", "rollback", "erase"})


@dataclass
class Outcome:
    """One attack: its problems seen by the hash chain alone, and with the signed checkpoints."""

    attack: str
    position: int
    chain_only: list[str]
    anchored: list[str]


def _entries(sync: redis.Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return sync.xrange(stream)


def _rewrite(sync: redis.Redis, stream: str, fields: list[dict[bytes, bytes]], head: dict | None = None) -> None:
    """Replace the stream with these entries (ids must grow: it is rewritten whole) and, if given, its head."""
    old_head = sync.hgetall(head_key(stream))
    with sync.pipeline(transaction=True) as pipe:
        pipe.delete(stream)
        for f in fields:
            pipe.xadd(stream, f)
        pipe.delete(head_key(stream))
        pipe.hset(head_key(stream), mapping=head or old_head)
        pipe.execute()


def _recomputed(records: list[dict]) -> tuple[list[dict[bytes, bytes]], dict]:
    """The entries with every link and hash recomputed (SHA-256 is unkeyed: anyone can), and the head to match."""
    prev, out = _GENESIS, []
    for seq, record in enumerate(records, 1):
        record = {**record, "seq": seq, "prev": prev}
        prev = _entry_hash(prev, record)
        out.append({b"record": json.dumps(record, sort_keys=True).encode(), b"hash": prev.encode()})
    return out, {"seq": len(records), "hash": prev}


def attack(sync: redis.Redis, stream: str, kind: str, position: int, rng: random.Random) -> None:
    """Tamper with ``stream`` (not the rollback, which needs the chain's history: see :func:`run_attack`)."""
    entries = _entries(sync, stream)
    fields = [f for _, f in entries]
    records = [json.loads(f[b"record"]) for f in fields]
    if kind == "edit":  # who did it, changed in place; the stored hash left as it was
        records[position]["actor"] = "spiffe://haulmesh.local/operator/mallory"
        fields[position] = {b"record": json.dumps(records[position], sort_keys=True).encode(),
                            b"hash": fields[position][b"hash"]}
        _rewrite(sync, stream, fields)
    elif kind == "delete":
        sync.xdel(stream, entries[position][0])
    elif kind == "reorder":
        other = (position + rng.randrange(1, len(fields))) % len(fields)
        fields[position], fields[other] = fields[other], fields[position]
        _rewrite(sync, stream, fields)
    elif kind == "truncate":  # the tail removed and the head rewritten to the new last entry: the chain links
        kept = fields[:max(position, 1)]
        last = json.loads(kept[-1][b"record"])
        _rewrite(sync, stream, kept, {"seq": last["seq"], "hash": kept[-1][b"hash"].decode()})
    elif kind == "recompute":  # an entry edited and every hash after it recomputed, the head too
        records[position]["resource"] = "tenders/forged"
        _rewrite(sync, stream, *_recomputed(records))
    elif kind == "erase":  # every entry gone, and a head saying retention trimmed them: a base past the last
        # checkpoint (so none is "beyond the store"), its made-up record consistent and older than the retention
        seq = len(records) + 1
        record = {"seq": seq, "prev": "f" * 64, "time": time.time() - AUDIT_RETENTION_SECONDS - 5 * 86400,
                  "actor": "x", "method": "/x/M", "carrier": "", "resource": "", "outcome": "OK"}
        digest = _entry_hash(record["prev"], record)
        sync.delete(stream)
        sync.hset(head_key(stream), mapping={"seq": seq, "hash": digest, "base_seq": seq, "base_hash": digest,
                                             "base_record": json.dumps(record, sort_keys=True)})
    else:
        raise ValueError(kind)


async def run_attack(client: redis.asyncio.Redis, sync: redis.Redis, objects: ObjectStore, signer: AuditSigner,
                     public_key_files: list, kind: str, *, entries: int, position: int, rng: random.Random,
                     writer: str = "at20") -> Outcome:
    """A fresh chain of ``entries`` calls, anchored by a signed checkpoint in ``objects`` (fresh per attack); then
    the attack; then what verify says about that chain, without and with the checkpoints."""
    log = AuditLog(client, writer)
    checkpoints = CheckpointWriter(log, signer, lambda: objects)

    async def calls(n: int, start: int) -> None:
        for i in range(start, start + n):
            await log.append(actor="spiffe://haulmesh.local/service/gateway", method="/x/CreateTender",
                             carrier="carriers/acme", resource=f"tenders/t{i}")

    if kind == "rollback":  # a real snapshot of the chain's keys (DUMP), later put back (RESTORE REPLACE)
        await calls(position, 0)
        await checkpoints.tick()
        snapshot = {key: sync.dump(key) for key in (log.stream, head_key(log.stream))}
        await calls(entries - position, position)
        await checkpoints.tick()
        for key, value in snapshot.items():
            sync.restore(key, 0, value, replace=True)
    else:
        await calls(entries, 0)
        await checkpoints.tick()
        attack(sync, log.stream, kind, position, rng)
    outcome = Outcome(kind, position, _problems(sync, log.stream, None),
                      _problems(sync, log.stream, (objects, public_key_files)))
    # The attacked chain leaves the store, so the next attack's verify walks its own chain only (each attack has
    # an object store of its own: ``objects`` is fresh per attack, or this chain's checkpoints would name it).
    sync.srem("audit:chains", log.stream)
    sync.delete(log.stream, head_key(log.stream))
    return outcome


def _problems(sync: redis.Redis, stream: str, anchor: tuple[ObjectStore, list] | None) -> list[str]:
    anchors: dict | None = None
    extra: list[str] = []
    if anchor is not None:
        # As `haulmesh audit verify` reads them: the bases first, then only the checkpoints verify needs.
        found = read_checkpoints(anchor[0], load_public_keys(anchor[1]), bases=audit_bases(sync))
        anchors = found.by_chain
        extra = found.problems
    report = verify_audit_log(sync, checkpoints=anchors)
    return extra + [p for p in report.problems if stream in p]


def detected(outcomes: list[Outcome], predicate: Callable[[Outcome], bool] = lambda o: bool(o.anchored)) -> float:
    """The fraction of attacks detected (1.0 is AT-20's pass)."""
    return sum(map(predicate, outcomes)) / len(outcomes) if outcomes else 0.0
