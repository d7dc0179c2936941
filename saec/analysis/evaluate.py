"""Validation pass: L_rec, per-layer activity metrics and latent clustering over a data set.

:func:`evaluate` runs a model over a data set in order and returns an
:class:`EvalResult`; its ``metrics`` dict is what ``eval.json`` holds (the
keys are listed in :data:`EVAL_KEYS` and in the README).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from saec.analysis import metrics as M
from saec.training.data import ImageSet, batch_indices
from saec.runtime.model import SpikingAutoencoder

EVAL_SEED_OFFSET = 7919  # evaluation draws its own encoding noise, independent of training

#: Every key of the metrics dict (``eval.json``), with its meaning. ``<layer>``
#: stands for each spiking layer's name, ``<m>`` for each distance metric.
EVAL_KEYS: dict[str, str] = {
    "run": "model name (spec `name`); added by finish_run / saec eval",
    "validation": "which images were evaluated (e.g. mnist/test); added by finish_run / saec eval",
    "kind": "sae, ae or vae",
    "timesteps": "T, simulated time steps per example (1 for AE/VAE)",
    "latent_layer": "name of the latent layer (spec `latent`)",
    "examples": "number of validation images evaluated",
    "batch_size": "validation batch size (sets the batch-mean averaging)",
    "rec_loss": "L_rec = sum over pixels of (x_hat - x)^2, averaged as the mean of batch means (the paper's averaging)",
    "rec_loss_per_example": "L_rec averaged over examples (differs from rec_loss only through a partial last batch)",
    "rec_loss_zero_output": "L_rec an all-zero output scores on the same images, averaged as rec_loss (sum of x^2); "
                            "a run near it has not learned to reconstruct",
    "spikes_per_example": "SAE: spikes one example causes in all spiking layers together (input encoding excluded)",
    "mean_firing_rate": "SAE: spikes per neuron per step over all spiking layers' neurons and all examples",
    "layers.<layer>.anr": "SAE: active neuron ratio, fraction of the layer's neurons that spiked for at least one "
                          "example of a batch; mean over batches",
    "layers.<layer>.inp": "SAE: inactive neuron proportion, 1 - anr",
    "layers.<layer>.afr": "SAE: average firing rate of active neurons, spikes / (B * N_active * T); mean over batches",
    "layers.<layer>.rae": "SAE: mean over examples of (active neurons that fired for the example / N_active); "
                          "mean over batches",
    "layers.<layer>.spikes_per_example": "SAE: spikes in this layer / examples (whole set)",
    "layers.<layer>.n_batches": "SAE: validation batches averaged over",
    "layers.<layer>.n_examples": "SAE: validation examples seen",
    "layers.<layer>.firing_rates": "SAE: distribution of per-neuron firing rates (spikes per step, whole set): mean, "
                                   "std, min, p5, p25, p50, p75, p95, max, dead (never fired), bursting (rate >= "
                                   "bursting_threshold), dead_fraction, bursting_fraction, n_neurons, "
                                   "bursting_threshold",
    "input_encoding.spikes_per_example": "SAE: input spikes per example from the Poisson encoding",
    "input_encoding.firing_rates": "SAE: per-pixel firing-rate distribution of the Poisson encoding (same fields)",
    "s_intra_inter.<m>": "latent clustering: mean same-class over mean different-class pairwise distance of the "
                         "latent vectors (SAE: firing rate over T; AE: ReLU activation; VAE: z = mu), for m in "
                         "euclidean, seuclidean, sqeuclidean, cityblock, correlation; null when undefined",
    "s_intra_inter_detail.<m>": "ratio, intra, inter, n_intra_pairs, n_inter_pairs, dropped_rows (correlation: "
                                "constant latent vectors), dropped_columns (seuclidean: constant neurons); or "
                                "{error: why}",
}


@dataclass
class EvalResult:
    """Everything one validation pass measured.

    Attributes:
        metrics: JSON-ready dict (keys in :data:`EVAL_KEYS`).
        latents: [M, D] float64 latent vectors (only with ``keep_latents``).
        labels: [M] int64 class labels (only with ``keep_latents``).
        accumulator: per-layer tallies of the spiking layers (SAE), for per-neuron rates.
        input_rates: [C*H*W] per-pixel firing rate of the Poisson input encoding (SAE).
        per_example_loss: [M] L_rec of each example.
    """

    metrics: dict
    latents: np.ndarray | None = None
    labels: np.ndarray | None = None
    accumulator: M.BatchAccumulator | None = None
    input_rates: np.ndarray | None = None
    per_example_loss: np.ndarray | None = None
    extras: dict = field(default_factory=dict)


def latent_layer_name(model: SpikingAutoencoder) -> str | None:
    """The spec-level name of the latent layer (``latent`` for node ``latent.lif``)."""
    node = model.latent_node
    if node is None:
        return None
    return model.graph.meta(node).get("layer") or node


def latent_clustering(latents: np.ndarray, labels: np.ndarray) -> tuple[dict, dict]:
    """s_intra / s_inter of ``latents`` under every metric of paper Table 8.

    Args:
        latents: [M, D] latent vectors.
        labels: [M] class labels.

    Returns:
        (ratios, detail): ``{metric: ratio or None}`` and ``{metric: the
        intra_inter_ratio dict, or {"error": reason}}``. A metric is None
        when it is undefined for these latents (e.g. every latent vector is
        constant, so correlation has nothing to compare).
    """
    ratios: dict = {}
    detail: dict = {}
    for metric in M.DISTANCE_METRICS:
        try:
            res = M.intra_inter_ratio(latents, labels, metric)
        except ValueError as exc:
            ratios[metric] = None
            detail[metric] = {"error": str(exc)}
        else:
            ratios[metric] = res["ratio"]
            detail[metric] = res
    return ratios, detail


@torch.no_grad()
def evaluate(model: SpikingAutoencoder, data: ImageSet, *, batch_size: int = 64, seed: int = 0,
             device: torch.device | str = "cpu", keep_latents: bool = False) -> EvalResult:
    """Run ``model`` over ``data`` in order and measure it.

    L_rec is reported as the mean of batch means (the paper's averaging,
    ``rec_loss``) and per example (``rec_loss_per_example``). Activity metrics
    are computed per batch and averaged over batches, per spiking layer; the
    Poisson input's per-pixel rates are summarised too.

    Args:
        model: the network (left in the train/eval mode it came in).
        data: the images, evaluated in order in batches of ``batch_size``.
        batch_size: validation batch size (it sets the batch-mean averaging).
        seed: evaluation seed; the encoding noise uses ``seed + EVAL_SEED_OFFSET``.
        device: where to run.
        keep_latents: keep the latent vectors and labels, and compute
            ``s_intra_inter`` (five distance metrics, O(M^2) distances).

    Returns:
        An :class:`EvalResult`.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed + EVAL_SEED_OFFSET)
    T = model.timesteps
    spiking = model.kind == "sae"
    acc = M.BatchAccumulator(T) if spiking else None
    input_spikes: torch.Tensor | None = None
    record = frozenset({"_encode"}) if spiking else frozenset()
    losses: list[np.ndarray] = []
    zero_losses: list[np.ndarray] = []  # L_rec of an all-zero output: the baseline a run must leave
    latents: list[np.ndarray] = []
    for idx in batch_indices(len(data), batch_size, shuffle=False):
        x, encoded = data.batch(idx, device)  # encoded: pre-encoded spike input (events), else None
        out = model(x, generator=gen, record=record, encoded=encoded)
        per_example = ((out.x_hat - x) ** 2).flatten(1).sum(1)
        losses.append(per_example.double().cpu().numpy())
        zero_losses.append(x.double().square().flatten(1).sum(1).cpu().numpy())
        if acc is not None:
            acc.update({k: v.cpu() for k, v in out.counts.items()})
        if out.encoded is not None:
            # Per-pixel spike totals of the input encoding (sum over T and the batch).
            pixel_sums = out.encoded.sum(dim=(0, 1), dtype=torch.float64).flatten().cpu()
            input_spikes = pixel_sums if input_spikes is None else input_spikes + pixel_sums
        if keep_latents and out.latent is not None:
            latents.append(out.latent.flatten(1).double().cpu().numpy())
    model.train(was_training)
    per_example = np.concatenate(losses)
    rec = M.reconstruction_loss_stats(per_example, batch_size)
    metrics: dict = {
        "kind": model.kind,
        "timesteps": T,
        "latent_layer": latent_layer_name(model),
        "examples": int(rec["n_examples"]),
        "batch_size": batch_size,
        "rec_loss": rec["batch_mean"],
        "rec_loss_per_example": rec["per_example_mean"],
        "rec_loss_zero_output": M.reconstruction_loss_stats(np.concatenate(zero_losses), batch_size)["batch_mean"],
    }
    input_rates = None
    if acc is not None:
        result = acc.result()
        metrics["spikes_per_example"] = result["total"]["spikes_per_example"]
        neurons = sum(acc.neuron_rates(k).size for k in acc.layers)
        metrics["mean_firing_rate"] = float(
            sum(acc.neuron_rates(k).sum() for k in acc.layers) / max(neurons, 1))
        metrics["layers"] = {k: v for k, v in result.items() if k != "total"}
    if input_spikes is not None:
        n = len(data)
        input_rates = input_spikes.numpy() / (n * T)
        metrics["input_encoding"] = {
            "spikes_per_example": float(input_spikes.sum()) / n,
            "firing_rates": M.summarize_neuron_rates(input_rates),
        }
    all_latents = np.concatenate(latents) if latents else None
    labels = data.labels.numpy() if keep_latents else None
    if all_latents is not None:
        metrics["s_intra_inter"], metrics["s_intra_inter_detail"] = latent_clustering(all_latents, labels)
    return EvalResult(
        metrics=metrics,
        latents=all_latents,
        labels=labels,
        accumulator=acc,
        input_rates=input_rates,
        per_example_loss=per_example,
    )
