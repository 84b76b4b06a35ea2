"""Anchoring the audit chains off the store: signed checkpoints of each chain's head (docs/security.md, "Audit
anchor").

The hash chain of :mod:`._audit` shows an edited, deleted or reordered entry, but whoever can write the store can
recompute every hash after an edit, or put back an older copy of the whole store: the chain alone cannot tell. So
every process signs the head of the chain it writes (chain, sequence, hash, time) with an Ed25519 key the store
never sees (``HAULMESH_AUDIT_SIGNING_KEY_FILE``) and exports the signed checkpoint, every
``HAULMESH_AUDIT_CHECKPOINT_INTERVAL_SECONDS`` and once more when it stops, to an object store the store's users
cannot write (``HAULMESH_AUDIT_CHECKPOINT_URL``: a local directory by default, the data tiers' S3 bucket with Object
Lock in a cluster), create-only, one object per (chain, sequence).

The signer signs what it wrote itself, from memory (:meth:`AuditLog.head`), never the head it reads back from the
store. ``haulmesh audit verify`` then checks the stored entries named by the checkpoints it reads (each chain's
newest and the newest at or below its base) against the signed hash (recomputing the chain after an edit changes
it), and every checkpoint against the store's head (a checkpoint
beyond the head: truncated or rolled back; a checkpointed chain absent from the store: deleted or rolled back).
Entries written after a chain's last checkpoint are covered by the hash chain alone until the next one: the window
is the interval.

Each process writes checkpoints for its own chain only: one writer per chain, so no coordination, and a signer
never vouches for entries another process wrote.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client import Counter, Gauge

from ._errors import ConfigError, HaulmeshError
from ._metrics import METRICS_REGISTRY
from .objectstore import MAX_LIST_LIMIT, ObjectExists, ObjectStore

if TYPE_CHECKING:
    from ._audit import AuditLog

__all__ = ["CHECKPOINT_PREFIX", "CHECKPOINT_RETENTION_SECONDS", "RETRY_SECONDS", "AuditSigner", "Checkpoint",
           "CheckpointSet", "CheckpointWriter", "TooManyCheckpoints", "generate_signing_key", "key_id",
           "load_public_keys", "object_key", "read_checkpoints"]

_log = logging.getLogger("haulmesh.audit")

CHECKPOINT_LAG = Gauge("haulmesh_audit_checkpoint_lag_entries", "Audit entries this process stored that no exported "
                       "signed checkpoint covers yet (grows while the checkpoint store fails).",
                       registry=METRICS_REGISTRY)
CHECKPOINT_FAILURES = Counter("haulmesh_audit_checkpoint_failures", "Signed audit checkpoints whose export failed "
                              "(each is retried).", registry=METRICS_REGISTRY)

#: Where checkpoints live in their object store: ``audit-checkpoints/<chain id>/<sequence, 12 digits>.json``.
CHECKPOINT_PREFIX = "audit-checkpoints/"
#: Signed bytes start with this, so a checkpoint signature can never be taken for a signature of anything else.
_SIGNING_DOMAIN = b"haulmesh-audit-checkpoint-v1\n"
_VERSION = 1
#: Checkpoints are kept (retained on a WORM bucket) as long as the entries they anchor: the audit retention
#: (:data:`._audit.AUDIT_RETENTION_SECONDS`, a year of disputes plus a month) plus a month of margin.
CHECKPOINT_RETENTION_SECONDS = 425 * 86400
#: After a failed export, the next attempt comes this much later (not a whole interval).
RETRY_SECONDS = 30.0
#: Threads reading checkpoints at once in :func:`read_checkpoints` (S3 GETs are round trips, not CPU).
_READ_THREADS = 8


def key_id(public_key: Ed25519PublicKey) -> str:
    """A public key's id: the first 16 hex digits of the SHA-256 of its raw 32 bytes (names the key to verify
    with, so keys can be rotated: a verifier holds every key still anchoring checkpoints)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """A chain's head as its writer saw it, signed: chain name, last sequence, that entry's hash, when (Unix
    seconds), the signing key's id and the Ed25519 signature (base64) over :meth:`signed_bytes`."""

    chain: str
    seq: int
    hash: str
    time: float
    key_id: str
    signature: str = ""
    #: Written as the process stopped cleanly: no entry of the chain may follow it (signed; absent when false, so
    #: checkpoints written before the flag existed keep their signatures).
    final: bool = False

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"v": _VERSION, "chain": self.chain, "seq": self.seq, "hash": self.hash,
                                "time": self.time, "key_id": self.key_id}
        if self.final:
            body["final"] = True
        return body

    def signed_bytes(self) -> bytes:
        return _SIGNING_DOMAIN + json.dumps(self._body(), sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> bytes:
        return json.dumps({**self._body(), "signature": self.signature}, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Checkpoint:
        """Parse a stored checkpoint; ValueError when it is not one."""
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("v") != _VERSION:
            raise ValueError("not a version-1 audit checkpoint")
        try:
            checkpoint = cls(chain=str(raw["chain"]), seq=int(raw["seq"]), hash=str(raw["hash"]),
                             time=float(raw["time"]), key_id=str(raw["key_id"]), signature=str(raw["signature"]),
                             final=raw.get("final", False) is True)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or malformed field: {exc}") from None
        return checkpoint

    def verify(self, public_keys: dict[str, Ed25519PublicKey]) -> str | None:
        """None if signed by one of ``public_keys``, else what is wrong."""
        key = public_keys.get(self.key_id)
        if key is None:
            return f"signed by an unknown key {self.key_id!r} (known: {', '.join(sorted(public_keys)) or 'none'})"
        try:
            key.verify(base64.b64decode(self.signature, validate=True), self.signed_bytes())
        except (InvalidSignature, binascii.Error, ValueError):
            return "bad signature (forged or altered)"
        return None

    @property
    def object_key(self) -> str:
        return object_key(self.chain, self.seq, final=self.final)


def object_key(chain: str, seq: int, *, final: bool = False) -> str:
    """``audit-checkpoints/<chain id>/<seq>.json`` (``<seq>.final.json`` for the stop's checkpoint, which may sign
    the same head as the last periodic one: objects are create-only): the chain id is the part between the braces
    of ``audit:{<writer>}`` (a valid key segment: service, host, pid and a random id)."""
    inner = chain[chain.find("{") + 1:chain.rfind("}")] if "{" in chain and chain.endswith("}") else chain
    segment = "".join(c if c.isalnum() or c in "-_." else "_" for c in inner).lstrip(".") or "_"
    return f"{CHECKPOINT_PREFIX}{segment[:200]}/{seq:012d}{'.final' if final else ''}.json"


class AuditSigner:
    """The Ed25519 key that signs checkpoints, loaded from a PEM file (PKCS#8, unencrypted: a mounted Secret)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def from_file(cls, path: Path, *, variable: str = "HAULMESH_AUDIT_SIGNING_KEY_FILE") -> AuditSigner:
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except OSError as exc:
            raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}", field=variable) from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{variable}: {path} is not an unencrypted PEM private key: {exc}",
                              field=variable) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{variable}: {path} holds a {type(key).__name__}, not an Ed25519 key", field=variable)
        return cls(key)

    def sign(self, chain: str, seq: int, digest: str, at: float, *, final: bool = False) -> Checkpoint:
        unsigned = Checkpoint(chain, seq, digest, round(at, 3), self.key_id, final=final)
        signature = base64.b64encode(self._key.sign(unsigned.signed_bytes())).decode()
        return Checkpoint(chain, seq, digest, unsigned.time, self.key_id, signature, final)


def generate_signing_key(private_path: Path, public_path: Path) -> str:
    """A new Ed25519 checkpoint key: the private half (0600) and the public half for verifiers; returns its id."""
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(key.public_key())


def load_public_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """Public keys by id, from PEM files (a public key, or a private key whose public half is used);
    ValueError naming the file that is not an Ed25519 key."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        data = Path(path).read_bytes()
        try:
            loaded: Any = serialization.load_pem_public_key(data)
        except ValueError:
            try:
                loaded = serialization.load_pem_private_key(data, password=None).public_key()
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}: not a PEM Ed25519 key ({exc})") from None
        if not isinstance(loaded, Ed25519PublicKey):
            raise ValueError(f"{path}: a {type(loaded).__name__}, not an Ed25519 key")
        keys[key_id(loaded)] = loaded
    return keys


class CheckpointWriter:
    """Exports this process's chain head, signed, whenever it moved since the last export (a runtime periodic
    loop: a failed export is retried at the next pass, and the service's health says so meanwhile)."""

    def __init__(self, log: AuditLog, signer: AuditSigner, objects: Callable[[], ObjectStore]) -> None:
        self._log = log
        self._signer = signer
        self._open = objects
        self._objects_opened: ObjectStore | None = None
        self._exported = 0
        #: Checkpoints written by this process (for tests and the metrics).
        self.written = 0

    async def tick(self, *, final: bool = False) -> float | None:
        """One pass: sign and export the head if it moved (``final``: the stop's checkpoint, written even if the
        head did not move, once the chain has an entry). The head is the writer's own (in memory), so what is
        signed is what this process stored, whatever the store holds now.

        An object store that fails is logged and tried again after :data:`RETRY_SECONDS` (the returned delay), not
        raised: the service keeps serving (its calls are still chained in the store; only the anchor lags), so an
        object store outage never takes the mesh out of rotation. ``haulmesh_audit_checkpoint_lag_entries`` says
        how far the anchor is behind."""
        seq, digest = self._log.head()
        CHECKPOINT_LAG.set(seq - self._exported)
        if seq <= self._exported and not (final and seq > 0):
            return None
        checkpoint = self._signer.sign(self._log.stream, seq, digest, datetime.now(UTC).timestamp(), final=final)
        try:
            await asyncio.to_thread(self._put, checkpoint)
        except (HaulmeshError, OSError) as exc:  # ObjectStoreError, or a URL refused when first opened
            CHECKPOINT_FAILURES.inc()
            _log.error("AUDIT: checkpoint of %s at seq %d not exported (%s); retrying in %.0f s",
                       self._log.stream, seq, exc, RETRY_SECONDS)
            return RETRY_SECONDS
        self._exported = seq
        self.written += 1
        CHECKPOINT_LAG.set(self._log.head()[0] - seq)
        return None

    @property
    def lag(self) -> int:
        """Entries this process stored that no exported checkpoint covers yet."""
        return self._log.head()[0] - self._exported

    def open(self) -> ObjectStore:
        """The object store, opened once (blocking: an S3 store answers over the network; call it in a thread). A
        malformed URL is a ConfigError; an unreachable store an ObjectStoreError / OSError, retried later."""
        if self._objects_opened is None:
            self._objects_opened = self._open()
        return self._objects_opened

    def _put(self, checkpoint: Checkpoint) -> None:
        objects = self.open()
        data = checkpoint.to_json()
        retain = datetime.now(UTC) + timedelta(seconds=CHECKPOINT_RETENTION_SECONDS) if objects.worm else None
        try:
            objects.put_new(checkpoint.object_key, data, retain_until=retain)
        except ObjectExists:
            # Only this process writes its chain's keys: a transport retry of a PUT that did land. Anything else
            # under the key is somebody else's object, which verify reports; ours is not lost silently.
            stored = objects.head(checkpoint.object_key)
            if stored is None or stored.sha256 != hashlib.sha256(data).hexdigest():
                _log.error("AUDIT: checkpoint %s already exists with other content", checkpoint.object_key)

    async def stop(self) -> None:
        """The last checkpoint, as the process stops, signed ``final``: a clean shutdown leaves its whole chain
        anchored, and verify reports any entry after it as forged (this process writes no more)."""
        try:
            await self.tick(final=True)
        except Exception as exc:  # shutting down: say so, the next verify reports the unanchored tail as such
            _log.warning("AUDIT: final checkpoint of %s not written: %s", self._log.stream, exc)


@dataclass(frozen=True)
class CheckpointSet:
    """What :func:`read_checkpoints` found: the verified checkpoints by chain (by sequence), and the problems
    (unreadable objects, bad signatures, unknown keys), each a sentence."""

    by_chain: dict[str, dict[int, Checkpoint]]
    problems: list[str]

    @property
    def count(self) -> int:
        return sum(len(c) for c in self.by_chain.values())


class TooManyCheckpoints(HaulmeshError):
    """The checkpoint listing reached its limit: the set read would be partial, so nothing is checked against it
    (``haulmesh audit verify`` exits 2) rather than a silently partial check."""


def _needed(keys: list[str], bases: Mapping[str, int]) -> list[str]:
    """Of the listed checkpoint keys, those verify needs: per chain directory its newest sequence (both twins, the
    periodic and the final) and, for a chain the store lists, the newest at or below its base (``bases``: chain →
    base sequence, 0 untrimmed). The newest one catches a recomputed chain (a recomputation changes every hash from
    the edit on, the head's too), a truncation and a rollback; the one at or below the base a forged base and
    history erased early; the hash chain the rest."""
    by_dir: dict[str, dict[int, list[str]]] = {}
    for key in keys:
        directory, _, name = key.rpartition("/")
        digits = name.split(".", 1)[0]
        if not digits.isdigit():
            by_dir.setdefault(directory, {}).setdefault(-1, []).append(key)  # not ours: read, and reported
            continue
        by_dir.setdefault(directory, {}).setdefault(int(digits), []).append(key)
    base_of = {object_key(chain, 0).rpartition("/")[0]: base for chain, base in bases.items()}
    needed: list[str] = []
    for directory, by_seq in by_dir.items():
        picks = {max(by_seq)} | ({-1} if -1 in by_seq else set())
        base = base_of.get(directory, 0)
        below = [seq for seq in by_seq if 0 <= seq <= base]
        if below:
            picks.add(max(below))
        for seq in sorted(picks):
            needed.extend(by_seq[seq])
    return needed


def read_checkpoints(objects: ObjectStore, public_keys: dict[str, Ed25519PublicKey], *,
                     limit: int = MAX_LIST_LIMIT, bases: Mapping[str, int] | None = None) -> CheckpointSet:
    """The checkpoints in ``objects``, signature-checked. A checkpoint that fails its check is a problem, never
    used: only signed heads count against the store. :class:`TooManyCheckpoints` when the listing reaches
    ``limit`` (1,000,000 objects by default): never a silently partial set.

    Every listed checkpoint is read, unless ``bases`` (chain → its base sequence, 0 untrimmed; read from the store
    *before* the checkpoints) is given: then only those verify needs (:func:`_needed`), about two GETs a chain,
    however long it has run."""
    keys = objects.list(CHECKPOINT_PREFIX, limit=limit)
    if len(keys) >= limit:
        raise TooManyCheckpoints(f"{len(keys)} checkpoint objects listed, the listing's limit: some may be missing, "
                                 "so none is checked (remove checkpoints past their retention, or verify a copy)")
    if bases is not None:
        keys = _needed(keys, bases)
    problems: list[str] = []
    by_chain: dict[str, dict[int, Checkpoint]] = {}

    def load(key: str) -> tuple[str, Checkpoint | None, str | None]:
        try:
            checkpoint = Checkpoint.from_json(objects.get(key))
        except Exception as exc:  # any unreadable object is reported by name, not raised
            return key, None, f"checkpoint {key}: unreadable ({exc})"
        wrong = checkpoint.verify(public_keys)
        if wrong is None and checkpoint.object_key != key:
            wrong = f"stored under the wrong key (its content says {checkpoint.object_key})"
        return key, checkpoint, None if wrong is None else f"checkpoint {key}: {wrong}"

    with ThreadPoolExecutor(_READ_THREADS) as pool:
        for _key, checkpoint, problem in pool.map(load, keys):
            if problem is not None:
                problems.append(problem)
            elif checkpoint is not None:
                chain = by_chain.setdefault(checkpoint.chain, {})
                if checkpoint.final or checkpoint.seq not in chain:  # the final one of a head wins over its twin
                    chain[checkpoint.seq] = checkpoint
    return CheckpointSet(by_chain, problems)
