"""The protocol layer's error hierarchy.

Every decoder in protocols/ raises (one-shot decoders) or reports (incremental decoders, which never
raise on input) an instance of one ProtocolError subclass from its own module. `offset` is the byte
offset in the input the problem was found at, when there is one, so a message can name the place.
"""


class ProtocolError(ValueError):
    """Malformed bytes. `reason` is one sentence; `offset` the byte offset it refers to, or None."""

    def __init__(self, reason, offset=None):
        self.reason = reason
        self.offset = offset
        # super() rather than ValueError.__init__: MicroPython's built-in classes have no __init__.
        # Subclasses inherit this, or call ProtocolError.__init__(self, ...) explicitly: both work
        # on MicroPython 1.27 (tests/portable run the error vectors there).
        if offset is None:
            super().__init__(reason)
        else:
            super().__init__("%s (at byte %d)" % (reason, offset))
