"""The telemetry tests (tests/telemetry) on the three-primary cluster: the same functions, this folder's store.

Left out, and why: ``test_kill_9_of_the_store_keeps_every_acknowledged_frame`` kills the embedded store it
starts itself (single node by design); the domain tests touch no store.
"""

from tests.telemetry.stream.test_assignment import test_dispatch_sends_the_assignment_to_the_truck_once  # noqa: F401
from tests.telemetry.stream.test_faults import test_kill_9_of_telemetry_mid_stream_loses_and_duplicates_nothing  # noqa: F401
from tests.telemetry.stream.test_stream import *  # noqa: F403
