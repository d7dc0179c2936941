"""Sweeps: many training runs (configurations x grid x seeds) as local processes, and their table.

A sweep file (YAML, validated with ``extra="forbid"``; errors are one located line)::

    name: table1                      # optional; default: the file's stem
    base: ../sae_dense.yaml           # spec file, relative to the sweep file
    set: {training.epochs: 10}        # overrides for every run (like --set)
    configs:                          # optional: named configurations
      - {name: sae, spec: ../sae.yaml, set: {encoding.timesteps: 16}}
    grid:                             # optional: every combination of these values
      regularizers.p2.weight: [0.01, 0.001]
    seeds: [0, 1, 2, 3, 4]            # training.seed of each repetition
    out: runs/sweeps/table1           # optional; default runs/sweeps/<name> (relative to the cwd)

Runs = configs (or the base alone) x grid points x seeds. The overrides of a
run are applied in this order, later ones winning: ``set``, the config's
``set``, the grid point, ``training.seed``. Each run is a subprocess
``python -m saec train SPEC --out RUN --no-progress --set ...`` in
``OUT/<config>[__key=value...]/seed<k>``; ``--jobs N`` run at once, each with
``cores // N`` torch threads. A run whose folder is complete (``train_state.pt``
says ``complete``) is skipped, an interrupted one is resumed (``--resume``), so
rerunning an interrupted sweep continues it. At the end the ``eval.json`` of
every run is collected into ``OUT/table.md`` and ``OUT/table.csv`` (mean ± std
over seeds per configuration) and ``OUT/runs.csv`` (one row per run).
"""

from __future__ import annotations

import csv
import difflib
import io
import itertools
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from saec.run import artifacts as A
from saec.errors import UserError, format_path
from saec.yamltext import SET_SOURCE, parse_yaml, read_limited
from saec.spec.schema import PathText

_NAME = r"^[A-Za-z0-9_.-]{1,100}$"
#: The most runs one sweep file may expand to (configs x grid points x seeds); a grid of 9 keys x 10
#: values is a billion runs, and is refused before anything is built.
MAX_RUNS = 10_000
_POLL_S = 0.5  # how often running jobs are checked
_INTERRUPT_GRACE_S = 120.0  # how long interrupted runs get to write their checkpoint
_EXIT_INTERRUPTED = 130  # `saec train` after Ctrl-C, with a checkpoint written


def _latent(metrics: dict, key: str) -> float | None:
    layers = metrics.get("layers") or {}
    return (layers.get(metrics.get("latent_layer") or "") or {}).get(key)


#: The table's metric columns: (header, CSV stem, reader of eval.json, decimals shown).
TABLE_COLUMNS: tuple[tuple[str, str, Callable[[dict], Any], int], ...] = (
    ("L_rec", "rec_loss", lambda m: m.get("rec_loss"), 2),
    ("latent ANR", "latent_anr", lambda m: _latent(m, "anr"), 3),
    ("latent AFR", "latent_afr", lambda m: _latent(m, "afr"), 3),
    ("latent RAE", "latent_rae", lambda m: _latent(m, "rae"), 3),
    ("s_intra/s_inter (euclidean)", "s_intra_inter_euclidean",
     lambda m: (m.get("s_intra_inter") or {}).get("euclidean"), 3),
)


# ---------------------------------------------------------------- the sweep file
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SweepConfig(_Strict):
    """One named configuration: a spec file and overrides (a row of the table)."""

    name: Annotated[str, Field(pattern=_NAME)] = Field(description="Configuration name (a row of the table).")
    spec: PathText | None = Field(None, description="Spec file relative to the sweep file; default: the sweep's base.")
    set: dict[str, Any] = Field(default_factory=dict, description="Overrides for this configuration (dotted keys).")


class SweepFile(_Strict):
    """A sweep file as written (paths still relative to the file)."""

    name: Annotated[str, Field(pattern=_NAME)] | None = Field(None, description="Sweep name; default: the stem.")
    base: PathText | None = Field(None, description="Spec file relative to the sweep file (for configs without spec).")
    set: dict[str, Any] = Field(default_factory=dict, description="Overrides for every run (dotted keys).")
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict, description="Dotted key -> values; every combination is run.")
    configs: list[SweepConfig] = Field(default_factory=list, description="Named configurations.")
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = Field(
        default_factory=lambda: [0], description="training.seed of each repetition.")
    out: PathText | None = Field(None, description="Output folder; default runs/sweeps/<name> (relative to the cwd).")


@dataclass(frozen=True)
class Override:
    """One ``key=value`` override and where the sweep file wrote it."""

    key: str
    value: Any
    line: int | None
    where: str  # dotted path inside the sweep file, e.g. configs[2].set.encoding.timesteps

    def as_set(self) -> str:
        # JSON is valid YAML flow syntax, and the --set parser reads YAML.
        return f"{self.key}={json.dumps(self.value)}"


@dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep."""

    config: str  # configuration label, e.g. ``sae`` or ``sae__p2.weight=0.01``
    grid: tuple[tuple[str, Any], ...]  # the grid point's (key, value) pairs
    seed: int
    spec_file: Path
    overrides: tuple[Override, ...]
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.config} seed {self.seed}"

    def set_args(self) -> list[str]:
        return [o.as_set() for o in self.overrides]


@dataclass
class Sweep:
    """A validated sweep: its runs, where its results go."""

    name: str
    file: Path
    out: Path
    grid_keys: tuple[str, ...]
    configs: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: list[SweepRun]


def _folder_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", text)


def _short_key(key: str) -> str:
    """The last two segments of a dotted key (``regularizers.p2.weight`` -> ``p2.weight``), for labels."""
    return ".".join(key.split(".")[-2:])


def _line_of(lines: dict[tuple, int], path: tuple) -> int | None:
    for cut in range(len(path), -1, -1):
        if path[:cut] in lines:
            return lines[path[:cut]]
    return None


def _describe(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        loc = err["loc"]
        model = SweepConfig if loc and loc[0] == "configs" else SweepFile
        hint = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
        return f"unknown field {loc[-1]!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
    if err["type"] == "missing":
        return "required field missing"
    value = err.get("input")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return f"{err['msg']} (got {value!r})"
    return err["msg"]


def _validate(data: Any, file: str, lines: dict[tuple, int]) -> SweepFile:
    if not isinstance(data, dict):
        raise UserError("a sweep file must be a mapping (base, set, grid, configs, seeds, out)", file=file, line=1)
    try:
        return SweepFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        err = max(errors, key=lambda e: (e["type"] == "extra_forbidden", len(e["loc"])))
        loc = tuple(err["loc"])
        more = len({tuple(e["loc"]) for e in errors}) - 1
        msg = _describe(err) + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
        raise UserError(msg, file=file, line=_line_of(lines, loc), path=format_path(loc)) from None


def _overrides(mapping: dict[str, Any], where: tuple, lines: dict[tuple, int], file: str) -> list[Override]:
    out = []
    for key, value in mapping.items():
        path = where + (key,)
        if not key or any(not seg for seg in key.split(".")) or "=" in key:
            raise UserError(f"not a dotted spec key: {key!r}", file=file, line=_line_of(lines, path),
                            path=format_path(where))
        out.append(Override(key, value, _line_of(lines, path), format_path(path)))
    return out


def _relocate(exc: UserError, overrides: tuple[Override, ...], sweep_file: str, label: str) -> UserError:
    """A spec error caused by a sweep override, re-located at the sweep file's line."""
    if exc.file != SET_SOURCE:
        return UserError(f"{exc.message} (configuration {label})", file=exc.file, line=exc.line, path=exc.path)
    path = exc.path or ""
    for o in reversed(overrides):  # the last override of a key is the one that took effect
        if path == o.key or path.startswith(o.key + ".") or o.key.startswith(path + ".") or not path:
            return UserError(f"{exc.message} (configuration {label}, spec key {path or o.key})",
                             file=sweep_file, line=o.line, path=o.where)
    return UserError(f"{exc.message} (configuration {label})", file=sweep_file, path=path)


def load_sweep(path: str | Path, out: str | Path | None = None) -> Sweep:
    """Read, validate and expand a sweep file; every run's spec is compiled once to check it.

    Args:
        path: the sweep YAML.
        out: overrides the file's ``out``.

    Returns:
        The :class:`Sweep` with one :class:`SweepRun` per configuration x grid point x seed.

    Raises:
        UserError: a problem with the sweep file or with a run's spec, located at FILE:LINE.
    """
    path = Path(path)
    file = str(path)
    data, lines = parse_yaml(read_limited(path, "sweep file"), file)
    sweep = _validate(data, file, lines)
    _check_sweep(sweep, file, lines)
    name = sweep.name or _folder_part(path.stem)
    common = _overrides(sweep.set, ("set",), lines, file)
    grid_keys = tuple(sweep.grid)
    _overrides({k: None for k in grid_keys}, ("grid",), lines, file)  # key syntax check
    configs = [(c.name, c.spec or sweep.base, _overrides(c.set, ("configs", i, "set"), lines, file),
                ("configs", i, "spec") if c.spec else ("base",))
               for i, c in enumerate(sweep.configs)] or [(None, sweep.base, [], ("base",))]
    n_runs = max(1, len(sweep.configs)) * math.prod(len(v) for v in sweep.grid.values()) * len(sweep.seeds)
    if n_runs > MAX_RUNS:
        raise UserError(f"expands to {n_runs:,} runs (configurations x grid points x seeds), more than "
                        f"{MAX_RUNS:,}; split the sweep", file=file, line=_line_of(lines, ("grid",)),
                        path="grid" if sweep.grid else None)
    out_dir = Path(out) if out is not None else Path(sweep.out) if sweep.out else Path("runs") / "sweeps" / name
    runs, labels = _expand(sweep, configs, common, path, out_dir, lines)
    if len(set(labels)) != len(labels):
        raise UserError("two configurations get the same name; name the configs apart", file=file, line=1)
    return Sweep(name, path, out_dir, grid_keys, tuple(labels), tuple(sweep.seeds), runs)


def _check_sweep(sweep: SweepFile, file: str, lines: dict[tuple, int]) -> None:
    """The rules pydantic does not check: folder names, distinct configuration names and seeds, a spec for each."""
    for where, value in [(("name",), sweep.name), *((("configs", i, "name"), c.name)
                                                     for i, c in enumerate(sweep.configs))]:
        if value in (".", ".."):
            raise UserError(f"{value!r} is not a folder name of its own", file=file, line=_line_of(lines, where),
                            path=format_path(where))
    names = [c.name for c in sweep.configs]
    for i, c in enumerate(sweep.configs):
        if names.index(c.name) != i:
            raise UserError(f"duplicate configuration name {c.name!r}", file=file,
                            line=_line_of(lines, ("configs", i, "name")), path=f"configs[{i}].name")
        if c.spec is None and sweep.base is None:
            raise UserError("no spec: give this configuration a `spec` or the sweep a `base`", file=file,
                            line=_line_of(lines, ("configs", i)), path=f"configs[{i}]")
    if not sweep.configs and sweep.base is None:
        raise UserError("nothing to run: give a `base` spec or a list of `configs`", file=file, line=1)
    if len(set(sweep.seeds)) != len(sweep.seeds):
        raise UserError("seeds repeat", file=file, line=_line_of(lines, ("seeds",)), path="seeds")


def _expand(sweep: SweepFile, configs: list[tuple], common: list[Override], path: Path, out_dir: Path,
            lines: dict[tuple, int]) -> tuple[list[SweepRun], list[str]]:
    """One run per configuration x grid point x seed, each spec compiled once to check it; (runs, row labels)."""
    from saec.compiler.pipeline import compile_spec

    file, here, grid_keys = str(path), path.parent, tuple(sweep.grid)
    runs: list[SweepRun] = []
    labels: list[str] = []
    for cname, spec_rel, own, spec_where in configs:
        spec_file = (here / spec_rel).resolve() if not Path(spec_rel).is_absolute() else Path(spec_rel)
        if not spec_file.is_file():
            raise UserError(f"no such spec file {spec_file}", file=file, line=_line_of(lines, spec_where),
                            path=format_path(spec_where))
        for point in itertools.product(*(sweep.grid[k] for k in grid_keys)):  # lazily: never all at once
            grid = tuple(zip(grid_keys, point))
            grid_over = [Override(k, v, _line_of(lines, ("grid", k)), f"grid.{k}") for k, v in grid]
            label = None
            for seed in sweep.seeds:
                seed_over = Override("training.seed", seed, _line_of(lines, ("seeds",)), "seeds")
                overrides = tuple(common + own + grid_over + [seed_over])
                try:
                    loaded, _ = compile_spec(str(spec_file), [o.as_set() for o in overrides])
                except UserError as exc:
                    raise _relocate(exc, overrides, file, label or cname or spec_file.name) from None
                if label is None:  # without configs, the row is named after the spec
                    label = "__".join([cname or loaded.spec.name]
                                      + [f"{_short_key(k)}={json.dumps(v)}" for k, v in grid])
                runs.append(SweepRun(label, grid, seed, spec_file, overrides,
                                     out_dir / _folder_part(label) / f"seed{seed}"))
            labels.append(label)
    return runs, labels


# ---------------------------------------------------------------- data check
def check_sweep_data(sweep: Sweep, data_dir: str | None = None) -> None:
    """Check that every run of ``sweep`` will find its data, before any run starts.

    Each distinct data config is checked once (:func:`saec.training.data.check_data`:
    files present, nothing loaded), so a machine without the data gets one
    error up front instead of one failed run after another.

    Raises:
        UserError: located at the sweep file, naming the configuration and the way out.
    """
    from saec.compiler.pipeline import compile_spec
    from saec.training.data import DataError, check_data

    seen: set[str] = set()
    for run in sweep.runs:
        data_cfg = compile_spec(str(run.spec_file), run.set_args())[0].spec.data
        key = json.dumps(data_cfg.model_dump(), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_data(data_cfg, data_dir)
        except DataError as exc:
            # The advice names `--set`, which `saec sweep` does not take: say where it goes in a sweep file.
            advice = re.sub(r"--set ([\w.]+)=(\S+)", r"`\1: \2` in the sweep file's `set`", str(exc))
            raise UserError(f"{advice} (configuration {run.config}; no run was started)", file=str(sweep.file),
                            path="data") from None


# ---------------------------------------------------------------- plan and pre-flight checks
@dataclass(frozen=True)
class ConfigPlan:
    """What one configuration of a sweep will run: its schedule and optimizer steps."""

    config: str
    kind: str  # sae, ae or vae
    timesteps: int  # T (1 for AE/VAE)
    batch_size: int
    lr: float  # initial learning rate
    schedule: str  # learning-rate schedule over the epochs (constant, cosine, step)
    epochs: int
    steps_per_epoch: int | None  # None: custom data, whose size is known only by reading it
    runs: int  # seeds

    @property
    def steps_per_run(self) -> int | None:
        return None if self.steps_per_epoch is None else self.epochs * self.steps_per_epoch


def plan_sweep(sweep: Sweep, data_dir: str | None = None) -> list[ConfigPlan]:
    """Each configuration's schedule and step count, from its compiled spec; nothing is loaded or run.

    Steps per epoch are ``ceil(training images / batch size)`` (capped by ``training.max_steps``), with
    the training set's size from :func:`saec.training.data.planned_train_size`, which depends on whether
    this machine has the MNIST test set when validation is ``auto``.
    """
    from saec.compiler.pipeline import compile_spec
    from saec.training.data import planned_train_size

    plans: list[ConfigPlan] = []
    for config in sweep.configs:
        runs = [r for r in sweep.runs if r.config == config]
        spec = compile_spec(str(runs[0].spec_file), runs[0].set_args())[0].spec
        t = spec.training
        n = planned_train_size(spec.data, data_dir)
        per_epoch = None if n is None else math.ceil(n / t.batch_size)
        if per_epoch is not None and t.max_steps is not None:
            per_epoch = min(per_epoch, t.max_steps)
        plans.append(ConfigPlan(config, spec.kind, spec.encoding.timesteps if spec.kind == "sae" else 1,
                                t.batch_size, t.lr, t.schedule.type, t.epochs,
                                per_epoch, len(runs)))
    return plans


def render_plan(sweep: Sweep, plans: list[ConfigPlan]) -> str:
    """The dry run's table: one line per configuration, then the totals."""
    lines = [f"sweep {sweep.name}: {len(sweep.runs)} runs ({len(plans)} configurations x {len(sweep.seeds)} seeds"
             + (f", grid {', '.join(sweep.grid_keys)}" if sweep.grid_keys else "") + f") -> {sweep.out}",
             "| configuration | kind | T | batch | lr | epochs | steps/epoch | steps/run | runs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        cells = [p.config, p.kind, p.timesteps, p.batch_size, f"{p.lr:g} {p.schedule}", p.epochs,
                 p.steps_per_epoch or "?", p.steps_per_run or "?", p.runs]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    known = [p for p in plans if p.steps_per_run is not None]
    total = sum(p.steps_per_run * p.runs for p in known)
    spiking = sum(p.steps_per_run * p.runs for p in known if p.kind == "sae")
    time_steps = sum(p.steps_per_run * p.runs * p.timesteps for p in known if p.kind == "sae")
    lines.append(f"total: {total:,} optimizer steps, {spiking:,} of them spiking ({time_steps:,} steps x T)"
                 + ("" if len(known) == len(plans) else "; custom data: steps unknown until the data is read"))
    return "\n".join(lines)


def check_device(device: str) -> None:
    """UserError unless every run of the sweep can use ``device`` (checked once, before any run starts)."""
    from saec.run.folder import resolve_device

    resolve_device(device)


# ---------------------------------------------------------------- run state
def run_state(run: SweepRun) -> str:
    """``complete``, ``resumable`` (an interrupted run with a checkpoint) or ``new``.

    Raises:
        UserError: the folder holds a run of a different spec (the sweep file changed).
    """
    from saec.run.checkpoint import MANIFEST

    folder = run.folder
    if not (folder / A.TRAIN_STATE).is_file() and not (folder / MANIFEST).is_file():
        return "new"
    _check_same_spec(run)
    if _is_complete(folder):
        return "complete"
    return "resumable"


class DamagedRun(UserError):
    """A run folder of the sweep cannot be read; the sweep reports it and goes on with the others."""


def _check_same_spec(run: SweepRun) -> None:
    from saec.compiler.pipeline import compile_spec
    from saec.spec.loader import load_spec

    if not (run.folder / A.SPEC).is_file():
        return
    wanted = compile_spec(str(run.spec_file), run.set_args())[0].spec
    try:
        have = load_spec(run.folder / A.SPEC).spec
    except UserError as exc:
        raise DamagedRun(f"damaged run folder, skipped: {exc}", file=str(run.folder)) from None
    if wanted.model_dump() != have.model_dump():
        raise UserError("holds a run of a different spec than the sweep now asks for; delete the folder or "
                        "change the sweep's `out`", file=str(run.folder))


def train_command(run: SweepRun, state: str, *, data_dir: str | None, device: str) -> list[str]:
    """The subprocess command line that trains (or resumes) ``run``."""
    cmd = [sys.executable, "-m", "saec", "train"]
    if state == "resumable":
        cmd += ["--resume", str(run.folder)]
    else:
        cmd += [str(run.spec_file), "--out", str(run.folder), "--force"]
        for s in run.set_args():
            cmd += ["--set", s]
    cmd += ["--no-progress", "--device", device]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    return cmd


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class SweepInterrupted(RuntimeError):
    """Ctrl-C: running jobs were asked to checkpoint; rerun the sweep to continue."""


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did."""

    ran: list[SweepRun]
    skipped: list[SweepRun]
    failed: list[tuple[SweepRun, int, Path]]  # run, exit code, log file
    seconds: dict[str, float]  # wall time per run folder that ran
    wall_s: float
    cpu_s: float  # user + system CPU seconds of all the runs' processes
    table: Path


def run_sweep(sweep: Sweep, *, jobs: int = 1, data_dir: str | None = None, device: str = "auto",
              log: Callable[[str], None] = print, threads_per_job: int | None = None) -> SweepOutcome:
    """Run every unfinished run of ``sweep`` (``jobs`` at a time), then write the tables.

    Args:
        sweep: from :func:`load_sweep`.
        jobs: runs at once (separate processes).
        data_dir: passed to ``saec train --data-dir``.
        device: passed to ``saec train --device``.
        log: progress lines.
        threads_per_job: torch threads per run; default ``max(1, cores // jobs)``.

    Returns:
        A :class:`SweepOutcome`; the table is written even when some runs failed.

    Raises:
        UserError: bad ``jobs``, a run's data missing (checked for every run before any starts), or a
            run folder holding a different spec.
        SweepInterrupted: Ctrl-C (after the running jobs checkpointed and the table was written).
    """
    if jobs < 1:
        raise UserError(f"must be at least 1, got {jobs}", path="--jobs")
    threads = threads_per_job or max(1, available_cores() // jobs)
    # Before any run starts and before anything is written: one error, not one failed run after another.
    check_device(device)
    check_sweep_data(sweep, data_dir)
    logs_dir = sweep.out / "logs"
    try:
        logs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the sweep's output folder: {exc.strerror or exc}", file=str(sweep.out)) from None
    pool = _Jobs(sweep, logs_dir, log, data_dir=data_dir, device=device,
                 env={**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    todo = [r for r in sweep.runs if pool.states[r.folder] not in ("complete", "damaged")]
    skipped = [r for r in sweep.runs if pool.states[r.folder] == "complete"]
    log(f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(skipped)} complete, {len(todo)} to run "
        f"({jobs} at a time, {threads} threads each) -> {sweep.out}")
    t_start = time.perf_counter()
    cpu_start = _children_cpu_s()
    try:
        pool.run_all(todo, jobs)
    except KeyboardInterrupt:
        pool.interrupt()
        write_tables(sweep)
        raise SweepInterrupted(f"sweep interrupted; rerun `saec sweep {sweep.file}` to continue") from None
    wall = time.perf_counter() - t_start
    cpu = _children_cpu_s() - cpu_start
    A.write_json(sweep.out / "sweep.json", {
        "sweep": sweep.name, "file": str(sweep.file), "jobs": jobs, "threads_per_job": threads,
        "cores": available_cores(), "runs": len(sweep.runs), "trained": len(pool.ran), "skipped": len(skipped),
        "failed": [str(r.folder) for r, _, _ in pool.failed], "wall_s": wall, "cpu_s": cpu,
        "run_wall_s": pool.seconds,
    })
    table = write_tables(sweep)
    return SweepOutcome(pool.ran, skipped, pool.failed, pool.seconds, wall, cpu, table)


class _Jobs:
    """The training processes of a sweep: what each run's folder holds, which run, which finished how."""

    def __init__(self, sweep: Sweep, logs_dir: Path, log: Callable[[str], None], *, data_dir: str | None,
                 device: str, env: dict[str, str]) -> None:
        self.logs_dir, self.log, self.data_dir, self.device, self.env = logs_dir, log, data_dir, device, env
        self.running: dict[subprocess.Popen, tuple[SweepRun, float, Path, Any]] = {}
        self.seconds: dict[str, float] = {}
        self.ran: list[SweepRun] = []
        self.failed: list[tuple[SweepRun, int, Path]] = []
        self.done = self.total = 0
        self.states: dict[Path, str] = {}
        for run in sweep.runs:
            try:
                self.states[run.folder] = run_state(run)
            except DamagedRun as exc:  # reported and left alone; the other runs go on
                log_path = self._log_path(run)
                with open(log_path, "a") as fh:
                    fh.write(f"{exc}\n")
                log(f"FAILED {run.label}: {exc}")
                self.failed.append((run, 2, log_path))
                self.states[run.folder] = "damaged"

    def _log_path(self, run: SweepRun) -> Path:
        return self.logs_dir / f"{_folder_part(run.config)}-seed{run.seed}.log"

    def run_all(self, todo: list[SweepRun], jobs: int) -> None:
        """Run ``todo``, ``jobs`` at a time, until every one has ended."""
        self.total = len(todo)
        queue = list(todo)
        while queue or self.running:
            while queue and len(self.running) < jobs:
                self._start(queue.pop(0))
            for proc in [p for p in self.running if p.poll() is not None]:
                self._reap(proc)
            time.sleep(_POLL_S)

    def _start(self, run: SweepRun) -> None:
        log_path = self._log_path(run)
        fh = open(log_path, "a")
        cmd = train_command(run, self.states[run.folder], data_dir=self.data_dir, device=self.device)
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env)
        self.running[proc] = (run, time.perf_counter(), log_path, fh)
        self.log(f"started {run.label}{' (resuming)' if self.states[run.folder] == 'resumable' else ''}")

    def _reap(self, proc: subprocess.Popen) -> None:
        run, t0, log_path, fh = self.running.pop(proc)
        fh.close()
        dt = time.perf_counter() - t0
        self.done += 1
        self.seconds[str(run.folder)] = dt
        count = f"[{self.done}/{self.total}]"
        if proc.returncode == _EXIT_INTERRUPTED:
            self.log(f"{count} interrupted {run.label} after {dt:.0f} s (checkpoint written; the next "
                     f"sweep resumes it)")
        elif proc.returncode == 0:
            self.ran.append(run)
            rec = _read_eval(run.folder).get("rec_loss")
            self.log(f"{count} done {run.label} in {dt:.0f} s"
                     + (f": L_rec {rec:.2f}" if isinstance(rec, (int, float)) else ""))
        else:
            self.failed.append((run, proc.returncode, log_path))
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.is_file() else []
            self.log(f"{count} FAILED {run.label} (exit {proc.returncode}); log {log_path}"
                     + (f": {tail[0]}" if tail else ""))

    def interrupt(self) -> None:
        """Ctrl-C: ask every running job to checkpoint (SIGINT), wait a grace period, then kill the rest."""
        self.log(f"interrupted: asking {len(self.running)} running job(s) to checkpoint ...")
        for proc in self.running:
            proc.send_signal(signal.SIGINT)
        deadline = time.perf_counter() + _INTERRUPT_GRACE_S
        for proc in list(self.running):
            try:
                proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._reap(proc)


# ---------------------------------------------------------------- tables
def _read_eval(folder: Path) -> dict:
    """A run's eval.json; {} when it is missing or damaged (the run then counts as not complete)."""
    try:
        metrics = A.load_json(folder / A.EVAL)
    except UserError:
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _is_complete(folder: Path) -> bool:
    """A finished run with a readable eval.json (a damaged one counts as missing: the run is redone)."""
    from saec.run.checkpoint import state_is_complete

    return state_is_complete(folder) and bool(_read_eval(folder))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0, numpy's default) of ``values``."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def collect(sweep: Sweep) -> list[dict]:
    """One row per configuration: values per metric over the complete seeds.

    Returns:
        ``[{"config", "grid": {key: value}, "seeds_done", "seeds", "values": {csv stem: [per-seed values]}}]``.
    """
    rows: dict[str, dict] = {}
    for run in sweep.runs:
        row = rows.setdefault(run.config, {"config": run.config, "grid": dict(run.grid), "seeds_done": [],
                                           "seeds": len(sweep.seeds),
                                           "values": {stem: [] for _, stem, _, _ in TABLE_COLUMNS}})
        if not _is_complete(run.folder):
            continue
        metrics = _read_eval(run.folder)
        row["seeds_done"].append(run.seed)
        for _, stem, read, _ in TABLE_COLUMNS:
            value = read(metrics)
            if isinstance(value, (int, float)) and np.isfinite(value):
                row["values"][stem].append(float(value))
    return list(rows.values())


def _cell(values: list[float], decimals: int, seeds_done: int) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    # Fewer values than finished seeds: the metric was undefined for some (see the table's note).
    partial = f" (n={len(values)})" if len(values) < seeds_done else ""
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}{partial}"


def render_markdown(sweep: Sweep, rows: list[dict]) -> str:
    """The table in the layout of the paper's Tables 1, 6 and 7 (mean ± std over seeds)."""
    head = ["configuration", *sweep.grid_keys, "seeds", *(h for h, _, _, _ in TABLE_COLUMNS)]
    lines = [
        f"# Sweep `{sweep.name}`",
        "",
        f"Sweep file: `{sweep.file}`. Mean ± std (population, ddof 0) over the completed seeds; L_rec is "
        "the mean of validation batch means; latent ANR/AFR/RAE are per validation batch, averaged over "
        "batches. – : not applicable (ANR/AFR/RAE of AE/VAE) or undefined (s_intra/s_inter when every "
        "latent vector is the same, e.g. all zero); (n=k): defined for k of the seeds only.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for row in rows:
        cells = [row["config"], *(json.dumps(row["grid"][k]) for k in sweep.grid_keys),
                 f"{len(row['seeds_done'])}/{row['seeds']}"]
        cells += [_cell(row["values"][stem], dec, len(row["seeds_done"])) for _, stem, _, dec in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_csv(sweep: Sweep, rows: list[dict]) -> str:
    """One line per configuration: grid values, seeds done, mean and std of each metric."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["config", *sweep.grid_keys, "seeds_done", "seeds"]
    for _, stem, _, _ in TABLE_COLUMNS:
        header += [f"{stem}_mean", f"{stem}_std", f"{stem}_n"]
    writer.writerow(header)
    for row in rows:
        line: list[Any] = [row["config"], *(json.dumps(row["grid"][k]) for k in sweep.grid_keys),
                           len(row["seeds_done"]), row["seeds"]]
        for _, stem, _, _ in TABLE_COLUMNS:
            values = row["values"][stem]
            mean, std = mean_std(values) if values else ("", "")
            line += [mean, std, len(values)]
        writer.writerow(line)
    return buf.getvalue()


def render_runs_csv(sweep: Sweep) -> str:
    """One line per run: configuration, seed, complete or not, each metric."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["config", *sweep.grid_keys, "seed", "complete", "folder",
                     *(stem for _, stem, _, _ in TABLE_COLUMNS)])
    for run in sweep.runs:
        complete = _is_complete(run.folder)
        metrics = _read_eval(run.folder) if complete else {}
        writer.writerow([run.config, *(json.dumps(dict(run.grid)[k]) for k in sweep.grid_keys), run.seed,
                         complete, str(run.folder), *(read(metrics) if complete else "" for _, _, read, _ in
                                                      TABLE_COLUMNS)])
    return buf.getvalue()


def seed_results(sweep: Sweep) -> dict[str, list[dict]]:
    """Configuration -> the ``eval.json`` of each of its complete runs, with ``seed`` added, and
    ``train_steps`` (the optimizer steps the run trained, from its checkpoint manifest) where known."""
    from saec.run.checkpoint import read_manifest

    results: dict[str, list[dict]] = {config: [] for config in sweep.configs}
    for run in sweep.runs:
        if _is_complete(run.folder):
            steps = (read_manifest(run.folder) or {}).get("global_step")  # complete: the manifest is readable
            extra = {"train_steps": steps} if isinstance(steps, int) and not isinstance(steps, bool) else {}
            results[run.config].append({**_read_eval(run.folder), "seed": run.seed, **extra})
    return results


def write_findings(sweep: Sweep) -> Path:
    """Write ``findings.md`` into ``sweep.out``: the paper's claims judged on the finished runs.

    Rows name the paper's models (SAE, SAE-sparse, SAE-dense, AE, AE-l2, VAE, beta-VAE); configurations
    of other names are not read. Returns the path.
    """
    from saec.analysis.claims import findings, render_findings

    results = seed_results(sweep)
    done = sum(len(v) for v in results.values())
    text = render_findings(findings(results), source=f"sweep `{sweep.name}` ({sweep.file}), {done} of "
                                                     f"{len(sweep.runs)} runs finished")
    path = sweep.out / "findings.md"
    A.write_text(path, text)
    return path


def write_tables(sweep: Sweep) -> Path:
    """Write ``table.md``, ``table.csv`` and ``runs.csv`` into ``sweep.out``; returns the table.md path."""
    rows = collect(sweep)
    A.write_text(sweep.out / "table.md", render_markdown(sweep, rows))
    A.write_text(sweep.out / "table.csv", render_csv(sweep, rows))
    A.write_text(sweep.out / "runs.csv", render_runs_csv(sweep))
    return sweep.out / "table.md"
