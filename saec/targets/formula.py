"""Memory formulas of a target profile: small integer expressions, checked once, evaluated per layer.

A vendor states its memory rules as arithmetic over a layer's dimensions (Speck:
``c_in * 2**(ceil_log2(kh*kw) + ceil_log2(c_out))``). Keeping the formula as text in
the profile keeps the fact next to its citation; this module parses it with Python's
own parser and evaluates only integer arithmetic over named layer dimensions, so a
profile cannot run code.
"""

from __future__ import annotations

import ast
from typing import Callable

#: The dimensions of one layer a formula may use (see saec.targets.fit.layer_dimensions).
LAYER_DIMENSIONS = {
    "c_in": "input channels (a linear layer: the channels of the flattened map it reads, else its features)",
    "c_out": "output channels (a linear layer: its output features)",
    "kh": "kernel height (a linear layer reading a flattened C x H x W map: H; else 1)",
    "kw": "kernel width (a linear layer reading a flattened C x H x W map: W; else 1)",
    "h_in": "input height", "w_in": "input width",
    "h_out": "output height (before any pooling)", "w_out": "output width (before any pooling)",
    "neurons": "neurons of the layer", "synapses": "connections of the layer", "weights": "weight count",
    "has_bias": "1 when the layer has a bias, else 0",
}


def ceil_log2(x: int) -> int:
    """Smallest e with 2**e >= x (0 for x <= 1): the address bits a memory of x entries needs."""
    return 0 if x <= 1 else (int(x) - 1).bit_length()


FUNCTIONS: dict[str, Callable[..., int]] = {"ceil_log2": ceil_log2, "max": max, "min": min}
_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.Pow: lambda a, b: a ** b, ast.FloorDiv: lambda a, b: a // b}


class FormulaError(ValueError):
    """A formula that uses something other than integers, + - * // **, the layer dimensions and FUNCTIONS."""


def check_formula(text: str) -> ast.Expression:
    """Parse ``text`` and refuse anything but the allowed integer arithmetic.

    Returns:
        The parsed expression, for :func:`evaluate`.
    Raises:
        FormulaError: naming the first thing that is not allowed.
    """
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"not an expression: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.Load)) or type(node) in _OPERATORS:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            continue
        if isinstance(node, ast.Name):
            if node.id in LAYER_DIMENSIONS or node.id in FUNCTIONS:
                continue
            raise FormulaError(f"unknown name {node.id!r}; known: {', '.join([*LAYER_DIMENSIONS, *FUNCTIONS])}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            if node.func.id in FUNCTIONS:
                continue
            raise FormulaError(f"unknown function {node.func.id!r}; known: {', '.join(FUNCTIONS)}")
        raise FormulaError(f"{ast.unparse(node)} is not allowed (integers, + - * // **, layer dimensions, "
                           f"{', '.join(FUNCTIONS)})")
    return tree


def evaluate(tree: ast.Expression, dims: dict[str, int]) -> int:
    """Value of a checked formula for one layer's dimensions."""

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return dims[node.id]
        if isinstance(node, ast.BinOp):
            return _OPERATORS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Call):
            return FUNCTIONS[node.func.id](*(ev(a) for a in node.args))
        raise FormulaError(f"unexpected {type(node).__name__}")  # check_formula refused it already

    return int(ev(tree))


__all__ = ["LAYER_DIMENSIONS", "FormulaError", "ceil_log2", "check_formula", "evaluate"]
