"""The spec language's error: a :class:`saec.errors.UserError` found while reading a spec.

Only the language package (``saec/spec``) raises :class:`SpecError`; every
other layer raises :class:`saec.errors.UserError` directly.
"""

from __future__ import annotations

from saec.errors import MAX_MESSAGE_CHARS, UserError, format_path

__all__ = ["MAX_MESSAGE_CHARS", "SpecError", "format_path"]


class SpecError(UserError):
    """Bad input in a spec file (or a ``--set`` override), with file, line and dotted path."""
