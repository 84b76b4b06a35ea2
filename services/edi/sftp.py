"""The EDI service's SFTP door (issue 15): an asyncssh SFTP-only server, each trading partner jailed in its folder.

A partner logs in with its SSH key as the user named by its partner id and sees its own folder as ``/`` with two
directories, nothing else (the service's ``archive/`` and ``failed/`` beside them stay hidden):

* ``in/``: write-only. A file is created, written and closed; it is written as ``in/.<name>.<token>.part`` and
  appears under its final name only on a clean close (fsync, then a hard link that fails if the name exists, then
  the part is removed), so the folder poller never reads half a file. An upload cut off (connection lost, channel
  closed with the file open) leaves no final-named file. A name already waiting in ``in/`` is never overwritten:
  the upload is refused with FX_FILE_ALREADY_EXISTS (received but not processed yet is ours to keep). A file over
  the size limit is refused with an SFTP error at the write that crosses it, and its part removed. The partner may
  list ``in/`` (its pending files) and rename a pending file within ``in/`` (clients that upload to a temporary
  name and rename it, without overwriting either).
* ``out/``: read, list, and remove what was fetched. Names starting with a dot or ending in ``.tmp``, ``.part``,
  ``.filepart`` or ``.partial`` are files in the making: not listed, not readable.

Everything else is refused: shells, commands, scp, port forwarding (TCP, Unix, tun/tap), agent and X11 forwarding,
a pty; passwords and keyboard-interactive (the server offers public keys only); mkdir, rmdir, symlinks, hard links,
readlink, statvfs; setstat except a change of times (accepted, not applied: a partner's clock must not move the
poller's). Paths are the partner's own virtual paths, mapped here (not asyncssh's ``chroot``, which cannot say
"write-only" or "only these two folders"): ``..`` and absolute paths resolve inside the virtual root, so
``/../other/in`` is ``/other/in``, which does not exist; files are opened with ``O_NOFOLLOW`` and must be regular
files, so a symlink planted in a partner's folder is not followed.

Bounded: connections (one more is disconnected as it arrives, before any login), sessions per connection, open
files per session, the size of a file, the files waiting in a partner's ``in/``, the login grace time (asyncssh's
``login_timeout``) and an idle timeout (no SFTP request for that long closes the connection). A new partner list
(:meth:`SftpServer.replace_authorized_keys`) closes the connections of partners or keys no longer in it.

The host key: given in production (:meth:`SftpServer.start` refuses when it is missing or open to every user, the
"other" permission bits; group-readable is allowed, as a Kubernetes secret with an fsGroup mounts it); in
development ``generate_host_key=True`` writes an Ed25519 key (0600) on first start and reuses it after.

The constructor takes plain data (partner id -> OpenSSH public key lines), so it does not depend on the core's
partner type; the service passes ``Partner.ssh_authorized_keys`` (services/edi/domain/_partners.py).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import posixpath
import re
import secrets
import stat
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from asyncssh.stream import SSHServerStreamSession
from prometheus_client import Counter, Gauge

from services.runtime import METRICS_REGISTRY, ConfigError

__all__ = ["SFTP_BYTES", "SFTP_CONNECTIONS", "SFTP_LOGINS", "SFTP_REFUSED_CONNECTIONS", "SFTP_UPLOADS", "SftpLimits",
           "SftpServer"]

_log = logging.getLogger("haulmesh.edi.sftp")

SFTP_LOGINS = Counter("haulmesh_edi_sftp_logins_total", "SFTP login attempts by outcome: accepted, unknown_partner "
                      "(no such partner id), wrong_key (a key the partner does not have; counted per key offered).",
                      ["outcome"], registry=METRICS_REGISTRY)
SFTP_BYTES = Counter("haulmesh_edi_sftp_bytes_total", "File bytes over SFTP: in (written by partners into in/) and "
                     "out (read by partners from out/).", ["direction"], registry=METRICS_REGISTRY)
SFTP_UPLOADS = Counter("haulmesh_edi_sftp_uploads_total", "Uploads into in/ by outcome: committed (under its final "
                       "name), aborted (cut off before a clean close), too_large (over the size limit), exists (the "
                       "name is still waiting in in/), too_many (in/ full of files waiting).", ["outcome"],
                       registry=METRICS_REGISTRY)
SFTP_CONNECTIONS = Gauge("haulmesh_edi_sftp_connections", "SFTP connections open on this process (logged in or "
                         "not).", registry=METRICS_REGISTRY)
SFTP_REFUSED_CONNECTIONS = Counter("haulmesh_edi_sftp_refused_connections_total", "Connections refused because "
                                   "the SFTP door was at its connection limit.", registry=METRICS_REGISTRY)
for _outcome in ("accepted", "unknown_partner", "wrong_key"):
    SFTP_LOGINS.labels(_outcome)
for _direction in ("in", "out"):
    SFTP_BYTES.labels(_direction)
for _outcome in ("committed", "aborted", "too_large", "exists", "too_many"):
    SFTP_UPLOADS.labels(_outcome)

#: A partner id is a folder name under the root: no dot first, no slash (the core's rule is stricter still).
_PARTNER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: A file name a partner may use: one path component, no dot first (ours: the parts), a plain character set.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: In out/: files in the making, never shown (the service writes ``.<name>.tmp`` and renames; the same suffixes
#: as the poller's IN_PROGRESS_SUFFIXES in services/edi/folders.py).
_UNFINISHED = (".part", ".tmp", ".filepart", ".partial")
#: Our part files in in/: ``.<name>.<12 hex>.part``; any left by a crash are removed at start.
_PART = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.[0-9a-f]{12}\.part")
#: The most bytes one read request returns (clients ask again for the rest).
_MAX_READ_BYTES = 256 * 1024
#: The fields of a setstat that may be asked for (and are not applied); any other field is refused.
_TIME_FIELDS = frozenset({"atime", "atime_ns", "mtime", "mtime_ns", "crtime", "crtime_ns", "ctime", "ctime_ns"})
_WORLD_BITS = stat.S_IRWXO
#: The highest SFTP version served. 4 is the first with FX_FILE_ALREADY_EXISTS (a version 3 client, OpenSSH's, gets
#: FX_FAILURE with the same words); 5 and 6 change how files are opened and add nothing this door needs.
_SFTP_VERSION = 4


@dataclass(frozen=True)
class SftpLimits:
    """How much the SFTP door takes at once; every bound is refused beyond, never queued."""

    #: Open TCP connections, logged in or not; one more is disconnected as it arrives.
    max_connections: int = 64
    #: SFTP sessions (channels) one connection may run at once.
    max_sessions_per_connection: int = 4
    #: Files (uploads and downloads) one SFTP session may hold open at once.
    max_open_files_per_session: int = 16
    #: The largest file a partner may upload, in bytes (an X12 interchange is kilobytes; a big 210 batch, a few MB).
    max_file_bytes: int = 16 * 1024 * 1024
    #: Files a partner may have waiting in its in/ (uploads under way included): with the size limit, a bound on the
    #: disk one partner can fill while the service is not taking its files.
    max_pending_files: int = 1000
    #: Seconds from the TCP connection to a completed login (OpenSSH's LoginGraceTime).
    login_grace_seconds: float = 30.0
    #: Seconds without an SFTP request after which a logged-in connection is closed.
    idle_timeout_seconds: float = 300.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_sessions_per_connection", "max_open_files_per_session",
                     "max_file_bytes", "max_pending_files"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SFTP limit {name} must be at least 1", field=name)
        for name in ("login_grace_seconds", "idle_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"SFTP limit {name} must be above 0 seconds", field=name)


class SftpServer:
    """The SFTP door onto ``<root>/<partner>/in`` and ``out``: ``await start()``, :attr:`port`, ``await close()``."""

    def __init__(self, root: Path, authorized_keys: Mapping[str, Sequence[str]], *, host_key_path: Path,
                 generate_host_key: bool = False, host: str = "127.0.0.1", port: int = 0,
                 limits: SftpLimits | None = None) -> None:
        self._root = Path(root)
        self._host_key_path = Path(host_key_path)
        self._generate_host_key = generate_host_key
        self._host = host
        self._port = port
        self.limits = limits or SftpLimits()
        self._keys = _parse_authorized_keys(authorized_keys)
        self._connections: set[_Connection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None

    @property
    def port(self) -> int:
        """The TCP port bound (the one asked for, or the kernel's pick for 0), once started."""
        if self._acceptor is None:
            raise RuntimeError("the SFTP server is not started")
        return self._acceptor.get_port()

    def partner_home(self, partner: str) -> Path:
        """The folder a partner sees as ``/`` (it holds ``in/`` and ``out/``)."""
        return self._root / partner

    def replace_authorized_keys(self, authorized_keys: Mapping[str, Sequence[str]]) -> None:
        """Takes a new partner -> keys mapping (a reloaded partners file): a connection logged in with a partner or
        key no longer listed is closed (a revoked key stops working now, not at the partner's next login); a new
        partner's folders are made. A mapping refused (ConfigError) changes nothing."""
        keys = _parse_authorized_keys(authorized_keys)
        self._make_folders(keys)
        self._keys = keys
        for connection in list(self._connections):
            if connection.partner is not None and connection.key not in keys.get(connection.partner, ()):
                _log.warning("SFTP connection of partner %s closed: its key is no longer authorized",
                             connection.partner)
                assert connection.conn is not None
                connection.conn.close()

    async def start(self) -> None:
        """Loads (or in development makes) the host key, makes each partner's folders, removes parts a crash left,
        and listens."""
        key = _load_host_key(self._host_key_path, generate=self._generate_host_key)
        self._make_folders(self._keys)
        self._remove_unfinished_uploads()
        self._acceptor = await asyncssh.create_server(
            lambda: _Connection(self), self._host, self._port, server_host_keys=[key],
            # No sftp_factory here: with one, asyncssh opens every session itself and no count per connection
            # could refuse one; _Connection.session_requested opens them instead (SFTP only, see _Session).
            allow_scp=False, agent_forwarding=False, x11_forwarding=False,
            allow_pty=False, password_auth=False, kbdint_auth=False, host_based_auth=False, gss_auth=False,
            gss_kex=False, public_key_auth=True, login_timeout=self.limits.login_grace_seconds,
            # Dead peers are found by the idle timeout; a keepalive would only keep idle ones counted as busy.
            keepalive_interval=0)
        _log.info("SFTP door listening on %s:%d for %d partners", self._host, self.port, len(self._keys))

    async def close(self) -> None:
        """Stops listening and closes every connection; uploads not closed by then are discarded."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        connections = [c.conn for c in self._connections if c.conn is not None]
        for conn in connections:
            conn.close()
        for conn in connections:
            await conn.wait_closed()

    def _make_folders(self, keys: Mapping[str, frozenset[bytes]]) -> None:
        for partner in keys:
            for folder in ("in", "out"):
                (self.partner_home(partner) / folder).mkdir(parents=True, exist_ok=True)

    def _remove_unfinished_uploads(self) -> None:
        # Only before listening: no upload of this door runs yet, so a part is one a crash left (one door per root).
        for partner in self._keys:
            for entry in os.scandir(self.partner_home(partner) / "in"):
                if _PART.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    _log.warning("removed an unfinished upload of partner %s: in/%s", partner, entry.name)

    # -- asyncssh callbacks, through _Connection ----------------------------------------------------------------

    def _admit(self, connection: _Connection) -> bool:
        if len(self._connections) >= self.limits.max_connections:
            SFTP_REFUSED_CONNECTIONS.inc()
            return False
        self._connections.add(connection)
        SFTP_CONNECTIONS.inc()
        return True

    def _release(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)
            SFTP_CONNECTIONS.dec()

    def _open_sftp(self, chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        connection = chan.get_connection().get_owner()
        assert isinstance(connection, _Connection) and connection.partner is not None
        return _JailedSftp(chan, connection, self.partner_home(connection.partner), self.limits)


class _Connection(asyncssh.SSHServer):
    """One TCP connection: admission, public-key login as a partner, the idle timer. Nothing else is allowed."""

    def __init__(self, door: SftpServer) -> None:
        self.door = door
        self.conn: asyncssh.SSHServerConnection | None = None
        self.partner: str | None = None
        #: The public key the partner logged in with (the last one accepted before the login completed).
        self.key: bytes | None = None
        self.sessions = 0
        self._peer = "?"
        self._last_seen = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        peer = conn.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if not self.door._admit(self):
            _log.warning("SFTP connection from %s refused: %d connections open", self._peer,
                         self.door.limits.max_connections)
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections")
            return
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.conn is not None:
            self.door._release(self)

    def begin_auth(self, username: str) -> bool:
        return True  # every user must authenticate, known or not: a refusal must not tell which

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        allowed = self.door._keys.get(username)
        if allowed is not None and key.public_data in allowed:
            self.key = key.public_data
            return True  # asyncssh then checks the signature with it
        outcome = "unknown_partner" if allowed is None else "wrong_key"
        SFTP_LOGINS.labels(outcome).inc()
        # The user name is the client's text: shown quoted and cut; the key only by its type and fingerprint.
        _log.warning("SFTP login refused (%s) for user %r from %s with a %s key %s", outcome, username[:64],
                     self._peer, key.get_algorithm(), key.get_fingerprint())
        return False

    def session_requested(self) -> _Session | bool:
        if self.sessions >= self.door.limits.max_sessions_per_connection:
            _log.warning("partner %s: session refused: %d open on its connection", self.partner, self.sessions)
            return False
        return _Session(self)

    def auth_completed(self) -> None:
        assert self.conn is not None
        self.partner = self.conn.get_extra_info("username")
        SFTP_LOGINS.labels("accepted").inc()
        _log.info("SFTP login of partner %s from %s", self.partner, self._peer)
        self.touch()
        self._arm_idle_timer(self.door.limits.idle_timeout_seconds)

    # Forwarding of every kind: refused (asyncssh's defaults refuse too; stated here so no default can change it).
    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False

    def tun_requested(self, unit: int | None) -> bool:
        return False

    def tap_requested(self, unit: int | None) -> bool:
        return False

    def touch(self) -> None:
        self._last_seen = asyncio.get_running_loop().time()

    def _arm_idle_timer(self, delay: float) -> None:
        self._idle_timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, re-armed for what is left rather than reset at every request (cheaper).
        idle = asyncio.get_running_loop().time() - self._last_seen
        limit = self.door.limits.idle_timeout_seconds
        if idle < limit:
            self._arm_idle_timer(limit - idle)
        elif self.conn is not None:
            _log.info("SFTP connection of partner %s closed: idle for %.0f s", self.partner, idle)
            self.conn.close()


class _Session(SSHServerStreamSession):
    """A session channel that runs the SFTP subsystem and nothing else (no shell, no command, no scp), counted
    against its connection's limit while it is open.

    asyncssh's own stream session (not among its exported names, the one its ``sftp_factory`` option makes) with
    no shell or command factory: it refuses those requests and any subsystem but ``sftp``."""

    def __init__(self, connection: _Connection) -> None:
        super().__init__(None, connection.door._open_sftp, _SFTP_VERSION, False)
        self._connection: _Connection | None = connection
        connection.sessions += 1

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._connection is not None:
            self._connection.sessions -= 1
            self._connection = None


class _Upload:
    """A file being received: its part file's descriptor, its final name, the most bytes written."""

    def __init__(self, folder: Path, name: str, fd: int, part: str) -> None:
        self.folder, self.name, self.fd, self.part = folder, name, fd, part
        self.size = 0
        #: Why it was refused (repeated to every later write and to the close), or None.
        self.refused: str | None = None

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:  # asyncssh's ranges extension
        return os.lseek(self.fd, offset, whence)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.folder / self.part)
        except FileNotFoundError:
            pass


class _Download:
    """A file of out/ being read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:  # asyncssh's ranges extension
        return os.lseek(self.fd, offset, whence)


class _JailedSftp(asyncssh.SFTPServer):
    """One partner's SFTP session over its folder; paths are the partner's virtual ones (see the module)."""

    def __init__(self, chan: asyncssh.SSHServerChannel, connection: _Connection, home: Path,
                 limits: SftpLimits) -> None:
        super().__init__(chan)
        self._connection = connection
        self._home = home
        self._limits = limits
        self._partner = connection.partner
        self._open: set[_Upload | _Download] = set()

    # -- paths ---------------------------------------------------------------------------------------------------

    def _virtual(self, path: bytes) -> str:
        self._connection.touch()
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise asyncssh.SFTPNoSuchFile("no such file") from None
        if "\0" in text:
            raise asyncssh.SFTPNoSuchFile("no such file")
        # Resolved against the virtual root: ".." stops at "/", so nothing above it is ever named.
        return "/" + posixpath.normpath(posixpath.join("/", text)).lstrip("/")

    def _place(self, path: bytes) -> tuple[str, str | None] | None:
        """("", None) for /, ("in"|"out", None) for the folders, ("in"|"out", name) for a file; None elsewhere."""
        parts = [p for p in self._virtual(path).split("/") if p]
        if not parts:
            return "", None
        if parts[0] not in ("in", "out") or len(parts) > 2:
            return None
        if len(parts) == 1:
            return parts[0], None
        return parts[0], parts[1]

    def _file(self, path: bytes, folder: str) -> Path:
        """The local path of a file name the partner may use in ``folder``; SFTPNoSuchFile otherwise."""
        place = self._place(path)
        if place is None or place[0] != folder or place[1] is None or not _visible(folder, place[1]):
            raise asyncssh.SFTPNoSuchFile("no such file")
        return self._home / folder / place[1]

    # -- listing and attributes ----------------------------------------------------------------------------------

    def realpath(self, path: bytes) -> bytes:
        return self._virtual(path).encode()

    def format_user(self, uid: int | None) -> str:
        return self._partner or ""  # never a local account's name

    def format_group(self, gid: int | None) -> str:
        return self._partner or ""

    def _attrs(self, local: Path) -> asyncssh.SFTPAttrs:
        st = os.lstat(local)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise asyncssh.SFTPNoSuchFile("no such file")
        return self._own(st)

    def _own(self, st: os.stat_result) -> asyncssh.SFTPAttrs:
        attrs = asyncssh.SFTPAttrs.from_local(st)
        attrs.uid = attrs.gid = 0  # never a local account's id or name
        attrs.owner = attrs.group = self._partner
        return attrs

    def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        place = self._place(path)
        if place is None:
            raise asyncssh.SFTPNoSuchFile("no such file")
        folder, name = place
        if name is None:
            return self._attrs(self._home / folder)
        return self._attrs(self._file(path, folder))

    lstat = stat  # there are no links to tell apart: a link in the folder is not a file here

    def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        assert isinstance(file_obj, _Upload | _Download)
        return self._own(os.fstat(file_obj.fd))

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        place = self._place(path)
        if place is None or place[1] is not None:
            raise asyncssh.SFTPNoSuchFile("no such directory")
        folder = place[0]
        local = self._home / folder
        names = ["in", "out"] if not folder else sorted(
            e.name for e in os.scandir(local) if _visible(folder, e.name) and e.is_file(follow_symlinks=False))
        for name in (".", "..", *names):
            try:
                attrs = self._attrs(local if name in (".", "..") else local / name)
            except (asyncssh.SFTPNoSuchFile, FileNotFoundError):
                continue  # taken by the poller while listing
            yield asyncssh.SFTPName(name.encode(), attrs=attrs)

    # -- files -----------------------------------------------------------------------------------------------------

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> _Upload | _Download:
        place = self._place(path)
        folder = place[0] if place else None
        if len(self._open) >= self._limits.max_open_files_per_session:
            raise asyncssh.SFTPFailure(f"at most {self._limits.max_open_files_per_session} files open at once")
        if folder == "in" and place and place[1] is not None:
            return self._open_upload(path, pflags)
        if folder == "out" and place and place[1] is not None:
            return self._open_download(path, pflags)
        if pflags & asyncssh.FXF_CREAT:
            raise asyncssh.SFTPPermissionDenied("files are uploaded to in/ only")
        raise asyncssh.SFTPNoSuchFile("no such file")

    def _open_upload(self, path: bytes, pflags: int) -> _Upload:
        if pflags & asyncssh.FXF_READ or not pflags & asyncssh.FXF_WRITE:
            raise asyncssh.SFTPPermissionDenied("in/ is write-only")
        place = self._place(path)
        if place is None or place[1] is None or not _visible("in", place[1]):
            raise asyncssh.SFTPPermissionDenied("a file name is 1 to 128 of A-Z a-z 0-9 . _ -, not starting with a dot")
        final = self._home / "in" / place[1]
        if os.path.lexists(final):
            SFTP_UPLOADS.labels("exists").inc()
            raise asyncssh.SFTPFileAlreadyExists(f"in/{final.name} is still waiting to be processed")
        if not pflags & asyncssh.FXF_CREAT:
            raise asyncssh.SFTPNoSuchFile("no such file")
        with os.scandir(final.parent) as entries:
            pending = sum(1 for _ in entries)
        if pending >= self._limits.max_pending_files:
            SFTP_UPLOADS.labels("too_many").inc()
            raise asyncssh.SFTPFailure(f"in/ holds {pending} files waiting to be processed; try again later")
        part = f".{final.name}.{secrets.token_hex(6)}.part"
        fd = os.open(final.parent / part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        upload = _Upload(final.parent, final.name, fd, part)
        self._open.add(upload)
        return upload

    def _open_download(self, path: bytes, pflags: int) -> _Download:
        if pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC):
            raise asyncssh.SFTPPermissionDenied("out/ is read-only")
        local = self._file(path, "out")
        try:
            fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
                raise asyncssh.SFTPNoSuchFile("no such file") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise asyncssh.SFTPNoSuchFile("no such file")
        download = _Download(fd)
        self._open.add(download)
        return download

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        self._connection.touch()
        if not isinstance(file_obj, _Download):
            raise asyncssh.SFTPPermissionDenied("in/ is write-only")
        data = os.pread(file_obj.fd, min(size, _MAX_READ_BYTES), offset)
        SFTP_BYTES.labels("out").inc(len(data))
        return data

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        self._connection.touch()
        if not isinstance(file_obj, _Upload):
            raise asyncssh.SFTPPermissionDenied("out/ is read-only")
        if file_obj.refused:
            raise asyncssh.SFTPFailure(file_obj.refused)
        if offset + len(data) > self._limits.max_file_bytes:
            file_obj.refused = f"refused: a file may hold at most {self._limits.max_file_bytes} bytes"
            file_obj.discard()
            SFTP_UPLOADS.labels("too_large").inc()
            _log.warning("partner %s: upload of in/%s refused: over %d bytes", self._partner, file_obj.name,
                         self._limits.max_file_bytes)
            raise asyncssh.SFTPFailure(file_obj.refused)
        written = os.pwrite(file_obj.fd, data, offset)
        file_obj.size = max(file_obj.size, offset + written)
        SFTP_BYTES.labels("in").inc(written)
        return written

    async def close(self, file_obj: object) -> None:
        assert isinstance(file_obj, _Upload | _Download)
        self._open.discard(file_obj)
        if isinstance(file_obj, _Download):
            os.close(file_obj.fd)
            return
        if file_obj.refused:
            raise asyncssh.SFTPFailure(file_obj.refused)
        if self._session_ending():
            file_obj.discard()
            SFTP_UPLOADS.labels("aborted").inc()
            _log.warning("partner %s: upload of in/%s cut off after %d bytes: discarded", self._partner,
                         file_obj.name, file_obj.size)
            return
        await self._commit(file_obj)

    async def _commit(self, upload: _Upload) -> None:
        # In a thread, and whole there: a cancelled close cannot leave the part behind or race its descriptor.
        if not await asyncio.to_thread(_put_in_place, upload):
            SFTP_UPLOADS.labels("exists").inc()
            raise asyncssh.SFTPFileAlreadyExists(f"in/{upload.name} is still waiting to be processed")
        SFTP_UPLOADS.labels("committed").inc()
        _log.info("partner %s: received in/%s (%d bytes)", self._partner, upload.name, upload.size)

    def _session_ending(self) -> bool:
        """Whether the session is ending (connection lost, channel closed, or the client's EOF on it).

        asyncssh closes the files a session left open with the same ``close`` call as a client's CLOSE request; only
        the channel's state tells them apart: closing (public) after a lost connection or a channel close, and its
        receive side no longer open after an EOF (no public accessor: read here, pinned by the test of an upload
        cut off). Should asyncssh rename it, every upload counts as cut off: nothing half is ever committed, and
        the tests fail."""
        return self.channel.is_closing() or getattr(self.channel, "_recv_state", "closed") != "open"

    def remove(self, path: bytes) -> None:
        if (self._place(path) or ("",))[0] != "out":
            raise asyncssh.SFTPPermissionDenied("only files fetched from out/ may be removed")
        local = self._file(path, "out")
        if not stat.S_ISREG(os.lstat(local).st_mode):
            raise asyncssh.SFTPNoSuchFile("no such file")
        os.unlink(local)
        _log.info("partner %s: removed out/%s", self._partner, local.name)

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        if (self._place(oldpath) or ("",))[0] != "in" or (self._place(newpath) or ("",))[0] != "in":
            raise asyncssh.SFTPPermissionDenied("only a pending file of in/ may be renamed, within in/")
        old, new = self._file(oldpath, "in"), self._file(newpath, "in")
        if not stat.S_ISREG(os.lstat(old).st_mode):
            raise asyncssh.SFTPNoSuchFile("no such file")
        try:
            os.link(old, new)  # fails if ``new`` exists: a pending file is never overwritten
        except FileExistsError:
            raise asyncssh.SFTPFileAlreadyExists(f"in/{new.name} is still waiting to be processed") from None
        os.unlink(old)
        _fsync_folder(old.parent)

    posix_rename = rename  # the same: no overwrite

    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self.stat(path)  # exists and is the partner's
        _only_times(attrs)

    lsetstat = setstat

    def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        _only_times(attrs)

    def fsync(self, file_obj: object) -> None:
        assert isinstance(file_obj, _Upload | _Download)
        if isinstance(file_obj, _Upload) and file_obj.fd >= 0:
            os.fsync(file_obj.fd)

    def exit(self) -> None:
        for file_obj in list(self._open):  # asyncssh closed them already; this is in case it did not
            if isinstance(file_obj, _Upload):
                file_obj.discard()
            else:
                os.close(file_obj.fd)
        self._open.clear()

    def _refuse(self, *_args: object) -> None:
        raise asyncssh.SFTPPermissionDenied("not allowed on this server")

    mkdir = rmdir = symlink = link = readlink = statvfs = fstatvfs = _refuse

    def open56(self, *_args: object) -> None:
        raise asyncssh.SFTPOpUnsupported("SFTP version 3 only")


def _visible(folder: str, name: str) -> bool:
    if not _FILE_NAME.fullmatch(name):
        return False
    return not (folder == "out" and name.endswith(_UNFINISHED))


def _only_times(attrs: asyncssh.SFTPAttrs) -> None:
    changed = [k for k, default in asyncssh.SFTPAttrs.__slots__.items()
               if k not in _TIME_FIELDS and getattr(attrs, k) != default]
    if changed:
        raise asyncssh.SFTPPermissionDenied(f"attributes may not be changed here: {', '.join(changed)}")


def _put_in_place(upload: _Upload) -> bool:
    """Gives a received part its final name; False when the name is taken. The part is gone afterwards either way.

    fsync first (durable before the poller may take it and the sender delete its copy), then a hard link, which
    fails when the name exists where a rename would replace it, then the folder's fsync (the name is durable)."""
    try:
        os.fsync(upload.fd)
        os.link(upload.folder / upload.part, upload.folder / upload.name)
    except FileExistsError:
        return False
    finally:
        upload.discard()
    _fsync_folder(upload.folder)
    return True


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_authorized_keys(mapping: Mapping[str, Sequence[str]]) -> dict[str, frozenset[bytes]]:
    keys: dict[str, frozenset[bytes]] = {}
    for partner, lines in mapping.items():
        if not _PARTNER_ID.fullmatch(partner):
            raise ConfigError(f"SFTP partner id {partner[:64]!r} is not a folder name (letters, digits, - and _)",
                              field="partner")
        parsed = set()
        for n, line in enumerate(lines):
            try:
                parsed.add(asyncssh.import_public_key(line.strip()).public_data)
            except (asyncssh.KeyImportError, ValueError):
                # Named by position, not echoed: the line is the carrier's data and may be anything.
                raise ConfigError(f"SFTP partner {partner}: authorized key {n} is not an OpenSSH public key line",
                                  field="partner") from None
        keys[partner] = frozenset(parsed)
    return keys


def _load_host_key(path: Path, *, generate: bool) -> asyncssh.SSHKey:
    if not path.exists():
        if not generate:
            raise ConfigError(f"SFTP host key {path} does not exist", field="host_key")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.export_private_key())
        _log.warning("SFTP host key generated at %s (fingerprint %s): for development only", path,
                     key.get_fingerprint())
        return key
    mode = path.stat().st_mode
    if mode & _WORLD_BITS:
        raise ConfigError(f"SFTP host key {path} is open to every user (mode {stat.S_IMODE(mode):04o}); chmod 600 it",
                          field="host_key")
    try:
        return asyncssh.read_private_key(path)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ConfigError(f"SFTP host key {path} cannot be read: {exc}", field="host_key") from None
