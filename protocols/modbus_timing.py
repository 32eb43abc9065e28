"""Modbus RTU wire timing (Modbus over Serial Line V1.02 §2.5.1.1): character time, t1.5, t3.5 and
the wire time of a transaction, for the master's pacing and the gateway's poll planner.
"""


def char_bits(framing="8E1"):
    """Bits on the wire per character: start + 8 data + parity + stop bits. "8E1", "8O1" and
    "8N2" are the spec's 11 bits; "8N1", common in the field, is 10. An int passes through."""
    if isinstance(framing, int):
        return framing
    f = framing.upper() if isinstance(framing, str) else ""
    if len(f) != 3 or f[0] != "8" or f[1] not in "NEO" or f[2] not in "12":
        raise ValueError("framing %r is not one of 8N1, 8N2, 8E1, 8O1 (RTU sends 8 data bits)"
                         % (framing,))
    return 9 + (f[1] != "N") + int(f[2])


def char_time_us(baud, framing="8E1"):
    if not isinstance(baud, (int, float)) or baud <= 0:
        raise ValueError("baud %r must be a positive number" % (baud,))
    return char_bits(framing) * 1000000.0 / baud


def t15_us(baud, framing="8E1"):
    """Longest silence allowed inside a frame; fixed at 750 µs above 19200 baud (§2.5.1.1)."""
    return 750.0 if baud > 19200 else 1.5 * char_time_us(baud, framing)


def t35_us(baud, framing="8E1"):
    """Silence that separates frames; fixed at 1750 µs above 19200 baud (§2.5.1.1)."""
    return 1750.0 if baud > 19200 else 3.5 * char_time_us(baud, framing)


def transaction_time_us(request_len, response_len, baud, framing="8E1", turnaround_us=0):
    """Wire time of one transaction: both frames' characters, the t3.5 gap after each, and the
    device's turnaround. REFERENCE.md §1: read 10 registers at 9600 8E1 → 45.8 ms."""
    return ((request_len + response_len) * char_time_us(baud, framing)
            + 2 * t35_us(baud, framing) + turnaround_us)
