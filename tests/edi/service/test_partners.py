"""Trading partners: the example file loads, and each bad input is refused with the partner, the key and what is
allowed (services/edi/domain/_partners.py); the service refuses such a file at start with exit status 2."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from services.edi.config import PARTNERS_FILE_ENV, EdiConfig
from services.edi.domain import CARRIER_ID, PartnerConfigError, ResponseRule, parse_partners
from services.runtime import ConfigError
from services.runtime.tokens import CARRIER_ID as RUNTIME_CARRIER_ID

from ...conftest import Pki

EXAMPLE = Path(__file__).parents[3] / "services" / "edi" / "partners.example.toml"
REPO = Path(__file__).parents[3]


def example() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def test_the_example_file_loads_with_every_setting() -> None:
    config = EdiConfig.from_env({PARTNERS_FILE_ENV: str(EXAMPLE)})
    prairie = config.partners.get("prairie")
    assert prairie is not None and len(config.partners) == 2
    assert prairie.carrier == "prairie-freight" and prairie.isa_sender == ("ZZ", "PRAIRIEFRT")
    assert prairie.our_isa_id == "HAULMESH" and prairie.scac == "HMSH" and prairie.ta1_wanted
    assert prairie.response.rule is ResponseRule.ACCEPT
    assert prairie.response.rate_tolerance_percent == Decimal(5)
    assert prairie.status_events == ("X3", "AF", "X6", "X1", "D1") and prairie.status_cadence_minutes == 30
    assert prairie.ack_resend_minutes == (60, 240) and prairie.ack_schedule.deadline_minutes == 30
    assert len(prairie.ssh_authorized_keys) == 1 and prairie.ssh_authorized_keys[0].startswith("ssh-ed25519 ")
    lonestar = config.partners.by_isa("02", "LSLG")
    assert lonestar is not None and lonestar.response.rule is ResponseRule.HOLD
    assert lonestar.gs_id == "LSLG" and lonestar.our_gs_id == "HAULMESH"  # GS ids default to the ISA ids


def test_no_partners_file_means_no_partners() -> None:
    assert len(EdiConfig.from_env({}).partners) == 0


def test_the_carrier_rule_is_the_runtimes() -> None:
    assert CARRIER_ID.pattern == RUNTIME_CARRIER_ID.pattern.strip("^$")


def _refused(edit) -> str:
    data = copy.deepcopy(example())
    edit(data)
    with pytest.raises(PartnerConfigError) as caught:
        parse_partners(data)
    return str(caught.value)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: d["partner"][0].update(isa_id="PRAIRIEFREIGHT01"),
     "partner 'prairie': isa_id: 'PRAIRIEFREIGHT01' is not an ISA id: 1-15 characters"),
    (lambda d: d["partner"][0]["response"].update(rule="maybe"),
     "partner 'prairie': response.rule: 'maybe' is not one of accept, decline, hold"),
    (lambda d: d["partner"][0].update(carrier="Prairie Freight"),
     "partner 'prairie': carrier: 'Prairie Freight' is not a carrier id"),
    (lambda d: d["partner"][1].update(id="prairie"),
     "partner 'prairie': id: duplicate partner id"),
    (lambda d: d["partner"][1].update(isa_qualifier="ZZ", isa_id="PRAIRIEFRT"),
     "partner 'lonestar': isa_qualifier/isa_id: ZZ/PRAIRIEFRT is already partner 'prairie'"),
    (lambda d: d["partner"][0].update(scac="HAULM"), "partner 'prairie': scac: 'HAULM' is not a SCAC"),
    (lambda d: d["partner"][0].update(version="003040"), "partner 'prairie': version: '003040' is not one of"),
    (lambda d: d["partner"][0].update(isa_qualifier="99"), "partner 'prairie': isa_qualifier: '99' is not one of"),
    (lambda d: d["partner"][0].update(colour="blue"), "partner 'prairie': colour: unknown key; allowed:"),
    (lambda d: d["partner"][0]["response"].update(rate_tolerance_percent=-1),
     "partner 'prairie': response.rate_tolerance_percent: -1 is not a percentage from 0 to 100"),
    (lambda d: d["partner"][0]["status"].update(events=["X3", "ZZ"]),
     "partner 'prairie': status.events: ['X3', 'ZZ'] is not a list of"),
    (lambda d: d["partner"][0]["acknowledgements"].update(resend_after_minutes=[240, 60]),
     "partner 'prairie': acknowledgements.resend_after_minutes: [240, 60] is not an increasing list"),
    (lambda d: d["partner"][0]["acknowledgements"].update(deadline_minutes=0),
     "partner 'prairie': acknowledgements.deadline_minutes: 0 is not a whole number of minutes from 1 to 10080"),
    (lambda d: d["partner"][0]["sftp"].update(authorized_keys=["not a key"]),
     "partner 'prairie': sftp.authorized_keys[0]: not an OpenSSH public key line"),
    (lambda d: d["partner"][0]["response"].update(decline_reason_in_k1=False),
     "partner 'prairie': response.decline_reason_in_k1: false needs decline_reason_v9_event"),
    (lambda d: d["partner"][1].pop("isa_id"), "partner 'lonestar': isa_id: required"),
    (lambda d: d.update(partners=[]), "unknown top-level key 'partners'"),
])
def test_each_bad_input_is_refused_by_name(edit, expected: str) -> None:
    assert expected in _refused(edit)


def test_every_problem_is_reported_at_once() -> None:
    def edit(d: dict) -> None:
        d["partner"][0].update(isa_id="X" * 16, carrier="")
        d["partner"][1]["response"].update(rule="auto")
    message = _refused(edit)
    assert "isa_id" in message and "carrier" in message and "response.rule" in message


def test_a_bad_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "partners.toml"
    bad.write_text("[[partner]]\nid = 'x'\nisa_id = 'WAYTOOLONGANISAID'\n")
    with pytest.raises(ConfigError, match="isa_id"):
        EdiConfig.from_env({PARTNERS_FILE_ENV: str(bad)})
    bad.write_text("[[partner]\n")
    with pytest.raises(ConfigError, match="not TOML"):
        EdiConfig.from_env({PARTNERS_FILE_ENV: str(bad)})
    with pytest.raises(ConfigError, match="cannot read"):
        EdiConfig.from_env({PARTNERS_FILE_ENV: str(tmp_path / "missing.toml")})


def test_the_service_refuses_a_bad_file_at_start_with_status_2(tmp_path: Path, mesh_pki: Pki) -> None:
    bad = tmp_path / "partners.toml"
    bad.write_text(EXAMPLE.read_text().replace('rule = "accept"', 'rule = "sometimes"'))
    env = {**os.environ, "HAULMESH_STATE_DIR": str(tmp_path), "HAULMESH_CERT_DIR": str(mesh_pki.directory),
           PARTNERS_FILE_ENV: str(bad)}
    done = subprocess.run([sys.executable, "-m", "services.edi"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "response.rule: 'sometimes' is not one of accept, decline, hold" in done.stderr

