"""CRC-16/MODBUS and CRC-32 (ISO-HDLC, the zlib one).

CRC-16/MODBUS: init 0xFFFF, reflected polynomial 0xA001, no final xor, sent low byte first
(Modbus over Serial Line V1.02, §6.2.2). Check value of b"123456789" is 0x4B37.
CRC-32: reflected polynomial 0xEDB88320, init and final xor 0xFFFFFFFF. Check value 0xCBF43926.

Both are table driven. The CRC-32 uses binascii.crc32 when the runtime has it (CPython, and most
MicroPython ports) and the table otherwise, so every port gets the same answer.
"""

try:
    from binascii import crc32 as _native_crc32
except ImportError:  # a MicroPython port built without MICROPY_PY_BINASCII_CRC32
    _native_crc32 = None


def _make_table(poly, mask):
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc & mask)
    return tuple(table)


# A tuple of small ints: 256 words on MicroPython, built once at import.
_CRC16_TABLE = _make_table(0xA001, 0xFFFF)
_CRC32_TABLE = None  # built on first use, only on ports without binascii.crc32


def crc16_modbus(data, crc=0xFFFF):
    """CRC-16/MODBUS of `data`; pass a previous result as `crc` to continue over more bytes."""
    table = _CRC16_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def crc32(data, crc=0):
    """CRC-32 (zlib) of `data`; pass a previous result as `crc` to continue over more bytes."""
    if _native_crc32 is not None:
        return _native_crc32(data, crc) & 0xFFFFFFFF
    return crc32_table_driven(data, crc)


def crc32_table_driven(data, crc=0):
    """The portable CRC-32, exposed so both runtimes can check it against the native one."""
    global _CRC32_TABLE
    if _CRC32_TABLE is None:
        _CRC32_TABLE = _make_table(0xEDB88320, 0xFFFFFFFF)
    table = _CRC32_TABLE
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFFFFFF
