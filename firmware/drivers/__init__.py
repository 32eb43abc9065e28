"""Device drivers: one module per kind of device, imported lazily by firmware/config.py's
driver_for() so a board pays RAM only for the drivers it uses. Each is constructed as
Driver(device_config, profile, node) (the contract in firmware/node_context.py).

Modbus RTU: modbus_device.ModbusDevice (the base), modbus_sensor.ModbusSensorDriver (SenseAir S8,
generic sensors), loop_card.LoopCardDriver, signal_controller.SignalControllerDriver. Frame sensors
on a UART: uart_pm.UartPmDriver (the base), pms5003_driver, sds011_driver.
"""
