"""IR -> nn.Module: the whole network against an independent float64 step-by-step reference.

The reference below is written from REFERENCE.md ("One time step", "Readout",
"Gradients", "Losses") with plain torch ops; it reads the semantics from the
dicts in this file, never from saec's op records or LIF kernels. Weights and
inputs are redrawn until no tested potential lies within MARGIN of the
threshold or the lower bound, so float rounding cannot flip a spike.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from saec.compiler.pipeline import compile_spec
from saec.runtime import layerwise
from saec.runtime.lif import lif_scan_autograd
from saec.runtime.model import SpikingAutoencoder
from saec.training.objective import objective
from tests.conftest import SPECS

MARGIN = 1e-4  # potentials this close to the threshold or the floor are redrawn (float32 runs too)
T = 6

# Input 1x8x8 -> conv 3x3 (3x6x6 = 108) -> flatten -> latent 10 -> 108 -> unflatten -> conv-T 3x3 -> 1x8x8.
TINY_SPEC = """\
name: tiny
kind: {kind}
latent: latent
input: {{shape: [1, 8, 8]}}
encoding: {{timesteps: {T}}}
layers:
  - {{name: conv1, type: conv2d, out_channels: 3, kernel_size: 3}}
  - {{name: flat, type: flatten}}
  - {{name: latent, type: linear, out_features: 10}}
  - {{name: fc_dec, type: linear, out_features: 108}}
  - {{name: unflat, type: unflatten, shape: [3, 6, 6]}}
  - {{name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 3}}
regularizers: {regularizers}
training: {{batch_size: 4, epochs: 1}}
data: {{dataset: mnist5k, validation: {{source: split}}}}
"""
SPIKING_LAYERS = ("conv1", "latent", "fc_dec", "output")


def tiny_graph(tmp_path: Path, overrides: list[str] = (), *, kind: str = "sae",
               regularizers: str = "{p2: {weight: 0.01}, a1: {weight: 0.01, layers: [latent]}}"):
    """Compile the tiny network (written to ``tmp_path``) with ``--set`` overrides."""
    path = tmp_path / f"tiny_{kind}.yaml"
    path.write_text(TINY_SPEC.format(kind=kind, T=T, regularizers=regularizers))
    return compile_spec(str(path), list(overrides))


# ---------------------------------------------------------------- the independent reference
# Semantics as REFERENCE.md states them, keyed by preset (plus what a case overrides).
PAPER = dict(spike="ge", floor_mode="clamp", floor_first=False, integrate="potential", grads="paper",
             t_min=0, divide_by_T=False, penalty_per_T=False, linear_std=1.0)
PUBLISHED = dict(spike="gt", floor_mode="revive", floor_first=True, integrate="current", grads="published",
                 t_min=1, divide_by_T=True, penalty_per_T=True, linear_std=2.0)
NEURON = dict(decay=0.99, threshold=1.0, reset="zero", lower_bound=-1.0)
SCALE = 0.2


def _decayed(x, decay, keep_grad):
    """decay * x; in backward decay (paper) or identity (published code)."""
    y = decay * x
    return y if keep_grad else y.detach() + (x - x.detach())


def reference_lif_layer(current, sem):
    """All T steps of one LIF layer, float64, autograd carrying REFERENCE.md's gradient rules.

    Args:
        current: I(1..T) [T, B, ...] float64 (may require grad).
        sem: semantics dict (PAPER / PUBLISHED merged with NEURON and overrides).
    Returns:
        dict of spikes, u, U ([T, B, ...] each) and the smallest distance of a
        tested potential to the threshold or the floor (``margin``), and whether
        the floor rule ever applied (``floored``).
    """
    thr, lb, decay = sem["threshold"], sem["lower_bound"], sem["decay"]
    paper = sem["grads"] == "paper"
    floor_value = None if lb is None else (thr if sem["floor_mode"] == "revive" else lb)
    u_after = torch.zeros_like(current[0])
    U = torch.zeros_like(current[0])
    spikes, us, Us = [], [], []
    margin, floored_any = math.inf, False
    for t in range(current.shape[0]):
        I_t = current[t]
        u = _decayed(u_after, decay, paper) + I_t
        below = (u < lb) if lb is not None else torch.zeros_like(u, dtype=torch.bool)
        if lb is not None:
            margin = min(margin, float((u.detach() - lb).abs().min()))
            floored_any |= bool(below.any())
        if sem["floor_first"] and lb is not None:
            v = torch.where(below, torch.full_like(u, floor_value), u)  # a constant: cuts the gradient
            tested = v[~below]
        else:
            v = u
            tested = v
        if tested.numel():
            margin = min(margin, float((tested.detach() - thr).abs().min()))
        fired = (v >= thr) if sem["spike"] == "ge" else (v > thr)
        H = fired.to(v.dtype)
        if paper:  # straight through: d phi / d v = 1
            phi = H + (v - v.detach())
        else:  # 1/threshold where the neuron spiked, else 0
            g = v * H / thr
            phi = H + (g - g.detach())
        if paper:
            # The reset and the clamp are noise: forward takes the rule's value, backward d u'/d u = 1.
            reset = {"zero": torch.zeros_like(v), "subtract": v - thr, "none": v}[sem["reset"]]
            target = torch.where(fired, reset, v).detach()
            if lb is not None and not sem["floor_first"]:
                target = torch.where(below & ~fired, torch.full_like(v, floor_value), target)
            nxt = target + (v - v.detach())
        else:
            # The published code: reset zero is v * (1 - phi) with phi a constant (cuts the membrane path);
            # subtract keeps gradient 1; the floor selects a constant.
            nxt = {"zero": v * (1 - H), "subtract": v - thr * H, "none": v}[sem["reset"]]
            if lb is not None and not sem["floor_first"]:
                nxt = torch.where(below & ~fired, torch.full_like(v, floor_value), nxt)
        u_after = nxt
        if sem["integrate"] == "potential":
            U = _decayed(U, decay, paper) + u
        else:
            U = _decayed(U + I_t, decay, paper)
        spikes.append(phi)
        us.append(u)
        Us.append(U)
    return dict(spikes=torch.stack(spikes), u=torch.stack(us), U=torch.stack(Us), margin=margin,
                floored=floored_any)


def reference_network(weights, encoded, x, sem, losses):
    """The tiny network, one layer after another, with the loss of REFERENCE.md "Losses".

    Args:
        weights: ``<layer>.weight`` -> float64 tensor (requires grad).
        encoded: the input spike train [T, B, 1, 8, 8], float64.
        x: the target image [B, 1, 8, 8].
        losses: dict(p2=weight, a1=weight); P2 over all four layers, A1 over the latent.
    """
    Tn, B = encoded.shape[:2]
    flat_in = encoded.reshape(Tn * B, 1, 8, 8)
    res = {}
    current = F.conv2d(flat_in, weights["conv1.weight"]).reshape(Tn, B, 3, 6, 6)
    res["conv1"] = reference_lif_layer(current, sem)
    h = res["conv1"]["spikes"].reshape(Tn, B, 108)
    res["latent"] = reference_lif_layer(h @ weights["latent.weight"].T, sem)
    res["fc_dec"] = reference_lif_layer(res["latent"]["spikes"] @ weights["fc_dec.weight"].T, sem)
    h = res["fc_dec"]["spikes"].reshape(Tn * B, 3, 6, 6)
    current = F.conv_transpose2d(h, weights["output.weight"]).reshape(Tn, B, 1, 8, 8)
    res["output"] = reference_lif_layer(current, sem)
    U_out = res["output"]["U"]
    if sem["t_min"] == 0:  # U(0) = 0 takes part: x_hat >= 0
        peak = torch.relu(U_out.max(0).values)
        x_hat = peak / SCALE
    else:
        x_hat = U_out.max(0).values / (Tn * SCALE)
    rec = ((x_hat - x) ** 2).flatten(1).sum(1).mean()
    per_T = Tn if sem["penalty_per_T"] else 1
    p2 = sum(((r["U"][-1] / per_T) ** 2).flatten(1).sum(1) for r in res.values()).mean()
    a1 = (res["latent"]["spikes"].sum(0) / Tn).flatten(1).sum(1).mean()
    loss = rec + losses["p2"] * p2 + losses["a1"] * a1
    margin = min(r["margin"] for r in res.values())
    return res, x_hat, loss, margin


# ---------------------------------------------------------------- cases
CASES = {
    # case: (preset, --set overrides, semantics the reference assumes)
    "paper": ("paper", [], {**PAPER, **NEURON}),
    "reference": ("reference", [], {**PUBLISHED, **NEURON}),
    # The default: the published code without its floor.
    "saec": ("saec", [], {**PUBLISHED, **NEURON, "lower_bound": None}),
    "saec_revive_floor": ("saec", ["neuron.lower_bound=-1", "neuron.lower_bound_mode=revive"],
                          {**PUBLISHED, **NEURON}),
    "paper_subtract": ("paper", ["neuron.reset=subtract"], {**PAPER, **NEURON, "reset": "subtract"}),
    "paper_no_floor": ("paper", ["neuron.lower_bound=null"], {**PAPER, **NEURON, "lower_bound": None}),
    "reference_reset_none": ("reference", ["neuron.reset=none"], {**PUBLISHED, **NEURON, "reset": "none"}),
    "saec_subtract_no_floor_decay": (
        "saec", ["neuron.reset=subtract", "neuron.lower_bound=null", "neuron.decay=0.9", "neuron.threshold=0.8"],
        {**PUBLISHED, **NEURON, "reset": "subtract", "lower_bound": None, "decay": 0.9, "threshold": 0.8}),
    "paper_floor_at_minus_half": ("paper", ["neuron.lower_bound=-0.5"], {**PAPER, **NEURON, "lower_bound": -0.5}),
}
LOSSES = dict(p2=0.01, a1=0.01)


def draw_case(model: SpikingAutoencoder, sem: dict, seed: int, batch: int = 3):
    """Weights, encoded input and target with every tested potential MARGIN away from a boundary."""
    for attempt in range(50):
        gen = torch.Generator().manual_seed(1000 * seed + attempt)
        weights = {}
        for key, w in model.ir_state_dict().items():
            # fan-in: in_features (linear), C_in * k * k (conv: weight [out, in, k, k]; conv-T: [in, out, k, k])
            fan_in = {"conv1": w.shape[1] * 9, "output": w.shape[0] * 9}.get(key.split(".")[0], w.shape[-1])
            # Gain chosen so that every layer fires at a moderate rate and some potentials fall below the floor.
            weights[key] = torch.randn(w.shape, generator=gen, dtype=torch.float64) * 2.2 / math.sqrt(fan_in) + 0.05
        encoded = (torch.rand((T, batch, 1, 8, 8), generator=gen, dtype=torch.float64) < 0.5).double()
        x = torch.rand((batch, 1, 8, 8), generator=gen, dtype=torch.float64)
        with torch.no_grad():
            res, *_ , margin = reference_network(weights, encoded, x, sem, LOSSES)
        rates = [float(res[n]["spikes"].mean()) for n in SPIKING_LAYERS]
        if margin >= MARGIN and all(0.02 < r < 0.98 for r in rates):
            return weights, encoded, x, res
    raise RuntimeError("no draw kept its potentials away from the boundaries")  # pragma: no cover


@pytest.mark.parametrize("case", list(CASES))
def test_whole_network_equals_float64_reference(case, tmp_path):
    preset, overrides, sem = CASES[case]
    _, graph = tiny_graph(tmp_path, [f"preset={preset}", *overrides])
    model = SpikingAutoencoder(graph).double()
    weights, encoded, x, _ = draw_case(model, sem, seed=len(case))
    model.load_ir_state_dict(weights)

    leaves = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    ref, ref_x_hat, ref_loss, _ = reference_network(leaves, encoded, x, sem, LOSSES)
    ref_loss.backward()

    out = model(x, encoded=encoded, record=frozenset(SPIKING_LAYERS), record_potentials=True)
    loss, _ = objective(model, out, x)
    loss.backward()
    for layer in SPIKING_LAYERS:
        assert torch.equal(out.trains[layer], ref[layer]["spikes"].detach()), layer
        torch.testing.assert_close(out.potentials[layer], ref[layer]["u"].detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(out.cumulative[layer], ref[layer]["U"].detach(), rtol=0, atol=1e-12)
    if sem["lower_bound"] is not None:
        assert any(ref[n]["floored"] for n in SPIKING_LAYERS), "the floor rule never applied: a weak test"
    torch.testing.assert_close(out.x_hat, ref_x_hat.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-12, atol=0)
    # Gradients of the whole network: the hand-written LIF backward, the readout and the
    # penalties, against autograd through the reference's straight-through rules.
    for key, leaf in leaves.items():
        got = getattr(model.synapses[key.split(".")[0]], "weight").grad
        assert leaf.grad.abs().sum() > 0, key
        torch.testing.assert_close(got, leaf.grad, rtol=1e-9, atol=1e-12, msg=key)

    # float32 (the training dtype): identical spikes, potentials to float32 precision.
    model32 = SpikingAutoencoder(graph)
    model32.load_ir_state_dict({k: v.float() for k, v in weights.items()})
    with torch.no_grad():
        out32 = model32(x.float(), encoded=encoded.float(), record=frozenset(SPIKING_LAYERS),
                        record_potentials=True)
    for layer in SPIKING_LAYERS:
        assert torch.equal(out32.trains[layer].double(), ref[layer]["spikes"].detach()), layer
        for got, want in ((out32.potentials[layer], ref[layer]["u"]), (out32.cumulative[layer], ref[layer]["U"])):
            torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-5)


def test_presets_change_the_network_output(tmp_path):
    """paper and reference semantics are different networks on the same weights and input."""
    outs = {}
    for preset in ("paper", "reference"):
        _, graph = tiny_graph(tmp_path, [f"preset={preset}"])
        model = SpikingAutoencoder(graph).double()
        sem = CASES[preset][2]
        weights, encoded, x, _ = draw_case(model, sem, seed=3)
        model.load_ir_state_dict(weights)
        outs[preset] = model(x, encoded=encoded).x_hat
    assert not torch.allclose(outs["paper"], outs["reference"])
    # The paper readout includes U(0) = 0; the published one can be negative.
    assert (outs["paper"] >= 0).all()


@pytest.mark.parametrize("case", ["paper", "reference", "saec_subtract_no_floor_decay", "reference_reset_none"])
def test_layerwise_and_stepwise_give_bit_identical_spikes(case, tmp_path):
    preset, overrides, _ = CASES[case]
    _, graph = tiny_graph(tmp_path, [f"preset={preset}", *overrides])
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((5, 1, 8, 8), generator=gen)
    out = model(x, generator=gen, record=frozenset({"_encode", *SPIKING_LAYERS}))
    stepwise = model.forward_stepwise(x, out.encoded)
    assert set(stepwise) == set(SPIKING_LAYERS)
    for layer in SPIKING_LAYERS:
        assert torch.equal(stepwise[layer], out.trains[layer]), layer
    assert sum(float(t.sum()) for t in stepwise.values()) > 0


def test_layerwise_and_stepwise_agree_on_the_paper_network():
    """The full-size SAE-dense network (float32, default init): same spikes both ways."""
    _, graph = compile_spec(str(SPECS / "sae_dense.yaml"), ["encoding.timesteps=4"])
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, 1, 28, 28), generator=gen)
    layers = {"conv1", "conv2", "latent", "fc_dec", "deconv1", "output"}
    with torch.no_grad():
        out = model(x, generator=gen, record=frozenset({"_encode", *layers}))
    stepwise = model.forward_stepwise(x, out.encoded)
    for layer in layers:
        assert torch.equal(stepwise[layer], out.trains[layer]), layer


def test_record_potentials_does_not_change_the_result(tmp_path):
    _, graph = tiny_graph(tmp_path)
    model = SpikingAutoencoder(graph)
    x = torch.rand((3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    plain = model(x, generator=torch.Generator().manual_seed(5))
    recorded = model(x, generator=torch.Generator().manual_seed(5), record=frozenset({"latent"}),
                     record_potentials=True)
    assert torch.equal(plain.x_hat, recorded.x_hat)
    assert set(recorded.potentials) == set(recorded.cumulative) == {"latent"}
    assert recorded.potentials["latent"].shape == (T, 3, 10)
    assert plain.potentials == {} and plain.trains == {}
    # U(T) handed to P2 is the last recorded U.
    assert torch.equal(recorded.u_last["latent"], recorded.cumulative["latent"][-1])


def test_network_gradient_equals_autograd_oracle(tmp_path, monkeypatch):
    """Whole-network gradients with the hand-written LIF backward equal those through saec's
    autograd oracle (surrogates that the float64 reference above does not cover)."""
    for surrogate in ("fast_sigmoid", "arctan", "straight_through"):
        _, graph = tiny_graph(tmp_path, [f"surrogate.type={surrogate}", "surrogate.slope=2.0"])
        model = SpikingAutoencoder(graph).double()
        model.reset_parameters(torch.Generator().manual_seed(2))
        x = torch.rand((3, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        encoded = (torch.rand((T, 3, 1, 8, 8), generator=torch.Generator().manual_seed(1)) < 0.5).double()
        grads = []
        # the fast path with the scan swapped for the autograd oracle (which takes no backend)
        for scan in (layerwise.lif_scan, lambda current, op, backend, **kw: lif_scan_autograd(current, op, **kw)):
            monkeypatch.setattr(layerwise, "lif_scan", scan)
            model.zero_grad()
            out = model(x, encoded=encoded)
            objective(model, out, x)[0].backward()
            grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
        monkeypatch.undo()
        for key in grads[0]:
            assert grads[0][key].abs().sum() > 0, (surrogate, key)
            torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-9, atol=1e-12, msg=f"{surrogate} {key}")


# ---------------------------------------------------------------- parameters and baselines
TABLE2 = {  # paper Table 2: trainable parameters by latent size
    "sae": {10: 282_400, 20: 538_400, 50: 1_306_400, 100: 2_586_400},
    "ae": {10: 295_210, 20: 551_220, 50: 1_319_250, 100: 2_599_300},
    "vae": {10: 423_220, 20: 807_240, 50: 1_959_300, 100: 3_879_400},
}


@pytest.mark.parametrize("nz", [10, 20, 50, 100])
@pytest.mark.parametrize("spec", ["paper/sae.yaml", "ae.yaml", "vae.yaml"])
def test_module_parameter_count_equals_table2(spec, nz):
    _, graph = compile_spec(str(SPECS / spec), [f"layers.latent.out_features={nz}"])
    model = SpikingAutoencoder(graph)
    assert sum(p.numel() for p in model.parameters()) == TABLE2[graph.attrs["kind"]][nz]
    assert set(model.ir_state_dict()) == {f"{n}.{p}" for n in ("conv1", "conv2", "latent", "fc_dec", "deconv1",
                                                               "output") for p in ("weight", "bias")
                                          if p == "weight" or (graph.attrs["kind"] != "sae" and n in (
                                              "latent", "fc_dec"))}


def test_init_follows_eq13_and_the_linear_factor():
    """std = factor * sqrt(2 / fan_in): Eq. 13 for the paper preset, twice that for linear layers in saec."""
    for spec, linear_factor in (("paper/sae_dense.yaml", 1.0), ("sae_dense.yaml", 2.0)):
        _, graph = compile_spec(str(SPECS / spec))
        model = SpikingAutoencoder(graph)
        model.reset_parameters(torch.Generator().manual_seed(0))
        w = model.ir_state_dict()
        for key, fan_in, factor in (("conv2.weight", 16 * 25, 1.0), ("latent.weight", 12800, linear_factor),
                                    ("fc_dec.weight", 100, linear_factor), ("deconv1.weight", 32 * 25, 1.0)):
            want = factor * math.sqrt(2 / fan_in)
            assert abs(float(w[key].std()) / want - 1) < 0.05, (spec, key)


def test_ae_is_a_relu_network_with_linear_biases(tmp_path):
    _, graph = tiny_graph(tmp_path, kind="ae", regularizers="{}")
    model = SpikingAutoencoder(graph).double()
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    sd = model.ir_state_dict()
    assert {k for k in sd if k.endswith(".bias")} == {"latent.bias", "fc_dec.bias"}
    x = torch.rand((4, 1, 8, 8), generator=gen, dtype=torch.float64)
    h = torch.relu(F.conv2d(x, sd["conv1.weight"])).flatten(1)
    z = torch.relu(F.linear(h, sd["latent.weight"], sd["latent.bias"]))
    h = torch.relu(F.linear(z, sd["fc_dec.weight"], sd["fc_dec.bias"])).reshape(4, 3, 6, 6)
    want = torch.relu(F.conv_transpose2d(h, sd["output.weight"]))
    out = model(x)
    torch.testing.assert_close(out.x_hat, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.latent, z, rtol=1e-12, atol=1e-12)
    assert out.mu is None and model.timesteps == 1


def test_vae_reparameterises_and_reports_kl(tmp_path):
    loaded, graph = tiny_graph(tmp_path, kind="vae", regularizers="{l2: 0.01, beta: 0.5}")
    model = SpikingAutoencoder(graph).double()
    sd = model.ir_state_dict()
    assert sd["latent.weight"].shape == (20, 108)  # 2*nz outputs: mu and log-variance
    x = torch.rand((4, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = torch.relu(F.conv2d(x, sd["conv1.weight"])).flatten(1)
    stats = F.linear(h, sd["latent.weight"], sd["latent.bias"])
    mu, logvar = stats[:, :10], stats[:, 10:]
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * eps
    model.train()
    out = model(x, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(out.mu, mu)
    torch.testing.assert_close(out.logvar, logvar)
    torch.testing.assert_close(out.latent, z)
    dec = torch.relu(F.linear(z, sd["fc_dec.weight"], sd["fc_dec.bias"])).reshape(4, 3, 6, 6)
    torch.testing.assert_close(out.x_hat, torch.relu(F.conv_transpose2d(dec, sd["output.weight"])))
    model.eval()
    torch.testing.assert_close(model(x).latent, mu)  # evaluation uses the posterior mean
    _, parts = objective(model, out, x)
    kl = float((-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).sum(1).mean())
    assert parts["kl"] == pytest.approx(kl, rel=1e-12)
    assert parts["l2"] == pytest.approx(float(sum((w ** 2).sum() for k, w in sd.items() if k.endswith("weight"))))


def _smooth_images(n: int, gen: torch.Generator) -> torch.Tensor:
    """Blurry blobs in [0, 1]: learnable by the tiny networks in a few steps."""
    x = torch.rand((n, 1, 8, 8), generator=gen)
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (x - x.amin((2, 3), keepdim=True)) / (x.amax((2, 3), keepdim=True) - x.amin((2, 3), keepdim=True))


TRAINABLE = {
    # The default has no floor; at 2e-2 Adam overshoots it (30 steps end at 0.91 of the first loss; 1e-2: 0.77).
    "sae_saec": ("sae", [], 1e-2),
    "sae_reference": ("sae", ["preset=reference"]),
    "sae_paper": ("sae", ["preset=paper"]),
    # The published code's revive floor, as when this case was written (without it: 0.91 at 1e-2).
    "sae_fast_sigmoid_subtract": ("sae", ["surrogate.type=fast_sigmoid", "surrogate.slope=5.0",
                                          "neuron.reset=subtract", "neuron.lower_bound=-1",
                                          "neuron.lower_bound_mode=revive"]),
    "sae_arctan_no_floor": ("sae", ["surrogate.type=arctan", "surrogate.slope=2.0", "neuron.lower_bound=null"],
                            1e-2),
    "ae": ("ae", []),
    "vae": ("vae", []),
}


@pytest.mark.parametrize("case", list(TRAINABLE))
def test_a_few_steps_lower_the_loss(case, tmp_path):
    kind, overrides, *lr = TRAINABLE[case]
    regs = {"sae": "{p2: {weight: 0.01}, a1: {weight: 0.01, layers: [latent]}}", "ae": "{}",
            "vae": "{l2: 0.0001, beta: 0.01}"}[kind]
    _, graph = tiny_graph(tmp_path, [*overrides, "encoding.timesteps=8"], kind=kind, regularizers=regs)
    torch.manual_seed(0)
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    x = _smooth_images(16, torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=lr[0] if lr else 2e-2)
    losses = []
    for step in range(30):
        # The same encoding noise and VAE sample every step: the loss curve is not noisy.
        out = model(x, generator=torch.Generator().manual_seed(3))
        loss, parts = objective(model, out, x)
        assert set(parts) >= {"rec"} and (kind != "vae" or "kl" in parts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    # Spiking losses are noisy step to step: compare the mean of the last five with the start.
    assert sum(losses[-5:]) / 5 < 0.9 * losses[0], losses
