"""Device drivers: one module per kind of device, imported lazily by firmware/config.py's
driver_for() so a board pays RAM only for the drivers it uses. Each is constructed as
Driver(device_config, profile, node) (the contract in firmware/node_context.py).

Modbus RTU: modbus_sensor.ModbusSensorDriver (SenseAir S8, generic sensors) and its ModbusDevice
base, loop_card.LoopCardDriver, signal_controller.SignalControllerDriver.
"""
