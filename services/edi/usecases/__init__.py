"""The EDI service's use cases: orchestration of the folders, the raw archive, the store, the domain's X12 rules
and the mesh services (tender, mission), one job a module, mixed into :class:`EdiDesk`:

* outbound.py: the desk's collaborators and the one outbound path (numbered, archived, recorded durably, then
  placed in ``out/``; tracked for the partner's 997 when it owes one);
* inbound.py: one inbound file end to end: archive, envelope check (TA1), duplicates, 997 per group, 204s →
  CreateTender / UpdateTender / CancelTender;
* answers.py: the 990 by the partner's policy, and a person's answer to a held tender;
* acknowledgements.py: the partner's 997s matched to our documents; the chase of those that do not come;
* shipments.py: the 214s from the mission's and telemetry's events, the 210 from billing's invoice;
* clients.py: the tender and mission services as the edi service calls them; which failures pass by themselves.

Every document in or out is recorded (store.py) and archived raw; an outbound file is written only once its
record is durable, through ``out/<name>.tmp`` and a rename.
"""

from .answers import Received
from .clients import MissionClient, TenderClient, is_transient
from .desk import EdiDesk
from .shipments import SHIPMENT_EVENT_TYPES

__all__ = ["SHIPMENT_EVENT_TYPES", "EdiDesk", "MissionClient", "Received", "TenderClient", "is_transient"]
