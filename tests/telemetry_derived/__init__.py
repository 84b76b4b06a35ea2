"""Derived telemetry events (services/telemetry/derived.py): pure-domain tests."""
