"""``make bench``, the audit part: verifying 1,000,000 audit entries against a signed checkpoint (issue 12: < 60 s
on 2 cores).

One chain of N entries shaped like the mesh's (a TMS's call through the gateway, for a carrier, on a resource) is
written into a fresh embedded store by the runtime's own AuditLog (group commit: thousands of appends in flight),
anchored by its CheckpointWriter's signed checkpoint in a local directory; then what ``haulmesh audit verify`` does
is timed:
read and check the checkpoints, walk and recompute the chain. Wall time, and CPU of the verifier and of the store
per entry; the yardstick ``audit_hash_us`` is one entry's own floor (its canonical JSON and SHA-256), measured in
the same run, so a slower machine shows as a slower yardstick too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import redis
from bench_telemetry import cpu_seconds

from services.runtime import AuditLog, EmbeddedStore, connect_async, verify_audit_log
from services.runtime.audit_anchor import (
    AuditSigner,
    CheckpointWriter,
    generate_signing_key,
    load_public_keys,
    read_checkpoints,
)
from services.runtime.objectstore import open_object_store

__all__ = ["run_audit_bench"]

#: The bound the issue sets: 1,000,000 entries verified within this on 2 cores.
TARGET_SECONDS_PER_MILLION = 60.0


#: Appends in flight at once while filling (each batch is one transaction of the chain's group commit).
_FILL_IN_FLIGHT = 5000
_ENTRY = {"actor": "dispatcher-7", "client": "mcleod-loadmaster", "via": "spiffe://haulmesh.local/service/gateway",
          "method": "/haulmesh.tender.v1.TenderService/CreateTender", "carrier": "carriers/acme"}


async def _fill(url: str, entries: int) -> AuditLog:
    client = connect_async(url)
    log = AuditLog(client, "bench-audit")
    try:
        for start in range(0, entries, _FILL_IN_FLIGHT):
            await asyncio.gather(*(log.append(**_ENTRY, resource=f"tenders/01J{i:023d}")
                                   for i in range(start, min(entries, start + _FILL_IN_FLIGHT))))
    finally:
        await client.aclose()
    return log


def _hash_yardstick_us(samples: int = 20_000) -> float:
    """One entry's own floor: its canonical JSON (sorted keys) and SHA-256 over the previous hash and it."""
    record = {**_ENTRY, "time": 1_764_700_000.123, "resource": "tenders/01J" + "0" * 23, "outcome": "OK",
              "seq": 1, "prev": "0" * 64}
    began = time.perf_counter()
    for _ in range(samples):
        hashlib.sha256(("0" * 64 + json.dumps(record, sort_keys=True, separators=(",", ":"),
                                                ensure_ascii=False)).encode()).hexdigest()
    return (time.perf_counter() - began) / samples * 1e6


async def run_audit_bench(state: Path, *, entries: int = 1_000_000) -> dict:
    """Fill, anchor, verify; the figures (``audit_*``)."""
    shutil.rmtree(state, ignore_errors=True)
    store = EmbeddedStore(state / "store")
    info = store.ensure_running()
    client = redis.Redis.from_url(info.url)
    try:
        began = time.perf_counter()
        log = await _fill(info.url, entries)
        fill_seconds = time.perf_counter() - began
        generate_signing_key(state / "audit-signing-key.pem", state / "audit-signing.pub.pem")
        objects = open_object_store(str(state / "checkpoints"))
        writer = CheckpointWriter(log, AuditSigner.from_file(state / "audit-signing-key.pem"), lambda: objects)
        await writer.tick()
        memory = int(client.memory_usage(log.stream) or 0)
        store_cpu, own_cpu = cpu_seconds(info.pid), time.process_time()
        began = time.perf_counter()
        found = read_checkpoints(objects, load_public_keys([state / "audit-signing.pub.pem"]))
        anchors = found.by_chain
        report = verify_audit_log(client, checkpoints=anchors)
        seconds = time.perf_counter() - began
        own_cpu, store_cpu = time.process_time() - own_cpu, cpu_seconds(info.pid) - store_cpu
    finally:
        client.close()
        store.stop()
    if not report.intact or report.entries != entries or report.anchored_chains != 1:
        raise RuntimeError(f"the audit bench's chain did not verify: {report.problems[:3]}")
    return {
        "audit_verify_entries": entries,
        "audit_verify_seconds": round(seconds, 2),
        "audit_verify_seconds_per_million": round(seconds * 1e6 / entries, 2),
        "audit_verify_target_seconds_per_million": TARGET_SECONDS_PER_MILLION,
        "audit_verify_entries_per_s": round(entries / seconds),
        "audit_verify_cpu_us_per_entry": round(own_cpu * 1e6 / entries, 2),
        "audit_verify_store_cpu_us_per_entry": round(store_cpu * 1e6 / entries, 2),
        "audit_hash_us": round(_hash_yardstick_us(), 2),
        "audit_fill_seconds": round(fill_seconds, 1),
        "audit_store_bytes_per_entry": round(memory / entries, 1),
        "audit_bench_cpus": os.cpu_count(),
    }
