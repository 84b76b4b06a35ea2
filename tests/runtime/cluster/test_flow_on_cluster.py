"""The flow tests (tests/e2e) on the three-primary cluster: tender → offer → dispatch → delivery → invoice →
reconciled for two carriers, the cross-tenant matrix over every REST route, and a hundred concurrent creates
with one idempotency key — on a mesh whose store is the cluster.

``test_demo_runs_end_to_end`` is replaced by a run of scripts/demo.py with REDIS_URL set to the cluster (the
demo otherwise starts a mesh on its own embedded store).
"""

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_flow import (  # noqa: F401
    owned,
    test_hundred_concurrent_rest_creates_with_one_idempotency_key,
    test_no_tenant_sees_or_touches_another_tenants_resources,
)

from .valkey_cluster import ValkeyCluster

ROOT = Path(__file__).resolve().parents[3]


def test_the_demo_runs_on_the_cluster(tmp_path: Path) -> None:
    """`make demo` — REST tender to reconciliation with a simulated truck, a dead zone, webhooks and the audit
    check — with REDIS_URL pointing at a three-primary cluster instead of the embedded store.

    A cluster of its own: one store serves one mesh (two meshes on one store would share consumer groups, and
    the session's mesh would take the demo's events).
    """
    cluster = ValkeyCluster(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAULMESH_")}
    try:
        cluster.start()
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                                timeout=240, env={**env, "REDIS_URL": cluster.url})
    finally:
        cluster.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo complete" in result.stdout and "MATCHED" in result.stdout
    assert "every signature verified" in result.stdout and "all intact" in result.stdout
    print(result.stdout.strip().splitlines()[-1])
