"""Every stage that dispatches on op type has one OpTable, and each table covers every op type."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import saec
from saec.compiler import ops
from saec.compiler.dispatch import TABLES, OpTable, UnsupportedOp


def _import_every_module() -> None:
    """Import all of saec so that every table is declared (tables register on import)."""
    for info in pkgutil.walk_packages(saec.__path__, prefix="saec."):
        if info.name in {"saec.__main__"}:
            continue
        importlib.import_module(info.name)


def test_every_table_handles_or_refuses_every_op_type():
    _import_every_module()
    assert "shape inference" in TABLES  # the tables were found at all
    gaps = {stage: table.missing() for stage, table in TABLES.items() if table.missing()}
    assert gaps == {}, f"op types neither handled nor refused: {gaps}"


def test_refused_op_raises_with_stage_and_reason():
    table = OpTable("test stage: refuse")
    try:
        table.register(ops.Linear)(lambda op: "linear")
        table.refuse(ops.ReLU, "no ReLU on this chip")
        assert table.lookup(ops.Linear(in_features=2, out_features=3))(None) == "linear"
        with pytest.raises(UnsupportedOp, match=r"test stage: refuse does not support `relu`: no ReLU on this chip"):
            table.lookup(ops.ReLU(), node="act1")
        with pytest.raises(LookupError, match="no handler for op type `lif`"):
            table.lookup(ops.LIF())
        assert table.missing() == sorted(n for n in ops.OP_TYPES if n not in {"linear", "relu"})
    finally:
        del TABLES["test stage: refuse"]


def test_an_op_type_is_registered_once():
    table = OpTable("test stage: twice")
    try:
        table.refuse(ops.ReLU, "no")
        with pytest.raises(ValueError, match="registered twice"):
            table.add(ops.ReLU, lambda op: None)
        with pytest.raises(ValueError, match="already exists"):
            OpTable("test stage: twice")
    finally:
        del TABLES["test stage: twice"]


# ---------------------------------------------------------------- no dispatch outside the tables
SAEC_DIR = Path(saec.__file__).resolve().parent
#: Nothing is exempt: the runtime's walks (layer-wise, step by step) and its synapses are tables too.
NOT_CHECKED: tuple[str, ...] = ()


def _type_tests(test: ast.AST) -> int:
    """1 when ``test`` calls isinstance(x, ops.X / nir.X / a tuple of them), else 0."""
    for node in ast.walk(test):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance" \
                and len(node.args) == 2:
            for part in ast.walk(node.args[1]):
                if isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name) \
                        and part.value.id in ("ops", "nir"):
                    return 1
    return 0


def _own_nodes(fn: ast.AST):
    """The nodes of function ``fn``, not of functions nested in it."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def isinstance_chains(source: str) -> list[tuple[str, int]]:
    """Functions with two or more branches (if / elif / conditional expressions) on an op or NIR node type."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            branches = sum(_type_tests(n.test) for n in _own_nodes(fn) if isinstance(n, (ast.If, ast.IfExp)))
            if branches >= 2:
                found.append((fn.name, fn.lineno))
    return found


def test_no_isinstance_chains_over_op_types_outside_the_tables():
    offenders = []
    for path in sorted(SAEC_DIR.rglob("*.py")):
        rel = path.relative_to(SAEC_DIR).as_posix()
        if rel.startswith(NOT_CHECKED):
            continue
        offenders += [f"saec/{rel}:{line} {name}()" for name, line in isinstance_chains(path.read_text())]
    assert offenders == [], "dispatch on op type belongs in an OpTable (saec.compiler.dispatch): " + ", ".join(offenders)


def test_the_chain_check_finds_a_chain():
    chain = (
        "def describe(op):\n"
        "    if isinstance(op, ops.LIF):\n        return 'lif'\n"
        "    elif isinstance(op, (ops.Conv2d, ops.Linear)):\n        return 'synapse'\n"
        "    return 'other'\n"
    )
    assert isinstance_chains(chain) == [("describe", 1)]
    one = "def f(op):\n    if isinstance(op, ops.LIF):\n        return 1\n    return 2\n"
    assert isinstance_chains(one) == []
    ternary = "def g(node):\n    return 1 if isinstance(node, nir.LIF) else 2 if isinstance(node, nir.IF) else 3\n"
    assert isinstance_chains(ternary) == [("g", 1)]


def test_every_refusal_says_why_in_words():
    _import_every_module()
    for stage, table in TABLES.items():
        for op_type, reason in table.refused.items():
            assert len(reason.split()) >= 4, (stage, op_type, reason)


def test_weight_shapes_exist_exactly_for_ops_with_weights():
    from saec.compiler.passes.params import weight_shapes

    for op_type in ops.OP_TYPES.values():
        op = op_type(shape=(1, 2, 2)) if op_type is ops.Unflatten else op_type()
        assert bool(weight_shapes(op)) == op_type.has_weights, op_type.type
