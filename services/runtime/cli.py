"""``haulmesh``: the operator and developer command line.

    haulmesh pki init | issue {service,vehicle} NAME | issue operator NAME --role R [--carrier C]... | dev-bootstrap
    haulmesh pki revoke {vehicle,operator,serial} NAME | revoked
                                        the certificate deny-list (every service refuses a revoked one within seconds)
    haulmesh run        start the store and every service (a crashed one is restarted); Ctrl-C stops them
    haulmesh sandbox [--trucks N] [--tenders-per-minute R] [--scenarios A,B] [--speedup X]
                        the mesh with a sandbox carrier, synthetic tenders and simulated trucks running rescue
                        scenarios (services/runtime/sandbox.py); prints where the console is; Ctrl-C stops it
    haulmesh status     health of every service over mTLS; exit 0 only if all are SERVING
    haulmesh store {start,stop,status}  the embedded store
    haulmesh store acl-file [--template | --passwords-dir DIR]   the store users' ACL file (one user per service)
    haulmesh store rotate-password USER [--finish]              a store user's password, in two steps
    haulmesh audit verify [--checkpoints URL] [--public-key PEM]...
                                        the audit chains against their signed checkpoints; exit 0 if intact and
                                        anchored, 1 naming every problem, 3 if intact but not anchored
    haulmesh evidence export missions/ID --carrier C [-o FILE]   a mission's sealed evidence pack (operator cert)
    haulmesh evidence verify FILE --ca ca.pem                   offline; exit 0 if sound, 1 naming the first failure,
                                                                3 if sound but no CA pinned (NOT VERIFIED)
    haulmesh events dlq list|replay --group G [ENTRY ...]
    haulmesh token mint ...             dev OAuth2 access tokens the gateway trusts
    haulmesh report [--carrier C] [--since T] [--until T] [--lane O:D] [--baseline USD:2.10]
                    [--format table|csv|json]   the pilot's KPI report (billing's ReportService)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509

from . import command_cli, enrolment, kpi_report, pki, revoke
from ._audit import bases as audit_bases
from ._audit import verify as verify_audit_log
from ._config import (
    AUDIT_SIGNING_KEY_NAME,
    AUDIT_VERIFY_KEY_NAME,
    DEFAULT_GATEWAY_HTTP_PORT,
    DEFAULT_PORTS,
    MESH_SERVICES,
    OPTIONAL_PORTS,
    OPTIONAL_SERVICES,
    default_state_dir,
)
from ._errors import ConfigError, HaulmeshError
from ._events import dead_letters, replay_dead_letters
from ._mesh import Mesh
from ._roles import PLATFORM_ADMIN, ROLES, OperatorGrant
from ._store import EmbeddedStore, connect_async, connect_sync, resolve_redis_url
from ._store_acl import STORE_USERS, render_acl_file
from .audit_anchor import Checkpoint, generate_signing_key, load_public_keys, read_checkpoints
from .sandbox import SCENARIOS, Sandbox, SandboxConfig

__all__ = ["main"]

#: The demo truck every fresh clone gets a certificate for.
DEMO_VEHICLE = "AU-TRK-1001"
#: The service holding the evidence key (services/billing/evidence).
EVIDENCE_SEALER = "billing"
#: `evidence verify`'s exit code when every check passed but against the pack's own CA (no --ca): not verified.
EXIT_CA_NOT_PINNED = 3
#: `audit verify`'s exit code when every chain is intact but nothing anchors it (no signed checkpoint checked), so a
#: recomputed chain or a rolled-back store could not have been seen.
EXIT_NOT_ANCHORED = 3


def _cert_dir(args: argparse.Namespace) -> Path:
    return Path(args.cert_dir or os.environ.get("HAULMESH_CERT_DIR") or default_state_dir() / "certs").resolve()


def _stem(kind: str, name: str) -> str:
    return name if kind == "service" else f"{kind}-{name}"


def _issue(directory: Path, kind: str, name: str, days: float, grant: OperatorGrant | None = None) -> Path:
    ca = pki.load_ca(directory)
    if kind == "evidence":  # the signing-only evidence key of the service named (it seals evidence packs)
        issued = pki.issue_signing(ca, pki.identity_for("service", name), valid_days=days)
        return pki.write_pem_files(directory, f"evidence-{name}", issued, ca.certificate_pem)[0]
    identity = pki.identity_for(kind, name)
    dns = (name, f"haulmesh-{name}", "localhost") if kind == "service" else ()
    ips = ("127.0.0.1", "::1") if kind == "service" else ()
    issued = pki.issue(ca, identity, valid_days=days, dns_names=dns, ip_addresses=ips, grant=grant)
    cert_path, _ = pki.write_pem_files(directory, _stem(kind, name), issued, ca.certificate_pem)
    return cert_path


def _grant_of(args: argparse.Namespace) -> OperatorGrant | None:
    """The role and carriers ``pki issue`` puts in an operator certificate; every misuse a clear error."""
    if args.kind != "operator":
        if args.role or args.carrier:
            raise HaulmeshError(f"--role and --carrier are for operator certificates, not {args.kind}")
        return None
    if not args.role:
        raise HaulmeshError(f"an operator certificate needs --role ({', '.join(ROLES)}); {PLATFORM_ADMIN} "
                            "serves every carrier, the others the carriers named with --carrier")
    return OperatorGrant(args.role, frozenset(args.carrier or ()))


def _has_grant(path: Path, grant: OperatorGrant) -> bool:
    try:
        return OperatorGrant.from_certificate(x509.load_pem_x509_certificate(path.read_bytes())) == grant
    except (OSError, ValueError, HaulmeshError):
        return False


def _expires_within(path: Path, days: float) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return True
    return cert.not_valid_after_utc - _dt.datetime.now(_dt.UTC) < _dt.timedelta(days=days)


def cmd_pki(args: argparse.Namespace) -> int:
    directory = _cert_dir(args)
    if args.pki_command == "init":
        pki.save_ca(directory, pki.create_ca(valid_days=args.days))
        print(f"created CA in {directory} (ca.pem; ca-key.pem is secret: keep it out of version control)")
    elif args.pki_command == "issue":
        try:
            grant = _grant_of(args)
        except HaulmeshError as exc:
            print(f"haulmesh: {exc.message}", file=sys.stderr)
            return 2
        path = _issue(directory, args.kind, args.name, args.days, grant)
        what = pki.identity_for("service" if args.kind == "evidence" else args.kind, args.name)
        role = "" if grant is None else f", {grant.role} of " + (", ".join(sorted(grant.carriers)) or "every carrier")
        print(f"issued {'evidence key of ' if args.kind == 'evidence' else ''}{what} -> {path} "
              f"(valid {args.days:g} days{role})")
    elif args.pki_command == "audit-key":
        if (directory / AUDIT_SIGNING_KEY_NAME).exists() and not args.force:
            print(f"haulmesh: {directory / AUDIT_SIGNING_KEY_NAME} exists (--force replaces it; keep the old public "
                  "key: it still verifies the checkpoints it signed)", file=sys.stderr)
            return 2
        kid = generate_signing_key(directory / AUDIT_SIGNING_KEY_NAME, directory / AUDIT_VERIFY_KEY_NAME)
        print(f"audit checkpoint key {kid}: {directory / AUDIT_SIGNING_KEY_NAME} (secret: mount it into the services "
              f"only), {directory / AUDIT_VERIFY_KEY_NAME} (for haulmesh audit verify)")
    elif args.pki_command == "enrol-token":
        return _enrol_token(args)
    elif args.pki_command == "dev-bootstrap":
        if not (directory / "ca-key.pem").exists():
            pki.save_ca(directory, pki.create_ca())
            print(f"created dev CA in {directory}")
        if not (directory / AUDIT_SIGNING_KEY_NAME).exists():
            kid = generate_signing_key(directory / AUDIT_SIGNING_KEY_NAME, directory / AUDIT_VERIFY_KEY_NAME)
            print(f"created audit checkpoint key {kid}")
        wanted = [("service", s) for s in (*MESH_SERVICES, *OPTIONAL_SERVICES)] + [
            ("operator", "cli"), ("vehicle", DEMO_VEHICLE), ("evidence", EVIDENCE_SEALER)]
        for kind, name in wanted:
            path = directory / f"{_stem(kind, name)}.pem"
            # The dev CLI (make run, the demo, haulmesh status/report/archive) is a platform admin; a certificate
            # from before operator roles has none, so it is reissued.
            grant = OperatorGrant(PLATFORM_ADMIN) if kind == "operator" else None
            if _expires_within(path, 7) or (grant is not None and not _has_grant(path, grant)):
                _issue(directory, kind, name, args.days, grant)
                print(f"issued {pki.identity_for('service' if kind == 'evidence' else kind, name)}"
                      + (" (evidence key)" if kind == "evidence" else ""))
    return 0


def _enrol_token(args: argparse.Namespace) -> int:
    """``haulmesh pki enrol-token vehicle <id>``: a one-time enrolment token, written (hashed) to the store. The
    token alone goes to stdout, so a provisioning script can capture it; what it is for goes to stderr."""
    client = connect_sync(_store_url())
    try:
        token, expires_ms = enrolment.issue_token(client, args.name, ttl_seconds=args.ttl_seconds,
                                                  issued_by=os.environ.get("USER") or "operator")
    finally:
        client.close()
    expires = _dt.datetime.fromtimestamp(expires_ms / 1000, _dt.UTC).isoformat(timespec="seconds")
    print(token)
    print(f"one-time enrolment token for vehicle {args.name}, valid until {expires}: on the truck run "
          f"'python -m edge_client enrol --vehicle {args.name} --token <token>' (shown once; only its hash is "
          "stored)", file=sys.stderr)
    return 0


async def _status(args: argparse.Namespace) -> int:
    mesh = Mesh(default_state_dir(), ports=_ports_from_env(), extra_env={"HAULMESH_CERT_DIR": str(_cert_dir(args))})
    statuses = await mesh.status()
    width = max(map(len, statuses))
    for name, status in statuses.items():
        print(f"{name:<{width}}  {mesh.address(name):<21}  {status}")
    serving = all(s == "SERVING" for s in statuses.values())
    print("all services SERVING" if serving else "NOT all services are SERVING")
    return 0 if serving else 1


async def _archive(args: argparse.Namespace) -> int:
    """``haulmesh archive run [--vehicle V]``: the telemetry service's RunArchive as the CLI operator (the
    runtime imports no service: it calls the RPC, as any operator tool would)."""
    import grpc

    from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc

    mesh = Mesh(default_state_dir(), ports=_ports_from_env(), extra_env={"HAULMESH_CERT_DIR": str(_cert_dir(args))})
    request = telemetry_service_pb2.RunArchiveRequest(vehicle=f"vehicles/{args.vehicle}" if args.vehicle else "")
    async with grpc.aio.secure_channel(mesh.address("telemetry"), mesh.operator_credentials()) as channel:
        try:
            reply = await telemetry_service_pb2_grpc.TelemetryServiceStub(channel).RunArchive(
                request, timeout=args.timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            print(f"haulmesh: archive run failed: {exc.code().name} {exc.details()}", file=sys.stderr)
            return 1
    print(f"archived {reply.frames_archived} frames in {reply.parts_written} new parts from {reply.vehicles} "
          f"vehicles; {reply.frames_in_archive} frames in the archive")
    return 0


def service_address(name: str) -> str:
    """Where the CLI reaches a mesh service: ``HAULMESH_<NAME>_ADDR`` (host:port), else the local default port.
    The one place the CLI and its sub-commands (report, evidence export) read service addresses."""
    return os.environ.get(f"HAULMESH_{name.upper()}_ADDR") or f"127.0.0.1:{({**DEFAULT_PORTS, **OPTIONAL_PORTS})[name]}"


def _ports_from_env() -> dict[str, int]:
    return {name: int(service_address(name).rsplit(":", 1)[1]) for name in (*MESH_SERVICES, *OPTIONAL_SERVICES)}


async def _run(args: argparse.Namespace) -> int:
    mesh = Mesh(default_state_dir(), ports=_ports_from_env(),
                http_port=int(os.environ.get("HAULMESH_HTTP_PORT", DEFAULT_GATEWAY_HTTP_PORT)),
                redis_url=os.environ.get("REDIS_URL") or None, optional=OPTIONAL_SERVICES,
                extra_env={"HAULMESH_CERT_DIR": str(_cert_dir(args))})
    return await _serve(mesh, args.timeout, detach=args.detach)


async def _sandbox(args: argparse.Namespace) -> int:
    try:
        config = SandboxConfig(trucks=args.trucks, tenders_per_minute=args.tenders_per_minute, speedup=args.speedup,
                               scenarios=tuple(s.strip() for s in args.scenarios.split(",") if s.strip()),
                               scenario_at_sim_minutes=args.scenario_at, seed=args.seed)
    except ValueError as exc:
        print(f"haulmesh sandbox: {exc}", file=sys.stderr)
        return 2
    # Its own state (store, certificates, spools, logs) beside `haulmesh run`'s, so neither disturbs the other; fresh
    # each time, as the demo's: a truck left on the last sandbox's unfinished mission would take no new load.
    state = default_state_dir() / "sandbox"
    shutil.rmtree(state, ignore_errors=True)
    certs = state / "certs"
    if main(["--cert-dir", str(certs), "pki", "dev-bootstrap"]) != 0:
        return 1
    mesh = Mesh(state, ports=_ports_from_env(),
                http_port=int(os.environ.get("HAULMESH_HTTP_PORT", DEFAULT_GATEWAY_HTTP_PORT)),
                extra_env={"HAULMESH_CERT_DIR": str(certs), "HAULMESH_CONSOLE_DEV_CARRIER": config.carrier})
    return await _serve(mesh, args.timeout, detach=False, sandbox=config)


async def _serve(mesh: Mesh, timeout_seconds: float, *, detach: bool, sandbox: SandboxConfig | None = None) -> int:
    """Start ``mesh`` (and the sandbox on it), print where everything listens, supervise until Ctrl-C."""
    began = time.monotonic()
    print("starting the Haulmesh mesh ...", flush=True)
    try:
        await mesh.start(timeout_seconds=timeout_seconds)
    except (RuntimeError, TimeoutError) as exc:
        print(f"start-up failed: {exc}", file=sys.stderr)
        await mesh.stop()
        return 1
    rows = mesh.describe()
    width = max(len(r[0]) for r in rows)
    for what, where in rows:
        print(f"  {what:<{width}}  {where}")
    print(f"all services SERVING in {time.monotonic() - began:.1f}s; logs in {mesh.state_dir / 'logs'}")
    print(f"  console     http://127.0.0.1:{mesh.http_port}/console/")
    running_sandbox = None
    if sandbox is not None:
        running_sandbox = Sandbox(mesh, sandbox)
        await running_sandbox.start()
        scenarios = ", ".join(f"{t.vehicle_id} {t.scenario}" for t in running_sandbox.trucks)
        print(f"sandbox: carrier {sandbox.carrier}, {sandbox.trucks} trucks ({scenarios}), "
              f"{sandbox.tenders_per_minute:g} tenders a minute at {sandbox.speedup:g}x time")
        print(f"open the console signed in as a fleet operator: {running_sandbox.console_url}")
    if detach:
        print("detached: stop with 'haulmesh stop'")
        _write_pids(mesh)
        return 0
    print("Ctrl-C stops the mesh.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # A service that dies is restarted with backoff (as a kubelet would); only a configuration error, or a service
    # that dies within moments of every start (MAX_SHORT_RUNS in a row), which every restart would repeat, stops
    # the mesh.
    child = await mesh.supervise(stop)
    if running_sandbox is not None:
        await running_sandbox.stop()
    code = 0
    if child is not None:
        print(f"{child.name} {child.gave_up_reason}; stopping the mesh (see {child.log_path})", file=sys.stderr)
        code = 1
    print("stopping ...", flush=True)
    await mesh.stop()
    print("stopped.")
    return code


def _write_pids(mesh: Mesh) -> None:
    pids = [str(c.process.pid) for c in mesh.children.values() if c.process]
    (mesh.state_dir / "mesh.pids").write_text("\n".join(pids) + "\n")


def cmd_stop(args: argparse.Namespace) -> int:
    path = default_state_dir() / "mesh.pids"
    if path.exists():
        for pid in path.read_text().split():
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
        path.unlink()
    stopped = EmbeddedStore(default_state_dir() / "store").stop()
    print("mesh stopped" + (" (and the embedded store)" if stopped else ""))
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    store = EmbeddedStore(default_state_dir() / "store")
    if args.store_command == "acl-file":
        return _acl_file(args)
    if args.store_command == "rotate-password":
        store.rotate_password(args.user, finish=args.finish)
        print(f"store user {args.user}: " + ("previous password dropped" if args.finish else
              "new password in effect, the previous one still accepted; restart the service, then run "
              f"'haulmesh store rotate-password {args.user} --finish'"))
        return 0
    if args.store_command == "start":
        print(f"embedded store on {store.ensure_running().display_url}")
    elif args.store_command == "stop":
        print("stopped" if store.stop() else "not running")
    else:
        info = store.info()
        print(f"running, pid {info.pid}, {info.display_url}" if info else "not running")
        return 0 if info else 1
    return 0


def _acl_file(args: argparse.Namespace) -> int:
    """The ACL file of STORE_USERS on stdout: with placeholders for the chart, or the hashes of the passwords in a
    folder (a file per user, as a mounted Secret has them; ``<user>-previous`` too during a rotation)."""
    if args.template:
        sys.stdout.write(render_acl_file({}, template=True))
        return 0
    if not args.passwords_dir:
        raise ConfigError("give --template or --passwords-dir DIR (a file per store user: "
                          + ", ".join(STORE_USERS) + ")")
    folder = Path(args.passwords_dir)
    passwords: dict[str, list[str]] = {}
    for name in STORE_USERS:
        try:
            passwords[name] = [(folder / name).read_text().strip()]
        except OSError as exc:
            raise ConfigError(f"no password for store user {name}: {exc}") from exc
        previous = folder / f"{name}-previous"
        if previous.is_file() and previous.read_text().strip():
            passwords[name].append(previous.read_text().strip())
    sys.stdout.write(render_acl_file(passwords))
    return 0


def _store_url() -> str:
    return resolve_redis_url(os.environ.get("REDIS_URL") or None, default_state_dir())


def _checkpoint_url(args: argparse.Namespace) -> str:
    return (args.checkpoints or os.environ.get("HAULMESH_AUDIT_CHECKPOINT_URL")
            or str(default_state_dir() / "audit-checkpoints"))


def cmd_audit(args: argparse.Namespace) -> int:
    """``haulmesh audit verify``: the chains against every signed checkpoint (read first: each was written after
    its entries were stored), then every chain walked and recomputed. Exit 0 intact and anchored, 1 tampered
    (every problem printed), 2 cannot check (key or store unusable), 3 intact but not anchored."""
    from .objectstore import ObjectStoreError, open_object_store

    anchors: dict[str, dict[int, Checkpoint]] = {}
    checkpoint_problems: list[str] = []
    count = 0
    keys_paths = [Path(p) for p in args.public_key] or [_cert_dir(args) / AUDIT_VERIFY_KEY_NAME]
    anchored = not args.no_checkpoints
    if anchored and not args.public_key and not keys_paths[0].is_file():
        print(f"no audit public key ({keys_paths[0]}; give --public-key): checkpoints not checked")
        anchored = False
    url = _checkpoint_url(args)
    if anchored and not (args.checkpoints or os.environ.get("HAULMESH_AUDIT_CHECKPOINT_URL")) \
            and not Path(url).is_dir():  # the default place, never written: nothing anchors (named ones must exist)
        print(f"no checkpoint store at {url} (give --checkpoints or HAULMESH_AUDIT_CHECKPOINT_URL)")
        anchored = False
    if anchored:
        try:
            public_keys = load_public_keys(keys_paths)
            objects = open_object_store(url, create=False)
            with connect_sync(_store_url()) as store:  # the bases first: which checkpoints verify needs
                chain_bases = audit_bases(store)
            found = read_checkpoints(objects, public_keys, bases=chain_bases)
        except (OSError, ValueError) as exc:
            print(f"haulmesh: {exc}", file=sys.stderr)
            return 2
        except (ObjectStoreError, HaulmeshError) as exc:
            print(f"haulmesh: checkpoint store {url}: {exc}", file=sys.stderr)
            return 2
        anchors = found.by_chain
        checkpoint_problems, count = found.problems, found.count
        print(f"checkpoints: {count} signed checkpoint(s) of {len(anchors)} chain(s) in {url} "
              f"(keys {', '.join(sorted(public_keys))})"
              + (f"; {len(checkpoint_problems)} refused" if checkpoint_problems else ", every signature valid"))
    client = connect_sync(_store_url())
    try:
        report = verify_audit_log(client, checkpoints=anchors if anchored else None,
                                  checkpoint_interval_seconds=float(
                                      os.environ.get("HAULMESH_AUDIT_CHECKPOINT_INTERVAL_SECONDS") or 300))
    finally:
        client.close()
    problems = checkpoint_problems + report.problems
    for problem in problems:
        print(f"TAMPERED: {problem}")
    print(f"audit log: {report.entries} entries in {report.chains} chain(s), "
          + ("every chain intact" if not problems else f"{len(problems)} problem(s)"))
    if problems:
        return 1
    if not anchored or count == 0:
        print("NOT ANCHORED: no signed checkpoint was checked, so a recomputed chain or a rolled-back store "
              "would not show (see docs/security.md, \"Audit anchor\")")
        return EXIT_NOT_ANCHORED
    if report.unanchored_chains:
        for chain in report.unanchored_chains:
            print(f"NOT ANCHORED: {chain} has no signed checkpoint, though its first entry is older than its "
                  "writer's checkpoint interval (plus a day): nothing vouches for it but the hash chain")
        return EXIT_NOT_ANCHORED
    print(f"anchored: {report.anchored_chains} of {report.chains} chain(s) match their signed checkpoints; "
          f"{report.unanchored_entries} entries are newer than their chain's last checkpoint (hash chain only)")
    return 0


async def _dlq(args: argparse.Namespace) -> int:
    client = connect_async(_store_url())
    try:
        if args.dlq_command == "list":
            letters = await dead_letters(client, args.group)
            for d in letters:
                print(f"{d.entry_id}  {d.event_id}  {d.event_type}  {d.stream}  {d.error}")
            print(f"{len(letters)} dead-lettered event(s) in group {args.group}")
        else:
            count = await replay_dead_letters(client, args.group, args.entry_ids)
            print(f"replayed {count} event(s) to group {args.group}")
    finally:
        await client.aclose()
    return 0


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from . import evidence  # offline: no store, no network

    try:
        data = Path(args.file).read_bytes()
        ca = Path(args.ca).read_bytes() if args.ca else None
    except OSError as exc:
        print(f"haulmesh: {exc}", file=sys.stderr)
        return 2
    result = evidence.verify_pack(data, trusted_ca_pem=ca)
    print(f"{args.file}: {len(data)} bytes")
    print(result.report())
    # 0 only for a pack verified against a pinned CA; every check passing against the pack's own CA is not trust.
    if result.verified:
        return 0
    return EXIT_CA_NOT_PINNED if result.ok else 1


async def _evidence_export(args: argparse.Namespace) -> int:
    import grpc

    from haulmesh.billing.v1 import evidence_service_pb2, evidence_service_pb2_grpc

    from ._keys import carrier_metadata

    carrier = args.carrier or os.environ.get("HAULMESH_CARRIER", "")
    if not carrier:
        print("haulmesh: name the mission's carrier with --carrier (or HAULMESH_CARRIER)", file=sys.stderr)
        return 2
    directory = _cert_dir(args)
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(directory / "ca.pem").read_bytes(),
            private_key=(directory / f"operator-{args.operator}-key.pem").read_bytes(),
            certificate_chain=(directory / f"operator-{args.operator}.pem").read_bytes())
    except OSError as exc:
        print(f"haulmesh: no operator certificate ({exc}); run 'haulmesh pki dev-bootstrap'", file=sys.stderr)
        return 2
    address = service_address("billing")
    mission_id = args.mission.removeprefix("missions/")
    out = Path(args.output or f"evidence-{mission_id}.zip")
    tmp = out.with_name(out.name + ".part")
    size = 0
    async with grpc.aio.secure_channel(address, credentials) as channel:
        stream = evidence_service_pb2_grpc.EvidenceServiceStub(channel).ExportEvidencePack(
            evidence_service_pb2.ExportEvidencePackRequest(mission=args.mission),
            metadata=carrier_metadata(carrier), timeout=args.timeout)
        try:
            with tmp.open("wb") as fh:
                async for chunk in stream:
                    fh.write(chunk.data)
                    size += len(chunk.data)
        except grpc.aio.AioRpcError as exc:
            tmp.unlink(missing_ok=True)
            print(f"haulmesh: export failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    tmp.replace(out)  # a half-written pack never has the final name
    print(f"wrote {out} ({size} bytes); check it with: haulmesh evidence verify {out} --ca {directory / 'ca.pem'}")
    return 0


def cmd_token(args: argparse.Namespace, rest: list[str]) -> int:
    from . import tokens  # the dev issuer: the CLI mints, the gateway trusts its keys

    return int(tokens.main(rest))


def cmd_edi(rest: list[str]) -> int:
    """``haulmesh edi check ...``: the EDI service's schema compatibility check (services/edi/check.py).

    Run as ``python -m services.edi.check`` in a child process, not imported: the runtime imports no service
    (tests/test_layout.py), and the check is the EDI service's own code (its 204 reading and tender mapping), so
    it stays there and this only dispatches to it by name. Its exit status is the command's."""
    if rest[:1] != ["check"]:
        print("usage: haulmesh edi check FILE --partner P [--partners-file F] [--format text|json]",
              file=sys.stderr)
        return 0 if rest[:1] in (["-h"], ["--help"]) else 2
    return subprocess.run([sys.executable, "-m", "services.edi.check", *rest[1:]], check=False).returncode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="haulmesh", description="Haulmesh operator and developer CLI")
    parser.add_argument("--cert-dir", help="certificate folder (default $HAULMESH_CERT_DIR or .haulmesh/certs)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pki", help="development PKI: CA, service, vehicle and operator certificates")
    psub = p.add_subparsers(dest="pki_command", required=True)
    init = psub.add_parser("init", help="create a dev CA")
    init.add_argument("--days", type=float, default=3650)
    issue = psub.add_parser("issue", help="issue a certificate with a SPIFFE identity")
    issue.add_argument("kind", choices=["service", "vehicle", "operator", "evidence"],
                       help="evidence: the signing-only key that seals evidence packs, for the service NAME")
    issue.add_argument("name", help="service name, vehicle id (e.g. AU-TRK-1001) or operator name")
    issue.add_argument("--days", type=float, default=90, help="validity in days (default 90)")
    issue.add_argument("--role", choices=ROLES, help="operators only, required: what the operator may do "
                       f"(docs/security.md, 'Operator roles'); {PLATFORM_ADMIN} acts for every carrier")
    issue.add_argument("--carrier", action="append", metavar="CARRIER",
                       help="operators other than platform admins, at least one: a carrier id the operator serves "
                       "(repeat for several)")
    akey = psub.add_parser("audit-key", help=f"a new Ed25519 audit checkpoint key: {AUDIT_SIGNING_KEY_NAME} "
                           f"(services sign with it) and {AUDIT_VERIFY_KEY_NAME} (audit verify checks with it)")
    akey.add_argument("--force", action="store_true", help="replace an existing key")
    revoke.add_parsers(psub, cert_dir=_cert_dir, store_url=_store_url,
                       checkpoint_url=lambda: os.environ.get("HAULMESH_AUDIT_CHECKPOINT_URL")
                       or str(default_state_dir() / "audit-checkpoints"))
    enrol = psub.add_parser("enrol-token", help="a one-time token with which a truck enrols (gets its first "
                            "certificate from a CSR of its own key); printed once, stored hashed")
    enrol.add_argument("kind", choices=["vehicle"], help="what enrols: vehicles only")
    enrol.add_argument("name", help="the vehicle id the token is bound to (e.g. AU-TRK-1001)")
    enrol.add_argument("--ttl-seconds", type=int, default=enrolment.DEFAULT_TOKEN_TTL_SECONDS,
                       help=f"how long the token may be used ({enrolment.MIN_TOKEN_TTL_SECONDS}-"
                            f"{enrolment.MAX_TOKEN_TTL_SECONDS}, default {enrolment.DEFAULT_TOKEN_TTL_SECONDS})")
    boot = psub.add_parser("dev-bootstrap", help="CA and every certificate a local mesh needs, if missing")
    boot.add_argument("--days", type=float, default=90)
    p.set_defaults(func=cmd_pki)

    r = sub.add_parser("run", help="start the store and every service, print where each listens")
    r.add_argument("--timeout", type=float, default=90, help="seconds to wait for all services to be SERVING")
    r.add_argument("--detach", action="store_true", help="leave the mesh running in the background")
    r.set_defaults(func=lambda a: asyncio.run(_run(a)))

    sb = sub.add_parser("sandbox", help="the mesh with a sandbox carrier, synthetic tenders and simulated trucks "
                        "running rescue scenarios; prints where the console is; Ctrl-C stops it")
    sb.add_argument("--trucks", type=int, default=SandboxConfig.trucks, help="simulated trucks, each its own process")
    sb.add_argument("--tenders-per-minute", type=float, default=SandboxConfig.tenders_per_minute,
                    help="synthetic tenders a minute on the policy's lanes (accepted when offered)")
    sb.add_argument("--speedup", type=float, default=SandboxConfig.speedup, help="simulated seconds per real second")
    sb.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, one per truck in turn: {', '.join(SCENARIOS)}")
    sb.add_argument("--scenario-at", type=float, metavar="MINUTES",
                    help="simulated minutes after departure when each scenario starts (default: its own time)")
    sb.add_argument("--seed", type=int, help="the tender generator's seed (repeatable loads)")
    sb.add_argument("--timeout", type=float, default=90, help="seconds to wait for all services to be SERVING")
    sb.set_defaults(func=lambda a: asyncio.run(_sandbox(a)))

    s = sub.add_parser("status", help="health of every service over mTLS; exit 0 only if all SERVING")
    s.set_defaults(func=lambda a: asyncio.run(_status(a)))

    st = sub.add_parser("stop", help="stop a mesh started with 'run --detach'")
    st.set_defaults(func=cmd_stop)

    audit = sub.add_parser("audit", help="the hash-chained audit log: verify it against its signed checkpoints; "
                           "exit 0 intact and anchored, 1 tampered, 2 cannot check, 3 intact but not anchored")
    audit.add_argument("audit_command", choices=["verify"])
    audit.add_argument("--checkpoints", help="the checkpoints' object store (default $HAULMESH_AUDIT_CHECKPOINT_URL "
                       "or audit-checkpoints/ in the state directory)")
    audit.add_argument("--public-key", action="append", default=[], metavar="PEM",
                       help=f"an audit public key (repeat for rotated keys; default {AUDIT_VERIFY_KEY_NAME} in the "
                       "certificate folder)")
    audit.add_argument("--no-checkpoints", action="store_true", help="the hash chain only (exit 3 when intact)")
    audit.set_defaults(func=cmd_audit)

    ev = sub.add_parser("evidence", help="evidence packs: export a mission's, verify one offline")
    evsub = ev.add_subparsers(dest="evidence_command", required=True)
    export = evsub.add_parser("export", help="a mission's sealed evidence pack, from billing (operator cert)")
    export.add_argument("mission", help="missions/{mission}")
    export.add_argument("-o", "--output", help="file to write (default evidence-<mission>.zip)")
    export.add_argument("--carrier", help="the mission's carrier id (default $HAULMESH_CARRIER)")
    export.add_argument("--operator", default="cli", help="operator certificate operator-<name>.pem (default cli)")
    export.add_argument("--timeout", type=float, default=120, help="seconds for the whole export (default 120)")
    export.set_defaults(func=lambda a: asyncio.run(_evidence_export(a)))
    check = evsub.add_parser("verify", help="verify a pack offline; exit 0 if sound against the pinned CA, 1 naming "
                             "the first failure, 3 if sound but the CA was not pinned (NOT VERIFIED)")
    check.add_argument("file")
    check.add_argument("--ca", help="pin the mesh CA (PEM); without it the checks run against the CA the pack "
                       "carries and the verdict is NOT VERIFIED (exit 3)")
    check.set_defaults(func=cmd_evidence_verify)

    events = sub.add_parser("events", help="event streams: dead letters")
    esub = events.add_subparsers(dest="events_command", required=True)
    dlq = esub.add_parser("dlq", help="inspect or replay a consumer group's dead-lettered events")
    dlq.add_argument("dlq_command", choices=["list", "replay"])
    dlq.add_argument("--group", required=True, help="consumer group, e.g. webhooks")
    dlq.add_argument("entry_ids", nargs="*", help="replay only these dead-letter entries (default: all)")
    events.set_defaults(func=lambda a: asyncio.run(_dlq(a)))

    archive = sub.add_parser("archive", help="the telemetry archive: archive stored frames now (RunArchive)")
    archive.add_argument("archive_command", choices=["run"])
    archive.add_argument("--vehicle", default="", help="only this vehicle id (default: every vehicle)")
    archive.add_argument("--timeout-seconds", type=float, default=600.0, help="deadline of the call")
    archive.set_defaults(func=lambda a: asyncio.run(_archive(a)))

    token = sub.add_parser("token", help="dev OAuth2 tokens for the gateway (haulmesh token mint --help)",
                           add_help=False)
    token.set_defaults(func=None)
    sub.add_parser("edi", help="EDI trading partners: check a partner's sample 204 (haulmesh edi check --help)",
                   add_help=False)

    kpi_report.add_parser(sub, cert_dir=_cert_dir, store_url=_store_url, address=service_address)
    command_cli.add_parser(sub, cert_dir=_cert_dir, address=service_address)

    store = sub.add_parser("store", help="the embedded store and the store users")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    for name, text in (("start", "start the embedded store"), ("stop", "stop the embedded store"),
                       ("status", "whether the embedded store runs")):
        store_sub.add_parser(name, help=text)
    acl = store_sub.add_parser("acl-file", help="the store users' ACL file (services/runtime/_store_acl.py)")
    how = acl.add_mutually_exclusive_group()
    how.add_argument("--template", action="store_true",
                     help="{{HASH:<user>}} placeholders for the passwords (the Helm chart's files/store-users.acl)")
    how.add_argument("--passwords-dir", help="a folder with a file per store user holding its password")
    rotate = store_sub.add_parser("rotate-password", help="rotate an embedded store user's password")
    rotate.add_argument("user", help="a store user: " + ", ".join(STORE_USERS))
    rotate.add_argument("--finish", action="store_true", help="drop the previous password (after the restart)")
    store.set_defaults(func=cmd_store)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        try:
            return cmd_token(argparse.Namespace(), argv[1:])
        except HaulmeshError as exc:
            print(f"haulmesh: {exc}", file=sys.stderr)
            return 2
    if argv[:1] == ["edi"]:
        return cmd_edi(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HaulmeshError as exc:
        print(f"haulmesh: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
