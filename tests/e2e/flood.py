"""A tenant flooding the gateway, as a process of its own (AT-18), in windows the test commands.

``python -m tests.e2e.flood BASE_URL TOKEN PER_SECOND`` prints ``ready``, then reads commands on stdin, one a
line: ``SECONDS`` sends ``GET /api/v1/tenders`` at that steady rate for that long (each on time, not after the
previous answer), waits for every reply of the window and prints one JSON object for it: every reply's status,
the Retry-After values of the 429s, and the seconds from the window's first request sent to its last reply.
Between windows it sends nothing (paused), so the test can measure another tenant alone and beside the flood in
alternating windows that share the machine's drift. End of stdin ends the process. Its own process, so that the
test's measurement of the other tenants' latency is not slowed by this client's work in the same event loop."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx


async def _window(http: httpx.AsyncClient, token: str, per_second: float, seconds: float) -> dict[str, object]:
    """One window of the flood: send, collect, summarise (see the module's docstring)."""
    headers = {"Authorization": f"Bearer {token}"}
    loop = asyncio.get_running_loop()
    retry_after: set[str] = set()

    async def one() -> int:
        try:
            reply = await http.get("/api/v1/tenders", params={"pageSize": "10"}, headers=headers)
        except httpx.TransportError:  # a connection the server closed (idle keep-alive ending): counted as 0
            return 0
        if reply.status_code == 429:
            retry_after.add(reply.headers.get("retry-after") or "")
        return reply.status_code

    start, tasks = loop.time(), []
    for i in range(int(per_second * seconds)):
        await asyncio.sleep(max(0.0, start + i / per_second - loop.time()))
        tasks.append(asyncio.create_task(one()))
    replies = await asyncio.gather(*tasks)
    return {"statuses": replies, "retry_after": sorted(retry_after), "span_seconds": loop.time() - start}


async def flood(base_url: str, token: str, per_second: float) -> None:
    """Serve the test's commands until stdin ends; 20 connections kept alive, as a busy client would."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=20)) as http:
        print("ready", flush=True)  # imports done, client built: the test may command its first window
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            print(json.dumps(await _window(http, token, per_second, float(line))), flush=True)


if __name__ == "__main__":
    asyncio.run(flood(sys.argv[1], sys.argv[2], float(sys.argv[3])))
