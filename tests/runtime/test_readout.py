"""Max-over-time readout of the cumulative potential, paper Eq. 8."""

from __future__ import annotations

import pytest
import torch

from saec.compiler.ops import MaxCumulativeReadout
from saec.runtime.readout import max_cumulative_readout

# U(1..4) for three output neurons (B = 1): columns are neurons
U = torch.tensor([
    [-0.5, 0.2, 0.3],
    [-0.2, 0.8, 0.3],
    [-0.9, 0.8, 0.1],
    [-0.4, 0.1, 0.3],
], dtype=torch.float64).unsqueeze(1)  # [T=4, B=1, 3]


def _readout_and_grad(op: MaxCumulativeReadout, U_all: torch.Tensor = U):
    U_all = U_all.clone().requires_grad_()
    x_hat = max_cumulative_readout(U_all, op)
    (g,) = torch.autograd.grad(x_hat.sum(), U_all)
    return x_hat.detach(), g


def test_reference_readout_divides_by_T_times_scale_and_can_be_negative():
    op = MaxCumulativeReadout(scale=0.2, t_min=1, divide_by_timesteps=True)
    x_hat, g = _readout_and_grad(op)
    assert x_hat.shape == (1, 3)
    torch.testing.assert_close(x_hat, torch.tensor([[-0.2, 0.8, 0.3]], dtype=torch.float64) / 0.8)
    # gradient reaches one step per neuron: the first maximal one
    want = torch.zeros_like(U)
    want[1, 0, 0] = want[1, 0, 1] = want[0, 0, 2] = 1 / 0.8
    torch.testing.assert_close(g, want)


def test_paper_readout_includes_U0_and_divides_by_scale():
    op = MaxCumulativeReadout(scale=0.2, t_min=0, divide_by_timesteps=False)
    x_hat, g = _readout_and_grad(op)
    torch.testing.assert_close(x_hat, torch.tensor([[0.0, 0.8, 0.3]], dtype=torch.float64) / 0.2)
    want = torch.zeros_like(U)
    want[1, 0, 1] = want[0, 0, 2] = 1 / 0.2  # neuron 0: U(0) = 0 wins, no gradient
    torch.testing.assert_close(g, want)


def test_tie_with_U0_gives_zero_and_no_gradient():
    U_all = torch.tensor([[0.0], [-1.0], [0.0]], dtype=torch.float64).unsqueeze(1)
    x_hat, g = _readout_and_grad(MaxCumulativeReadout(t_min=0), U_all)
    assert x_hat.item() == 0.0
    assert torch.count_nonzero(g) == 0
    # with t_min = 1 the tie between t = 1 and t = 3 goes to t = 1
    x_hat, g = _readout_and_grad(MaxCumulativeReadout(t_min=1), U_all)
    assert x_hat.item() == 0.0
    assert g.flatten().tolist() == pytest.approx([1 / (3 * 0.2), 0.0, 0.0])


def test_t_min_excludes_earlier_steps():
    op = MaxCumulativeReadout(scale=1.0, t_min=3, divide_by_timesteps=False)
    x_hat, g = _readout_and_grad(op)
    torch.testing.assert_close(x_hat, torch.tensor([[-0.4, 0.8, 0.3]], dtype=torch.float64))
    assert g[:2].abs().sum() == 0
    assert g[2, 0, 1] == 1 and g[3, 0, 0] == 1 and g[3, 0, 2] == 1


def test_timesteps_come_from_the_tensor():
    op = MaxCumulativeReadout(scale=0.5, t_min=1, divide_by_timesteps=True)
    U_all = torch.ones(10, 2, 1, 3, 3)
    assert torch.equal(max_cumulative_readout(U_all, op), torch.full((2, 1, 3, 3), 1 / 5))


def test_invalid_t_min_and_shape_are_rejected():
    with pytest.raises(ValueError, match="t_min"):
        max_cumulative_readout(U, MaxCumulativeReadout(t_min=5))
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        max_cumulative_readout(torch.zeros(4), MaxCumulativeReadout())


def test_first_argmax_equals_torch_argmax_with_ties():
    from saec.runtime.readout import _first_argmax

    gen = torch.Generator().manual_seed(2)
    U = torch.randint(0, 3, (9, 40, 3, 5), generator=gen).float()  # many ties
    assert torch.equal(_first_argmax(U), U.argmax(dim=0, keepdim=True))
    assert torch.equal(_first_argmax(U[:1]), torch.zeros(1, 40, 3, 5, dtype=torch.int64))
