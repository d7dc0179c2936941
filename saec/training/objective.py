"""The training objective L = L_rec + l2*L2 + p1*P1 + p2*P2 + a1*A1 (+ beta*KL), from the IR."""

from __future__ import annotations

from torch import Tensor

from saec.training import losses as L
from saec.runtime.model import NetOutput, SpikingAutoencoder


def loss_terms(model: SpikingAutoencoder, out: NetOutput, x: Tensor) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Every active loss term and its weight, as the IR's ``losses`` attribute names them.

    Returns:
        (terms, weights): terms keyed as in :data:`saec.training.losses.TERMS`, scalar tensors;
        weights for every term but ``rec``.
    """
    cfg = model.graph.attrs["losses"]
    T = model.timesteps
    terms: dict[str, Tensor] = {L.RECONSTRUCTION: L.reconstruction_loss(out.x_hat, x)}
    weights: dict[str, float] = {}
    if cfg.get("l2"):
        terms["l2"], weights["l2"] = L.l2_penalty(model.weights()), cfg["l2"]
    per_step = T if cfg.get("potential_per_timestep") else None
    if cfg.get("p1"):
        terms["p1"] = L.potential_penalty_l1([out.u_last[n] for n in cfg["p1"]["layers"]], per_step)
        weights["p1"] = cfg["p1"]["weight"]
    if cfg.get("p2"):
        terms["p2"] = L.potential_penalty_l2([out.u_last[n] for n in cfg["p2"]["layers"]], per_step)
        weights["p2"] = cfg["p2"]["weight"]
    if cfg.get("a1"):
        terms["a1"] = L.activity_penalty([out.counts[n] for n in cfg["a1"]["layers"]], T)
        weights["a1"] = cfg["a1"]["weight"]
    if out.mu is not None and cfg.get("beta"):
        terms["kl"], weights["kl"] = L.kl_divergence(out.mu, out.logvar), cfg["beta"]
    return terms, weights


def objective(model: SpikingAutoencoder, out: NetOutput, x: Tensor) -> tuple[Tensor, dict[str, float]]:
    """(total loss, every term as a float for logging)."""
    terms, weights = loss_terms(model, out, x)
    total = L.total_loss(terms, weights)
    return total, {k: float(v.detach()) for k, v in terms.items()}


def mean_spike_rate(model: SpikingAutoencoder, out: NetOutput) -> float:
    """Spikes per neuron per step over all spiking layers (0 for AE/VAE)."""
    if model.kind != "sae" or not out.counts:
        return 0.0
    spikes = sum(float(c.detach().sum()) for c in out.counts.values())
    neurons = sum(c[0].numel() for c in out.counts.values())
    batch = next(iter(out.counts.values())).shape[0]
    return spikes / (neurons * batch * model.timesteps)
