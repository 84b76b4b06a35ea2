"""The EDI service's alert rules (deploy/helm/haulmesh/files/edi-rules.yaml) under ``promtool test rules``, their
runbook (docs/runbooks/edi.md, a section per alert) and their metric names against the service's own.

As in test_rules.py: every alert has a case whose input series fire it and one whose series do not, and the
expected annotations are taken from the rules file with ``$labels`` expanded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from .test_rules import ROOT, Case, _promtool, check_cases, needs_promtool, promtool_test, unit_test

RULES = ROOT / "deploy" / "helm" / "haulmesh" / "files" / "edi-rules.yaml"
RUNBOOK = ROOT / "docs" / "runbooks" / "edi.md"
#: Metrics the rules may use before the service exports them, by name: the gauge of the oldest document of ours
#: still without a 997 (issue 15, "unacknowledged age"), which the service must export under exactly this name.
PLANNED = {"haulmesh_edi_unacknowledged_oldest_age_seconds"}


def alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


LATENCY = "haulmesh_edi_ack_latency_seconds"


def latency(under_1s: int, under_10s: int, under_30s: int, total: int) -> list[dict[str, str]]:
    """997 latencies observed each minute for 40 minutes: how many fell under 1 s, 10 s, 30 s, and in all."""
    return [{"series": f'{LATENCY}_bucket{{le="{le}"}}', "values": f"0+{n}x40"}
            for le, n in (("1.0", under_1s), ("10.0", under_10s), ("30.0", under_30s), ("+Inf", total))] + [
        {"series": f"{LATENCY}_count", "values": f"0+{total}x40"}]


def documents(labels: str, values: str) -> list[dict[str, str]]:
    return [{"series": f"haulmesh_edi_documents_total{{{labels}}}", "values": values}]


REJECTED_204 = 'direction="in",set="204",state="rejected"'


def logins(outcome: str, values: str) -> dict[str, str]:
    return {"series": f'haulmesh_edi_sftp_logins_total{{outcome="{outcome}"}}', "values": values}


#: alert -> {case name: Case}. Each alert: at least one case that fires and one that does not.
CASES: dict[str, dict[str, Case]] = {
    "EdiDocumentsOverdue": {
        "a document overdue 10 minutes ago": Case([{"series": "haulmesh_edi_overdue_total", "values": "0x20 1x20"}],
                                                  "30m", {}),
        "none overdue": Case([{"series": "haulmesh_edi_overdue_total", "values": "0x40"}], "30m"),
        "the last one overdue 50 minutes ago": Case([{"series": "haulmesh_edi_overdue_total",
                                                      "values": "0x10 1x60"}], "60m"),
    },
    "EdiAckSlow": {
        "half the 997s take 10 to 30 s": Case(latency(2, 5, 10, 10), "35m", {}),
        "every 997 within a second": Case(latency(10, 10, 10, 10), "35m"),
        "no file received": Case(latency(0, 0, 0, 0), "35m"),
    },
    "EdiInboundRejected": {
        "a 204 rejected 10 minutes ago": Case(documents(REJECTED_204, "0x10 1x20"), "20m", {"set": "204"}),
        # The labelled series appears with its first increment, which increase() alone cannot see.
        "the first rejection since the start": Case(documents(REJECTED_204, "_x10 1x20"), "20m", {"set": "204"}),
        # An empty label is no label to Prometheus.
        "a whole file refused": Case(documents('direction="in",set="",state="rejected"', "_x10 1x20"), "20m", {}),
        "only received 204s": Case(documents('direction="in",set="204",state="received"', "0+3x40"), "30m"),
        "a rejection 40 minutes ago": Case(documents(REJECTED_204, "_x5 1x55"), "45m"),
        "our own 997s rejected by nobody": Case(documents('direction="out",set="997",state="rejected"', "_x10 1x20"),
                                                "20m"),
    },
    "EdiSftpLoginFailures": {
        "50 wrong keys in 10 minutes": Case([logins("wrong_key", "0+5x30"), logins("accepted", "0+1x30")], "20m", {}),
        "unknown users probing": Case([logins("unknown_partner", "0+4x30")], "20m", {}),
        "a partner's spare key refused each minute": Case([logins("wrong_key", "0+1x30"), logins("accepted", "0+1x30")],
                                                          "20m"),
    },
    "EdiSftpConnectionsRefused": {
        "three refused 5 minutes ago": Case([{"series": "haulmesh_edi_sftp_refused_connections_total",
                                              "values": "0x10 3x20"}], "15m", {}),
        "none refused": Case([{"series": "haulmesh_edi_sftp_refused_connections_total", "values": "0x30"}], "15m"),
    },
    "EdiUnacknowledgedStale": {
        "the oldest is 2 hours old and ageing": Case(
            [{"series": "haulmesh_edi_unacknowledged_oldest_age_seconds", "values": "7200+60x20"}], "10m", {}),
        "the oldest is an hour old": Case(
            [{"series": "haulmesh_edi_unacknowledged_oldest_age_seconds", "values": "3600+60x20"}], "10m"),
        "over 2 hours for 3 minutes, then acknowledged": Case(
            [{"series": "haulmesh_edi_unacknowledged_oldest_age_seconds", "values": "6900+60x8 0x12"}], "10m"),
    },
}


def test_every_alert_has_cases() -> None:
    check_cases(CASES, alerts())


def test_every_alert_has_its_runbook_section() -> None:
    text = RUNBOOK.read_text()
    sections = {m.group(1): m.start() for m in re.finditer(r"^## (\w+)$", text, re.MULTILINE)}
    for alert, rule in alerts().items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, alert
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], alert
        # GitHub's anchor of a heading "## EdiAckSlow" is "#ediackslow".
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks/edi.md#{alert.lower()}", alert
        assert alert in sections, f"docs/runbooks/edi.md has no section '## {alert}'"
        start = sections[alert]
        end = min([s for s in sections.values() if s > start], default=len(text))
        for heading in ("### What it means", "### What to look at", "### What to do"):
            assert heading in text[start:end], f"docs/runbooks/edi.md, {alert}: no '{heading}'"


def test_the_rules_use_the_services_metric_names() -> None:
    """Every metric an EDI alert reads is one the service registers (services/edi/metrics.py, sftp.py), but the
    planned gauge; a renamed metric would silence its alert."""
    import services.edi.metrics
    import services.edi.sftp  # noqa: F401  (both register their metrics)
    from services.runtime import METRICS_REGISTRY

    exported = set()
    for collector in list(METRICS_REGISTRY._collector_to_names):  # the registry's own index of every name
        exported |= set(METRICS_REGISTRY._collector_to_names[collector])
    used = set()
    for rule in alerts().values():
        used |= {name for name in re.findall(r"\b(haulmesh_edi_\w+)", rule["expr"])}
    assert used - exported <= PLANNED, "rules read metrics the service does not export"
    assert "haulmesh_edi_overdue_total" in used and "haulmesh_edi_sftp_logins_total" in used  # the regex finds them


@needs_promtool
async def test_the_rule_file_passes_promtool_check() -> None:
    code, output = await _promtool("check", "rules", str(RULES))
    assert code == 0, output


@needs_promtool
@pytest.mark.parametrize(("alert", "case"), [(a, c) for a, cases in CASES.items() for c in cases])
async def test_alert_case(alert: str, case: str, tmp_path: Path) -> None:
    await promtool_test(RULES, unit_test(alert, CASES[alert][case], alerts()), tmp_path)
