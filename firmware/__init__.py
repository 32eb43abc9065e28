"""citynerve node firmware (MicroPython on ESP32 and RP2040; CPython with the host HAL in the harness).

Imports only protocols/ and MicroPython's standard modules. Nothing above firmware.hal knows whether
it runs on a board or in the harness.
"""
