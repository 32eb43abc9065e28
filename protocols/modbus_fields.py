"""Modbus RTU request fields checked against the spec's limits (application spec §6, serial spec
§2.2): the unit addressed, the address range of a read or write and the register values written,
each refusal a ModbusRequestError with the exception code a server would answer. Shared by
modbus_rtu's builders and protocols/modbus_write.py; apart from protocols/modbus_adu.py because a
node whose reads all come from the read planner (which checks their fields itself) does not need
it."""

from protocols.modbus_adu import ANY_ADDRESS, BROADCAST, ECHOES, ILLEGAL_DATA_VALUE, MAX_UNIT, request_error

ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02


def check_unit(unit, function, any_address):
    if not isinstance(unit, int):
        request_error("unit must be an int, not %r" % (unit,), ILLEGAL_DATA_VALUE)
    if unit == BROADCAST:
        if function in ECHOES:
            return
        request_error("unit 0 is broadcast, which only writes (05, 06, 0F, 10) may use, not function 0x%02X"
              % function, ILLEGAL_DATA_VALUE)
    if unit == ANY_ADDRESS and any_address:
        return
    if not 1 <= unit <= MAX_UNIT:
        request_error("unit %r is outside 1..247 (0xFE needs any_address=True)" % (unit,), ILLEGAL_DATA_VALUE)


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
