"""Helpers for the portable vector checks: these run under CPython (pytest) and MicroPython alike.

Keep to the MicroPython subset: no typing, no dataclasses, no pytest.
"""


def unhex(text):
    """Bytes from a hex string that may contain spaces (the way REFERENCE.md writes frames)."""
    return bytes.fromhex(text.replace(" ", ""))


def tohex(data):
    return " ".join("%02X" % b for b in data)


def expect_equal(actual, expected, what="value"):
    if actual != expected:
        if isinstance(actual, (bytes, bytearray)) and isinstance(expected, (bytes, bytearray)):
            raise AssertionError("%s: got %s, expected %s" % (what, tohex(actual), tohex(expected)))
        raise AssertionError("%s: got %r, expected %r" % (what, actual, expected))


def expect_close(actual, expected, tolerance, what="value"):
    if abs(actual - expected) > tolerance:
        raise AssertionError("%s: got %r, expected %r within %r" % (what, actual, expected, tolerance))


def expect_raises(error_type, fn, *args, **kwargs):
    """Call fn; it must raise error_type (or a subclass). Returns the exception for more checks."""
    try:
        fn(*args, **kwargs)
    except error_type as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - any other error is the failure we report
        raise AssertionError(
            "expected %s, got %s: %s" % (error_type.__name__, type(exc).__name__, exc)
        )
    raise AssertionError("expected %s, nothing was raised" % error_type.__name__)
