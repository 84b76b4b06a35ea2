"""The fault proxy (tests/faultproxy.py) with real sockets: an echo server behind it, a client in front."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import wait_for
from tests.faultproxy import FaultProxy


class Echo:
    """An upstream that echoes what it reads and records it, and how each of its connections ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.endings: list[str] = []  # "eof" or "reset", per connection
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handlers.add(asyncio.current_task())
        try:
            while chunk := await reader.read(65536):
                self.received += chunk
                writer.write(chunk)
                await writer.drain()
            self.endings.append("eof")
        except ConnectionResetError:
            self.endings.append("reset")
        finally:
            writer.close()

    @property
    def address(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    yield server
    server.server.close()
    for task in server.handlers:  # connections the proxy left open (a blackholed link's far end)
        task.cancel()
    await asyncio.gather(*server.handlers, return_exceptions=True)


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(proxy.host, proxy.port)


async def test_passes_bytes_both_ways(echo: Echo, fault_proxy) -> None:
    proxy = await fault_proxy(echo.address)
    reader, writer = await connect(proxy)
    payload = bytes(range(256)) * 4096  # 1 MiB: many chunks, order must hold
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    writer.close()
    await wait_for(lambda: echo.endings == ["eof"])  # a FIN passes as a FIN


async def test_latency_is_added_each_way_and_order_kept(echo: Echo, fault_proxy) -> None:
    proxy = await fault_proxy(echo.address)
    proxy.delay(0.2)
    reader, writer = await connect(proxy)
    started = time.monotonic()
    for i in range(20):
        writer.write(b"%03d" % i)
        await writer.drain()
    echoed = await reader.readexactly(60)
    elapsed = time.monotonic() - started
    assert echoed == b"".join(b"%03d" % i for i in range(20))
    assert elapsed >= 0.4  # 0.2 s out, 0.2 s back
    proxy.pass_through()
    started = time.monotonic()
    writer.write(b"x")
    assert await reader.readexactly(1) == b"x"
    assert time.monotonic() - started < 0.4
    writer.close()


async def test_reset_cuts_both_sides_with_rst(echo: Echo, fault_proxy) -> None:
    proxy = await fault_proxy(echo.address)
    reader, writer = await connect(proxy)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    assert proxy.reset() == 1
    with pytest.raises(ConnectionResetError):  # a RST, not an orderly end of stream (that would read b"")
        while await reader.read(1024):
            pass
    await wait_for(lambda: echo.endings == ["reset"])
    # A one-shot cut: the next connection passes.
    reader, writer = await connect(proxy)
    writer.write(b"again")
    assert await reader.readexactly(5) == b"again"
    writer.close()


async def test_reset_refusing_new_connections_until_pass_through(echo: Echo, fault_proxy) -> None:
    proxy = await fault_proxy(echo.address)
    proxy.reset(refuse_new=True)
    reader, writer = await connect(proxy)  # the kernel completes the handshake; the proxy answers with RST
    with pytest.raises(ConnectionResetError):
        while await reader.read(1024):
            pass
    assert echo.received == b""
    proxy.pass_through()
    reader, writer = await connect(proxy)
    writer.write(b"ok")
    assert await reader.readexactly(2) == b"ok"
    writer.close()


async def test_blackhole_swallows_and_keeps_the_sockets_open(echo: Echo, fault_proxy) -> None:
    proxy = await fault_proxy(echo.address)
    reader, writer = await connect(proxy)
    writer.write(b"before")
    assert await reader.readexactly(6) == b"before"
    proxy.blackhole()
    writer.write(b"lost" * 1000)
    await writer.drain()
    # The proxy read every byte (the client's writes succeed, as over a link that died silently) ...
    await wait_for(lambda: proxy.bytes_swallowed >= 4000)
    # ... and forwarded none, ending nothing: no FIN or RST reached either end.
    assert bytes(echo.received) == b"before"
    assert echo.endings == [] and not reader.at_eof() and not writer.is_closing()
    assert proxy.open_connections == 1
    # A new connection is accepted and held: nothing of it reaches the upstream while the blackhole lasts.
    late_reader, late_writer = await connect(proxy)
    late_writer.write(b"hello?")
    await wait_for(lambda: proxy.accepted == 2)
    assert bytes(echo.received) == b"before" and not late_reader.at_eof()
    # Passing again: the held connection goes through with what it sent, new ones work, and the connection
    # blackholed while open stays silent (its stream has a hole).
    proxy.pass_through()
    assert await late_reader.readexactly(6) == b"hello?"
    fresh_reader, fresh_writer = await connect(proxy)
    fresh_writer.write(b"after")
    assert await fresh_reader.readexactly(5) == b"after"
    writer.write(b"still lost")
    await wait_for(lambda: proxy.bytes_swallowed >= 4010)
    assert sorted([bytes(echo.received[6:12]), bytes(echo.received[12:])]) == [b"after", b"hello?"]
    # An end that gives up (as keepalive makes it) closes its own socket; the far end of a blackholed link is
    # not told (the echo server still holds its side), so that link stays; the others are let go.
    for w in (writer, late_writer, fresh_writer):
        w.close()
        with contextlib.suppress(ConnectionError):
            await w.wait_closed()
    await wait_for(lambda: proxy.open_connections == 1)
    await wait_for(lambda: echo.endings == ["eof", "eof"])  # the two passed connections' orderly ends


async def test_blackhole_then_reset_refusing_resets_the_held_connections(echo: Echo, fault_proxy) -> None:
    proxy = await fault_proxy(echo.address)
    proxy.blackhole()
    reader, writer = await connect(proxy)
    writer.write(b"held")
    await wait_for(lambda: proxy.accepted == 1)
    proxy.reset(refuse_new=True)
    with pytest.raises(ConnectionResetError):
        while await reader.read(1024):
            pass
    assert echo.received == b""


async def test_upstream_down_is_a_refused_connection(fault_proxy) -> None:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening: refused
        proxy = await fault_proxy(address)
        reader, _ = await connect(proxy)
        with pytest.raises(ConnectionResetError):
            while await reader.read(1024):
                pass
