"""The EDI service's gRPC face: the standard health service only, for now (its doors to partners are folders and
SFTP; an EdiService API for the console, listing documents, is to come). ``POLICY`` allows nothing beyond what
the runtime always serves (health, reflection)."""

from __future__ import annotations

from services.runtime import Policy

__all__ = ["POLICY"]

#: Who may call what: no EDI method yet (default deny); the runtime adds health and reflection.
POLICY = Policy({})
