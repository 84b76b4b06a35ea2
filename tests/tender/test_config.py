"""Tender settings: the eligibility policy file and the offer lifetime from the environment."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from services.runtime import ConfigError
from services.tender.config import ELIGIBILITY_FILE_ENV, OFFER_TTL_ENV, TenderConfig
from services.tender.domain import DEFAULT_OFFER_TTL
from services.tender.eligibility import DEFAULT_POLICY_FILE


def test_defaults_when_unset() -> None:
    config = TenderConfig.from_env({})
    assert config.eligibility_file == DEFAULT_POLICY_FILE
    assert config.offer_ttl == DEFAULT_OFFER_TTL == timedelta(seconds=900)


def test_values_from_the_environment(tmp_path: Path) -> None:
    config = TenderConfig.from_env({ELIGIBILITY_FILE_ENV: str(tmp_path / "p.json"), OFFER_TTL_ENV: "2"})
    assert config.eligibility_file == tmp_path / "p.json"
    assert config.offer_ttl_seconds == 2 and config.offer_ttl == timedelta(seconds=2)


@pytest.mark.parametrize("raw", ["abc", "0", "86401", "-5"])
def test_bad_offer_ttl_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TenderConfig.from_env({OFFER_TTL_ENV: raw})
    assert caught.value.field == OFFER_TTL_ENV
