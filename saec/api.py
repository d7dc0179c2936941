"""The Python API: compile a spec, train it, load a run, use the network, evaluate, export.

The ``saec`` command line is a thin layer over these functions (``saec
compile`` -> :func:`compile`, ``saec train`` -> :func:`train` /
:func:`resume`, ``saec eval`` -> :meth:`Run.evaluate`, ``saec export`` ->
:func:`export`), so what a command does, the function does, with the same
validation and the same errors (:class:`saec.errors.UserError`, one
located line).

Example::

    import saec

    compiled = saec.compile("specs/sae_dense.yaml", overrides={"data.dataset": "mnist5k",
                                                               "training.epochs": 1})
    print(compiled.summary["total_params"])
    run = saec.train(compiled, "runs/my_sae", device="cpu")
    net = run.module()                 # a plain torch.nn.Module
    out = net(images)                  # images [B, 1, 28, 28] in [0, 1], or spikes [T, B, 1, 28, 28]
    out.reconstruction, out.spikes["latent"], out.counts["latent"]
    run.evaluate(limit=500)            # eval.json's metrics
    run.export("onnx")                 # RUN/export/model.onnx

Importing this module does not import torch (``saec compile`` stays fast);
the functions that need it import it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from saec.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from saec.compiler.graph import IRGraph
    from saec.runtime.module import AutoencoderModule
    from saec.spec.schema import Spec

__all__ = ["Compiled", "Run", "compile", "export", "load_run", "resume", "train"]

#: Where errors about a spec given as a dict are located.
DICT_SOURCE = "<dict>"


@dataclass
class Compiled:
    """A validated spec and its compiled graph IR (what ``saec compile`` prints).

    Attributes:
        spec: the resolved spec (every default filled in; ``spec.model_dump()`` for a dict).
        graph: the graph IR after the analysis passes (shapes, lint, cost).
        source: the spec file, or ``"<dict>"``.
        loaded: the loader's record of where each field was written (for located errors).
    """

    spec: Spec
    graph: IRGraph
    source: str
    loaded: Any = field(repr=False, default=None)

    @property
    def summary(self) -> dict[str, Any]:
        """``total_params``, ``neurons``, ``synapses``, ``macs_per_step``, ``macs_per_example``."""
        from saec.compiler.pipeline import summarize

        return summarize(self.graph)

    @property
    def config(self) -> Any:
        """The run config compiled beside the graph (:class:`saec.compiler.runconfig.RunConfig`: training and
        data settings), as ``graph.attrs["run_config"]`` holds it."""
        from saec.compiler.runconfig import RunConfig

        return RunConfig.of(self.graph)

    def to_json(self) -> str:
        """The IR as JSON with its summary (what ``saec compile -o`` writes)."""
        return self.graph.to_json(self.summary)

    def module(self, *, seed: int | None = None, record_spikes: bool = True) -> AutoencoderModule:
        """The untrained network as a plain ``torch.nn.Module`` (weights initialised as training does).

        Args:
            seed: seed of the weight initialisation; None = ``spec.training.seed``.
            record_spikes: see :class:`saec.runtime.module.AutoencoderModule`.
        """
        import torch

        from saec.runtime.model import SpikingAutoencoder
        from saec.runtime.module import AutoencoderModule

        network = SpikingAutoencoder(self.graph)
        network.reset_parameters(torch.Generator().manual_seed(self.spec.training.seed if seed is None else seed))
        return AutoencoderModule(network, record_spikes=record_spikes)


def _override_strings(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        # JSON is YAML flow syntax, which is what --set values are parsed as.
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError("overrides: give a dict {'training.lr': 1e-3} or a list of 'key=value' strings, not a string")
    return list(overrides)


def compile(spec: str | Path | Mapping[str, Any],
            overrides: Mapping[str, Any] | Iterable[str] | None = None, *, force: bool = False) -> Compiled:
    """Validate a spec, build its graph IR and run the analysis passes (``saec compile``).

    Args:
        spec: a YAML spec file, or the spec as a dict (the YAML's structure).
        overrides: ``{"dotted.path": value}`` or ``["dotted.path=VALUE", ...]``
            (the ``--set`` syntax: list items by layer name or index, values YAML).
        force: compile even if training would need more memory than this machine has (``--force``).

    Returns:
        :class:`Compiled`.

    Raises:
        UserError: any problem, as one located line (``FILE:LINE: path: message``;
            ``<dict>: path: message`` for a dict).
    """
    from saec.compiler.pipeline import compile_spec

    sets = _override_strings(overrides)
    if isinstance(spec, Mapping):
        import yaml

        try:
            loaded, graph = compile_spec(DICT_SOURCE, sets, force=force,
                                         text=yaml.safe_dump(dict(spec), sort_keys=False))
        except UserError as exc:
            if exc.file != DICT_SOURCE:
                raise
            # Lines of the YAML dumped from the dict mean nothing to the caller: the path says where.
            raise UserError(exc.message, file=exc.file, path=exc.path) from None
    else:
        loaded, graph = compile_spec(str(spec), sets, force=force)
    return Compiled(loaded.spec, graph, loaded.file, loaded)


@dataclass
class Run:
    """A run folder written by :func:`train` / ``saec train``.

    Attributes:
        path: the run folder.
        spec: its resolved spec (``spec.yaml``).
        graph: its compiled IR (``ir.json``).
    """

    path: Path
    spec: Spec
    graph: IRGraph

    @property
    def metrics(self) -> dict[str, Any]:
        """The final validation metrics (``eval.json``; keys in the README's ``saec eval`` table); {} if none."""
        from saec.run import artifacts as A

        file = self.path / A.EVAL
        return A.load_json(file) if file.is_file() else {}

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per finished epoch (``metrics.jsonl``): training terms, validation L_rec, latent ANR, the
        training precision."""
        from saec.run import artifacts as A

        file = self.path / A.METRICS
        if not file.is_file():
            return []
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]

    @property
    def trained(self) -> bool:
        """Whether the folder holds weights (``model.safetensors``)."""
        from saec.run import artifacts as A

        return (self.path / A.WEIGHTS).is_file()

    def module(self, device: str = "cpu", *, record_spikes: bool = True) -> AutoencoderModule:
        """The trained network as a plain ``torch.nn.Module`` mapping images or spike trains to an output.

        Args:
            device: ``cpu``, ``cuda`` or ``auto``.
            record_spikes: see :class:`saec.runtime.module.AutoencoderModule`.

        Returns:
            :class:`saec.runtime.module.AutoencoderModule` in eval mode; ``module(x)`` returns an
            :class:`saec.runtime.module.AutoencoderOutput` (reconstruction, spikes, counts, latent).

        Raises:
            UserError: the run has no trained weights yet.
        """
        from saec.run.folder import load_model, resolve_device
        from saec.runtime.module import AutoencoderModule

        _, network = load_model(self.path, resolve_device(device))
        return AutoencoderModule(network, record_spikes=record_spikes)

    def evaluate(self, *, data_dir: str | Path | None = None, device: str = "auto", limit: int | None = None,
                 figures: bool = True, with_paths: bool = False) -> Any:
        """Evaluate on the run's validation set; rewrite ``eval.json`` and the figures (``saec eval``).

        Args:
            data_dir: overrides the spec's data roots (like ``--data-dir``).
            device: ``cpu``, ``cuda`` or ``auto``.
            limit: only the first N validation images; the results then go to ``eval_limit<N>.json`` and
                ``figures_limit<N>/`` and the full evaluation is kept.
            figures: also rewrite the figures.
            with_paths: also return (metrics file, figures folder).

        Returns:
            The metrics written (``eval.json`` or ``eval_limit<N>.json``); with ``with_paths``,
            (metrics, (metrics file, figures folder)).
        """
        from saec.run.report import evaluate_run

        result = evaluate_run(self.path, data_dir=data_dir, device=device, limit=limit, figures=figures,
                              with_paths=with_paths)
        refresh_report(self.path)
        return result

    def export(self, format: str = "nir", **options: Any) -> Any:
        """Export the trained network to ``RUN/export/`` (``saec export``); see :func:`export`."""
        return export(self.path, format, **options)

    def report(self) -> Path:
        """(Re)write ``RUN/report.html`` (spec, IR, curves, figures, stats, export checks); its path."""
        from saec.run.report import write_run_report

        return write_run_report(self.path)


def load_run(path: str | Path) -> Run:
    """Open a run folder (``spec.yaml`` and ``ir.json`` needed; weights only for :meth:`Run.module`).

    Raises:
        UserError: no such folder, or not a saec run folder.
    """
    from saec.run.folder import load_run as load_spec_and_graph

    path = Path(path)
    if not path.is_dir():
        raise UserError("no such run folder", file=str(path))
    spec, graph = load_spec_and_graph(path)
    return Run(path, spec, graph)


def train(compiled: Compiled | str | Path | Mapping[str, Any], out: str | Path | None = None, *,
          data_dir: str | Path | None = None, device: str = "auto", force: bool = False, progress: bool = False,
          logger: str = "csv", log: Callable[[str], None] = print, target: str | None = None,
          plan: str | None = None) -> Run:
    """Train a compiled spec end to end and write the run folder (``saec train``).

    Args:
        compiled: from :func:`compile` (a spec file or dict is compiled first, without overrides).
        out: the run folder; None = ``runs/<spec name>`` under the working directory.
        data_dir: overrides ``data.root`` and the validation root (``--data-dir``).
        device: ``cpu``, ``cuda`` or ``auto``.
        force: overwrite a run already in ``out``.
        progress: a progress bar (shown on a terminal only).
        logger: ``csv`` (``steps.csv``, always written) or ``tensorboard`` (also TensorBoard event files
            in ``RUN/tensorboard``; needs the ``tensorboard`` package).
        log: where progress lines go (one per epoch).
        target: a chip (``loihi``) to train quantisation-aware for (``--target``): the forward runs its
            quantised weights, thresholds and decay, the gradient passes straight through; the network
            must fit the chip. Recorded in the run's ``ir.json`` (``attrs["target"]``).
        plan: the per-machine execution plan (:mod:`saec.runtime.plan`): ``default``, ``auto``
            (cached, or measured on first use for a run of at least 200 steps) or ``replan``;
            None: ``$SAEC_PLAN``, else ``default`` (``saec train`` defaults to ``auto``).

    Returns:
        The finished :class:`Run`.

    Raises:
        UserError: bad input (existing run, data missing, bad device, unknown logger).
        saec.training.train.TrainingDiverged: NaN/inf loss; the last checkpoint is kept.
        saec.training.train.TrainingInterrupted: Ctrl-C; a resumable checkpoint was written.
    """
    from saec.run.train import train as run_training
    from saec.runtime.plan import plan_policy

    plan = plan_policy("default", plan)  # a bad name: one UserError before anything is written
    if not isinstance(compiled, Compiled):
        compiled = compile(compiled)
    run_dir = Path(out) if out is not None else Path("runs") / compiled.spec.name
    graph = compiled.graph
    if target is not None:
        from saec.run.hardware import train_for_target

        locate = locate_field = None
        if compiled.loaded is not None:
            def locate(node: str, message: str) -> UserError:
                return compiled.loaded.error(tuple(graph.meta(node).get("spec_path", ())), message)
            locate_field = compiled.loaded.error
        graph = train_for_target(graph, target, locate, locate_field)
        log(f"quantisation-aware training for {target}: the forward runs the chip's weights, thresholds and decay")
    run_training(compiled.spec, graph, run_dir, data_dir=str(data_dir) if data_dir else None,
                 device=device, force=force, progress=progress, logger=logger, log=log, plan=plan)
    return load_run(run_dir)


def resume(path: str | Path, *, data_dir: str | Path | None = None, device: str = "auto", force: bool = False,
           progress: bool = False, logger: str = "csv", log: Callable[[str], None] = print,
           plan: str | None = None) -> Run:
    """Continue an interrupted run (``saec train --resume``); ends with the weights of an uninterrupted one.

    Args: as :func:`train` (``plan`` applies only to a checkpoint that recorded none: a run keeps its plan).

    Returns:
        The finished :class:`Run`.
    """
    from saec.run.folder import load_run as load_spec_and_graph
    from saec.run.train import train as run_training
    from saec.runtime.plan import plan_policy

    plan = plan_policy("default", plan)
    path = Path(path)
    spec, graph = load_spec_and_graph(path)  # "not a saec run folder (no spec.yaml)" for a wrong folder
    run_training(spec, graph, path, data_dir=str(data_dir) if data_dir else None, device=device,
                 resume=True, force=force, progress=progress, logger=logger, log=log, plan=plan)
    return Run(path, spec, graph)


def export(run: str | Path | Run, format: str = "nir", **options: Any) -> Any:
    """Export a trained run to ``RUN/export/`` (``saec export``; :func:`saec.run.export.export`).

    Args:
        run: a run folder or :class:`Run`.
        format: ``nir`` (``model.nir`` + ``golden.nir``; options ``target``, ``examples``, ``seed``,
            ``data_dir``, ``approximate``) or ``onnx`` (``model.onnx``; options ``timesteps``, ``batch``).
        **options: passed to the exporter.

    Returns:
        ``nir``: :class:`saec.exporters.nir.NirExport` (paths, node count, what NIR does not carry);
        ``onnx``: the path of ``model.onnx``.

    Raises:
        UserError: unknown format, not a trained run, a network the format cannot express.
    """
    from saec.run.export import export as export_run

    return export_run(run.path if isinstance(run, Run) else Path(run), format, **options)


def refresh_report(run: str | Path) -> Path | None:
    """Rewrite ``RUN/report.html`` when the run has one (:func:`saec.run.report.refresh_report`)."""
    from saec.run.report import refresh_report as refresh

    return refresh(run)
