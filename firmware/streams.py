"""The node's stream table: each named quantity gets a small integer id announced in HELLO, so DATA
frames carry ids rather than names (DESIGN.md "Data model").

A stream's name is "<device id>/<quantity>", e.g. "nb-lane1/occupancy" or "co2/co2_ppm"; the node's
own health streams are "node/<quantity>".
"""


class StreamTable:
    def __init__(self):
        self._entries = []  # [sid, name, unit, kind, dec] in id order: HELLO's stream table
        self._ids = {}

    def add(self, name, unit="", kind="gauge", dec=None):
        """The id of stream `name`, declaring it on first use."""
        sid = self._ids.get(name)
        if sid is None:
            sid = len(self._entries)
            self._entries.append([sid, name, unit, kind, dec])
            self._ids[name] = sid
        return sid

    def id_of(self, name):
        return self._ids.get(name)

    def entries(self):
        return self._entries

    def __len__(self):
        return len(self._entries)
