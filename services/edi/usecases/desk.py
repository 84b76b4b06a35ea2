"""The EDI service's use cases as one object: the desk the workers and the SFTP door call."""

from __future__ import annotations

from .inbound import Inbound
from .shipments import Shipments

__all__ = ["EdiDesk"]


class EdiDesk(Inbound, Shipments):
    """Inbound files (204s, the partner's 997s) and their answers (TA1, 997, 990); the chase of our documents'
    997s; the 214s and 210s of the partners' shipments. Built with the collaborators of
    :class:`~services.edi.usecases.outbound.DeskBase`."""
