"""Nova Fitness SDS011 particulate sensor frames (REFERENCE.md §3; "Laser Dust Sensor Control
Protocol V1.3", 2015-07-20, cited below as "protocol §3.n").

Sensor to host, 10 bytes: `AA | C0 or C5 | d1..d6 | CHK | AB`, CHK = low 8 bits of d1 + ... + d6.

- `C0` data: d1..d4 = PM2.5 low, high, PM10 low, high in tenths of µg/m³; d5 d6 = device id.
- `C5` reply to a command: d1 = the command, d2..d4 its fields, d5 d6 = device id.

Host to sensor, 19 bytes: `AA B4 | d1..d13 | ID1 ID2 | CHK | AB`, CHK = low 8 bits of the sum of
d1..d13 and the two id bytes; id FF FF addresses every sensor on the line.

A device id is written and sent high byte first: id A160 travels as `A1 60` (protocol §2).
Sds011Parser is the incremental decoder; build_data_frame / build_reply / decode_command are what an
emulator of the sensor needs; cmd_* return the host's command frames.
"""

from protocols.errors import ProtocolError
from protocols.frame_hunter import GARBAGE_REPORT_BYTES, FrameHunter  # noqa: F401 - re-exported

HEAD = 0xAA
TAIL = 0xAB
DATA = 0xC0  # data frame (active report, or the answer to QUERY_DATA)
REPLY = 0xC5  # command reply
COMMAND = 0xB4  # host command
FRAME_SIZE = 10
COMMAND_SIZE = 19
ALL_DEVICES = 0xFFFF

# Command numbers (data byte 1), protocol §3.1 .. §3.6.
REPORTING_MODE = 0x02
QUERY_DATA = 0x04
SET_DEVICE_ID = 0x05
SLEEP_WORK = 0x06
FIRMWARE = 0x07
WORKING_PERIOD = 0x08

MODE_ACTIVE = 0  # report every period by itself (factory default)
MODE_QUERY = 1  # report only when asked with QUERY_DATA
STATE_SLEEP = 0
STATE_WORK = 1
MAX_PERIOD = 30  # working period in minutes; 0 = continuous (protocol §3.5)

KINDS = {
    REPORTING_MODE: "reporting_mode",
    QUERY_DATA: "query_data",
    SET_DEVICE_ID: "device_id",
    SLEEP_WORK: "sleep_work",
    FIRMWARE: "firmware",
    WORKING_PERIOD: "working_period",
}


class Sds011Error(ProtocolError):
    """A bad SDS011 frame. `kind` names the counter it was counted under ("bad_checksum", ...)."""

    def __init__(self, reason, offset=None, kind=None):
        super().__init__(reason, offset)
        self.kind = kind


class Sds011Reading:
    """One data frame. PM values are kept as the sensor's integer tenths of µg/m³; pm2_5 and pm10
    give µg/m³ as (hi·256 + lo) / 10."""

    __slots__ = ("pm2_5_tenths", "pm10_tenths", "device_id")

    def __init__(self, pm2_5_tenths, pm10_tenths, device_id):
        self.pm2_5_tenths = pm2_5_tenths
        self.pm10_tenths = pm10_tenths
        self.device_id = device_id

    @property
    def pm2_5(self):
        return self.pm2_5_tenths / 10

    @property
    def pm10(self):
        return self.pm10_tenths / 10

    def __eq__(self, other):
        return (isinstance(other, Sds011Reading) and self.pm2_5_tenths == other.pm2_5_tenths
                and self.pm10_tenths == other.pm10_tenths and self.device_id == other.device_id)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Sds011Reading(pm2_5_tenths=%d, pm10_tenths=%d, device_id=0x%04X)" % (
            self.pm2_5_tenths, self.pm10_tenths, self.device_id)


class Sds011Reply:
    """A decoded C5 reply (from the sensor) or B4 command (from the host).

    `command` is data byte 1 (REPORTING_MODE, ...), `kind` its name, `is_set` whether it sets
    rather than queries, `device_id` the sensor's id (reply) or the addressed id (command).
    `value`: REPORTING_MODE -> MODE_ACTIVE / MODE_QUERY; SLEEP_WORK -> STATE_SLEEP / STATE_WORK;
    WORKING_PERIOD -> minutes (0 = continuous); FIRMWARE -> (year, month, day) as sent (15, 7, 10);
    SET_DEVICE_ID -> the new id; QUERY_DATA -> None. A query command carries value None.
    """

    __slots__ = ("command", "is_set", "value", "device_id")

    def __init__(self, command, is_set, value, device_id):
        self.command = command
        self.is_set = is_set
        self.value = value
        self.device_id = device_id

    @property
    def kind(self):
        return KINDS.get(self.command)

    def __eq__(self, other):
        return (isinstance(other, Sds011Reply) and self.command == other.command
                and self.is_set == other.is_set and self.value == other.value
                and self.device_id == other.device_id)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Sds011Reply(command=0x%02X, is_set=%r, value=%r, device_id=0x%04X)" % (
            self.command, self.is_set, self.value, self.device_id)


def _decode_reply(buf, i):
    """The Sds011Reply in the checked 10-byte C5 frame at buf[i], or None for an unknown command."""
    command = buf[i + 2]
    device_id = (buf[i + 6] << 8) | buf[i + 7]
    if command == REPORTING_MODE or command == SLEEP_WORK or command == WORKING_PERIOD:
        return Sds011Reply(command, buf[i + 3] != 0, buf[i + 4], device_id)
    if command == FIRMWARE:
        return Sds011Reply(command, False, (buf[i + 3], buf[i + 4], buf[i + 5]), device_id)
    if command == SET_DEVICE_ID:
        # protocol §3.3: the reply comes from the sensor under its new id.
        return Sds011Reply(command, True, device_id, device_id)
    return None


class Sds011Parser(FrameHunter):
    """Incremental decoder for the sensor's byte stream; feed(data) never raises on input.

    feed returns, in stream order, Sds011Reading, Sds011Reply and Sds011Error items. Hunting: the
    parser looks for `AA C0` or `AA C5`; a wrong tail, a checksum mismatch or a reply to an unknown
    command rejects the frame and the search restarts at the byte after the rejected head, so a good
    frame that begins inside the bad bytes is still found. Bytes skipped that way are counted in
    garbage_bytes but reported once, by the bad frame's error; other skipped runs are reported as
    one "garbage" error each. Error offsets are stream offsets (bytes fed since creation).

    Invariant, handy in tests: 10·(frames + replies) + garbage_bytes + pending == bytes fed.
    The retained buffer never exceeds one frame minus a byte (pending < 10).
    """

    ERROR = Sds011Error
    FRAME_NAME = "an SDS011 frame"

    def __init__(self):
        FrameHunter.__init__(self, {"frames": 0, "replies": 0, "bad_checksum": 0, "bad_tail": 0,
                                    "unknown_reply": 0, "garbage_bytes": 0})


    def feed(self, data):
        out = []
        if not isinstance(data, bytes):
            data = bytes(data)
        buf = self._buf + data if self._buf else data
        base = self._base
        n = len(buf)
        i = 0
        while i < n:
            j = buf.find(b"\xaa", i)
            if j < 0:
                self._skip(out, base + i, n - i)
                i = n
                break
            if j > i:
                self._skip(out, base + i, j - i)
                i = j
            if i + 1 >= n:
                break  # a lone AA at the end: wait for the command byte
            command = buf[i + 1]
            if command != DATA and command != REPLY:
                self._skip(out, base + i, 1)
                i += 1
                continue
            self._close_run(out)
            if n - i < FRAME_SIZE:
                break
            if buf[i + 9] != TAIL:
                self._reject(out, "bad_tail", "SDS011 frame ends in 0x%02X, not 0xAB"
                             % buf[i + 9], base + i)
                i += 1
                continue
            computed = sum(buf[i + 2:i + 8]) & 0xFF
            if computed != buf[i + 8]:
                self._reject(out, "bad_checksum",
                             "SDS011 frame checksum is 0x%02X but its data bytes sum to 0x%02X"
                             % (buf[i + 8], computed), base + i)
                i += 1
                continue
            if command == DATA:
                out.append(Sds011Reading((buf[i + 3] << 8) | buf[i + 2],
                                         (buf[i + 5] << 8) | buf[i + 4],
                                         (buf[i + 6] << 8) | buf[i + 7]))
                self.counters["frames"] += 1
            else:
                reply = _decode_reply(buf, i)
                if reply is None:
                    self._reject(out, "unknown_reply", "SDS011 reply to unknown command 0x%02X"
                                 % buf[i + 2], base + i)
                    i += 1
                    continue
                out.append(reply)
                self.counters["replies"] += 1
            i += FRAME_SIZE
        self._buf = buf[i:]
        self._base = base + i
        return out


def _check(name, value, low, high):
    if not isinstance(value, int) or value < low or value > high:
        raise ValueError("%s must be an int in %d..%d, got %r" % (name, low, high, value))
    return value


def _sensor_frame(kind, d1, d2, d3, d4, device_id):
    _check("device_id", device_id, 0, 0xFFFF)
    frame = bytearray((HEAD, kind, d1, d2, d3, d4, device_id >> 8, device_id & 0xFF, 0, TAIL))
    frame[8] = sum(frame[2:8]) & 0xFF
    return bytes(frame)


def build_data_frame(pm2_5_tenths, pm10_tenths, device_id):
    """The 10-byte data frame for PM values in tenths of µg/m³ (0..65535 each)."""
    _check("pm2_5_tenths", pm2_5_tenths, 0, 0xFFFF)
    _check("pm10_tenths", pm10_tenths, 0, 0xFFFF)
    return _sensor_frame(DATA, pm2_5_tenths & 0xFF, pm2_5_tenths >> 8,
                         pm10_tenths & 0xFF, pm10_tenths >> 8, device_id)


def build_reply(command, value=None, device_id=ALL_DEVICES, is_set=False):
    """The 10-byte C5 reply a sensor with id `device_id` sends to `command` (see Sds011Reply for
    what `value` holds). For SET_DEVICE_ID, `device_id` is the new id and `value` is ignored."""
    if command == REPORTING_MODE or command == SLEEP_WORK or command == WORKING_PERIOD:
        return _sensor_frame(REPLY, command, 1 if is_set else 0, _check("value", value, 0, 0xFF),
                             0, device_id)
    if command == FIRMWARE:
        if not isinstance(value, tuple) or len(value) != 3:
            raise ValueError("firmware value must be a (year, month, day) tuple, got %r" % (value,))
        return _sensor_frame(REPLY, command, _check("year", value[0], 0, 0xFF),
                             _check("month", value[1], 0, 0xFF), _check("day", value[2], 0, 0xFF),
                             device_id)
    if command == SET_DEVICE_ID:
        return _sensor_frame(REPLY, command, 0, 0, 0, device_id)
    raise ValueError("no reply format for command 0x%02X" % (command,))


def build_command(command, d2=0, d3=0, device_id=ALL_DEVICES, new_id=0):
    """A 19-byte host command: data byte 1 = command, 2 and 3 as given, 12 and 13 = new_id."""
    _check("command", command, 0, 0xFF)
    _check("device_id", device_id, 0, 0xFFFF)
    _check("new_id", new_id, 0, 0xFFFF)
    frame = bytearray(COMMAND_SIZE)
    frame[0] = HEAD
    frame[1] = COMMAND
    frame[2] = command
    frame[3] = _check("data byte 2", d2, 0, 0xFF)
    frame[4] = _check("data byte 3", d3, 0, 0xFF)
    frame[13] = new_id >> 8
    frame[14] = new_id & 0xFF
    frame[15] = device_id >> 8
    frame[16] = device_id & 0xFF
    frame[17] = sum(frame[2:17]) & 0xFF
    frame[18] = TAIL
    return bytes(frame)


def decode_command(frame):
    """The Sds011Reply a 19-byte host command stands for; raises Sds011Error on anything else.

    An unknown command number still decodes (value None): the sensor just ignores it."""
    if len(frame) != COMMAND_SIZE:
        raise Sds011Error("SDS011 command is %d bytes, expected 19" % len(frame), 0, "bad_length")
    if frame[0] != HEAD or frame[1] != COMMAND:
        raise Sds011Error("SDS011 command does not start with AA B4", 0, "garbage")
    if frame[18] != TAIL:
        raise Sds011Error("SDS011 command ends in 0x%02X, not 0xAB" % frame[18], 18, "bad_tail")
    computed = sum(frame[2:17]) & 0xFF
    if computed != frame[17]:
        raise Sds011Error("SDS011 command checksum is 0x%02X but its data bytes sum to 0x%02X"
                          % (frame[17], computed), 17, "bad_checksum")
    command = frame[2]
    device_id = (frame[15] << 8) | frame[16]
    if command == REPORTING_MODE or command == SLEEP_WORK or command == WORKING_PERIOD:
        is_set = frame[3] != 0
        return Sds011Reply(command, is_set, frame[4] if is_set else None, device_id)
    if command == SET_DEVICE_ID:
        return Sds011Reply(command, True, (frame[13] << 8) | frame[14], device_id)
    return Sds011Reply(command, False, None, device_id)


def cmd_query_data(device_id=ALL_DEVICES):
    return build_command(QUERY_DATA, device_id=device_id)


def cmd_set_reporting_mode(mode, device_id=ALL_DEVICES):
    return build_command(REPORTING_MODE, 1, _check("mode", mode, 0, 1), device_id)


def cmd_get_reporting_mode(device_id=ALL_DEVICES):
    return build_command(REPORTING_MODE, 0, 0, device_id)


def cmd_sleep(device_id=ALL_DEVICES):
    return build_command(SLEEP_WORK, 1, STATE_SLEEP, device_id)


def cmd_work(device_id=ALL_DEVICES):
    return build_command(SLEEP_WORK, 1, STATE_WORK, device_id)


def cmd_get_sleep_work(device_id=ALL_DEVICES):
    return build_command(SLEEP_WORK, 0, 0, device_id)


def cmd_set_working_period(minutes, device_id=ALL_DEVICES):
    return build_command(WORKING_PERIOD, 1, _check("minutes", minutes, 0, MAX_PERIOD), device_id)


def cmd_get_working_period(device_id=ALL_DEVICES):
    return build_command(WORKING_PERIOD, 0, 0, device_id)


def cmd_query_firmware(device_id=ALL_DEVICES):
    return build_command(FIRMWARE, device_id=device_id)


def cmd_set_device_id(new_id, device_id=ALL_DEVICES):
    return build_command(SET_DEVICE_ID, device_id=device_id, new_id=new_id)
