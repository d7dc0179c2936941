"""Compile errors: a problem found in the IR, traced back to the spec line."""

from __future__ import annotations


class CompileError(Exception):
    """A node of the IR breaks a rule. ``node`` names it; context accumulates.

    The pipeline turns it into a :class:`saec.errors.UserError` located
    at the layer's line in the spec file.
    """

    def __init__(self, message: str, *, node: str | None = None) -> None:
        self.message = message
        self.node = node
        self.context: list[str] = []
        super().__init__(message)

    def add_context(self, text: str) -> "CompileError":
        self.context.append(text)
        return self

    def __str__(self) -> str:
        where = f"node `{self.node}`: " if self.node else ""
        return where + self.message + "".join(f"; {c}" for c in self.context)


class InvalidOp(CompileError, ValueError):
    """An op record was constructed with values that break its invariants (decay outside [0, 1], ...).

    Raised by the ops' ``__post_init__``; also a ``ValueError``, as for any bad argument.
    """
