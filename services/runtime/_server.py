"""The grpc.aio server every Haulmesh service stands on.

Start-up: typed config from the environment, mTLS with reloadable certificates, the authorization
interceptor (default deny), the library's health service and reflection, a checked connection to the
store. Two store pools per process: the commit path's (:attr:`Service.redis`) and, for blocking reads (watches'
XREAD BLOCK), a bounded one of their own (:meth:`Service.blocking_redis`), so a burst of watches can never take
the connections commits, consumers and sweeps need.

Companions (consumers, periodic loops, listeners) survive transient faults: one that fails with a transient
store or peer error (see _retry.py) is restarted with capped, jittered backoff, and health says NOT_SERVING
while any part is stuck on the store, SERVING again once it has recovered (a peer's outage is the peer's
health, not ours: no cascade); only a programming error ends the process.

Shutdown on SIGTERM/SIGINT: health turns NOT_SERVING first, then the server stops accepting calls
and gives those in flight ``grace_period_seconds`` to finish.

Two health answers for two questions: the server's ("") and each service's name say whether the process can serve
now (NOT_SERVING while it waits for its store or a part is stuck on it: readiness, ``make status``);
:data:`LIVENESS_SERVICE` says only that the process is alive and answering (SERVING from before the store wait until
shutdown). A kubelet's liveness probe asks the latter: a store outage must take pods out of rotation, never restart
them all (a restart cannot mend the store, and it would end every truck's stream and the EDI door with it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import redis.asyncio
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ._audit import AuditLog
from ._authz import AuthorizationInterceptor, Policy
from ._client import Channels
from ._cluster import wait_all_durable
from ._config import ServiceConfig
from ._errors import ConfigError, HaulmeshError, Unavailable
from ._events import EventConsumer, Handler
from ._faults import FaultInjector
from ._logging import configure_logging
from ._metrics import MetricsEndpoint
from ._periodic import Periodic, Tick
from ._retry import Backoff, is_peer_fault, is_transient
from ._revocation import RevocationList
from ._rpcmetrics import RpcMetricsInterceptor
from ._store import connect_async, redact_url, resolve_redis_url
from ._tls import CertificateFiles, reloading_server_credentials
from ._tracing import configure_tracing, server_interceptors, shutdown_tracing
from ._workers import supervise_workers
from .audit_anchor import AuditSigner, CheckpointWriter
from .objectstore import ObjectStoreError, open_object_store

__all__ = ["LIVENESS_SERVICE", "Service", "run_service"]

_log = logging.getLogger("haulmesh.server")
#: The health name a liveness probe asks (see the module docstring): alive and answering, whatever the store does.
LIVENESS_SERVICE = "haulmesh.liveness"
StubT = TypeVar("StubT")

#: How long the keeper waits for the store to answer its check that a restarted companion which reports no
#: progress of its own (a listener) has its store back; a hung store never answers, so the part stays stuck.
COMPANION_STORE_CHECK_SECONDS = 2.0
#: Backoff of a companion's restarts after transient failures: first ceiling, and cap (seconds).
COMPANION_BACKOFF_START_SECONDS, COMPANION_BACKOFF_MAX_SECONDS = 0.2, 10.0
#: Start-up's wait for the store: backoff between PINGs (first ceiling, cap), each PING's own timeout, and how often
#: a store still unreachable is logged again. No deadline: a store outage is not a configuration error.
STORE_WAIT_BACKOFF_START_SECONDS, STORE_WAIT_BACKOFF_MAX_SECONDS = 0.25, 5.0
STORE_WAIT_PING_TIMEOUT_SECONDS = 5.0
STORE_WAIT_LOG_EVERY_SECONDS = 30.0


def _keepalive_options(config: ServiceConfig) -> list[tuple[str, int]]:
    """The server half of the keepalive policy both ends agree (docs/decisions.md, "Keepalive, both ends")."""
    return [
        # Ping every connection after keepalive_time of silence, idle ones included, and close it when the ping
        # is not answered within keepalive_timeout: a blackholed truck's stream ends within their sum.
        ("grpc.keepalive_time_ms", int(config.keepalive_time_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
        # Any unanswered ping ends the connection after the same timeout: the keepalive ping waits behind one
        # already in flight, whose own timeout would otherwise be the library's minute.
        ("grpc.http2.ping_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # A quiet stream (a parked truck: no frames, so no acks) sends no data; no cap on pings without data, so
        # the server's keepalive never falls silent on it.
        ("grpc.http2.max_pings_without_data", 0),
        # How often a client may ping while the server sends no data (gRPC's default is 5 minutes: the truck's
        # 10 s pings were told GOAWAY too_many_pings on a quiet stream). Two faster pings, and the client is told
        # GOAWAY too_many_pings (gRPC's ping abuse policy, its default of 2 strikes made explicit).
        ("grpc.http2.min_ping_interval_without_data_ms", int(config.keepalive_min_ping_interval_seconds * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
    ]


#: What gRPC's HTTP/2 transport may take in per stream ahead of the application's reads (the stream's receive
#: window, gRPC's "lookahead"): fixed, because BDP probing would otherwise grow it with the link's measured
#: bandwidth-delay product, so a stream whose reads the application paused (telemetry's flow control, a slow
#: watch consumer) could hold megabytes in the transport. 64 KiB: a truck's batch of 500 frames (≈ 130 KB) still
#: passes, as gRPC widens the window for a message a read is waiting on; the cost is throughput on long fat links
#: (64 KiB per round trip: ≈ 640 KB/s at 100 ms, ≈ 2,400 frames/s for one truck's replay over cellular).
#: Measured by tests/runtime/test_transport_buffers.py; docs/telemetry.md, "Flow control".
STREAM_WINDOW_BYTES = 64 * 1024


def _transport_options() -> list[tuple[str, int]]:
    """The server's HTTP/2 buffering per stream, bounded (see :data:`STREAM_WINDOW_BYTES`)."""
    return [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES)]


class Service:
    """One service process: its gRPC server, its store client, and its channels to other services."""

    def __init__(self, config: ServiceConfig, policy: Policy) -> None:
        self.config = config
        self._policy = policy
        self._files = CertificateFiles(config.tls)
        # Without REDIS_URL, the embedded store logged in as this service's own store user (_store_acl.py).
        self._redis_url = resolve_redis_url(config.redis_url, config.state_dir, user=config.service_name)
        self._redis: redis.asyncio.Redis | None = None
        self._blocking_redis: redis.asyncio.Redis | None = None
        #: Parts (companions, periodic loops) that cannot make progress now: health is NOT_SERVING while any is.
        self._stuck: set[str] = set()
        #: This process's audit chain (every successful mutating call), and the loop that exports its signed head
        #: off the store (None without a signing key: docs/security.md, "Audit anchor").
        self.audit = AuditLog(self.redis, config.service_name)
        self._checkpoints = self._checkpoint_writer()
        #: The certificate deny-list, refreshed every ``revocation_refresh_seconds`` and checked on every call and
        #: stream message (docs/security.md, "Revocation"); the gateway's device door checks it too.
        self.revocations = RevocationList(self.redis)
        self.server = grpc.aio.server(
            # Tracing outermost (its span covers everything), then RPC metrics: they then count the
            # authorization check's refusals too.
            interceptors=[*server_interceptors(), RpcMetricsInterceptor(),
                          AuthorizationInterceptor(policy, self.audit, durable=self.durable,
                                                   revocations=self.revocations),
                          # Tests only (HAULMESH_TEST_FAULTS_FILE), innermost: it sees the authorized caller.
                          *([FaultInjector(config.test_faults_file)] if config.test_faults_file else [])],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                # Off unless this process is one of several workers on the port: then the kernel spreads the
                # connections across them. Off, a second process on a taken port fails loudly instead.
                ("grpc.so_reuseport", 1 if config.worker_index is not None else 0),
                *_keepalive_options(config),
                *_transport_options(),
            ],
        )
        self.health = health.aio.HealthServicer()
        #: The plain-text probe listener (HAULMESH_HEALTH_PORT), health only; None when off.
        self._probe_server: grpc.aio.Server | None = None
        self.channels = Channels(self._files, call_timeout_seconds=config.call_timeout_seconds,
                                 max_message_bytes=config.max_message_bytes, max_attempts=config.call_max_attempts)
        self._services: dict[str, ServiceDescriptor] = {}
        self.bound_port = 0
        #: The Prometheus endpoint (off unless HAULMESH_METRICS_PORT is set), on the gRPC server's host.
        # A registry is per process: each worker serves its own, on the next port up.
        metrics_port = config.metrics_port + (config.worker_index or 0) if config.metrics_port else 0
        self.metrics = MetricsEndpoint(config.listen_host, metrics_port)
        self._stop_requested = asyncio.Event()
        self._stopping = asyncio.Event()
        #: (run, stop, part name, whether the companion reports its own progress) per companion.
        self._companions: list[tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]], str, bool]] = []
        #: Each kept companion's restart backoff, reset only by the companion's own progress signal.
        self._backoffs: dict[str, Backoff] = {}
        self._companion_tasks: list[asyncio.Task[None]] = []
        #: Process exit status: non-zero when a companion task failed.
        self.exit_code = 0
        self.add_periodic("revocations", self.revocations.tick,
                          interval_seconds=config.revocation_refresh_seconds, max_backoff_seconds=5.0)
        if self._checkpoints is not None:
            self.add_periodic("audit-checkpoints", self._checkpoints.tick,
                              interval_seconds=self.config.audit_checkpoint_interval_seconds)

    def _checkpoint_writer(self) -> CheckpointWriter | None:
        if self.config.audit_signing_key_file is None:
            return None
        signer = AuditSigner.from_file(self.config.audit_signing_key_file)
        url = self.config.audit_checkpoint_url
        return CheckpointWriter(self.audit, signer, lambda: open_object_store(url))

    @property
    def redis(self) -> redis.asyncio.Redis:
        """The store client (connections are opened lazily and pooled)."""
        if self._redis is None:
            self._redis = connect_async(self._redis_url)
        return self._redis

    def blocking_redis(self, max_connections: int) -> redis.asyncio.Redis:
        """The store client for blocking reads (XREAD BLOCK of watches), with its own pool of at most
        ``max_connections``: never the commit path's. Created on first use; the same one after."""
        if self._blocking_redis is None:
            self._blocking_redis = connect_async(self._redis_url, max_connections=max_connections)
        return self._blocking_redis

    async def durable(self) -> None:
        """Return once every write the store has applied (on every primary, on a cluster) is fsync'd to its
        AOF; UNAVAILABLE STORE_NOT_DURABLE when that is not confirmed within ``durable_timeout_seconds``.

        Awaited before a change is acknowledged outside the mesh. The change itself is made: the caller
        retries with the same request_id and gets it, exactly once.
        """
        timeout_seconds = self.config.durable_timeout_seconds
        try:
            confirmed = await asyncio.wait_for(wait_all_durable(self.redis, int(timeout_seconds * 1000),
                                                                replicas=self.config.store_ack_replicas,
                                                                replica_disk=self.config.store_ack_replica_disk),
                                               timeout_seconds + 2)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"the change was made, but the store could not confirm it is on disk ({exc}); "
                              "retry with the same request_id", reason="STORE_NOT_DURABLE") from None
        if not confirmed:
            raise Unavailable(f"the change was made, but the store did not confirm it is on disk within "
                              f"{timeout_seconds:g} s; retry with the same request_id", reason="STORE_NOT_DURABLE")

    def add(self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any,
            descriptor: ServiceDescriptor) -> None:
        """Register a servicer; ``descriptor`` names it for health, reflection and the policy check."""
        add_to_server(servicer, self.server)
        self._services[descriptor.full_name] = descriptor

    def add_companion(self, run: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]], *,
                      reports_progress: bool = False) -> Callable[[], None]:
        """Something that runs beside the gRPC server (the gateway's HTTP listener, a consumer loop).

        ``run`` starts after the server. A transient failure in it (a store or peer fault) restarts it with
        backoff; a store fault also turns health NOT_SERVING until it has recovered; any other failure stops the
        process. ``stop`` is awaited after health has turned NOT_SERVING and before the gRPC server stops.

        Recovery is a real progress signal, never run time alone (a companion restarted on a hung store runs
        without failing, and makes no progress): the returned ``made_progress()`` is to be called by the companion
        after each successful unit of work (a pass that reached the store, an event handled); it clears the
        part's stuck mark and resets its restart backoff. A companion that has no such unit (``reports_progress``
        False, e.g. a listener) is cleared once the store answers a PING after its restart, and its backoff is
        never reset by time.
        """
        part = f"{getattr(run, '__qualname__', 'companion')}#{len(self._companions)}"
        self._companions.append((run, stop, part, reports_progress))
        return lambda: self._made_progress(part)

    def _made_progress(self, part: str) -> None:
        backoff = self._backoffs.get(part)
        if backoff is not None and backoff.failures:
            backoff.reset()
        if part in self._stuck:
            self.part_progress(part, True)

    def add_consumer(self, group: str, handler: Handler, *, types: set[str] | None = None,
                     **options: Any) -> EventConsumer:
        """Consume every event stream in consumer ``group`` while the service runs (see EventConsumer); entries a
        dead consumer left pending are claimed after ``HAULMESH_EVENTS_CLAIM_IDLE_SECONDS`` unless ``options``
        name a ``claim_idle_ms`` of the group's own."""
        options.setdefault("progress", self.part_progress)  # a handler stuck on a store fault: NOT_SERVING
        options.setdefault("claim_idle_ms", round(self.config.events_claim_idle_seconds * 1000))
        consumer = EventConsumer(self.redis, group=group, handler=handler, types=types, **options)
        consumer.on_progress = self.add_companion(consumer.run, consumer.stop, reports_progress=True)
        return consumer

    def add_periodic(self, name: str, tick: Tick, *, interval_seconds: float,
                     max_backoff_seconds: float = 30.0) -> Periodic:
        """Run ``tick`` every ``interval_seconds`` while the service runs (see Periodic); a pass failed by a
        transient fault is logged and retried with backoff; a programming error ends the process (exit 1)."""
        loop = Periodic(name, tick, interval_seconds=interval_seconds, max_backoff_seconds=max_backoff_seconds,
                        progress=self.part_progress)
        self.add_companion(loop.run, loop.stop)
        return loop

    def stub(self, stub_class: Callable[[grpc.aio.Channel], StubT], peer: str) -> StubT:
        """A client stub for the mesh service ``peer`` (current certificate, default deadline)."""
        return stub_class(self.channels.channel(self.config.peer_addresses[peer]))

    def _check_policy(self) -> None:
        # A policy entry naming a method that does not exist is a typo that would silently deny (or, for a
        # wildcard, silently allow too little): refuse to start instead.
        known = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection"}
        for method in self._policy.methods:
            _, service, name = method.split("/")
            if service in known:
                continue
            descriptor = self._services.get(service)
            if descriptor is None:
                raise ConfigError(f"policy names {method} but {service} is not served here")
            if name != "*" and descriptor.methods_by_name.get(name) is None:
                raise ConfigError(f"policy names {method} but {service} has no method {name}")

    async def start(self) -> None:
        self._check_policy()
        if self._checkpoints is None:
            _log.warning("no audit signing key (HAULMESH_AUDIT_SIGNING_KEY_FILE): this process's audit chain is not "
                         "anchored off the store; a recomputed chain or a rolled-back store goes undetected")
        else:
            try:  # a malformed URL stops the start (ConfigError); an unreachable store is retried by the loop
                await asyncio.to_thread(self._checkpoints.open)
            except (ObjectStoreError, OSError) as exc:
                _log.error("audit checkpoint store %s unreachable (%s); retrying", self.config.audit_checkpoint_url,
                           exc)
        if self.config.test_faults_file is not None:
            _log.warning("TEST MODE: the test fault injector is installed (HAULMESH_TEST_FAULTS_FILE=%s, "
                         "HAULMESH_TEST_MODE=1): calls may be failed on purpose; never in production",
                         self.config.test_faults_file)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self.server)
        try:
            self.bound_port = self.server.add_secure_port(self.config.listen_address,
                                                          reloading_server_credentials(self._files))
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {self.config.listen_address}: {exc}", field="HAULMESH_PORT") from exc
        # Before the store wait, so a process stuck waiting for its store can still be scraped and seen: NOT_SERVING
        # (the health servicer's own default is SERVING) until the store answers.
        for name in ["", *self._services]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.metrics.start()
        await self._start_probe_listener()
        if not await self._wait_for_store() or not await self._load_revocations():
            return  # stopped while waiting: run() goes on to stop()
        await self.server.start()
        for run, _, part, reports_progress in self._companions:
            task = asyncio.get_running_loop().create_task(self._keep(run, part, reports_progress))
            task.add_done_callback(self._companion_done)
            self._companion_tasks.append(task)
        ready = health_pb2.HealthCheckResponse.NOT_SERVING if self._stuck else health_pb2.HealthCheckResponse.SERVING
        for name in ["", *self._services]:
            await self.health.set(name, ready)
        _log.info("%s serving on %s (store %s)", self.config.service_name,
                  self.config.listen_address, redact_url(self._redis_url))

    async def _start_probe_listener(self) -> None:
        if not self.config.health_port:
            return
        self._probe_server = grpc.aio.server(
            options=[("grpc.so_reuseport", 1 if self.config.worker_index is not None else 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._probe_server)
        address = f"{self.config.listen_host}:{self.config.health_port}"
        try:
            self._probe_server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}", field="HAULMESH_HEALTH_PORT") from exc
        await self._probe_server.start()

    async def _wait_for_store(self) -> bool:
        """Wait, with capped jittered backoff and health NOT_SERVING, until the store answers a PING; True then,
        False when the process is told to stop first. Never gives up: a store that is down or still starting is an
        outage to wait out (a supervisor would otherwise give the whole mesh up on exit 2), not a configuration
        error; only a refused login (a wrong password or user in REDIS_URL) is one."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(STORE_WAIT_BACKOFF_START_SECONDS, STORE_WAIT_BACKOFF_MAX_SECONDS)
        logged = loop.time()
        while True:
            try:
                await asyncio.wait_for(self.redis.ping(), STORE_WAIT_PING_TIMEOUT_SECONDS)
                if backoff.failures:
                    _log.info("store %s reachable after %d attempts", redact_url(self._redis_url), backoff.failures)
                return True
            except redis.AuthenticationError as exc:
                raise ConfigError(f"store {redact_url(self._redis_url)} refused the login: {exc} (check the user "
                                  "and password in REDIS_URL: docs/security.md, \"Store users\")",
                                  field="REDIS_URL") from exc
            except (redis.RedisError, OSError, TimeoutError) as exc:
                if not backoff.failures or loop.time() - logged >= STORE_WAIT_LOG_EVERY_SECONDS:
                    logged = loop.time()
                    _log.warning("store %s unreachable (%s); waiting for it, health NOT_SERVING",
                                 redact_url(self._redis_url), exc or type(exc).__name__)
                delay = backoff.next()
            try:
                await asyncio.wait_for(self._stop_requested.wait(), delay)
                return False
            except TimeoutError:
                pass

    async def _load_revocations(self) -> bool:
        """Read the certificate deny-list before the first call is served (a revoked certificate is never let in
        by a process that just started); retried like the store wait. False when told to stop first."""
        backoff = Backoff(STORE_WAIT_BACKOFF_START_SECONDS, STORE_WAIT_BACKOFF_MAX_SECONDS)
        while True:
            try:
                await asyncio.wait_for(self.revocations.refresh(), STORE_WAIT_PING_TIMEOUT_SECONDS)
                return True
            except (redis.RedisError, OSError, TimeoutError) as exc:
                _log.warning("cannot read the revocation list (%s); not serving until it is read",
                             exc or type(exc).__name__)
            try:
                await asyncio.wait_for(self._stop_requested.wait(), backoff.next())
                return False
            except TimeoutError:
                pass

    def part_progress(self, part: str, ok: bool) -> None:
        """Record whether ``part`` makes progress; health is SERVING only while every part does."""
        before = bool(self._stuck)
        if ok:
            self._stuck.discard(part)
        else:
            self._stuck.add(part)
        if bool(self._stuck) != before and not self._stopping.is_set():
            serving = health_pb2.HealthCheckResponse.SERVING
            status = health_pb2.HealthCheckResponse.NOT_SERVING if self._stuck else serving
            _log.warning("health %s (%s)", health_pb2.HealthCheckResponse.ServingStatus.Name(status),
                         ", ".join(sorted(self._stuck)) or f"{part} recovered")
            for name in ["", *self._services]:
                # The servicer's own set() is a coroutine; a done task is nothing to keep.
                asyncio.get_running_loop().create_task(self.health.set(name, status))

    async def _keep(self, run: Callable[[], Awaitable[None]], part: str, reports_progress: bool) -> None:
        """Run a companion; restart it after a transient failure (see :meth:`add_companion`)."""
        backoff = self._backoffs[part] = Backoff(COMPANION_BACKOFF_START_SECONDS, COMPANION_BACKOFF_MAX_SECONDS)
        check: asyncio.Task[None] | None = None
        while True:
            if backoff.failures and not reports_progress and part in self._stuck:
                check = asyncio.get_running_loop().create_task(self._clear_when_store_answers(part))
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping.is_set() or not is_transient(exc):
                    raise
                if not is_peer_fault(exc):  # a peer's outage is the peer's health, not ours (see is_peer_fault)
                    self.part_progress(part, False)
                delay = backoff.next()
                _log.warning("%s failed (%s: %s); restarting in %.2fs", part, type(exc).__name__, exc, delay)
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                    return
                except TimeoutError:
                    pass
            finally:
                if check is not None:
                    check.cancel()
                    check = None

    async def _clear_when_store_answers(self, part: str) -> None:
        """The progress signal of a companion with none of its own: the store answers again (a hung one does not,
        so the part stays stuck instead of flapping). Cancelled when the companion fails again."""
        backoff = Backoff(COMPANION_BACKOFF_START_SECONDS, COMPANION_BACKOFF_MAX_SECONDS)
        while True:
            try:
                await asyncio.wait_for(self.redis.ping(), COMPANION_STORE_CHECK_SECONDS)
            except (redis.RedisError, OSError, TimeoutError):
                await asyncio.sleep(backoff.next())
                continue
            self.part_progress(part, True)
            return

    def _companion_done(self, task: asyncio.Task[None]) -> None:
        if self._stopping.is_set():
            return  # a companion ending (or failing on a closing connection) during shutdown is expected
        if not task.cancelled() and task.exception() is not None:
            _log.error("companion task failed; stopping", exc_info=task.exception())
            self.exit_code = 1
        self.request_stop()

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def stop(self) -> None:
        """Health NOT_SERVING, drain, stop with grace, close clients."""
        self._stopping.set()
        await self.health.enter_graceful_shutdown()
        _log.info("shutting down: health NOT_SERVING, grace %.1fs", self.config.grace_period_seconds)
        if self.config.shutdown_drain_seconds:
            await asyncio.sleep(self.config.shutdown_drain_seconds)
        await asyncio.gather(*(stop() for _, stop, _, _ in self._companions), return_exceptions=True)
        await self.server.stop(self.config.grace_period_seconds)
        # Companions finish their current step before the store client closes under them.
        if self._companion_tasks:
            _, late = await asyncio.wait(self._companion_tasks, timeout=self.config.grace_period_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._companion_tasks, return_exceptions=True)
        if self._checkpoints is not None:  # after the last call: the final checkpoint covers every entry written
            await self._checkpoints.stop()
        await self.channels.close()
        if self._redis is not None:
            await self._redis.aclose()
        if self._blocking_redis is not None:
            await self._blocking_redis.aclose()
        if self._probe_server is not None:  # after the main server: the kubelet sees NOT_SERVING till the end
            await self._probe_server.stop(0)
        # Last, so the final counts of the drain can still be scraped.
        await asyncio.to_thread(self.metrics.stop)

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        await self._stop_requested.wait()
        await self.stop()


def run_service(service_name: str, policy: Policy,
                register: Callable[[Service], Awaitable[None] | None], *, scalable: bool = False) -> None:
    """Entry point of a service process: configure, register servicers, serve; exit 2 on bad config.

    ``scalable`` services may run ``HAULMESH_WORKERS`` worker processes on one port (see _workers.py); this
    process then only supervises them.
    """
    try:
        config = ServiceConfig.from_env(service_name)
        if config.workers > 1 and not scalable:
            raise ConfigError(f"{service_name} runs as one process (its background loops are not made for more); "
                              "scale it with replicas, not HAULMESH_WORKERS", field="HAULMESH_WORKERS")
    except ConfigError as exc:
        print(f"haulmesh-{service_name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(service_name, config.log_level)
    if config.workers > 1 and config.worker_index is None:
        raise SystemExit(supervise_workers(f"services.{service_name}", config.workers,
                                           config.grace_period_seconds))
    # Before the Service exists: its server and channels take their tracing interceptors from the provider.
    configure_tracing(service_name, config.tracing)

    async def main() -> int:
        service = Service(config, policy)
        pending = register(service)
        if pending is not None:
            await pending
        # What start-up built (modules, descriptors, the app, caches' first entries) lives as long as the process:
        # out of the collector's reach, a full collection scans only what serving allocated since: about half the
        # gateway's objects under a flood, whose 60-100 ms full collections were AT-18's tail (docs/decisions.md).
        gc.freeze()
        await service.run()
        return service.exit_code

    try:
        code = asyncio.run(main())
    except ConfigError as exc:
        _log.error("%s cannot start: %s", service_name, exc)
        raise SystemExit(2) from None  # the supervisors give up on 2: it is kept for what a restart cannot fix
    except HaulmeshError as exc:
        _log.error("%s failed: %s", service_name, exc)
        raise SystemExit(1) from None
    finally:
        shutdown_tracing()  # exports the spans still buffered
    raise SystemExit(code)
