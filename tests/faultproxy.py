"""A TCP proxy the tests put between any two parts (truck ↔ telemetry, service ↔ store, service ↔ service) to
inject network faults for real, switchable while traffic flows:

* ``pass_through()`` forwards bytes both ways (the start state);
* ``delay(seconds)`` adds that latency each way to every chunk, order kept (a slow link, a slow store);
* ``reset(refuse_new=...)`` cuts every open connection with a TCP RST on both sides (``SO_LINGER`` 0, the way a
  crashed peer or a middlebox that dropped the flow answers), and with ``refuse_new`` resets new connections too
  until ``pass_through()``;
* ``blackhole()`` keeps every open socket open and reads what arrives but forwards nothing, either way: the
  half-open link a truck leaving coverage or a NAT that forgot the flow leaves behind, which only keepalive or a
  timeout can find (no FIN, no RST ever reaches either end). New connections are accepted and held, unread and
  not forwarded, until the proxy passes again (as a SYN retransmitted through an outage gets through once the
  link is back): then they reach the upstream with what their client sent.

A connection that was blackholed while open stays silent until an end closes it (its byte stream has a hole:
TLS could not resume it). The ``fault_proxy`` fixture makes proxies that are closed after the test. Unit tests:
tests/test_faultproxy.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

import pytest

__all__ = ["FaultProxy", "Mode", "fault_proxy"]

_CHUNK_BYTES = 64 * 1024
#: Chunks queued per direction before the proxy stops reading that side (TCP then pushes back on the sender),
#: so added latency never makes the proxy buffer without bound.
_QUEUED_CHUNKS = 64


class Mode(Enum):
    """What the proxy does with traffic now."""

    PASS = "pass"
    RESET = "reset"
    BLACKHOLE = "blackhole"


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Link:
    """One proxied connection: the accepted socket and the one to the upstream."""

    downstream: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    blackholed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.downstream, self.upstream) if w is not None]


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN: linger on, timeout 0, then close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A loopback TCP proxy in front of ``upstream`` (``host:port``) whose behaviour the test switches at runtime."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1") -> None:
        upstream_host, _, upstream_port = upstream.rpartition(":")
        self.upstream = (upstream_host, int(upstream_port))
        self.host = host
        self.port = 0
        self.mode = Mode.PASS
        #: Latency added each way, in seconds (``delay``).
        self.latency_seconds = 0.0
        #: Counters for the tests: connections accepted, reset by a cut, bytes forwarded and swallowed.
        self.accepted = 0
        self.resets = 0
        self.bytes_forwarded = 0
        self.bytes_swallowed = 0
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()  # one per accepted connection, awaited by close()
        self._passing = asyncio.Event()  # set unless blackholed: connections accepted meanwhile wait for it
        self._passing.set()
        self._server: asyncio.Server | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        """host:port to give the client instead of the upstream's."""
        return f"{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def close(self) -> None:
        """Stop listening and reset every connection still open."""
        if self._server is not None:
            self._server.close()
        self.mode = Mode.RESET
        self._passing.set()
        for link in list(self._links):
            await self._drop(link, rst=True)
        # Let every connection's handler see its end, so none is left for the event loop to cancel.
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- faults ---------------------------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Forward again, without added latency (connections blackholed while open stay silent; those accepted
        during the blackhole go through now)."""
        self.delay(0.0)

    def delay(self, seconds: float) -> None:
        """Forward with ``seconds`` of latency each way (0 removes it)."""
        self.mode, self.latency_seconds = Mode.PASS, seconds
        self._passing.set()

    def reset(self, *, refuse_new: bool = False) -> int:
        """RST every open connection on both sides; with ``refuse_new``, new ones too until ``pass_through()``.
        Returns how many connections were cut."""
        if refuse_new:
            self.mode = Mode.RESET
            self._passing.set()  # connections held by a blackhole are reset too
        links = list(self._links)
        for link in links:
            self.resets += 1
            for writer in link.writers():
                _rst(writer)
            self._links.discard(link)
        return len(links)

    def blackhole(self) -> None:
        """Swallow everything, both ways, on open and new connections; every socket stays open."""
        self.mode = Mode.BLACKHOLE
        self._passing.clear()
        for link in self._links:
            link.blackholed = True

    # -- plumbing -------------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(downstream=writer)
        self._links.add(link)
        # Blackholed: held, unread; nothing reaches the upstream, not even the connection.
        await self._passing.wait()
        if self.mode is Mode.RESET or link not in self._links:
            self._links.discard(link)
            self.resets += 1
            _rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._links.discard(link)
            _rst(writer)  # the upstream is down: the client sees its connection refused, as it would directly
            return
        link.upstream = up_writer
        if link not in self._links:  # reset while connecting
            _rst(up_writer)
            return
        link.tasks = [asyncio.create_task(self._pump(link, reader, up_writer)),
                      asyncio.create_task(self._pump(link, up_reader, writer))]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        await self._drop(link, rst=False)

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one side, and forward to the other after the latency in force when the chunk arrived; a queue
        between them keeps the order, and its bound keeps the proxy's memory small."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUED_CHUNKS)
        loop = asyncio.get_running_loop()

        async def send() -> None:
            while (item := await queue.get()) is not None:
                due, chunk = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if link.blackholed:
                    self.bytes_swallowed += len(chunk)
                    continue
                writer.write(chunk)
                await writer.drain()
                self.bytes_forwarded += len(chunk)

        sender = asyncio.create_task(send())
        try:
            while chunk := await reader.read(_CHUNK_BYTES):
                if link.blackholed:
                    self.bytes_swallowed += len(chunk)
                    continue
                await queue.put((loop.time() + self.latency_seconds, chunk))
            await queue.put(None)  # EOF: forward what is queued, then half-close like the sender did
            await sender
            if not link.blackholed and writer.can_write_eof():
                with contextlib.suppress(OSError):
                    writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            # This side was reset: pass the reset on (a blackholed link passes nothing, not even that).
            if not link.blackholed:
                for other in link.writers():
                    _rst(other)
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender

    async def _drop(self, link: _Link, *, rst: bool) -> None:
        self._links.discard(link)
        for task in link.tasks:
            task.cancel()
        for writer in link.writers():
            if rst:
                _rst(writer)
            else:
                writer.close()


@pytest.fixture
async def fault_proxy() -> AsyncIterator[Callable[[str], Awaitable[FaultProxy]]]:
    """A factory: ``proxy = await fault_proxy("127.0.0.1:50053")`` starts a FaultProxy in front of that address
    (clients go to ``proxy.address``); every proxy made is closed after the test."""
    made: list[FaultProxy] = []

    async def make(upstream: str) -> FaultProxy:
        proxy = await FaultProxy(upstream).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.close()
