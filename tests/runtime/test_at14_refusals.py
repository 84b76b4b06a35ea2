"""AT-14 (issue 12): every method of every service refuses every bad credential, and no handler runs.

Short version (``make test``): for each mesh service, an in-process server of the real runtime (mTLS, the
authorization interceptor, the deny-list) with that service's real policy, serving every method of its descriptors
with a handler that only counts; every attack of tests/runtime/refusals.py on every method, then a positive control
(an allowed identity reaches the handler) proving the count would have seen an invocation.

Full version (``make chaos``, recorded as AT-14): the same matrix against the real mesh's processes; the proof of
"0 handler invocations" is each process's ``haulmesh_rpc_handler_invocations_total`` (the runtime's count of calls
that passed every check), unchanged for every attacked method.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.runtime import (
    METRICS_REGISTRY,
    Mesh,
    Service,
    ServiceConfig,
    TlsConfig,
    connect_async,
    pki,
    revoke_certificate,
)
from services.runtime._store import free_port

from ..conftest import Pki, make_pki, running_mesh, wait_for
from .refusals import ATTACKS, BUILTIN, SERVED, Credentials, call, methods, refused_as_expected


def _counting_handlers(descriptors, counts: Counter) -> list[grpc.GenericRpcHandler]:
    """A handler for every method of ``descriptors`` that counts its invocations and answers an empty message."""
    from google.protobuf.message_factory import GetMessageClass

    handlers = []
    for service in descriptors:
        table = {}
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            response = GetMessageClass(method.output_type)()
            parse = GetMessageClass(method.input_type).FromString

            def counted(path=path, response=response, method=method):
                if method.server_streaming:
                    async def stream(request, context):
                        counts[path] += 1
                        yield response
                    return stream

                async def unary(request, context):
                    counts[path] += 1
                    return response
                return unary

            kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                    (False, True): grpc.unary_stream_rpc_method_handler,
                    (True, False): grpc.stream_unary_rpc_method_handler,
                    (True, True): grpc.stream_stream_rpc_method_handler}[(method.client_streaming,
                                                                           method.server_streaming)]
            table[method.name] = kind(counted(), request_deserializer=parse,
                                      response_serializer=lambda m: m.SerializeToString())
        handlers.append(grpc.method_handlers_generic_handler(service.full_name, table))
    return handlers


def _server_tls(p: Pki, name: str, directory: Path) -> TlsConfig:
    issued = pki.issue(p.ca, pki.identity_for("service", name), valid_days=1, dns_names=("localhost",),
                       ip_addresses=("127.0.0.1",))
    cert, key = pki.write_pem_files(directory, name, issued, p.ca.certificate_pem)
    return TlsConfig(directory / "ca.pem", cert, key)


async def _revoke(store_url: str, credentials: Credentials) -> None:
    client = connect_async(store_url)
    try:
        for cert in credentials.revoked_certificates:
            await revoke_certificate(client, format(cert.serial_number, "x"),
                                     not_after=cert.not_valid_after_utc.timestamp(), reason="AT-14")
    finally:
        await client.aclose()


async def _attack(address: str, name: str, credentials: Credentials) -> tuple[int, list[str]]:
    """Every attack on every method of service ``name`` at ``address`` (its own and the runtime's health and
    reflection): (calls made, failures described)."""
    policy, descriptors = SERVED[name]
    descriptors = (*descriptors, *BUILTIN)
    calls, failures = 0, []
    channels: dict[int, grpc.aio.Channel] = {}
    try:
        for attack in ATTACKS:
            for path, method in methods(descriptors):
                creds = credentials.for_call(attack, policy, path)
                if creds is None:
                    continue
                channel = channels.get(id(creds))
                if channel is None:
                    channel = channels[id(creds)] = grpc.aio.secure_channel(address, creds)
                outcome = await call(channel, path, method, refused=True)
                calls += 1
                if not refused_as_expected(attack, outcome):
                    failures.append(f"{name} {path} {attack}: {outcome}")
    finally:
        for channel in channels.values():
            await channel.close()
    return calls, failures


async def _revocation_in_force(address: str, credentials: Credentials) -> bool:
    """Whether the server at ``address`` refuses the revoked certificates (health is open to every identity)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for creds in credentials.revoked.values():
        async with grpc.aio.secure_channel(address, creds) as channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                return False
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                    return False
    return True


@pytest.fixture
async def servers(tmp_path: Path, store_url: str) -> AsyncIterator[tuple[dict[str, Service], Counter, Pki]]:
    """One in-process server per mesh service: the real runtime and policy, counting handlers."""
    p = make_pki(tmp_path / "ca")
    counts: Counter = Counter()
    started: dict[str, Service] = {}
    try:
        for name, (policy, descriptors) in SERVED.items():
            config = ServiceConfig(service_name=name, listen_host="127.0.0.1", port=free_port(),
                                   tls=_server_tls(p, name, tmp_path / name), state_dir=tmp_path / name,
                                   redis_url=store_url, grace_period_seconds=0.2, revocation_refresh_seconds=0.1)
            service = Service(config, policy)
            for handler, descriptor in zip(_counting_handlers(descriptors, counts), descriptors, strict=True):
                service.add(lambda _servicer, server, handler=handler: server.add_generic_rpc_handlers((handler,)),
                            None, descriptor)
            await service.start()
            started[name] = service
        yield started, counts, p
    finally:
        for service in started.values():
            await service.stop()


def _invocations() -> dict[tuple[str, str], float]:
    return {(s.labels["service"], s.labels["method"]): s.value
            for family in METRICS_REGISTRY.collect() if family.name == "haulmesh_rpc_handler_invocations"
            for s in family.samples if s.name.endswith("_total")}


async def test_at14_every_method_of_every_service_refuses_every_bad_credential(servers, store_url: str) -> None:
    started, counts, p = servers
    credentials = Credentials.make(p.ca)
    await _revoke(store_url, credentials)
    for service in started.values():
        address = f"127.0.0.1:{service.bound_port}"
        await wait_for(lambda a=address: _revocation_in_force(a, credentials), timeout_seconds=10)
    metric_before = _invocations()
    began = time.monotonic()
    calls, failures = 0, []
    for name, service in started.items():
        n, failed = await _attack(f"127.0.0.1:{service.bound_port}", name, credentials)
        calls, failures = calls + n, failures + failed
    print(f"AT-14 short: {calls} attack calls on {sum(len(methods((*d, *BUILTIN))) for _, d in SERVED.values())} "
          f"methods of {len(SERVED)} services in {time.monotonic() - began:.1f} s; {len(failures)} not refused as "
          f"expected; handler invocations {sum(counts.values())}")
    assert not failures, "\n".join(failures[:20])
    assert sum(counts.values()) == 0, counts
    assert _invocations() == metric_before
    # The control: an identity the method allows does reach the handler, and both counts see it.
    for name, service in started.items():
        policy, descriptors = SERVED[name]
        for path, method in methods(descriptors):
            creds = credentials.allowed(policy, path)
            if creds is None:
                continue
            async with grpc.aio.secure_channel(f"127.0.0.1:{service.bound_port}", creds) as channel:
                assert await call(channel, path, method) == "OK", path
            assert counts[path] == 1, path
            service_name, method_name = path[1:].split("/")
            assert _invocations()[(service_name, method_name)] == metric_before.get((service_name, method_name),
                                                                                     0) + 1


# --- full version: the real mesh -----------------------------------------------------------------------------------

def _scrape(port: int) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.labels["service"], s.labels["method"]): s.value
            for family in text_string_to_metric_families(text) if family.name == "haulmesh_rpc_handler_invocations"
            for s in family.samples if s.name.endswith("_total")}


@pytest.mark.chaos(seeds=1)
async def test_at14_full_on_the_real_mesh(mesh_pki: Pki, tmp_path: Path, chaos_seed: int, chaos_record) -> None:
    async with running_mesh(mesh_pki, tmp_path / "mesh", metrics=True, optional=("edi",),
                            env={"HAULMESH_REVOCATION_REFRESH_SECONDS": "0.5"}) as mesh:
        await _full(mesh, mesh_pki, chaos_record)


async def _full(mesh: Mesh, mesh_pki: Pki, chaos_record) -> None:
    credentials = Credentials.make(mesh_pki.ca)
    assert mesh.store is not None
    revoked_at = time.monotonic()
    await _revoke(mesh.store.url, credentials)
    for address in [mesh.address(name) for name in SERVED]:
        await wait_for(lambda a=address: _revocation_in_force(a, credentials), timeout_seconds=30)
    enforced_seconds = time.monotonic() - revoked_at
    before = {name: await asyncio.to_thread(_scrape, mesh.metrics_ports[name]) for name in SERVED}
    calls, failures = 0, []
    for name in SERVED:
        n, failed = await _attack(mesh.address(name), name, credentials)
        calls, failures = calls + n, failures + failed
    after = {name: await asyncio.to_thread(_scrape, mesh.metrics_ports[name]) for name in SERVED}
    attacked = {path[1:].split("/", 1)[0] for _, d in SERVED.values() for path, _ in methods((*d, *BUILTIN))}
    invoked = {f"{name} {key}": after[name][key] - before[name].get(key, 0)
               for name in SERVED for key in after[name]
               if key[0] in attacked and after[name][key] != before[name].get(key, 0)}
    chaos_record("AT-14", calls=calls, refused=calls - len(failures),
                 handler_invocations=sum(invoked.values()), revocation_enforced_seconds=round(enforced_seconds, 2))
    print(f"AT-14 full: {calls} attack calls, {len(failures)} not refused, handler invocations {invoked or 0}, "
          f"revocation enforced on every service {enforced_seconds:.2f} s after it was written")
    assert not failures, "\n".join(failures[:20])
    assert not invoked, invoked
