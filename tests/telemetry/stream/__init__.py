"""Telemetry streams: ingest, acks, commands, workers and faults, against a real telemetry process."""
