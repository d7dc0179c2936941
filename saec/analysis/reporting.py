"""Console tables (rich) for the CLI. Torch-free."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from typing import Callable

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.graph import IRGraph


def _n(x: int) -> str:
    return f"{x:,}" if x else "-"


def _shape(meta: dict) -> str:
    return "x".join(map(str, meta.get("shape", ())))


#: op -> (the summary column it fills, "op" or "activation"; its description there).
SUMMARY: OpTable[Callable[[ops.Op], tuple[str, str]]] = OpTable("compile summary")


@SUMMARY.register(ops.LIF, ops.ReLU, ops.Reparameterize)
def _activation(op: ops.Op) -> tuple[str, str]:
    return "activation", op.type


@SUMMARY.register(ops.Conv2d, ops.ConvTranspose2d)
def _conv(op: ops.Conv2d | ops.ConvTranspose2d) -> tuple[str, str]:
    k = "x".join(map(str, op.kernel_size))
    extra = "" if op.stride == (1, 1) else f", stride {op.stride[0]}"
    return "op", f"{op.type}({op.in_channels}->{op.out_channels}, k{k}{extra}{', bias' if op.bias else ''})"


@SUMMARY.register(ops.Linear)
def _linear(op: ops.Linear) -> tuple[str, str]:
    return "op", f"linear({op.in_features}->{op.out_features}{', bias' if op.bias else ''})"


@SUMMARY.register(ops.SumPool2d)
def _sum_pool2d(op: ops.SumPool2d) -> tuple[str, str]:
    k = "x".join(map(str, op.kernel_size))
    extra = "" if op.stride == op.kernel_size else f", stride {op.stride[0]}"
    return "op", f"sum_pool2d(k{k}{extra})"


@SUMMARY.register(ops.PoissonEncode)
def _encode(op: ops.PoissonEncode) -> tuple[str, str]:
    return "op", f"poisson(T={op.timesteps}, s={op.scale:g}, noise={op.noise:g})"


@SUMMARY.register(ops.MaxCumulativeReadout)
def _readout(op: ops.MaxCumulativeReadout) -> tuple[str, str]:
    return "op", f"max_t>={op.t_min} U / {op.divisor_formula}"


@SUMMARY.register(ops.Input, ops.Output, ops.Flatten, ops.Unflatten, ops.LeakyIntegrator)
def _plain(op: ops.Op) -> tuple[str, str]:
    return "op", op.type


def describe_lif(op: ops.LIF) -> str:
    """A LIF's rule in one short line (decay, spike test, reset, floor)."""
    cmp = ">=" if op.spike_when == "ge" else ">"
    floor = "off" if op.lower_bound is None else f"{op.lower_bound_mode}@{op.lower_bound:g}"
    return f"lif(decay={op.decay:g}, u{cmp}{op.threshold:g}, reset={op.reset}, floor={floor})"


def _console() -> Console:
    import sys

    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def layer_rows(graph: IRGraph) -> list[dict]:
    """One row per spec layer: its synapse op and activation merged (IR nodes grouped by ``layer``)."""
    rows: dict[str, dict] = {}
    for name in graph.order():
        meta = graph.meta(name)
        layer = meta.get("layer")
        if layer is None:
            continue
        row = rows.setdefault(layer, {"layer": layer, "op": "", "activation": "", "shape": "",
                                      "params": 0, "neurons": 0, "macs": 0})
        op = graph.op(name)
        column, text = SUMMARY.lookup(op, node=name)(op)
        row[column] = text
        row["shape"] = _shape(meta)
        for key in ("params", "neurons", "macs"):
            row[key] += meta.get(key, 0)
    return list(rows.values())


def print_compile_summary(graph: IRGraph, summary: dict, *, title: str, semantics: str,
                          console: Console | None = None) -> None:
    """The `saec compile` table: one row per layer, then totals, neuron and semantics.

    Args:
        graph: the compiled IR.
        summary: its totals (:func:`saec.compiler.pipeline.summarize`).
        title: the table's title (name, kind, preset, input).
        semantics: the spec's semantic choices in one line (SAE).
        console: where to print; None = stdout.
    """
    console = console or _console()
    table = Table(title=title, title_justify="left")
    for col, just in (("layer", "left"), ("op", "left"), ("act.", "left"), ("output", "right"),
                      ("params", "right"), ("neurons", "right"), ("MACs/step", "right")):
        table.add_column(col, justify=just)
    for row in layer_rows(graph):
        table.add_row(row["layer"], row["op"], row["activation"], row["shape"], _n(row["params"]),
                      _n(row["neurons"]), _n(row["macs"]))
    table.add_section()
    table.add_row("total", "", "", "", _n(summary["total_params"]), _n(summary["neurons"]), _n(summary["macs_per_step"]))
    console.print(table)
    t = summary["timesteps"]
    console.print(f"MACs per example over T={t} steps (dense): {summary['macs_per_example']:,}; "
                  f"synapses: {summary['synapses']:,}")
    if graph.attrs.get("kind") == "sae":
        encoders = list(graph.nodes(ops.PoissonEncode))
        if encoders:
            console.print(f"encoding: {_encode(graph.op(encoders[0]))[1]}")
        else:
            console.print(f"encoding: none, the input is pre-encoded spike trains (T={graph.attrs.get('timesteps')})")
        lifs = {describe_lif(graph.op(n)) for n in graph.nodes(ops.LIF)}
        console.print("neuron: " + "; ".join(sorted(lifs)))
        console.print(f"semantics: {semantics}")
    losses = graph.attrs["losses"]
    terms = [f"l2={losses['l2']:g}"] if losses["l2"] else []
    for term in ("p1", "p2", "a1"):
        if losses.get(term):
            terms.append(f"{term}={losses[term]['weight']:g} on {','.join(losses[term]['layers'])}")
    if losses.get("beta"):
        terms.append(f"beta*KL (beta={losses['beta']:g})")
    console.print("loss: L_rec" + "".join(f" + {t}" for t in terms))
