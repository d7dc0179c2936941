"""The one user-error type of saec: a problem with what the user gave.

Every layer raises :class:`UserError` (or a subclass) for bad input: a spec
field, a run folder, a data file, a command-line option. It renders as one
line ``FILE:LINE: dotted.path: message`` (unknown parts are left out); the
command line prints that line and exits with code 2, never a traceback.
This module is the bottom of the house: it imports nothing from saec.
"""

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


#: Longest message a UserError shows (its location comes on top).
MAX_MESSAGE_CHARS = 600


class UserError(Exception):
    """Bad user input, located as precisely as we can.

    Args:
        message: what is wrong and, where it helps, how to fix it.
        file: the file the problem is in (a spec, a run folder file, a data file).
        line: 1-based line in ``file``, when known.
        path: dotted path of the field (``layers.conv1.kernel``) or a tuple of its parts.
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
