"""Sans-IO codecs shared by the node firmware (MicroPython) and the gateway (CPython).

Every module here takes bytes (and, where timing matters, times) as arguments and returns bytes or
decoded values; none does I/O. Each must compile with mpy-cross and run on MicroPython: no typing at
run time, no dataclasses, and imports only from this package and MicroPython's standard modules.
"""
