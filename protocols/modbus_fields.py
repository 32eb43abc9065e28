"""Modbus RTU request fields checked against the spec's limits (application spec §6): the
address range of a read or write and the register values written. Shared by modbus_rtu's builders
and protocols/modbus_write.py; apart from protocols/modbus_adu.py because a node whose reads all
come from the read planner (which checks their ranges itself) does not need it."""

from protocols.modbus_adu import ILLEGAL_DATA_ADDRESS, ILLEGAL_DATA_VALUE, request_error


def check_range(function, address, quantity, limit, what):
    if not isinstance(address, int) or not 0 <= address <= 0xFFFF:
        request_error("%s address %r is outside 0..65535" % (what, address), ILLEGAL_DATA_ADDRESS)
    if not isinstance(quantity, int) or not 1 <= quantity <= limit:
        request_error("%s quantity %r for function 0x%02X is outside 1..%d" % (what, quantity, function, limit),
              ILLEGAL_DATA_VALUE)
    if address + quantity > 0x10000:
        request_error("%s range %d+%d runs past address 65535" % (what, address, quantity),
              ILLEGAL_DATA_ADDRESS)


def check_registers(values):
    for v in values:
        if not isinstance(v, int) or not 0 <= v <= 0xFFFF:
            request_error("register value %r is outside 0..0xFFFF" % (v,), ILLEGAL_DATA_VALUE)
