"""Every stage that dispatches on op type has one OpTable, and each table covers every op type."""

from __future__ import annotations

import importlib
import pkgutil

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
