"""The node's stream table: each named quantity gets a small integer id announced in HELLO, so DATA
frames carry ids rather than names (DESIGN.md "Data model").

A stream's name is "<device id>/<quantity>", e.g. "nb-lane1/occupancy" or "co2/co2_ppm"; the node's
own health streams are "node/<quantity>".
"""


class StreamTable:
    def __init__(self):
        # [sid, name, unit, kind, dec] in id order: HELLO's stream table. Looked up by name with a
        # scan rather than a name -> id dict beside it: names are looked up only while drivers
        # start (a node has ~20 streams), and the dict was ~0.3 KB of heap for the node's life.
        self._entries = []

    def add(self, name, unit="", kind="gauge", dec=None):
        """The id of stream `name`, declaring it on first use."""
        sid = self.id_of(name)
        if sid is None:
            sid = len(self._entries)
            self._entries.append([sid, name, unit, kind, dec])
        return sid

    def id_of(self, name):
        for entry in self._entries:
            if entry[1] == name:
                return entry[0]
        return None

    def entries(self):
        return self._entries

    def __len__(self):
        return len(self._entries)
