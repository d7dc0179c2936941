"""The one user-facing error type of saec: a problem with what the user gave."""

from __future__ import annotations


def format_path(path: tuple) -> str:
    """Render a location tuple as a dotted path; list items as ``[i]``."""
    out = ""
    for elem in path:
        if isinstance(elem, int):
            out += f"[{elem}]"
        else:
            out += ("." if out else "") + str(elem)
    return out


#: Longest message a SpecError shows (its location comes on top).
MAX_MESSAGE_CHARS = 600


class SpecError(Exception):
    """Bad user input, located as precisely as we can.

    Renders as one line ``FILE:LINE: dotted.path: message`` (parts that are
    unknown are left out). The CLI prints it and exits with code 2.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 path: str | tuple | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.path = format_path(path) if isinstance(path, tuple) else path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        if self.path:
            where += f"{self.path}: "
        message = " ".join(self.message.split())
        if len(message) > MAX_MESSAGE_CHARS:  # a 10 MB bad value must not become a 10 MB error line
            message = message[: MAX_MESSAGE_CHARS - 5] + " [...]"
        return where + message
