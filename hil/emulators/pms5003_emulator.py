"""An emulated Plantower PMS5003 (REFERENCE.md §2) serving its UART on a loopback TCP port.

It turns a PM time series into 32-byte data frames: one every `period_s` in active mode, one per
"passive read" command in passive mode. It answers the mode and sleep/wake commands with the
8-byte acknowledgement real sensors send (protocols/pms5003.py), sleeps while its SET pin is low
or after the sleep command (and then ignores everything but "wake"), and logs every frame, ack,
command and injected fault as ground truth. A series entry is a Pms5003Reading, a dict of
field -> value (missing fields 0) or a sequence of the 13 words; the series repeats when it ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from hil.emulators import UartDeviceServer
from protocols import pms5003
from protocols.pms5003 import FIELDS, Pms5003Error, Pms5003Reading

__all__ = ["Pms5003Emulator", "as_reading"]


def as_reading(entry: Pms5003Reading | Mapping[str, int] | Sequence[int]) -> Pms5003Reading:
    if isinstance(entry, Pms5003Reading):
        return entry
    if isinstance(entry, Mapping):
        unknown = set(entry) - set(FIELDS)
        if unknown:
            raise ValueError(f"not PMS5003 fields: {sorted(unknown)}")
        return Pms5003Reading(**entry)
    return Pms5003Reading(*entry)


class Pms5003Emulator(UartDeviceServer):
    def __init__(
        self,
        series: Sequence[Pms5003Reading | Mapping[str, int] | Sequence[int]],
        *,
        period_s: float = 1.0,
        mode: str = "active",
        ack_wake: bool = True,
        host: str = "127.0.0.1",
        seed: int = 1,
    ) -> None:
        super().__init__(period_s=period_s, host=host, seed=seed)
        if not series:
            raise ValueError("the PM series is empty")
        if mode not in ("active", "passive"):
            raise ValueError(f"mode must be 'active' or 'passive', not {mode!r}")
        self.series = [as_reading(e) for e in series]
        self.mode = mode  # a real sensor powers up in active mode
        self.ack_wake = ack_wake
        self.pin_level = 1
        self.commanded_sleep = False
        self.index = 0  # next series entry
        self._rx = b""

    @property
    def awake(self) -> bool:
        return self.pin_level == 1 and not self.commanded_sleep

    def sent_readings(self) -> list[Pms5003Reading]:
        """The good data frames sent so far, in order: what a correct driver can publish."""
        return [e.info["reading"] for e in self.entries("frame")]

    def set_pin(self, level: int) -> None:
        """The SET pin as the node drives it (low = sleep)."""
        self.pin_level = 1 if level else 0
        self.record("pin", level=self.pin_level)

    # -- output ------------------------------------------------------------------------------

    def on_period(self) -> None:
        if self.mode == "active" and self.awake:
            self._send_reading()

    def _send_reading(self) -> None:
        if self.silent:
            return
        reading = self.series[self.index % len(self.series)]
        frame = pms5003.build_data_frame(*reading.values())
        kind = self.take_injection()
        if kind == "bad_checksum":
            bad = bytearray(frame)
            bad[-1] ^= 0x5A
            self.send(bytes(bad))
            self.record(kind, bytes(bad), reading=reading)
        elif kind == "truncated":
            self.send(frame[:20])
            self.record(kind, frame[:20], reading=reading)
        elif kind == "garbage":
            junk = self.garbage(0x42)
            self.send(junk)
            self.record(kind, junk)
        self.send(frame)
        self.record("frame", frame, index=self.index, reading=reading)
        self.index += 1

    # -- input -------------------------------------------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        self._rx += data
        while True:
            start = self._rx.find(pms5003.HEADER)
            if start < 0:
                self._rx = self._rx[-1:] if self._rx.endswith(b"\x42") else b""
                return
            if len(self._rx) - start < pms5003.COMMAND_SIZE:
                self._rx = self._rx[start:]
                return
            raw = self._rx[start:start + pms5003.COMMAND_SIZE]
            try:
                command, value = pms5003.decode_command(raw)
            except Pms5003Error as exc:
                self.record("bad_command", raw, reason=exc.reason)
                self._rx = self._rx[start + 1:]
                continue
            self._rx = self._rx[start + pms5003.COMMAND_SIZE:]
            self._command(command, value, raw)

    def _command(self, command: int, value: int, raw: bytes) -> None:
        # Logged before it is acted on, so an ack or frame it causes follows it in the log.
        info = self.record("command", raw, command=command, value=value, acted=True).info
        if self.pin_level == 0:
            info["acted"] = False  # SET low: the sensor is off, the UART is not listened to
        elif command == pms5003.CMD_SLEEP:
            if value == 0:
                if not self.commanded_sleep:
                    self._ack(command, value)
                    self.commanded_sleep = True
            else:
                if self.ack_wake:
                    self._ack(command, value)
                self.commanded_sleep = False
        elif self.commanded_sleep:
            info["acted"] = False  # asleep: only "wake" is heard
        elif command == pms5003.CMD_MODE:
            self.mode = "passive" if value == pms5003.MODE_PASSIVE else "active"
            self._ack(command, value)
        elif command == pms5003.CMD_READ:
            if self.mode == "passive":
                self._send_reading()
            else:
                info["acted"] = False
        else:
            info["acted"] = False

    def _ack(self, command: int, value: int) -> None:
        if self.silent:
            return
        ack = pms5003.build_ack(command, value & 0xFF)
        self.send(ack)
        self.record("ack", ack, command=command, value=value)
