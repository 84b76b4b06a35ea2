"""The chaos runner's pytest plugin (loaded by tests/conftest.py): seeds, selection and ``build/chaos.json``.

Issue 11's acceptance tests come in two sizes. The full one is marked ``@pytest.mark.chaos`` and runs only with
``--chaos`` (``make chaos``), once per seed of ``--chaos-seeds``; the short one (one seed, smaller counts) is an
ordinary test that ``make test`` runs. A test takes its seed from the ``chaos_seed`` fixture (parametrized here)
and reports what it measured through the ``chaos_record`` fixture::

    @pytest.mark.chaos
    async def test_at09_full(chaos_seed: int, chaos_record) -> None:
        rng = random.Random(chaos_seed)
        ...
        chaos_record("AT-09", detect_seconds=2.1, bound_seconds=3.0)

With ``--chaos-json PATH`` the session writes PATH: an object keyed by acceptance id (``"AT-09"`` ...), each
``{"pass": every run passed, "seed": the seed of the first failed run (else of the first run), "figure": that
run's figures, "runs": [{"seed", "pass", "figure", "test"}, ...]}``. A run passes when its test passed; a run
whose test failed before recording still appears, with the id its ``chaos_id`` marker names.

Under ``--chaos`` a row cannot go missing silently: every id of :data:`REQUIRED_IDS` that no run reported is written
``{"pass": false, "reason": "not run"}`` and fails the session (exit 1), whatever else passed. Never in
``make test`` (no ``--chaos``): there the short versions run alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

__all__ = ["DEFAULT_SEEDS", "REQUIRED_IDS"]

#: The acceptance ids ``make chaos`` must report, each from at least one run (issue 11's and issue 12's tables).
REQUIRED_IDS = ("AT-01", "AT-02", "AT-03", "AT-04", "AT-05", "AT-06", "AT-08", "AT-09", "AT-10", "AT-11", "AT-12",
                "AT-14", "AT-15", "AT-16", "AT-17", "AT-18", "AT-19", "AT-20", "R-1", "W-1", "W-2")

#: Seeds of ``make chaos`` unless --chaos-seeds (or HAULMESH_CHAOS_SEEDS) says otherwise; the short versions use
#: the first.
DEFAULT_SEEDS = (11, 23, 37)

_RUNS = pytest.StashKey[list[dict[str, Any]]]()
_RECORDED = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "issue 11's acceptance tests at full strength")
    group.addoption("--chaos", action="store_true", default=False,
                    help="run the tests marked chaos (make chaos); without it they are deselected")
    group.addoption("--chaos-seeds", default=os.environ.get("HAULMESH_CHAOS_SEEDS", ""),
                    help=f"comma-separated seeds for the chaos tests (default {','.join(map(str, DEFAULT_SEEDS))})")
    group.addoption("--chaos-json", default=None, help="write the chaos tests' results to this JSON file")


def pytest_configure(config: pytest.Config) -> None:
    # The markers chaos and chaos_id are registered in pyproject.toml, with the other pytest settings.
    config.stash[_RUNS] = []


def _seeds(config: pytest.Config) -> list[int]:
    raw = config.getoption("chaos_seeds")
    if not raw:
        return list(DEFAULT_SEEDS)
    try:
        return [int(s) for s in raw.split(",") if s.strip()]
    except ValueError:
        raise pytest.UsageError(f"--chaos-seeds must be comma-separated integers, got {raw!r}") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "chaos_seed" not in metafunc.fixturenames:
        return
    seeds = _seeds(metafunc.config)
    marker = metafunc.definition.get_closest_marker("chaos")
    # The short version runs with one seed; a long chaos test may ask for fewer (``chaos(seeds=1)``).
    seeds = seeds[:1] if marker is None else seeds[:marker.kwargs.get("seeds", len(seeds))]
    metafunc.parametrize("chaos_seed", seeds, ids=[f"seed{s}" for s in seeds])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("chaos"):
        return
    deselected = [item for item in items if item.get_closest_marker("chaos") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("chaos") is None]


@pytest.fixture
def chaos_record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``chaos_record("AT-09", figure=..., ...)``: what this run measured, under its acceptance id. Call it
    before the test's final assertions, so a failed run still reports its figures."""

    def record(test_id: str, **figure: Any) -> None:
        request.node.stash[_RECORDED] = {"id": test_id, "figure": figure}

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    failed_setup = report.when == "setup" and report.failed
    if report.when == "call" or failed_setup:
        recorded = item.stash.get(_RECORDED, None)
        marker = item.get_closest_marker("chaos_id")
        test_id = recorded["id"] if recorded else (marker.args[0] if marker else None)
        callspec = getattr(item, "callspec", None)
        if test_id is not None and item.get_closest_marker("chaos") is not None:
            item.config.stash[_RUNS].append({
                "id": test_id, "test": item.nodeid, "pass": report.passed,
                "seed": callspec.params.get("chaos_seed") if callspec else None,
                "figure": recorded["figure"] if recorded else {},
            })
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    chaos = session.config.getoption("chaos")
    path = session.config.getoption("chaos_json")
    if not path and not chaos:
        return
    results: dict[str, Any] = {}
    for run in session.config.stash[_RUNS]:
        entry = results.setdefault(run["id"], {"pass": True, "seed": run["seed"], "figure": run["figure"],
                                               "runs": []})
        entry["runs"].append({k: run[k] for k in ("seed", "pass", "figure", "test")})
        if not run["pass"] and entry["pass"]:  # the first failed run is the one to show
            entry.update({"pass": False, "seed": run["seed"], "figure": run["figure"]})
    missing = [test_id for test_id in REQUIRED_IDS if test_id not in results] if chaos else []
    for test_id in missing:
        results[test_id] = {"pass": False, "reason": "not run", "runs": []}
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"chaos: no run reported {', '.join(missing)}: not run, the session fails", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    temporary.replace(target)
