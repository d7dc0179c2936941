"""The `saec` command line: one typer app, each command a thin call into the library.

Heavy imports (torch, nir, onnx) happen inside the commands that need them, so
`saec compile` and `saec schema` stay fast and torch-free.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from saec.spec.errors import SpecError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="saec, the spiking auto-encoder compiler: YAML spec -> graph IR -> training -> NIR/ONNX export.",
    pretty_exceptions_enable=False,
)

SetOption = typer.Option(None, "--set", help="Override a spec field: dotted.path=VALUE (repeatable).")


def user_errors(fn: Callable) -> Callable:
    """Turn a SpecError (or any user-input error) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


@app.command("compile")
@user_errors
def compile_cmd(
    spec: Path = typer.Argument(..., help="The YAML spec file."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the IR as JSON to this file."),
    set_: Optional[List[str]] = SetOption,
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing on success."),
) -> None:
    """Validate SPEC, build the graph IR, run the analysis passes and print a summary."""
    from saec.compiler.pipeline import compile_spec, summarize
    from saec.reporting import print_compile_summary

    loaded, graph = compile_spec(str(spec), set_ or [])
    summary = summarize(graph)
    if output is not None:
        try:
            _atomic_write_text(output, graph.to_json(summary) + "\n")
        except OSError as exc:
            raise SpecError(f"cannot write: {exc.strerror}", file=str(output)) from None
    if not quiet:
        print_compile_summary(loaded, graph, summary)
        if output is not None:
            typer.echo(f"IR written to {output}")


@app.command("train")
@user_errors
def train_cmd(
    spec: Optional[Path] = typer.Argument(None, help="The YAML spec file (omit with --resume)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<spec name>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder holding MNIST (torchvision layout)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    set_: Optional[List[str]] = SetOption,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing run in the folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train SPEC end to end and write a run folder (weights, metrics, figures).

    With --resume DIR, continue an interrupted run and end with the same
    weights as an uninterrupted one.
    """
    from saec.runtime.train import TrainingDiverged, TrainingInterrupted, load_run, train

    if resume is not None:
        if spec is not None or set_:
            raise SpecError("--resume continues a run as it was specified; give no SPEC or --set with it",
                            path="--resume")
        spec_obj, graph = load_run(resume)
        run_dir = resume
    else:
        if spec is None:
            raise SpecError("give a SPEC file to train, or --resume RUN_FOLDER")
        from saec.compiler.pipeline import compile_spec

        loaded, graph = compile_spec(str(spec), set_ or [])
        spec_obj = loaded.spec
        run_dir = out or Path("runs") / spec_obj.name
    try:
        metrics = train(spec_obj, graph, run_dir, data_dir=str(data_dir) if data_dir else None, device=device,
                        resume=resume is not None, force=force, progress=progress)
    except TrainingInterrupted as exc:
        typer.echo(f"saec: {exc}", err=True)
        raise typer.Exit(130) from None
    except TrainingDiverged as exc:
        typer.echo(f"saec: training diverged: {exc}", err=True)
        raise typer.Exit(1) from None
    if metrics:
        typer.echo(f"run folder: {run_dir}")
        typer.echo(f"validation L_rec: {metrics['rec_loss']:.3f} (mean of batch means)")
        typer.echo(f"reconstructions: {run_dir / 'figures' / 'reconstructions.png'}")


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of the spec (for editor completion and validation)."""
    from saec.spec.schema import Spec

    typer.echo(json.dumps(Spec.model_json_schema(), indent=2))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
