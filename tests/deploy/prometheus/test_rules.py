"""The alert rules (deploy/prometheus/rules.yaml) under ``promtool test rules``, and their runbooks.

Every alert has a case whose input series fire it and one whose series do not; the unit-test file is built
here from these cases, with each alert's expected annotations taken from the rules file (``$labels``
expanded), so a changed summary cannot silently stop matching. A new alert without cases fails
``test_every_alert_has_cases``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus'; .ci/run installs it)")


def alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def histogram(name: str, le: str, good_per_minute: int, total_per_minute: int) -> list[dict[str, str]]:
    """A histogram's ``le`` bucket and count growing at steady rates for 7 hours (1m samples)."""
    return [{"series": f'{name}_bucket{{le="{le}"}}', "values": f"0+{good_per_minute}x420"},
            {"series": f"{name}_count", "values": f"0+{total_per_minute}x420"}]


@dataclass(frozen=True)
class Case:
    """Input series, the evaluation time, and the labels of the alert expected then (None: no alert)."""

    series: list[dict[str, str]]
    eval_time: str
    fires: dict[str, str] | None = field(default=None)


REFRESHER = {"job": "telemetry", "instance": "telemetry-0"}


def revocation_refresh(values: str) -> list[dict[str, str]]:
    """A process's last successful read of the deny-list (Unix seconds), sampled every minute."""
    return [{"series": 'haulmesh_revocation_list_refresh_timestamp_seconds{job="telemetry",instance="telemetry-0"}',
             "values": values}]


ACK = "haulmesh_mission_dispatch_ack_seconds"
FRESH = "haulmesh_telemetry_freshness_seconds"
DAY = 86400


def frames(stored: float, gaps: float) -> list[dict[str, str]]:
    return [{"series": 'haulmesh_telemetry_frames_total{outcome="stored"}', "values": f"0+{stored}x420"},
            {"series": "haulmesh_telemetry_sequence_gaps_total", "values": f"0+{gaps}x420"}]


def missions(completed: int, aborted: int) -> list[dict[str, str]]:
    return [{"series": 'haulmesh_missions_finished_total{outcome="completed"}', "values": f"0+{completed}x420"},
            {"series": 'haulmesh_missions_finished_total{outcome="aborted"}', "values": f"0+{aborted}x420"},
            {"series": 'haulmesh_missions_finished_total{outcome="cancelled"}', "values": "0+50x420"}]


def consumer(lag: int, pending: int) -> list[dict[str, str]]:
    return [{"series": 'haulmesh_events_consumer_lag{group="mission",instance="a"}', "values": f"{lag}x60"},
            {"series": 'haulmesh_events_consumer_pending{group="mission",instance="a"}', "values": f"{pending}x60"},
            # A second replica reports the same group figures: max, not sum, keeps them from doubling.
            {"series": 'haulmesh_events_consumer_lag{group="mission",instance="b"}', "values": f"{lag}x60"},
            {"series": 'haulmesh_events_consumer_pending{group="mission",instance="b"}', "values": f"{pending}x60"}]


def expiry(seconds_from_start: int) -> list[dict[str, str]]:
    return [{"series": 'haulmesh_certificate_expiry_timestamp_seconds{job="mission",instance="m:9464",kind="leaf"}',
             "values": f"{seconds_from_start}x120"}]


CERT = {"job": "mission", "instance": "m:9464", "kind": "leaf"}
#: alert -> {case name: Case}. Each alert: at least one case that fires and one that does not.
CASES: dict[str, dict[str, Case]] = {
    "HaulmeshDispatchAckSLOBurn": {
        "half the acks late (fast burn)": Case(histogram(ACK, "30.0", 5, 10), "70m", {"slo": "dispatch_ack_over_30s"}),
        "8 % late for 6 hours (slow burn)": Case(histogram(ACK, "30.0", 92, 100), "400m",
                                                 {"slo": "dispatch_ack_over_30s"}),
        "0.5 % late (within budget)": Case(histogram(ACK, "30.0", 199, 200), "400m"),
    },
    "HaulmeshDispatchFastAckSLOBurn": {
        "every ack slower than 5 s": Case(histogram(ACK, "5.0", 0, 10), "70m", {"slo": "dispatch_ack_over_5s"}),
        "3 % slower than 5 s": Case(histogram(ACK, "5.0", 97, 100), "400m"),
    },
    "HaulmeshTelemetryFreshnessSLOBurn": {
        "a third of the batches stale": Case(histogram(FRESH, "2.0", 200, 300), "70m",
                                             {"slo": "telemetry_stale_over_2s"}),
        "0.5 % stale": Case(histogram(FRESH, "2.0", 995, 1000), "400m"),
    },
    "HaulmeshTelemetryPacketLossSLOBurn": {
        "2 % of frames lost": Case(frames(1000, 20), "70m", {"slo": "telemetry_packet_loss"}),
        "0.05 % of frames lost": Case(frames(2000, 1), "400m"),
    },
    "HaulmeshMissionSuccessSLOBurn": {
        "one mission in six aborted": Case(missions(10, 2), "70m", {"slo": "mission_failure"}),
        "only cancellations": Case(missions(10, 0), "400m"),
    },
    "HaulmeshDeadLettersGrowing": {
        "an event dead-lettered": Case([{"series": 'haulmesh_events_dead_lettered_total{group="webhooks"}',
                                         "values": "0x30 1x30"}], "35m", {"group": "webhooks"}),
        "no new dead letters": Case([{"series": 'haulmesh_events_dead_lettered_total{group="webhooks"}',
                                      "values": "3x60"}], "35m"),
    },
    "HaulmeshDeadLetterBacklog": {
        "dead letters left for 7 hours": Case([{"series": 'haulmesh_events_dlq_depth{group="billing"}',
                                                "values": "2x420"}], "400m", {"group": "billing"}),
        "dead letters replayed after an hour": Case([{"series": 'haulmesh_events_dlq_depth{group="billing"}',
                                                      "values": "2x60 0x360"}], "400m"),
    },
    "HaulmeshDeadLettersDeep": {
        "12,000 dead letters for 10 minutes": Case([{"series": 'haulmesh_events_dlq_depth{group="billing"}',
                                                     "values": "12000x20"}], "15m", {"group": "billing"}),
        "9,000 dead letters": Case([{"series": 'haulmesh_events_dlq_depth{group="billing"}',
                                     "values": "9000x20"}], "15m"),
    },
    "HaulmeshConsumerLagging": {
        "2,000 undelivered for 20 minutes": Case(consumer(1500, 500), "25m", {"group": "mission"}),
        "600 per replica (max, not sum)": Case(consumer(400, 200), "25m"),
    },
    "HaulmeshRevocationListStale": {
        "no refresh since minute 10": Case(revocation_refresh("60+60x9 600x20"), "25m", REFRESHER),
        "refreshed every minute": Case(revocation_refresh("60+60x30"), "25m"),
    },
    "HaulmeshCertificateExpiringSoon": {
        "10 days left": Case(expiry(10 * DAY), "30m", CERT),
        "30 days left": Case(expiry(30 * DAY), "30m"),
        "2 days left (the critical alert's)": Case(expiry(2 * DAY), "30m"),
    },
    "HaulmeshCertificateExpiryCritical": {
        "2 days left": Case(expiry(2 * DAY), "30m", CERT),
        "10 days left": Case(expiry(10 * DAY), "30m"),
    },
}


def _expand(text: str, labels: dict[str, str]) -> str:
    """``{{ $labels.x }}`` as Prometheus renders it (an absent label, like an empty one, renders empty)."""
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), text)


def unit_test(alert: str, case: Case, rules: dict[str, dict] | None = None) -> dict:
    """One promtool test group: the case's series, and the alert expected (or not) at its time (``rules``: the
    alerts by name, default this file's)."""
    expected = []
    if case.fires is not None:
        rule = (rules or alerts())[alert]
        labels = {**rule.get("labels", {}), **case.fires}
        expected.append({"exp_labels": labels,
                         "exp_annotations": {k: _expand(v, labels) for k, v in rule["annotations"].items()}})
    return {"interval": "1m", "input_series": case.series,
            "alert_rule_test": [{"eval_time": case.eval_time, "alertname": alert, "exp_alerts": expected}]}


def check_cases(cases_by_alert: dict[str, dict[str, Case]], rules: dict[str, dict]) -> None:
    """Every alert has a case that fires it and one that must not, and no case names an unknown alert."""
    assert set(cases_by_alert) == set(rules)
    for alert, cases in cases_by_alert.items():
        assert any(c.fires is not None for c in cases.values()), f"{alert}: no case that fires it"
        assert any(c.fires is None for c in cases.values()), f"{alert}: no case that must not fire it"


def test_every_alert_has_cases() -> None:
    check_cases(CASES, alerts())


def test_every_alert_has_a_runbook() -> None:
    for alert, rule in alerts().items():
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbooks/{alert}.md", url
        runbook = ROOT / url
        assert runbook.is_file(), f"{alert}: no runbook at {url}"
        text = runbook.read_text()
        assert text.startswith(f"# {alert}"), f"{url} must start with the alert's name"
        for heading in ("## What it means", "## What to look at", "## What to do"):
            assert heading in text, f"{url} lacks '{heading}'"


def test_every_alert_has_severity_and_summary() -> None:
    for alert, rule in alerts().items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, alert
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], alert


async def _promtool(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(PROMTOOL, *args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, output.decode()


@needs_promtool
async def test_rules_file_passes_promtool_check() -> None:
    code, output = await _promtool("check", "rules", str(RULES))
    assert code == 0, output


async def promtool_test(rules_file: Path, test: dict, tmp_path: Path) -> None:
    """``promtool test rules`` of one test group against ``rules_file``; fails with promtool's output."""
    tests = tmp_path / "rules_test.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "1m",
                                     "tests": [test]}, sort_keys=False))
    code, output = await _promtool("test", "rules", str(tests))
    assert code == 0, output


@needs_promtool
@pytest.mark.parametrize(("alert", "case"), [(a, c) for a, cases in CASES.items() for c in cases])
async def test_alert_case(alert: str, case: str, tmp_path: Path) -> None:
    await promtool_test(RULES, unit_test(alert, CASES[alert][case]), tmp_path)
