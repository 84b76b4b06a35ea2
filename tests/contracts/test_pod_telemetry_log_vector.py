"""One vector for the proof of delivery's telemetry log digest, checked against every copy of the rule.

The rule lives in mission.proto (DeliveryManifest.telemetry_log_sha256); the server recomputes it with
services/runtime/metering.py and the truck builds it with edge_client/pod.py (which may not import services,
so it carries its own copy). Both must give the vector's digest, and neither the un-prefixed concatenation
(the demo's old mistake).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from services.runtime import metering

VECTOR = json.loads((Path(__file__).with_name("pod_telemetry_log_vector.json")).read_text())
PAYLOADS = [bytes.fromhex(h) for h in VECTOR["payloads_hex"]]


def _implementations():
    yield "runtime", metering.telemetry_log_sha256
    from edge_client import pod
    yield "edge_client", pod.telemetry_log_sha256


@pytest.mark.parametrize("name,digest", list(_implementations()))
def test_every_copy_of_the_rule_gives_the_vector(name: str, digest) -> None:
    assert digest(PAYLOADS) == VECTOR["telemetry_log_sha256"], name
    assert digest(PAYLOADS) != VECTOR["without_length_prefix_sha256"], name


@pytest.mark.parametrize("name,digest", list(_implementations()))
def test_the_order_given_does_not_matter_sequence_does(name: str, digest) -> None:
    shuffled = PAYLOADS[:]
    random.Random(7).shuffle(shuffled)
    assert digest(shuffled) == VECTOR["telemetry_log_sha256"], name
    assert digest(PAYLOADS[:-1]) != VECTOR["telemetry_log_sha256"], name


def test_the_proto_states_the_rule_the_vector_checks() -> None:
    proto = (Path(__file__).parents[2] / "protos/haulmesh/mission/v1/mission.proto").read_text()
    assert "4-byte big-endian length" in proto and "pod_telemetry_log_vector.json" in proto
