"""Vector checks for protocols/crc.py (portable: CPython and MicroPython)."""

from protocols import crc
from vectorlib import expect_equal, unhex


def check_crc16(case):
    expect_equal(crc.crc16_modbus(unhex(case["data"])), case["expect"], "CRC-16/MODBUS")


def check_crc32(case):
    data = unhex(case["data"])
    expect_equal(crc.crc32(data), case["expect"], "CRC-32")
    expect_equal(crc.crc32_table_driven(data), case["expect"], "table-driven CRC-32")


def check_crc32_incremental(case):
    data = unhex(case["data"])
    cut = case["cut"]
    expect_equal(crc.crc32(data[cut:], crc.crc32(data[:cut])), crc.crc32(data), "CRC-32 continued")
    expect_equal(crc.crc16_modbus(data[cut:], crc.crc16_modbus(data[:cut])),
                 crc.crc16_modbus(data), "CRC-16 continued")


def check_modbus_frame_residue(case):
    # The CRC of a whole valid frame, CRC bytes included, is 0 (REFERENCE.md §1).
    expect_equal(crc.crc16_modbus(unhex(case["frame"])), 0, "CRC-16 over a whole frame")


CHECKS = {
    "crc16": check_crc16,
    "crc32": check_crc32,
    "crc32_incremental": check_crc32_incremental,
    "modbus_frame_residue": check_modbus_frame_residue,
}
