"""Start, watch and stop the whole mesh on one machine: the store and every service as child processes.

This is what ``haulmesh run`` (``make run``) and the integration tests use. In production each service is
its own pod and Kubernetes supervises it; here a small asyncio supervisor is enough: start in order,
wait for every health check to say SERVING, and (:meth:`Mesh.supervise`, as ``haulmesh run`` does) restart a
service that dies with capped, jittered backoff, as a kubelet would, instead of stopping the others; only a
configuration error (exit status 2, which every restart would repeat) stops the mesh. Ctrl-C stops all.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._config import (
    DEFAULT_GATEWAY_DEVICE_PORT,
    DEFAULT_GATEWAY_HTTP_PORT,
    DEFAULT_PORTS,
    MESH_SERVICES,
    OPTIONAL_PORTS,
    TlsConfig,
)
from ._retry import Backoff
from ._store import EmbeddedStore, StoreInfo, free_port, redact_url
from ._tls import CertificateFiles, client_credentials

__all__ = ["Mesh", "check_health"]

SERVING = health_pb2.HealthCheckResponse.SERVING
#: Restart backoff of a crashed service: first ceiling and cap (seconds); a service that ran this long
#: before dying starts over at the first ceiling (it was not failing at start-up).
RESTART_BACKOFF_START_SECONDS, RESTART_BACKOFF_MAX_SECONDS, HEALTHY_RUN_SECONDS = 0.5, 30.0, 30.0
#: The exit status of a configuration error (run_service): restarting would fail the same way.
CONFIG_ERROR_EXIT = 2
#: Consecutive runs shorter than HEALTHY_RUN_SECONDS after which a service is given up on like a configuration
#: error: one that dies at import (exit 1) every time would otherwise be restarted forever.
MAX_SHORT_RUNS = 5
#: An optional service the mesh starts as soon as its configuration names this variable (the EDI service, once a
#: partners file is given), besides those it is asked for.
_OPTIONAL_WHEN_SET = {"edi": "HAULMESH_EDI_PARTNERS_FILE"}
#: The EDI service's SFTP door on a local mesh with the default ports (the Helm chart's container port too);
#: a mesh on free ports (tests, demos) takes a free one. HAULMESH_EDI_SFTP_PORT, given, wins (0: no door).
DEFAULT_EDI_SFTP_PORT = 2222
_EDI_SFTP_PORT = "HAULMESH_EDI_SFTP_PORT"


async def check_health(address: str, credentials: grpc.ChannelCredentials, *, timeout_seconds: float = 2.0,
                       service: str = "") -> str:
    """The health status name of the server at ``address`` over mTLS, or why it could not be asked."""
    async with grpc.aio.secure_channel(address, credentials) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@dataclass
class _Child:
    name: str
    address: str
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    #: How many times the supervisor restarted it.
    restarts: int = 0
    #: Why the supervisor gave it up (set when it did).
    gave_up_reason: str = ""


@dataclass
class Mesh:
    """The mesh's processes for one state folder.

    ``ports`` overrides the default gRPC port of any service (tests pass free ports); ``redis_url`` uses an
    external store instead of starting the embedded one.
    """

    state_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    http_port: int = DEFAULT_GATEWAY_HTTP_PORT
    #: The gateway's HTTPS port for trucks. None: 8443 beside the default HTTP port, else a free port (a mesh put
    #: on free ports, as tests and demos do, must not collide on a fixed one).
    device_port: int | None = None
    redis_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    #: ``HAULMESH_METRICS_PORT`` per service (each child needs its own port; ``extra_env`` is shared).
    metrics_ports: dict[str, int] = field(default_factory=dict)
    grace_period_seconds: float = 10.0
    #: Optional services (_config.OPTIONAL_PORTS) to start after the others: ``haulmesh run`` asks for all of them;
    #: a test mesh starts one only when asked, or when ``extra_env`` configures it (see _OPTIONAL_WHEN_SET), so the
    #: many tests that do not use it pay no start-up time for it.
    optional: tuple[str, ...] = ()
    #: The supervisor's restart backoff (first ceiling, seconds) and how many short runs in a row it gives up after.
    restart_backoff_start_seconds: float = RESTART_BACKOFF_START_SECONDS
    max_short_runs: int = MAX_SHORT_RUNS
    #: The EDI service's SFTP door port when the mesh starts it (set from the rules of DEFAULT_EDI_SFTP_PORT).
    edi_sftp_port: int = 0
    children: dict[str, _Child] = field(default_factory=dict)
    store: StoreInfo | None = None
    _started_store: bool = False
    _redis_url: str = ""
    _stopping: bool = False

    def __post_init__(self) -> None:
        if self.device_port is None:
            self.device_port = (DEFAULT_GATEWAY_DEVICE_PORT if self.http_port == DEFAULT_GATEWAY_HTTP_PORT
                                else free_port())
        self.ports = dict(self.ports)  # the caller's dict is not ours to fill in
        wanted = {*self.optional, *(name for name, variable in _OPTIONAL_WHEN_SET.items()
                                    if self.extra_env.get(variable))}
        unknown = wanted - OPTIONAL_PORTS.keys()
        if unknown:
            raise ValueError(f"no optional service {', '.join(sorted(unknown))}; expected {', '.join(OPTIONAL_PORTS)}")
        self.optional = tuple(name for name in OPTIONAL_PORTS if name in wanted)
        for name in self.optional:  # like the device port: its default beside the default ports, else a free one
            if name not in self.ports:
                self.ports[name] = OPTIONAL_PORTS[name] if self.http_port == DEFAULT_GATEWAY_HTTP_PORT else free_port()
        if "edi" in self.optional:
            given = self.extra_env.get(_EDI_SFTP_PORT, os.environ.get(_EDI_SFTP_PORT, "")).strip()
            # A malformed value is the service's to refuse (exit status 2, naming the variable): passed as given.
            self.edi_sftp_port = int(given) if given.isdigit() else 0 if given else (
                DEFAULT_EDI_SFTP_PORT if self.http_port == DEFAULT_GATEWAY_HTTP_PORT else free_port())
            if not given:
                self.extra_env = {**self.extra_env, _EDI_SFTP_PORT: str(self.edi_sftp_port)}

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports.get(name) or {**DEFAULT_PORTS, **OPTIONAL_PORTS}[name]}"

    @property
    def cert_dir(self) -> Path:
        return Path(self.extra_env.get("HAULMESH_CERT_DIR") or self.state_dir / "certs")

    def _env(self, name: str, redis_url: str) -> dict[str, str]:
        # The mesh sets every service's addresses and ports itself; of the caller's HAULMESH_* settings only the
        # tracing ones pass through (so `HAULMESH_TRACES_EXPORTER=console make run` traces the whole mesh), and the
        # EDI service's own (`HAULMESH_EDI_PARTNERS_FILE=... make run`).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("HAULMESH_") or k.startswith(("HAULMESH_TRACES_", "HAULMESH_EDI_"))}
        env.update({
            "HAULMESH_STATE_DIR": str(self.state_dir),
            "HAULMESH_CERT_DIR": str(self.cert_dir),
            "HAULMESH_PORT": self.address(name).rsplit(":", 1)[1],
            "HAULMESH_HTTP_PORT": str(self.http_port),
            "HAULMESH_GATEWAY_DEVICE_PORT": str(self.device_port),
            "HAULMESH_GRACE_PERIOD_SECONDS": str(self.grace_period_seconds),
            "REDIS_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
        })
        # A mesh of this class is a local one (haulmesh run, the demo, tests): its gateway serves the dev issuer's
        # token endpoint for /docs (services/gateway/rest/docs_ui.py), unless it is told to trust another issuer
        # or to listen beyond loopback, where the gateway would refuse the endpoint.
        if not {"HAULMESH_JWKS_URL", "HAULMESH_JWKS_FILE", "HAULMESH_LISTEN_HOST"} & self.extra_env.keys():
            env["HAULMESH_DEV_TOKEN_ENDPOINT"] = "1"  # noqa: S105 - a flag, not a secret
            # and the console's dev login (services/gateway/console/app.py), unless a real identity provider is set
            if "HAULMESH_OIDC_ISSUER" not in self.extra_env:
                env["HAULMESH_CONSOLE_DEV_LOGIN"] = "1"
        env.update({f"HAULMESH_{peer.upper()}_ADDR": self.address(peer) for peer in MESH_SERVICES})
        env.update(self.extra_env)
        if name in self.metrics_ports:
            env["HAULMESH_METRICS_PORT"] = str(self.metrics_ports[name])
        return env

    async def start(self, *, timeout_seconds: float = 60.0) -> float:
        """Start the store and every service; returns seconds until all were SERVING."""
        began = time.monotonic()
        if self.redis_url:
            redis_url = self.redis_url
        else:
            store = EmbeddedStore(self.state_dir / "store")
            self._started_store = store.info() is None
            self.store = await asyncio.to_thread(store.ensure_running)
            redis_url = self.store.url
        self._redis_url = redis_url
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in (*MESH_SERVICES, *self.optional):
            child = _Child(name, self.address(name), logs / f"{name}.log")
            await self._spawn(child)
            self.children[name] = child
        await self.wait_serving(timeout_seconds=timeout_seconds - (time.monotonic() - began))
        return time.monotonic() - began

    async def _spawn(self, child: _Child) -> None:
        with open(child.log_path, "ab") as log:  # noqa: ASYNC230 - a local file, opened once per start
            child.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"services.{child.name}",
                env=self._env(child.name, self._service_redis_url(child.name)), stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log,
            )

    def _service_redis_url(self, name: str) -> str:
        """The store URL of service ``name``: on the embedded store its own store user (least privilege:
        _store_acl.py), read at every spawn so that a rotated password is picked up by a restart; else the
        external store's URL as given."""
        if self.redis_url:
            return self._redis_url
        return EmbeddedStore(self.state_dir / "store").user_url(name)

    async def supervise(self, stop: asyncio.Event) -> _Child | None:
        """Restart any service that exits, with backoff, until ``stop`` is set (then None); returns the
        service given up on instead (its ``gave_up_reason`` says why): one that exited with a configuration error
        (status 2), which a restart cannot mend, or that died :attr:`max_short_runs` times in a row each within
        HEALTHY_RUN_SECONDS of its start (it cannot start: exit 1 at import, a missing dependency)."""
        gave_up: asyncio.Future[_Child] = asyncio.get_running_loop().create_future()
        keepers = [asyncio.ensure_future(self._keep(child, stop, gave_up)) for child in self.children.values()]
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({stopping, gave_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*keepers, stopping):
                task.cancel()
            await asyncio.gather(*keepers, stopping, return_exceptions=True)
        return gave_up.result() if gave_up.done() else None

    async def _keep(self, child: _Child, stop: asyncio.Event, gave_up: asyncio.Future[_Child]) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.restart_backoff_start_seconds, max(RESTART_BACKOFF_MAX_SECONDS,
                                                                  self.restart_backoff_start_seconds))
        started = loop.time()
        short_runs = 0
        while child.process is not None:
            code = await child.process.wait()
            if stop.is_set() or self._stopping:
                return
            ran_seconds = loop.time() - started
            if code == CONFIG_ERROR_EXIT:
                self._give_up(child, gave_up, f"exited with a configuration error (status {code})")
                return
            if ran_seconds >= HEALTHY_RUN_SECONDS:
                backoff.reset()
                short_runs = 0
            else:
                short_runs += 1
                if short_runs >= self.max_short_runs:
                    self._give_up(child, gave_up, f"exited {short_runs} times in a row within "
                                  f"{HEALTHY_RUN_SECONDS:g} s of starting (last status {code}): it cannot start")
                    return
            delay = backoff.next()
            print(f"haulmesh: {child.name} exited with {code}; restarting in {delay:.1f}s (see {child.log_path})",
                  file=sys.stderr, flush=True)
            while True:  # a spawn that fails (no file descriptors, no memory) is retried, never kills the keeper
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
                if self._stopping:
                    return
                try:
                    await self._spawn(child)
                    break
                except Exception as exc:
                    delay = backoff.next()
                    print(f"haulmesh: {child.name} could not be started ({type(exc).__name__}: {exc}); "
                          f"retrying in {delay:.1f}s", file=sys.stderr, flush=True)
            child.restarts += 1
            started = loop.time()

    @staticmethod
    def _give_up(child: _Child, gave_up: asyncio.Future[_Child], reason: str) -> None:
        child.gave_up_reason = reason
        print(f"haulmesh: giving up on {child.name}: it {reason} (see {child.log_path})", file=sys.stderr, flush=True)
        if not gave_up.done():
            gave_up.set_result(child)

    def operator_credentials(self) -> grpc.ChannelCredentials:
        return client_credentials(CertificateFiles(TlsConfig(
            self.cert_dir / "ca.pem", self.cert_dir / "operator-cli.pem", self.cert_dir / "operator-cli-key.pem")))

    async def status(self) -> dict[str, str]:
        credentials = self.operator_credentials()
        names = list(self.children) or [*MESH_SERVICES, *self.optional]
        results = await asyncio.gather(*(check_health(self.address(n), credentials) for n in names))
        return dict(zip(names, results, strict=True))

    async def wait_serving(self, *, timeout_seconds: float) -> None:
        deadline = time.monotonic() + max(timeout_seconds, 1.0)
        while True:
            for child in self.children.values():
                if child.process is not None and child.process.returncode is not None:
                    raise RuntimeError(f"{child.name} exited with {child.process.returncode} at start-up; "
                                       f"last lines of {child.log_path}:\n{_tail(child.log_path)}")
            statuses = await self.status()
            if all(s == "SERVING" for s in statuses.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"mesh not SERVING after {timeout_seconds:.0f}s: {statuses}")
            await asyncio.sleep(0.2)

    async def wait_for_exit(self) -> _Child:
        """Block until any child exits; returns it."""
        waits = {asyncio.ensure_future(c.process.wait()): c for c in self.children.values() if c.process}
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            if task not in done:
                task.cancel()
        return waits[next(iter(done))]

    async def stop(self, *, stop_store: bool | None = None) -> None:
        """SIGTERM every service, wait out their grace, then stop the store if this mesh started it."""
        self._stopping = True
        for child in self.children.values():
            if child.process is not None and child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)
        for child in self.children.values():
            if child.process is None:
                continue
            try:
                await asyncio.wait_for(child.process.wait(), self.grace_period_seconds + 5)
            except TimeoutError:
                child.process.kill()
                await child.process.wait()
        # An external store (redis_url) is never the mesh's to stop.
        if self.redis_url is None and (stop_store if stop_store is not None else self._started_store):
            await asyncio.to_thread(EmbeddedStore(self.state_dir / "store").stop)

    def describe(self) -> list[tuple[str, str]]:
        """(what, where) rows for the terminal."""
        rows = [(name, f"grpcs://{self.address(name)}") for name in (*MESH_SERVICES, *self.optional)]
        rows += [(f"{name} metrics", f"http://127.0.0.1:{port}/metrics") for name, port in self.metrics_ports.items()]
        # The EDI service opens no door without a partner (its log says so): listed only with a partners file.
        partners = _OPTIONAL_WHEN_SET["edi"]
        if self.edi_sftp_port and (self.extra_env.get(partners) or os.environ.get(partners)):
            rows.append(("edi SFTP door (trading partners)", f"sftp://127.0.0.1:{self.edi_sftp_port}"))
        rows.append(("gateway (HTTP)", f"http://127.0.0.1:{self.http_port}"))
        rows.append(("gateway (HTTPS for trucks, mTLS)", f"https://127.0.0.1:{self.device_port}"))
        if self.store is not None:
            rows.append(("store (embedded Valkey)", self.store.display_url))
        elif self.redis_url:
            rows.append(("store", redact_url(self.redis_url)))
        return rows


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
