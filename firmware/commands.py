"""Commands from the gateway (CMD frames) and their answers (RESULT frames).

The gateway has already checked the command's HMAC signature, expiry and nonce (DESIGN.md
"Commands"); the node still bounds every argument itself, so a gateway bug cannot push a value the
node would choke on. dispatch never raises: every failure is (False, one sentence, None).

    ping                              -> (True, "pong", {"tick": ticks_ms})
    set_interval {interval_s}         node.config["interval_s"] = 5..300 s (drivers read it when
                                      they start their next interval)
    diagnostics                       link, ring and clock counters (LinkClient.diagnostics())
    health                            a HEALTH report now, besides the periodic one
    sleep / wake / mode {device, ...} routed to that device driver's `command(op, args)`, which
                                      returns (ok, message); bounded by DEVICE_TIMEOUT_S
    reboot {clear_safe_mode?}         the RESULT goes first, then hal.reset("command")
                                      (LinkClient.request_reset); clear_safe_mode: true also clears
                                      the crash-loop record (firmware/safe_boot.py)
"""

import asyncio

MIN_INTERVAL_S = 5
MAX_INTERVAL_S = 300  # firmware/config.py: a lane interval spans at most 2**29 us
DEVICE_TIMEOUT_S = 5  # a device command that takes longer is answered as failed
DEVICE_OPS = ("sleep", "wake", "mode")


async def _ping(args, node, devices, link_client):
    return True, "pong", {"tick": node.hal.ticks_ms()}


async def _set_interval(args, node, devices, link_client):
    value = args.get("interval_s")
    # bool is an int in Python; True is not an interval.
    if isinstance(value, bool) or not isinstance(value, int):
        return False, "set_interval needs args.interval_s, a whole number of seconds", None
    if not MIN_INTERVAL_S <= value <= MAX_INTERVAL_S:
        return False, "set_interval: %d s is outside %d..%d s" % (
            value, MIN_INTERVAL_S, MAX_INTERVAL_S), None
    node.config["interval_s"] = value
    return True, "interval set to %d s" % value, {"interval_s": value}


async def _diagnostics(args, node, devices, link_client):
    return True, "diagnostics", link_client.diagnostics()


async def _health(args, node, devices, link_client):
    link_client.request_health()
    return True, "health report queued", None


async def _device(op, args, devices):
    did = args.get("device")
    driver = devices.get(did) if (devices and isinstance(did, str)) else None
    if driver is None:
        return False, "%s needs args.device naming one of this node's devices, not %r" % (op, did), None
    command = getattr(driver, "command", None)
    if command is None:
        return False, "device %s takes no commands" % did, None
    try:
        answer = await asyncio.wait_for(command(op, args), DEVICE_TIMEOUT_S)
    except asyncio.TimeoutError:
        return False, "device %s did not finish %s within %d s" % (did, op, DEVICE_TIMEOUT_S), None
    try:
        ok, message = answer
    except (TypeError, ValueError):
        return False, "device %s answered %s with %r, not (ok, message)" % (did, op, answer), None
    return bool(ok), str(message), None


async def _reboot(args, node, devices, link_client):
    if args.get("clear_safe_mode") is True:
        from firmware.safe_boot import clear

        try:
            clear(node.hal)
        except Exception as exc:  # noqa: BLE001 - the reboot still goes ahead
            return False, "reboot: cannot clear the crash-loop record (%s); not rebooting" % exc, None
    link_client.request_reset("command")
    return True, "rebooting", None


_OPS = {
    "ping": _ping,
    "set_interval": _set_interval,
    "diagnostics": _diagnostics,
    "health": _health,
    "reboot": _reboot,
}


async def dispatch(op, args, node, devices, link_client):
    """Run command `op` with `args` (a dict); returns (ok, message, data or None)."""
    if not isinstance(args, dict):
        return False, "command %r: args must be a map" % (op,), None
    try:
        if op in DEVICE_OPS:
            return await _device(op, args, devices)
        handler = _OPS.get(op)
        if handler is None:
            return False, "unknown command op %r" % (op,), None
        return await handler(args, node, devices, link_client)
    except Exception as exc:  # noqa: BLE001 - a failing command must not take the link down
        return False, "command %s failed: %s: %s" % (op, type(exc).__name__, exc), None
