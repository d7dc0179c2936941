"""Spike-driven inference (saec.runtime.spikedriven, the C kernel spike_synapse.c) against the
dense torch ops.

Tolerance: a 1 adds its weight exactly, so the spike-driven current and the dense one are
two fp32 sums of the same terms (the active inputs' weights and the bias) in different
orders (the kernel: input memory order; oneDNN / MKL: blocked). A recursive fp32 sum of k
terms is within (k - 1) u sum|terms| of the exact sum (u = 2^-24, Higham, Accuracy and
Stability, eq. 4.4), so every element is checked against a float64 sum with the bound
k u sum|terms| (k and sum|terms| computed per element with the same op on ones / |weights|),
and against the dense fp32 op with twice that (both may be off by it, in opposite directions).

The whole network: spike-driven and dense inference give identical spikes in every layer on
these seeds (0 positions differ), and their membrane potentials agree to fp32 rounding. A
neuron whose membrane lay within that rounding of its threshold could spike differently
(the test would then name the layer and the count).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from saec.compiler import ops
from saec.compiler.pipeline import compile_spec
from saec.runtime import fastpath, spikedriven
from saec.runtime.execution import Execution
from saec.runtime.kernels import cpu_lif, cpu_spike
from saec.runtime.plan import ExecutionPlan, LayerPlan
from saec.runtime.model import SpikingAutoencoder

needs_c = pytest.mark.skipif(cpu_spike.library() is None, reason="no C compiler: the spike-driven kernel is not built")

U = 2.0 ** -24  # fp32 unit roundoff


def _dense(op, x, weight, bias):
    if isinstance(op, ops.Linear):
        return F.linear(x, weight, bias)
    if isinstance(op, ops.Conv2d):
        return F.conv2d(x, weight, bias, stride=op.stride, padding=op.padding)
    return F.conv_transpose2d(x, weight, bias, stride=op.stride, padding=op.padding,
                              output_padding=op.output_padding)


def _bound(op, x, weight, bias):
    """Per element: (terms summed) x u x sum|terms|, the recursive-summation bound (module docstring)."""
    x64 = x.double()
    ones_b = None if bias is None else torch.ones_like(bias, dtype=torch.float64)
    count = _dense(op, x64, torch.ones_like(weight, dtype=torch.float64), ones_b)
    abs_sum = _dense(op, x64, weight.double().abs(), None if bias is None else bias.double().abs())
    return count.clamp(min=1) * U * abs_sum


# op, weight shape, input shape (odd sizes; stride 2, padding, output padding)
CASES = {
    "linear": (ops.Linear(in_features=37, out_features=11), (11, 37), (6, 37)),
    "conv2d_k3_pad1": (ops.Conv2d(in_channels=3, out_channels=5, kernel_size=(3, 3), padding=(1, 1)),
                       (5, 3, 3, 3), (6, 3, 7, 9)),
    "conv2d_k5_stride2": (ops.Conv2d(in_channels=2, out_channels=7, kernel_size=(5, 5), stride=(2, 2),
                                     padding=(2, 1)), (7, 2, 5, 5), (5, 2, 11, 10)),
    "conv_t_k5_pad1": (ops.ConvTranspose2d(in_channels=3, out_channels=4, kernel_size=(5, 5), padding=(1, 1)),
                       (3, 4, 5, 5), (6, 3, 7, 9)),
    "conv_t_k3_stride2_outpad": (ops.ConvTranspose2d(in_channels=4, out_channels=3, kernel_size=(3, 3),
                                                     stride=(2, 2), padding=(1, 1), output_padding=(1, 0)),
                                 (4, 3, 3, 3), (3, 4, 5, 6)),
    "conv_t_one_channel": (ops.ConvTranspose2d(in_channels=5, out_channels=1, kernel_size=(5, 5)),
                           (5, 1, 5, 5), (4, 5, 6, 6)),
}


@needs_c
@pytest.mark.parametrize("activity", [0.0, 0.02, 0.5, 1.0])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", list(CASES))
def test_spike_driven_current_equals_the_dense_op(case, with_bias, activity):
    op, w_shape, x_shape = CASES[case]
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(w_shape, generator=gen)
    out_channels = w_shape[1] if isinstance(op, ops.ConvTranspose2d) else w_shape[0]
    bias = torch.randn(out_channels, generator=gen) if with_bias else None
    x = (torch.rand(x_shape, generator=gen) < activity).float()
    if 0 < activity < 1:
        assert 0 < x.mean() < 1
    exact = _dense(op, x.double(), weight.double(), None if bias is None else bias.double())
    bound = _bound(op, x, weight, bias)
    with torch.no_grad():
        dense = _dense(op, x, weight, bias)
        for rows in (x, x.bool()):  # float 0/1 spikes and bool spikes
            got = spikedriven.synapse(op, weight, bias, rows, tuple(x_shape[1:]), max_activity=1.0)
            assert got is not None, "the spike-driven kernel did not run"
            assert got.shape == dense.shape and got.dtype == torch.float32
            err = (got.double() - exact).abs()
            assert (err <= bound).all(), f"{case}: {(err - bound).max().item()} over the bound"
            assert ((got - dense).abs().double() <= 2 * bound).all()
    if activity == 0.0:  # nothing active: exactly the bias
        want = torch.zeros_like(dense) if bias is None else torch.zeros_like(dense) + bias.view(
            1, -1, *([1] * (dense.dim() - 2)))
        assert torch.equal(got, want)


@needs_c
def test_input_and_output_layouts_follow_the_dense_path():
    """A linear reading channels-last spikes through a deferred flatten, a conv with a contiguous
    output (for a flatten), a linear handing out its output unflattened channels-last: the
    values are the dense op's on the logically reshaped input, the layouts the dense path's."""
    gen = torch.Generator().manual_seed(4)
    spikes = (torch.rand(6, 3, 5, 7, generator=gen) < 0.1).float().contiguous(memory_format=torch.channels_last)
    lin = ops.Linear(in_features=105, out_features=24)
    w_lin = torch.randn(24, 105, generator=gen)
    flat = spikes.reshape(6, 105)
    with torch.no_grad():
        got = spikedriven.synapse(lin, w_lin, None, spikes, (105,), max_activity=1.0)
        torch.testing.assert_close(got, F.linear(flat, w_lin), rtol=0, atol=105 * U * w_lin.abs().sum(1).max().item())
        assert got.is_contiguous()
        unflat = spikedriven.synapse(lin, w_lin, None, spikes, (105,), out_sample=(6, 2, 2), max_activity=1.0)
        assert unflat.shape == (6, 6, 2, 2) and unflat.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(unflat, got.view(6, 6, 2, 2))
        conv = ops.Conv2d(in_channels=3, out_channels=4, kernel_size=(3, 3))
        w_conv = torch.randn(4, 3, 3, 3, generator=gen)
        last = spikedriven.synapse(conv, w_conv, None, spikes, (3, 5, 7), max_activity=1.0)
        contiguous = spikedriven.synapse(conv, w_conv, None, spikes, (3, 5, 7), contiguous_out=True,
                                         max_activity=1.0)
        assert last.is_contiguous(memory_format=torch.channels_last) and contiguous.is_contiguous()
        assert torch.equal(last, contiguous)
        torch.testing.assert_close(last, F.conv2d(spikes, w_conv), rtol=0, atol=1e-5)
        # a conv reading flat spikes through a deferred unflatten: the flat index in C, H, W order
        flat_source = spikes.contiguous().reshape(6, 105)
        unflattened = spikedriven.synapse(conv, w_conv, None, flat_source, (3, 5, 7), max_activity=1.0)
        torch.testing.assert_close(unflattened, F.conv2d(flat_source.view(6, 3, 5, 7), w_conv), rtol=0, atol=1e-5)


def test_activity_gate_and_switches(monkeypatch):
    op = ops.Linear(in_features=40, out_features=3)
    weight = torch.randn(3, 40, generator=torch.Generator().manual_seed(5))
    busy = torch.zeros(8, 40)
    busy[:, :20] = 1.0  # half the inputs active
    assert spikedriven.input_activity(busy) == 0.5
    with torch.no_grad():
        assert spikedriven.synapse(op, weight, None, busy, (40,)) is None  # above MAX_ACTIVITY: dense
        assert spikedriven.synapse(op, weight, None, busy, (40,), max_activity=0.0) is None  # layer off
        if cpu_spike.library() is not None:
            assert spikedriven.synapse(op, weight, None, busy, (40,), max_activity=1.0) is not None
        monkeypatch.setenv(spikedriven.ENV_SWITCH, "0")
        assert spikedriven.synapse(op, weight, None, busy, (40,), max_activity=1.0) is None
    monkeypatch.delenv(spikedriven.ENV_SWITCH)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # low-precision synapses asked for
        assert spikedriven.synapse(op, weight, None, busy, (40,), max_activity=1.0) is None
    # with autograd (training) the dense synapse always runs
    assert spikedriven.synapse(op, weight.requires_grad_(), None, busy, (40,), max_activity=1.0) is None


def test_execution_rejects_a_non_boolean_switch():
    with pytest.raises(ValueError, match="spike_driven must be True or False, got 'yes'"):
        Execution(spike_driven="yes")


# Input 1x12x12 -> conv 3x3 (4x10x10) -> conv 3x3 (6x8x8) -> flatten -> latent 10 -> 384 ->
# unflatten -> conv-T 3x3 (4x10x10) -> conv-T 3x3 -> 1x12x12: the paper network's layer kinds and
# hand-offs (channels-last conv spikes, a contiguous conv output for the flatten, the decoder's
# linear unflattened channels-last), small.
SMALL_SAE = """\
name: small_sae
kind: sae
latent: latent
input: {shape: [1, 12, 12]}
encoding: {timesteps: 3}
layers:
  - {name: conv1, type: conv2d, out_channels: 4, kernel_size: 3, bias: true}
  - {name: conv2, type: conv2d, out_channels: 6, kernel_size: 3}
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 10}
  - {name: fc_dec, type: linear, out_features: 384, bias: true}
  - {name: unflat, type: unflatten, shape: [6, 8, 8]}
  - {name: deconv1, type: conv_transpose2d, out_channels: 4, kernel_size: 3}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 3}
data: {dataset: mnist5k}
"""
LAYERS = ("conv1", "conv2", "latent", "fc_dec", "deconv1", "output")


def _small_model(tmp_path, seed):
    spec = tmp_path / "small_sae.yaml"
    spec.write_text(SMALL_SAE)
    _, graph = compile_spec(str(spec), [])
    model = SpikingAutoencoder(graph).eval()
    model.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():  # every layer must spike, biases non-zero
        for name, p in model.named_parameters():
            p.mul_(2.5) if name.endswith("weight") else p.uniform_(-0.2, 0.2)
    return model


def _infer(model, x, spike_driven, forward=None):
    """Inference; ``forward``: every layer's planned forward algorithm (None: the built-in, spike-driven)."""
    layers = tuple((key, LayerPlan(forward=forward)) for key in set(model._layer_keys.values()))
    model.execution = Execution(spike_driven=spike_driven, plan=ExecutionPlan(layers=layers))
    with torch.inference_mode():
        return model(x, generator=torch.Generator().manual_seed(1), record=set(LAYERS), record_potentials=True)


@needs_c
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_network_spikes_equal_the_dense_inference(seed, tmp_path, monkeypatch):
    monkeypatch.setattr(spikedriven, "MAX_ACTIVITY", 1.0)  # every layer, whatever its activity
    calls = []
    kernel = cpu_spike.forward

    def counted(op, *args):
        calls.append(type(op).__name__)
        return kernel(op, *args)

    model = _small_model(tmp_path, seed)
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(seed))
    dense = _infer(model, x, spike_driven=False, forward="dense")  # oneDNN / MKL synapses throughout
    monkeypatch.setattr(cpu_spike, "forward", counted)
    driven = _infer(model, x, spike_driven=True, forward="dense")  # the inference shortcut on dense-planned layers
    assert sorted(calls) == sorted(["Conv2d"] * 2 + ["Linear"] * 2 + ["ConvTranspose2d"] * 2)
    differing = {layer: int((driven.trains[layer] != dense.trains[layer]).sum()) for layer in LAYERS}
    assert differing == dict.fromkeys(LAYERS, 0)
    for layer in LAYERS:
        assert dense.trains[layer].any(), layer
        u_d, u_s = driven.potentials[layer], dense.potentials[layer]
        torch.testing.assert_close(u_d, u_s, rtol=1e-5, atol=1e-5 * max(1.0, u_s.abs().max().item()), msg=layer)
    torch.testing.assert_close(driven.x_hat, dense.x_hat, rtol=1e-5, atol=1e-5)


@needs_c
def test_training_forward_runs_the_planned_forward(tmp_path, monkeypatch):
    """The built-in forward of a layer reading spikes is the kernel (the layer's numerics), in training
    too; a plan's "dense" forward keeps the dense synapses."""
    calls = []
    real = cpu_spike.forward
    monkeypatch.setattr(cpu_spike, "forward", lambda *args: calls.append(args[0]) or real(*args))
    model = _small_model(tmp_path, 0).train()
    model(torch.rand(2, 1, 12, 12), generator=torch.Generator().manual_seed(0))
    assert [type(op).__name__ for op in calls] == ["Conv2d", "Conv2d", "Linear", "Linear", "ConvTranspose2d",
                                                   "ConvTranspose2d"]
    calls.clear()
    layers = tuple((key, LayerPlan(forward="dense")) for key in set(model._layer_keys.values()))
    model.execution = Execution(plan=ExecutionPlan(layers=layers))
    model(torch.rand(2, 1, 12, 12), generator=torch.Generator().manual_seed(0))
    assert calls == []


def test_without_a_compiler_inference_falls_back_with_one_warning(tmp_path, monkeypatch):
    cpu_lif.library()  # the LIF scan's kernel as it is (built or not), before the compiler goes away
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SAEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(spikedriven, "MAX_ACTIVITY", 1.0)
    cpu_spike.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="building the C spike-driven synapse kernel failed.*dense synapses"):
            assert cpu_spike.library() is None
        model = _small_model(tmp_path, 0)
        x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second notice
            got = _infer(model, x, spike_driven=True)
        want = _infer(model, x, spike_driven=False)
        for layer in LAYERS:
            assert torch.equal(got.trains[layer], want.trains[layer]), layer
        monkeypatch.delenv("CC")  # no compiler on the path at all
        monkeypatch.setattr(cpu_lif.shutil, "which", lambda name: None)
        cpu_spike.library.cache_clear()
        with pytest.warns(RuntimeWarning, match="no C compiler found; spike-driven inference uses the dense synapses"):
            assert cpu_spike.library() is None
        monkeypatch.setenv("SAEC_NATIVE_KERNELS", "0")
        cpu_spike.library.cache_clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # switched off: no notice
            assert cpu_spike.library() is None
    finally:
        monkeypatch.undo()
        cpu_spike.library.cache_clear()


def test_spike_synapse_passes_the_switch_through(monkeypatch):
    """fastpath.spike_synapse(spike_driven=False) never asks the spike-driven synapse."""
    asked = []
    monkeypatch.setattr(spikedriven, "synapse", lambda *args, **kw: asked.append(args))
    op = ops.Linear(in_features=4, out_features=2)
    x = torch.zeros(1, 3, 4)
    with torch.no_grad():
        fastpath.spike_synapse(op, torch.ones(2, 4), None, x, None, lead_dims=2, spike_driven=False)
        assert asked == []
        fastpath.spike_synapse(op, torch.ones(2, 4), None, x, None, lead_dims=2)
    assert len(asked) == 1


@needs_c
def test_kept_weight_copy_follows_in_place_updates():
    """The rearranged weights are kept between forwards; an optimiser step or a loaded state dict
    (in-place updates) must show in the next forward, a new weight tensor too."""
    op = ops.Linear(in_features=30, out_features=5)
    gen = torch.Generator().manual_seed(6)
    weight = torch.nn.Parameter(torch.randn(5, 30, generator=gen))
    x = (torch.rand(4, 30, generator=gen) < 0.1).float()
    x[:, 0] = 1.0

    def current():
        with torch.no_grad():
            return spikedriven.synapse(op, weight, None, x, (30,), max_activity=1.0)

    first = current()
    assert torch.equal(current(), first)  # kept: the same answer
    with torch.no_grad():
        weight.add_(1.0)  # as an optimiser step does
    moved = current()
    with torch.no_grad():
        torch.testing.assert_close(moved, F.linear(x, weight), rtol=0, atol=1e-5)
        assert not torch.allclose(moved, first)
        weight.copy_(torch.zeros(5, 30))  # as load_state_dict does
        assert torch.equal(current(), torch.zeros(4, 5))
    weight.data = torch.ones(5, 30)  # a new storage
    assert torch.equal(current(), x.sum(1, keepdim=True).expand(4, 5))
