"""Loss terms of the paper (Eq. 1, 9-12), as pure functions on tensors.

Every per-example term is summed over neurons or pixels and then averaged
over the batch, so terms are comparable across batch sizes. The total is

    L = L_rec + l2 * L2 + p1 * P1 + p2 * P2 + a1 * A1 + beta * KL

built by :func:`total_loss` from a dict of terms and a dict of weights, both
keyed by the names in :data:`TERMS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "RECONSTRUCTION",
    "TERMS",
    "activity_penalty",
    "kl_divergence",
    "l2_penalty",
    "potential_penalty_l1",
    "potential_penalty_l2",
    "reconstruction_loss",
    "total_loss",
]

RECONSTRUCTION = "rec"
# Names of the terms, as keys of `total_loss`'s dicts: reconstruction (weight
# 1 by definition), weight L2, potential penalties P1 and P2, activity A1, KL.
TERMS = (RECONSTRUCTION, "l2", "p1", "p2", "a1", "kl")


def reconstruction_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """L_rec: squared error summed over pixels, averaged over the batch.

    An all-zero reconstruction of the MNIST test set scores 89.34.

    Args:
        x_hat: reconstruction [B, ...] (e.g. [B, 1, 28, 28]), pixel intensity.
        x: target, same shape as ``x_hat``, pixels in [0, 1].

    Returns:
        Scalar tensor.
    """
    if x_hat.shape != x.shape:
        # Broadcasting would silently sum over a wrong shape.
        raise ValueError(f"reconstruction_loss: x_hat {list(x_hat.shape)} and x {list(x.shape)} differ in shape")
    return (x_hat - x).square().flatten(1).sum(1).mean()


def l2_penalty(weights: Iterable[Tensor]) -> Tensor:
    """L2: sum of squares of every element of every given weight tensor.

    Args:
        weights: the tensors to penalise (any shapes), e.g. all layers' kernels.

    Returns:
        Scalar tensor (0 for no weights).
    """
    squares = [w.square().sum() for w in weights]
    if not squares:
        return torch.zeros(())
    return torch.stack(squares).sum()


def _per_example_sum(tensors: Sequence[Tensor], name: str) -> Tensor:
    """Sum over all non-batch dims of all layers -> [B]."""
    if len(tensors) == 0:
        raise ValueError(f"{name}: no layers given; name at least one layer or drop the term")
    batch = tensors[0].shape[0]
    total = None
    for index, t in enumerate(tensors):
        if t.ndim < 1 or t.shape[0] != batch:
            raise ValueError(
                f"{name}: layer {index} has shape {list(t.shape)}, expected batch size {batch} in dim 0"
            )
        per_example = t.reshape(batch, -1).sum(1)
        total = per_example if total is None else total + per_example
    return total


def _check_timesteps(timesteps: int | None, name: str, required: bool) -> None:
    if timesteps is None and not required:
        return
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"{name}: timesteps must be a positive integer, got {timesteps!r}")


def potential_penalty_l1(U_last: Sequence[Tensor], timesteps: int | None = None) -> Tensor:
    """P1 = sum_l sum_i |U_li(T)| per example, averaged over the batch.

    Args:
        U_last: per penalised layer, the membrane potential after the last
            time step, [B, ...] (any neuron layout).
        timesteps: None for the printed equation; T to penalise U(T) / T
            instead (``reference`` semantics, the published code).

    Returns:
        Scalar tensor.
    """
    _check_timesteps(timesteps, "potential_penalty_l1", required=False)
    scale = 1.0 if timesteps is None else 1.0 / timesteps
    return _per_example_sum([(u * scale).abs() for u in U_last], "potential_penalty_l1").mean()


def potential_penalty_l2(U_last: Sequence[Tensor], timesteps: int | None = None) -> Tensor:
    """P2 = sum_l sum_i U_li(T)^2 per example, averaged over the batch.

    Args:
        U_last: per penalised layer, the membrane potential after the last
            time step, [B, ...].
        timesteps: None for the printed equation; T to penalise (U(T) / T)^2
            instead (``reference`` semantics, the published code).

    Returns:
        Scalar tensor.
    """
    _check_timesteps(timesteps, "potential_penalty_l2", required=False)
    scale = 1.0 if timesteps is None else 1.0 / timesteps
    return _per_example_sum([(u * scale).square() for u in U_last], "potential_penalty_l2").mean()


def activity_penalty(spike_counts: Sequence[Tensor], timesteps: int) -> Tensor:
    """A1 = sum_l sum_i (1/T) sum_t phi_li(t) per example, averaged over the batch.

    Takes spike *counts*, not spike trains, so a step-by-step loop can
    accumulate them without keeping every time step. Compute them inside
    autograd (``spikes.sum(0)`` of a [T, B, ...] train, or a running sum) so
    the surrogate gradients of the spikes reach the network.

    Args:
        spike_counts: per penalised layer, spikes per neuron summed over the
            T time steps, [B, ...] (float, values in 0..T).
        timesteps: T, the number of time steps the counts cover.

    Returns:
        Scalar tensor: mean over examples of the summed firing rates.
    """
    _check_timesteps(timesteps, "activity_penalty", required=True)
    return _per_example_sum(list(spike_counts), "activity_penalty").mean() / timesteps


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) summed over latent dims, averaged over the batch.

    KL = -1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j)).

    Args:
        mu: posterior means [B, D] (or [B, ...]).
        logvar: posterior log-variances, same shape as ``mu``.

    Returns:
        Scalar tensor.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"kl_divergence: mu {list(mu.shape)} and logvar {list(logvar.shape)} differ in shape")
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp())).flatten(1).sum(1).mean()


def total_loss(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """L = L_rec + sum over weighted terms of weight * term.

    Args:
        terms: scalar tensors keyed by :data:`TERMS` names; ``"rec"`` is
            required. Terms without a non-zero weight are ignored (they may be
            there for logging).
        weights: coefficient per term name (``l2``, ``p1``, ``p2``, ``a1``,
            ``kl`` for beta); zero weights are skipped, so their terms need
            not be computed. ``"rec"`` may not be weighted (its weight is 1).

    Returns:
        Scalar tensor.

    Raises:
        ValueError: ``rec`` missing or weighted, an unknown name, a weighted
            term missing, a non-scalar term, a non-finite weight.
    """
    if RECONSTRUCTION not in terms:
        raise ValueError(f"total_loss: terms need the reconstruction loss {RECONSTRUCTION!r}, got {sorted(terms)}")
    if RECONSTRUCTION in weights:
        raise ValueError(f"total_loss: {RECONSTRUCTION!r} has weight 1 by definition; remove it from the weights")
    for name in (*terms, *weights):
        if name not in TERMS:
            raise ValueError(f"total_loss: unknown term {name!r}; known terms are {', '.join(TERMS)}")

    loss = _scalar(terms[RECONSTRUCTION], RECONSTRUCTION)
    for name, weight in weights.items():
        if not math.isfinite(weight):
            raise ValueError(f"total_loss: weight of {name!r} is {weight}")
        if weight == 0:
            continue
        if name not in terms:
            raise ValueError(f"total_loss: {name!r} has weight {weight} but was not computed")
        loss = loss + weight * _scalar(terms[name], name)
    return loss


def _scalar(term: Tensor, name: str) -> Tensor:
    if term.ndim != 0:
        raise ValueError(f"total_loss: term {name!r} must be a scalar, got shape {list(term.shape)}")
    return term
