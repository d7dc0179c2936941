"""The training objective is wired from the IR: each term over the layers the spec names, hand-checked."""

from __future__ import annotations

import math

import pytest
import torch

from saec.runtime.model import NetOutput, SpikingAutoencoder
from saec.training.objective import loss_terms, mean_spike_rate, objective
from tests.runtime.test_model import tiny_graph

T = 4  # tiny_graph's timesteps are overridden to this below
REGULARIZERS = ("{l2: 0.1, p1: {weight: 0.2, layers: [conv1]}, p2: {weight: 0.3, layers: [latent, output]}, "
                "a1: {weight: 0.4, layers: [latent]}}")


def _constant_weights(model: SpikingAutoencoder, latent_rows: int = 10) -> float:
    """conv weights 0.5, linear weights 0.1; returns L2 by hand."""
    with torch.no_grad():
        for name, p in model.synapses.items():
            p.weight.fill_(0.5 if name in ("conv1", "output") else 0.1)
    # conv1 [3,1,3,3] and output [3,1,3,3]: 27 * 0.25 each; latent [latent_rows,108] and fc_dec [108,10]
    return 2 * 27 * 0.25 + latent_rows * 108 * 0.01 + 1080 * 0.01


def _hand_output() -> NetOutput:
    """A fabricated forward result for a batch of 2 (x = 0) with numbers easy to sum by hand."""
    x_hat = torch.zeros(2, 1, 8, 8)
    x_hat[0, 0, 0, 0] = 1.0  # example 0: L_rec 1
    x_hat[1, 0, 1, 1] = 2.0  # example 1: L_rec 4 + 4 = 8
    x_hat[1, 0, 2, 2] = -2.0
    u_last = {name: torch.zeros(2, *shape) for name, shape in
              (("conv1", (3, 6, 6)), ("latent", (10,)), ("fc_dec", (108,)), ("output", (1, 8, 8)))}
    u_last["conv1"][0, 1, 2, 3] = -3.0  # |U| per example: 3, 1
    u_last["conv1"][1, 0, 0, 0] = 1.0
    u_last["latent"][0, 4] = 2.0  # U^2 per example: 4, 16 (with the output layer)
    u_last["output"][1, 0, 5, 5] = -4.0
    u_last["fc_dec"].fill_(100.0)  # not named by any term: must not count
    counts = {name: torch.zeros_like(u) for name, u in u_last.items()}
    counts["latent"][0, 0], counts["latent"][0, 7] = 4.0, 2.0  # 6 spikes in example 0, none in example 1
    counts["conv1"].fill_(3.0)  # not named by A1
    return NetOutput(x_hat=x_hat, counts=counts, u_last=u_last)


@pytest.mark.parametrize("per_timestep", [True, False])
def test_every_term_by_hand(per_timestep, tmp_path):
    _, graph = tiny_graph(tmp_path, [f"encoding.timesteps={T}",
                                     f"regularizers.potential_per_timestep={str(per_timestep).lower()}"],
                          regularizers=REGULARIZERS)
    model = SpikingAutoencoder(graph)
    l2 = _constant_weights(model)
    terms, weights = loss_terms(model, _hand_output(), torch.zeros(2, 1, 8, 8))
    d = T if per_timestep else 1
    want = {
        "rec": (1 + 8) / 2,
        "l2": l2,
        "p1": (3 / d + 1 / d) / 2,
        "p2": ((2 / d) ** 2 + (4 / d) ** 2) / 2,
        "a1": (6 / T + 0) / 2,
    }
    assert set(terms) == set(want)
    for name, value in want.items():
        assert float(terms[name].detach()) == pytest.approx(value, rel=1e-6), name
    assert weights == {"l2": 0.1, "p1": 0.2, "p2": 0.3, "a1": 0.4}
    total, parts = objective(model, _hand_output(), torch.zeros(2, 1, 8, 8))
    assert float(total.detach()) == pytest.approx(want["rec"] + 0.1 * l2 + 0.2 * want["p1"] + 0.3 * want["p2"]
                                         + 0.4 * want["a1"], rel=1e-6)
    assert parts == pytest.approx(want, rel=1e-6)
    # The same numbers written out for T = 4 with U(T)/T: 4.5 + 3.51 + 0.1 + 0.1875 + 0.3.
    if per_timestep:
        assert float(total.detach()) == pytest.approx(8.5975, rel=1e-6)


def test_presets_choose_the_potential_penalty_scale(tmp_path):
    """reference / saec penalise U(T)/T, the paper's printed equations U(T)."""
    for preset, divided in (("reference", True), ("saec", True), ("paper", False)):
        _, graph = tiny_graph(tmp_path, [f"preset={preset}", f"encoding.timesteps={T}"],
                              regularizers=REGULARIZERS)
        terms, _ = loss_terms(SpikingAutoencoder(graph), _hand_output(), torch.zeros(2, 1, 8, 8))
        assert float(terms["p2"]) == pytest.approx(10.0 / (T * T if divided else 1)), preset


def test_unnamed_penalty_covers_every_spiking_layer_and_zero_weights_drop_terms(tmp_path):
    _, graph = tiny_graph(tmp_path, [f"encoding.timesteps={T}", "regularizers.potential_per_timestep=false"],
                          regularizers="{p2: {weight: 1.0}, p1: {weight: 0.0}}")
    model = SpikingAutoencoder(graph)
    assert model.u_last_layers == {"conv1", "latent", "fc_dec", "output"}
    terms, weights = loss_terms(model, _hand_output(), torch.zeros(2, 1, 8, 8))
    assert set(terms) == {"rec", "p2"} and weights == {"p2": 1.0}
    # per example: conv1 9 + latent 4 and conv1 1 + output 16, plus fc_dec's 108 * 100^2 in both
    assert float(terms["p2"]) == pytest.approx((9 + 4 + 1 + 16) / 2 + 108 * 100.0 ** 2)


def test_real_forward_hands_the_objective_what_it_needs(tmp_path):
    """U(T) is kept only for the layers P1/P2 name; counts of every layer; gradients reach every weight."""
    _, graph = tiny_graph(tmp_path, [f"encoding.timesteps={T}"], regularizers=REGULARIZERS)
    model = SpikingAutoencoder(graph)
    assert model.u_last_layers == {"conv1", "latent", "output"}
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = model(x, generator=torch.Generator().manual_seed(1), record=frozenset({"latent"}),
                record_potentials=True)
    assert set(out.u_last) == {"conv1", "latent", "output"}
    assert set(out.counts) == {"conv1", "latent", "fc_dec", "output"}
    total, parts = objective(model, out, x)
    a1 = float(out.trains["latent"].sum(0).sum(1).mean().detach()) / T
    p2 = float(sum((out.u_last[n] / T).square().flatten(1).sum(1) for n in ("latent", "output")).mean().detach())
    assert parts["a1"] == pytest.approx(a1, rel=1e-6)
    assert parts["p2"] == pytest.approx(p2, rel=1e-5)
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_vae_kl_and_l2_by_hand(tmp_path):
    _, graph = tiny_graph(tmp_path, kind="vae", regularizers="{l2: 0.1, beta: 0.5}")
    model = SpikingAutoencoder(graph)
    l2 = _constant_weights(model, latent_rows=20)  # mu and log-variance: 2 * nz rows
    with torch.no_grad():
        model.synapses["latent"].bias.fill_(7.0)  # biases are not in L2
    mu = torch.zeros(2, 10)
    logvar = torch.zeros(2, 10)
    mu[0, 0] = 1.0  # example 0: KL 1/2
    logvar[1, 3] = math.log(2.0)  # example 1: KL -1/2 (1 + ln 2 - 2)
    out = NetOutput(x_hat=torch.zeros(2, 1, 8, 8), mu=mu, logvar=logvar)
    terms, weights = loss_terms(model, out, torch.zeros(2, 1, 8, 8))
    kl = (0.5 + 0.5 * (1 - math.log(2.0))) / 2
    assert float(terms["kl"]) == pytest.approx(kl, rel=1e-6)
    assert float(terms["l2"].detach()) == pytest.approx(l2, rel=1e-6)
    assert weights == {"l2": 0.1, "kl": 0.5}
    total, _ = objective(model, out, torch.zeros(2, 1, 8, 8))
    assert float(total.detach()) == pytest.approx(0.1 * l2 + 0.5 * kl, rel=1e-6)


def test_ae_has_only_the_reconstruction_term(tmp_path):
    _, graph = tiny_graph(tmp_path, kind="ae", regularizers="{}")
    model = SpikingAutoencoder(graph)
    terms, weights = loss_terms(model, NetOutput(x_hat=torch.ones(2, 1, 8, 8)), torch.zeros(2, 1, 8, 8))
    assert set(terms) == {"rec"} and weights == {}
    assert float(terms["rec"]) == 64.0
    assert mean_spike_rate(model, NetOutput(x_hat=torch.ones(1))) == 0.0


def test_mean_spike_rate_by_hand(tmp_path):
    _, graph = tiny_graph(tmp_path, [f"encoding.timesteps={T}"])
    model = SpikingAutoencoder(graph)
    out = _hand_output()
    # conv1: 3 spikes per neuron (108 * 2 * 3 = 648) plus latent's 6 spikes; the other two layers none.
    neurons = 108 + 10 + 108 + 64
    assert mean_spike_rate(model, out) == pytest.approx((648 + 6) / (neurons * 2 * T))
