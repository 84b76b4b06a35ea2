"""A tenant flooding the gateway, as a process of its own (AT-18).

``python -m tests.e2e.flood BASE_URL TOKEN PER_SECOND SECONDS`` prints ``ready``, then sends ``GET
/api/v1/tenders`` at that steady rate (each on time, not after the previous answer) and prints one JSON object:
every reply's status, the Retry-After values of the 429s, and the seconds from the first request sent to the
last reply. Its own process, so that the test's measurement of another tenant's
latency is not slowed by this client's work in the same event loop."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx


async def flood(base_url: str, token: str, per_second: float, seconds: float) -> dict[str, object]:
    """Send, collect, summarise (see the module's docstring); 20 connections kept alive, as a busy client would."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=20)) as http:
        loop = asyncio.get_running_loop()

        async def one() -> int:
            try:
                reply = await http.get("/api/v1/tenders", params={"pageSize": "10"}, headers=headers)
            except httpx.TransportError:  # a connection the server closed (idle keep-alive ending): counted as 0
                return 0
            if reply.status_code == 429:
                retry_after.add(reply.headers.get("retry-after") or "")
            return reply.status_code

        retry_after: set[str] = set()

        start, tasks = loop.time(), []
        for i in range(int(per_second * seconds)):
            await asyncio.sleep(max(0.0, start + i / per_second - loop.time()))
            tasks.append(asyncio.create_task(one()))
        replies = await asyncio.gather(*tasks)
        span = loop.time() - start
    return {"statuses": replies, "retry_after": sorted(retry_after), "span_seconds": span}


if __name__ == "__main__":
    base, token, rate, duration = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    print("ready", flush=True)  # imports done: the test starts measuring beside the flood now
    print(json.dumps(asyncio.run(flood(base, token, rate, duration))))
