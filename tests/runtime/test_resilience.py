"""Surviving transient faults in one process: which errors are transient, the backoff schedule, a companion that
fails transiently is restarted with health NOT_SERVING until it runs again (a real Service over mTLS on a real
store), a programming error still stops the process, and periodic loops report their progress."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.runtime import Periodic, Service, ServiceConfig, Unavailable, check_health, free_port
from services.runtime._retry import Backoff, is_transient
from services.tender.server import TENDER_POLICY as POLICY
from tests.conftest import make_pki, rich_error, wait_for

from .test_security import CARRIER, CountingTenders, _issue_server_cert


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="test")


@pytest.mark.parametrize(("error", "transient"), [
    (redis.ConnectionError("No connection available."), True),  # a pool exhausted
    (redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), True),
    (redis.TimeoutError("Timeout reading from socket"), True),
    (redis.BusyLoadingError("Valkey is loading the dataset in memory"), True),
    (redis.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"), True),
    (redis.ResponseError("max number of clients reached"), True),
    (redis.ResponseError("ERR Error running script: attempt to compare nil with number"), False),
    (_RpcError(grpc.StatusCode.UNAVAILABLE), True),
    (_RpcError(grpc.StatusCode.DEADLINE_EXCEEDED), True),
    (_RpcError(grpc.StatusCode.INVALID_ARGUMENT), False),
    (Unavailable("the store did not confirm"), True),
    (ConnectionResetError(), True),
    (TimeoutError(), True),
    (TypeError("unsupported operand"), False),
    (KeyError("missing"), False),
])
def test_transient_errors_are_told_from_programming_errors(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_backoff_is_capped_jittered_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(7))
    ceilings, delays = [], []
    for _ in range(8):
        ceilings.append(backoff.ceiling())
        delays.append(backoff.next())
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(0.05 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered: no two processes come back in step
    backoff.reset()
    assert backoff.failures == 0 and backoff.ceiling() == 0.5


@pytest.fixture
async def service(tmp_path: Path, store_url: str):
    p = make_pki(tmp_path / "ca")
    tls = _issue_server_cert(p, tmp_path / "server")
    config = ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(), tls=tls,
                           state_dir=tmp_path, redis_url=store_url, grace_period_seconds=0.5)
    service = Service(config, POLICY)
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, CountingTenders(),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    yield service, p
    await service.stop()


async def test_a_transient_companion_failure_turns_health_not_serving_then_serving(service) -> None:
    service, p = service
    healthy, stopped = asyncio.Event(), asyncio.Event()
    attempts = 0

    async def consume() -> None:
        nonlocal attempts
        attempts += 1
        if not healthy.is_set():  # the store's pool is dry (what 300 watches did before issue 11)
            raise redis.ConnectionError("No connection available.")
        await stopped.wait()

    async def stop() -> None:
        stopped.set()

    service.add_companion(consume, stop)
    await service.start()
    credentials = p.credentials("operator", "ops")
    address = f"127.0.0.1:{service.bound_port}"
    await wait_for(lambda: check_health(address, credentials), timeout_seconds=10)
    await wait_for(lambda: _status_is(address, credentials, "NOT_SERVING"), timeout_seconds=10)
    await wait_for(lambda: attempts >= 3, timeout_seconds=20)  # retried, with backoff, not given up on
    healthy.set()
    await wait_for(lambda: _status_is(address, credentials, "SERVING"),
                   timeout_seconds=20)
    assert not service._stop_requested.is_set() and service.exit_code == 0


async def test_a_restarted_companion_is_recovered_only_by_progress_never_by_run_time(service) -> None:
    """A consumer restarted on a hung store runs without failing and makes no progress: health stays NOT_SERVING
    (no flapping) and its backoff is not reset, however long it runs; its first real pass makes it SERVING.

    Watched, not polled: the health Watch stream reports every change of the server's status, and the companion
    counts its own passes without progress (as a consumer's blocking read times out on a hung store, here 50 ms
    each): after 40 of them, more than twice the 1 s of run time that used to count as recovered, the stream
    has reported no SERVING."""
    service, p = service
    passes_without_progress = 40
    hung, progressed, stopped = asyncio.Event(), asyncio.Event(), asyncio.Event()
    attempts, passes = 0, 0
    ran_since = 0.0

    async def consume() -> None:
        nonlocal attempts, passes, ran_since
        attempts += 1
        if attempts <= 2:
            raise redis.TimeoutError("Timeout reading from socket")  # the store hangs
        ran_since = asyncio.get_running_loop().time()
        hung.set()
        while not progressed.is_set():  # blocked on the hung store: running, making no progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progressed.wait(), 0.05)
            passes += 1
        made_progress()
        await stopped.wait()

    async def stop() -> None:
        stopped.set()

    made_progress = service.add_companion(consume, stop, reports_progress=True)
    await service.start()
    credentials = p.credentials("operator", "ops")
    address = f"127.0.0.1:{service.bound_port}"
    seen: list[str] = []
    async with grpc.aio.secure_channel(address, credentials) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())

        async def follow() -> None:
            async for reply in watch:
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

        follower = asyncio.create_task(follow())
        try:
            await wait_for(hung.is_set, timeout_seconds=20)
            await wait_for(lambda: seen and seen[-1] == "NOT_SERVING", timeout_seconds=10)  # stuck: 2 failures
            since_hung = len(seen)
            await wait_for(lambda: passes >= passes_without_progress, timeout_seconds=30)
            ran_for = asyncio.get_running_loop().time() - ran_since
            assert "SERVING" not in seen[since_hung:] and seen[-1] == "NOT_SERVING", (seen, ran_for)
            assert ran_for > 2.0, ran_for  # more than twice what used to count as recovered
            # Not reset by run time (the test's companion's backoff: the runtime keeps loops of its own too).
            assert next(b for part, b in service._backoffs.items() if ".consume#" in part).failures == 2
            progressed.set()
            await wait_for(lambda: seen[-1] == "SERVING", timeout_seconds=10)
        finally:
            watch.cancel()
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
    assert next(b for part, b in service._backoffs.items() if ".consume#" in part).failures == 0


async def test_a_programming_error_in_a_companion_still_stops_the_process(service) -> None:
    service, _ = service

    async def broken() -> None:
        raise TypeError("a bug, not a fault")

    async def stop() -> None:
        return None

    service.add_companion(broken, stop)
    await service.start()
    await wait_for(service._stop_requested.is_set, timeout_seconds=10)
    assert service.exit_code == 1


async def _status_is(address: str, credentials: grpc.ChannelCredentials, status: str) -> bool:
    return await check_health(address, credentials) == status


async def test_a_periodic_loop_reports_when_it_stops_and_resumes_making_progress() -> None:
    heard: list[tuple[str, bool]] = []
    passes = 0

    async def tick() -> None:
        nonlocal passes
        passes += 1
        if passes in (2, 3):
            raise redis.ConnectionError("store restarting")
        if passes == 5:
            await loop.stop()

    loop = Periodic("sweep", tick, interval_seconds=0.01, max_backoff_seconds=0.05,
                    progress=lambda name, ok: heard.append((name, ok)))
    await asyncio.wait_for(loop.run(), 10)
    assert heard == [("sweep", False), ("sweep", True)]  # once when it began failing, once when it recovered


class _FaultyTenders(CountingTenders):
    async def ListTenders(self, request, context):
        raise redis.ConnectionError("No connection available.")

    async def GetTender(self, request, context):
        raise redis.ResponseError("ERR Error running script: a bug")


async def test_a_transient_store_fault_in_a_handler_is_unavailable_a_bug_is_not(tmp_path: Path, store_url: str) -> None:
    p = make_pki(tmp_path / "ca")
    config = ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(),
                           tls=_issue_server_cert(p, tmp_path / "server"), state_dir=tmp_path, redis_url=store_url,
                           grace_period_seconds=0.5)
    service = Service(config, POLICY)
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, _FaultyTenders(),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    await service.start()
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{service.bound_port}",
                                           p.credentials("service", "gateway")) as channel:
            stub = tender_service_pb2_grpc.TenderServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as transient:
                await stub.ListTenders(tender_service_pb2.ListTendersRequest(), metadata=CARRIER, timeout=5)
            assert rich_error(transient.value)[:2] == ("UNAVAILABLE", "STORE_UNAVAILABLE")  # clients retry it
            with pytest.raises(grpc.aio.AioRpcError) as bug:
                await stub.GetTender(tender_service_pb2.GetTenderRequest(name="tenders/x"), metadata=CARRIER, timeout=5)
            assert bug.value.code() == grpc.StatusCode.UNKNOWN
    finally:
        await service.stop()


async def test_a_pass_failed_by_a_peer_leaves_health_alone() -> None:
    heard: list[tuple[str, bool]] = []
    passes = 0

    async def tick() -> None:
        nonlocal passes
        passes += 1
        if passes == 1:
            raise _RpcError(grpc.StatusCode.UNAVAILABLE)  # the mission service is down, not this process
        await loop.stop()

    loop = Periodic("report", tick, interval_seconds=0.01, progress=lambda name, ok: heard.append((name, ok)))
    await asyncio.wait_for(loop.run(), 10)
    assert passes == 2 and heard == []


async def _probe_status(port: int) -> str:
    """The plain-text probe listener's health status (HAULMESH_HEALTH_PORT), or why it could not be asked."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_a_store_down_at_start_up_is_waited_out_not_a_config_error(tmp_path: Path, store_url: str,
                                                                          fault_proxy) -> None:
    """The store refusing connections at start-up: the process keeps waiting (no ConfigError, no exit 2 that
    would make the supervisor give the mesh up), its probe says NOT_SERVING meanwhile, and it serves once the
    store is back."""
    upstream = store_url.split("@", 1)[1].split("/", 1)[0]
    proxy = await fault_proxy(upstream)
    proxy.reset(refuse_new=True)  # the store is down: every connection refused with an RST
    p = make_pki(tmp_path / "ca")
    probe = free_port()
    config = ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(),
                           tls=_issue_server_cert(p, tmp_path / "server"), state_dir=tmp_path,
                           redis_url=store_url.replace(upstream, proxy.address), grace_period_seconds=0.5,
                           health_port=probe)
    service = Service(config, POLICY)
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, CountingTenders(),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    starting = asyncio.get_running_loop().create_task(service.start())
    try:
        await wait_for(lambda: _status_is_probe(probe, "NOT_SERVING"), timeout_seconds=10)
        assert not starting.done()
        proxy.pass_through()  # the store is back
        await asyncio.wait_for(starting, 30)  # no ConfigError
        await wait_for(lambda: _status_is_probe(probe, "SERVING"), timeout_seconds=10)
    finally:
        if not starting.done():
            service.request_stop()
            await starting
        await service.stop()


async def test_a_process_told_to_stop_while_waiting_for_its_store_stops(tmp_path: Path, fault_proxy) -> None:
    proxy = await fault_proxy(f"127.0.0.1:{free_port()}")  # nothing listens behind it
    proxy.reset(refuse_new=True)
    p = make_pki(tmp_path / "ca")
    config = ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(),
                           tls=_issue_server_cert(p, tmp_path / "server"), state_dir=tmp_path,
                           redis_url=f"redis://{proxy.address}", grace_period_seconds=0.5)
    service = Service(config, POLICY)
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, CountingTenders(),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    running = asyncio.get_running_loop().create_task(service.run())
    await wait_for(lambda: service.bound_port, timeout_seconds=10)  # bound: now waiting for its store
    service.request_stop()
    await asyncio.wait_for(running, 15)
    assert service.exit_code == 0


async def _status_is_probe(port: int, status: str) -> bool:
    return await _probe_status(port) == status


async def test_a_bug_in_a_periodic_pass_ends_the_loop_not_logged_forever() -> None:
    heard: list[tuple[str, bool]] = []
    passes = 0

    async def tick() -> None:
        nonlocal passes
        passes += 1
        if passes == 1:
            raise redis.ConnectionError("store restarting")  # transient: backed off, retried
        raise TypeError("a bug, not a fault")

    loop = Periodic("sweep", tick, interval_seconds=0.01, progress=lambda name, ok: heard.append((name, ok)))
    with pytest.raises(TypeError):
        await asyncio.wait_for(loop.run(), 10)
    assert passes == 2 and heard == [("sweep", False)]


async def test_a_bug_in_a_periodic_pass_stops_the_service_for_its_supervisor_to_restart(service) -> None:
    service, _ = service

    async def tick() -> None:
        raise KeyError("a bug in the sweep")

    service.add_periodic("sweep", tick, interval_seconds=0.01)
    await service.start()
    await wait_for(service._stop_requested.is_set, timeout_seconds=10)
    assert service.exit_code == 1  # not 2: the supervisor restarts it
