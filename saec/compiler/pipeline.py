"""Named flows of passes, and the one entry point ``compile_spec``.

A pass is ``fn(graph) -> bool`` (True when it changed the graph), one pass per
file under :mod:`saec.compiler.passes`. A flow is a named list of passes run in
order; errors gain the name of the failing pass and of the passes that ran
before it. A flow of rewrites (``nir``) re-checks the shapes after each pass
(:func:`recheck_shapes`), so a pass that breaks them is caught and named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from saec.compiler import ops
from saec.compiler.builder import build_ir
from saec.compiler.errors import CompileError
from saec.compiler.graph import IRGraph
from saec.compiler.passes.cost import estimate_cost
from saec.compiler.passes.exec_plan import exec_plan_pass
from saec.compiler.passes.fold_reshapes import fold_reshapes
from saec.compiler.passes.lint import lint
from saec.compiler.passes.lower_conv_transpose import lower_conv_transpose
from saec.compiler.passes.lower_flatten_linear import lower_flatten_linear
from saec.compiler.passes.lower_linear_unflatten import lower_linear_unflatten
from saec.compiler.passes.params import count_params
from saec.compiler.passes.shapes import fmt, infer_shapes
from saec.compiler.runconfig import ATTR as RUN_CONFIG, run_config
from saec.errors import UserError
from saec.spec.loader import LoadedSpec, load_spec

Pass = Callable[[IRGraph], bool]

PASSES: dict[str, Pass] = {
    "shapes": infer_shapes,
    "lint": lint,
    "params": count_params,
    "cost": estimate_cost,
    # the runtime's execution plan (meta["exec"]), so that ir.json carries what the runtime runs
    "exec_plan": exec_plan_pass,
    # NIR lowerings (exact rewrites; saec.compiler.passes.lower_nir)
    "lower_conv_transpose": lower_conv_transpose,
    "lower_linear_unflatten": lower_linear_unflatten,
    "lower_flatten_linear": lower_flatten_linear,
    "fold_reshapes": fold_reshapes,
}

FLOWS: dict[str, list[str]] = {
    "compile": ["shapes", "lint", "params", "cost", "exec_plan"],
    # makes a compiled graph expressible in NIR: every synapse a Conv2d (or a linear on flat data)
    # (and, as after compile, carrying the execution plan the runtime runs it with)
    "nir": ["shapes", "lower_conv_transpose", "lower_linear_unflatten", "lower_flatten_linear", "fold_reshapes",
            "shapes", "lint", "params", "cost", "exec_plan"],
}

#: Flows that re-check the shapes after every pass (infer_shapes + lint).
RECHECKED_FLOWS: set[str] = {"nir"}


def register_pass(name: str, fn: Pass) -> None:
    PASSES[name] = fn


def register_flow(name: str, passes: list[str], *, recheck_shapes: bool = False) -> None:
    """Define flow ``name``; ``recheck_shapes``: re-check the shapes after each of its passes."""
    FLOWS[name] = list(passes)
    if recheck_shapes:
        RECHECKED_FLOWS.add(name)
    else:
        RECHECKED_FLOWS.discard(name)


def recheck_shapes(graph: IRGraph) -> None:
    """The shapes recorded on the graph are the ones its ops give, and lint holds.

    Raises:
        CompileError: a node whose recorded shape is stale (names it, with the shape its input
            gives), a node whose input no longer fits, or a lint rule broken.
    """
    recorded = {n: tuple(graph.meta(n).get("shape", ())) for n in graph.order()}
    infer_shapes(graph)
    for name in graph.order():
        now = tuple(graph.meta(name)["shape"])
        if recorded[name] != now:
            graph.meta(name)["shape"] = recorded[name]  # leave the graph as the pass left it
            raise CompileError(f"records shape {fmt(recorded[name])}, but its op gives {fmt(now)} on its input",
                               node=name)
    lint(graph)


@dataclass
class FlowReport:
    ran: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def run_flow(graph: IRGraph, flow: str, *, after: str = "build") -> FlowReport:
    """Run the passes of ``flow`` on ``graph`` in order (in place)."""
    report = FlowReport()
    recheck = flow in RECHECKED_FLOWS
    for name in FLOWS[flow]:
        try:
            if PASSES[name](graph):
                report.changed.append(name)
        except CompileError as exc:
            done = ", ".join([after, *report.ran]) or after
            exc.add_context(f"pass `{name}` of flow `{flow}` failed after [{done}]")
            raise
        if recheck and name != "shapes":
            try:
                recheck_shapes(graph)
            except CompileError as exc:
                detail = exc.message + "".join(f"; {c}" for c in exc.context)
                raise CompileError(f"pass `{name}` of flow `{flow}` broke the graph's shapes: {detail}",
                                   node=exc.node) from None
        report.ran.append(name)
    return report


def summarize(graph: IRGraph) -> dict:
    """Totals of a compiled graph (after the ``compile`` flow)."""
    metas = [graph.meta(n) for n in graph.order()]
    t = graph.attrs.get("timesteps", 1)
    macs = sum(m.get("macs", 0) for m in metas)
    return {
        "name": graph.attrs.get("name"),
        "kind": graph.attrs.get("kind"),
        "total_params": sum(m.get("params", 0) for m in metas),
        "neurons": sum(m.get("neurons", 0) for m in metas),
        "synapses": sum(m.get("synapses", 0) for m in metas),
        "macs_per_step": macs,
        "timesteps": t,
        "macs_per_example": macs * t,
        "spiking_layers": len(list(graph.nodes(ops.LIF))),
    }


def _to_spec_error(exc: CompileError, graph: IRGraph | None, loaded: LoadedSpec) -> UserError:
    path: tuple = ()
    if graph is not None and exc.node in graph:
        path = tuple(graph.meta(exc.node).get("spec_path", ()))
    elif exc.node:
        names = [layer.name for layer in loaded.spec.layers]
        if exc.node in names:
            path = ("layers", names.index(exc.node))
    message = exc.message + "".join(f"; {c}" for c in exc.context if not c.startswith("pass `"))
    return loaded.error(path, message)


def check_training_memory(loaded: LoadedSpec, graph: IRGraph, available: int | None = None) -> None:
    """Refuse a network whose training would need more memory than the machine has.

    Raises:
        UserError: located at the layer with the largest share, naming the estimate and the way out.
    """
    from saec.compiler.passes.memory import estimate_training_memory, human_bytes, machine_memory_bytes

    t = loaded.spec.training
    estimate = estimate_training_memory(graph, t.batch_size, t.optimizer)
    limit = machine_memory_bytes() if available is None else available
    if estimate.total_bytes <= limit:
        return
    node = estimate.largest_node
    path = tuple(graph.meta(node).get("spec_path", ())) if node in graph else ()
    raise loaded.error(path, f"training would need about {human_bytes(estimate.total_bytes)} (parameters with "
                             f"gradients and optimizer state {human_bytes(estimate.params_bytes)}, activations "
                             f"over T={graph.attrs.get('timesteps', 1)} x batch {t.batch_size} "
                             f"{human_bytes(estimate.activation_bytes)}; this layer holds the most), more than "
                             f"this machine's {human_bytes(limit)}; shrink the network, T or the batch, or pass "
                             "--force")


def compile_loaded(loaded: LoadedSpec, flow: str = "compile", *, force: bool = False) -> IRGraph:
    """Build the IR of a loaded spec and run ``flow``; errors come back located in the spec.

    The spec's run settings (training, data) are compiled beside the network into
    ``graph.attrs["run_config"]`` (:class:`saec.compiler.runconfig.RunConfig`), so that nothing
    below the compiler needs the spec.

    Args:
        loaded: the validated spec.
        flow: the passes to run.
        force: skip the training-memory check (:func:`check_training_memory`).
    """
    graph = None
    try:
        graph = build_ir(loaded.spec)
        run_flow(graph, flow)
    except CompileError as exc:
        raise _to_spec_error(exc, graph, loaded) from None
    if not force and flow == "compile":
        check_training_memory(loaded, graph)
    graph.attrs["source"] = loaded.file
    graph.attrs[RUN_CONFIG] = run_config(loaded.spec).to_dict()
    return graph


def compile_spec(path: str, overrides: tuple[str, ...] | list[str] = (), flow: str = "compile", *,
                 force: bool = False, text: str | None = None) -> tuple[LoadedSpec, IRGraph]:
    """Load ``path`` (or the YAML ``text``, errors located at ``path``) with ``overrides``, build the IR
    and run ``flow``.

    Args:
        force: skip the training-memory check.
        text: the spec's YAML (a spec given as a dict); None = read ``path``.
    Returns:
        (the loaded spec, the compiled graph with its run config in ``graph.attrs["run_config"]``).
    Raises:
        UserError: any problem, as one located line.
    """
    loaded = load_spec(path, overrides, text=text)
    return loaded, compile_loaded(loaded, flow, force=force)
