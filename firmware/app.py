"""The node application: boot, validate the config, start the drivers and the link, keep the
watchdog fed only while the node is healthy.

Boot order: read /config.json → (host harness only) configure the host HAL from its "host"
section → BootGuard (crash-loop check) → validate → drivers (each failure becomes a config error,
the rest keep running) → link client → supervisor. Driver tasks that raise are restarted with a
growing delay and their error is kept for HEALTH; the watchdog is fed only while the link task is
alive and no driver is crash-looping, so a wedged node resets rather than going quietly silent.
"""

import asyncio

from firmware import hal
from firmware.clock import GatewayClock
from firmware.config import FatalConfigError, driver_for, load, validate
from firmware.node_context import NodeContext
from firmware.outbox import Outbox
from firmware.safe_boot import BootGuard, safe_link
from firmware.streams import StreamTable

FW_VERSION = "0.1.0"
WATCHDOG_MS = 8000


def config_hash(raw):
    import hashlib

    digest = hashlib.sha256(raw or b"").digest()
    return "".join("%02x" % b for b in digest[:8])


class Supervised:
    """A driver's task, restarted after a crash with a delay that doubles up to a minute."""

    def __init__(self, name, factory):
        self.name = name
        self.factory = factory
        self.crashes = 0
        self.recent_crashes = 0
        self.last_error = ""

    async def run(self):
        delay = 1
        while True:
            try:
                await self.factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a driver bug must not take the node down
                self.crashes += 1
                self.recent_crashes += 1
                self.last_error = "%s: %s" % (type(exc).__name__, exc)
                print("[app] %s crashed (%s); restarting in %d s" % (self.name, self.last_error, delay))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)


async def watch_heap(node, interval_ms):
    """Track the peak of the live heap (allocated bytes right after a collection) for HEALTH.

    On a board gc.collect() runs at once. On the WebAssembly VM it only marks a collection due,
    which runs when control next returns to JS, so there the figure also holds up to one interval
    of garbage: bench/firmware_footprint.py's heap is an upper bound of a board's."""
    backend = node.hal
    while True:
        await asyncio.sleep(interval_ms / 1000)
        backend.collect()
        used = backend.mem_alloc()
        if used is not None and (node.heap_peak is None or used > node.heap_peak):
            node.heap_peak = used


def _make_drivers(node, devices):
    drivers = {}
    for device in devices:
        profile = node.config["profiles"][device["profile"]]
        module_name, class_name = driver_for(device, profile)
        try:
            module = __import__(module_name, None, None, [class_name])
            drivers[device["id"]] = getattr(module, class_name)(device, profile, node)
        except Exception as exc:  # noqa: BLE001 - one bad device must not stop the others
            node.config_error("devices.%s" % device["id"], "driver failed to start: %s" % exc)
    return drivers


async def main(config_path="config.json"):
    backend = hal.backend
    raw = backend.read_file(config_path)
    config = None
    fatal = None
    try:
        config = load(raw)
    except FatalConfigError as exc:
        fatal = str(exc)
    # The file's bytes (0.7-2.6 KB on the demo boards) would otherwise live as long as main():
    # keep only their hash, for HELLO.
    cfg_hash = config_hash(raw)
    raw = None
    if config is not None and "host" in config and hasattr(backend, "configure"):
        backend.configure(config["host"])
    await backend.start()
    guard = BootGuard(backend)
    errors = []
    devices = []
    if fatal is None:
        try:
            devices, errors = validate(config)
        except FatalConfigError as exc:
            fatal = str(exc)
    if fatal is not None:
        # Safe mode on whatever link can still be known (firmware/safe_boot.py safe_link): the
        # config's own, the one `citynerve flash` saved in /link.json, or the board's default
        # UART, so the node can still tell its gateway why it is not running.
        node_id, link, host, why = safe_link(backend, config)
        if host is not None and hasattr(backend, "configure"):
            backend.configure(host)  # the harness's emulated board: where its link goes
        if not isinstance(node_id, str) or not node_id:
            node_id = "unconfigured"
        config = {"node": node_id, "link": link, "buses": {}, "devices": [], "profiles": {}}
        errors.append(["config", fatal])
        if why is not None:
            errors.append(["link", why])
    if guard.safe_mode:
        devices = []
        errors.append(["safe_mode", guard.reason])
    node = NodeContext(backend, config, StreamTable(), Outbox(), GatewayClock(backend.ticks_ms))
    node.config_errors.extend(errors)
    node.heap_peak = None
    asyncio.create_task(watch_heap(node, config.get("heap_watch_ms", 1000)))
    for key, reason in errors:
        print("[config] %s: %s" % (key, reason))
    drivers = _make_drivers(node, devices)
    # What the drivers did not keep of their device and profile entries can go now; nothing
    # reads them after start (the harness's "host" section was copied by configure()).
    devices = None
    for key in ("profiles", "devices", "host"):
        config.pop(key, None)

    from firmware.link_client import LinkClient

    link = LinkClient(node, config["link"], FW_VERSION, cfg_hash, devices=drivers)
    supervised = [Supervised(did, drivers[did].run) for did in drivers]
    link_task = asyncio.create_task(link.run())
    for s in supervised:
        asyncio.create_task(s.run())
    watchdog = backend.Watchdog(WATCHDOG_MS)
    started = backend.ticks_ms()
    healthy_marked = False
    while True:
        await asyncio.sleep(1)
        for s in supervised:
            drivers[s.name].last_fault = getattr(drivers[s.name], "last_fault", None) or s.last_error or None
        crash_looping = [s.name for s in supervised if s.recent_crashes >= 5]
        if link_task.done():
            guard.record_crash("link task ended: %r" % (_task_error(link_task),))
            continue  # stop feeding: the watchdog resets the node
        if crash_looping:
            guard.record_crash("drivers crash-looping: " + ", ".join(crash_looping))
            continue
        watchdog.feed()
        if not healthy_marked and backend.ticks_diff(backend.ticks_ms(), started) > guard.healthy_after_ms:
            guard.mark_healthy()
            healthy_marked = True
            for s in supervised:
                s.recent_crashes = 0


def _task_error(task):
    try:
        return task.exception()
    except Exception as exc:  # noqa: BLE001
        return exc


def run():
    """Entry point on a board (main.py)."""
    asyncio.run(main())
