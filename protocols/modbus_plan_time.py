"""The wire time of a read plan (protocols/modbus_plan.py): the gateway's bus budget, kept apart so
a node, which runs plans but never budgets them, does not carry it."""

from protocols.modbus_plan import ReadPlan
from protocols.modbus_timing import transaction_time_us

REQUEST_LENGTH = 8  # every read request is unit, function, address, quantity, CRC


def plan_bus_time_us(plan, baud, framing="8E1", turnaround_us=0):
    """Wire time of one pass over `plan` (a ReadPlan or PlannedReads): each read's request and
    reply bytes, two t3.5 gaps and the device's turnaround (see modbus_rtu.transaction_time_us)."""
    reads = plan.reads if isinstance(plan, ReadPlan) else plan
    total = 0.0
    for r in reads:
        total += transaction_time_us(REQUEST_LENGTH, r.response_length(), baud, framing,
                                     turnaround_us)
    return total
