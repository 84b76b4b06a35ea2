"""Derived telemetry events (services/telemetry/domain/ and convert.py): pure-domain tests."""
