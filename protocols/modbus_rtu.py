"""Modbus RTU: request and response ADUs for function codes 01-06, 0F, 10 and 17, and wire timing.

Sources: Modbus Application Protocol V1.1b3 (PDUs, limits, exception codes; §6 per function)
and Modbus over Serial Line V1.02 (RTU framing, CRC, t1.5/t3.5; §2.5). ADU = unit | function | data |
CRC lo | CRC hi, at most 256 bytes (serial spec §2.5.1).

This module is what a node's master carries. The builders (read_holding_registers, ...) return
whole ADUs; parse_response(request, response) checks the reply against its request and returns the
decoded values, raising ModbusException for a well-formed exception reply (a device answer,
reported as data quality) and ModbusFrameError for anything malformed or mismatched;
parse_request turns a request ADU back into a ModbusRequest (the master takes raw ADUs from
commands; a server parses what it hears); request_length / response_length frame a byte stream
(protocols/modbus_receiver.py).

Split by role so a board carries only the master side: the server's reply builders
(build_response, build_exception) are in protocols/modbus_server.py, the wire timing (char_bits,
char_time_us, t15_us, t35_us, transaction_time_us) in protocols/modbus_timing.py, re-exported here
because the master paces the bus with it.
"""

from protocols.crc import crc16_modbus
from protocols.errors import ProtocolError
from protocols.modbus_timing import (  # noqa: F401 - re-exported: the master's and gateway's timing
    char_bits, char_time_us, t15_us, t35_us, transaction_time_us)

READ_COILS = 0x01
READ_DISCRETE_INPUTS = 0x02
READ_HOLDING_REGISTERS = 0x03
READ_INPUT_REGISTERS = 0x04
WRITE_SINGLE_COIL = 0x05
WRITE_SINGLE_REGISTER = 0x06
WRITE_MULTIPLE_COILS = 0x0F
WRITE_MULTIPLE_REGISTERS = 0x10
READ_WRITE_MULTIPLE_REGISTERS = 0x17
FUNCTIONS = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F, 0x10, 0x17)

BROADCAST = 0  # serial spec §2.2: no reply, writes only
MAX_UNIT = 247  # 248..255 are reserved (serial spec §2.2)
ANY_ADDRESS = 0xFE  # SenseAir S8 answers this whatever its own address (REFERENCE.md §4)
MAX_ADU = 256  # serial spec §2.5.1
EXCEPTION_LENGTH = 5  # unit, function | 0x80, code, CRC (application spec §7)

# Quantity limits, application spec §6.1-6.17.
READ_LIMITS = {0x01: 2000, 0x02: 2000, 0x03: 125, 0x04: 125, 0x17: 125}
WRITE_LIMITS = {0x0F: 1968, 0x10: 123, 0x17: 121}

ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03
EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}

COIL_ON = 0xFF00  # application spec §6.5: FF00 = on, 0000 = off, anything else is illegal
READS = (0x01, 0x02, 0x03, 0x04)
ECHOES = (0x05, 0x06, 0x0F, 0x10)


class ModbusFrameError(ProtocolError):
    """Malformed bytes, or a response that does not answer its request."""


class ModbusRequestError(ProtocolError):
    """Request fields outside the spec's limits. `code` is the exception code a server answers
    with (01 unsupported function, 02 address range, 03 quantity or value); `unit` and `function`
    are set when parse_request raised it, so an emulator can call build_exception directly."""

    def __init__(self, reason, code=ILLEGAL_DATA_VALUE, offset=None, unit=None, function=None):
        ProtocolError.__init__(self, reason, offset)
        self.code = code
        self.unit = unit
        self.function = function


class ModbusException(Exception):
    """A well-formed exception response: the device understood and refused. Not a ProtocolError,
    so callers report it as the sample's quality rather than as line noise."""

    def __init__(self, unit, function, code):
        self.unit = unit
        self.function = function
        self.code = code
        self.name = exception_name(code)
        super().__init__("unit %d answered function 0x%02X with exception %02X (%s)"
                           % (unit, function, code, self.name))


def exception_name(code):
    return EXCEPTION_NAMES.get(code, "unknown exception code")


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

def with_crc(head):
    """Append the CRC, low byte first (serial spec §2.5.1.2), to a bytearray and return bytes."""
    crc = crc16_modbus(head)
    head.append(crc & 0xFF)
    head.append(crc >> 8)
    return bytes(head)


def put_word(buf, value):
    buf.append(value >> 8)
    buf.append(value & 0xFF)


def get_word(data, at):
    return (data[at] << 8) | data[at + 1]


def pack_bits(bits):
    """Coil and input states, first item in bit 0 of the first byte (application spec §6.1)."""
    out = bytearray((len(bits) + 7) >> 3)
    for i in range(len(bits)):
        if bits[i]:
            out[i >> 3] |= 1 << (i & 7)
    return out


def unpack_bits(data, at, count):
    return [bool(data[at + (i >> 3)] & (1 << (i & 7))) for i in range(count)]


def registers_bytes(values):
    out = bytearray()
    for v in values:
        put_word(out, v)
    return out


# --- request building ----------------------------------------------------------------------------

def request_error(reason, code):
    raise ModbusRequestError(reason, code)


def _check_unit(unit, function, any_address):
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


def _check_range(function, address, quantity, limit, what):
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


def check_request(req, any_address=False):
    """Raise ModbusRequestError if `req` breaks a limit of the spec; otherwise return it."""
    if req.function not in FUNCTIONS:
        request_error("function %r is not one of 01-06, 0F, 10, 17" % (req.function,), ILLEGAL_FUNCTION)
    _check_unit(req.unit, req.function, any_address)
    return _check_fields(req)


def _check_fields(req):
    fn = req.function
    if fn in READS:
        _check_range(fn, req.address, req.quantity, READ_LIMITS[fn], "read")
    elif fn == 0x05 or fn == 0x06:
        _check_range(fn, req.address, 1, 1, "write")
        if req.values is None or len(req.values) != 1:
            request_error("function 0x%02X writes exactly one value" % fn, ILLEGAL_DATA_VALUE)
        if fn == 0x06:
            check_registers(req.values)
    else:
        if req.values is None:
            request_error("function 0x%02X needs values to write" % fn, ILLEGAL_DATA_VALUE)
        address = req.write_address if fn == 0x17 else req.address
        _check_range(fn, address, len(req.values), WRITE_LIMITS[fn], "write")
        if fn != 0x0F:
            check_registers(req.values)
        if fn == 0x17:
            _check_range(fn, req.address, req.quantity, READ_LIMITS[fn], "read")
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


def write_single_register(unit, address, value, any_address=False):
    return build_request(ModbusRequest(unit, 0x06, address, 1, [value]), any_address)


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


# --- request parsing (a server's, and the master's for raw ADUs from commands) -------------------

def _check_crc(adu, what):
    n = len(adu)
    if n < 4:
        raise ModbusFrameError("%s of %d bytes is shorter than the 4-byte minimum" % (what, n), n)
    if n > MAX_ADU:
        raise ModbusFrameError("%s of %d bytes is longer than the 256-byte maximum" % (what, n),
                               MAX_ADU)
    if crc16_modbus(adu) != 0:
        raise ModbusFrameError("%s CRC does not match its bytes" % what, n - 2)


def parse_request(adu):
    """A ModbusRequest from a whole request ADU. Raises ModbusFrameError for malformed bytes and
    ModbusRequestError (with the exception `code` to answer) for a well-formed request that breaks
    a limit or uses a function this module does not support. Any unit byte is accepted: the
    server decides whether it is addressed."""
    _check_crc(adu, "request")
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
    if fn in READS:
        req = ModbusRequest(unit, fn, address, word)
    elif fn == 0x05:
        if word != COIL_ON and word != 0:
            raise ModbusRequestError("coil value 0x%04X is neither FF00 nor 0000" % word,
                                     ILLEGAL_DATA_VALUE, 4, unit, fn)
        req = ModbusRequest(unit, fn, address, 1, [word == COIL_ON])
    elif fn == 0x06:
        req = ModbusRequest(unit, fn, address, 1, [word])
    else:
        data_at = count_at + 1
        count = get_word(adu, count_at - 2)
        bc = adu[count_at]
        want = (count + 7) >> 3 if fn == 0x0F else 2 * count
        if bc != want:
            raise ModbusRequestError("byte count %d does not fit quantity %d" % (bc, count),
                                     ILLEGAL_DATA_VALUE, count_at, unit, fn)
        if fn == 0x0F:
            values = unpack_bits(adu, data_at, count)
        else:
            values = [get_word(adu, data_at + 2 * i) for i in range(count)]
        if fn == 0x17:
            req = ModbusRequest(unit, fn, address, word, values, get_word(adu, 6))
        else:
            req = ModbusRequest(unit, fn, address, count, values)
    try:
        return _check_fields(req)
    except ModbusRequestError as exc:
        raise ModbusRequestError(exc.reason, exc.code, 2, unit, fn)


def as_request(request):
    if isinstance(request, ModbusRequest):
        return request
    return parse_request(request)


# --- responses (master side; the server builds them with protocols/modbus_server.py) -------------

def expected_response_length(request):
    """Bytes in the normal reply to `request` (ADU or ModbusRequest); 0 for a broadcast. An
    exception reply is always EXCEPTION_LENGTH (5) bytes."""
    req = as_request(request)
    if req.unit == BROADCAST:
        return 0
    if req.function == 0x01 or req.function == 0x02:
        return 5 + ((req.quantity + 7) >> 3)
    if req.function in ECHOES:
        return 8
    return 5 + 2 * req.quantity


def parse_response(request, response):
    """The decoded reply to `request` (an ADU or a ModbusRequest): a list of `quantity` bools for
    01/02, a list of ints for 03/04/17, (address, value) for 05/06 (value a bool for 05), and
    (address, quantity) for 0F/10. Raises ModbusException for an exception reply and
    ModbusFrameError for a malformed reply or one that does not answer this request."""
    req = as_request(request)
    if req.unit == BROADCAST:
        raise ModbusFrameError("a broadcast request gets no response")
    n = len(response)
    if n < EXCEPTION_LENGTH:
        raise ModbusFrameError("response of %d bytes is shorter than the 5-byte minimum" % n, n)
    _check_crc(response, "response")
    fn = req.function
    if response[0] != req.unit:
        raise ModbusFrameError("response comes from unit %d, the request went to unit %d"
                               % (response[0], req.unit), 0)
    if response[1] == fn | 0x80:
        if n != EXCEPTION_LENGTH:
            raise ModbusFrameError("exception response is %d bytes, not 5" % n, 3)
        raise ModbusException(req.unit, fn, response[2])
    if response[1] != fn:
        raise ModbusFrameError("response function 0x%02X does not answer function 0x%02X"
                               % (response[1], fn), 1)
    want = expected_response_length(req)
    if fn in ECHOES:
        if n != want:
            raise ModbusFrameError("function 0x%02X response is %d bytes, not 8" % (fn, n), min(n, 8) - 2)
        address = get_word(response, 2)
        word = get_word(response, 4)
        if address != req.address:
            raise ModbusFrameError("response echoes address %d, the request wrote %d"
                                   % (address, req.address), 2)
        if fn == 0x05:
            echoed = COIL_ON if req.values[0] else 0
        elif fn == 0x06:
            echoed = req.values[0]
        else:
            echoed = req.quantity
        if word != echoed:
            raise ModbusFrameError("response echoes 0x%04X, the request sent 0x%04X" % (word, echoed), 4)
        return (address, word == COIL_ON) if fn == 0x05 else (address, word)
    if response[2] != want - 5:
        raise ModbusFrameError("byte count %d does not fit the %d requested items"
                               % (response[2], req.quantity), 2)
    if n != want:
        raise ModbusFrameError("response is %d bytes, its byte count says %d" % (n, want), min(n, want) - 2)
    if fn == 0x01 or fn == 0x02:
        return unpack_bits(response, 3, req.quantity)
    return [get_word(response, 3 + 2 * i) for i in range(req.quantity)]


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


def response_length(head, function=None, start=0):
    """A response's whole ADU length from its first bytes, like request_length; `function`, when
    given, is the function of the request being answered (anything else cannot start the reply)."""
    have = len(head) - start
    if have < 2:
        return 0
    fn = head[start + 1]
    if function is not None and fn != function and fn != function | 0x80:
        return None
    if fn & 0x80:
        return EXCEPTION_LENGTH if 0x80 < fn else None
    if fn in ECHOES:
        return 8
    if fn not in READS and fn != 0x17:
        return None
    if have < 3:
        return 0
    bc = head[start + 2]
    if bc == 0 or bc > 250 or (fn > 0x02 and bc & 1):  # 2000 bits or 125 registers = 250 bytes
        return None
    return 5 + bc
