"""The small enumerations the cnb1 batch format carries: sample fault codes and event codes.

Fault codes say why a sample has no value (DESIGN.md "Quality": a sample from a device that timed
out, answered with an exception or failed its checksum is never published as a number). A Modbus
exception keeps its exception code: fault code = 0x100 | exception code, so 0x102 is "the device
answered exception 02, illegal data address" (Modbus Application Protocol V1.1b3 §7).

Event codes are the Indiana high-resolution controller event enumeration ATSPM tools read
(REFERENCE.md §6); the parameter is the phase or detector channel number.

Names are what the decoded (JSON) form shows. A code this table does not know still decodes: its
fault name is "fault:<code>" and its event name is None, so a newer encoder never breaks an older
decoder (README.md, "Batch format (cnb1)", "Versioning").
"""

from protocols.quality_codes import (  # noqa: F401 - re-exported: the codes are part of this module's API
    FAULT_TIMEOUT,
    FAULT_CHECKSUM,
    FAULT_FRAMING,
    FAULT_OUT_OF_RANGE,
    FAULT_WARMING_UP,
    FAULT_STUCK,
    FAULT_SENSOR,
    FAULT_UNAVAILABLE,
    FAULT_MODBUS_EXCEPTION,
    EVENT_PHASE_BEGIN_GREEN,
    EVENT_PHASE_BEGIN_YELLOW,
    EVENT_PHASE_END_YELLOW,
    EVENT_PHASE_BEGIN_RED_CLEARANCE,
    EVENT_PHASE_END_RED_CLEARANCE,
    EVENT_PED_BEGIN_WALK,
    EVENT_PED_BEGIN_CLEARANCE,
    EVENT_PED_BEGIN_DONT_WALK,
    EVENT_DETECTOR_OFF,
    EVENT_DETECTOR_ON,
    EVENT_PREEMPT_CALL_ON,
    EVENT_PREEMPT_CALL_OFF,
    modbus_fault,
)

FAULT_NAMES = {
    FAULT_TIMEOUT: "timeout",
    FAULT_CHECKSUM: "checksum",
    FAULT_FRAMING: "framing",
    FAULT_OUT_OF_RANGE: "out_of_range",
    FAULT_WARMING_UP: "warming_up",
    FAULT_STUCK: "stuck",
    FAULT_SENSOR: "sensor_fault",
    FAULT_UNAVAILABLE: "unavailable",
}
_FAULT_CODES = {}
for _code in FAULT_NAMES:
    _FAULT_CODES[FAULT_NAMES[_code]] = _code

# Fault codes are positive and fit in 16 bits; 0 is "no fault" and never written.
MAX_FAULT_CODE = 0xFFFF


def fault_name(code):
    """The decoded name of a fault code: "timeout", "modbus_exception:02", or "fault:<code>"."""
    name = FAULT_NAMES.get(code)
    if name is not None:
        return name
    if FAULT_MODBUS_EXCEPTION < code <= FAULT_MODBUS_EXCEPTION | 0xFF:
        return "modbus_exception:%02X" % (code & 0xFF)
    return "fault:%d" % code


def fault_code(fault):
    """The fault code for an int code or any name fault_name returns; ValueError otherwise."""
    if type(fault) is int:
        if 1 <= fault <= MAX_FAULT_CODE:
            return fault
        raise ValueError("a fault code is 1..%d, not %d" % (MAX_FAULT_CODE, fault))
    if type(fault) is str:
        code = _FAULT_CODES.get(fault)
        if code is not None:
            return code
        try:
            if fault.startswith("modbus_exception:"):
                return modbus_fault(int(fault[17:], 16))
            if fault.startswith("fault:"):
                return fault_code(int(fault[6:]))
        except ValueError:
            pass
    raise ValueError("unknown fault %r: use a code or a name from FAULT_NAMES" % (fault,))


EVENT_NAMES = {
    EVENT_PHASE_BEGIN_GREEN: "phase_begin_green",
    EVENT_PHASE_BEGIN_YELLOW: "phase_begin_yellow_clearance",
    EVENT_PHASE_END_YELLOW: "phase_end_yellow_clearance",
    EVENT_PHASE_BEGIN_RED_CLEARANCE: "phase_begin_red_clearance",
    EVENT_PHASE_END_RED_CLEARANCE: "phase_end_red_clearance",
    EVENT_PED_BEGIN_WALK: "pedestrian_begin_walk",
    EVENT_PED_BEGIN_CLEARANCE: "pedestrian_begin_clearance",
    EVENT_PED_BEGIN_DONT_WALK: "pedestrian_begin_solid_dont_walk",
    EVENT_DETECTOR_OFF: "detector_off",
    EVENT_DETECTOR_ON: "detector_on",
    EVENT_PREEMPT_CALL_ON: "preempt_call_input_on",
    EVENT_PREEMPT_CALL_OFF: "preempt_call_input_off",
}

# The Indiana enumeration stores code and parameter in one byte each.
MAX_EVENT_CODE = 255
MAX_EVENT_PARAM = 255


def event_name(code):
    """The name of an Indiana event code, or None for a code this table does not know."""
    return EVENT_NAMES.get(code)
