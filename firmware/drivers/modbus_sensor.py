"""Modbus RTU sensors described by a profile (SenseAir S8, the generic sensor, any copy of it).

ModbusSensorDriver publishes one stream "<device id>/<register name>" per value register (unit,
kind and dec from the profile), one sample per poll: the number, or the fault that kept it from
being one (the read's fault, the status register's FAULT_SENSOR with its fault bits as detail,
FAULT_OUT_OF_RANGE outside valid_min..valid_max, FAULT_UNAVAILABLE while the unit is in backoff).
Device config keys: ModbusDevice's (firmware/drivers/modbus_device.py).
"""

from firmware.drivers.modbus_device import ModbusDevice
from firmware.modbus_master import ModbusError, failed, fault_of, profile_plan
from firmware.register_decode import decode, status_fault, status_mask, status_register, value_registers
from protocols.modbus_write import write_single_register

class ModbusSensorDriver(ModbusDevice):
    def __init__(self, device, profile, node):
        ModbusDevice.__init__(self, device, profile, node)
        self._commands = profile.get("commands") or {}
        self._entries = []
        if not self.ready:
            return
        self._entries = self.checked(value_registers(profile))
        self._sids = [self.stream(e["name"], e) for e in self._entries]
        self._status = status_register(profile)
        self._mask = status_mask(profile)
        wanted = list(self._entries)
        if self._status is not None:
            wanted.append(self._status)
        if not wanted:
            self.config_error("profile", "%s lists no value registers" % profile.get("profile"))
            self.ready = False
            return
        self._plan = profile_plan(profile, wanted)

    async def poll(self):
        results = await self.read(self._plan)
        tick = self.hal.ticks_ms()
        n = len(self._entries)
        status = (0, 0)
        if self._status is not None:
            got = results[n]
            # Without the status word a value may come from a sensor that knows it is broken:
            # publish the status read's fault instead.
            status = fault_of(got) if failed(got) else status_fault(self._mask, got, self._status)
        for i in range(n):
            got = results[i]
            if failed(got):
                fault, detail = fault_of(got)
                value = None
            elif status[0]:
                fault, detail = status
                value = None
            else:
                value, fault, detail = decode(self._entries[i], got)
            self.node.sample(self._sids[i], value, fault, detail, tick)
        for got in results:
            if failed(got):
                self.poll_failed(got, tick)
                return
        self.poll_ok(tick)
        if status[0]:
            self.last_fault = "%s: the device reports status fault bits 0x%04X" % (self.id, status[1])

    async def command(self, op, args):
        """A profile command (e.g. SenseAir "background_calibration": one holding register
        write). Returns (ok, message)."""
        spec = self._commands.get(op)
        if spec is None or not self.ready:
            return False, "%s has no command %r" % (self.id, op)
        if spec.get("table", "holding") != "holding":
            return False, "%s: command %r writes a %s, only holding registers are writable" % (
                self.id, op, spec.get("table"))
        adu = write_single_register(self.unit, spec["address"], spec["value"], self.any_address)
        try:
            await self.master.request(self.unit, adu, any_address=self.any_address)
        except ModbusError as exc:
            return False, "%s: %s" % (self.id, exc.reason)
        except Exception as exc:  # noqa: BLE001 - ModbusException: the device refused
            return False, "%s: %s" % (self.id, exc)
        return True, "%s: %s done" % (self.id, op)

