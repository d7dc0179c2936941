"""The spike-driven weight gradient (spike_synapse.c's weight-gradient kernel, cpu_spike.weight_grad,
and its use in the fast path's backward, fastpath._SpikeInputSynapse) against the dense gradient.

Tolerance: the input is 0/1, so dW[o, i] (a linear; a conv tap likewise) is a sum of output-gradient
elements g[n, o] over the rows n where x[n, i] is 1, every term exact in fp32. The kernel and a
dense GEMM add the same terms in different orders. A recursive fp32 sum of k terms is within
(k - 1) u sum|terms| of the exact sum (u = 2^-24, Higham, Accuracy and Stability, eq. 4.4); the
kernel's per-thread partials and their final sum are one such sum tree (depth below k + threads),
so each element is checked against a float64 gradient of the same fp32 terms with the bound
(k + threads) u sum|terms| (k and sum|terms| per element from the same gradient with ones / |g|),
and against the dense fp32 gradient with twice that.

The forward does not change (its spikes and loss are bit-identical with the spike-driven weight
gradient on and off), and neither does the input gradient: the same oneDNN / MKL call with the
weight gradient masked out (tested bit for bit). A convolution's bias gradient is then a plain sum
of the output gradient (oneDNN would compute the weight gradient along with it): same terms,
another order, checked with the same kind of bound.
"""

from __future__ import annotations

import json

import pytest
import torch

from saec.compiler import ops
from saec.compiler.pipeline import compile_spec
from saec.runtime import fastpath, spikedriven
from saec.runtime import plan as planning
from saec.runtime.execution import Execution
from saec.runtime.kernels import cpu_spike
from saec.runtime.model import SpikingAutoencoder
from saec.runtime.plan import ExecutionPlan, LayerPlan
from saec.training.objective import objective
from tests.runtime.test_spikedriven import LAYERS, SMALL_SAE, _dense

needs_c = pytest.mark.skipif(cpu_spike.library() is None, reason="no C compiler: the spike-driven kernel is not built")

U = 2.0 ** -24  # fp32 unit roundoff


@pytest.fixture(autouse=True)
def _keep_thread_count():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _dense_forward(op, x, weight):
    return _dense(op, x, weight, None)


def _weight_grad64(op, x, weight, g):
    """dW of sum(g * op(x)) in float64 (torch.nn.grad through autograd)."""
    w = weight.double().requires_grad_()
    y = _dense_forward(op, x.double(), w)
    (dw,) = torch.autograd.grad(y, w, g.double())
    return dw


# op, weight shape, input rows shape (odd sizes; stride, padding, output padding, one channel)
CASES = {
    "linear": (ops.Linear(in_features=37, out_features=11), (11, 37), (13, 37)),
    "conv2d_k3": (ops.Conv2d(in_channels=3, out_channels=5, kernel_size=(3, 3)), (5, 3, 3, 3), (9, 3, 7, 9)),
    "conv2d_k5_stride2_pad": (ops.Conv2d(in_channels=2, out_channels=7, kernel_size=(5, 3), stride=(2, 2),
                                         padding=(2, 1)), (7, 2, 5, 3), (7, 2, 11, 10)),
    "conv2d_one_input_channel": (ops.Conv2d(in_channels=1, out_channels=4, kernel_size=(5, 5)), (4, 1, 5, 5),
                                 (6, 1, 9, 8)),
    "conv_t_k3_pad1": (ops.ConvTranspose2d(in_channels=3, out_channels=4, kernel_size=(3, 3), padding=(1, 1)),
                       (3, 4, 3, 3), (9, 3, 7, 9)),
    "conv_t_stride2_outpad": (ops.ConvTranspose2d(in_channels=4, out_channels=3, kernel_size=(3, 3),
                                                  stride=(2, 2), padding=(1, 1), output_padding=(1, 0)),
                              (4, 3, 3, 3), (5, 4, 5, 6)),
    "conv_t_one_output_channel": (ops.ConvTranspose2d(in_channels=5, out_channels=1, kernel_size=(5, 5)),
                                  (5, 1, 5, 5), (7, 5, 6, 6)),
}


def _case_tensors(case, activity, seed=3):
    op, w_shape, x_shape = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(w_shape, generator=gen)
    x = torch.rand(x_shape, generator=gen) < activity
    g = torch.randn(_dense_forward(op, x.float(), weight).shape, generator=gen)
    return op, weight, x, g


def _kernel_grad(op, x, g, chunks):
    """cpu_spike.weight_grad over the row ranges ``chunks`` into one set of partials; dW in the weight's shape."""
    if g.dim() == 4:
        g = g.contiguous(memory_format=torch.channels_last)
    rows = max(b - a for a, b in chunks)
    partials = torch.zeros(cpu_spike.weight_grad_workers(rows), *cpu_spike.arranged_weight_shape(
        op, tuple(_weight_shape(op, x, g))))
    for a, b in chunks:
        assert cpu_spike.weight_grad(op, x[a:b], g[a:b], tuple(x.shape[1:]), partials)
    return cpu_spike.from_arranged(op, partials.sum(0)), partials.shape[0]


def _weight_shape(op, x, g):
    if isinstance(op, ops.Linear):
        return (g.shape[1], x.shape[1])
    kh, kw = op.kernel_size
    if isinstance(op, ops.Conv2d):
        return (g.shape[1], x.shape[1], kh, kw)
    return (x.shape[1], g.shape[1], kh, kw)


@needs_c
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("split", ["one_call", "chunks_of_4"])
@pytest.mark.parametrize("activity", [0.0, 0.02, 0.3, 1.0])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_weight_gradient_equals_the_dense_one(case, activity, split, threads):
    torch.set_num_threads(threads)
    op, weight, x, g = _case_tensors(case, activity)
    n = x.shape[0]
    chunks = [(0, n)] if split == "one_call" else [(a, min(a + 4, n)) for a in range(0, n, 4)]
    got, workers = _kernel_grad(op, x, g, chunks)
    assert got.shape == weight.shape
    exact = _weight_grad64(op, x, weight, g)
    count = _weight_grad64(op, x, weight, torch.ones_like(g))
    bound = (count + workers) * U * _weight_grad64(op, x, weight, g.abs()) + 1e-30
    assert ((got.double() - exact).abs() <= bound).all(), (got.double() - exact).abs().max()
    if activity == 0.0:
        assert torch.equal(got, torch.zeros_like(got))
        return
    assert exact.abs().max() > 0  # the comparison means something
    w = weight.clone().requires_grad_()
    (dense32,) = torch.autograd.grad(_dense_forward(op, x.float(), w), w, g)
    assert ((got - dense32).double().abs() <= 2 * bound).all()


def test_kernel_refuses_a_gradient_in_another_layout():
    op, weight, x, g = _case_tensors("conv2d_k3", 0.3)
    partials = torch.zeros(8, *cpu_spike.arranged_weight_shape(op, tuple(weight.shape)))
    with pytest.raises(ValueError, match=r"output gradient rows must be float32 \[9, \.\.\.\] with out channels "
                                         r"innermost, got \(9, 5, 5, 7\)"):
        cpu_spike.weight_grad(op, x, g.contiguous(), (3, 7, 9), partials)  # contiguous, not channels-last
    with pytest.raises(ValueError, match="partials must be contiguous float32"):
        cpu_spike.weight_grad(op, x, g.contiguous(memory_format=torch.channels_last), (3, 7, 9), partials[:, 0])


# ---------------------------------------------------------------- the fast path's backward
def _synapse_step(op, weight, x_source, sample, choice, *, contiguous_out=False, out_sample=None,
                  spike_driven=True):
    """One forward and backward of fastpath.spike_synapse on the spikes ``x_source`` [rows, *source
    shape] (any dense layout), output gradient randn (seed 5); returns (output, dW, dx)."""
    x = x_source.float().requires_grad_()
    w = weight.clone().requires_grad_()
    y = fastpath.spike_synapse(op, w, None, x, x_source, lead_dims=1, sample=sample,
                               contiguous_out=contiguous_out, out_sample=out_sample, choice=choice,
                               spike_driven=spike_driven)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(5)))
    return y.detach(), w.grad, x.grad


#: (op, weight shape, spikes [rows, *source] (channels-last where the producer is a conv), op input
#: sample, step options): the SAE's hand-offs, small: a conv on channels-last spikes, a linear on a conv's
#: channels-last spikes flattened (a deferred flatten), a linear handing out an unflattened channels-last
#: current (its gradient arrives channels-last), a transposed conv to one channel.
BACKWARD_CASES = {
    "conv2d": (ops.Conv2d(in_channels=3, out_channels=6, kernel_size=(3, 3)), (6, 3, 3, 3), (150, 3, 7, 6),
               (3, 7, 6), {}),
    "linear_on_flattened_conv_spikes": (ops.Linear(in_features=3 * 5 * 4, out_features=9), (9, 60),
                                        (150, 3, 5, 4), (60,), {}),
    "linear_unflattened_out": (ops.Linear(in_features=10, out_features=24), (24, 10), (150, 10), (10,),
                               {"out_sample": (6, 2, 2)}),
    "conv_t_one_channel": (ops.ConvTranspose2d(in_channels=4, out_channels=1, kernel_size=(3, 3)), (4, 1, 3, 3),
                           (150, 4, 5, 5), (4, 5, 5), {}),
    "conv_t": (ops.ConvTranspose2d(in_channels=4, out_channels=3, kernel_size=(3, 3)), (4, 3, 3, 3),
               (150, 4, 5, 5), (4, 5, 5), {}),
    "conv2d_planned_contiguous": (ops.Conv2d(in_channels=3, out_channels=6, kernel_size=(3, 3)), (6, 3, 3, 3),
                                  (150, 3, 7, 6), (3, 7, 6), {"channels_last": False}),
    "conv2d_one_output_channel": (ops.Conv2d(in_channels=3, out_channels=1, kernel_size=(3, 3)), (1, 3, 3, 3),
                                  (150, 3, 7, 6), (3, 7, 6), {}),
}


def _backward_case(case, activity=0.05):
    op, w_shape, x_shape, sample, options = BACKWARD_CASES[case]
    weight = torch.randn(w_shape, generator=torch.Generator().manual_seed(11))
    x = torch.rand(x_shape, generator=torch.Generator().manual_seed(12)) < activity
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return op, weight, x, sample, dict(options)


def count_rows(monkeypatch, kernel: str) -> list[int]:
    """Replace ``cpu_spike.<kernel>`` by itself noting each call's rows; the list they go to."""
    calls = []
    real = getattr(cpu_spike, kernel)

    def counted(op, x, *args):
        calls.append(x.shape[0])
        return real(op, x, *args)

    monkeypatch.setattr(cpu_spike, kernel, counted)
    return calls


@pytest.fixture
def kernel_calls(monkeypatch):
    return count_rows(monkeypatch, "weight_grad")


@needs_c
@pytest.mark.parametrize("chunk_rows", [None, 64], ids=["one_chunk", "64_row_chunks"])
@pytest.mark.parametrize("case", list(BACKWARD_CASES))
def test_backward_with_the_spike_driven_weight_gradient(case, chunk_rows, kernel_calls):
    """Forward bit-identical, input gradient bit-identical, dW within the fp32 bound of the dense dW."""
    op, weight, x, sample, options = _backward_case(case)
    layout = {"channels_last": options.pop("channels_last", True)}  # the Conv2d layout planned
    dense = _synapse_step(op, weight, x, sample,
                          fastpath.SynapseChoice(chunk_rows=chunk_rows, weight_grad="dense", **layout), **options)
    assert kernel_calls == []
    spike = _synapse_step(op, weight, x, sample,
                          fastpath.SynapseChoice(chunk_rows=chunk_rows, weight_grad="spike", **layout), **options)
    assert kernel_calls == ([150] if chunk_rows is None else [75, 75])  # 150 rows: 2 chunks of >= 64
    assert torch.equal(spike[0], dense[0])  # the forward does not change
    assert torch.equal(spike[2], dense[2])  # nor the input gradient (same call, weight gradient masked out)
    assert dense[1].abs().max() > 0
    # dW: both within (k + threads) u sum|terms| of the exact sum; fp32 terms g, k <= rows
    x_rows = x.reshape(150, *sample).float()
    g = torch.randn(spike[0].shape, generator=torch.Generator().manual_seed(5))  # as _synapse_step's
    if isinstance(op, ops.Linear):  # an unflattened output's gradient, in feature order
        g = g.reshape(150, -1)
    abs_sum = _weight_grad64(op, x_rows, weight, g.abs())
    bound = 2 * (150 + torch.get_num_threads()) * U * abs_sum + 1e-30
    assert ((spike[1] - dense[1]).double().abs() <= bound).all()


@needs_c
def test_the_float_input_is_not_rebuilt_for_the_spike_driven_gradient(monkeypatch, kernel_calls):
    """With the spike-driven weight gradient a linear never rebuilds its float input in backward, nor a
    convolution whose input gradient can be had from a shape-only stand-in."""
    rebuilt = []
    real = fastpath._as_input

    def as_input(t, op, *args, **kwargs):
        rebuilt.append(type(op).__name__)
        return real(t, op, *args, **kwargs)

    for case in ("conv2d", "linear_on_flattened_conv_spikes", "conv_t", "conv_t_one_channel"):
        op, weight, x, sample, options = _backward_case(case)
        x_float = x.float().requires_grad_()
        w = weight.clone().requires_grad_()
        y = fastpath.spike_synapse(op, w, None, x_float, x, lead_dims=1, sample=sample,
                                   choice=fastpath.SynapseChoice(weight_grad="spike"))
        monkeypatch.setattr(fastpath, "_as_input", as_input)
        rebuilt.clear()
        y.sum().backward()
        monkeypatch.setattr(fastpath, "_as_input", real)
        # the one-channel output layer: channels-last strides are ambiguous there, the input is rebuilt
        assert rebuilt == (["ConvTranspose2d"] if case == "conv_t_one_channel" else []), case
        assert w.grad.abs().max() > 0 and x_float.grad.abs().max() > 0


@needs_c
def test_the_built_in_choice_follows_the_input_activity(kernel_calls):
    op, weight, _, sample, options = _backward_case("conv2d")
    for activity, driven in ((0.02, True), (spikedriven.WEIGHT_GRAD_MAX_ACTIVITY * 3, False)):
        kernel_calls.clear()
        _, _, x, _, _ = _backward_case("conv2d", activity)
        _synapse_step(op, weight, x, sample, fastpath.DEFAULT_CHOICE)
        assert bool(kernel_calls) == driven, activity
    kernel_calls.clear()  # planned "spike" runs it whatever the activity
    _synapse_step(op, weight, x, sample, fastpath.SynapseChoice(weight_grad="spike"))
    assert kernel_calls == [150]


@needs_c
def test_switches_and_bf16_keep_the_dense_gradient(monkeypatch, kernel_calls):
    op, weight, x, sample, options = _backward_case("conv2d")
    spike = fastpath.SynapseChoice(weight_grad="spike")
    dense = _synapse_step(op, weight, x, sample, fastpath.SynapseChoice(weight_grad="dense"))
    off = _synapse_step(op, weight, x, sample, spike, spike_driven=False)  # Execution(spike_driven=False)
    assert kernel_calls == [] and torch.equal(off[1], dense[1]) and torch.equal(off[2], dense[2])
    monkeypatch.setenv(spikedriven.ENV_SWITCH, "0")
    switched = _synapse_step(op, weight, x, sample, spike)
    assert kernel_calls == [] and torch.equal(switched[1], dense[1])
    monkeypatch.delenv(spikedriven.ENV_SWITCH)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the backward computes in bf16: dense
        _synapse_step(op, weight, x, sample, spike)
    assert kernel_calls == []
    assert not spikedriven.weight_grad_applies(op, weight, torch.bfloat16, torch.device("cpu"), sample)
    assert not spikedriven.weight_grad_applies(op, weight.double(), torch.float64, torch.device("cpu"), sample)


def test_without_native_kernels_the_dense_gradient_runs(monkeypatch):
    op, weight, x, sample, options = _backward_case("linear_on_flattened_conv_spikes")
    want = _synapse_step(op, weight, x, sample, fastpath.SynapseChoice(weight_grad="dense"))
    monkeypatch.setenv("SAEC_NATIVE_KERNELS", "0")
    cpu_spike.library.cache_clear()
    try:
        calls = []
        monkeypatch.setattr(cpu_spike, "weight_grad", lambda *args: calls.append(args))
        got = _synapse_step(op, weight, x, sample, fastpath.SynapseChoice(weight_grad="spike"))
        assert calls == [] and torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    finally:
        monkeypatch.undo()
        cpu_spike.library.cache_clear()


# ---------------------------------------------------------------- a whole training step
def _small_model(tmp_path):
    spec = tmp_path / "small_sae.yaml"
    spec.write_text(SMALL_SAE)
    _, graph = compile_spec(str(spec), [])
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():  # every layer must spike, biases non-zero
        for name, p in model.named_parameters():
            p.mul_(2.5) if name.endswith("weight") else p.uniform_(-0.2, 0.2)
    return model


def _step(model, x, weight_grad, input_grad="dense"):
    """One training step of ``model`` on ``x`` with every layer's weight and input gradient as given
    (by default the input gradients dense: the same output gradients then reach both weight
    gradients of a comparison); (output, loss, the parameters' gradients)."""
    layers = tuple(sorted((key, LayerPlan(weight_grad=weight_grad, input_grad=input_grad))
                          for key in set(model._layer_keys.values())))
    model.execution = Execution(plan=ExecutionPlan(layers=layers))
    model.zero_grad(set_to_none=True)
    out = model(x, generator=torch.Generator().manual_seed(1), record=set(LAYERS))
    loss, _ = objective(model, out, x)
    loss.backward()
    return out, loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@needs_c
def test_a_training_step_is_unchanged_but_for_the_weight_gradients_rounding(tmp_path, monkeypatch):
    """Spikes and loss bit-identical; each weight and bias gradient within twice the fp32 bound of
    its sum (module docstring), computed from the kernel's own inputs (the same output gradients
    reach both runs: the input gradients are bit-identical, test_backward_with_the_spike_driven_...)."""
    terms = {}  # op -> (input rows as the op's input, output-gradient rows), from the kernel's calls
    real = cpu_spike.weight_grad

    def recorded(op, x, g, sample, partials):
        terms[op] = (x.reshape(x.shape[0], *sample).double(), g.double())
        return real(op, x, g, sample, partials)

    model = _small_model(tmp_path)
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    dense_out, dense_loss, dense_grads = _step(model, x, "dense")
    monkeypatch.setattr(cpu_spike, "weight_grad", recorded)
    spike_out, spike_loss, spike_grads = _step(model, x, "spike")
    assert len(terms) == 6  # every synapse layer (T = 3 x B = 4 rows: one chunk each)
    assert torch.equal(spike_loss, dense_loss)
    for layer in LAYERS:
        assert dense_out.trains[layer].any(), layer
        assert torch.equal(spike_out.trains[layer], dense_out.trains[layer]), layer
    ops_of = {f"synapses.{name}.weight": model.graph.op(name) for name in LAYERS}
    assert set(dense_grads) == {*ops_of, "synapses.conv1.bias", "synapses.fc_dec.bias"}
    for key, want in dense_grads.items():
        assert want.abs().max() > 0, key
        rows, g = terms[model.graph.op(key.split(".")[1])]
        if key.endswith("bias"):  # a sum of the output gradient (a conv's: over rows and positions)
            dims = (0,) if g.dim() == 2 else (0, 2, 3)
            bound = 2 * (g[0].numel() // g.shape[1] * g.shape[0]) * U * g.abs().sum(dims)
            assert ((spike_grads[key] - want).double().abs() <= bound).all(), key
            continue
        weight = torch.zeros(want.shape, dtype=torch.float64)
        count = _weight_grad64(ops_of[key], rows, weight, torch.ones_like(g))
        bound = 2 * (count + torch.get_num_threads()) * U * _weight_grad64(ops_of[key], rows, weight, g.abs())
        assert ((spike_grads[key] - want).double().abs() <= bound + 1e-30).all(), key


# ---------------------------------------------------------------- the plan's knob
def test_the_knob_is_validated_and_round_trips_through_the_plan_cache(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="weight_grad must be one of dense, spike or null, got 'sparse'"):
        LayerPlan(weight_grad="sparse")
    with pytest.raises(ValueError, match=r"weight_grad must be one of \('dense', 'spike'\) or None, got 'Spike'"):
        fastpath.SynapseChoice(weight_grad="Spike")
    plan = ExecutionPlan(layers=(("a", LayerPlan(weight_grad="spike")), ("b", LayerPlan(weight_grad="dense"))))
    assert plan.synapse_choice("a").weight_grad == "spike" and plan.synapse_choice("c").weight_grad is None
    assert ExecutionPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    monkeypatch.setenv("SAEC_CACHE_DIR", str(tmp_path))
    fingerprint = planning.machine_fingerprint()
    path = planning.store_plan("net", plan, fingerprint, 1.0, print)
    assert '"weight_grad": "spike"' in path.read_text()
    assert planning.cached_plan("net", fingerprint, print) == plan
    lines = []
    path.write_text(path.read_text().replace('"weight_grad": "spike"', '"weight_grad": "fast"'))
    assert planning.cached_plan("net", fingerprint, lines.append) is None
    assert lines == [f"warning: plan cache {path}: the entry for this network is unusable (weight_grad must be "
                     f"one of dense, spike or null, got 'fast'); ignored, {planning.REPLACED}"]
