"""Fit analysis: does a compiled IR graph run on a target, and what does it occupy there?

A function of the IR (after the ``compile`` flow: shapes, params and cost in every
node's meta) and a :class:`~saec.targets.profile.Profile`. It never reads the spec:
each problem names the IR node it concerns, and the CLI maps the node back to its
spec line the way compile errors are located.

A *spiking layer* is a synapse node (conv, linear) followed by its LIF node (the
builder names them ``<layer>`` and ``<layer>.lif``); on a chip with cores, each
spiking layer occupies one core (DYNAP-CNN: conv + neurons + optional pooling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from typing import Callable

from saec.compiler import ops
from saec.compiler.dispatch import OpTable
from saec.compiler.graph import IRGraph
from saec.targets.formula import check_formula, evaluate
from saec.targets.profile import Profile

#: Op types that never reach the chip: the input and its Poisson encoding are the host's
#: input events; the readout takes the output layer's potential on the host.
HOST_OPS = (ops.Input, ops.Output, ops.PoissonEncode, ops.MaxCumulativeReadout)
#: Synapse ops: the node that names a spiking layer.
SYNAPSE_OPS = (ops.Conv2d, ops.ConvTranspose2d, ops.Linear)


@dataclass
class Violation:
    """One reason the graph does not run on the target, at one IR node."""

    node: str  # IR node name; its meta["spec_path"] locates it in the spec
    message: str


@dataclass
class LayerFit:
    """What one spiking layer needs on the target."""

    layer: str  # spec layer name
    node: str  # its synapse node
    op: str  # op type
    neurons: int
    synapses: int
    weights: int
    memory: dict[str, int] = field(default_factory=dict)  # per memory of the core model, entries
    place: str = "-"  # the core or resource it uses
    neuron: str = "-"  # how the neuron model maps: "yes", "yes (...)", "no: ..."


@dataclass
class FitReport:
    """The result of :func:`check_fit`: rows per spiking layer, notes, and every violation in graph order."""

    target: str
    title: str
    layers: list[LayerFit]
    notes: list[str]
    violations: list[Violation]

    @property
    def fits(self) -> bool:
        return not self.violations


def entries(n: int) -> str:
    """A memory size the way vendors print it: 2 Mi, 64 Ki, else with thousands separators."""
    for unit, size in (("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n:,}"


def layer_dimensions(graph: IRGraph, node: str) -> dict[str, int]:
    """The named dimensions of a synapse node that memory formulas use (saec.targets.formula).

    A linear layer is seen as the chips that accept it see it: a convolution whose kernel
    spans the whole map it reads (c_in channels of kh x kw) when it reads a flattened
    C x H x W map, else a 1 x 1 convolution over its input features; its output is c_out x 1 x 1.
    """
    op, meta = graph.op(node), graph.meta(node)
    dims = {"neurons": math.prod(meta["shape"]), "synapses": meta.get("synapses", 0), "weights": meta.get("params", 0),
            "has_bias": int(op.bias)}
    dims.update(LAYER_DIMENSIONS.lookup(op, node=node)(graph, node, op))
    return dims


#: synapse op -> fn(graph, node, op) -> its kernel and map dimensions (c_in, c_out, kh, kw, h/w in and out).
LAYER_DIMENSIONS: OpTable[Callable[[IRGraph, str, ops.Op], dict[str, int]]] = OpTable("layer dimensions")


@LAYER_DIMENSIONS.register(ops.Linear)
def _linear_dimensions(graph: IRGraph, node: str, op: ops.Linear) -> dict[str, int]:
    (src,) = graph.inputs(node)
    before = tuple(graph.meta(graph.inputs(src)[0])["shape"]) if type(graph.op(src)) is ops.Flatten else ()
    c_in, kh, kw = before if len(before) == 3 else (op.in_features, 1, 1)
    return dict(c_in=c_in, c_out=op.out_features, kh=kh, kw=kw, h_in=kh, w_in=kw, h_out=1, w_out=1)


@LAYER_DIMENSIONS.register(ops.Conv2d, ops.ConvTranspose2d)
def _conv_dimensions(graph: IRGraph, node: str, op: ops.Conv2d | ops.ConvTranspose2d) -> dict[str, int]:
    (src,) = graph.inputs(node)
    in_shape, out_shape = tuple(graph.meta(src)["shape"]), tuple(graph.meta(node)["shape"])
    return dict(c_in=op.in_channels, c_out=op.out_channels, kh=op.kernel_size[0], kw=op.kernel_size[1],
                h_in=in_shape[1], w_in=in_shape[2], h_out=out_shape[1], w_out=out_shape[2])


LAYER_DIMENSIONS.refuse((ops.Input, ops.Output, ops.PoissonEncode, ops.Flatten, ops.Unflatten, ops.LIF, ops.ReLU,
                         ops.Reparameterize, ops.LeakyIntegrator, ops.SumPool2d, ops.MaxCumulativeReadout),
                        "only synapse layers (conv2d, conv_transpose2d, linear) have kernel dimensions")


def _kind_problems(op: ops.Op, profile: Profile, dims: dict[str, int] | None) -> list[str]:
    """Why ``op`` cannot run as one of the target's layer kinds ([] when it can).

    ``dims`` are the layer dimensions of a synapse op (channels as the chip counts them), else None.
    """
    kinds = profile.layers.kinds
    rule = kinds.get(op.type)
    if rule is None:
        return [f"{op.type} is not among {profile.name}'s layer kinds ({', '.join(kinds)}; "
                f"{profile.layers.source})"]
    problems = []
    source = rule.source or profile.layers.source
    # a linear layer's kernel is the map it reads (layer_dimensions): the chip's kernel rules apply to it too
    kernel = (dims["kh"], dims["kw"]) if dims is not None else getattr(op, "kernel_size", None)
    stride = getattr(op, "stride", None)
    seen_as = " (the linear layer as a convolution over the map it reads)" if isinstance(op, ops.Linear) else ""
    if kernel is not None and rule.max_kernel is not None and max(kernel) > rule.max_kernel:
        problems.append(f"kernel {kernel[0]}x{kernel[1]}{seen_as} is larger than {profile.name}'s "
                        f"{rule.max_kernel} ({source})")
    if kernel is not None and rule.kernel_sizes is not None and not set(kernel) <= set(rule.kernel_sizes):
        problems.append(f"kernel {kernel[0]}x{kernel[1]}: {profile.name} runs {op.type} with kernels "
                        f"{', '.join(map(str, rule.kernel_sizes))} only ({source})")
    if rule.max_channels is not None and dims is not None and max(dims["c_in"], dims["c_out"]) > rule.max_channels:
        problems.append(f"{max(dims['c_in'], dims['c_out']):,} channels, more than {profile.name}'s "
                        f"{rule.max_channels:,} ({source})")
    if rule.square_kernel and kernel is not None and kernel[0] != kernel[1]:
        problems.append(f"kernel {kernel[0]}x{kernel[1]}{seen_as} is not square; {profile.name} takes square "
                        f"kernels only ({source})")
    if rule.stride_equals_kernel and stride is not None and tuple(stride) != tuple(kernel):
        problems.append(f"stride {stride[0]}x{stride[1]} differs from the kernel {kernel[0]}x{kernel[1]}; "
                        f"{profile.name} pools with stride == kernel ({source})")
    if rule.max_stride is not None and stride is not None and max(stride) > rule.max_stride:
        problems.append(f"stride {stride[0]}x{stride[1]}: {profile.name} runs {op.type} as {rule.runs_as} "
                        f"only up to stride {rule.max_stride}")
    return problems


def chip_decay(decay: float, profile: Profile) -> tuple[float | None, str]:
    """The decay the chip would run for saec's ``decay``, and how it is stored.

    Returns:
        (chip decay, or None when the chip cannot store it; its register value in words).
    """
    fmt = profile.neuron.decay
    if fmt.kind == "none":
        return (1.0, "no leak") if decay == 1.0 else (None, "no leak register")
    if fmt.kind == "fixed_point":
        unity = 1 << fmt.bits
        d = round(unity * (1 - decay))
        if d > unity - 1:
            return None, f"d = {d} does not fit {fmt.bits} bits"
        return 1 - d / unity, f"d = {d}/{unity}"
    # bitshift: v -= v >> dash; decay 1 - 2**-dash, dash an unsigned integer of `bits` bits
    candidates = [(abs((1 - 2.0 ** -dash) - decay), dash) for dash in range(1 << fmt.bits)]
    _, dash = min(candidates)
    return 1 - 2.0 ** -dash, f"dash = {dash}"


def neuron_fit(lif: ops.LIF, profile: Profile) -> tuple[str, list[str]]:
    """How saec's LIF runs on the target's neuron.

    Returns:
        (a short summary for the report, the reasons it cannot run, each one sentence).
    """
    n = profile.neuron
    problems: list[str] = []
    notes: list[str] = []
    decay, how = chip_decay(lif.decay, profile)
    if decay is None:
        if n.decay.kind == "none":
            problems.append(f"LIF leak (decay {lif.decay:g}) is not supported: {profile.name} has no leak, its "
                            f"neurons integrate and fire (decay must be 1; {n.decay.source})")
        else:
            problems.append(f"decay {lif.decay:g} cannot be stored ({how}; {n.decay.source})")
    elif decay != lif.decay:
        notes.append(f"decay {lif.decay:g} -> {decay:.6g} ({how})")
    if lif.reset not in n.reset:
        problems.append(f"reset {lif.reset!r} is not expressible: {profile.name} resets by "
                        f"{' or '.join(n.reset)} ({n.source})")
    if lif.lower_bound is not None:
        mode = lif.lower_bound_mode
        if mode not in n.floor:
            has = f"only a {' or '.join(n.floor)} floor" if n.floor else "no membrane floor"
            problems.append(f"membrane floor ({mode} below {lif.lower_bound:g}) is not expressible: "
                            f"{profile.name} has {has} ({n.source})")
    if lif.spike_when not in n.spike_when:
        ours = ">" if lif.spike_when == "gt" else ">="
        theirs = ">" if n.spike_when[0] == "gt" else ">="
        if n.integer_state and lif.reset == "subtract":
            problems.append(f"spike test u {ours} th with reset by subtraction is not expressible: {profile.name} "
                            f"spikes when v {theirs} its threshold register and subtracts that register, so "
                            f"moving the threshold by 1 LSB would change the reset; use spike_when: "
                            f"{n.spike_when[0]} ({n.source})")
        elif n.integer_state:
            lsb = "+ 1 LSB" if lif.spike_when == "gt" else "- 1 LSB"
            notes.append(f"u {ours} th runs as u {theirs} th {lsb} (integer state)")
        else:
            problems.append(f"spike test u {ours} th is not expressible: {profile.name} spikes when "
                            f"v {theirs} th ({n.source})")
    if problems:
        return "no: " + "; ".join(p.split(":")[0] for p in problems), problems
    return "yes" + (f" ({'; '.join(notes)})" if notes else ""), problems


def _assign_cores(rows: list[LayerFit], profile: Profile, violations: list[Violation]) -> None:
    """One layer per core: match layers to cores whose every memory holds them (sinabs' get_valid_mapping)."""
    model = profile.cores
    cores = model.cores
    candidates: dict[str, list[int]] = {}
    for row in rows:
        if not row.memory:
            continue  # its kind is refused already
        fitting = [i for i, cap in enumerate(cores) if all(row.memory[m] <= cap[m] for m in model.memories)]
        if fitting:
            candidates[row.node] = fitting
            continue
        for mem, spec in model.memories.items():
            most = max(cap[mem] for cap in cores)
            if row.memory[mem] > most:
                violations.append(Violation(row.node, (
                    f"{row.op} needs {entries(row.memory[mem])} {spec.unit} ({spec.formula} = "
                    f"{row.memory[mem]:,}), more than any {profile.name} core holds ({entries(most)}; {spec.source})")))
        if all(row.memory[m] <= max(cap[m] for cap in cores) for m in model.memories):
            violations.append(Violation(row.node, (
                f"no single {profile.name} core holds all of its memories "
                f"({', '.join(f'{m} {entries(v)}' for m, v in row.memory.items())}; {model.source})")))
    matching = _match_in_order(candidates, cores)
    for row in rows:
        if row.node in matching:
            i = matching[row.node]
            row.place = f"core {i} ({', '.join(f'{m} {entries(c)}' for m, c in cores[i].items())})"
        elif row.node in candidates:
            violations.append(Violation(row.node, (
                f"no {profile.name} core left for it: cores {', '.join(map(str, candidates[row.node]))} would "
                f"hold it but other layers take them ({len(cores)} cores, one layer each; {model.source})")))


def _match_in_order(candidates: dict[str, list[int]], cores: list[dict[str, int]]) -> dict[str, int]:
    """A maximum matching of layers to cores (Kuhn's augmenting paths), layers taken in graph order.

    Taking layers in order means a layer that finds a core keeps one, so when not all fit, the
    layers left without a core are the later ones; each layer tries the smallest fitting core
    first, leaving the large cores to the layers only they hold.
    """
    size = {i: sum(cap.values()) for i, cap in enumerate(cores)}
    owner: dict[int, str] = {}

    def place(node: str, visited: set[int]) -> bool:
        for core in sorted(candidates[node], key=lambda i: (size[i], i)):
            if core in visited:
                continue
            visited.add(core)
            if core not in owner or place(owner[core], visited):
                owner[core] = node
                return True
        return False

    for node in candidates:
        place(node, set())
    return {node: core for core, node in owner.items()}


@dataclass
class _FitState:
    """What :func:`check_fit` collects while it walks the graph."""

    graph: IRGraph
    profile: Profile
    memories: dict  # memory name -> its checked formula
    rows: list[LayerFit] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    by_layer: dict[str, LayerFit] = field(default_factory=dict)


#: op -> fn(state, node, op): how the op is checked against the target.
FIT: OpTable[Callable[[_FitState, str, ops.Op], None]] = OpTable("target fit")


@FIT.register(*HOST_OPS)
def _on_host(state: _FitState, name: str, op: ops.Op) -> None:
    """Never reaches the chip: nothing to check."""


@FIT.register(ops.LIF)
def _neuron(state: _FitState, name: str, op: ops.LIF) -> None:
    row = state.by_layer.get(state.graph.meta(name).get("layer"))
    summary, problems = neuron_fit(op, state.profile)
    if row is not None:
        row.neuron = summary
    state.violations.extend(Violation(name, p) for p in problems)


@FIT.register(ops.ReLU, ops.Reparameterize, ops.LeakyIntegrator)
def _not_spiking(state: _FitState, name: str, op: ops.Op) -> None:
    state.violations.append(Violation(name, f"{op.type} is not a spiking neuron; {state.profile.name} runs "
                                            f"spiking (LIF) networks only"))


@FIT.register(ops.Flatten, ops.Unflatten, ops.SumPool2d)
def _structural(state: _FitState, name: str, op: ops.Op) -> None:
    state.violations.extend(Violation(name, p) for p in _kind_problems(op, state.profile, None))


@FIT.register(*SYNAPSE_OPS)
def _synapse(state: _FitState, name: str, op: ops.Op) -> None:
    graph, profile = state.graph, state.profile
    dims = layer_dimensions(graph, name)
    state.violations.extend(Violation(name, p) for p in _kind_problems(op, profile, dims))
    meta = graph.meta(name)
    row = LayerFit(layer=meta.get("layer", name), node=name, op=op.type, neurons=dims["neurons"],
                   synapses=dims["synapses"], weights=dims["weights"])
    if op.type in profile.layers.kinds:  # memory of an op the chip cannot run would mean nothing
        row.memory = {m: evaluate(tree, dims) for m, tree in state.memories.items()}
    state.rows.append(row)
    state.by_layer[row.layer] = row


def check_fit(graph: IRGraph, profile: Profile) -> FitReport:
    """Check a compiled graph against a target profile.

    Args:
        graph: an IR graph after the ``compile`` flow (node meta holds shape, params, synapses).
        profile: the target.
    Returns:
        The per-layer report and every violation, in graph order (first the layer-wise ones,
        then the limits of the whole chip).
    """
    state = _FitState(graph, profile, {name: check_formula(m.formula) for name, m in (
        profile.cores.memories.items() if profile.cores else ())})
    for name in graph.order():
        op = graph.op(name)
        FIT.lookup(op, node=name)(state, name, op)
    rows, violations, notes = state.rows, state.violations, []
    _check_io(graph, profile, rows, violations)
    if profile.cores is not None:
        _assign_cores(rows, profile, violations)
    else:
        notes.append(f"cores: {profile.cores_unknown}")
    if any(isinstance(graph.op(n), ops.MaxCumulativeReadout) for n in graph.order()):
        notes.append("readout: max over t of the output layer's potential U, taken on the host "
                     "(the chip must expose the output layer's membrane each step)")
    return FitReport(profile.name, profile.title, rows, notes, _in_graph_order(graph, violations))


def _check_io(graph: IRGraph, profile: Profile, rows: list[LayerFit], violations: list[Violation]) -> None:
    io = profile.io
    (inp,) = graph.nodes(ops.Input)
    n_in = math.prod(graph.meta(inp)["shape"])
    if io.max_inputs is not None and n_in > io.max_inputs:
        violations.append(Violation(inp, f"{n_in:,} inputs, more than {profile.name}'s {io.max_inputs} "
                                         f"({io.source})"))
    spiking = [r for r in rows if r.neuron != "-"]
    if io.max_layers is not None and len(spiking) > io.max_layers:
        violations.append(Violation(spiking[io.max_layers].node, (
            f"spiking layer {io.max_layers + 1} of {len(spiking)}: {profile.name} runs at most "
            f"{io.max_layers} ({io.source})")))
    if not spiking:
        return
    *hidden, last = spiking
    if io.max_outputs is not None:
        last.place = f"outputs ({last.neurons:,} of {io.max_outputs})"
        if last.neurons > io.max_outputs:
            violations.append(Violation(last.node, f"{last.neurons:,} output neurons, more than {profile.name}'s "
                                                   f"{io.max_outputs} ({io.source})"))
    if io.max_hidden_neurons is not None:
        total = 0
        for row in hidden:
            before, total = total, total + row.neurons
            row.place = f"hidden {before:,}-{total - 1:,} of {io.max_hidden_neurons:,}"
            if before <= io.max_hidden_neurons < total:
                violations.append(Violation(row.node, (
                    f"hidden neurons reach {total:,} here ({sum(r.neurons for r in hidden):,} in all), more than "
                    f"{profile.name}'s {io.max_hidden_neurons:,} ({io.source})")))


def _in_graph_order(graph: IRGraph, violations: list[Violation]) -> list[Violation]:
    rank = {n: i for i, n in enumerate(graph.order())}
    return sorted(violations, key=lambda v: rank.get(v.node, len(rank)))  # stable: a node's own order kept


def format_fit_report(report: FitReport, profile: Profile) -> list[str]:
    """The fit report as plain text lines: the table per spiking layer, number formats, notes.

    Violations are not in it: the caller prints them located in the spec.
    """
    headers = ("layer", "op", "neurons", "synapses", "weights", "memory", "core / resource", "neuron model")
    table = [(r.layer, r.op, f"{r.neurons:,}", f"{r.synapses:,}", f"{r.weights:,}",
              ", ".join(f"{m} {entries(v)}" for m, v in r.memory.items()) or "-", r.place, r.neuron)
             for r in report.layers]
    widths = [max(len(row[i]) for row in [headers, *table]) for i in range(len(headers))]
    numeric = {2, 3, 4}
    lines = [f"target {report.target}: {report.title}"]
    for row in [headers, *table]:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  " + "  ".join(cells).rstrip())
    nums = profile.numbers
    for label, fmt in (("weights", nums.weight), ("threshold", nums.threshold), ("state", nums.state),
                       ("bias", nums.bias)):
        if fmt is not None:
            lines.append(f"{label}: {fmt.bits}-bit {'signed' if fmt.signed else 'unsigned'}, {fmt.format} "
                         f"({fmt.source})")
    n = profile.neuron
    lines.append(f"neuron: {n.model}; decay {n.decay.kind}; reset {'/'.join(n.reset)}; floor "
                 f"{'/'.join(n.floor) or 'none'}; spike {'/'.join('>' if s == 'gt' else '>=' for s in n.spike_when)} "
                 f"({n.source})")
    lines.extend(report.notes)
    verdict = "fits" if report.fits else (f"does not fit: {len(report.violations)} problem"
                                          f"{'s' if len(report.violations) > 1 else ''}")
    lines.append(f"{report.target}: {verdict}")
    return lines
