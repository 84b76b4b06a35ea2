"""Tender settings from the environment, validated at start-up (a bad value stops the process).

* ``HAULMESH_TENDER_ELIGIBILITY_FILE``: the eligibility policy (JSON, see eligibility.py); unset or empty:
  services/tender/eligibility.json.
* ``HAULMESH_TENDER_OFFER_TTL_SECONDS``: how long an offer stands before it lapses, 1 to 86400 (default 900).
* ``HAULMESH_LANES_FILE``: the lane facts every service shares (services.runtime.lanes).

The runtime's own settings (port, store, TLS, tracing) are ``ServiceConfig``'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from services.runtime import ConfigError
from services.runtime.lanes import LaneFacts, load_lane_facts

from .domain import DEFAULT_OFFER_TTL
from .eligibility import DEFAULT_POLICY_FILE, POLICY_ENV

__all__ = ["ELIGIBILITY_FILE_ENV", "OFFER_TTL_ENV", "TenderConfig"]

ELIGIBILITY_FILE_ENV = POLICY_ENV
OFFER_TTL_ENV = "HAULMESH_TENDER_OFFER_TTL_SECONDS"


@dataclass(frozen=True)
class TenderConfig:
    """The tender service's own settings."""

    eligibility_file: Path = DEFAULT_POLICY_FILE
    offer_ttl_seconds: float = DEFAULT_OFFER_TTL.total_seconds()
    #: Markets, distances, night hours and known routes (HAULMESH_LANES_FILE).
    lanes: LaneFacts = field(default_factory=lambda: load_lane_facts({}))

    @property
    def offer_ttl(self) -> timedelta:
        return timedelta(seconds=self.offer_ttl_seconds)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TenderConfig:
        env = os.environ if env is None else env
        eligibility_file = Path(env.get(ELIGIBILITY_FILE_ENV) or DEFAULT_POLICY_FILE)
        raw = env.get(OFFER_TTL_ENV, "")
        lanes = load_lane_facts(env)
        if not raw:
            return cls(eligibility_file=eligibility_file, lanes=lanes)
        try:
            seconds = float(raw)
        except ValueError:
            raise ConfigError(f"{OFFER_TTL_ENV} must be a number of seconds, got {raw!r}",
                              field=OFFER_TTL_ENV) from None
        if not 1 <= seconds <= 86400:
            raise ConfigError(f"{OFFER_TTL_ENV} must be 1 to 86400 seconds, got {raw!r}", field=OFFER_TTL_ENV)
        return cls(eligibility_file=eligibility_file, offer_ttl_seconds=seconds, lanes=lanes)
