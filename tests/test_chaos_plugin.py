"""The chaos runner's plugin (tests/chaos.py), run as make does on a tiny suite: selection, seeds, chaos.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.chaos import REQUIRED_IDS

ROOT = Path(__file__).resolve().parents[1]

SUITE = '''
import pytest

def test_short(chaos_seed, chaos_record):
    chaos_record("AT-99", figure=chaos_seed)

@pytest.mark.chaos
def test_full(chaos_seed, chaos_record):
    chaos_record("AT-99", figure=chaos_seed * 10)
    assert chaos_seed != 2, "fails on seed 2"

@pytest.mark.chaos(seeds=1)
def test_long(chaos_seed, chaos_record):
    chaos_record("AT-98", figure=chaos_seed)

@pytest.mark.chaos
@pytest.mark.chaos_id("AT-97")
def test_broken_before_recording(chaos_seed):
    raise RuntimeError("no figure")
'''


def run(tmp_path: Path, *args: str, suite: str = SUITE) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_suite.py").write_text(suite)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HAULMESH_CHAOS_SEEDS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.chaos", "-p", "no:cacheprovider",
                           "-p", "no:asyncio", "-q", "-o", "markers=chaos\nchaos_id", *args,
                           str(tmp_path / "test_suite.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_without_chaos_only_the_short_versions_run_once(tmp_path: Path) -> None:
    result = run(tmp_path, "--chaos-json", str(tmp_path / "chaos.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 7 deselected" in result.stdout  # 3 + 1 + 3 seeded full runs
    assert json.loads((tmp_path / "chaos.json").read_text()) == {}  # short versions are not chaos results


def test_make_chaos_runs_each_seed_and_writes_results_by_id(tmp_path: Path) -> None:
    out = tmp_path / "build" / "chaos.json"
    result = run(tmp_path, "-m", "chaos", "--chaos", "--chaos-seeds", "1,2,3", "--chaos-json", str(out))
    assert result.returncode == 1, result.stdout + result.stderr  # seed 2 fails, and AT-97 fails
    results = json.loads(out.read_text())
    assert set(results) == {"AT-97", "AT-98", "AT-99", *REQUIRED_IDS}  # the required ids not run: "not run"
    at99 = results["AT-99"]
    assert at99["pass"] is False and at99["seed"] == 2 and at99["figure"] == {"figure": 20}
    assert [(r["seed"], r["pass"]) for r in at99["runs"]] == [(1, True), (2, False), (3, True)]
    assert results["AT-98"] == {"pass": True, "seed": 1, "figure": {"figure": 1}, "runs": [
        {"seed": 1, "pass": True, "figure": {"figure": 1}, "test": results["AT-98"]["runs"][0]["test"]}]}
    assert results["AT-97"]["pass"] is False and len(results["AT-97"]["runs"]) == 3


#: Every required id recorded by a passing chaos run, but one (``skip``) that is left out.
ALL_BUT = '''
import pytest

@pytest.mark.chaos(seeds=1)
@pytest.mark.parametrize("test_id", {ids!r})
def test_row(chaos_seed, chaos_record, test_id):
    chaos_record(test_id, figure=1)
'''


def test_make_chaos_fails_on_a_required_row_no_run_reported(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    ids = [i for i in REQUIRED_IDS if i != "W-2"]
    result = run(tmp_path, "--chaos", "--chaos-json", str(out), suite=ALL_BUT.format(ids=ids))
    assert result.returncode == 1, result.stdout + result.stderr  # every test passed; a row is missing
    assert f"{len(ids)} passed" in result.stdout and "W-2" in result.stdout
    results = json.loads(out.read_text())
    assert results["W-2"] == {"pass": False, "reason": "not run", "runs": []}
    assert all(results[i]["pass"] for i in ids)
    # Every row there: the session passes.
    result = run(tmp_path, "--chaos", "--chaos-json", str(out), suite=ALL_BUT.format(ids=list(REQUIRED_IDS)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(row["pass"] for row in json.loads(out.read_text()).values())
