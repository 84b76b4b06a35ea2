"""Tender service tests."""
