"""``haulmesh pki revoke`` and ``haulmesh pki revoked``: the certificate deny-list from the command line.

    haulmesh pki revoke vehicle AU-TRK-1001 [--reason TEXT] [--not-after TIME]
    haulmesh pki revoke operator alice [--reason TEXT] [--not-after TIME]
    haulmesh pki revoke serial 4f:a1:... [--cert FILE] [--not-after TIME] [--identity SPIFFE-ID] [--reason TEXT]
    haulmesh pki revoked                list what is revoked now

A vehicle or operator is revoked by identity: every certificate of it dated up to now (the store's clock) is refused,
whichever serial it has, so a truck that renewed its certificate since you last saw it is revoked too. It gets back
in with a certificate dated after that: enrolling again with a new token does it (the gateway dates it so). The
entry stays until ``--not-after``, by default until the mesh CA expires (no certificate of that CA verifies after
it). One certificate is revoked by its serial (``--cert FILE`` reads it and its notAfter from the file). Each
revocation is recorded in the audit log and, when the audit signing key is at hand, anchored by a signed
checkpoint. Exit 0 done (or already revoked), 2 refused (the reason printed). docs/security.md, "Revocation".
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import getpass
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from ._audit import AuditLog
from ._config import AUDIT_SIGNING_KEY_NAME
from ._errors import ConfigError, HaulmeshError
from ._identity import TRUST_DOMAIN
from ._revocation import _normal_serial, revoke_certificate, revoke_identity, revoked_certificates
from ._store import connect_async
from .audit_anchor import AuditSigner, CheckpointWriter
from .objectstore import open_object_store
from .pki import identity_for

__all__ = ["add_parsers"]

#: The audit log's method name of a revocation (an operator's command, not an RPC).
AUDIT_METHOD = "haulmesh pki revoke"


def add_parsers(pki_commands: argparse._SubParsersAction, *, cert_dir: Callable[[argparse.Namespace], Path],
                store_url: Callable[[], str], checkpoint_url: Callable[[], str]) -> None:
    """Add ``revoke`` and ``revoked`` to the ``haulmesh pki`` sub-commands."""
    revoke = pki_commands.add_parser("revoke", help="revoke a vehicle's or operator's certificate, or a serial: every "
                                     "service refuses it within seconds (docs/security.md, \"Revocation\")")
    revoke.add_argument("kind", choices=["vehicle", "operator", "serial"])
    revoke.add_argument("name", help="vehicle id, operator name, or the serial number (hex, colons allowed; "
                        "'-' with --cert)")
    revoke.add_argument("--cert", type=Path, help="serial only: the certificate (PEM) whose serial to revoke, "
                        "until its notAfter")
    revoke.add_argument("--reason", default="", help="why (recorded with the entry and in the audit log)")
    revoke.add_argument("--not-after", help="how long the entry stays: when the last certificate it refuses "
                        "expires (ISO 8601; default: when the mesh CA expires)")
    revoke.add_argument("--identity", default="", help="serial only: the SPIFFE ID it belonged to, for the record")
    revoke.set_defaults(func=lambda a: asyncio.run(_revoke(a, cert_dir(a), store_url(), checkpoint_url())))
    listed = pki_commands.add_parser("revoked", help="list the revoked certificates still in force")
    listed.set_defaults(func=lambda a: asyncio.run(_list(store_url())))


def _certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the certificate {path}: {exc.strerror or exc}", field="cert") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate: {exc}", field="cert") from None


def _parse_time(text: str) -> float:
    try:
        when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--not-after must be an ISO 8601 time such as 2027-03-01T00:00:00Z, got {text!r}",
                          field="not-after") from None
    return (when if when.tzinfo else when.replace(tzinfo=_dt.UTC)).timestamp()


def _until(args: argparse.Namespace, directory: Path) -> float:
    """How long an entry stays: ``--not-after``, else the mesh CA's notAfter."""
    if args.not_after:
        return _parse_time(args.not_after)
    try:
        ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    except (OSError, ValueError):
        raise ConfigError(f"no mesh CA at {directory / 'ca.pem'} to bound the entry: give --not-after",
                          field="not-after") from None
    return ca.not_valid_after_utc.timestamp()


def _serial_target(args: argparse.Namespace, directory: Path) -> tuple[str, float, str]:
    """(serial, notAfter as Unix seconds, SPIFFE ID or "") of ``revoke serial``; ConfigError otherwise."""
    if args.cert:
        if args.not_after:
            raise ConfigError("--not-after is read from the certificate --cert names", field="not-after")
        cert = _certificate(args.cert)
        uris: list[str] = []
        try:
            uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            pass
        serial = _normal_serial(format(cert.serial_number, "x"))
        if args.name != "-" and _checked_serial(args.name) != serial:
            raise ConfigError(f"{args.cert} has serial {serial}, not {args.name}", field="cert")
        return serial, cert.not_valid_after_utc.timestamp(), uris[0] if len(uris) == 1 else args.identity
    return _checked_serial(args.name), _until(args, directory), args.identity


def _checked_serial(text: str) -> str:
    try:
        return _normal_serial(text)
    except ValueError as exc:
        raise ConfigError(str(exc), field="serial") from None


def _operator() -> str:
    """Who ran the command, as the audit log records it (a person at a shell: no mesh identity)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


async def _revoke(args: argparse.Namespace, directory: Path, store_url: str, checkpoint_url: str) -> int:
    try:
        if args.kind == "serial":
            return await _revoke_serial(args, directory, store_url, checkpoint_url)
        return await _revoke_identity(args, directory, store_url, checkpoint_url)
    except HaulmeshError as exc:
        print(f"haulmesh: {exc}", file=sys.stderr)
        return 2


async def _revoke_serial(args: argparse.Namespace, directory: Path, store_url: str, checkpoint_url: str) -> int:
    serial, not_after, identity = _serial_target(args, directory)
    expires = _iso(not_after)
    if not_after <= time.time():
        print(f"certificate {serial} ({identity or 'serial'}) expired at {expires}: no service accepts it; "
              "nothing to revoke")
        return 0
    client = connect_async(store_url)
    try:
        actor = _operator()
        added = await revoke_certificate(client, serial, not_after=not_after, identity=identity,
                                         reason=args.reason, revoked_by=actor)
        if added:
            await _audit(client, directory, checkpoint_url, actor, f"certificates/{serial}")
    finally:
        await client.aclose()
    who = identity or f"spiffe://{TRUST_DOMAIN}/..."
    print(f"{'revoked' if added else 'already revoked:'} {who} certificate serial {serial} (listed until {expires} "
          "plus an hour); every service refuses it within HAULMESH_REVOCATION_REFRESH_SECONDS (1 s) of reading the "
          "store")
    return 0


async def _revoke_identity(args: argparse.Namespace, directory: Path, store_url: str, checkpoint_url: str) -> int:
    if args.cert or args.identity:
        raise ConfigError(f"--cert and --identity are for a serial; a {args.kind} is revoked by its name, all its "
                          "certificates", field="kind")
    identity = identity_for(args.kind, args.name)  # a malformed id is refused here, before any store call
    until = _until(args, directory)
    if until <= time.time():
        raise ConfigError(f"--not-after {_iso(until)} is past: the entry would be gone at once", field="not-after")
    client = connect_async(store_url)
    try:
        actor = _operator()
        cutoff = await revoke_identity(client, identity.spiffe_id, until=until, reason=args.reason,
                                       revoked_by=actor)
        await _audit(client, directory, checkpoint_url, actor, identity.spiffe_id)
    finally:
        await client.aclose()
    print(f"revoked {identity}: every certificate dated up to {_iso(cutoff)} is refused by every service within "
          f"HAULMESH_REVOCATION_REFRESH_SECONDS (1 s) of reading the store (listed until {_iso(until)}).")
    if args.kind == "vehicle":
        print(f"To let it back in: haulmesh pki enrol-token vehicle {args.name}, then enrol the truck (its new "
              "certificate is dated after the cut-off).")
    else:
        print("To let them back in: issue a new certificate after the cut-off plus 5 minutes (haulmesh pki issue "
              "backdates by that much for clock skew).")
    return 0


def _iso(unix_seconds: float) -> str:
    return _dt.datetime.fromtimestamp(unix_seconds, _dt.UTC).isoformat(timespec="seconds")


async def _audit(client: object, directory: Path, checkpoint_url: str, actor: str, resource: str) -> None:
    """Record the revocation in an audit chain of its own, anchored by a final signed checkpoint when the signing
    key is here (as a service's chain is when it stops), so ``haulmesh audit verify`` vouches for it."""
    log = AuditLog(client, "pki-cli")  # type: ignore[arg-type]
    await log.append(actor=actor, method=AUDIT_METHOD, resource=resource)
    key = _signing_key(directory)
    if key is None:
        print("warning: no audit signing key (HAULMESH_AUDIT_SIGNING_KEY_FILE, or audit-signing-key.pem in the "
              "certificate folder): the revocation's audit entry is not anchored",
              file=sys.stderr)
        return
    writer = CheckpointWriter(log, AuditSigner.from_file(key), lambda: open_object_store(checkpoint_url))
    await writer.tick(final=True)
    if writer.written == 0:
        print(f"warning: the revocation's audit checkpoint could not be written to {checkpoint_url}",
              file=sys.stderr)


def _signing_key(directory: Path) -> Path | None:
    key = Path(os.environ.get("HAULMESH_AUDIT_SIGNING_KEY_FILE") or directory / AUDIT_SIGNING_KEY_NAME)
    return key if key.is_file() else None


async def _list(store_url: str) -> int:
    client = connect_async(store_url)
    try:
        entries = await revoked_certificates(client)
    finally:
        await client.aclose()
    for entry in entries:
        what = entry.serial or f"every certificate dated up to {_iso(entry.cutoff)}"
        print(f"{what}  {entry.identity or '-'}  revoked {_iso(entry.revoke_time)} by {entry.revoked_by or '-'}  "
              f"expires {_iso(entry.not_after)}  {entry.reason}")
    identities = sum(1 for e in entries if not e.serial)
    print(f"{len(entries) - identities} revoked certificate(s) and {identities} revoked identit"
          f"{'y' if identities == 1 else 'ies'} in force")
    return 0
