"""Fuzzing the telemetry stream's frame decoding and signature verification (issue 12, AT-19's frame half)."""
