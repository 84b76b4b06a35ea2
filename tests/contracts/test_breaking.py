"""`make breaking` fails on a breaking contract change, wherever in history since the baseline it was made.

Each test builds a real git repository from the project's own protos/ and scripts/protos/, makes commits,
and runs the real scripts/protos/breaking.sh with the real buf.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
GIT, BASH = shutil.which("git") or "git", shutil.which("bash") or "bash"
MONEY = "protos/haulmesh/type/v1/money.proto"
pytestmark = pytest.mark.skipif(not BUF.exists(), reason="buf is installed by `make tools` (make test does it)")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run([GIT, "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, message: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", message)
    return _git(repo, "rev-parse", "HEAD")


def _edit(repo: Path, old: str, new: str) -> None:
    path = repo / MONEY
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _breaking(repo: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": str(ROOT / ".venv" / "bin" / "python"), "BUF": str(BUF)}
    env.pop("BREAKING_AGAINST_REF", None)
    return subprocess.run([BASH, "scripts/protos/breaking.sh"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository holding the project's contract, with its first commit as the baseline."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", repo / "protos", ignore=shutil.ignore_patterns(".deps"))
    shutil.copytree(ROOT / "scripts" / "protos", repo / "scripts" / "protos")
    (repo / ".gitignore").write_text("/build/\n")
    _git(repo, "init", "-q", "-b", "main")
    first = _commit(repo, "the landed contract")
    (repo / "protos" / "BREAKING_BASELINE").write_text(f"# baseline\n{first}\n")
    _commit(repo, "baseline")
    return repo


def test_additive_changes_pass(repo: Path) -> None:
    _edit(repo, "int64 amount_minor = 2 [(google.api.field_behavior) = OPTIONAL];",
          "int64 amount_minor = 2 [(google.api.field_behavior) = OPTIONAL];\n\n"
          "  // A note for people.\n  string note = 3 [(google.api.field_behavior) = OPTIONAL];")
    _commit(repo, "add a field")
    result = _breaking(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 2 contract change(s)" in result.stdout  # the baseline file's commit, then the field


def test_a_removed_field_fails_even_when_later_commits_follow(repo: Path) -> None:
    _edit(repo, "  int64 amount_minor = 2 [(google.api.field_behavior) = OPTIONAL];\n", "")
    _commit(repo, "drop amount_minor")
    (repo / "protos" / "README.md").write_text("unrelated\n")
    _commit(repo, "a later commit that touches protos/ without a break")
    result = _breaking(repo)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "amount_minor" in result.stdout + result.stderr
    assert "drop amount_minor" in result.stderr  # names the commit that broke the contract


def test_a_renumbered_field_in_the_working_tree_fails(repo: Path) -> None:
    _edit(repo, "int64 amount_minor = 2", "int64 amount_minor = 7")
    result = _breaking(repo)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the working tree" in result.stderr and "amount_minor" in result.stdout + result.stderr


def test_a_baseline_outside_the_history_is_an_error(repo: Path) -> None:
    (repo / "protos" / "BREAKING_BASELINE").write_text("0123456789abcdef0123456789abcdef01234567\n")
    _commit(repo, "bad baseline")
    result = _breaking(repo)
    assert result.returncode == 2 and "not a commit" in result.stderr
