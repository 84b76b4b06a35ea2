"""Billing settings: the default rate card and payment terms from the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.billing.config import BUILT_IN_DEFAULT, BillingConfig
from services.runtime import ConfigError

KEY = "HAULMESH_BILLING_DEFAULT_RATE_CARD_FILE"


def test_built_in_default_when_unset() -> None:
    config = BillingConfig.from_env({})
    assert config.default_rate_card.default_rate_per_mile == BUILT_IN_DEFAULT.default_rate_per_mile
    assert config.default_rate_card.HasField("effective_time")  # in effect since the epoch
    assert config.payment_terms_days == 30


def test_none_disables_the_default() -> None:
    assert BillingConfig.from_env({KEY: "none"}).default_rate_card is None


def test_card_from_file_output_only_fields_ignored(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text(json.dumps({"name": "rateCards/x", "currencyCode": "CAD", "etag": "e",
                                "defaultRatePerMile": {"currencyCode": "CAD", "amountMinor": "390"},
                                "fuelSurchargeBps": 1500}))
    card = BillingConfig.from_env({KEY: str(path), "HAULMESH_BILLING_PAYMENT_TERMS_DAYS": "45"})
    assert card.default_rate_card.currency_code == "CAD" and card.default_rate_card.name == ""
    assert card.default_rate_card.etag == "" and card.payment_terms_days == 45


@pytest.mark.parametrize("content,message", [
    ("{not json", "cannot read"),
    (json.dumps({"currencyCode": "CAD", "defaultRatePerMile": {"currencyCode": "USD", "amountMinor": "1"}}),
     "rate_card.default_rate_per_mile.currency_code"),
    (json.dumps({"currencyCode": "CAD"}), "rate_card.default_rate_per_mile: required"),
])
def test_bad_card_file_is_a_config_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "card.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        BillingConfig.from_env({KEY: str(path)})
    assert message in str(caught.value) and caught.value.field == KEY


def test_missing_file_and_bad_terms_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        BillingConfig.from_env({KEY: str(tmp_path / "absent.json")})
    with pytest.raises(ConfigError) as caught:
        BillingConfig.from_env({"HAULMESH_BILLING_PAYMENT_TERMS_DAYS": "-3"})
    assert caught.value.field == "HAULMESH_BILLING_PAYMENT_TERMS_DAYS"


def test_kpi_report_bounds_from_the_environment() -> None:
    config = BillingConfig.from_env({})
    assert (config.kpi_retention_days, config.report_max_missions) == (400, 50_000)
    config = BillingConfig.from_env({"HAULMESH_BILLING_KPI_RETENTION_DAYS": "730",
                                     "HAULMESH_BILLING_REPORT_MAX_MISSIONS": "1000"})
    assert (config.kpi_retention_days, config.report_max_missions) == (730, 1000)
    for key, bad in (("HAULMESH_BILLING_KPI_RETENTION_DAYS", "0"), ("HAULMESH_BILLING_KPI_RETENTION_DAYS", "1y"),
                     ("HAULMESH_BILLING_REPORT_MAX_MISSIONS", "1000001")):
        with pytest.raises(ConfigError) as caught:
            BillingConfig.from_env({key: bad})
        assert caught.value.field == key


def test_evidence_export_bounds_are_read_and_checked() -> None:
    config = BillingConfig.from_env({"HAULMESH_BILLING_EVIDENCE_MAX_CONCURRENT": "4",
                                     "HAULMESH_BILLING_EVIDENCE_MAX_AUDIT_ENTRIES": "500"})
    assert (config.evidence_max_concurrent, config.evidence_max_audit_entries) == (4, 500)
    assert BillingConfig.from_env({}).evidence_max_concurrent == 2
    with pytest.raises(ConfigError):
        BillingConfig.from_env({"HAULMESH_BILLING_EVIDENCE_MAX_CONCURRENT": "0"})
