"""Poisson (Bernoulli rate) encoding, paper Eq. 5-6."""

from __future__ import annotations

import pytest
import torch

from saec.compiler.ops import PoissonEncode
from saec.runtime.encoding import poisson_encode


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shape_dtype_and_binary_values():
    x = torch.rand(3, 1, 4, 4, generator=_gen(1))
    for dtype in (torch.float32, torch.float64):
        s = poisson_encode(x.to(dtype), PoissonEncode(timesteps=7), _gen())
        assert s.shape == (7, 3, 1, 4, 4) and s.dtype == dtype
        assert set(s.unique().tolist()) <= {0.0, 1.0}
        assert not s.requires_grad


def test_mean_rate_is_scale_times_intensity():
    x = torch.rand(4, 50, generator=_gen(1))
    T, s = 4000, 0.3
    rate = poisson_encode(x, PoissonEncode(timesteps=T, scale=s), _gen()).mean(0)
    sigma = (s * x * (1 - s * x) / T).sqrt()  # binomial standard error per pixel
    assert ((rate - s * x).abs() <= 5 * sigma + 1e-6).all()
    assert abs(rate.mean().item() - s * x.mean().item()) < 2e-3


def test_without_noise_the_draws_are_exactly_r_and_reproducible():
    x = torch.rand(2, 6, generator=_gen(1))
    op = PoissonEncode(timesteps=9, scale=0.2)
    a = poisson_encode(x, op, _gen(5))
    assert torch.equal(a, poisson_encode(x, op, _gen(5)))
    r = torch.rand(9, 2, 6, generator=_gen(5))  # documented draw order: r only
    assert torch.equal(a, (0.2 * x > r).float())
    assert not torch.equal(a, poisson_encode(x, op, _gen(6)))


def test_extreme_intensities():
    x = torch.tensor([[0.0, 1.0]])
    s = poisson_encode(x, PoissonEncode(timesteps=50, scale=1.0), _gen())
    assert s[:, 0, 0].sum() == 0  # 0 > r never holds
    assert s[:, 0, 1].sum() == 50  # 1 > r, r in [0, 1), always holds


@pytest.mark.parametrize("resample", ["per_step", "per_batch"])
def test_noise_draw_order_and_mixing(resample):
    x = torch.rand(3, 5, generator=_gen(1))
    op = PoissonEncode(timesteps=6, scale=0.4, noise=0.25, noise_resample=resample)
    got = poisson_encode(x, op, _gen(2))
    g = _gen(2)
    xi = torch.rand((6, 3, 5) if resample == "per_step" else (3, 5), generator=g)
    r = torch.rand(6, 3, 5, generator=g)
    assert torch.equal(got, (((1 - 0.25) * x + 0.25 * xi) * 0.4 > r).float())


def test_per_batch_noise_is_held_over_time_per_step_is_not():
    """With x = 0 and noise 1, x' = xi: held xi gives each pixel its own rate s*xi;
    fresh xi gives every pixel the same rate s/2."""
    x = torch.zeros(8, 100)
    T, s = 400, 0.5
    rates = {}
    for resample in ("per_step", "per_batch"):
        op = PoissonEncode(timesteps=T, scale=s, noise=1.0, noise_resample=resample)
        rates[resample] = poisson_encode(x, op, _gen(3)).mean(0)
    for r in rates.values():
        assert abs(r.mean().item() - s / 2) < 0.01
    # binomial spread only: var = p(1-p)/T ~ 4.7e-4; with held xi add var(s*xi) = s^2/12 ~ 0.021
    assert rates["per_step"].var().item() < 1e-3
    assert rates["per_batch"].var().item() > 0.015
    # held xi: the pixel rate follows its xi, reproduced from the same generator
    xi = torch.rand(8, 100, generator=_gen(3))
    corr = torch.corrcoef(torch.stack([rates["per_batch"].flatten(), xi.flatten()]))[0, 1]
    assert corr > 0.95


def test_encoder_scale_overrides_scale():
    x = torch.rand(3, 40, generator=_gen(1))
    op = PoissonEncode(timesteps=3000, scale=0.2, encoder_scale=0.6)
    assert op.effective_scale == 0.6
    got = poisson_encode(x, op, _gen(4))
    r = torch.rand(3000, 3, 40, generator=_gen(4))
    assert torch.equal(got, (0.6 * x > r).float())
    assert abs(got.mean().item() - 0.6 * x.mean().item()) < 5e-3
    plain = poisson_encode(x, PoissonEncode(timesteps=3000, scale=0.2), _gen(4))
    assert abs(plain.mean().item() - 0.2 * x.mean().item()) < 5e-3


def test_global_generator_when_none_given():
    x = torch.rand(2, 3, generator=_gen(1))
    op = PoissonEncode(timesteps=5)
    torch.manual_seed(11)
    a = poisson_encode(x, op)
    torch.manual_seed(11)
    assert torch.equal(a, poisson_encode(x, op))


def test_invalid_input_is_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        poisson_encode(torch.zeros(2, 3, dtype=torch.uint8), PoissonEncode())
    with pytest.raises(ValueError, match="timesteps"):
        poisson_encode(torch.zeros(2, 3), PoissonEncode(timesteps=0))
