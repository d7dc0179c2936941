"""Validation pass: L_rec and per-layer activity metrics over a data set."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from saec.runtime import metrics as M
from saec.runtime.data import ImageSet, batch_indices
from saec.runtime.model import SpikingAutoencoder

EVAL_SEED_OFFSET = 7919  # evaluation draws its own encoding noise, independent of training


@dataclass
class EvalResult:
    """Everything one validation pass measured.

    ``metrics`` is JSON-ready; ``latents``/``labels`` (numpy) feed the
    clustering metrics and figures; ``accumulator`` holds per-neuron rates.
    """

    metrics: dict
    latents: np.ndarray | None = None
    labels: np.ndarray | None = None
    accumulator: M.BatchAccumulator | None = None
    per_example_loss: np.ndarray | None = None
    extras: dict = field(default_factory=dict)


@torch.no_grad()
def evaluate(model: SpikingAutoencoder, data: ImageSet, *, batch_size: int = 64, seed: int = 0,
             device: torch.device | str = "cpu", keep_latents: bool = False) -> EvalResult:
    """Run ``model`` over ``data`` in order and measure it.

    L_rec is reported as the mean of batch means (the paper's averaging,
    ``rec_loss``) and per example (``rec_loss_per_example``). Activity metrics
    are computed per batch and averaged over batches, per spiking layer.
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed + EVAL_SEED_OFFSET)
    T = model.timesteps
    acc = M.BatchAccumulator(T) if model.kind == "sae" else None
    losses: list[np.ndarray] = []
    latents: list[np.ndarray] = []
    for idx in batch_indices(len(data), batch_size, shuffle=False):
        x = data.images[idx].to(device)
        out = model(x, generator=gen)
        per_example = ((out.x_hat - x) ** 2).flatten(1).sum(1)
        losses.append(per_example.double().cpu().numpy())
        if acc is not None:
            acc.update({k: v.cpu() for k, v in out.counts.items()})
        if keep_latents and out.latent is not None:
            latents.append(out.latent.flatten(1).double().cpu().numpy())
    model.train(was_training)
    per_example = np.concatenate(losses)
    rec = M.reconstruction_loss_stats(per_example, batch_size)
    metrics: dict = {
        "rec_loss": rec["batch_mean"],
        "rec_loss_per_example": rec["per_example_mean"],
        "examples": int(rec["n_examples"]),
        "batch_size": batch_size,
    }
    if acc is not None:
        result = acc.result()
        metrics["layers"] = {k: v for k, v in result.items() if k != "total"}
        metrics["spikes_per_example"] = result["total"]["spikes_per_example"]
        neurons = sum(acc.neuron_rates(k).size for k in acc.layers)
        metrics["mean_firing_rate"] = float(
            sum(acc.neuron_rates(k).sum() for k in acc.layers) / max(neurons, 1))
    return EvalResult(
        metrics=metrics,
        latents=np.concatenate(latents) if latents else None,
        labels=data.labels.numpy() if keep_latents else None,
        accumulator=acc,
        per_example_loss=per_example,
    )
