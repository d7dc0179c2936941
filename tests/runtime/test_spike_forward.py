"""The spike-driven forward as a layer's numerics (``SynapseChoice.forward`` / ``LayerPlan.forward``,
built in for every synapse that reads a spike train): the kernel adds each output's bias and then the
weights of the active inputs in logical input order, so its bits do not depend on the input's layout,
the rows' chunking or the thread count; every path of a model (fast, reference, step by step,
inference) runs it, so they agree spike for spike (tests/runtime/test_plan.py checks the paths under
every plan); the reference path's autograd gets the dense synapse's gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saec.compiler import ops
from saec.compiler.pipeline import compile_spec
from saec.runtime import fastpath, spikedriven
from saec.runtime.execution import Execution
from saec.runtime.kernels import cpu_spike
from saec.runtime.model import SpikingAutoencoder
from saec.runtime.plan import ExecutionPlan, LayerPlan
from tests.runtime.test_spikedriven import CASES, SMALL_SAE, _bound, _dense

needs_c = pytest.mark.skipif(cpu_spike.library() is None, reason="no C compiler: the spike-driven kernel is not built")
SPECS = __import__("pathlib").Path(__file__).resolve().parents[2] / "specs"


@pytest.fixture(autouse=True)
def _keep_thread_count():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _case(case, activity=0.3, seed=7):
    op, w_shape, x_shape = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(w_shape, generator=gen)
    bias = torch.randn(w_shape[1] if isinstance(op, ops.ConvTranspose2d) else w_shape[0], generator=gen)
    x = torch.rand(x_shape, generator=gen) < activity
    return op, weight, bias, x


def _kernel(op, weight, bias, x, chunk=None):
    out = spikedriven.output_rows(op, x.shape[0], tuple(x.shape[1:]), False, None, None, x.device)
    step = chunk or x.shape[0]
    for a in range(0, x.shape[0], step):
        spikedriven.forward_into(op, weight, bias, x[a:a + step], tuple(x.shape[1:]), out[a:a + step])
    return out


@needs_c
@pytest.mark.parametrize("case", list(CASES))
def test_the_same_bits_in_every_layout_chunking_and_thread_count(case):
    op, weight, bias, x = _case(case)
    torch.set_num_threads(1)
    want = _kernel(op, weight, bias, x)
    variants = {"float": x.float(), "uint8": x.to(torch.uint8)}
    if x.dim() == 4:
        variants["channels_last"] = x.contiguous(memory_format=torch.channels_last)
        variants["channels_last_float"] = x.float().contiguous(memory_format=torch.channels_last)
    for threads in (1, 3):
        torch.set_num_threads(threads)
        for name, xv in variants.items():
            assert torch.equal(_kernel(op, weight, bias, xv), want), (name, threads)
        assert torch.equal(_kernel(op, weight, bias, x, chunk=2), want), threads
    dense = _dense(op, x.float(), weight, bias)
    assert ((want - dense).double().abs() <= 2 * _bound(op, x.float(), weight, bias) + 1e-30).all()


@needs_c
def test_the_active_inputs_are_added_in_logical_order():
    """A linear reading a channels-last conv's spikes (memory order is not logical order) on weights
    whose sum depends on the order: the kernel's output is the float32 sum bias, w[i0], w[i1], ... for
    the active inputs in increasing logical index, whatever the layout."""
    op = ops.Linear(in_features=2 * 2 * 3, out_features=1)
    weight = torch.tensor([[1e8, 1.0, 3.0, -1e8, 0.5, 7.0, 1.5, -3.0, 2.0, 0.25, 1e8, 9.0]])
    bias = torch.tensor([0.75])
    spikes = torch.ones(1, 3, 2, 2, dtype=torch.bool)  # [C, H, W]: every input active
    expected = np.float32(bias[0])
    for w in weight[0].numpy():  # logical (row-major C, H, W) order
        expected = np.float32(expected + np.float32(w))
    memory_order = spikes.contiguous(memory_format=torch.channels_last)
    reversed_sum = np.float32(bias[0])
    for i in torch.arange(12).view(3, 2, 2).permute(1, 2, 0).reshape(-1).numpy():  # channels-last order
        reversed_sum = np.float32(reversed_sum + weight[0, i].numpy())
    assert reversed_sum != expected  # the order matters for these weights
    for rows in (spikes, memory_order):
        out = torch.empty(1, 1)
        spikedriven.forward_into(op, weight, bias, rows, (12,), out)
        assert out.item() == expected


@needs_c
@pytest.mark.parametrize("case", ["linear", "conv2d_k5_stride2", "conv_t_k3_stride2_outpad"])
def test_synapse_forward_planned_spike_is_the_kernel_with_the_dense_gradients(case):
    op, weight, bias, x = _case(case)
    spike = fastpath.SynapseChoice(forward="spike")
    xf, w, b = x.float().requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()
    y = fastpath.synapse_forward(op, w, b, xf, spike)
    assert torch.equal(y.detach(), _kernel(op, weight, bias, x))
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(y, (xf, w, b), g)
    xd, wd, bd = x.float().requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()
    want = torch.autograd.grad(_dense(op, xd, wd, bd), (xd, wd, bd), g)
    for name, a, e in zip(("x", "weight", "bias"), got, want):
        assert e.abs().max() > 0, name
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 * e.abs().max().item(), msg=name)


@needs_c
def test_where_the_kernel_does_not_apply_the_dense_forward_runs(monkeypatch):
    op, weight, bias, x = _case("conv2d_k3_pad1")
    spike = fastpath.SynapseChoice(forward="spike")
    dense = fastpath.synapse_forward(op, weight, bias, x.float(), fastpath.SynapseChoice(forward="dense"))
    assert not torch.equal(fastpath.synapse_forward(op, weight, bias, x.float(), spike), dense)  # the kernel's
    with torch.autocast("cpu", dtype=torch.bfloat16):  # low precision asked for: the dense (bf16) synapse
        assert fastpath.synapse_forward(op, weight, bias, x.float(), spike).dtype == torch.bfloat16
    assert fastpath.synapse_forward(op, weight.double(), bias.double(), x.double(), spike).dtype == torch.float64
    monkeypatch.setenv(spikedriven.ENV_SWITCH, "0")
    assert torch.equal(fastpath.synapse_forward(op, weight, bias, x.float(), spike), dense)


def _model(spec_text_or_path, tmp_path):
    if isinstance(spec_text_or_path, str):
        path = tmp_path / "net.yaml"
        path.write_text(spec_text_or_path)
    else:
        path = spec_text_or_path
    _, graph = compile_spec(str(path), [])
    return SpikingAutoencoder(graph)


def test_the_model_plans_the_spike_forward_for_spike_inputs_only(tmp_path):
    sae = _model(SMALL_SAE, tmp_path)
    nodes = list(sae._layer_keys)
    assert {sae.synapse_choice(n).forward for n in nodes} == {"spike"}  # the encoder's or a LIF layer's spikes
    sae.execution = Execution(plan=ExecutionPlan(layers=tuple(
        (key, LayerPlan(forward="dense")) for key in set(sae._layer_keys.values()))))
    assert {sae.synapse_choice(n).forward for n in nodes} == {"dense"}
    for spec in ("ae.yaml", "vae.yaml"):  # no spike trains: dense, whatever a plan says
        net = _model(SPECS / spec, tmp_path)
        net.execution = Execution(plan=ExecutionPlan(layers=tuple(
            (key, LayerPlan(forward="spike")) for key in set(net._layer_keys.values()))))
        assert {net.synapse_choice(n).forward for n in net._layer_keys} == {"dense"}, spec
    with pytest.raises(ValueError, match="forward must be one of dense, spike or null, got 'sparse'"):
        LayerPlan(forward="sparse")
    with pytest.raises(ValueError, match=r"forward must be one of \('dense', 'spike'\), got None"):
        fastpath.SynapseChoice(forward=None)


def test_a_given_input_train_must_hold_only_zeros_and_ones(tmp_path):
    model = _model(SMALL_SAE, tmp_path)
    x = torch.rand(2, 1, 12, 12)
    train = (torch.rand(3, 2, 1, 12, 12) < 0.2).float()
    with torch.no_grad():
        model(x, encoded=train)  # binary: fine
        model.forward_stepwise(x, train)
        for run in (lambda: model(x, encoded=train * 0.5), lambda: model.forward_stepwise(x, train * 2)):
            with pytest.raises(ValueError, match=r"the input spike train \(encoded\) must hold only 0s and 1s"):
                run()


def test_the_plan_prints_each_layers_forward_and_the_planner_never_times_it(tmp_path):
    from saec.runtime import plan as planning

    sae = _model(SMALL_SAE, tmp_path)
    lines = planning.DEFAULT_PLAN.knob_lines(sae.graph, 4)
    assert [line for line in lines if " forward: " in line] == [
        f"{name} forward: spike (default)" for name in ("conv1", "conv2", "latent", "fc_dec", "deconv1", "output")]
    dense = ExecutionPlan(layers=tuple((key, LayerPlan(forward="dense")) for key in set(sae._layer_keys.values())))
    assert "conv2 forward: dense" in dense.knob_lines(sae.graph, 4)
    # a timing must not choose a model's bits: no candidates for the forward algorithm
    assert all("forward" not in knobs for knobs in planning.plan_candidates(sae.graph, 4).values())
