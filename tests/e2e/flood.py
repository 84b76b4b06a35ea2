"""A tenant flooding the gateway, as a process of its own (AT-18), in windows the test commands.

``python -m tests.e2e.flood BASE_URL TOKEN PER_SECOND`` prints ``ready``, then reads commands on stdin, one a
line: ``SECONDS`` opens the window's connections and prints ``open``, then sends ``GET /api/v1/tenders`` at that
steady rate for that long (each on time, not after the previous answer), waits for every reply of the window and
prints one JSON object for it: every reply's status, the Retry-After values of the 429s, and the seconds from the
window's first request sent to its last reply. The test starts its own window on ``open``: a burst of new
connections (the gateway accepting twenty at once) is another load than a tenant over its quota on kept-alive
ones, and it used to land in the first milliseconds of every measured flood window.
Between windows it sends nothing (paused), so the test can measure another tenant alone and beside the flood in
alternating windows that share the machine's drift. End of stdin ends the process.

Its own process, so that the test's measurement of the other tenants' latency is not slowed by this client's work
in the same event loop; and a lean one (pre-built requests written on kept-alive sockets, replies read by their
Content-Length, no HTTP library): in production the flooding tenant's CPU is another
machine's, while here it shares the gateway's two cores, so every millisecond it spends would be charged to the
gateway's fairness. httpx cost about twice the gateway's own CPU per request.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from urllib.parse import urlsplit

#: Connections kept alive during a window, as a busy client would; opened at its start, closed at its end (the
#: gateway closes idle ones between windows anyway).
CONNECTIONS = 20


class _Connection:
    """One kept-alive HTTP/1.1 connection: a request written, its reply read, one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> tuple[int, str]:
        """(status, Retry-After) of the reply to ``request``."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        fields = {name.strip().lower(): value.strip() for name, value in headers.items()}
        await self.reader.readexactly(int(fields["content-length"]))
        return status, fields.get("retry-after", "")


async def _open(host: str, port: int) -> asyncio.Queue[_Connection]:
    """The window's kept-alive connections, idle."""
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        idle.put_nowait(_Connection(*await asyncio.open_connection(host, port)))
    return idle


async def _window(host: str, port: int, idle: asyncio.Queue[_Connection], request: bytes, per_second: float,
                  seconds: float) -> dict[str, object]:
    """One window of the flood over the ``idle`` connections: send, collect, summarise (see the module's
    docstring); the connections are closed at its end."""
    loop = asyncio.get_running_loop()
    retry_after: set[str] = set()

    async def one() -> int:
        connection = await idle.get()
        try:
            status, hint = await connection.exchange(request)
        except (OSError, asyncio.IncompleteReadError):  # a connection the server closed: counted as 0
            connection.writer.close()
            idle.put_nowait(_Connection(*await asyncio.open_connection(host, port)))
            return 0
        idle.put_nowait(connection)
        if status == 429:
            retry_after.add(hint)
        return status

    start, tasks = loop.time(), []
    for i in range(int(per_second * seconds)):
        await asyncio.sleep(max(0.0, start + i / per_second - loop.time()))
        tasks.append(asyncio.create_task(one()))
    replies = await asyncio.gather(*tasks)
    span = loop.time() - start
    while not idle.empty():
        idle.get_nowait().writer.close()
    return {"statuses": replies, "retry_after": sorted(retry_after), "span_seconds": span}


async def flood(base_url: str, token: str, per_second: float) -> None:
    """Serve the test's commands until stdin ends."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = (f"GET /api/v1/tenders?pageSize=10 HTTP/1.1\r\nHost: {url.netloc}\r\n"
               f"Authorization: Bearer {token}\r\nAccept: application/json\r\n\r\n").encode()
    gc.freeze()  # nothing this process keeps grows; a collection's pause would only make its rate uneven
    loop = asyncio.get_running_loop()
    print("ready", flush=True)  # imports done: the test may command its first window
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        idle = await _open(host, port)
        print("open", flush=True)
        print(json.dumps(await _window(host, port, idle, request, per_second, float(line))), flush=True)


if __name__ == "__main__":
    asyncio.run(flood(sys.argv[1], sys.argv[2], float(sys.argv[3])))
