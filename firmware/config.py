"""The board config, validated at boot (the flash tool writes it from boards.toml as /config.json).

Validation never stops the node: an invalid device is left out and its (key, reason) goes into
HELLO and HEALTH, so the gateway shows the technician exactly what to fix while every valid device
keeps running. Only a config with no usable node id or link is fatal (the node then boots into
safe mode, which keeps the link up on defaults and reports why).
"""

import json

# Driver per profile "interface" (and, for Modbus devices, per profile role): lazy imports, so a
# board pays RAM only for the drivers it uses. Modules of firmware.drivers, named without it.
_MODBUS_DRIVERS = {
    "nema-phase-status": ("signal_controller", "SignalControllerDriver"),
    "loop-card-modbus": ("loop_card", "LoopCardDriver"),
}
_DRIVERS = {
    "uart-frames:pms5003": ("pms5003_driver", "Pms5003Driver"),
    "uart-frames:sds011": ("sds011_driver", "Sds011Driver"),
    "presence-pins": ("loop_presence", "LoopPresenceDriver"),
    "modbus-rtu": ("modbus_sensor", "ModbusSensorDriver"),
}
_FRAMINGS = ("8N1", "8E1", "8O1", "8N2")


class FatalConfigError(Exception):
    """The config cannot run a node at all (no node id, no link): boot into safe mode."""


def load(raw):
    """Parse the config file's bytes; FatalConfigError when it is missing or not JSON."""
    if raw is None:
        raise FatalConfigError("config.json: missing (flash the board with `citynerve flash`)")
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise FatalConfigError("config.json: not valid JSON (%s)" % exc)
    if not isinstance(config, dict):
        raise FatalConfigError("config.json: not an object")
    profiles = config.get("profiles")
    if isinstance(profiles, dict):
        for name in profiles:
            if isinstance(profiles[name], dict):
                profiles[name].pop("description", None)  # for people: no use in the node's heap
    return config


def driver_for(device, profile):
    """(module, class name) of the driver for a device, or None."""
    interface = profile.get("interface")
    if interface == "modbus-rtu":
        found = _MODBUS_DRIVERS.get(profile.get("profile"), _DRIVERS["modbus-rtu"])
    elif interface == "uart-frames":
        found = _DRIVERS.get("uart-frames:" + str(profile.get("profile")))
    else:
        found = _DRIVERS.get(interface)
    return None if found is None else ("firmware.drivers." + found[0], found[1])


def _problem(errors, key, reason):
    errors.append([key, reason])


def validate(config):
    """Check `config`; returns (usable devices, errors as [key, reason] pairs).

    Raises FatalConfigError when the node cannot run at all."""
    errors = []
    node = config.get("node")
    if not isinstance(node, str) or not node:
        raise FatalConfigError("config.json: `node` (the board id) is missing")
    link = config.get("link")
    if not isinstance(link, dict) or link.get("transport") not in ("uart", "tcp", "usb"):
        raise FatalConfigError("config.json: `link.transport` must be uart, tcp or usb")
    interval = config.get("interval_s", 30)
    # 300 s at most: LaneMeasures times an interval in ticks_us, which spans at most 2**29 us.
    if not isinstance(interval, int) or not 5 <= interval <= 300:
        _problem(errors, "interval_s", "must be a whole number of seconds in 5..300; using 30")
        config["interval_s"] = 30
    buses = config.get("buses", {})
    good_buses = {}
    for bus_id in buses:
        bus = buses[bus_id]
        key = "buses.%s" % bus_id
        if not isinstance(bus, dict):
            _problem(errors, key, "must be a table")
        elif not isinstance(bus.get("baud"), int) or bus["baud"] <= 0:
            _problem(errors, key + ".baud", "must be a positive whole number")
        elif bus.get("framing", "8N1") not in _FRAMINGS:
            _problem(errors, key + ".framing", "must be one of " + ", ".join(_FRAMINGS))
        else:
            good_buses[bus_id] = bus
    config["buses"] = good_buses
    profiles = config.get("profiles", {})
    devices = []
    seen = {}
    for index, device in enumerate(config.get("devices", [])):
        reason = None
        did = device.get("id") if isinstance(device, dict) else None
        key = "devices.%s" % (did if isinstance(did, str) else index)
        if did is None or not isinstance(did, str):
            reason = "has no id"
        elif did in seen:
            reason = "duplicate device id"
        elif device.get("profile") not in profiles:
            reason = "profile %r is not in this config" % (device.get("profile"),)
        else:
            profile = profiles[device["profile"]]
            if driver_for(device, profile) is None:
                reason = "no driver for profile interface %r" % (profile.get("interface"),)
            elif profile.get("interface") in ("modbus-rtu", "uart-frames"):
                bus = good_buses.get(device.get("bus"))
                if bus is None:
                    reason = "bus %r is not a valid bus of this board" % (device.get("bus"),)
                elif profile.get("bauds") and bus["baud"] not in profile["bauds"]:
                    reason = "bus baud %d is not supported by %s (%s)" % (
                        bus["baud"], profile.get("profile"), profile["bauds"])
                elif profile.get("interface") == "modbus-rtu":
                    address = device.get("address")
                    top = 254 if profile.get("any_address") else 247
                    if not isinstance(address, int) or not 1 <= address <= top:
                        reason = "address must be 1..%d" % top
            elif profile.get("interface") == "presence-pins":
                pins = device.get("pins")
                if not isinstance(pins, list) or not 1 <= len(pins) <= 2:
                    reason = "pins must list one loop pin, or two (leading, trailing) for a speed trap"
        if reason is None:
            seen[did] = True
            devices.append(device)
        else:
            _problem(errors, key, reason)
    return devices, errors
