"""Retries between services (AT-11, short) and a deadline on every call between services.

A mesh whose services record every call they receive from another service (the test-only fault injector,
HAULMESH_TEST_FAULTS_FILE) runs the flow tender → offer → accept → dispatch over REST: every call between
services carried a deadline. Then half the calls to the tender service fail UNAVAILABLE for a period, half of
those after the tender was made (the reply lost): the gateway's channel retries the idempotent ones, attempts stay
bounded per call and in all (throttling), every REST call ends within its deadline, and no tender or quote exists
twice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import httpx
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

    for module in ("haulmesh.tender.v1.tender_service_pb2", "haulmesh.mission.v1.mission_service_pb2",
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
