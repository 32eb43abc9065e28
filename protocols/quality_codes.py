"""Sample fault codes and controller event codes as plain constants: what the node needs to mark a
sample's quality or emit an event, without the names and lookups only decoders use (those are in
protocols/batch_codes.py, which re-exports everything here). Kept apart so a board's flash does not
carry the decoder's tables.

Fault codes say why a sample has no value (DESIGN.md "Quality"); a Modbus exception keeps its code:
fault = 0x100 | exception code. Event codes are the Indiana hi-res enumeration (REFERENCE.md §6).
"""

FAULT_TIMEOUT = 1  # the device did not answer (Modbus response timeout, UART silence)
FAULT_CHECKSUM = 2  # the reply failed its checksum or CRC
FAULT_FRAMING = 3  # the reply was malformed: wrong length, function or header
FAULT_OUT_OF_RANGE = 4  # the value is outside the range the device profile allows
FAULT_WARMING_UP = 5  # the sensor is inside its warm-up time (PMS5003: 30 s, REFERENCE.md §2)
FAULT_STUCK = 6  # the value or presence input has not changed for longer than the profile allows
FAULT_SENSOR = 7  # the device itself reports a fault (e.g. SenseAir S8 meter status, §4)
FAULT_UNAVAILABLE = 8  # the device is offline or in backoff: no attempt was made this time
FAULT_MODBUS_EXCEPTION = 0x100  # | exception code (low byte): 0x101..0x1FF

# Indiana hi-res event codes citynerve emits (REFERENCE.md §6; 102/104 unverified there).
EVENT_PHASE_BEGIN_GREEN = 1
EVENT_PHASE_BEGIN_YELLOW = 8
EVENT_PHASE_END_YELLOW = 9
EVENT_PHASE_BEGIN_RED_CLEARANCE = 10
EVENT_PHASE_END_RED_CLEARANCE = 11
EVENT_PED_BEGIN_WALK = 21
EVENT_PED_BEGIN_CLEARANCE = 22
EVENT_PED_BEGIN_DONT_WALK = 23
EVENT_DETECTOR_OFF = 81
EVENT_DETECTOR_ON = 82
EVENT_PREEMPT_CALL_ON = 102
EVENT_PREEMPT_CALL_OFF = 104


def modbus_fault(exception_code):
    """The fault code for a Modbus exception reply with `exception_code` (1..255)."""
    if type(exception_code) is not int or not 1 <= exception_code <= 0xFF:
        raise ValueError("a Modbus exception code is 1..255, not %r" % (exception_code,))
    return FAULT_MODBUS_EXCEPTION | exception_code
