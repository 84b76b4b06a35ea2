"""Gateway rules that are the gateway's own: webhook subscriptions. Plain Python: no gRPC, no Redis.

Destination checks (no private, loopback or link-local addresses), Standard Webhooks signing and the
retry schedule grow here (issue 3).
"""

from __future__ import annotations

from services.runtime import parse_name

__all__ = ["parse_subscription_name"]


def parse_subscription_name(name: str, *, field: str = "name") -> str:
    return parse_name(name, "webhookSubscriptions", field=field)
