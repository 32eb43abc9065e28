"""Modbus RTU: request and response ADUs for function codes 01-06, 0F, 10 and 17, and wire timing.

Sources: Modbus Application Protocol V1.1b3 (PDUs, limits, exception codes; §6 per function)
and Modbus over Serial Line V1.02 (RTU framing, CRC, t1.5/t3.5; §2.5). ADU = unit | function | data |
CRC lo | CRC hi, at most 256 bytes (serial spec §2.5.1).

The builders (read_holding_registers, ...) return whole ADUs; parse_response(request, response)
checks the reply against its request and returns the decoded values, raising ModbusException for a
well-formed exception reply (a device answer, reported as data quality) and ModbusFrameError for
anything malformed or mismatched; parse_request turns a request ADU back into a ModbusRequest (a
server parses what it hears); request_length / response_length frame a byte stream
(protocols/modbus_receiver.py).

Split by role so a board carries only what a master runs: protocols/modbus_adu.py holds the
master's part (request bytes, the check of a raw request, reply decoding, the constants),
protocols/modbus_fields.py the unit, range and value checks and protocols/modbus_write.py the
single-register write, all re-exported here with everything else; the server's reply builders
(build_response, build_exception) are in protocols/modbus_server.py, the wire timing (char_bits,
char_time_us, t15_us, t35_us, transaction_time_us) in protocols/modbus_timing.py, re-exported here
too. A node's firmware imports modbus_adu, never this module.
"""

from protocols.crc import crc16_modbus
from protocols.errors import ProtocolError  # noqa: F401 - re-exported
from protocols.modbus_adu import (  # noqa: F401 - re-exported: this module is the whole codec
    ANY_ADDRESS, BROADCAST, COIL_ON, ECHOES, EXCEPTION_LENGTH, EXCEPTION_NAMES, FUNCTIONS,
    ILLEGAL_DATA_VALUE, MAX_ADU, MAX_UNIT, READ_LIMITS, READS, ModbusException, ModbusFrameError,
    ModbusRequestError, get_word, reply_length, reply_values, request_error,
    request_head, response_length, short_request, unpack_bits, with_crc)
from protocols.modbus_fields import (  # noqa: F401 - re-exported
    ILLEGAL_DATA_ADDRESS, ILLEGAL_FUNCTION, check_range, check_registers, check_unit)
from protocols.modbus_timing import (  # noqa: F401 - re-exported: the gateway's timing
    char_bits, char_time_us, t15_us, t35_us, transaction_time_us)
from protocols.modbus_write import write_single_register  # noqa: F401 - re-exported

READ_COILS = 0x01
READ_DISCRETE_INPUTS = 0x02
READ_HOLDING_REGISTERS = 0x03
READ_INPUT_REGISTERS = 0x04
WRITE_SINGLE_COIL = 0x05
WRITE_SINGLE_REGISTER = 0x06
WRITE_MULTIPLE_COILS = 0x0F
WRITE_MULTIPLE_REGISTERS = 0x10
READ_WRITE_MULTIPLE_REGISTERS = 0x17

WRITE_LIMITS = {0x0F: 1968, 0x10: 123, 0x17: 121}  # application spec §6.11, §6.12, §6.17


def exception_name(code):
    """The spec's name of exception `code` (ModbusException.name)."""
    return ModbusException(0, 0, code).name


class ModbusRequest:
    """One request's fields. `address`/`quantity` are the read range for 01-04 and 17 and the
    written range for 05, 06, 0F and 10; `values` holds what is written (bools for coils, ints for
    registers; one item for 05/06); `write_address` is set for 17 only."""

    def __init__(self, unit, function, address, quantity, values=None, write_address=None):
        self.unit = unit
        self.function = function
        self.address = address
        self.quantity = quantity
        self.values = values
        self.write_address = write_address

    def __eq__(self, other):
        return isinstance(other, ModbusRequest) and self._key() == other._key()

    def _key(self):
        values = None if self.values is None else list(self.values)
        return (self.unit, self.function, self.address, self.quantity, values, self.write_address)

    def __repr__(self):
        return "ModbusRequest(unit=%r, function=%r, address=%r, quantity=%r, values=%r%s)" % (
            self.unit, self.function, self.address, self.quantity, self.values,
            "" if self.write_address is None else ", write_address=%r" % (self.write_address,))


# --- encoding helpers (shared with modbus_server) ------------------------------------------------

def put_word(buf, value):
    buf.append(value >> 8)
    buf.append(value & 0xFF)


def pack_bits(bits):
    """Coil and input states, first item in bit 0 of the first byte (application spec §6.1)."""
    out = bytearray((len(bits) + 7) >> 3)
    for i in range(len(bits)):
        if bits[i]:
            out[i >> 3] |= 1 << (i & 7)
    return out


def registers_bytes(values):
    out = bytearray()
    for v in values:
        put_word(out, v)
    return out


# --- request building ----------------------------------------------------------------------------

def check_request(req, any_address=False):
    """Raise ModbusRequestError if `req` breaks a limit of the spec; otherwise return it."""
    if req.function not in FUNCTIONS:
        request_error("function %r is not one of 01-06, 0F, 10, 17" % (req.function,), ILLEGAL_FUNCTION)
    check_unit(req.unit, req.function, any_address)
    return _check_fields(req)


def _check_fields(req):
    fn = req.function
    if fn in READS:
        check_range(fn, req.address, req.quantity, READ_LIMITS[fn], "read")
    elif fn == 0x05 or fn == 0x06:
        check_range(fn, req.address, 1, 1, "write")
        if req.values is None or len(req.values) != 1:
            request_error("function 0x%02X writes exactly one value" % fn, ILLEGAL_DATA_VALUE)
        if fn == 0x06:
            check_registers(req.values)
    else:
        if req.values is None:
            request_error("function 0x%02X needs values to write" % fn, ILLEGAL_DATA_VALUE)
        address = req.write_address if fn == 0x17 else req.address
        check_range(fn, address, len(req.values), WRITE_LIMITS[fn], "write")
        if fn != 0x0F:
            check_registers(req.values)
        if fn == 0x17:
            check_range(fn, req.address, req.quantity, READ_LIMITS[fn], "read")
        elif req.quantity != len(req.values):
            request_error("quantity %r does not match %d values" % (req.quantity, len(req.values)),
                  ILLEGAL_DATA_VALUE)
    return req


def build_request(req, any_address=False):
    """The whole ADU for a ModbusRequest (the inverse of parse_request)."""
    check_request(req, any_address)
    fn = req.function
    out = bytearray((req.unit, fn))
    put_word(out, req.address)
    if fn in READS:
        put_word(out, req.quantity)
    elif fn == 0x05:
        put_word(out, COIL_ON if req.values[0] else 0)
    elif fn == 0x06:
        put_word(out, req.values[0])
    elif fn == 0x0F:
        packed = pack_bits(req.values)
        put_word(out, req.quantity)
        out.append(len(packed))
        out.extend(packed)
    else:  # 0x10 and 0x17
        if fn == 0x17:
            put_word(out, req.quantity)
            put_word(out, req.write_address)
        put_word(out, len(req.values))
        out.append(2 * len(req.values))
        out.extend(registers_bytes(req.values))
    return with_crc(out)


def read_request(unit, function, address, quantity, any_address=False):
    """The ADU reading `quantity` items from `address` with read function 01-04 (the same checks,
    errors and bytes as modbus_rtu.build_request)."""
    if function not in READS:
        request_error("function %r is not one of 01-04" % (function,), ILLEGAL_FUNCTION)
    check_unit(unit, function, any_address)
    check_range(function, address, quantity, READ_LIMITS[function], "read")
    return short_request(unit, function, address, quantity)


def read_coils(unit, address, quantity, any_address=False):
    return build_request(ModbusRequest(unit, 0x01, address, quantity), any_address)


def read_discrete_inputs(unit, address, quantity, any_address=False):
    return build_request(ModbusRequest(unit, 0x02, address, quantity), any_address)


def read_holding_registers(unit, address, quantity, any_address=False):
    return build_request(ModbusRequest(unit, 0x03, address, quantity), any_address)


def read_input_registers(unit, address, quantity, any_address=False):
    return build_request(ModbusRequest(unit, 0x04, address, quantity), any_address)


def write_single_coil(unit, address, value, any_address=False):
    return build_request(ModbusRequest(unit, 0x05, address, 1, [bool(value)]), any_address)


def write_multiple_coils(unit, address, values, any_address=False):
    values = [bool(v) for v in values]
    return build_request(ModbusRequest(unit, 0x0F, address, len(values), values), any_address)


def write_multiple_registers(unit, address, values, any_address=False):
    values = list(values)
    return build_request(ModbusRequest(unit, 0x10, address, len(values), values), any_address)


def read_write_multiple_registers(unit, read_address, read_quantity, write_address, values,
                                  any_address=False):
    """Function 17: the write happens before the read (application spec §6.17)."""
    return build_request(ModbusRequest(unit, 0x17, read_address, read_quantity, list(values),
                                       write_address), any_address)


# --- request parsing (a server's) ----------------------------------------------------------------

def check_crc(adu, what):
    n = len(adu)
    if n < 4:
        raise ModbusFrameError("%s of %d bytes is shorter than the 4-byte minimum" % (what, n), n)
    if n > MAX_ADU:
        raise ModbusFrameError("%s of %d bytes is longer than the 256-byte maximum" % (what, n),
                               MAX_ADU)
    if crc16_modbus(adu) != 0:
        raise ModbusFrameError("%s CRC does not match its bytes" % what, n - 2)


def checked_request_head(adu):
    """modbus_adu's head (unit, function, address, word) of a whole request ADU, after every check
    parse_request makes (modbus_adu.request_head, the master's, checks only CRC and length):
    ModbusFrameError for malformed bytes, ModbusRequestError (with the exception `code` to answer,
    the unit and the function) for a well-formed request that breaks a limit or uses a function
    this module does not support. Any unit byte is accepted: the server decides whether it is
    addressed."""
    check_crc(adu, "request")
    n = len(adu)
    unit = adu[0]
    fn = adu[1]
    if fn == 0 or fn & 0x80:
        raise ModbusFrameError("function byte 0x%02X is not a request function" % fn, 1)
    if fn not in FUNCTIONS:
        raise ModbusRequestError("function 0x%02X is not supported" % fn, ILLEGAL_FUNCTION, 1,
                                 unit, fn)
    if unit == BROADCAST and fn not in ECHOES:
        raise ModbusFrameError("a broadcast (unit 0) cannot carry read function 0x%02X" % fn, 1)
    if fn == 0x0F or fn == 0x10:
        fixed, count_at = 9, 6
    elif fn == 0x17:
        fixed, count_at = 13, 10
    else:
        fixed, count_at = 8, None
    if n < fixed or (count_at is None and n != fixed):
        raise ModbusFrameError("function 0x%02X request is %d bytes, not %d" % (fn, n, fixed),
                               min(n, fixed) - 2)
    if count_at is not None and n != fixed + adu[count_at]:
        raise ModbusFrameError("byte count %d disagrees with the %d-byte request"
                               % (adu[count_at], n), count_at)
    address = get_word(adu, 2)
    word = get_word(adu, 4)
    if fn == 0x05 and word != COIL_ON and word != 0:
        raise ModbusRequestError("coil value 0x%04X is neither FF00 nor 0000" % word,
                                 ILLEGAL_DATA_VALUE, 4, unit, fn)
    if count_at is not None:
        count = get_word(adu, count_at - 2)
        bc = adu[count_at]
        if bc != ((count + 7) >> 3 if fn == 0x0F else 2 * count):
            raise ModbusRequestError("byte count %d does not fit quantity %d" % (bc, count),
                                     ILLEGAL_DATA_VALUE, count_at, unit, fn)
    try:
        if fn in READS:
            check_range(fn, address, word, READ_LIMITS[fn], "read")
        elif fn == 0x17:
            check_range(fn, get_word(adu, 6), count, WRITE_LIMITS[fn], "write")
            check_range(fn, address, word, READ_LIMITS[fn], "read")
        elif count_at is not None:
            check_range(fn, address, count, WRITE_LIMITS[fn], "write")
    except ModbusRequestError as exc:
        raise ModbusRequestError(exc.reason, exc.code, 2, unit, fn)
    return unit, fn, address, word


def parse_request(adu):
    """A ModbusRequest from a whole request ADU. Raises ModbusFrameError for malformed bytes and
    ModbusRequestError (with the exception `code` to answer) for a well-formed request that breaks
    a limit or uses a function this module does not support. Any unit byte is accepted: the
    server decides whether it is addressed."""
    unit, fn, address, word = checked_request_head(adu)
    if fn in READS:
        return ModbusRequest(unit, fn, address, word)
    if fn == 0x05:
        return ModbusRequest(unit, fn, address, 1, [word == COIL_ON])
    if fn == 0x06:
        return ModbusRequest(unit, fn, address, 1, [word])
    count_at = 10 if fn == 0x17 else 6
    count = get_word(adu, count_at - 2)
    if fn == 0x0F:
        values = unpack_bits(adu, count_at + 1, count)
    else:
        values = [get_word(adu, count_at + 1 + 2 * i) for i in range(count)]
    if fn == 0x17:
        return ModbusRequest(unit, fn, address, word, values, get_word(adu, 6))
    return ModbusRequest(unit, fn, address, count, values)


def as_request(request):
    if isinstance(request, ModbusRequest):
        return request
    return parse_request(request)


# --- responses (master side, on modbus_adu; the server builds them with protocols/modbus_server.py)

def request_head_of(request):
    """modbus_adu's head (unit, function, address, word) of `request`, an ADU or a ModbusRequest."""
    if not isinstance(request, ModbusRequest):
        return checked_request_head(request)
    fn = request.function
    if fn == 0x05 or fn == 0x06:
        values = request.values
        # None (no value to echo) only for a request build_request would refuse.
        word = None if not values else (COIL_ON if values[0] else 0) if fn == 0x05 else values[0]
    else:
        word = request.quantity
    return request.unit, fn, request.address, word


def parse_reply(head, response):
    """parse_response for the request whose head is `head`: every check of the reply's bytes
    against the request, then modbus_adu.reply_values (what a node's master runs, its framer
    having made these checks)."""
    unit, fn, address, word = head
    if unit == BROADCAST:
        raise ModbusFrameError("a broadcast request gets no response")
    n = len(response)
    if n < EXCEPTION_LENGTH:
        raise ModbusFrameError("response of %d bytes is shorter than the 5-byte minimum" % n, n)
    check_crc(response, "response")
    if response[0] != unit:
        raise ModbusFrameError("response comes from unit %d, the request went to unit %d"
                               % (response[0], unit), 0)
    if response[1] != fn:
        if response[1] != fn | 0x80:
            raise ModbusFrameError("response function 0x%02X does not answer function 0x%02X"
                                   % (response[1], fn), 1)
        if n != EXCEPTION_LENGTH:
            raise ModbusFrameError("exception response is %d bytes, not 5" % n, 3)
    else:
        want = reply_length(head)
        if fn in ECHOES:
            if n != want:
                raise ModbusFrameError("function 0x%02X response is %d bytes, not 8" % (fn, n),
                                       min(n, 8) - 2)
        elif n != want and response[2] == want - 5:  # a wrong byte count is reported first
            raise ModbusFrameError("response is %d bytes, its byte count says %d" % (n, want),
                                   min(n, want) - 2)
    return reply_values(head, response)


def expected_response_length(request):
    """Bytes in the normal reply to `request` (ADU or ModbusRequest); 0 for a broadcast. An
    exception reply is always EXCEPTION_LENGTH (5) bytes."""
    return reply_length(request_head_of(request))


def parse_response(request, response):
    """The decoded reply to `request` (an ADU or a ModbusRequest): a list of `quantity` bools for
    01/02, a list of ints for 03/04/17, (address, value) for 05/06 (value a bool for 05), and
    (address, quantity) for 0F/10. Raises ModbusException for an exception reply and
    ModbusFrameError for a malformed reply or one that does not answer this request."""
    return parse_reply(request_head_of(request), response)


# --- lengths from the first bytes, for a receiver that frames a stream ---------------------------

def request_length(head, start=0):
    """A request's whole ADU length from its first bytes (at `start` in `head`): > 0 when known,
    0 when more bytes are needed to tell, None when they cannot start a supported request."""
    have = len(head) - start
    if have < 2:
        return 0
    fn = head[start + 1]
    if 0x01 <= fn <= 0x06:
        return 8
    if fn == 0x0F or fn == 0x10:
        count_at, fixed, top = 6, 9, 246  # 1968 coils = 246 bytes, 123 registers = 246 bytes
    elif fn == 0x17:
        count_at, fixed, top = 10, 13, 242  # 121 registers
    else:
        return None
    if have <= count_at:
        return 0
    bc = head[start + count_at]
    if bc == 0 or bc > top or (fn != 0x0F and bc & 1):
        return None
    return fixed + bc
