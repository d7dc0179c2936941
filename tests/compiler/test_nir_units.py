"""The NIR boundary's unit conversions: one module, and they invert each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from saec.compiler import nir_units as U

SAEC = Path(__file__).resolve().parents[2] / "saec"


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.99, 0.999])
def test_lif_export_and_import_invert_each_other(decay):
    tau, r = U.lif_tau_r(decay)
    assert tau == U.DT / (1.0 - decay) and r == 1.0 / (1.0 - decay)
    assert U.decay_from_tau(tau, U.DT) == pytest.approx(decay, rel=1e-12, abs=1e-12)
    assert U.gain_from_tau(tau, r, U.DT) == pytest.approx(1.0, rel=1e-12)  # v = u: saec's LIF has gain 1
    assert U.threshold_from_v(0.7, U.gain_from_tau(tau, r, U.DT)) == pytest.approx(0.7, rel=1e-12)


def test_if_and_li():
    assert U.if_gain(U.if_r(), U.DT) == pytest.approx(1.0, rel=1e-12)
    tau, r = U.li_tau_r(0.75, 3.0, dt=2e-4)
    assert U.decay_from_tau(tau, 2e-4) == pytest.approx(0.75) and U.gain_from_tau(tau, r, 2e-4) == pytest.approx(3.0)


def test_no_leak_has_no_lif_or_li():
    with pytest.raises(ValueError, match="IF, not a LIF"):
        U.lif_tau_r(1.0)
    with pytest.raises(ValueError, match="no NIR LI equivalent"):
        U.li_tau_r(1.0, 1.0)


def test_tau_shorter_than_dt_gives_a_negative_decay():
    assert U.decay_from_tau(5e-5, 1e-4) == -1.0  # the op's invariant refuses it (tests/importers)


def _direct(node: ast.AST) -> set[str]:
    """The name of an operand that is a plain name or attribute (``dt``, ``op.decay``)."""
    return {node.id} if isinstance(node, ast.Name) else {node.attr} if isinstance(node, ast.Attribute) else set()


def _converts(node: ast.AST) -> bool:
    """``x / dt``, ``dt / x``, ``x / tau``, ``x / leak`` or ``1 - dt ...``."""
    if not isinstance(node, ast.BinOp):
        return False
    if isinstance(node.op, ast.Div):
        return bool((_direct(node.left) | _direct(node.right)) & {"dt", "DT", "tau", "leak"})
    if isinstance(node.op, ast.Sub) and isinstance(node.left, ast.Constant) and node.left.value == 1:
        return bool(_direct(node.right) & {"dt", "DT"}) or (
            isinstance(node.right, ast.BinOp) and bool(_direct(node.right.left) & {"dt", "DT"}))
    return False


def test_the_conversions_live_in_one_module():
    """No other module computes with dt and tau or a leak (dt / tau, DT / (1 - decay), 1 - dt ...)."""
    # norse_gain reproduces Norse's own float32 arithmetic with torch (it must, to be exact); the units stay DT's
    allowed = {("exporters/nir.py", "norse_gain")}
    offenders = []
    for path in SAEC.rglob("*.py"):
        if path.name == "nir_units.py":
            continue
        tree = ast.parse(path.read_text())
        skip = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                and (str(path.relative_to(SAEC)), f.name) in allowed for n in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) not in skip and _converts(node):
                offenders.append(f"{path.relative_to(SAEC.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []
