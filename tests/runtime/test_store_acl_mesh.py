"""The whole mesh works with store users on (issue 12): every service of the session's mesh logs in to the
embedded store as its own ACL user, a tender goes all the way to an invoice, and the store refused nothing."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import redis

from services.runtime import STORE_USERS, EmbeddedStore, Mesh

from ..conftest import Pki
from ..e2e.test_flow import _owners_resources


def _refusals(mesh: Mesh) -> list[dict]:
    """The store's ACL LOG (every command or key it refused, by whom), read as the admin."""
    assert mesh.store is not None, "the session mesh runs on its embedded store"
    admin = redis.Redis.from_url(mesh.store.url, socket_timeout=5)
    try:
        return [{k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
                for entry in admin.acl_log()]
    finally:
        admin.close()


async def test_each_service_logs_in_as_its_own_store_user(mesh: Mesh) -> None:
    assert mesh.store is not None
    admin = redis.Redis.from_url(mesh.store.url, socket_timeout=5)
    try:
        users = {entry["user"] for entry in admin.client_list()}
    finally:
        admin.close()
    store = EmbeddedStore(mesh.state_dir / "store")
    for name in mesh.children:
        assert name in users, f"no connection of store user {name}: {sorted(users)}"
        assert urlsplit(store.user_url(name)).username == name
    assert "default" not in users
    assert set(mesh.children) <= set(STORE_USERS)


async def test_a_tender_reaches_its_invoice_with_nothing_refused(mesh: Mesh, mesh_pki: Pki) -> None:
    """REST with a token (gateway: rate limit, idempotency), offer (tender, billing's quote), dispatch and
    check-in (mission), a truck's signed frame (telemetry), proof of delivery, usage and the invoice (billing's
    consumers): the whole path on least-privilege users, and the store's ACL log empty."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", timeout=20) as http:
        resources = await _owners_resources(mesh, mesh_pki, http, "acl-owner")
    assert set(resources) == {"tenders", "facilities", "missions", "quotes", "invoices", "rateCards", "vehicles"}
    assert _refusals(mesh) == [], "the store refused a service's command or key (ACL LOG)"
