"""The board types a node can be, and the pins and UARTs each one really has.

Sources: the Raspberry Pi Pico datasheet (GP0..GP22 and GP26..GP28 reach the header; GP23 drives
the SMPS mode, GP24 senses VBUS, GP25 is the LED, GP29 measures VSYS) and the RP2040 datasheet's
GPIO function table (a UART's TX and RX are fixed to a few pins each); the ESP32 technical
reference and the ESP32-WROOM-32 datasheet (GPIO 6..11 carry the module's SPI flash, 34..39 are
input-only, 20, 24 and 28..31 do not exist; any output pin can route a UART through the GPIO
matrix; UART 0 is MicroPython's REPL on GPIO 1 and 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

INPUT = "input"
OUTPUT = "output"


@dataclass(frozen=True, kw_only=True)
class BoardType:
    """One board type: `gpios` are the pins a device may use; `reserved` says why some other pin
    numbers are not; `uart_tx`/`uart_rx` give the pins each UART can use (None: any GPIO)."""

    name: str
    label: str
    pin_prefix: str
    gpios: frozenset[int]
    reserved: dict[int, str] = field(default_factory=dict)
    input_only: frozenset[int] = frozenset()
    uarts: tuple[int, ...]
    uart_tx: dict[int, frozenset[int]] | None = None
    uart_rx: dict[int, frozenset[int]] | None = None
    repl_uart: int | None = None
    wifi: bool = False

    def pin_name(self, pin: int) -> str:
        return f"{self.pin_prefix}{pin}"

    def pin_problem(self, pin: int, role: str) -> str | None:
        """Why `pin` cannot be used as an `role` (INPUT or OUTPUT) pin, or None."""
        if pin in self.reserved:
            return f"{self.pin_name(pin)} {self.reserved[pin]}"
        if pin not in self.gpios:
            return f"{self.label} has no usable {self.pin_name(pin)}"
        if role == OUTPUT and pin in self.input_only:
            return f"{self.pin_name(pin)} is input-only on the {self.label}"
        return None

    def usable_pins(self, role: str = INPUT) -> str:
        """The pins usable for `role`, as ranges: "GP0..GP22, GP26..GP28"."""
        pins = sorted(self.gpios - set(self.reserved) - (self.input_only if role == OUTPUT else set()))
        runs: list[tuple[int, int]] = []
        for pin in pins:
            if runs and pin == runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], pin)
            else:
                runs.append((pin, pin))
        return ", ".join(self.pin_name(a) if a == b else f"{self.pin_name(a)}..{self.pin_name(b)}"
                         for a, b in runs)

    def uart_pins(self, uart: int, role: str) -> frozenset[int] | None:
        """The pins UART `uart` can use for `role` ("tx" or "rx"); None when any GPIO will do."""
        table = self.uart_tx if role == "tx" else self.uart_rx
        return None if table is None else table.get(uart, frozenset())


_PICO_RESERVED = {
    23: "drives the Pico's power supply mode (SMPS), it is not on the header",
    24: "senses VBUS on the Pico, it is not on the header",
    25: "is the Pico's on-board LED, it is not on the header",
    29: "measures VSYS on the Pico, it is not on the header",
}
_PICO_GPIOS = frozenset(range(0, 23)) | frozenset(range(26, 29))
# RP2040 datasheet §1.4.3, function F2: the only pins each UART's TX and RX can be routed to
# (GP24, GP25 and GP29 would be too, but the Pico does not bring them out).
_RP2040_TX = {0: frozenset({0, 12, 16, 28}), 1: frozenset({4, 8, 20})}
_RP2040_RX = {0: frozenset({1, 13, 17}), 1: frozenset({5, 9, 21})}

_ESP32_RESERVED = {pin: "is wired to the ESP32 module's SPI flash; using it crashes the board"
                   for pin in range(6, 12)}
_ESP32_GPIOS = (frozenset(range(0, 20)) | frozenset({21, 22, 23, 25, 26, 27})
                | frozenset(range(32, 40)))

BOARD_TYPES: dict[str, BoardType] = {
    "rp2040": BoardType(
        name="rp2040", label="Raspberry Pi Pico", pin_prefix="GP", gpios=_PICO_GPIOS,
        reserved=_PICO_RESERVED, uarts=(0, 1), uart_tx=_RP2040_TX, uart_rx=_RP2040_RX),
    "rp2040w": BoardType(
        name="rp2040w", label="Raspberry Pi Pico W", pin_prefix="GP", gpios=_PICO_GPIOS,
        reserved={**_PICO_RESERVED, 23: "switches the Pico W's Wi-Fi chip, it is not on the header",
                  24: "carries the Pico W's Wi-Fi data, it is not on the header",
                  25: "selects the Pico W's Wi-Fi chip, it is not on the header",
                  29: "clocks the Pico W's Wi-Fi chip, it is not on the header"},
        uarts=(0, 1), uart_tx=_RP2040_TX, uart_rx=_RP2040_RX, wifi=True),
    "esp32": BoardType(
        name="esp32", label="ESP32", pin_prefix="GPIO", gpios=_ESP32_GPIOS,
        reserved=_ESP32_RESERVED, input_only=frozenset(range(34, 40)), uarts=(0, 1, 2),
        repl_uart=0, wifi=True),
}
