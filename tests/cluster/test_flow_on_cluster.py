"""The flow tests (tests/e2e) on the three-primary cluster: tender → offer → dispatch → delivery → invoice →
reconciled for two carriers, the cross-tenant matrix over every REST route, and a hundred concurrent creates
with one idempotency key — on a mesh whose store is the cluster.

Left out: ``test_demo_runs_end_to_end`` runs scripts/demo.py, which starts a mesh on its own embedded store.
"""

from tests.e2e.test_flow import (  # noqa: F401
    test_hundred_concurrent_rest_creates_with_one_idempotency_key,
    test_no_tenant_sees_or_touches_another_tenants_resources,
)
