"""The anchored audit log (issue 12, AT-20): signed checkpoints off the store, ``haulmesh audit verify`` against
them, and the actor behind a TMS's token. Real Valkey, real mTLS, real object stores (a directory; SeaweedFS S3
with Object Lock in the full version)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
import redis
import redis.asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from haulmesh.tender.v1 import tender_pb2, tender_service_pb2, tender_service_pb2_grpc
from services.runtime import (
    PLATFORM_ADMINS,
    AuditLog,
    ConfigError,
    HaulmeshError,
    Mesh,
    Policy,
    Service,
    ServiceConfig,
    _audit,
    actor_metadata,
    cli,
    connect_sync,
    poll_until,
    trim_audit_log,
    verify_audit_log,
)
from services.runtime._audit import _entry_hash, head_key
from services.runtime._store import free_port
from services.runtime.audit_anchor import (
    RETRY_SECONDS,
    AuditSigner,
    Checkpoint,
    CheckpointSet,
    CheckpointWriter,
    TooManyCheckpoints,
    generate_signing_key,
    load_public_keys,
    read_checkpoints,
)
from services.runtime.cli import main as cli_main
from services.runtime.objectstore import ObjectStoreError, open_object_store
from services.runtime.tokens import mint
from tests.gateway.rest.test_rest import seed_tender

from ..conftest import make_pki, running_mesh
from .audit_tampering import ATTACKS, CHAIN_BLIND, attack, detected, run_attack
from .test_retention import _aged_chain
from .test_security import _issue_server_cert


@pytest.fixture
def keys(tmp_path: Path) -> tuple[AuditSigner, list[Path]]:
    """A checkpoint key as `haulmesh pki audit-key` makes it: the signer, and the public key file(s) for verify."""
    generate_signing_key(tmp_path / "audit-signing-key.pem", tmp_path / "audit-signing.pub.pem")
    return AuditSigner.from_file(tmp_path / "audit-signing-key.pem"), [tmp_path / "audit-signing.pub.pem"]


def _anchors(objects, public_keys: list[Path]) -> dict[str, dict[int, Checkpoint]]:
    found = read_checkpoints(objects, load_public_keys(public_keys))
    assert found.problems == []
    return found.by_chain


# --- AT-20, short: every attack, a few positions each, on the real store; 100 % detected ---------------------------

async def test_at20_every_tampering_is_detected(store_client: redis.asyncio.Redis, store_url: str, tmp_path: Path,
                                                keys) -> None:
    signer, public = keys
    sync = redis.Redis.from_url(store_url)
    rng = random.Random(11)
    outcomes = []
    for kind in ATTACKS:
        for position in (1, 5, 8):
            objects = open_object_store(str(tmp_path / f"cp-{kind}-{position}"))
            outcomes.append(await run_attack(store_client, sync, objects, signer, public, kind, entries=10,
                                             position=position, rng=rng))
    missed = [(o.attack, o.position) for o in outcomes if not o.anchored]
    assert detected(outcomes) == 1.0, missed
    # The careful attacks pass the hash chain alone: the signed checkpoints are what finds them.
    assert all(not o.chain_only for o in outcomes if o.attack in CHAIN_BLIND)
    assert all(o.chain_only for o in outcomes if o.attack not in CHAIN_BLIND)


async def test_an_untouched_anchored_chain_verifies(store_client: redis.asyncio.Redis, store_url: str,
                                                    tmp_path: Path, keys) -> None:
    """No false alarm: an anchored chain that grew after its checkpoint (the window) is intact."""
    signer, public = keys
    objects = open_object_store(str(tmp_path / "cp"))
    log = AuditLog(store_client, "clean")
    writer = CheckpointWriter(log, signer, lambda: objects)
    for i in range(5):
        await log.append(actor="spiffe://haulmesh.local/service/gateway", method="/x/M", resource=f"r/{i}")
        await writer.tick()
    await writer.tick()  # the head did not move: nothing new is written
    assert writer.written == 5
    await log.append(actor="spiffe://haulmesh.local/service/gateway", method="/x/M", resource="r/late")
    result = verify_audit_log(connect_sync(store_url), checkpoints=_anchors(objects, public))
    mine = [p for p in result.problems if log.stream in p]
    assert mine == [] and result.checkpoints >= 5 and result.unanchored_entries >= 1


async def test_forged_and_foreign_checkpoints_are_refused(store_client: redis.asyncio.Redis, tmp_path: Path,
                                                          keys) -> None:
    """A checkpoint signed by another key, or altered after signing, is a problem and is never used."""
    signer, public = keys
    objects = open_object_store(str(tmp_path / "cp"))
    log = AuditLog(store_client, "forged")
    await log.append(actor="a", method="/x/M")
    await CheckpointWriter(log, signer, lambda: objects).tick()
    generate_signing_key(tmp_path / "mallory.pem", tmp_path / "mallory.pub.pem")
    forged = AuditSigner.from_file(tmp_path / "mallory.pem").sign(log.stream, 7, "ab" * 32, time.time())
    objects.put_new(forged.object_key, forged.to_json())
    good = Checkpoint.from_json(objects.get(f"audit-checkpoints/{log.stream[7:-1]}/000000000001.json"))
    altered = Checkpoint(good.chain, 2, good.hash, good.time, good.key_id, good.signature)
    objects.put_new(altered.object_key, altered.to_json())
    found = read_checkpoints(objects, load_public_keys(public))
    assert found.count == 1 and len(found.problems) == 2
    assert any("unknown key" in p for p in found.problems) and any("bad signature" in p for p in found.problems)


async def test_a_write_that_failed_never_makes_the_writer_sign_a_foreign_head(store_client: redis.asyncio.Redis,
                                                                             store_url: str) -> None:
    """After a failed write the writer re-reads its head; a head somebody else wrote meanwhile is not adopted (its
    checkpoints sign only what it wrote), so the next entry's link shows the break."""
    log = AuditLog(store_client, "uncertain")
    await log.append(actor="a", method="/x/M")
    mine = log.head()
    await store_client.hset(f"{log.stream}:head", mapping={"seq": 40, "hash": "f" * 64})
    log._head_uncertain, log._tried = True, (2, "e" * 64)  # as a write that failed on the wire leaves it
    await log.append(actor="a", method="/x/M")
    assert log.head()[0] == mine[0] + 1


# --- the command ------------------------------------------------------------------------------------------------

def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.runtime.cli", "audit", "verify", *args], env=env,
                          capture_output=True, text=True, timeout=120)


async def test_audit_verify_command_exit_codes(store_client: redis.asyncio.Redis, store_url: str, tmp_path: Path,
                                               keys) -> None:
    """0 intact and anchored; 1 naming the problem (a recomputed chain, which the hash chain alone misses);
    3 intact but not anchored; 2 when the key cannot be read."""
    signer, public = keys
    await store_client.flushall()
    url = str(tmp_path / "cp")
    log = AuditLog(store_client, "cli")
    for i in range(5):
        await log.append(actor="spiffe://haulmesh.local/service/gateway", method="/x/M", resource=f"r/{i}")
    await CheckpointWriter(log, signer, lambda: open_object_store(url)).tick()
    env = {**os.environ, "REDIS_URL": store_url, "HAULMESH_AUDIT_CHECKPOINT_URL": url}
    args = ("--public-key", str(public[0]))
    ok = await asyncio.to_thread(_cli, *args, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 signed checkpoint(s) of 1 chain(s)" in ok.stdout and "anchored: 1 of 1 chain(s)" in ok.stdout
    bare = await asyncio.to_thread(_cli, "--no-checkpoints", env=env)
    assert bare.returncode == 3 and "NOT ANCHORED" in bare.stdout
    unreadable = await asyncio.to_thread(_cli, "--public-key", str(tmp_path / "missing.pem"), env=env)
    assert unreadable.returncode == 2
    attack(redis.Redis.from_url(store_url), log.stream, "recompute", 2, random.Random(1))
    chain_only = await asyncio.to_thread(_cli, "--no-checkpoints", env=env)
    assert chain_only.returncode == 3  # the recomputed chain links: the hash chain alone cannot tell
    bad = await asyncio.to_thread(_cli, *args, env=env)
    assert bad.returncode == 1 and "TAMPERED" in bad.stdout and "signed checkpoint" in bad.stdout, bad.stdout


# --- a real server: its checkpoints, and the actor behind a TMS's token -------------------------------------------

class Cancels(tender_service_pb2_grpc.TenderServiceServicer):
    async def CancelTender(self, request, context):
        return tender_pb2.Tender(name=request.name)


_CANCEL = "/haulmesh.tender.v1.TenderService/CancelTender"


async def test_a_service_anchors_its_chain_and_records_the_token_behind_the_gateway(tmp_path: Path, store_url: str,
                                                                                     keys) -> None:
    _, public = keys
    p = make_pki(tmp_path / "ca")
    tls = _issue_server_cert(p, tmp_path / "server")
    url = str(tmp_path / "checkpoints")
    config = ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(), tls=tls,
                           state_dir=tmp_path, redis_url=store_url, grace_period_seconds=0.5,
                           audit_signing_key_file=tmp_path / "audit-signing-key.pem", audit_checkpoint_url=url,
                           audit_checkpoint_interval_seconds=0.2)
    service = Service(config, Policy({_CANCEL: ["service/gateway", PLATFORM_ADMINS]}))
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, Cancels(),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    await service.start()
    try:
        said = (("haulmesh-carrier", "carriers/acme"), *actor_metadata("alice@acme.example", "loadmaster-prod"))
        target = f"127.0.0.1:{config.port}"
        for who, name, resource, metadata in (
                ("service", "gateway", "gateway", said), ("operator", "ops", "ops", said),
                ("service", "gateway", "spoof", actor_metadata("spiffe://haulmesh.local/operator/ops", "")),
                ("service", "gateway", "nosub", actor_metadata("", "loadmaster-prod"))):
            async with grpc.aio.secure_channel(target, p.credentials(who, name),
                                               options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
                await tender_service_pb2_grpc.TenderServiceStub(channel).CancelTender(
                    tender_service_pb2.CancelTenderRequest(name=f"tenders/{resource}"), metadata=metadata, timeout=10)
        objects = open_object_store(url)

        def anchored() -> bool:
            found = read_checkpoints(objects, load_public_keys(public)).by_chain.get(service.audit.stream, {})
            return max(found, default=0) == 4

        await poll_until(anchored, timeout_seconds=20, what="a checkpoint of both entries")
    finally:
        await service.stop()
    records = [json.loads(f[b"record"]) for _, f in redis.Redis.from_url(store_url).xrange(service.audit.stream)]
    by_resource = {r["resource"]: r for r in records}
    # The gateway's word is taken: the actor is the token's subject, its client recorded, the gateway as via.
    assert by_resource["tenders/gateway"]["actor"] == "token:alice@acme.example"
    assert by_resource["tenders/gateway"]["client"] == "loadmaster-prod"
    assert by_resource["tenders/gateway"]["via"] == "spiffe://haulmesh.local/service/gateway"
    # Anybody else's is not: the operator is the actor, whatever it claims.
    assert by_resource["tenders/ops"]["actor"] == "spiffe://haulmesh.local/operator/ops"
    assert "client" not in by_resource["tenders/ops"] and "via" not in by_resource["tenders/ops"]
    # A token's subject never reads as a mesh identity; a token without one leaves the gateway as the actor.
    assert by_resource["tenders/spoof"]["actor"] == "token:spiffe://haulmesh.local/operator/ops"
    assert by_resource["tenders/nosub"]["actor"] == "spiffe://haulmesh.local/service/gateway"
    assert by_resource["tenders/nosub"]["client"] == "loadmaster-prod" and "via" not in by_resource["tenders/nosub"]


async def test_the_gateway_forwards_the_token_subject_and_client(mesh: Mesh) -> None:
    """A TMS's REST call through the real gateway: the tender service's audit entry names the token's subject and
    client, not the gateway; the session mesh anchors its chains (dev-bootstrap made the key)."""
    token = mint(carrier="acme", scopes="tender:create", state_dir=mesh.state_dir, subject="dispatcher-7",
                 client="mcleod-loadmaster")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=30) as http:
        created = await http.post("/api/v1/tenders", json=seed_tender(), headers={"Authorization": f"Bearer {token}"})
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    sync = connect_sync(mesh.store.url)
    try:
        entries = [json.loads(f[b"record"]) for chain in sync.smembers("audit:chains")
                   for _, f in sync.xrange(chain) if json.loads(f[b"record"])["resource"] == name]
    finally:
        sync.close()
    created_entry = [e for e in entries if e["method"].endswith("/CreateTender")]
    assert len(created_entry) == 1, entries
    assert created_entry[0]["actor"] == "token:dispatcher-7" and created_entry[0]["client"] == "mcleod-loadmaster"
    assert created_entry[0]["via"] == "spiffe://haulmesh.local/service/gateway"
    assert (mesh.cert_dir / "audit-signing.pub.pem").is_file()


# --- AT-20, full: more chains, every attack at seeded positions, checkpoints on S3 with Object Lock ----------------

@pytest.mark.chaos(seeds=1)  # one seed is already 10 seeded (length, position) draws per attack kind
async def test_at20_full(chaos_seed: int, chaos_record, store_client: redis.asyncio.Redis, store_url: str,
                         s3_bucket: str, tmp_path: Path, keys) -> None:
    signer, public = keys
    sync = redis.Redis.from_url(store_url)
    rng = random.Random(chaos_seed)
    outcomes = []
    began = time.monotonic()
    for kind in ATTACKS:
        for n in range(10):
            entries = rng.randrange(20, 200)
            base, _, query = s3_bucket.partition("?")  # each attack its own key prefix in the bucket
            objects = open_object_store(f"{base.rstrip('/')}/{kind}-{n}?{query}")
            outcomes.append(await run_attack(store_client, sync, objects, signer, public, kind, entries=entries,
                                             position=rng.randrange(1, entries), rng=rng))
    rate = detected(outcomes)
    missed = [(o.attack, o.position) for o in outcomes if not o.anchored]
    chain_alone = detected(outcomes, lambda o: bool(o.chain_only))
    chaos_record("AT-20", attacks=len(outcomes), detected_ratio=rate, missed=missed,
                 detected_by_hash_chain_alone_ratio=round(chain_alone, 3), checkpoint_store="s3 (Object Lock)",
                 seconds=round(time.monotonic() - began, 1))
    assert rate == 1.0, missed


def test_checkpoint_object_keys_are_one_per_chain_and_sequence(keys) -> None:
    signer, _ = keys
    checkpoint = signer.sign("audit:{tender-host-12-abc}", 42, "0" * 64, 1.5)
    assert checkpoint.object_key == "audit-checkpoints/tender-host-12-abc/000000000042.json"
    assert Checkpoint.from_json(checkpoint.to_json()) == checkpoint


async def test_a_stopping_service_anchors_its_last_entries(tmp_path: Path, store_url: str, keys) -> None:
    """The final checkpoint: a service that stops cleanly leaves every entry it wrote anchored, whatever its
    interval (here an hour, so only the stop can have written it)."""
    _, public = keys
    p = make_pki(tmp_path / "ca")
    url = str(tmp_path / "checkpoints")
    config = ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(),
                           tls=_issue_server_cert(p, tmp_path / "server"), state_dir=tmp_path, redis_url=store_url,
                           grace_period_seconds=0.5, audit_signing_key_file=tmp_path / "audit-signing-key.pem",
                           audit_checkpoint_url=url, audit_checkpoint_interval_seconds=3600)
    service = Service(config, Policy({_CANCEL: ["service/gateway"]}))
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, Cancels(),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    await service.start()
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{config.port}", p.credentials("service", "gateway"),
                                           options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
            stub = tender_service_pb2_grpc.TenderServiceStub(channel)
            for i in range(3):
                await stub.CancelTender(tender_service_pb2.CancelTenderRequest(name=f"tenders/t{i}"),
                                        metadata=(("haulmesh-carrier", "carriers/acme"),), timeout=10)
    finally:
        await service.stop()
    found = read_checkpoints(open_object_store(url), load_public_keys(public))
    assert found.problems == [] and max(found.by_chain[service.audit.stream]) == 3


def test_the_signing_key_settings(tmp_path: Path) -> None:
    """Explicit and missing: the service does not start; unset: the certificate folder's key if there is one."""
    with pytest.raises(ConfigError, match="HAULMESH_AUDIT_SIGNING_KEY_FILE"):
        ServiceConfig.from_env("tender", {"HAULMESH_AUDIT_SIGNING_KEY_FILE": str(tmp_path / "none.pem")})
    bare = ServiceConfig.from_env("tender", {"HAULMESH_CERT_DIR": str(tmp_path), "HAULMESH_STATE_DIR": str(tmp_path)})
    assert bare.audit_signing_key_file is None and bare.audit_checkpoint_interval_seconds == 300
    assert bare.audit_checkpoint_url == str(tmp_path / "audit-checkpoints")
    assert cli_main(["--cert-dir", str(tmp_path), "pki", "audit-key"]) == 0
    assert cli_main(["--cert-dir", str(tmp_path), "pki", "audit-key"]) == 2  # never replaced by accident
    found = ServiceConfig.from_env("tender", {"HAULMESH_CERT_DIR": str(tmp_path),
                                              "HAULMESH_AUDIT_CHECKPOINT_INTERVAL_SECONDS": "60"})
    assert found.audit_signing_key_file == tmp_path / "audit-signing-key.pem"
    assert found.audit_checkpoint_interval_seconds == 60
    p256 = tmp_path / "p256.pem"  # a key of the mesh's kind is refused: checkpoints are signed with Ed25519 only
    p256.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="Ed25519"):
        AuditSigner.from_file(p256)


async def test_a_failing_checkpoint_store_delays_the_anchor_and_never_ends_the_service(
        store_client: redis.asyncio.Redis, tmp_path: Path, keys) -> None:
    """The export fails (the store refuses): the pass says when to try again, the lag is counted, nothing is raised
    (a raise would end the process); once the store answers, the checkpoint is written."""
    signer, public = keys
    objects = open_object_store(str(tmp_path / "cp"))
    failing = [True]

    def opener():
        if failing[0]:
            raise ObjectStoreError("the checkpoint store is down")
        return objects

    log = AuditLog(store_client, "failing")
    writer = CheckpointWriter(log, signer, opener)
    await log.append(actor="a", method="/x/M")
    assert await writer.tick() == RETRY_SECONDS and writer.lag == 1 and writer.written == 0
    failing[0] = False
    assert await writer.tick() is None and writer.lag == 0 and writer.written == 1
    assert read_checkpoints(objects, load_public_keys(public)).count == 1


@pytest.mark.chaos(seeds=1)
async def test_at20_full_on_a_running_mesh(chaos_seed: int, chaos_record, mesh_pki, tmp_path: Path) -> None:
    """AT-20 end to end: every service a real process anchoring its own chain (every 0.5 s here), TMS calls through
    the real gateway, then the careful attacks on the tender service's live chain, checked by the real command."""
    rng = random.Random(chaos_seed)
    env_mesh = {"HAULMESH_AUDIT_CHECKPOINT_INTERVAL_SECONDS": "0.5"}
    async with running_mesh(mesh_pki, tmp_path / "mesh", env=env_mesh) as mesh:
        token = mint(carrier="acme", scopes="tender:create", state_dir=mesh.state_dir, subject="dispatcher-9")
        sync = redis.Redis.from_url(mesh.store.url)
        objects = open_object_store(str(mesh.state_dir / "audit-checkpoints"))
        public = [mesh_pki.directory / "audit-signing.pub.pem"]

        async def create(n: int) -> None:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=30) as http:
                for _ in range(n):
                    reply = await http.post("/api/v1/tenders", json=seed_tender(),
                                            headers={"Authorization": f"Bearer {token}"})
                    assert reply.status_code == 200, reply.text

        def fully_anchored() -> bool:
            report = verify_audit_log(sync, checkpoints=_anchors(objects, public))
            return report.intact and report.unanchored_entries == 0 and report.anchored_chains >= 1

        def tender_chain() -> str:
            return next(c.decode() for c in sync.smembers("audit:chains") if c.decode().startswith("audit:{tender-"))

        cli_env = {**os.environ, "REDIS_URL": mesh.store.url,
                   "HAULMESH_AUDIT_CHECKPOINT_URL": str(mesh.state_dir / "audit-checkpoints")}
        args = ("--public-key", str(public[0]))
        await create(rng.randrange(3, 8))
        await poll_until(fully_anchored, timeout_seconds=30, what="every chain anchored")
        clean = await asyncio.to_thread(_cli, *args, env=cli_env)
        outcomes = {"clean_exit": clean.returncode}
        chain = tender_chain()
        # Recompute: an entry's actor rewritten and every hash after it recomputed, the head too.
        before = {key: sync.dump(key) for key in (chain, f"{chain}:head")}
        attack(sync, chain, "recompute", rng.randrange(0, sync.xlen(chain)), rng)
        outcomes["recompute_exit"] = (await asyncio.to_thread(_cli, *args, env=cli_env)).returncode
        outcomes["recompute_chain_only_exit"] = (await asyncio.to_thread(_cli, "--no-checkpoints",
                                                                         env=cli_env)).returncode
        for key, value in before.items():  # undone: the real history back
            sync.restore(key, 0, value, replace=True)
        # Roll back: a snapshot of the chain, more calls (anchored), the snapshot put back.
        await create(2)
        await poll_until(fully_anchored, timeout_seconds=30, what="the new calls anchored")
        outcomes["restored_exit"] = (await asyncio.to_thread(_cli, *args, env=cli_env)).returncode
        for key, value in before.items():
            sync.restore(key, 0, value, replace=True)
        rolled = await asyncio.to_thread(_cli, *args, env=cli_env)
        outcomes["rollback_exit"] = rolled.returncode
        sync.close()
    chaos_record("AT-20", on_mesh=True, **outcomes)
    assert outcomes == {"clean_exit": 0, "recompute_exit": 1, "recompute_chain_only_exit": 3, "restored_exit": 0,
                        "rollback_exit": 1}, (outcomes, rolled.stdout)
    assert "beyond the store's last entry" in rolled.stdout


# --- review findings (rv12): a clean stop's final checkpoint, a live chain, a chain never anchored, the listing -----

def _forge_next(sync: redis.Redis, stream: str) -> None:
    """An entry appended the careful way (linked, hashed, the head moved with it), as /tmp/rv12/live.py did."""
    head = sync.hgetall(head_key(stream))
    seq, prev = int(head[b"seq"]), head[b"hash"].decode()
    record = {"time": time.time(), "actor": "spiffe://haulmesh.local/operator/cli", "carrier": "carriers/acme",
              "method": "/haulmesh.billing.v1.BillingService/VoidInvoice", "resource": "invoices/i1",
              "outcome": "OK", "seq": seq + 1, "prev": prev}
    digest = _entry_hash(prev, record)
    sync.xadd(stream, {"record": json.dumps(record, sort_keys=True), "hash": digest})
    sync.hset(head_key(stream), mapping={"seq": seq + 1, "hash": digest})


async def test_an_entry_after_a_final_checkpoint_is_forged(store_client: redis.asyncio.Redis, store_url: str,
                                                            tmp_path: Path, keys) -> None:
    """stop() signs its checkpoint `final` (a twin of the last periodic one when the head did not move): an entry
    added after it is reported; entries after a periodic (non-final) checkpoint are the normal window."""
    signer, public = keys
    sync = connect_sync(store_url)
    results = {}
    for kind in ("stopped", "stopped-idle", "running"):
        objects = open_object_store(str(tmp_path / f"cp-{kind}"))
        log = AuditLog(store_client, f"final-{kind}")
        writer = CheckpointWriter(log, signer, lambda objects=objects: objects)
        for i in range(5):
            await log.append(actor="a", method="/x/M", resource=f"r{i}")
        if kind == "stopped-idle":
            await writer.tick()
        await (writer.tick() if kind == "running" else writer.stop())
        found = read_checkpoints(objects, load_public_keys(public))
        clean = [p for p in verify_audit_log(sync, checkpoints=found.by_chain).problems if log.stream in p]
        _forge_next(sync, log.stream)
        forged = [p for p in verify_audit_log(sync, checkpoints=found.by_chain).problems if log.stream in p]
        results[kind] = (found.problems, clean, forged)
    for kind in ("stopped", "stopped-idle"):
        assert results[kind][:2] == ([], []), results[kind]
        assert any("last (written as it stopped)" in p for p in results[kind][2]), results[kind]
    assert results["running"] == ([], [], []), results["running"]


async def test_verify_on_a_live_chain_reports_no_false_tampering(store_client: redis.asyncio.Redis,
                                                                 store_url: str) -> None:
    """A writer appends all the while (as /tmp/rv12/tail.py): verify reads the head first and stops at its entry,
    so 0 of the runs report a problem, and the chain grew during them."""
    log = AuditLog(store_client, "live")
    sync = connect_sync(store_url)
    stop = asyncio.Event()

    async def write() -> None:
        i = 0
        while not stop.is_set():
            await log.append(actor="a", method="/x/M", resource=f"r{i}")
            i += 1

    writing = asyncio.create_task(write())
    try:
        await poll_until(lambda: log.head()[0] >= 200, timeout_seconds=20, what="the writer under way")
        false_reports, seen = [], []
        for _ in range(15):
            report = await asyncio.to_thread(verify_audit_log, sync)
            false_reports += [p for p in report.problems if log.stream in p]
            seen.append(log.head()[0])
    finally:
        stop.set()
        await writing
    assert false_reports == []
    assert seen[-1] > seen[0]  # the chain really grew under the verifier


async def test_a_chain_never_anchored_is_not_anchored(store_client: redis.asyncio.Redis, store_url: str,
                                                      tmp_path: Path, keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listed chain without any checkpoint, older than the interval (+ slack): verify names it and the command
    exits 3, even though another chain is anchored."""
    signer, public = keys
    await store_client.flushall()
    url = str(tmp_path / "cp")
    anchored, bare = AuditLog(store_client, "anchored"), AuditLog(store_client, "bare")
    for log in (anchored, bare):
        await log.append(actor="a", method="/x/M")
    await CheckpointWriter(anchored, signer, lambda: open_object_store(url)).tick()
    found = read_checkpoints(open_object_store(url), load_public_keys(public))
    assert verify_audit_log(connect_sync(store_url), checkpoints=found.by_chain).unanchored_chains == ()
    monkeypatch.setattr(_audit, "CHECKPOINT_SLACK_SECONDS", 0.0)
    monkeypatch.setenv("REDIS_URL", store_url)
    monkeypatch.setenv("HAULMESH_AUDIT_CHECKPOINT_URL", url)
    monkeypatch.setenv("HAULMESH_AUDIT_CHECKPOINT_INTERVAL_SECONDS", "0")
    report = verify_audit_log(connect_sync(store_url), checkpoints=found.by_chain, checkpoint_interval_seconds=0)
    assert report.intact and report.unanchored_chains == (bare.stream,)
    assert cli_main(["audit", "verify", "--public-key", str(public[0])]) == 3


async def test_checkpoints_that_are_not_signed_checkpoints_are_refused(
        store_client: redis.asyncio.Redis, store_url: str, tmp_path: Path, keys,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A bare hash in place of a checkpoint has no signing time and no final flag: verify would skip the retention
    and final checks in silence. It is refused before any chain is read, as is a checkpoint filed under another
    sequence; the command exits 2 (cannot check), never 0."""
    signer, public = keys
    await store_client.flushall()
    url = str(tmp_path / "cp")
    log = AuditLog(store_client, "bare-hash")
    for _ in range(3):
        await log.append(actor="a", method="/x/M")
    await CheckpointWriter(log, signer, lambda: open_object_store(url)).tick(final=True)
    found = read_checkpoints(open_object_store(url), load_public_keys(public))
    (checkpoint,) = found.by_chain[log.stream].values()
    sync = connect_sync(store_url)
    assert verify_audit_log(sync, checkpoints=found.by_chain).intact  # the signed form verifies
    # A final checkpoint followed by more entries is tampering (the final check); the bare form would hide it.
    await log.append(actor="a", method="/x/M")
    assert any("was its process's last" in p for p in verify_audit_log(sync, checkpoints=found.by_chain).problems)
    for bad, words in (({3: checkpoint.hash}, rf"checkpoint {re.escape(log.stream)} sequence 3 is a str, not a "
                                                r"signed Checkpoint .*retention and final checks cannot be made"),
                       ({2: checkpoint}, rf"checkpoint {re.escape(log.stream)} sequence 3 is filed as "
                                         rf"{re.escape(log.stream)} sequence 2")):
        with pytest.raises(HaulmeshError, match=words) as caught:
            verify_audit_log(sync, checkpoints={log.stream: bad})
        assert caught.value.reason == "UNUSABLE_CHECKPOINTS"
    # The command: the same refusal is "cannot check" (exit 2, the reason on stderr), not a verdict.
    monkeypatch.setenv("REDIS_URL", store_url)
    monkeypatch.setenv("HAULMESH_AUDIT_CHECKPOINT_URL", url)
    bare = CheckpointSet({log.stream: {3: checkpoint.hash}}, [])  # as if the reader handed hashes over
    monkeypatch.setattr(cli, "read_checkpoints", lambda *args, **kwargs: bare)
    capsys.readouterr()
    assert cli_main(["audit", "verify", "--public-key", str(public[0])]) == 2
    out, err = capsys.readouterr()
    assert "is a str, not a signed Checkpoint" in err and "TAMPERED" not in out and "intact" not in out


def test_a_checkpoint_listing_at_its_limit_is_refused(tmp_path: Path, keys) -> None:
    """Never a silently partial set: a listing that reaches its limit raises (the command exits 2)."""
    signer, public = keys
    objects = open_object_store(str(tmp_path / "cp"))
    for seq in (1, 2, 3):
        checkpoint = signer.sign("audit:{limit}", seq, "ab" * 32, time.time())
        objects.put_new(checkpoint.object_key, checkpoint.to_json())
    assert read_checkpoints(objects, load_public_keys(public), limit=4).count == 3
    with pytest.raises(TooManyCheckpoints):
        read_checkpoints(objects, load_public_keys(public), limit=3)


async def test_signed_entries_removed_before_their_retention_are_found(
        store_client: redis.asyncio.Redis, store_url: str, keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """A legitimately trimmed chain (entries 600 days old) with a checkpoint signed back then below its base and a
    fresh one at its head verifies; a checkpoint below the base signed recently means entries removed early."""
    signer, _ = keys
    log = await _aged_chain(store_client, monkeypatch, "anchored-trim", old=20, new=10)
    sync = connect_sync(store_url)
    by_seq = {json.loads(f[b"record"])["seq"]: f[b"hash"].decode() for _, f in sync.xrange(log.stream)}
    await trim_audit_log(store_client)
    old = signer.sign(log.stream, 10, by_seq[10], time.time() - 600 * 86400)
    head = signer.sign(log.stream, 30, by_seq[30], time.time())
    legit = verify_audit_log(sync, checkpoints={log.stream: {10: old, 30: head}})
    assert [p for p in legit.problems if log.stream in p] == []
    recent = signer.sign(log.stream, 10, by_seq[10], time.time() - 30 * 86400)
    early = verify_audit_log(sync, checkpoints={log.stream: {10: recent, 30: head}})
    assert any("removed before their retention" in p for p in early.problems if log.stream in p), early.problems


async def test_verify_reads_only_the_newest_checkpoint_and_the_base_one(store_client: redis.asyncio.Redis,
                                                                      store_url: str, tmp_path: Path, keys) -> None:
    """Given the chains' bases, read_checkpoints GETs per chain its newest checkpoint and the newest at or below
    its base, not every one (a year of 5-minute checkpoints is 105,000 a chain); a chain the store no longer lists
    keeps its newest, so its deletion still shows."""
    signer, public = keys
    objects = open_object_store(str(tmp_path / "cp"))
    log, gone = AuditLog(store_client, "many"), AuditLog(store_client, "gone")
    writer = CheckpointWriter(log, signer, lambda: objects)
    gone_writer = CheckpointWriter(gone, signer, lambda: objects)
    for i in range(10):
        await log.append(actor="a", method="/x/M", resource=f"r{i}")
        await gone.append(actor="a", method="/x/M", resource=f"r{i}")
        await writer.tick()
        await gone_writer.tick()
    await writer.stop()
    keys_ = load_public_keys(public)
    assert read_checkpoints(objects, keys_).count == 20
    sync = connect_sync(store_url)
    sync.srem("audit:chains", gone.stream)
    sync.delete(gone.stream, head_key(gone.stream))
    untrimmed = read_checkpoints(objects, keys_, bases={log.stream: 0})
    assert {c: sorted(by) for c, by in untrimmed.by_chain.items()} == {log.stream: [10], gone.stream: [10]}
    assert untrimmed.by_chain[log.stream][10].final
    trimmed = read_checkpoints(objects, keys_, bases={log.stream: 4})
    assert sorted(trimmed.by_chain[log.stream]) == [4, 10]
    report = verify_audit_log(sync, checkpoints=untrimmed.by_chain)
    assert [p for p in report.problems if log.stream in p] == []
    assert any("does not list the chain" in p for p in report.problems if gone.stream in p)
