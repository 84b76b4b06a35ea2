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
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=200)) as http:
        loop = asyncio.get_running_loop()

        async def one() -> httpx.Response:
            return await http.get("/api/v1/tenders", params={"pageSize": "10"}, headers=headers)

        start, tasks = loop.time(), []
        for i in range(int(per_second * seconds)):
            await asyncio.sleep(max(0.0, start + i / per_second - loop.time()))
            tasks.append(asyncio.create_task(one()))
        replies = await asyncio.gather(*tasks)
        span = loop.time() - start
    return {"statuses": [r.status_code for r in replies],
            "retry_after": sorted({r.headers.get("retry-after") or "" for r in replies if r.status_code == 429}),
            "span_seconds": span}


if __name__ == "__main__":
    base, token, rate, duration = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    print("ready", flush=True)  # imports done: the test starts measuring beside the flood now
    print(json.dumps(asyncio.run(flood(base, token, rate, duration))))
