"""Schemathesis against the real gateway and mesh: every operation, every check, the stateful phase on.

``make test`` runs it short (HAULMESH_FUZZ_EXAMPLES unset: 8 examples per operation); ``make fuzz`` runs it with
200 per operation and writes the outcome to build/fuzz.json under "AT-19" (issue 12's row, in build/chaos.json's
shape: ``{"AT-19": {"pass", "seed", "figure"}}``). The one substitution: ``positive_data_acceptance`` runs as
``positive_data_acceptance_within_schema`` (tests/gateway/rest/fuzz_checks.py), which forgives only refusals no
JSON Schema can state (an AIP-160 filter's syntax, a page token the API did not issue, a resource state).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path

import httpx

from .conftest import ALL_SCOPES

#: Examples per operation and phase: 200 under ``make fuzz``, a few in ``make test``.
EXAMPLES = int(os.environ.get("HAULMESH_FUZZ_EXAMPLES", "8"))
#: Where ``make fuzz`` wants the AT-19 row (unset in ``make test``).
RESULT_JSON = os.environ.get("HAULMESH_FUZZ_JSON", "")
SEED = int(os.environ.get("HAULMESH_FUZZ_SEED", "1"))
_ROOT = Path(__file__).resolve().parents[3]
#: The built-in positive_data_acceptance gives way to fuzz_checks' version (see there).
_EXCLUDED = ("positive_data_acceptance",)


def _failures(report: dict) -> Counter[str]:
    """Failures by check name, from schemathesis' JSON run report."""
    found: Counter[str] = Counter()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "failure" or ("failure_code" in node and "title" in node):
                found[str(node.get("check") or node.get("failure_code") or node.get("title"))] += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(report)
    return found


def _write_row(report: Path, exit_status: int | None, summary: str) -> None:
    """build/fuzz.json's AT-19 row (``make fuzz``)."""
    failures = dict(_failures(json.loads(report.read_text()))) if report.exists() else {}
    row = {"pass": exit_status == 0, "seed": SEED,
           "figure": {"examples_per_operation": EXAMPLES, "exit_status": exit_status,
                      "failures_by_check": failures, "summary": summary[-4000:]}}
    target = Path(RESULT_JSON)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"AT-19": row}, indent=2, sort_keys=True) + "\n")


async def test_schemathesis_every_operation_every_check(base_url: str, token, tmp_path: Path) -> None:
    credentials = token("fuzz-co", ALL_SCOPES, ttl_seconds=3 * 3600)
    async with httpx.AsyncClient(base_url=base_url) as client:
        spec = (await client.get("/openapi.json")).content
    (tmp_path / "openapi.json").write_bytes(spec)
    report = tmp_path / "report.json"
    # One worker: with threads, CPython 3.11's ast.parse (used by hypothesis to describe filters) can fail with
    # "AST constructor recursion depth mismatch", an error of the tool rather than of the API.
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("st")), "run", str(tmp_path / "openapi.json"), "--url", base_url,
        "--header", f"Authorization: Bearer {credentials}",
        "--checks", "all", "--exclude-checks", ",".join(_EXCLUDED),
        "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(EXAMPLES), "--workers", "1",
        "--request-timeout", "10", "--seed", str(SEED), "--no-color",
        "--report", "json", "--report-json-path", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.gateway.rest.fuzz_checks",
             "PYTHONPATH": str(_ROOT)})
    output, _ = await asyncio.wait_for(process.communicate(), timeout=None if RESULT_JSON else 280)
    text = output.decode(errors="replace")
    summary = text[text.rfind("= SUMMARY ="):] if "= SUMMARY =" in text else text[-3000:]
    if RESULT_JSON:
        _write_row(report, process.returncode, summary)
    assert process.returncode == 0, text.split("WARNINGS ===")[0][-20000:]
    assert "Selected: " in summary and "Tested: " in summary
