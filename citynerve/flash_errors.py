"""`citynerve flash`'s errors: one sentence each for the technician (str()), with the data on them."""

from __future__ import annotations


class FlashError(Exception):
    """Flashing stopped; str() is the sentence for the technician."""

    def __init__(self, message: str, *, board: str | None = None, port: str | None = None) -> None:
        super().__init__(message)
        self.board, self.port = board, port


class ConfigRefused(FlashError):
    """boards.toml did not pass `boards check`; `lines` are its problem lines."""

    def __init__(self, message: str, *, lines: list[str], board: str | None = None) -> None:
        super().__init__(message, board=board)
        self.lines = lines


class PortError(FlashError):
    """The serial port does not exist or cannot be opened."""


class NoReplError(FlashError):
    """Something is on the port but it does not answer as a MicroPython REPL."""


class BoardFullError(FlashError):
    """The board's filesystem is full (OSError 28); the old firmware is left as it was."""


class CopyError(FlashError):
    """Copying, renaming or verifying failed; `replaced` lists files that are already new."""

    def __init__(self, message: str, *, replaced: list[str], board: str | None = None,
                 port: str | None = None) -> None:
        super().__init__(message, board=board, port=port)
        self.replaced = replaced


class HelloTimeout(FlashError):
    """The board was reset but its HELLO did not arrive; `console` is its last output."""

    def __init__(self, message: str, *, console: list[str], board: str | None = None,
                 port: str | None = None) -> None:
        super().__init__(message, board=board, port=port)
        self.console = console
