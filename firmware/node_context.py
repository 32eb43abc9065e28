"""What every device driver is handed: the HAL, the stream table, the outbox, the gateway clock,
the shared buses and a place to report problems. Keeps drivers free of globals and lets the same
driver run on a board and in the harness.

A driver is a class constructed as Driver(device_config, profile, node) that declares its streams
with node.streams.add(...) in __init__, does its work in `async def run(self)`, keeps `counters`
(a dict of ints shown in HEALTH: ok, timeouts, checksum, exceptions, ...) and `last_fault`, and may
implement `async def command(self, op, args)` returning (ok, message).
"""


class NodeContext:
    def __init__(self, hal, config, streams, outbox, clock):
        self.hal = hal
        self.config = config
        self.streams = streams
        self.outbox = outbox
        self.clock = clock
        self.config_errors = []  # [key, reason] pairs: reported in HELLO and HEALTH
        self._buses = {}
        self._masters = {}

    def bus(self, bus_id):
        """The Uart for bus `bus_id` (one per bus, shared by the devices on it)."""
        uart = self._buses.get(bus_id)
        if uart is None:
            uart = self.hal.Uart(self.config["buses"][bus_id])
            self._buses[bus_id] = uart
        return uart

    def modbus(self, bus_id, master_class):
        """The Modbus RTU master for bus `bus_id`: one per bus so its devices never talk at once.
        The Modbus drivers pass master_class (firmware.modbus_master.ModbusMaster), so a board
        without Modbus devices never imports the Modbus stack (citynerve/firmware_bundle.py
        leaves it off its flash)."""
        master = self._masters.get(bus_id)
        if master is None:
            bus = self.config["buses"][bus_id]
            master = master_class(self.hal, self.bus(bus_id), baud=bus["baud"],
                                  framing=bus.get("framing", "8E1"))
            self._masters[bus_id] = master
        return master

    def config_error(self, key, reason):
        self.config_errors.append([key, reason])
        print("[config] %s: %s" % (key, reason))

    def sample(self, sid, value, fault=0, detail=0, tick_ms=None):
        self.outbox.sample(sid, self.hal.ticks_ms() if tick_ms is None else tick_ms, value, fault, detail)

    def event(self, code, param, tick_ms=None):
        self.outbox.event(self.hal.ticks_ms() if tick_ms is None else tick_ms, code, param)
