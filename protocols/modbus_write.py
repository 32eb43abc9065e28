"""Modbus RTU function 06, write single register: the one write a node sends (a profile command,
e.g. the SenseAir S8's background calibration), apart from protocols/modbus_adu.py so a board
without such a device does not carry it. The same checks, errors and bytes as
protocols.modbus_rtu's builders (it re-exports this one)."""

from protocols.modbus_adu import short_request
from protocols.modbus_fields import check_range, check_registers, check_unit


def write_single_register(unit, address, value, any_address=False):
    check_unit(unit, 0x06, any_address)
    check_range(0x06, address, 1, 1, "write")
    check_registers((value,))
    return short_request(unit, 0x06, address, value)
