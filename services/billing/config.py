"""Billing settings from the environment, validated at start-up (a bad value stops the process, exit 2).

* ``HAULMESH_BILLING_DEFAULT_RATE_CARD_FILE``: the rate card a carrier gets when it has none yet, as
  proto-JSON of ``haulmesh.billing.v1.RateCard`` (output-only fields and ``effective_time`` are ignored).
  Unset: the built-in :data:`BUILT_IN_DEFAULT`. ``none``: no default (a carrier without a rate card gets
  NO_RATE_CARD until an operator creates one).
* ``HAULMESH_BILLING_PAYMENT_TERMS_DAYS``: days from issue to an invoice's ``due_time`` (default 30).
* ``HAULMESH_BILLING_KPI_RETENTION_DAYS``: how long the KPI report's facts of a mission or tender are kept after
  their last event (default 400: a year's report plus the month before it), in [1, 3660].
* ``HAULMESH_BILLING_REPORT_MAX_MISSIONS``: the most missions (and, separately, tenders) one KPI report reads
  (default 50000; a larger window is refused with REPORT_TOO_LARGE), in [1, 1000000].
* ``HAULMESH_BILLING_EVIDENCE_CERT_FILE`` / ``HAULMESH_BILLING_EVIDENCE_KEY_FILE``: the platform's evidence key
  that seals evidence packs, a signing-only certificate from the mesh CA (``haulmesh pki issue evidence
  billing``) and its key. Default ``<cert dir>/evidence-billing.pem`` and ``evidence-billing-key.pem``. Only
  billing holds it; read at each export, so a missing key fails the export (EVIDENCE_KEY_UNAVAILABLE), not the
  start.
* ``HAULMESH_BILLING_EVIDENCE_MAX_CONCURRENT``: evidence packs built at once by one billing process (default 2, in
  [1, 64]); a pack of a long trip holds ~100k frames in memory, so more wait (their deadline bounds the wait).
* ``HAULMESH_BILLING_EVIDENCE_MAX_AUDIT_ENTRIES``: most audit entries one pack carries (default 10000, in
  [1, 1000000]); more is RESOURCE_EXHAUSTED EVIDENCE_TOO_LARGE.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from haulmesh.billing.v1 import rate_card_pb2
from haulmesh.type.v1 import money_pb2
from services.runtime import ConfigError, HaulmeshError, default_state_dir

from .convert import card_from_pb
from .domain import validate_rate_card

__all__ = ["BUILT_IN_DEFAULT", "BillingConfig"]

_USD = "USD"

#: The default rate card when none is configured: the contract figures the protos use as examples.
BUILT_IN_DEFAULT = rate_card_pb2.RateCard(
    display_name="Haulmesh standard rates",
    currency_code=_USD,
    default_rate_per_mile=money_pb2.Money(currency_code=_USD, amount_minor=285),
    fuel_surcharge_bps=2850,
    minimum_charge=money_pb2.Money(currency_code=_USD, amount_minor=45_000),
    hazmat_surcharge=money_pb2.Money(currency_code=_USD, amount_minor=15_000),
    detention=rate_card_pb2.DetentionTerms(free_time_minutes=120,
                                           rate_per_hour=money_pb2.Money(currency_code=_USD, amount_minor=7_500),
                                           increment_minutes=15),
)

_OUTPUT_ONLY = ("name", "carrier", "create_time", "update_time", "etag", "effective_time", "expire_time")


@dataclass(frozen=True)
class BillingConfig:
    """Billing's own settings."""

    default_rate_card: rate_card_pb2.RateCard | None
    payment_terms_days: int = 30
    kpi_retention_days: int = 400
    report_max_missions: int = 50_000
    evidence_certificate_file: Path = Path("evidence-billing.pem")
    evidence_key_file: Path = Path("evidence-billing-key.pem")
    evidence_max_concurrent: int = 2
    evidence_max_audit_entries: int = 10_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BillingConfig:
        env = os.environ if env is None else env
        key = "HAULMESH_BILLING_DEFAULT_RATE_CARD_FILE"
        source = env.get(key, "")
        if source.lower() == "none":
            card = None
        elif source:
            try:
                card = json_format.Parse(Path(source).read_text(), rate_card_pb2.RateCard())
            except (OSError, json_format.ParseError) as exc:
                raise ConfigError(f"{key}: cannot read a RateCard from {source}: {exc}", field=key) from None
        else:
            card = rate_card_pb2.RateCard()
            card.CopyFrom(BUILT_IN_DEFAULT)
        if card is not None:
            for name in _OUTPUT_ONLY:
                card.ClearField(name)
            card.effective_time.FromSeconds(0)
            try:
                validate_rate_card(card_from_pb(card))
            except HaulmeshError as exc:
                details = "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
                raise ConfigError(f"{key}: invalid rate card: {details or exc.message}", field=key) from None
        terms_key = "HAULMESH_BILLING_PAYMENT_TERMS_DAYS"
        raw = env.get(terms_key, "") or "30"
        if not raw.isdigit() or not 0 <= int(raw) <= 365:
            raise ConfigError(f"{terms_key} must be a whole number of days in [0, 365], got {raw!r}",
                              field=terms_key)
        cert_dir = Path(env.get("HAULMESH_CERT_DIR") or default_state_dir(env) / "certs")
        return cls(default_rate_card=card, payment_terms_days=int(raw),
                   kpi_retention_days=_bounded_int(env, "HAULMESH_BILLING_KPI_RETENTION_DAYS", 400, 1, 3660),
                   report_max_missions=_bounded_int(env, "HAULMESH_BILLING_REPORT_MAX_MISSIONS", 50_000, 1,
                                                    1_000_000),
                   evidence_certificate_file=Path(env.get("HAULMESH_BILLING_EVIDENCE_CERT_FILE")
                                                  or cert_dir / "evidence-billing.pem"),
                   evidence_key_file=Path(env.get("HAULMESH_BILLING_EVIDENCE_KEY_FILE")
                                          or cert_dir / "evidence-billing-key.pem"),
                   evidence_max_concurrent=_bounded_int(env, "HAULMESH_BILLING_EVIDENCE_MAX_CONCURRENT", 2, 1, 64),
                   evidence_max_audit_entries=_bounded_int(env, "HAULMESH_BILLING_EVIDENCE_MAX_AUDIT_ENTRIES",
                                                           10_000, 1, 1_000_000))


def _bounded_int(env: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = env.get(key, "") or str(default)
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(f"{key} must be a whole number in [{low}, {high}], got {raw!r}", field=key)
    return int(raw)
