"""The flow and telemetry tests again, on a local three-primary Valkey cluster (issue 5, Redis Cluster).

The cluster (:class:`~.valkey_cluster.ValkeyCluster`) runs from the same binary as the embedded store.
This folder overrides the store fixtures — ``store_url`` is the cluster's ``redis+cluster://`` URL,
``store_client`` the runtime's cluster client, ``mesh`` a mesh of its own on the cluster — and reuses the
telemetry fixtures, so the test functions imported by the modules here run unchanged against the cluster.
"""

from __future__ import annotations

import pytest
import redis.asyncio

from services.runtime import Mesh, connect_async
from tests.conftest import Pki, running_mesh
from tests.telemetry.conftest import telemetry  # noqa: F401  (reused as it is, on this store_url)

from .valkey_cluster import ValkeyCluster


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> ValkeyCluster:
    cluster = ValkeyCluster(tmp_path_factory.mktemp("valkey-cluster"))
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    print(f"\ncluster: {cluster.size} primaries on ports {cluster.ports}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def store_url(valkey_cluster: ValkeyCluster) -> str:
    return valkey_cluster.url


@pytest.fixture
async def store_client(store_url: str) -> redis.asyncio.Redis:
    client = connect_async(store_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def mesh(mesh_pki: Pki, valkey_cluster: ValkeyCluster, tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    """Every service as a real process, on the cluster (the mesh's PKI, a state folder of its own)."""
    import shutil

    state_dir = tmp_path_factory.mktemp("cluster-mesh")
    shutil.copytree(mesh_pki.directory, state_dir / "certs")
    async with running_mesh(mesh_pki, state_dir, redis_url=valkey_cluster.url) as mesh:
        yield mesh
