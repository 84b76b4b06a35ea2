"""Several worker processes of one service on one port: SO_REUSEPORT, and a parent that supervises them.

Python runs one core per process. A service that opts in (``run_service(..., scalable=True)``: the telemetry
service) runs ``HAULMESH_WORKERS`` copies of itself when told to; every worker binds the same gRPC (and probe)
port with SO_REUSEPORT, so the kernel spreads new connections — trucks' streams — across them. Each worker
keeps its own Prometheus endpoint, on ``HAULMESH_METRICS_PORT + worker index``, since a metrics registry is
per process. Beyond one machine the same service scales by replicas (Kubernetes) instead; there the chart
runs one worker per pod.

The parent only supervises: it starts the workers, forwards SIGTERM / SIGINT to them, restarts one that dies
on its own (the runtime's capped, jittered backoff, so a worker that cannot start does not spin; after
MAX_SHORT_RUNS runs in a row that each died within _HEALTHY_RUN_SECONDS it gives up, exit 2), and exits with the
worst exit status once all have stopped. Written here rather than taken from a supervisor daemon
(supervisord, circus): those are separate programs with their own configuration, while this is the service's
own entry point and has to stay one process tree for Kubernetes and `haulmesh run` alike.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from ._retry import Backoff

__all__ = ["WORKER_INDEX_ENV", "supervise_workers"]

_log = logging.getLogger("haulmesh.workers")

#: Set by the parent in each worker's environment: the worker's index, 0 to N-1.
WORKER_INDEX_ENV = "HAULMESH_WORKER_INDEX"
_BACKOFF_START_SECONDS, _BACKOFF_MAX_SECONDS = 0.5, 30.0
#: A worker that ran this long before dying starts again without delay (it was not a start-up failure).
_HEALTHY_RUN_SECONDS = 30.0
#: Runs in a row shorter than _HEALTHY_RUN_SECONDS after which a worker is given up on like a configuration error
#: (exit 2, and the service stops): one that dies at import every time would otherwise be restarted forever.
MAX_SHORT_RUNS = 5


async def _supervise(module: str, workers: int, grace_seconds: float) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    children: dict[int, asyncio.subprocess.Process] = {}
    worst = 0

    async def spawn(index: int) -> asyncio.subprocess.Process:
        env = {**os.environ, WORKER_INDEX_ENV: str(index)}
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", module, env=env,
                                                       stdin=asyncio.subprocess.DEVNULL)
        _log.info("worker %d started (pid %d)", index, process.pid)
        return process

    async def keep(index: int) -> None:
        nonlocal worst
        backoff = Backoff(_BACKOFF_START_SECONDS, _BACKOFF_MAX_SECONDS)
        short_runs = 0
        while not stopping.is_set():
            children[index] = process = await spawn(index)
            started = loop.time()
            code = await process.wait()
            if stopping.is_set():
                # A worker still starting when told to stop dies of the SIGTERM itself: that is a clean stop too.
                if code not in (0, -signal.SIGTERM):
                    worst = max(worst, code if code > 0 else 1)
                return
            if code == 2:  # configuration error: every restart would fail the same way
                _log.error("worker %d exited with a configuration error; stopping the service", index)
                worst = 2
                stopping.set()
                return
            if loop.time() - started >= _HEALTHY_RUN_SECONDS:
                backoff.reset()
                short_runs = 0
            else:
                short_runs += 1
                if short_runs >= MAX_SHORT_RUNS:
                    _log.error("worker %d exited %d times in a row within %g s of starting (last status %d): it "
                               "cannot start; stopping the service", index, short_runs, _HEALTHY_RUN_SECONDS, code)
                    worst = 2  # like a configuration error: the supervisor above (haulmesh run) gives up too
                    stopping.set()
                    return
            delay = backoff.next()
            _log.error("worker %d (pid %d) exited with %d; restarting in %.1fs", index, process.pid, code, delay)
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                pass

    keepers = [asyncio.create_task(keep(i)) for i in range(workers)]
    await stopping.wait()
    for process in children.values():
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    # Each worker drains within its own grace period; past that (and a margin), it is killed.
    _, late = await asyncio.wait(keepers, timeout=grace_seconds + 5)
    for process in children.values():
        if process.returncode is None:
            _log.error("worker pid %d did not stop in time; killing it", process.pid)
            process.kill()
    await asyncio.gather(*late, return_exceptions=True)
    return worst


def supervise_workers(module: str, workers: int, grace_seconds: float) -> int:
    """Run ``workers`` copies of ``python -m module`` until SIGTERM / SIGINT; the worst exit status."""
    return asyncio.run(_supervise(module, workers, grace_seconds))
