"""The workers' supervisor (HAULMESH_WORKERS > 1) gives up on a worker that dies at every start, exit 2, instead of
restarting it forever (real processes: a module that cannot even be imported)."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime import _workers


async def test_a_worker_that_dies_at_every_start_is_given_up(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_workers, "_BACKOFF_START_SECONDS", 0.05)
    code = await asyncio.wait_for(_workers._supervise("haulmesh_no_such_module", 1, 1.0), 60)
    assert code == 2  # like a configuration error: `haulmesh run` above gives up on the service too
    assert f"exited {_workers.MAX_SHORT_RUNS} times in a row" in caplog.text
