"""The `saec` command line: one typer app, each command a thin call into the library.

Heavy imports (torch, nir, onnx) happen inside the commands that need them, so
`saec compile` and `saec schema` stay fast and torch-free.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

# A training step runs a few large torch ops and saec's own C kernels in worker threads;
# OpenMP workers that spin after each torch op (GNU OpenMP's default) steal those threads'
# cores: 5-7 % of a step on 2 cores (benchmarks/README.md, lever log). A default only: the
# user's setting wins. Effective because torch, and with it the OpenMP runtime, loads later.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typer.core import TyperArgument, TyperGroup

from saec.errors import UserError

#: One example per command, appended to its --help (the README shows more).
EXAMPLES: dict[str, str] = {
    "compile": "saec compile specs/sae_dense.yaml --set layers.latent.out_features=10 -o ir.json",
    "train": "saec train specs/sae_dense.yaml --set data.dataset=mnist5k --set training.epochs=1 --out runs/try",
    "plan": "saec plan specs/sae_dense.yaml --set encoding.timesteps=16 --replan",
    "eval": "saec eval runs/sae_dense --limit 1000",
    "export": "saec export runs/sae_dense --format nir --target snntorch",
    "simulate": "saec simulate runs/sae_dense/export/model.nir --input runs/sae_dense/export/golden.nir",
    "sweep": "saec sweep specs/sweeps/cpu_small.yaml --jobs 2",
    "stats": "saec stats runs/sae_dense --examples 256",
    "schema": "saec schema > saec.schema.json",
    "report": "saec report runs/sae runs/sae_dense -o compare.html",
}

#: Value labels shown in --help, by Python type (instead of typer's <path>, <list[str]>, <bool>).
_METAVARS = {"int": "N", "float": "X", "list[str]": "TEXT", "str": "TEXT"}


def _label(param) -> None:
    """Give ``param`` a plain value label: none for a switch, SPEC for an argument, PATH/N/X/TEXT otherwise."""
    if isinstance(param, TyperArgument):
        param.metavar = param.metavar or param.name.upper()
        param.display_type_rich = lambda ctx: None  # the name says it; no "<path>" after it
    elif param.metavar is not None:
        return
    elif getattr(param, "is_flag", False) or getattr(param, "count", False):
        param.metavar = ""  # a switch takes no value
    else:
        is_path = getattr(getattr(param, "type_descriptor", None), "is_path", False)
        param.metavar = "PATH" if is_path else _METAVARS.get(param.bare_type(), "TEXT")


def _labelled_help(command) -> None:
    """Make ``command``'s --help option (created lazily by typer) a switch without a value label."""
    make = command.get_help_option

    def get_help_option(ctx):
        option = make(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option


class _SaecGroup(TyperGroup):
    """The command group: clean option labels and an example under every command's help."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _label(param)
        _labelled_help(self)
        for name, command in self.commands.items():
            if name in EXAMPLES and command.help and "Example:" not in command.help:
                command.help = f"{command.help.rstrip()}\n\nExample: {EXAMPLES[name]}"
            for param in command.params:
                _label(param)
            _labelled_help(command)


def _version(value: bool) -> None:
    if value:
        from saec import __version__

        typer.echo(f"saec {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=_SaecGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print saec's version and exit.")) -> None:
    """saec, the spiking auto-encoder compiler: YAML spec -> graph IR -> training -> NIR/ONNX export.

    Example: saec train specs/sae_dense.yaml --set data.dataset=mnist5k   (the embedded MNIST subset, no download)
    """


SetOption = typer.Option(None, "--set", metavar="KEY=VALUE",
                         help="Override a spec field: dotted.path=VALUE, values YAML (repeatable).")


def user_errors(fn: Callable) -> Callable:
    """Turn a UserError (or any user-input error) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {_capped(str(exc))}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # a file the user named cannot be read or written (permissions, full disk)
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            typer.echo(f"error: {_capped(where + (exc.strerror or str(exc)))}", err=True)
            raise typer.Exit(2) from None

    return wrapper


#: Longest error line printed (a UserError's message is capped at 600 characters; paths add the rest).
MAX_ERROR_CHARS = 800


def _capped(line: str) -> str:
    line = " ".join(line.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 5] + " [...]"


def _naming(file: Path, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``, its UserErrors that name no file re-raised naming ``file``."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        if exc.file:
            raise
        raise UserError(exc.message, file=str(file), line=exc.line, path=exc.path) from None


def _atomic_write_text(path: Path, text: str) -> None:
    from saec.run.artifacts import write_text

    write_text(path, text)


@app.command("compile")
@user_errors
def compile_cmd(
    spec: Path = typer.Argument(..., help="The YAML spec file."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the IR as JSON to this file."),
    set_: Optional[List[str]] = SetOption,
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing on success."),
    target: Optional[str] = typer.Option(
        None, "--target", help="Check that the network fits this chip (loihi, speck, xylo, or a profile "
                               "file) and print its fit report; exit 2 with located lines if it does not."),
    force: bool = typer.Option(False, "--force", help="Compile even if training would need more memory than this "
                                                      "machine has."),
) -> None:
    """Validate SPEC, build the graph IR, run the analysis passes and print a summary."""
    from saec import api
    from saec.analysis.reporting import print_compile_summary

    profile = None
    if target is not None:
        from saec.targets.profile import load_profile

        profile = load_profile(target)  # a bad target name stops before the spec is read
    compiled = api.compile(spec, set_ or [], force=force)
    loaded, graph, summary = compiled.loaded, compiled.graph, compiled.summary
    if not quiet:
        spec_ = loaded.spec
        print_compile_summary(graph, summary, semantics=semantic_line(spec_),
                              title=f"{spec_.name}: {spec_.kind}, preset {spec_.preset}, "
                                    f"input {'x'.join(map(str, spec_.input.shape))}")
    if profile is not None:
        _check_target_fit(loaded, graph, profile, quiet)  # a graph that does not fit writes no IR
    if output is not None:
        try:
            _atomic_write_text(output, graph.to_json(summary) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write: {exc.strerror}", file=str(output)) from None
        if not quiet:
            typer.echo(f"IR written to {output}")


def semantic_line(spec) -> str:
    """Every semantic choice that differs between the paper and its code, in one line."""
    n, s, r, e = spec.neuron, spec.surrogate, spec.readout, spec.encoding
    floor = "off" if n.lower_bound is None else f"{n.lower_bound_mode} below {n.lower_bound:g}" + (
        " (before spike test)" if n.clamp_first else " (after spike test)")
    return (
        f"spike u{'>=' if n.spike_when == 'ge' else '>'}threshold; floor {floor}; U integrates {n.integrate}; "
        f"surrogate {s.type} (reset grad {s.reset_grad}, floor grad {s.clamp_grad}, decay in backward "
        f"{'yes' if s.decay_grad else 'no'}); readout max over t>={r.t_min} / "
        f"{'T*s' if r.divide_by_timesteps else 's'}; P1/P2 on U(T){'/T' if spec.regularizers.potential_per_timestep else ''}; "
        f"linear init x{spec.init.linear_std_factor:g}; noise {e.noise_resample}"
        + (f"; encoder scale fixed at {e.encoder_scale:g}" if e.encoder_scale is not None else "")
        + (f"; grad clip {spec.training.grad_clip.mode} {spec.training.grad_clip.max:g}"
           if spec.training.grad_clip else "")
    )


def _check_target_fit(loaded, graph, profile, quiet: bool) -> None:
    """Print the fit report of ``graph`` on ``profile``; a graph that does not fit raises the first
    problem located in the spec, with the count of the others (the loader's style)."""
    from saec.targets.fit import check_fit, format_fit_report

    report = check_fit(graph, profile)
    located = [loaded.error(tuple(graph.meta(v.node).get("spec_path", ())), v.message) for v in report.violations]
    if not quiet:
        for line in format_fit_report(report, profile):
            typer.echo(line)
        for err in located:
            typer.echo(f"  {err}")
    if located:
        first = located[0]
        more = len(located) - 1
        if more:
            first.message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise UserError(first.message, file=first.file, line=first.line, path=first.path)


@app.command("train")
@user_errors
def train_cmd(
    spec: Optional[Path] = typer.Argument(None, help="The YAML spec file (omit with --resume)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<spec name>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder holding MNIST (torchvision layout)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    set_: Optional[List[str]] = SetOption,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing run in the folder; train even if the "
                                                      "memory estimate exceeds this machine's memory."),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Show a progress bar on a terminal (one line per epoch is printed anyway)."),
    logger: str = typer.Option("csv", "--logger", metavar="csv|tensorboard",
                               help="Per-step log: csv (RUN/steps.csv, always written) or tensorboard (also "
                                    "RUN/tensorboard/; needs the tensorboard package)."),
    target: Optional[str] = typer.Option(None, "--target",
                                         help="Train quantisation-aware for this chip (loihi): the forward uses "
                                              "its quantised weights, thresholds and decay, the gradient passes "
                                              "straight through."),
) -> None:
    """Train SPEC end to end and write a run folder (weights, metrics, figures, report.html).

    With --resume DIR, continue an interrupted run and end with the same
    weights as an uninterrupted one.

    The run uses the built-in execution plan; SAEC_PLAN=auto uses this machine's cached
    plan (see `saec plan`), measured first when none is cached and the run has at least
    200 steps, SAEC_PLAN=replan measures it again.
    """
    from saec import api
    from saec.run.train import RunWriteFailed
    from saec.runtime.plan import plan_policy
    from saec.training.train import TrainingDiverged, TrainingInterrupted

    # built-in plan unless asked: measured per-layer plans were slower on the whole step (README, "Tuned per machine")
    plan = plan_policy("default")
    try:
        if resume is not None:
            if spec is not None or set_ or target is not None:
                raise UserError("--resume continues a run as it was specified; give no SPEC, --set or --target "
                                "with it", path="--resume")
            run = api.resume(resume, data_dir=data_dir, device=device, force=force, progress=progress,
                             logger=logger, log=typer.echo, plan=plan)
        else:
            if spec is None:
                raise UserError("give a SPEC file to train, or --resume RUN_FOLDER")
            run = api.train(api.compile(spec, set_ or [], force=force), out, data_dir=data_dir, device=device,
                            force=force, progress=progress, logger=logger, log=typer.echo, target=target,
                            plan=plan)
    except TrainingInterrupted as exc:
        typer.echo(f"saec: {exc}", err=True)
        raise typer.Exit(130) from None
    except TrainingDiverged as exc:
        typer.echo(f"saec: training diverged: {exc}", err=True)
        raise typer.Exit(1) from None
    except RunWriteFailed as exc:
        typer.echo(f"saec: {_capped(str(exc))}", err=True)
        raise typer.Exit(1) from None
    run_dir, metrics = run.path, run.metrics
    if metrics and int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone reports
        typer.echo(f"run folder: {run_dir}")
        typer.echo(f"validation L_rec: {metrics['rec_loss']:.3f} (mean of batch means)")
        typer.echo(f"reconstructions: {run_dir / 'figures' / 'reconstructions.png'}")


@app.command("plan")
@user_errors
def plan_cmd(
    spec: Path = typer.Argument(..., help="The YAML spec file: the network, its T and batch size to plan for."),
    set_: Optional[List[str]] = SetOption,
    batch: Optional[int] = typer.Option(None, "--batch", help="Images per training step (default: the spec's "
                                                              "training.batch_size)."),
    replan: bool = typer.Option(False, "--replan", help="Measure again although a plan is cached; replace it."),
    show: bool = typer.Option(False, "--show", help="Print the cached plan (or say there is none) and measure "
                                                    "nothing."),
) -> None:
    """Choose this machine's execution plan for SPEC by measurement, cache it and print it.

    The plan holds what depends on the CPU: row chunk sizes per layer, layouts, the output
    layer's algorithm, the buffer pool's threshold. Each candidate is timed on synthetic spikes
    of the network's shapes (seconds to tens of seconds); the fastest is cached per machine
    under $SAEC_CACHE_DIR (default ~/.cache/saec) and `saec train` uses it. Spikes are the same
    under every plan.
    """
    from saec import api
    from saec.compiler.passes.exec_plan import plan_is_current, planned_copy
    from saec.runtime import plan as planning

    if show and replan:
        raise UserError("give --show (print what is cached) or --replan (measure again), not both", path="--show")
    if batch is not None and batch < 1:
        raise UserError(f"must be at least 1, got {batch}", path="--batch")
    compiled = api.compile(spec, set_ or [])
    graph = compiled.graph if plan_is_current(compiled.graph) else planned_copy(compiled.graph)
    batch = batch or compiled.config.training.batch_size
    fingerprint = planning.machine_fingerprint("cpu")
    path = planning.cache_path(fingerprint)
    plan = None if replan else planning.cached_plan(planning.network_key(graph, batch), fingerprint,
                                                   lambda line: typer.echo(line, err=True))
    nothing = planning.nothing_to_plan(graph, "cpu")
    if nothing:
        typer.echo(f"plan: default ({nothing})")  # no knob applies: none to list
        return
    if plan is not None:
        typer.echo(f"plan: cached ({path}): {plan.summary(graph)}")
    elif show:
        typer.echo(f"plan: none cached for this network at B={batch} on this machine ({path}); the default plan:")
        plan = planning.DEFAULT_PLAN
    else:
        typer.echo(f"measuring the execution plan for B={batch}, T={graph.attrs.get('timesteps', 1)} on this CPU ...")
        resolved = planning.resolve_plan(graph, batch, device="cpu", policy="replan",
                                         log=lambda line: typer.echo(line, err=True))
        plan = resolved.plan
        typer.echo(resolved.line(graph))
    for line in plan.knob_lines(graph, batch):
        typer.echo(f"  {line}")


AGREEMENT_HEADERS = ("node", "golden spikes", "NIR spikes", "positions (t, example, neuron) that differ", "")


def _echo_table(headers: tuple[str, ...], rows: list[tuple[str, ...]], err: bool = False) -> None:
    """A plain fixed-width table (first and last column left-aligned, numbers right), readable in CI logs."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    last = len(headers) - 1
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) if i in (0, last) else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        typer.echo("  " + "  ".join(cells).rstrip(), err=err)


def _export_nir(run: Path, *, target: str, examples: int, seed: int, data_dir: Optional[Path],
                approximate: bool = False) -> None:
    from saec import api
    from saec.importers.nir import agreement_rows

    result = api.export(run, "nir", target=target, examples=examples, seed=seed, data_dir=data_dir,
                        approximate=approximate)
    typer.echo(f"NIR graph written to {result.model} ({result.nodes} nodes; nir.read type check passed)")
    if result.target_model is not None:
        typer.echo(f"{target} variant written to {result.target_model}")
    typer.echo(f"golden data written to {result.golden} ({result.golden_examples} examples, "
               f"{result.golden_spikes} output spikes)")
    if result.approximated:
        typer.echo("warning: --approximate: written WITHOUT semantics NIR cannot express:", err=True)
        for item in result.approximated:
            typer.echo(f"  - {item}", err=True)
    positions = sum(r["entries"] for r in result.agreement.values())
    differ = sum(r["mismatches"] for r in result.agreement.values())
    if result.approximated or not result.exact:
        typer.echo("spike agreement of saec's NIR simulation of model.nir with saec (golden.nir), whole trains:")
        _echo_table(AGREEMENT_HEADERS, agreement_rows(result.agreement))
    typer.echo(f"check: saec's NIR simulation of {result.model.name} on the golden input: "
               + ("identical spike trains in every layer" if result.exact else
                  f"{differ:,} of {positions:,} spike positions differ from saec"))
    typer.echo("warning: NIR does not carry these (they are in the graph metadata):", err=True)
    for item in result.not_carried:
        typer.echo(f"  - {item}", err=True)


def _export_onnx(run: Path, **_: object) -> None:
    from saec import api

    typer.echo(f"ONNX model written to {api.export(run, 'onnx')}")


#: --format -> exporter; each takes the run folder and the command's options.
EXPORT_FORMATS: dict[str, Callable[..., None]] = {"nir": _export_nir, "onnx": _export_onnx}


@app.command("export")
@user_errors
def export_cmd(
    run: Path = typer.Argument(..., help="The run folder (from `saec train`)."),
    format_: Optional[str] = typer.Option(None, "--format", help="nir (default) or onnx."),
    target: str = typer.Option("standard", "--target",
                               help="NIR: standard (model.nir only), snntorch or norse (also "
                                    "model.<target>.nir, an equivalent graph that importer runs exactly). "
                                    "A chip (loihi, speck, xylo): the network in the chip's integers as its "
                                    "toolchain's artifact, with L_rec float vs quantised on the validation set."),
    examples: int = typer.Option(4, "--examples", help="Validation images in the golden data (golden.nir, or "
                                                       "a chip's golden.npz)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="A chip only: validation images for the L_rec "
                                                              "comparison (default: the whole validation set)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Poisson encoder for the golden data."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder holding MNIST (for golden.nir)."),
    approximate: bool = typer.Option(False, "--approximate",
                                     help="NIR only: export a network whose neurons NIR cannot express exactly "
                                          "(a membrane floor, reset subtract/none) without those rules, and print "
                                          "per-layer spike agreement with saec on the golden input."),
) -> None:
    """Export the trained network in RUN to RUN/export/.

    --format nir writes model.nir (standard NIR, checked with nir.read's type
    check) and golden.nir (an input spike train and saec's spikes for it),
    checks the file by simulating it on the golden input, and warns about what
    NIR does not carry. A network NIR cannot express exactly is refused unless
    --approximate. --format onnx writes model.onnx. --target speck writes
    export/speck/ (a sinabs layer list with the chip's integers, golden data
    and L_rec float vs quantised); --target xylo writes export/xylo/ (the NIR
    graph rockpool maps onto Xylo Audio 2, golden data, L_rec); --target loihi
    writes export/model.loihi.h5 (a lava-dl netx network with the chip's
    integers), golden spikes and L_rec (export/loihi.json).
    """
    from saec.run.hardware import HARDWARE_EXPORTERS, is_hardware_target, refuse_unexported

    chip = HARDWARE_EXPORTERS.get(target)
    if chip is None and is_hardware_target(target):
        refuse_unexported(target)
    if chip is not None:
        if format_ is not None or approximate:
            raise UserError(f"--target {target} writes the chip's own artifact; drop "
                            f"{'--format' if format_ is not None else '--approximate'}", path="--target")
        result = chip.export(run, examples=examples, limit=limit, seed=seed, data_dir=data_dir)
        for line in chip.summary(result):
            typer.echo(line)
        return
    if limit is not None:
        raise UserError(f"--limit applies to a chip target ({', '.join(HARDWARE_EXPORTERS)}) only", path="--limit")
    format_ = format_ or "nir"
    exporter = EXPORT_FORMATS.get(format_)
    if exporter is None:
        raise UserError(f"unknown format {format_!r}; use one of {', '.join(EXPORT_FORMATS)}", path="--format")
    if approximate and format_ != "nir":
        raise UserError(f"--approximate applies to --format nir only ({format_} exports the network exactly)",
                        path="--approximate")
    exporter(run, target=target, examples=examples, seed=seed, data_dir=data_dir, approximate=approximate)


@app.command("simulate")
@user_errors
def simulate_cmd(
    model: Path = typer.Argument(..., help="A NIR graph (.nir)."),
    input_: Path = typer.Option(..., "--input", help="Input spikes: .npy [T, B, *input shape] or [T, *input "
                                                      "shape], or a golden .nir data file."),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="Where to write the spikes (.npz; default <input>.simulated.npz)."),
    dt: Optional[float] = typer.Option(None, "--dt", help="Time step in seconds (default: the graph's "
                                                          "metadata dt, else 1e-4)."),
) -> None:
    """Simulate the NIR graph MODEL with saec's runtime on an input spike train.

    Writes every neuron node's spikes (LI: potential) and the output, keyed by
    NIR node name. With a golden .nir as input it is a check: it prints, per
    layer, the spike counts and the positions (t, example, neuron) where the
    simulated spike trains differ from the golden ones, and exits 1 when any
    layer differs, 0 when all agree (2: bad input).
    """
    from saec.importers.nir import (agreement, agreement_rows, golden_reference, nir_input_shape,
                                           read_input_spikes, read_nir, simulate_nir, write_simulation)

    graph = read_nir(model)
    reference = golden_reference(input_)
    spikes = _naming(input_, read_input_spikes, input_, _naming(model, nir_input_shape, graph))
    result = _naming(model, simulate_nir, graph, spikes, dt=dt)
    T, B = spikes.shape[:2]
    simulated = {k: v.reshape(T, B, -1) for k, v in result.items()}
    if reference is not None:
        compared = {k: reference[k] for k in simulated if k in reference}  # graph order
        if not compared:
            raise UserError(f"the golden data name none of the graph's neuron or output nodes "
                            f"({', '.join(sorted(simulated))})", file=str(input_))
        for node, want in compared.items():
            if want.shape != simulated[node].shape:
                raise UserError(f"golden node `{node}` holds [T, B, neurons] = {list(want.shape)}, the graph gives "
                                f"{list(simulated[node].shape)}", file=str(input_))
    out = output or input_.with_name(f"{input_.stem}.simulated.npz")
    try:
        write_simulation(out, result)
    except OSError as exc:
        raise UserError(f"cannot write: {exc.strerror}", file=str(out)) from None
    from saec.exporters.nir import OUTPUT_NODE

    typer.echo(f"simulated {T} steps x {B} examples; output: {int((result[OUTPUT_NODE] != 0).sum())} spikes")
    typer.echo(f"spikes written to {out}")
    if reference is None:
        return
    report = agreement(compared, simulated)
    typer.echo(f"agreement with {input_.name}, whole spike trains:")
    _echo_table(("node", "golden spikes", "simulated spikes", "positions (t, example, neuron) that differ", ""),
                agreement_rows(report))
    differing = [node for node, r in report.items() if r["mismatches"]]
    if differing:
        typer.echo(f"check FAILED: {len(differing)} of {len(report)} nodes differ from the golden spikes "
                   f"({', '.join(differing)})")
        raise typer.Exit(1)
    typer.echo(f"check passed: all {len(report)} nodes reproduce the golden spikes exactly")


@app.command("eval")
@user_errors
def eval_cmd(
    run: Path = typer.Argument(..., help="The run folder (from `saec train`)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder holding MNIST (torchvision layout)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N validation images."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Also rewrite RUN/figures/*.png."),
) -> None:
    """Evaluate the trained run RUN on its validation set; write RUN/eval.json and RUN/figures/.

    With --limit N the results go to RUN/eval_limit<N>.json and RUN/figures_limit<N>/, beside the
    full evaluation, which is kept.

    eval.json holds L_rec, ANR/INP/AFR/RAE, spikes per example and the
    firing-rate distribution of every spiking layer, and s_intra/s_inter of
    the latent layer under five distances (keys: see the README).
    """
    from saec import api

    metrics, written = api.load_run(run).evaluate(data_dir=data_dir, device=device, limit=limit, figures=figures,
                                                  with_paths=True)
    typer.echo(f"validation L_rec: {metrics['rec_loss']:.3f} (mean of batch means, {metrics['examples']} images)")
    latent = (metrics.get("layers") or {}).get(metrics.get("latent_layer") or "")
    if latent:
        typer.echo(f"latent `{metrics['latent_layer']}`: ANR {latent['anr']:.3f}, AFR {latent['afr']:.3f}, "
                   f"RAE {latent['rae']:.3f}")
    ratio = (metrics.get("s_intra_inter") or {}).get("euclidean")
    if ratio is not None:
        typer.echo(f"s_intra/s_inter (euclidean): {ratio:.3f}")
    typer.echo(f"written: {written[0]}" + (f", {written[1]}/" if figures else ""))


@app.command("sweep")
@user_errors
def sweep_cmd(
    sweep_file: Path = typer.Argument(..., help="The sweep YAML (base, set, grid, configs, seeds, out)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Runs at once (separate processes)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder holding MNIST (torchvision layout)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto (for every run)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (overrides the sweep's `out`)."),
    table_only: bool = typer.Option(False, "--table-only", help="Only rewrite the tables from finished runs."),
    findings: bool = typer.Option(False, "--findings",
                                  help="Only write OUT/findings.md: the paper's claims judged on the finished runs."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Print every configuration's schedule and step count, check the device and "
                                      "the data, start nothing."),
) -> None:
    """Train every configuration x grid point x seed of SWEEP_FILE and tabulate mean ± std over seeds.

    Finished runs are skipped and interrupted ones resumed, so rerunning an
    interrupted sweep continues it. Writes OUT/table.md, OUT/table.csv and
    OUT/runs.csv. Before any run starts, the device and every run's data are
    checked: a problem is one line and exit code 2.
    """
    from saec.run.sweep import (SweepInterrupted, check_device, check_sweep_data, load_sweep, plan_sweep,
                                render_plan, run_sweep, write_findings, write_tables)

    sweep = load_sweep(sweep_file, out=out)
    if dry_run:
        typer.echo(render_plan(sweep, plan_sweep(sweep, str(data_dir) if data_dir else None)))
        check_device(device)
        check_sweep_data(sweep, str(data_dir) if data_dir else None)
        typer.echo(f"device {device} and data checked; dry run, nothing started")
        return
    if findings:
        typer.echo(f"findings: {write_findings(sweep)}")
        return
    if table_only:
        typer.echo(f"table: {write_tables(sweep)}")
        return
    try:
        outcome = run_sweep(sweep, jobs=jobs, data_dir=str(data_dir) if data_dir else None, device=device,
                            log=typer.echo)
    except SweepInterrupted as exc:
        typer.echo(f"saec: {exc}", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"sweep {sweep.name}: {len(outcome.ran)} trained, {len(outcome.skipped)} already complete, "
               f"{len(outcome.failed)} failed; wall time {outcome.wall_s:.0f} s, CPU time {outcome.cpu_s:.0f} s")
    typer.echo(f"table: {outcome.table}")
    if outcome.failed:
        raise typer.Exit(1)


@app.command("stats")
@user_errors
def stats_cmd(
    run: Path = typer.Argument(..., help="The run folder (from `saec train`)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder holding MNIST (torchvision layout)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    examples: Optional[int] = typer.Option(None, "--examples", help="Use only the first N validation images."),
) -> None:
    """Spike statistics of the trained run RUN for hardware; write RUN/stats.json.

    Per layer: neurons, synapses, weights (fp32 / int8 bytes), firing rate,
    dead and bursting neurons, spikes per example and the synaptic operations
    those spikes trigger. Per inference: synaptic operations vs the dense MACs
    of the equivalent ANN, activation sparsity and an energy estimate.
    Synaptic operations and activation sparsity follow NeuroBench's definitions.
    """
    from saec.analysis.stats import print_stats
    from saec.run.export import refuse_spike_input
    from saec.run.report import refresh_report, run_stats

    refuse_spike_input(run, "saec stats")
    path, stats = run_stats(run, data_dir=data_dir, device=device, examples=examples)
    print_stats(stats)
    report = refresh_report(run)
    typer.echo(f"written: {path}" + (f", {report}" if report else ""))


@app.command("report")
@user_errors
def report_cmd(
    runs: List[Path] = typer.Argument(..., help="One run folder, or several to compare."),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="Where to write the page (default: RUN/report.html for one run, "
                                               "./report.html for several)."),
) -> None:
    """Write a self-contained HTML report: of one run (spec, IR, curves, figures, stats, export checks),
    or a page comparing several runs (metrics, overlaid curves, spec differences)."""
    from saec.run.report import REPORT, render_comparison, render_run_report

    if len(runs) == 1:
        text, path = render_run_report(runs[0]), output or runs[0] / REPORT
    else:
        text, path = render_comparison(runs), output or Path(REPORT)
    try:
        _atomic_write_text(path, text)
    except OSError as exc:
        raise UserError(f"cannot write: {exc.strerror}", file=str(path)) from None
    typer.echo(f"report written to {path}")


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of the spec (for editor completion and validation)."""
    from saec.spec.schema import Spec

    typer.echo(json.dumps(Spec.model_json_schema(), indent=2))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
