"""The 204s the service tests send, written for this project: Prairie Freight (the example partner file's
``prairie``) tenders a Dallas → Houston load, its pickup a few days from now (the tender service refuses a window
in the past), with the shapes the flow needs: an original, a change, a cancel, and one whose B2 has no shipment id
(a content error, AK5 R in the 997)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from services.edi.domain import Delimiters, FunctionalGroup, Interchange, Segment, TransactionSet, write


def load_tender_204(shipment: str, *, purpose: str = "00", isa13: str = "000000905", rate_cents: int = 999_900,
                    pickup_zip: str = "75212", delivery_zip: str = "77002", days_ahead: int = 2,
                    without_shipment_id: bool = False, ack_requested: str = "0", weight: int = 42000,
                    delivery_window: bool = True, sender: tuple[str, str] = ("ZZ", "PRAIRIEFRT")) -> bytes:
    """An interchange of one group of one 204 (ST02 0001), from ``sender`` (ISA05, ISA06; GS02 the same id)."""
    pickup = date.today() + timedelta(days=days_ahead)
    delivery = pickup + timedelta(days=1)
    day = pickup.strftime("%Y%m%d")
    body = [
        Segment.of("B2", "", "HMSH", "", "" if without_shipment_id else shipment, "", "PP"),
        Segment.of("B2A", purpose, "LT"),
        Segment.of("L11", f"BOL-{shipment}", "BM"),
        Segment.of("L11", "PO-55120", "PO"),
        Segment.of("NTE", "GEN", "Autonomous lane; trailer pre-loaded at door 4"),
        Segment.of("N1", "BT", "Prairie Freight Payables", "93", "PF-BILLTO"),
        Segment.of("N4", "Dallas", "TX", "75202", "US"),
        Segment.of("S5", "1", "LD", str(weight), "L", "22", "PL"),
        Segment.of("G62", "37", day, "I", "0800", "LT"),
        Segment.of("G62", "38", day, "K", "1000", "LT"),
        Segment.of("N1", "SH", "Prairie Dallas Cross-Dock", "93", "PF-DAL-01"),
        Segment.of("N3", "2100 Logistics Pkwy"),
        Segment.of("N4", "Dallas", "TX", pickup_zip, "US"),
        Segment.of("L5", "1", "Canned vegetables", "86700", "N"),
        Segment.of("AT8", "G", "L", str(weight), "22"),
        Segment.of("S5", "2", "UL", str(weight), "L", "22", "PL"),
        *([Segment.of("G62", "53", delivery.strftime("%Y%m%d"), "G", "0600", "LT"),
           Segment.of("G62", "54", delivery.strftime("%Y%m%d"), "L", "1800", "LT")] if delivery_window else []),
        Segment.of("N1", "CN", "Prairie Houston DC", "93", "PF-HOU-02"),
        Segment.of("N3", "800 Port Rd"),
        Segment.of("N4", "Houston", "TX", delivery_zip, "US"),
        Segment.of("L3", str(weight), "G", "", "", str(rate_cents)),
    ]
    group = FunctionalGroup("SM", sender[1], "HAULMESH", date.today().strftime("%Y%m%d"), "0905",
                            str(int(isa13)), "004010", (TransactionSet("204", "0001", tuple(body)),))
    interchange = Interchange(sender[0], sender[1], "ZZ", "HAULMESH", date.today().strftime("%y%m%d"), "0905", isa13,
                              "00401", ack_requested=ack_requested, usage="P", groups=(group,),
                              delimiters=Delimiters(line_end="\n"))
    return write(interchange)


async def nothing() -> None:
    """The desk's ``durable`` where the tests do not measure it (the mesh's is WAITAOF)."""
    return None


class Clock:
    """The desk's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)
