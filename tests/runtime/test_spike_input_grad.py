"""The input gradient at the active inputs only (spike_synapse.c's input-gradient kernel,
cpu_spike.input_grad, and its use in the fast path's backward for a synapse whose producer is a
``spike_gated`` LIF layer) against the dense input gradient.

Why it is enough: a ``spike_gated`` LIF layer's surrogate d phi / d v is zero wherever the neuron did
not fire, so its backward reads the gradient of its spikes only where they are 1 (tested below, for
the C scan and the torch-op scan). There the kernel computes the dot product of the input's weights
with the output-gradient window they reach, the same terms w * g as the dense transposed product,
summed in another order; everywhere else it writes 0.

Tolerance: each product w * g rounds once (relative u = 2^-24) and a sum of k rounded products is
within (k + 1) u sum|w g| of the exact sum (Higham, Accuracy and Stability, eq. 3.4 with the
products' rounding); the kernel's interleaved partial sums are one such summation (its tree has
depth below k + lanes), so the bound used is (k + 16 + 1) u sum|w g|, k the terms per input (kernel
taps x out channels, or a linear's out features), against a float64 input gradient of the same fp32
values; against the dense fp32 gradient twice that.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from saec.compiler import ops
from saec.runtime import fastpath, spikedriven
from saec.runtime.execution import Execution
from saec.runtime.kernels import cpu_spike
from saec.runtime.lif import lif_scan
from saec.runtime.plan import ExecutionPlan, LayerPlan
from saec.training.objective import objective
from tests.runtime.test_spike_weight_grad import (BACKWARD_CASES, CASES, U, _backward_case, _case_tensors,
                                                  _dense_forward, _small_model, count_rows)
from tests.runtime.test_spike_weight_grad import _step as _training_step
from tests.runtime.test_spikedriven import LAYERS

needs_c = pytest.mark.skipif(cpu_spike.library() is None, reason="no C compiler: the spike-driven kernel is not built")

LANES = 16  # spike_synapse.c DOT_LANES


@pytest.fixture(autouse=True)
def _keep_thread_count():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _input_grad64(op, x, weight, g):
    """dx of sum(g * op(x)) in float64 (every input, active or not)."""
    xd = x.double().requires_grad_()
    (dx,) = torch.autograd.grad(_dense_forward(op, xd, weight.double()), xd, g.double())
    return dx


def _terms(op, weight, g):
    """Products summed per input: a linear's out features, a convolution's taps x out channels."""
    if isinstance(op, ops.Linear):
        return g.shape[1]
    return math.prod(op.kernel_size) * g.shape[1]


def _bound(op, x, weight, g):
    """(k + lanes + 1) u sum|w g| per input (module docstring)."""
    return (_terms(op, weight, g) + LANES + 1) * U * _input_grad64(op, x, weight.abs(), g.abs()) + 1e-30


def _kernel_dx(op, x, g, weight, chunks):
    if g.dim() == 4:
        g = g.contiguous(memory_format=torch.channels_last)
    dx = torch.full(x.shape, float("nan")).as_strided(x.shape, x.stride())  # x's layout, every value overwritten
    wt = cpu_spike.arranged_weight(op, weight)
    for a, b in chunks:
        assert cpu_spike.input_grad(op, x[a:b], g[a:b], tuple(x.shape[1:]), wt, dx[a:b])
    return dx


# ---------------------------------------------------------------- the kernel
@needs_c
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activity", [0.0, 0.02, 0.3, 1.0])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_input_gradient_equals_the_dense_one_at_the_active_inputs(case, activity, layout, threads):
    torch.set_num_threads(threads)
    op, weight, x, g = _case_tensors(case, activity)
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    n = x.shape[0]
    got = _kernel_dx(op, x, g, weight, [(a, min(a + 4, n)) for a in range(0, n, 4)])
    assert not got.isnan().any()
    assert torch.equal(got[~x], torch.zeros_like(got[~x]))  # nothing but 0 where the input is 0
    exact = _input_grad64(op, x.float(), weight, g)
    bound = _bound(op, x.float(), weight, g)
    assert ((got.double() - exact).abs()[x] <= bound[x]).all()
    if activity == 0.0:
        return
    assert exact[x].abs().max() > 0  # the comparison means something
    xf = x.float().requires_grad_()
    (dense32,) = torch.autograd.grad(_dense_forward(op, xf, weight), xf, g)
    assert ((got - dense32).double().abs()[x] <= 2 * bound[x]).all()


@needs_c
def test_kernel_reads_float_spikes_as_bool_ones():
    op, weight, x, g = _case_tensors("conv_t_stride2_outpad", 0.1)
    want = _kernel_dx(op, x, g, weight, [(0, x.shape[0])])
    got = _kernel_dx(op, x.float(), g, weight, [(0, x.shape[0])])
    assert torch.equal(got, want) and want.abs().max() > 0


@needs_c
def test_kernel_refuses_tensors_in_another_layout():
    op, weight, x, g = _case_tensors("conv2d_k3", 0.3)
    g_cl = g.contiguous(memory_format=torch.channels_last)
    wt = cpu_spike.arranged_weight(op, weight)
    sample = tuple(x.shape[1:])
    with pytest.raises(ValueError, match=r"output gradient rows must be float32 \[9, \.\.\.\] with out channels"):
        cpu_spike.input_grad(op, x, g.contiguous(), sample, wt, torch.empty(x.shape))
    with pytest.raises(ValueError, match=r"dx must be float32 with x's shape and strides"):
        cpu_spike.input_grad(op, x, g_cl, sample, wt,
                             torch.empty(x.shape).contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match=r"wt must be the arranged float32 weights, got \(5, 3, 3, 3\)"):
        cpu_spike.input_grad(op, x, g_cl, sample, weight, torch.empty(x.shape))


# ---------------------------------------------------------------- the premise: a spike_gated layer's backward
@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("op", [ops.LIF(surrogate="spike_gated", decay=0.9),
                                ops.LIF(surrogate="spike_gated", reset="subtract", lower_bound=-0.5,
                                        clamp_first=True, clamp_grad="cut")],
                         ids=["default", "floor_first_subtract"])
def test_a_spike_gated_layer_reads_its_spike_gradient_only_where_it_fired(op, backend):
    gen = torch.Generator().manual_seed(4)
    current = (torch.randn(6, 5, 40, generator=gen) * 0.8 + 0.3).requires_grad_()
    res = lif_scan(current, op, counts=True, bool_spikes=True, backend=backend)
    assert 0 < res.fired.float().mean() < 0.5
    g_spikes = torch.randn(res.spikes.shape, generator=gen)
    g_counts = torch.randn(res.counts.shape, generator=gen)
    (full,) = torch.autograd.grad((res.spikes, res.counts), current, (g_spikes, g_counts), retain_graph=True)
    (masked,) = torch.autograd.grad((res.spikes, res.counts), current, (g_spikes * res.fired, g_counts))
    assert full.abs().max() > 0
    assert torch.equal(full, masked)


# ---------------------------------------------------------------- the fast path's backward
@pytest.fixture
def input_kernel_calls(monkeypatch):
    return count_rows(monkeypatch, "input_grad")


def _step(op, weight, x_source, sample, choice, *, gated_input, contiguous_out=False, out_sample=None):
    """One forward and backward of fastpath.spike_synapse (output gradient randn, seed 5): (y, dW, dx)."""
    x = x_source.float().requires_grad_()
    w = weight.clone().requires_grad_()
    y = fastpath.spike_synapse(op, w, None, x, x_source, lead_dims=1, sample=sample, contiguous_out=contiguous_out,
                               out_sample=out_sample, choice=choice, gated_input=gated_input)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(5)))
    return y.detach(), w.grad, x.grad


@needs_c
@pytest.mark.parametrize("chunk_rows", [None, 64], ids=["one_chunk", "64_row_chunks"])
@pytest.mark.parametrize("case", list(BACKWARD_CASES))
def test_backward_with_the_input_gradient_at_the_active_inputs(case, chunk_rows, input_kernel_calls):
    """Forward and dW bit-identical; dx 0 where the input is 0 and within the bound of the dense dx elsewhere,
    in the producer's layout."""
    op, weight, x, sample, options = _backward_case(case)
    layout = {"channels_last": options.pop("channels_last", True)}
    choice = dict(chunk_rows=chunk_rows, weight_grad="dense", **layout)
    dense = _step(op, weight, x, sample, fastpath.SynapseChoice(input_grad="dense", **choice), gated_input=True,
                  **options)
    assert input_kernel_calls == []
    spike = _step(op, weight, x, sample, fastpath.SynapseChoice(input_grad="spike", **choice), gated_input=True,
                  **options)
    assert input_kernel_calls == ([150] if chunk_rows is None else [75, 75])
    assert torch.equal(spike[0], dense[0]) and torch.equal(spike[1], dense[1])
    assert spike[2].stride() == dense[2].stride() == x.float().stride()
    assert torch.equal(spike[2][~x], torch.zeros_like(spike[2][~x]))
    assert dense[2][~x].abs().max() > 0  # the dense gradient is not 0 there: the kernel's zeros are its own
    g = torch.randn(spike[0].shape, generator=torch.Generator().manual_seed(5))
    if isinstance(op, ops.Linear):
        g = g.reshape(150, -1)  # an unflattened output's gradient, in feature order
    rows = x.reshape(150, *sample).float()
    bound = _bound(op, rows, weight, g).reshape(x.shape)
    assert ((spike[2] - dense[2]).double().abs()[x] <= 2 * bound[x]).all()


@needs_c
def test_without_a_gated_producer_or_with_the_switches_the_dense_input_gradient_runs(monkeypatch,
                                                                                     input_kernel_calls):
    op, weight, x, sample, _ = _backward_case("conv2d")
    spike = fastpath.SynapseChoice(input_grad="spike")
    dense = _step(op, weight, x, sample, fastpath.SynapseChoice(input_grad="dense"), gated_input=True)
    ungated = _step(op, weight, x, sample, spike, gated_input=False)
    assert input_kernel_calls == [] and torch.equal(ungated[2], dense[2])
    monkeypatch.setenv(spikedriven.ENV_SWITCH, "0")
    switched = _step(op, weight, x, sample, spike, gated_input=True)
    assert input_kernel_calls == [] and torch.equal(switched[2], dense[2])
    monkeypatch.delenv(spikedriven.ENV_SWITCH)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 backward: dense
        _step(op, weight, x, sample, spike, gated_input=True)
    assert input_kernel_calls == []


@needs_c
def test_the_built_in_choice_follows_the_input_activity(input_kernel_calls):
    op, weight, _, sample, _ = _backward_case("conv2d")
    for activity, driven in ((0.02, True), (spikedriven.INPUT_GRAD_MAX_ACTIVITY * 3, False)):
        input_kernel_calls.clear()
        _, _, x, _, _ = _backward_case("conv2d", activity)
        _step(op, weight, x, sample, fastpath.DEFAULT_CHOICE, gated_input=True)
        assert bool(input_kernel_calls) == driven, activity


# ---------------------------------------------------------------- a whole training step
def _model_step(model, x, input_grad):
    return _training_step(model, x, None, input_grad)  # the weight gradients by activity, as built in


@needs_c
def test_a_training_step_is_unchanged_but_for_the_input_gradients_rounding(tmp_path, input_kernel_calls):
    """Spikes and loss bit-identical; the parameter gradients agree to fp32 rounding. The kernel runs for
    every synapse whose input is a spike_gated layer's spikes (all but conv1, which reads the encoding
    and needs no input gradient). The rounding differences pass through several layers' backward, so the
    check is relative: at most 1e-5 of each gradient's largest element (fp32 rounding is 6e-8)."""
    model = _small_model(tmp_path)
    assert {model.graph.op(f"{name}.lif").surrogate for name in LAYERS if name != "output"} == {"spike_gated"}
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    dense_out, dense_loss, dense_grads = _model_step(model, x, "dense")
    assert input_kernel_calls == []
    spike_out, spike_loss, spike_grads = _model_step(model, x, "spike")
    assert len(input_kernel_calls) == 5
    assert torch.equal(spike_loss, dense_loss)
    for layer in LAYERS:
        assert torch.equal(spike_out.trains[layer], dense_out.trains[layer]), layer
    differ = 0
    for key, want in dense_grads.items():
        assert want.abs().max() > 0, key
        assert (spike_grads[key] - want).abs().max() <= 1e-5 * want.abs().max(), key
        differ += not torch.equal(spike_grads[key], want)
    assert differ > 0  # the kernel's summation order shows: the run above really used it


@needs_c
def test_the_reference_preset_never_takes_the_shortcut(tmp_path, input_kernel_calls):
    """straight_through (the published code's surrogate) reads the spike gradient everywhere: dense."""
    model = _small_model(tmp_path)
    for name in LAYERS:
        if name != "output":
            node = f"{name}.lif"
            model.graph.replace_op(node, ops.LIF(**{**model.graph.op(node).__dict__, "surrogate": "straight_through"}))
    _model_step(model, torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(2)), "spike")
    assert input_kernel_calls == []


# ---------------------------------------------------------------- the plan's knob
def test_the_input_grad_knob_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="input_grad must be one of dense, spike or null, got 'sparse'"):
        LayerPlan(input_grad="sparse")
    with pytest.raises(ValueError, match=r"input_grad must be one of \('dense', 'spike'\) or None, got 'Spike'"):
        fastpath.SynapseChoice(input_grad="Spike")
    plan = ExecutionPlan(layers=(("a", LayerPlan(input_grad="spike")), ("b", LayerPlan(input_grad="dense"))))
    assert plan.synapse_choice("a").input_grad == "spike" and plan.synapse_choice("c").input_grad is None
    assert ExecutionPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
