"""``haulmesh pki revoke`` and ``haulmesh pki revoked``: the certificate deny-list from the command line.

    haulmesh pki revoke vehicle AU-TRK-1001 [--cert FILE] [--reason TEXT]
    haulmesh pki revoke operator alice [--cert FILE] [--reason TEXT]
    haulmesh pki revoke serial 4f:a1:... [--not-after 2027-03-01T00:00:00Z] [--identity SPIFFE-ID] [--reason TEXT]
    haulmesh pki revoked                list what is revoked now

A vehicle or operator is revoked by its certificate (``vehicle-<id>.pem`` / ``operator-<name>.pem`` in the
certificate folder, or ``--cert``): its serial goes on the deny-list until the certificate's notAfter. A serial alone
(a certificate you no longer have) stays listed until ``--not-after``, by default until the mesh CA expires (no
certificate of that CA verifies after it). Each revocation is recorded in the audit log and, when the audit signing
key is at hand, anchored by a signed checkpoint. Exit 0 done (or already revoked), 2 refused (the reason printed).
docs/security.md, "Revocation".
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import getpass
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from ._audit import AuditLog
from ._config import AUDIT_SIGNING_KEY_NAME
from ._errors import ConfigError, HaulmeshError
from ._identity import TRUST_DOMAIN
from ._revocation import _normal_serial, revoke_certificate, revoked_certificates
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
    revoke.add_argument("name", help="vehicle id, operator name, or the serial number (hex, colons allowed)")
    revoke.add_argument("--cert", type=Path, help="the certificate to revoke (default <kind>-<name>.pem in the "
                        "certificate folder)")
    revoke.add_argument("--reason", default="", help="why (recorded with the entry and in the audit log)")
    revoke.add_argument("--not-after", help="serial only: when its certificate expires (ISO 8601; default: when "
                        "the mesh CA expires)")
    revoke.add_argument("--identity", default="", help="serial only: the SPIFFE ID it belonged to, for the record")
    revoke.set_defaults(func=lambda a: asyncio.run(_revoke(a, cert_dir(a), store_url(), checkpoint_url())))
    listed = pki_commands.add_parser("revoked", help="list the revoked certificates still in force")
    listed.set_defaults(func=lambda a: asyncio.run(_list(store_url())))


def _certificate(args: argparse.Namespace, directory: Path) -> x509.Certificate:
    path = args.cert or directory / f"{args.kind}-{args.name}.pem"
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no certificate {path} to revoke; give the one issued with --cert, or revoke it by "
                          "serial: haulmesh pki revoke serial <hex> --not-after <its notAfter>", field="cert") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate: {exc}", field="cert") from None


def _parse_time(text: str) -> float:
    try:
        when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--not-after must be an ISO 8601 time such as 2027-03-01T00:00:00Z, got {text!r}",
                          field="not-after") from None
    return (when if when.tzinfo else when.replace(tzinfo=_dt.UTC)).timestamp()


def _target(args: argparse.Namespace, directory: Path) -> tuple[str, float, str]:
    """(serial, notAfter as Unix seconds, SPIFFE ID or "") of what the arguments name; ConfigError otherwise."""
    if args.kind == "serial":
        if args.cert:
            raise ConfigError("--cert names a vehicle's or operator's certificate; a serial is revoked by itself",
                              field="cert")
        try:
            serial = _normal_serial(args.name)
        except ValueError as exc:
            raise ConfigError(str(exc), field="serial") from None
        if args.not_after:
            return serial, _parse_time(args.not_after), args.identity
        try:
            ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        except (OSError, ValueError):
            raise ConfigError(f"no mesh CA at {directory / 'ca.pem'} to bound the entry: give --not-after",
                              field="not-after") from None
        return serial, ca.not_valid_after_utc.timestamp(), args.identity
    if args.not_after or args.identity:
        raise ConfigError("--not-after and --identity are for a serial; a certificate carries both", field="kind")
    expected = identity_for(args.kind, args.name)  # a malformed id is refused here, before any store call
    cert = _certificate(args, directory)
    uris = []
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        pass
    if uris != [expected.spiffe_id]:
        raise ConfigError(f"the certificate is {', '.join(uris) or 'no SPIFFE identity'}, not {expected}: "
                          f"refusing to revoke it as {args.kind} {args.name}", field="cert")
    return _normal_serial(format(cert.serial_number, "x")), cert.not_valid_after_utc.timestamp(), expected.spiffe_id


def _operator() -> str:
    """Who ran the command, as the audit log records it (a person at a shell: no mesh identity)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


async def _revoke(args: argparse.Namespace, directory: Path, store_url: str, checkpoint_url: str) -> int:
    try:
        serial, not_after, identity = _target(args, directory)
    except HaulmeshError as exc:
        print(f"haulmesh: {exc}", file=sys.stderr)
        return 2
    expires = _dt.datetime.fromtimestamp(not_after, _dt.UTC).isoformat(timespec="seconds")
    if not_after <= _dt.datetime.now(_dt.UTC).timestamp():
        print(f"certificate {serial} ({identity or 'serial'}) expired at {expires}: no service accepts it; "
              "nothing to revoke")
        return 0
    client = connect_async(store_url)
    try:
        actor = _operator()
        added = await revoke_certificate(client, serial, not_after=not_after, identity=identity,
                                         reason=args.reason, revoked_by=actor)
        if added:
            await _audit(client, directory, checkpoint_url, actor, serial)
    except HaulmeshError as exc:
        print(f"haulmesh: {exc}", file=sys.stderr)
        return 2
    finally:
        await client.aclose()
    who = identity or f"spiffe://{TRUST_DOMAIN}/..."
    print(f"{'revoked' if added else 'already revoked:'} {who} certificate serial {serial} (listed until {expires} "
          "plus an hour); every service refuses it within HAULMESH_REVOCATION_REFRESH_SECONDS (1 s) of reading the "
          "store")
    return 0


async def _audit(client: object, directory: Path, checkpoint_url: str, actor: str, serial: str) -> None:
    """Record the revocation in an audit chain of its own, anchored by a final signed checkpoint when the signing
    key is here (as a service's chain is when it stops), so ``haulmesh audit verify`` vouches for it."""
    log = AuditLog(client, "pki-cli")  # type: ignore[arg-type]
    await log.append(actor=actor, method=AUDIT_METHOD, resource=f"certificates/{serial}")
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
        when = _dt.datetime.fromtimestamp(entry.revoke_time, _dt.UTC).isoformat(timespec="seconds")
        until = _dt.datetime.fromtimestamp(entry.not_after, _dt.UTC).isoformat(timespec="seconds")
        print(f"{entry.serial}  {entry.identity or '-'}  revoked {when} by {entry.revoked_by or '-'}  "
              f"expires {until}  {entry.reason}")
    print(f"{len(entries)} revoked certificate(s) in force")
    return 0
