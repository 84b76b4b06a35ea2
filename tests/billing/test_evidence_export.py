"""Evidence export's bound: at most HAULMESH_BILLING_EVIDENCE_MAX_CONCURRENT packs are built at once per process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from haulmesh.billing.v1 import evidence_service_pb2
from services.billing.config import BillingConfig
from services.billing.evidence.usecases import EvidenceExport


async def test_exports_beyond_the_bound_wait_their_turn() -> None:
    config = BillingConfig(default_rate_card=None, evidence_max_concurrent=2)
    export = EvidenceExport(None, None, config, mission=lambda: None, telemetry=lambda: None,  # type: ignore[arg-type]
                            ca_file=Path("unused"))
    running, peak, release = 0, 0, asyncio.Event()
    entered = asyncio.Queue()

    async def build(carrier: str, request: evidence_service_pb2.ExportEvidencePackRequest) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await entered.put(request.mission)
        await release.wait()
        running -= 1
        return b"pack"

    export._export = build  # the bound is export()'s; what it guards is replaced by a gate the test holds
    tasks = [asyncio.create_task(export.export("acme", evidence_service_pb2.ExportEvidencePackRequest(
        mission=f"missions/m{i}"))) for i in range(5)]
    first = {await entered.get(), await entered.get()}
    assert len(first) == 2 and entered.empty() and running == 2  # the other three wait
    release.set()
    assert await asyncio.gather(*tasks) == [b"pack"] * 5
    assert peak == 2
