"""Crash-loop detection: a node that keeps crashing drops into safe mode, which keeps the link up
and reports why instead of rebooting forever.

A small file counts boots that did not reach `healthy_after_ms` of healthy running. Every boot
increments it before anything risky starts; a boot that stays healthy long enough resets it. At
`limit` unhealthy boots in a row the next boot is a safe-mode boot: no drivers, only the link,
HELLO and HEALTH, with the last recorded reason in the config errors. A reflash or a "reboot"
command with {"clear_safe_mode": true} clears it.
"""

import json

BOOTLOG = "bootlog.json"
# Written by `citynerve flash` beside config.json: {"node": id, "link": the board's link section}
# (and, on the harness's emulated board, its "host" section). A node whose config.json cannot be
# used still knows from it who it is and how to reach its gateway, and says why (safe_link).
LINK_FILE = "link.json"


class BootGuard:
    def __init__(self, hal, limit=3, healthy_after_ms=60000):
        self._hal = hal
        self.limit = limit
        self.healthy_after_ms = healthy_after_ms
        state = self._read()
        self.unhealthy_boots = state.get("unhealthy", 0) + 1
        self.last_reason = state.get("reason", "")
        self.safe_mode = self.unhealthy_boots > limit
        self.reason = ""
        if self.safe_mode:
            self.reason = "%d boots in a row crashed before running %d s; last: %s" % (
                self.unhealthy_boots - 1, healthy_after_ms // 1000, self.last_reason or "unknown")
        self._write({"unhealthy": self.unhealthy_boots, "reason": self.last_reason})

    def _read(self):
        raw = self._hal.read_file(BOOTLOG)
        if not raw:
            return {}
        try:
            state = json.loads(raw)
            return state if isinstance(state, dict) else {}
        except ValueError:
            return {}

    def _write(self, state):
        try:
            self._hal.write_file(BOOTLOG, json.dumps(state).encode())
        except OSError as exc:  # a full or read-only filesystem must not stop the node
            print("[boot] cannot write %s: %s" % (BOOTLOG, exc))

    def record_crash(self, reason):
        """Remember why this boot is about to end (shown in safe mode's report)."""
        self.last_reason = reason
        self._write({"unhealthy": self.unhealthy_boots, "reason": reason})

    def mark_healthy(self):
        self.unhealthy_boots = 0
        self._write({"unhealthy": 0, "reason": ""})


def clear(hal):
    """Forget the crash-loop record (the "reboot" command's clear_safe_mode); unlike a BootGuard's
    own writes, a failure raises (OSError), so the command can say so."""
    hal.write_file(BOOTLOG, b'{"unhealthy": 0, "reason": ""}')


def link_problem(link):
    """Why a node could not open `link` (a config's link section), or None when it can. Only the
    transports firmware/hal_machine.py open_link implements: uart and tcp."""
    if not isinstance(link, dict):
        return "the link is not an object"
    transport = link.get("transport")
    if transport == "uart":
        for key in ("uart", "tx", "rx", "baud"):
            value = link.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "baud" else 0):
                return "link.%s must be a whole number" % key
        return None
    if transport == "tcp":
        port = link.get("gateway_port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            return "link.gateway_port must be a port number"
        return None
    return "link.transport %r is not one a node opens (uart or tcp)" % (transport,)


def describe_link(link):
    if link.get("transport") == "tcp":
        return "tcp to gateway port %s" % link.get("gateway_port")
    return "UART %s at %s baud, TX %s / RX %s" % (link.get("uart"), link.get("baud"), link.get("tx"),
                                                  link.get("rx"))


def safe_link(hal, config):
    """(node id, link, host section or None, why) for a node whose config.json is unusable: its
    own link when that is one a node can open, else LINK_FILE's, else the HAL's built-in SAFE_LINK
    (a board's default UART). `why` (None for the config's own link) goes into HELLO and HEALTH as
    the "link" config error, so the gateway is told which link the node fell back to and why."""
    config = config if isinstance(config, dict) else {}
    node = config.get("node")
    if not isinstance(node, str) or not node:
        node = None
    link = config.get("link")
    if link_problem(link) is None:
        return node, link, None, None
    raw = hal.read_file(LINK_FILE)
    saved = None
    if raw is None:
        why = "/%s is missing" % LINK_FILE
    else:
        try:
            saved = json.loads(raw)
            why = None if isinstance(saved, dict) else "/%s is not an object" % LINK_FILE
        except ValueError:
            why = "/%s is not valid JSON" % LINK_FILE
        if why is None:
            problem = link_problem(saved.get("link"))
            if problem is None:
                return (node or saved.get("node"), saved["link"], saved.get("host"),
                        "config.json is unusable: using the link saved in /%s (%s)"
                        % (LINK_FILE, describe_link(saved["link"])))
            why = "/%s: %s" % (LINK_FILE, problem)
    if node is None and isinstance(saved, dict):
        node = saved.get("node")  # a bad saved link does not make the saved id wrong
    link = hal.SAFE_LINK
    return node, link, None, "config.json is unusable and %s: using the built-in link (%s)" % (
        why, describe_link(link))
