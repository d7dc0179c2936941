"""Loss terms (REFERENCE.md, Losses): hand-computed cases, the /T option, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from saec.training.losses import (
    activity_penalty,
    kl_divergence,
    l2_penalty,
    potential_penalty_l1,
    potential_penalty_l2,
    reconstruction_loss,
    total_loss,
)
from tests.conftest import MNIST_ROOT, needs_mnist_test_set


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# Two examples, two layers of different shapes, shared by P1 and P2.
U_A = [[1.0, -2.0], [0.5, 0.0]]  # [B=2, 2]
U_B = [[[[3.0]]], [[[-1.0]]]]  # [B=2, 1, 1, 1]


# ------------------------------------------------------------------ hand-computed values


def test_reconstruction_loss_hand_computed():
    x_hat = f64([[[1, 0], [0, 0]], [[1, 1], [1, 1]]])
    x = f64([[[0, 0], [0, 0]], [[0, 2], [1, -1]]])
    # example 0: 1; example 1: 1 + 1 + 0 + 4 = 6; batch mean 3.5
    assert reconstruction_loss(x_hat, x).item() == 3.5


def test_reconstruction_loss_rejects_broadcasting():
    with pytest.raises(ValueError, match=r"differ in shape"):
        reconstruction_loss(torch.zeros(2, 1, 28, 28), torch.zeros(2, 784))


def test_l2_penalty_hand_computed():
    weights = [f64([[1, 2], [3, 4]]), f64([-1])]
    assert l2_penalty(weights).item() == 30 + 1
    assert l2_penalty(iter(weights)).item() == 31  # any iterable, e.g. a generator of parameters
    assert l2_penalty([]).item() == 0


def test_potential_penalty_l1_hand_computed():
    U = [f64(U_A), f64(U_B)]
    # example 0: 1 + 2 + 3 = 6; example 1: 0.5 + 0 + 1 = 1.5; mean 3.75
    assert potential_penalty_l1(U).item() == 3.75
    assert potential_penalty_l1(U, timesteps=2).item() == 3.75 / 2


def test_potential_penalty_l2_hand_computed():
    U = [f64(U_A), f64(U_B)]
    # example 0: 1 + 4 + 9 = 14; example 1: 0.25 + 0 + 1 = 1.25; mean 7.625
    assert potential_penalty_l2(U).item() == 7.625
    # reference semantics: (U / T)^2, so T = 2 divides by 4
    assert potential_penalty_l2(U, timesteps=2).item() == 7.625 / 4


def test_activity_penalty_hand_computed():
    counts = [f64([[0, 2, 4], [1, 1, 0]]), f64([[4], [2]])]
    # T = 4: example 0: (0 + 2 + 4 + 4) / 4 = 2.5; example 1: (1 + 1 + 0 + 2) / 4 = 1; mean 1.75
    assert activity_penalty(counts, timesteps=4).item() == 1.75


def test_activity_penalty_from_spike_train_carries_gradient():
    T, B = 4, 2
    spikes = (torch.rand(T, B, 3, generator=torch.Generator().manual_seed(0)) > 0.5).double().requires_grad_()
    a1 = activity_penalty([spikes.sum(0)], timesteps=T)
    assert a1.item() == pytest.approx(spikes.detach().sum().item() / (T * B))
    a1.backward()
    assert torch.all(spikes.grad == 1 / (T * B))


def test_kl_divergence_hand_computed():
    mu = f64([[0, 1], [0, 0]])
    logvar = f64([[0, math.log(2)], [0, 0]])
    # example 0: 0 + (-1/2)(1 + ln 2 - 1 - 2) = 1 - ln(2)/2; example 1: 0; mean (1 - ln(2)/2) / 2
    assert kl_divergence(mu, logvar).item() == pytest.approx((1 - math.log(2) / 2) / 2, abs=1e-15)
    assert kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)).item() == 0


def test_total_loss_hand_computed():
    terms = {"rec": f64(2), "l2": f64(10), "p1": f64(3), "kl": f64(5)}
    # 2 + 0.1 * 10 + 0 * 3 + 0.5 * 5; p2 has weight 0 and need not be computed
    assert total_loss(terms, {"l2": 0.1, "p1": 0.0, "p2": 0.0, "kl": 0.5}).item() == pytest.approx(5.5)
    assert total_loss(terms, {}).item() == 2


def test_total_loss_rejects_mistakes():
    rec = {"rec": torch.tensor(1.0)}
    with pytest.raises(ValueError, match="'p2' has weight 0.01 but was not computed"):
        total_loss(rec, {"p2": 0.01})
    with pytest.raises(ValueError, match="need the reconstruction loss 'rec'"):
        total_loss({"l2": torch.tensor(1.0)}, {})
    with pytest.raises(ValueError, match="weight 1 by definition"):
        total_loss(rec, {"rec": 2.0})
    with pytest.raises(ValueError, match="unknown term 'beta'"):
        total_loss(rec, {"beta": 1.0})
    with pytest.raises(ValueError, match="must be a scalar"):
        total_loss({"rec": torch.ones(2)}, {})


def test_penalties_check_layers_and_timesteps():
    with pytest.raises(ValueError, match="no layers given"):
        potential_penalty_l2([])
    with pytest.raises(ValueError, match="layer 1 has shape \\[3, 2\\], expected batch size 2"):
        potential_penalty_l1([torch.zeros(2, 4), torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="timesteps must be a positive integer"):
        activity_penalty([torch.zeros(2, 4)], timesteps=0)
    with pytest.raises(ValueError, match="timesteps must be a positive integer"):
        potential_penalty_l2([torch.zeros(2, 4)], timesteps=2.0)


# ------------------------------------------------------------------ gradients


def _random(*shape, seed=0, away_from_zero=False):
    t = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    if away_from_zero:  # |.| is not differentiable at 0
        t = t.sign() * (t.abs() + 0.1)
    return t.requires_grad_()


def test_gradcheck_reconstruction_and_kl():
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    assert gradcheck(lambda x_hat: reconstruction_loss(x_hat, x), (_random(3, 1, 4, 4),))
    assert gradcheck(kl_divergence, (_random(3, 5, seed=1), _random(3, 5, seed=2)))


def test_gradcheck_weight_and_potential_penalties():
    a, b = _random(2, 3, seed=3, away_from_zero=True), _random(2, 2, 2, seed=4, away_from_zero=True)
    assert gradcheck(lambda w, v: l2_penalty([w, v]), (a, b))
    for penalty in (potential_penalty_l1, potential_penalty_l2):
        for timesteps in (None, 8):
            assert gradcheck(lambda u, v: penalty([u, v], timesteps), (a, b))


def test_gradcheck_activity_penalty():
    assert gradcheck(lambda c, d: activity_penalty([c, d], 16), (_random(2, 3, seed=5), _random(2, 4, seed=6)))


def test_gradient_of_l2_penalty_is_twice_the_weight():
    w = _random(3, 2, seed=7)
    l2_penalty([w]).backward()
    assert torch.equal(w.grad, 2 * w.detach())


# ------------------------------------------------------------------ the MNIST baseline


@needs_mnist_test_set
def test_all_zero_reconstruction_of_the_mnist_test_set():
    from saec.training.data import iterate_batches, load_images

    test = load_images("mnist", "test", MNIST_ROOT)
    per_image = reconstruction_loss(torch.zeros_like(test.images), test.images).item()
    assert per_image == pytest.approx(89.34, abs=0.01)
    # The paper's number: the mean of batch means, batch 64 (the last batch has 16 images).
    batch_means = [
        reconstruction_loss(torch.zeros_like(images), images).item()
        for images, _ in iterate_batches(test, 64, shuffle=False)
    ]
    assert len(batch_means) == 157
    assert sum(batch_means) / len(batch_means) == pytest.approx(89.46, abs=0.02)
