"""An emulated Nova SDS011 (REFERENCE.md §3) serving its UART on a loopback TCP port.

It turns a PM time series (pairs of integer tenths of µg/m³: PM2.5, PM10) into 10-byte data
frames: one every `period_s` in active reporting mode, one per QUERY_DATA command in query mode.
It answers the 19-byte commands (reporting mode, query, sleep/work, working period, firmware,
device id) with the C5 replies of protocol V1.3 (protocols/sds011.py), ignores commands addressed
to another device id, hears only SLEEP_WORK while asleep, and logs every frame, reply, command and
injected fault as ground truth. The series repeats when it ends. The working period is stored and
reported but not acted on (it reports every `period_s` whatever it is set to).
"""

from __future__ import annotations

from collections.abc import Sequence

from hil.emulators import UartDeviceServer
from protocols import sds011
from protocols.sds011 import Sds011Error, Sds011Reading

__all__ = ["Sds011Emulator"]

FIRMWARE_DATE = (15, 7, 10)  # year, month, day as the protocol sheet's example reply


class Sds011Emulator(UartDeviceServer):
    def __init__(
        self,
        series: Sequence[tuple[int, int]],
        *,
        device_id: int = 0xA160,
        period_s: float = 1.0,
        mode: str = "active",
        host: str = "127.0.0.1",
        seed: int = 1,
    ) -> None:
        super().__init__(period_s=period_s, host=host, seed=seed)
        if not series:
            raise ValueError("the PM series is empty")
        if mode not in ("active", "query"):
            raise ValueError(f"mode must be 'active' or 'query', not {mode!r}")
        for pm2_5, pm10 in series:
            if not (0 <= pm2_5 <= 0xFFFF and 0 <= pm10 <= 0xFFFF):
                raise ValueError(f"PM tenths must be 0..65535, got {(pm2_5, pm10)}")
        self.series = list(series)
        self.device_id = device_id
        self.mode = mode
        self.asleep = False
        self.working_period = 0
        self.index = 0
        self._rx = b""

    @property
    def awake(self) -> bool:
        return not self.asleep

    def sent_readings(self) -> list[Sds011Reading]:
        """The good data frames sent so far, in order: what a correct driver can publish."""
        return [e.info["reading"] for e in self.entries("frame")]

    # -- output ------------------------------------------------------------------------------

    def on_period(self) -> None:
        if self.mode == "active" and not self.asleep:
            self._send_reading()

    def _send_reading(self) -> None:
        if self.silent:
            return
        pm2_5, pm10 = self.series[self.index % len(self.series)]
        reading = Sds011Reading(pm2_5, pm10, self.device_id)
        frame = sds011.build_data_frame(pm2_5, pm10, self.device_id)
        kind = self.take_injection()
        if kind == "bad_checksum":
            bad = bytearray(frame)
            bad[8] ^= 0x5A
            self.send(bytes(bad))
            self.record(kind, bytes(bad), reading=reading)
        elif kind == "truncated":
            self.send(frame[:6])
            self.record(kind, frame[:6], reading=reading)
        elif kind == "garbage":
            junk = self.garbage(sds011.HEAD)
            self.send(junk)
            self.record(kind, junk)
        self.send(frame)
        self.record("frame", frame, index=self.index, reading=reading)
        self.index += 1

    def _reply(self, command: int, value: object = None, is_set: bool = False) -> None:
        if self.silent:
            return
        frame = sds011.build_reply(command, value, self.device_id, is_set)
        self.send(frame)
        self.record("reply", frame, command=command, value=value, is_set=is_set)

    # -- input -------------------------------------------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        self._rx += data
        head = bytes((sds011.HEAD, sds011.COMMAND))
        while True:
            start = self._rx.find(head)
            if start < 0:
                self._rx = self._rx[-1:] if self._rx.endswith(head[:1]) else b""
                return
            if len(self._rx) - start < sds011.COMMAND_SIZE:
                self._rx = self._rx[start:]
                return
            raw = self._rx[start:start + sds011.COMMAND_SIZE]
            try:
                command = sds011.decode_command(raw)
            except Sds011Error as exc:
                self.record("bad_command", raw, reason=exc.reason)
                self._rx = self._rx[start + 1:]
                continue
            self._rx = self._rx[start + sds011.COMMAND_SIZE:]
            self._command(command, raw)

    def _command(self, cmd: sds011.Sds011Reply, raw: bytes) -> None:
        # Logged before it is acted on, so a reply or frame it causes follows it in the log.
        info = self.record("command", raw, command=cmd.command, is_set=cmd.is_set,
                           value=cmd.value, acted=True).info
        if cmd.device_id not in (sds011.ALL_DEVICES, self.device_id):
            info["acted"] = False  # another sensor's command
            return
        if self.asleep and cmd.command != sds011.SLEEP_WORK:
            info["acted"] = False
            return
        c = cmd.command
        if c == sds011.REPORTING_MODE:
            if cmd.is_set:
                self.mode = "query" if cmd.value == sds011.MODE_QUERY else "active"
            self._reply(c, sds011.MODE_QUERY if self.mode == "query" else sds011.MODE_ACTIVE,
                        cmd.is_set)
        elif c == sds011.QUERY_DATA:
            self._send_reading()
        elif c == sds011.SLEEP_WORK:
            if cmd.is_set:
                self.asleep = cmd.value == sds011.STATE_SLEEP
            self._reply(c, sds011.STATE_SLEEP if self.asleep else sds011.STATE_WORK, cmd.is_set)
        elif c == sds011.WORKING_PERIOD:
            if cmd.is_set:
                self.working_period = cmd.value
            self._reply(c, self.working_period, cmd.is_set)
        elif c == sds011.FIRMWARE:
            self._reply(c, FIRMWARE_DATE)
        elif c == sds011.SET_DEVICE_ID:
            self.device_id = cmd.value
            self._reply(c, None, True)
        else:
            info["acted"] = False
