"""Modbus RTU, server side: the normal and exception replies an emulator or a test peer sends
(Modbus Application Protocol V1.1b3 §6 per function, §7 exceptions). Requests are parsed with
protocols.modbus_rtu.parse_request and framed from a byte stream by protocols/modbus_receiver.py
(role "server"). Kept out of modbus_rtu.py so a node, which is only ever a master, does not carry it.
"""

from protocols.modbus_rtu import (
    BROADCAST, COIL_ON, ECHOES, ILLEGAL_DATA_VALUE, as_request, check_registers, pack_bits, put_word,
    registers_bytes, request_error, with_crc)


def build_response(request, values=None):
    """The normal response ADU to `request` (an ADU or a ModbusRequest): `values` are the bools
    (01/02) or register ints (03/04/17) read, exactly `quantity` of them; writes echo the request
    and take no values. A broadcast gets no response, so asking for one is an error."""
    req = as_request(request)
    fn = req.function
    if req.unit == BROADCAST:
        request_error("a broadcast request gets no response", ILLEGAL_DATA_VALUE)
    out = bytearray((req.unit, fn))
    if fn in ECHOES:
        if values is not None:
            request_error("function 0x%02X echoes its request and takes no values" % fn, ILLEGAL_DATA_VALUE)
        put_word(out, req.address)
        if fn == 0x05:
            put_word(out, COIL_ON if req.values[0] else 0)
        elif fn == 0x06:
            put_word(out, req.values[0])
        else:
            put_word(out, req.quantity)
        return with_crc(out)
    if values is None or len(values) != req.quantity:
        request_error("function 0x%02X needs exactly %d values" % (fn, req.quantity), ILLEGAL_DATA_VALUE)
    if fn == 0x01 or fn == 0x02:
        data = pack_bits(values)
    else:
        check_registers(values)
        data = registers_bytes(values)
    out.append(len(data))
    out.extend(data)
    return with_crc(out)


def build_exception(unit, function, code):
    """An exception response: function with its top bit set, then the code (application spec §7)."""
    if not isinstance(function, int) or not 1 <= function <= 0x7F:
        request_error("function %r is outside 1..0x7F" % (function,), ILLEGAL_DATA_VALUE)
    if not isinstance(code, int) or not 1 <= code <= 0xFF:
        request_error("exception code %r is outside 1..255" % (code,), ILLEGAL_DATA_VALUE)
    if not isinstance(unit, int) or not 1 <= unit <= 0xFF:
        request_error("unit %r cannot answer (1..255)" % (unit,), ILLEGAL_DATA_VALUE)
    return with_crc(bytearray((unit, function | 0x80, code)))
