"""Plantower PMS5003 particulate sensor frames (REFERENCE.md §2; Plantower PMS5003 datasheet V2.3).

Sensor to host, big-endian words after the start characters `42 4D` ("BM"):

    42 4D | length (2) | payload (length - 2) | checksum (2)

`length` counts the payload and the checksum. A data frame has length 28: thirteen words (PM1.0 /
PM2.5 / PM10 "CF=1", the same three "atmospheric", particle counts > 0.3, 0.5, 1.0, 2.5, 5.0 and
10 µm per 0.1 L, one reserved word), 32 bytes in all. After a mode or sleep command the sensor
answers with a length-4 acknowledgement `42 4D 00 04 CMD DATA CHK CHK` that echoes the command byte
and its data low byte (e.g. `42 4D 00 04 E1 00 01 74` after "passive mode"; not in the datasheet,
seen on real sensors and in every driver that waits for it). The checksum is the 16-bit sum of every
byte before it (bytes 0..29 of a data frame).

Host to sensor, 7 bytes: `42 4D CMD DATAH DATAL` + 16-bit sum of those five (datasheet Appendix II).

Pms5003Parser is the incremental decoder; build_data_frame / build_ack / decode_command are what an
emulator of the sensor needs; cmd_* return the host's command frames.
"""

import struct

from protocols.errors import ProtocolError
from protocols.frame_hunter import GARBAGE_REPORT_BYTES, FrameHunter  # noqa: F401 - re-exported

HEADER = b"\x42\x4d"  # start characters 1 and 2, "BM" (datasheet, "Transport protocol - active mode")
DATA_LENGTH = 28  # frame length field of a data frame: 13 data words + checksum
ACK_LENGTH = 4  # frame length field of a command acknowledgement: CMD, DATA, checksum
DATA_FRAME_SIZE = 4 + DATA_LENGTH
ACK_FRAME_SIZE = 4 + ACK_LENGTH
COMMAND_SIZE = 7

CMD_MODE = 0xE1  # data 0 = passive, 1 = active (datasheet Appendix II)
CMD_READ = 0xE2  # read one frame in passive mode
CMD_SLEEP = 0xE4  # data 0 = sleep, 1 = wake
MODE_PASSIVE = 0
MODE_ACTIVE = 1

# The reserved word real sensors send: 0x97 (firmware version) and 0x00 (error code), as in both
# REFERENCE.md §2 vectors. build_data_frame uses it unless told otherwise.
DEFAULT_RESERVED = 0x9700

# Data words in wire order; Pms5003Reading has one attribute per name.
FIELDS = (
    "pm1_0_cf1", "pm2_5_cf1", "pm10_cf1",
    "pm1_0_atm", "pm2_5_atm", "pm10_atm",
    "count_0_3", "count_0_5", "count_1_0", "count_2_5", "count_5_0", "count_10",
    "reserved",
)


class Pms5003Error(ProtocolError):
    """A bad PMS5003 frame. `kind` names the counter it was counted under ("bad_checksum", ...)."""

    def __init__(self, reason, offset=None, kind=None):
        super().__init__(reason, offset)
        self.kind = kind


class Pms5003Reading:
    """One data frame: mass concentrations in µg/m³, particle counts per 0.1 L, the reserved word."""

    __slots__ = FIELDS

    def __init__(self, pm1_0_cf1=0, pm2_5_cf1=0, pm10_cf1=0, pm1_0_atm=0, pm2_5_atm=0, pm10_atm=0,
                 count_0_3=0, count_0_5=0, count_1_0=0, count_2_5=0, count_5_0=0, count_10=0,
                 reserved=DEFAULT_RESERVED):
        self.pm1_0_cf1 = pm1_0_cf1
        self.pm2_5_cf1 = pm2_5_cf1
        self.pm10_cf1 = pm10_cf1
        self.pm1_0_atm = pm1_0_atm
        self.pm2_5_atm = pm2_5_atm
        self.pm10_atm = pm10_atm
        self.count_0_3 = count_0_3
        self.count_0_5 = count_0_5
        self.count_1_0 = count_1_0
        self.count_2_5 = count_2_5
        self.count_5_0 = count_5_0
        self.count_10 = count_10
        self.reserved = reserved

    def values(self):
        """The thirteen words in wire order (FIELDS order)."""
        return (self.pm1_0_cf1, self.pm2_5_cf1, self.pm10_cf1, self.pm1_0_atm, self.pm2_5_atm,
                self.pm10_atm, self.count_0_3, self.count_0_5, self.count_1_0, self.count_2_5,
                self.count_5_0, self.count_10, self.reserved)

    def __eq__(self, other):
        return isinstance(other, Pms5003Reading) and self.values() == other.values()

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Pms5003Reading(%s)" % ", ".join(
            "%s=%d" % (name, value) for name, value in zip(FIELDS, self.values()))


class Pms5003Ack:
    """A command acknowledgement: the command byte and data byte the sensor echoed."""

    __slots__ = ("command", "data")

    def __init__(self, command, data):
        self.command = command
        self.data = data

    def __eq__(self, other):
        return (isinstance(other, Pms5003Ack) and self.command == other.command
                and self.data == other.data)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Pms5003Ack(command=0x%02X, data=%d)" % (self.command, self.data)


class Pms5003Parser(FrameHunter):
    """Incremental decoder for the sensor's byte stream; feed(data) never raises on input.

    feed returns, in stream order, Pms5003Reading, Pms5003Ack and Pms5003Error items. Hunting: the
    parser looks for `42 4D`; a length field other than 28 or 4, or a checksum mismatch, rejects
    the frame and the search restarts at the byte after the rejected header, so a good frame that
    begins inside the bad bytes (a truncated frame followed by a whole one, or a header whose first
    byte was a checksum byte 0x42) is still found. Bytes skipped that way are counted in
    garbage_bytes but reported once, by the bad frame's error; other skipped runs are reported as
    one "garbage" error each. Error offsets are stream offsets (bytes fed since creation).

    Invariant, handy in tests: 32·frames + 8·acks + garbage_bytes + pending == bytes fed.
    The retained buffer never exceeds one frame minus a byte (pending < 32).
    """

    ERROR = Pms5003Error
    FRAME_NAME = "a PMS5003 frame"

    def __init__(self):
        FrameHunter.__init__(self, {"frames": 0, "acks": 0, "bad_checksum": 0, "bad_length": 0,
                                    "garbage_bytes": 0})


    def feed(self, data):
        out = []
        if not isinstance(data, bytes):
            data = bytes(data)
        buf = self._buf + data if self._buf else data
        base = self._base
        n = len(buf)
        i = 0
        while i < n:
            j = buf.find(HEADER, i)
            if j < 0:
                # All garbage, except a last 0x42 that may be the first half of a header.
                j = n - 1 if buf[n - 1] == 0x42 else n
                self._skip(out, base + i, j - i)
                i = j
                break
            if j > i:
                self._skip(out, base + i, j - i)
                i = j
            self._close_run(out)
            if n - i < 4:
                break
            length = (buf[i + 2] << 8) | buf[i + 3]
            if length != DATA_LENGTH and length != ACK_LENGTH:
                self._reject(out, "bad_length",
                             "PMS5003 frame length field is %d, expected 28 (data) or 4 (ack)"
                             % length, base + i)
                i += 1
                continue
            end = i + 4 + length
            if end > n:
                break
            expected = (buf[end - 2] << 8) | buf[end - 1]
            computed = sum(buf[i:end - 2]) & 0xFFFF
            if computed != expected:
                self._reject(out, "bad_checksum",
                             "PMS5003 frame checksum is 0x%04X but its bytes sum to 0x%04X"
                             % (expected, computed), base + i)
                i += 1
                continue
            if length == DATA_LENGTH:
                out.append(Pms5003Reading(*struct.unpack_from(">13H", buf, i + 4)))
                self.counters["frames"] += 1
            else:
                out.append(Pms5003Ack(buf[i + 4], buf[i + 5]))
                self.counters["acks"] += 1
            i = end
        self._buf = buf[i:]
        self._base = base + i
        return out


def _word(name, value):
    # MicroPython's struct.pack silently truncates out-of-range values, so check first.
    if not isinstance(value, int) or value < 0 or value > 0xFFFF:
        raise ValueError("%s must be an int in 0..65535, got %r" % (name, value))
    return value


def _frame(payload):
    body = HEADER + struct.pack(">H", len(payload) + 2) + payload
    return body + struct.pack(">H", sum(body) & 0xFFFF)


def build_data_frame(pm1_0_cf1=0, pm2_5_cf1=0, pm10_cf1=0, pm1_0_atm=0, pm2_5_atm=0, pm10_atm=0,
                     count_0_3=0, count_0_5=0, count_1_0=0, count_2_5=0, count_5_0=0, count_10=0,
                     reserved=DEFAULT_RESERVED):
    """The 32-byte data frame a sensor sends for these values (each 0..65535)."""
    words = (pm1_0_cf1, pm2_5_cf1, pm10_cf1, pm1_0_atm, pm2_5_atm, pm10_atm, count_0_3,
             count_0_5, count_1_0, count_2_5, count_5_0, count_10, reserved)
    for k in range(13):
        _word(FIELDS[k], words[k])
    return _frame(struct.pack(">13H", *words))


def build_ack(command, data):
    """The 8-byte acknowledgement a sensor sends after command `command` with data byte `data`."""
    if not 0 <= command <= 0xFF or not 0 <= data <= 0xFF:
        raise ValueError("ack command and data must be bytes, got %r, %r" % (command, data))
    return _frame(bytes((command, data)))


def build_command(command, data=0):
    """A 7-byte host command: 42 4D CMD DATAH DATAL and the 16-bit sum of those five."""
    if not 0 <= command <= 0xFF:
        raise ValueError("command must be a byte, got %r" % (command,))
    body = HEADER + struct.pack(">BH", command, _word("data", data))
    return body + struct.pack(">H", sum(body))


def decode_command(frame):
    """(command, data) of a 7-byte host command; raises Pms5003Error on anything else."""
    if len(frame) != COMMAND_SIZE:
        raise Pms5003Error("PMS5003 command is %d bytes, expected 7" % len(frame), 0, "bad_length")
    if frame[0] != 0x42 or frame[1] != 0x4D:
        raise Pms5003Error("PMS5003 command does not start with 42 4D", 0, "garbage")
    expected = (frame[5] << 8) | frame[6]
    computed = sum(frame[0:5])
    if computed != expected:
        raise Pms5003Error("PMS5003 command checksum is 0x%04X but its bytes sum to 0x%04X"
                           % (expected, computed), 5, "bad_checksum")
    return frame[2], (frame[3] << 8) | frame[4]


def cmd_passive_mode():
    return build_command(CMD_MODE, MODE_PASSIVE)


def cmd_active_mode():
    return build_command(CMD_MODE, MODE_ACTIVE)


def cmd_passive_read():
    return build_command(CMD_READ, 0)


def cmd_sleep():
    return build_command(CMD_SLEEP, 0)


def cmd_wake():
    return build_command(CMD_SLEEP, 1)
