"""Modbus RTU, what a master carries: the bytes of a request whose fields are checked
(protocols/modbus_plan.py's reads), the check of a raw request ADU, and the decoding of a reply its
framer matched (protocols/modbus_write.py adds the single-register write a profile command sends).

Sources as protocols/modbus_rtu.py, which is the whole codec (every function's builder, requests as
ModbusRequest objects, request parsing, stream lengths of requests) and re-exports all of this.
A node's firmware imports this module instead, so its flash holds only the master's side: a
request is handled here as its head, the tuple (unit, function, address, word) of its first six
bytes, where `word` is the quantity of 01-04, 0F, 10 (and the read quantity of 17) and the written
value of 05 (FF00 or 0000) and 06. That is everything its reply is checked against: a write's
reply echoes the head's address and word.
"""

from protocols.crc import crc16_modbus
from protocols.errors import ProtocolError

FUNCTIONS = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F, 0x10, 0x17)

BROADCAST = 0  # serial spec §2.2: no reply, writes only
MAX_UNIT = 247  # 248..255 are reserved (serial spec §2.2)
ANY_ADDRESS = 0xFE  # SenseAir S8 answers this whatever its own address (REFERENCE.md §4)
MAX_ADU = 256  # serial spec §2.5.1
EXCEPTION_LENGTH = 5  # unit, function | 0x80, code, CRC (application spec §7)

# Read quantity limits, application spec §6.1-6.4 and §6.17 (modbus_rtu has the write limits).
READ_LIMITS = {0x01: 2000, 0x02: 2000, 0x03: 125, 0x04: 125, 0x17: 125}

ILLEGAL_DATA_VALUE = 0x03  # the others a request check answers with are in modbus_fields
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
        self.name = EXCEPTION_NAMES.get(code, "unknown exception code")
        super().__init__("unit %d answered function 0x%02X with exception %02X (%s)"
                           % (unit, function, code, self.name))


# --- encoding helpers (shared with modbus_rtu and modbus_server) ---------------------------------

def with_crc(head):
    """Append the CRC, low byte first (serial spec §2.5.1.2), to a bytearray and return bytes."""
    crc = crc16_modbus(head)
    head.append(crc & 0xFF)
    head.append(crc >> 8)
    return bytes(head)


def get_word(data, at):
    return (data[at] << 8) | data[at + 1]


def unpack_bits(data, at, count):
    return [bool(data[at + (i >> 3)] & (1 << (i & 7))) for i in range(count)]


# --- request building ------------------------------------------------------------------------------

def request_error(reason, code):
    raise ModbusRequestError(reason, code)


def short_request(unit, function, address, word):
    """The 8-byte ADU of function 01-06 for fields already checked (by protocols/modbus_fields.py,
    or by the read planner)."""
    return with_crc(bytearray((unit, function, address >> 8, address & 0xFF, word >> 8, word & 0xFF)))


# --- a raw request's head ------------------------------------------------------------------------

def request_head(adu):
    """(unit, function, address, word) of a request ADU, checked for its length (a whole request
    of a function listed in FUNCTIONS, at most MAX_ADU bytes) and its CRC; ModbusFrameError
    otherwise. Its fields are the builder's business: protocols.modbus_rtu.parse_request checks
    every limit too."""
    n = len(adu)
    fn = adu[1] if n > 1 else 0
    count_at = 6 if fn == 0x0F or fn == 0x10 else 10 if fn == 0x17 else None
    if fn not in FUNCTIONS or n > MAX_ADU or n != (8 if count_at is None else
                                                   count_at + 3 + adu[count_at] if n > count_at else 0):
        raise ModbusFrameError("%d bytes are not a whole request of a supported function (0x%02X)"
                               % (n, fn), 1)
    if crc16_modbus(adu):
        raise ModbusFrameError("request CRC does not match its bytes", n - 2)
    return adu[0], fn, get_word(adu, 2), get_word(adu, 4)


# --- replies -------------------------------------------------------------------------------------

def reply_length(head):
    """Bytes in the normal reply to the request whose head is `head`; 0 for a broadcast. An
    exception reply is always EXCEPTION_LENGTH (5) bytes."""
    fn = head[1]
    if head[0] == BROADCAST:
        return 0
    if fn == 0x01 or fn == 0x02:
        return 5 + ((head[3] + 7) >> 3)
    if fn in ECHOES:
        return 8
    return 5 + 2 * head[3]


def reply_values(head, reply):
    """The values of `reply`, a whole reply ADU whose unit, function (or exception function),
    length and CRC already answer the request whose head is `head`, as RtuFramer frames a reply
    it expects (modbus_rtu.parse_response checks those first): a list of `quantity` bools for
    01/02, a list of ints for 03/04/17, (address, value) for 05/06 (value a bool for 05), and
    (address, quantity) for 0F/10. Raises ModbusException for an exception reply and
    ModbusFrameError for one that does not answer this request (another address or value
    echoed, a byte count that does not fit)."""
    unit, fn, address, word = head
    if reply[1] != fn:
        raise ModbusException(unit, fn, reply[2])
    if fn in ECHOES:
        got = get_word(reply, 2)
        echoed = get_word(reply, 4)
        if got != address:
            raise ModbusFrameError("response echoes address %d, the request wrote %d"
                                   % (got, address), 2)
        if echoed != word:
            raise ModbusFrameError("response echoes 0x%04X, the request sent 0x%04X" % (echoed, word), 4)
        return (got, echoed == COIL_ON) if fn == 0x05 else (got, echoed)
    if reply[2] != reply_length(head) - 5:
        raise ModbusFrameError("byte count %d does not fit the %d requested items" % (reply[2], word), 2)
    if fn == 0x01 or fn == 0x02:
        return unpack_bits(reply, 3, word)
    return [get_word(reply, 3 + 2 * i) for i in range(word)]


def response_length(head, function=None, start=0):
    """A response's whole ADU length from its first bytes (at `start` in `head`, a byte buffer):
    > 0 when known, 0 when more bytes are needed to tell, None when they cannot start a supported
    reply; `function`, when given, is the function of the request being answered (anything else
    cannot start the reply)."""
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
