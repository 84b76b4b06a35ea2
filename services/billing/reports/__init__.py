"""Billing's KPI report: the pilot's figures per carrier and lane over a window (ReportService), from a projection
of the mesh's events (workers.py) kept as compact facts per mission and tender (store.py)."""
