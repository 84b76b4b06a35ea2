"""Retries between services (AT-11, short) and a deadline on every call between services.

A mesh whose services record every call they receive from another service (the test-only fault injector,
HAULMESH_TEST_FAULTS_FILE) runs the flow tender → offer → accept → dispatch over REST: every call between
services carried a deadline. Then half the calls to the tender service fail UNAVAILABLE for a period, half of
those after the tender was made (the reply lost): the gateway's channel retries the idempotent ones, attempts stay
bounded per call and in all (throttling), every REST call ends within its deadline, and no tender or quote exists
twice.

AT-11 full (``make chaos``, two seeds): six concurrent TMS clients create tenders (three in four with an
Idempotency-Key) and read them back over REST for 3 s, then 15 s under 50 % injected UNAVAILABLE on the tender
service (seeded), then 5 s without; the TMS then retries its failed keyed creates. Recorded and asserted: every
call between services carried a deadline, the attempts histogram of the creates (≤ maxAttempts), retries bounded
by the token bucket and the throttled count (failed creates gRPC did not send again), every reply within the
deadline, every call after the period a 200, and one tender (and one quote) per load at most, every load the TMS
was told of (or retried with its key) there. No other service calls the tender service (mission does not), so the
gateway is its only client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from haulmesh.type.v1 import equipment_pb2
from services.runtime import Mesh, carrier_metadata
from services.runtime._client import RETRIED_METHODS, RETRY_MAX_TOKENS, RETRY_TOKEN_RATIO, retry_service_config
from services.runtime.tokens import mint
from tests.conftest import Pki, running_mesh
from tests.gateway.rest.test_rest import seed_tender

TENDER = "/haulmesh.tender.v1.TenderService/"
CALL_TIMEOUT_SECONDS = 5
FAULTY_CREATES = 30


def test_every_retried_method_exists_and_is_read_or_idempotent_by_request_id() -> None:
    import importlib

    from google.protobuf import descriptor_pool

    for module in ("haulmesh.tender.v1.tender_service_pb2", "haulmesh.tender.v1.facility_service_pb2",
                   "haulmesh.mission.v1.mission_service_pb2",
                   "haulmesh.billing.v1.billing_service_pb2", "haulmesh.billing.v1.report_service_pb2",
                   "haulmesh.telemetry.v1.telemetry_service_pb2", "haulmesh.gateway.v1.webhook_service_pb2"):
        importlib.import_module(module)
    pool = descriptor_pool.Default()
    for service, methods in RETRIED_METHODS.items():
        descriptor = pool.FindServiceByName(service)
        for name in methods:
            method = descriptor.methods_by_name[name]
            assert not method.client_streaming and not method.server_streaming, name
            if not name.startswith(("Get", "List")):
                assert "request_id" in method.input_type.fields_by_name, name
    config = json.loads(retry_service_config(3))
    assert config["retryThrottling"] == {"maxTokens": RETRY_MAX_TOKENS, "tokenRatio": RETRY_TOKEN_RATIO}
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "methodConfig" not in json.loads(retry_service_config(1))


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _set_faults(path: Path, settings: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings))
    tmp.replace(path)  # atomic: a service never reads half a file
    time.sleep(0.01)  # a distinct mtime for the services' change check, even on coarse clocks


async def _register_vehicle(mesh: Mesh, mesh_pki: Pki) -> None:
    vehicle_id = f"RT-{uuid.uuid4().hex[:10].upper()}"
    async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "rt")) as channel:
        await mission_service_pb2_grpc.MissionServiceStub(channel).CreateVehicle(
            mission_service_pb2.CreateVehicleRequest(vehicle_id=vehicle_id, vehicle=vehicle_pb2.Vehicle(
                display_name=vehicle_id, home_region="US-TX-HOU",
                capabilities=vehicle_pb2.VehicleCapabilities(
                    equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT], max_cargo_weight_lb=45_000,
                    night_operations=True))),
            timeout=10)


async def _count(client: redis.asyncio.Redis, pattern: str) -> int:
    return len([key async for key in client.scan_iter(match=pattern, count=1000)])


async def test_deadlines_everywhere_and_retries_under_half_the_tender_calls_failing(mesh_pki: Pki,
                                                                                    tmp_path: Path) -> None:
    faults, record = tmp_path / "faults.json", tmp_path / "calls.jsonl"
    _set_faults(faults, {"record": str(record)})
    env = {"HAULMESH_TEST_FAULTS_FILE": str(faults), "HAULMESH_TEST_MODE": "1",
           "HAULMESH_CALL_TIMEOUT_SECONDS": str(CALL_TIMEOUT_SECONDS)}
    async with running_mesh(mesh_pki, tmp_path / "mesh", env=env) as mesh:
        carrier = f"rt{uuid.uuid4().hex[:8]}"
        auth = {"Authorization": "Bearer " + mint(carrier=carrier, scopes="tender:create tender:read tender:respond "
                                                  "mission:read", state_dir=mesh.state_dir)}
        await _register_vehicle(mesh, mesh_pki)
        # The recorder sees a missing deadline: a call made as a service, by hand, with none.
        async with grpc.aio.secure_channel(mesh.address("tender"), mesh_pki.credentials("service", "gateway")) as ch:
            await tender_service_pb2_grpc.TenderServiceStub(ch).ListTenders(
                tender_service_pb2.ListTendersRequest(), metadata=carrier_metadata(carrier))
        control = _calls(record)
        assert [(c["method"], c["deadline"]) for c in control] == [(TENDER + "ListTenders", False)], control
        record.unlink()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=30) as http:
            # 1. The flow, no faults: every call one service makes to another carries a deadline.
            created = await http.post("/api/v1/tenders", json=seed_tender(), headers=auth)
            assert created.status_code == 200, created.text
            assert created.json()["state"] == "STATE_OFFERED", created.json()
            accepted = await http.post(f"/api/v1/{created.json()['name']}:accept", json={}, headers=auth)
            assert accepted.status_code == 200, accepted.text
            mission = accepted.json().get("mission")
            assert mission, accepted.json()
            assert (await http.get(f"/api/v1/{mission}", headers=auth)).status_code == 200
            flow = _calls(record)
            methods = {c["method"].rsplit("/", 1)[1] for c in flow}
            assert {"CreateTender", "CreateQuote", "GetFleetCapacity", "AcceptTender", "CreateMission",
                    "GetMission"} <= methods, methods
            assert [c for c in flow if not c["deadline"]] == [], "a call between services without a deadline"
            # Creates without a request_id of their caller got one from the runtime (the TMS sent no key).
            assert all(c["request_id"] for c in flow if c["method"].endswith(("/CreateTender", "/CreateQuote",
                                                                               "/CreateMission")))
            flow_lines = len(flow)

            # 2. Half the tender service's calls fail, half of those after the tender was made.
            _set_faults(faults, {"record": str(record), "fail_prefix": TENDER, "fail_ratio": 0.5, "seed": 11})
            names: list[str] = []
            outcomes: list[tuple[dict, str | None, int, float]] = []
            for index in range(FAULTY_CREATES):
                payload, key = seed_tender(), (str(uuid.uuid4()) if index % 2 == 0 else None)
                started = time.monotonic()
                reply = await http.post("/api/v1/tenders", json=payload,
                                        headers={**auth, **({"Idempotency-Key": key} if key else {})})
                outcomes.append((payload, key, reply.status_code, time.monotonic() - started))
                # Never 409 ALREADY_EXISTS: that would be a create sent twice without its request_id.
                assert reply.status_code in (200, 503), reply.text
                if reply.status_code == 200:
                    names.append(reply.json()["name"])
            _set_faults(faults, {"record": str(record)})
            fault_lines = len(_calls(record))
            # The TMS retries what failed with its Idempotency-Key, after the period: exactly one tender each.
            for payload, key, status, _ in outcomes:
                if key and status != 200:
                    again = await http.post("/api/v1/tenders", json=payload, headers={**auth, "Idempotency-Key": key})
                    assert again.status_code == 200, again.text
                    names.append(again.json()["name"])
        store = redis.asyncio.Redis.from_url(mesh.store.url)
        try:
            tenders = await _count(store, f"tender:{{{carrier}}}:*")
            quotes = await _count(store, f"quote:{{{carrier}}}:*")
        finally:
            await store.aclose()

    during = [c for c in _calls(record)[flow_lines:fault_lines] if c["method"].startswith(TENDER + "CreateTender")]
    attempts = Counter(c["request_id"] for c in during)
    injected = Counter(c["injected"] or "none" for c in during)
    retried = sum(n - 1 for n in attempts.values())
    succeeded = sum(1 for *_, status, _ in outcomes if status == 200)
    slowest = max(seconds for *_, seconds in outcomes)
    # Failed calls the channel did not retry although it could have: the bucket was below half.
    throttled = [key for _, key, status, _ in outcomes if key and status == 503 and attempts[key] == 1]
    print(f"{FAULTY_CREATES} REST creates under 50 % injected UNAVAILABLE: {succeeded} answered 200, "
          f"{FAULTY_CREATES - succeeded} 503; {len(during)} attempts reached tender ({retried} retries; injected "
          f"{dict(injected)}); most attempts for one call {max(attempts.values())}; "
          f"failed unretried (throttled, of those with a key) {len(throttled)}; slowest reply {slowest:.2f} s; "
          f"tenders stored {tenders}, quotes stored {quotes}")
    assert [c for c in _calls(record) if not c["deadline"]] == []
    # Bounded: at most 3 attempts per call, and throttled: once failures drain the token bucket, no more retries.
    assert max(attempts.values()) <= 3
    assert retried >= 1, "retries happen while the bucket has tokens"
    assert retried <= RETRY_MAX_TOKENS / 2 + RETRY_TOKEN_RATIO * len(during) + 2, "retries are throttled"
    assert throttled, "once the bucket is drained a failed call is not retried"
    assert slowest < CALL_TIMEOUT_SECONDS + 2
    # No duplicate side effects: each tender made and evaluated once (one quote each), one per load.
    assert len(names) == len(set(names))
    assert quotes == tenders
    assert len(names) + 1 <= tenders <= 1 + FAULTY_CREATES


# ---- AT-11 full: 50 % UNAVAILABLE on the tender service under a concurrent TMS load ----------------------------

#: AT-11 full's load: concurrent TMS clients, each creating tenders (three in four with an Idempotency-Key) and
#: reading them back (GetTender, sometimes ListTenders) over REST, through a period of injected faults.
TMS_CLIENTS = 6
#: Seconds of load before the faults, under them (50 % of the tender service's calls UNAVAILABLE), and after.
CALM_SECONDS, FAULT_SECONDS, RECOVERY_SECONDS = 3.0, 15.0, 5.0
MAX_ATTEMPTS = 3
#: Deadline time left at a last attempt for it to count as throttled: the handler (a create, < 0.2 s) and
#: gRPC's next backoff (at most 0.1 s at MAX_ATTEMPTS 3; the 1 s maxBackoff at most) fit well within it.
THROTTLED_TIME_LEFT_SECONDS = 1.5


@dataclasses.dataclass
class RestCall:
    """One REST call of the load: what it was, its answer, and how long it took."""

    kind: str  # "create", "get" or "list"
    status: int
    seconds: float
    key: str | None = None
    payload: dict | None = None
    name: str | None = None


async def _tms_load(http: httpx.AsyncClient, auth: dict[str, str], rng: random.Random,
                    seconds: float) -> list[RestCall]:
    """TMS_CLIENTS clients in a loop for ``seconds``: create, then read it back; returns every call."""
    calls: list[RestCall] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def timed(kind: str, request) -> tuple[httpx.Response, RestCall]:
        started = time.monotonic()
        reply = await request
        call = RestCall(kind, reply.status_code, time.monotonic() - started)
        calls.append(call)
        return reply, call

    async def client(seed: int) -> None:
        own = random.Random(seed)  # the load's mix, seeded
        while loop.time() < end:
            payload, key = seed_tender(), (str(uuid.uuid4()) if own.random() < 0.75 else None)
            reply, call = await timed("create", http.post(
                "/api/v1/tenders", json=payload, headers={**auth, **({"Idempotency-Key": key} if key else {})}))
            call.key, call.payload = key, payload
            if reply.status_code != 200:
                continue
            call.name = reply.json()["name"]
            await timed("get", http.get(f"/api/v1/{call.name}", headers=auth))
            if own.random() < 0.2:
                await timed("list", http.get("/api/v1/tenders", params={"pageSize": 10}, headers=auth))

    await asyncio.gather(*(client(rng.randrange(2**32)) for _ in range(TMS_CLIENTS)))
    return calls


async def _tenders_by_load(store: redis.asyncio.Redis, carrier: str) -> Counter[str]:
    """How many tenders the store holds per TMS load id (each create of the load has its own)."""
    from haulmesh.tender.v1 import tender_pb2

    loads: Counter[str] = Counter()
    async for key in store.scan_iter(match=f"tender:{{{carrier}}}:*", count=1000):
        if await store.type(key) == b"string":
            loads[tender_pb2.Tender.FromString(await store.get(key)).tms_load_id] += 1
    return loads


async def at11(mesh_pki: Pki, tmp_path: Path, seed: int) -> dict:
    """The whole AT-11 full run; returns its figures."""
    rng = random.Random(seed)
    faults, record = tmp_path / "faults.json", tmp_path / "calls.jsonl"
    _set_faults(faults, {"record": str(record)})
    env = {"HAULMESH_TEST_FAULTS_FILE": str(faults), "HAULMESH_TEST_MODE": "1", "HAULMESH_RATE_LIMIT": "off",
           "HAULMESH_CALL_TIMEOUT_SECONDS": str(CALL_TIMEOUT_SECONDS), "HAULMESH_CALL_MAX_ATTEMPTS": str(MAX_ATTEMPTS)}
    async with running_mesh(mesh_pki, tmp_path / "mesh", env=env) as mesh:
        carrier = f"rt{uuid.uuid4().hex[:8]}"
        auth = {"Authorization": "Bearer " + mint(carrier=carrier, scopes="tender:create tender:read",
                                                  state_dir=mesh.state_dir)}
        await _register_vehicle(mesh, mesh_pki)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=30,
                                     limits=httpx.Limits(max_connections=TMS_CLIENTS)) as http:
            calm = await _tms_load(http, auth, rng, CALM_SECONDS)
            calm_lines = len(_calls(record))
            # The period: half the tender service's calls fail (half of those after the handler ran). The load
            # stops at its end, so every call of the period is in its part of the record.
            _set_faults(faults, {"record": str(record), "fail_prefix": TENDER, "fail_ratio": 0.5, "seed": seed})
            faulty = await _tms_load(http, auth, rng, FAULT_SECONDS)
            _set_faults(faults, {"record": str(record)})
            fault_lines = len(_calls(record))
            recovery = await _tms_load(http, auth, rng, RECOVERY_SECONDS)
            # The TMS retries what failed with its Idempotency-Key, once the tender service is well again.
            retried = []
            for call in faulty:
                if call.kind == "create" and call.key and call.status != 200:
                    again = await http.post("/api/v1/tenders", json=call.payload,
                                            headers={**auth, "Idempotency-Key": call.key})
                    retried.append(again.status_code)
                    if again.status_code == 200:
                        call.name = again.json()["name"]
        store = redis.asyncio.Redis.from_url(mesh.store.url)
        try:
            loads = await _tenders_by_load(store, carrier)
            quotes = await _count(store, f"quote:{{{carrier}}}:*")
        finally:
            await store.aclose()

    lines = _calls(record)
    during = [c for c in lines[calm_lines:fault_lines] if c["method"].startswith(TENDER)]
    creates = [c for c in during if c["method"] == TENDER + "CreateTender"]
    attempts = Counter(c["request_id"] for c in creates)
    last_injected = {c["request_id"]: c["injected"] for c in creates}
    last_left = {c["request_id"]: c.get("deadline_seconds") for c in creates}
    # Throttled: create calls whose last attempt failed on a retryable UNAVAILABLE with attempts left and time
    # left on their deadline for another (more than THROTTLED_TIME_LEFT_SECONDS when it arrived), which gRPC did
    # not send again: its retry token bucket was below half. A call its deadline ended is not counted.
    throttled = sum(1 for request_id, n in attempts.items()
                    if n < MAX_ATTEMPTS and last_injected[request_id]
                    and (last_left[request_id] or 0.0) > THROTTLED_TIME_LEFT_SECONDS)
    # Every create the TMS made, and what it must have left behind: a keyed one exactly one tender (its retry
    # after the period included), an unkeyed one that answered 200 exactly one, an unkeyed failure at most one.
    all_creates = [c for c in calm + faulty + recovery if c.kind == "create"]
    sure = [c for c in all_creates if c.key or c.status == 200]
    maybe = [c for c in all_creates if not c.key and c.status != 200]
    figures = {
        "seed": seed, "tms_clients": TMS_CLIENTS, "fault_seconds": FAULT_SECONDS,
        "rest_calls": {"calm": len(calm), "faulty": len(faulty), "recovery": len(recovery)},
        "faulty_rest_status": dict(Counter(str(c.status) for c in faulty)),
        "recovery_rest_status": dict(Counter(str(c.status) for c in recovery)),
        "tms_retries_after_period_status": dict(Counter(str(s) for s in retried)),
        "tender_calls_in_period": len(during),
        "tender_calls_injected": dict(Counter(c["injected"] or "none" for c in during)),
        "create_attempts_histogram": {str(n): count for n, count in sorted(Counter(attempts.values()).items())},
        "create_retries": sum(n - 1 for n in attempts.values()),
        "throttled_creates": throttled,
        "max_attempts": MAX_ATTEMPTS,
        "calls_without_deadline": sum(1 for c in lines if not c["deadline"]),
        "calls_between_services": len(lines),
        "slowest_rest_call_seconds": round(max(c.seconds for c in calm + faulty + recovery), 3),
        "tenders": sum(loads.values()), "quotes": quotes,
        "duplicate_tenders": sum(n - 1 for n in loads.values() if n > 1),
        "creates_sure": len(sure), "creates_unkeyed_failed": len(maybe),
        "missing_tenders": sum(1 for c in sure if loads[c.payload["tenderId"]] == 0),
    }
    print(figures)
    return figures


def check_at11(figures: dict) -> None:
    successes = figures["tender_calls_injected"].get("none", 0)
    assert figures["calls_without_deadline"] == 0, figures
    assert max(int(n) for n in figures["create_attempts_histogram"]) <= MAX_ATTEMPTS, figures
    assert figures["create_retries"] >= 1, figures
    # gRPC's bucket: a retry only while more than half of RETRY_MAX_TOKENS are left; each failure takes one and
    # each success gives RETRY_TOKEN_RATIO back, so retries are bounded by the successes, not the failures.
    assert figures["create_retries"] <= RETRY_MAX_TOKENS / 2 + RETRY_TOKEN_RATIO * successes + 2, figures
    assert figures["throttled_creates"] >= 1, figures
    assert figures["slowest_rest_call_seconds"] < CALL_TIMEOUT_SECONDS + 2, figures
    # Recovered: every call after the period answered 200, and so did every keyed retry of a failed create.
    assert set(figures["recovery_rest_status"]) == {"200"}, figures
    assert set(figures["tms_retries_after_period_status"]) <= {"200"}, figures
    # 0 duplicate side effects: one tender per load at most, each created load there, one quote per tender.
    assert figures["duplicate_tenders"] == 0 and figures["missing_tenders"] == 0, figures
    assert figures["creates_sure"] <= figures["tenders"] <= figures["creates_sure"] + figures[
        "creates_unkeyed_failed"], figures
    assert figures["quotes"] == figures["tenders"], figures


@pytest.mark.chaos(seeds=2)  # two seeded fault patterns: ~40 s each (a mesh start), within make chaos's 15 minutes
@pytest.mark.chaos_id("AT-11")
async def test_at11_full(mesh_pki: Pki, tmp_path: Path, chaos_seed: int, chaos_record) -> None:
    """A concurrent TMS load through the REST gateway to the tender service, 15 s of it under 50 % injected
    UNAVAILABLE (seeded), then 5 s without."""
    figures = await at11(mesh_pki, tmp_path, chaos_seed)
    chaos_record("AT-11", **figures)
    check_at11(figures)
