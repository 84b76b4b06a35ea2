"""Fixtures of the metrics tests: a telemetry process with its Prometheus endpoint on, and a scraper."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.runtime import free_port
from tests.conftest import Pki
from tests.telemetry.helpers import TelemetryProcess, Truck

#: (sample name, sorted label items) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class MeteredTelemetry(TelemetryProcess):
    """The real telemetry process with ``HAULMESH_METRICS_PORT`` set to a free port."""

    def __init__(self, *args: object, **env: str) -> None:
        self.metrics_port = free_port()
        super().__init__(*args, HAULMESH_METRICS_PORT=str(self.metrics_port), **env)
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    async def scrape(self) -> Samples:
        """GET the exposition over real HTTP and parse it (the parser raises on a malformed exposition)."""
        async with httpx.AsyncClient(timeout=10) as http:
            reply = await http.get(self.metrics_url)
        reply.raise_for_status()
        assert reply.headers["content-type"].startswith("text/plain")
        return parse(reply.text)


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; KeyError (a failed test) if the series is not exported."""
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
async def metered(mesh_pki: Pki, store_url: str, tmp_path_factory: pytest.TempPathFactory) -> MeteredTelemetry:
    async with MeteredTelemetry.running(mesh_pki, tmp_path_factory.mktemp("metered-telemetry"), store_url) as process:
        yield process


@pytest.fixture
def other_truck(mesh_pki: Pki) -> Truck:
    return Truck.mint(mesh_pki.ca)
