"""The HTTP listener's plumbing (services/gateway/rest/app.py), over real sockets."""

from __future__ import annotations

import asyncio

import httpx

from services.gateway.rest.app import HttpListener, _OneWriteTransport, create_app
from services.runtime import free_port, poll_until


async def test_what_one_turn_of_the_loop_writes_leaves_in_one_write_in_order() -> None:
    received = bytearray()
    closed = asyncio.Event()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.read())  # to the end of the stream
        closed.set()
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol,
                                                                      *server.sockets[0].getsockname()[:2])
    sent: list[bytes] = []
    write = transport.write
    transport.write = lambda data: (sent.append(bytes(data)), write(data))[-1]  # the real write, recorded
    one = _OneWriteTransport(transport)
    one.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    one.write(b"body")
    assert sent == []  # held until the turn ends
    await asyncio.sleep(0)
    assert sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"]
    big = b"x" * _OneWriteTransport.MAX_HELD_BYTES
    one.write(b"a")
    one.write(big)  # past the bound: written at once, with what was held before it
    assert sent[1:] == [b"a" + big]
    one.write(b"tail")
    one.close()  # what is held goes before the end of the stream
    assert sent[2:] == [b"tail"]
    await asyncio.wait_for(closed.wait(), timeout=10)
    assert bytes(received) == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody" + b"a" + big + b"tail"
    assert one.get_extra_info("peername") == server.sockets[0].getsockname()[:2]  # the rest passes through
    server.close()
    await server.wait_closed()


async def test_the_listener_answers_whole_responses_on_a_kept_alive_connection() -> None:
    async def ready() -> bool:
        return True

    port = free_port()
    listener = HttpListener(create_app(ready), "127.0.0.1", port)
    serving = asyncio.create_task(listener.run())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            await poll_until(lambda: _healthy(http), timeout_seconds=10)
            replies = [await http.get(path) for path in ("/healthz", "/readyz", "/nowhere", "/healthz")]
        assert [r.status_code for r in replies] == [200, 200, 404, 200]
        assert replies[1].json() == {"status": "ready"}
        assert replies[2].json()["details"][0]["reason"] == "ROUTE_NOT_FOUND"
    finally:
        await listener.stop()
        await serving


async def _healthy(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False
