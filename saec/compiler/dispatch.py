"""One dispatch table per stage: every op type is handled or explicitly refused.

A stage that does something different per op type (shape inference, weight
shapes, cost, the runtime's forward, the NIR map, the NIR import, stats,
quantisation, ...) declares one :class:`OpTable`. Each op type is either
*handled* (a function registered for it) or *refused* (a reason why this
stage cannot take it, shown to the user). Nothing falls through silently:
looking up an op type the table does not know is an internal error, and
``tests/compiler/test_dispatch.py`` checks that every table covers every op
type in :data:`saec.compiler.ops.OP_TYPES`.

Example::

    SHAPES = OpTable("shape inference")

    @SHAPES.register(ops.Linear)
    def _linear(op, shape, name): ...

    SHAPES.refuse(ops.Reparameterize, "VAE sampling has no spiking equivalent")
    rule = SHAPES.lookup(op)          # the handler, or UnsupportedOp with the reason
"""

from __future__ import annotations

from typing import Callable, Generic, Iterable, TypeVar

from saec.compiler import ops
from saec.compiler.errors import CompileError

Handler = TypeVar("Handler", bound=Callable)

#: Every table declared in saec, by stage name (filled as modules are imported).
TABLES: dict[str, "OpTable"] = {}


class UnsupportedOp(CompileError):
    """A stage was given an op type it explicitly refuses (the reason says why)."""


def type_name(op_type: type) -> str:
    """How a message names a key type: an op's ``type`` (``conv2d``), else the class name (NIR's ``CubaLIF``)."""
    return op_type.type if issubclass(op_type, ops.Op) else op_type.__name__


def _op_types() -> dict[str, type]:
    return dict(ops.OP_TYPES)


class OpTable(Generic[Handler]):
    """The handlers of one stage, keyed by op class.

    Args:
        stage: a short, unique name of the stage ("shape inference", "NIR export").
            It starts the error message a refused op gets.
        universe: the key types the table must cover, by name; default every IR op type
            (:data:`saec.compiler.ops.OP_TYPES`). The NIR import, keyed by NIR node class,
            passes the node classes ``nir`` defines.
    """

    def __init__(self, stage: str, *, universe: Callable[[], dict[str, type]] = _op_types) -> None:
        if stage in TABLES:
            raise ValueError(f"a dispatch table named {stage!r} already exists")
        self.stage = stage
        self.universe = universe
        self.handlers: dict[type, Handler] = {}
        self.refused: dict[type, str] = {}
        TABLES[stage] = self

    def register(self, *op_types: type[ops.Op]) -> Callable[[Handler], Handler]:
        """Decorator: ``fn`` handles each of ``op_types`` in this stage."""
        def add(fn: Handler) -> Handler:
            for op_type in op_types:
                self.add(op_type, fn)
            return fn
        return add

    def add(self, op_type: type[ops.Op], fn: Handler) -> None:
        """``fn`` handles ``op_type`` in this stage (each op type once)."""
        if op_type in self.handlers or op_type in self.refused:
            raise ValueError(f"{self.stage}: {op_type.__name__} registered twice")
        self.handlers[op_type] = fn

    def refuse(self, op_types: type[ops.Op] | Iterable[type[ops.Op]], reason: str) -> None:
        """This stage cannot take ``op_types``; ``reason`` tells the user why."""
        for op_type in (op_types,) if isinstance(op_types, type) else op_types:
            if op_type in self.handlers or op_type in self.refused:
                raise ValueError(f"{self.stage}: {op_type.__name__} registered twice")
            self.refused[op_type] = reason

    def lookup(self, op: ops.Op | type[ops.Op], *, node: str | None = None) -> Handler:
        """The handler of ``op``'s type.

        Raises:
            UnsupportedOp: the stage refuses this op type (message: stage, op, reason).
            LookupError: the op type is neither handled nor refused, a bug in saec
                that the exhaustiveness test exists to catch.
        """
        op_type = op if isinstance(op, type) else type(op)
        fn = self.handlers.get(op_type)
        if fn is not None:
            return fn
        if op_type in self.refused:
            raise UnsupportedOp(f"{self.stage} does not support `{type_name(op_type)}`: {self.refused[op_type]}",
                                node=node)
        raise LookupError(f"{self.stage}: no handler for op type `{type_name(op_type)}` (saec bug)")

    def handles(self, op: ops.Op | type[ops.Op]) -> bool:
        """True when ``op``'s type has a handler (not refused, not unknown)."""
        return (op if isinstance(op, type) else type(op)) in self.handlers

    def refusal(self, op: ops.Op | type) -> str | None:
        """The reason this stage refuses ``op``'s type, or None when it does not refuse it."""
        return self.refused.get(op if isinstance(op, type) else type(op))

    def missing(self) -> list[str]:
        """Type names of the universe this table neither handles nor refuses (empty when exhaustive)."""
        known = set(self.handlers) | set(self.refused)
        return sorted(name for name, cls in self.universe().items() if cls not in known)
