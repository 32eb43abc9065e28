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
