"""Periodic loops (sweeps, lapses, liveness checks) that survive a failing tick and stop promptly.

Every service has loops of the same shape: do a pass, sleep, again until the service stops. Written once here
so that each one logs a pass failed by a transient fault and carries on with capped, jittered backoff (a store
restarting must not end the process; a programming error does, for its supervisor to restart it), tells the
service whether it is making progress (its health turns NOT_SERVING while a loop fails, SERVING again after a
good pass), and wakes at once when the service stops instead of finishing its sleep.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from ._retry import Backoff, is_peer_fault, is_transient

__all__ = ["Periodic", "poll_until"]

_log = logging.getLogger("haulmesh.periodic")


async def poll_until(predicate: Callable[[], object], *, timeout_seconds: float, interval_seconds: float = 0.05,
                     what: str = "condition") -> object:
    """Call ``predicate`` (sync, or returning an awaitable) until it returns something true, and return that;
    TimeoutError naming ``what`` when ``timeout_seconds`` pass first. For waiting on another process's work
    (a mesh coming up, an event arriving), where there is nothing to subscribe to."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not met within {timeout_seconds:g} s")
        await asyncio.sleep(interval_seconds)


#: A pass returns how long to wait before the next one (seconds), or None for the loop's interval.
Tick = Callable[[], Awaitable[float | None]]
#: Told ``(loop name, making progress)`` when a loop starts failing and when it recovers.
Progress = Callable[[str, bool], None]


class Periodic:
    """Runs ``tick`` every ``interval_seconds`` until :meth:`stop`.

    ``tick`` may return the delay before its next pass (a loop that knows when its next work is due, like the
    offer lapser); None means the interval. A pass that raises a transient error (``is_transient``: the store or a
    peer) is logged and retried after a jittered backoff whose ceiling doubles from ``interval_seconds`` up to
    ``max_backoff_seconds`` (the runtime's Backoff), and resets after the next good pass. ``progress`` (the
    Service's health) hears ``(name, False)`` at the first failed pass (unless a peer service failed it: see
    ``is_peer_fault``) and ``(name, True)`` at the next good one. Any other error (a bug) is raised: it ends
    :meth:`run`, and with it the process.
    """

    def __init__(self, name: str, tick: Tick, *, interval_seconds: float,
                 max_backoff_seconds: float = 30.0, progress: Progress | None = None) -> None:
        if interval_seconds <= 0:
            raise ValueError(f"{name}: interval_seconds must be > 0, got {interval_seconds}")
        self.name = name
        self._tick = tick
        self._interval_seconds = interval_seconds
        self._max_backoff_seconds = max(max_backoff_seconds, interval_seconds)
        self._stopping = asyncio.Event()
        self._progress = progress

    async def run(self) -> None:
        backoff = Backoff(self._interval_seconds, self._max_backoff_seconds)
        stuck = False  # reported as not making progress
        while not self._stopping.is_set():
            try:
                delay = await self._tick()
                if stuck and self._progress is not None:
                    self._progress(self.name, True)
                stuck = False
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    # A bug in a pass fails every pass: logging it forever with the part NOT_SERVING forever helps
                    # nobody. It ends the process (the Service's keeper re-raises it), which its supervisor restarts.
                    raise
                # A transient store or peer fault: log it, back off, try again.
                if not stuck and self._progress is not None and not is_peer_fault(exc):
                    self._progress(self.name, False)
                    stuck = True
                delay = backoff.next()
                _log.exception("%s: pass failed (%d in a row); next in %.1fs", self.name, backoff.failures, delay)
            if delay is None:
                delay = self._interval_seconds
            try:
                await asyncio.wait_for(self._stopping.wait(), max(0.0, delay))
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stopping.set()
