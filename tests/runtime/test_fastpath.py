"""The training fast path gives the reference path's answers.

- The fused C scan against the torch-op scan: bit-identical spikes, U, u, bool
  spikes; gradients equal within fp32 rounding (rtol 1e-6, atol 1e-6 x max|g|;
  float64 within 1e-12).
- The Triton kernels (run by Triton's interpreter on CPU tensors) against the C scan.
- The whole SAE, fast path (fused scan, bool-saving synapses) against the reference
  path (autograd-oracle scan, autograd synapses) for the saec, reference and paper
  semantics: bit-identical spikes in every layer, the same loss, the same gradients
  (rtol 1e-5, atol 1e-5 x max|g|: channels-last convolution backward sums in another order;
  5e-5 when the synapses run in row chunks, whose weight gradients are sums of chunk sums).
- What backward keeps: no float tensor that grows with T besides the readout's U.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import platform
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from saec.compiler.ops import LIF
from saec.compiler.pipeline import compile_spec
from saec.runtime import fastpath, pool
from saec.runtime.kernels import cpu_lif
from saec.runtime.execution import Execution
from saec.runtime.lif import lif_scan
from saec.runtime.model import SpikingAutoencoder
from saec.training.objective import objective
from tests.conftest import REPO, SPECS

needs_c = pytest.mark.skipif(cpu_lif.library() is None, reason="no C compiler: the C scan is not built")


def _ops():
    """Every neuron option, with the three gradient switches spread over the others."""
    for surrogate, reset, integrate, clamp_first, floor in itertools.product(
            ["straight_through", "spike_gated", "fast_sigmoid", "arctan"], ["zero", "subtract", "none"],
            ["potential", "current"], [True, False], [None, "clamp", "revive"]):
        i = len(surrogate) + len(reset) + len(integrate) + clamp_first + len(floor or "")
        yield LIF(decay=0.9, surrogate=surrogate, slope=2.0, reset=reset, integrate=integrate,
                  clamp_first=clamp_first, lower_bound=None if floor is None else -1.0,
                  lower_bound_mode=floor or "clamp", spike_when="ge" if i % 2 else "gt",
                  reset_grad="cut" if i % 3 else "pass", clamp_grad="cut" if i % 5 else "pass",
                  decay_grad=bool(i % 7 % 2))


def _run(op, x, cumulative, backend):
    xi = x.clone().requires_grad_()
    res = lif_scan(xi, op, cumulative=cumulative, record_potential=True, bool_spikes=True, counts=True,
                   backend=backend)
    assert torch.equal(res.counts, res.spikes.sum(0))
    gen = torch.Generator().manual_seed(5)
    loss = sum((torch.randn(t.shape, generator=gen, dtype=t.dtype) * t).sum()
               for t in (res.spikes, res.U, res.u, res.counts) if t is not None)
    (g,) = torch.autograd.grad(loss, xi)
    return res, g


@needs_c
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("cumulative", ["none", "last", "all"])
def test_c_scan_equals_torch_scan(dtype, cumulative):
    x = (torch.randn(7, 3, 50, generator=torch.Generator().manual_seed(0)) * 1.3 + 0.2).to(dtype)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for op in _ops():
        (r_c, g_c), (r_t, g_t) = _run(op, x, cumulative, "auto"), _run(op, x, cumulative, "torch")
        for name, a, b in zip(r_c._fields, r_c, r_t):
            assert (a is None) == (b is None), name
            assert a is None or torch.equal(a, b), (op, name)
        assert r_c.spikes.any() and not r_c.spikes.all()
        scale = max(1.0, g_t.abs().max().item())
        torch.testing.assert_close(g_c, g_t, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=str(op))


@needs_c
def test_c_scan_handles_layouts_threads_and_expanded_gradients():
    """Non-contiguous input, a layer large enough to be split over threads, and the stride-0
    gradient of ``spikes.sum(0)`` all give the torch scan's answers."""
    op = LIF()
    x = torch.randn(5, 70_000, 2, generator=torch.Generator().manual_seed(1)).transpose(1, 2) * 1.5
    assert not x.is_contiguous() and x[0].numel() >= 1 << 15
    outs = []
    for backend in ("auto", "torch"):
        xi = x.clone().requires_grad_()
        res = lif_scan(xi, op, cumulative="last", backend=backend)
        (res.spikes.sum(0).sum() + res.U.square().sum()).backward()
        outs.append((res.spikes, res.U, xi.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert torch.equal(outs[0][0], outs[1][0])


def test_without_a_compiler_the_scan_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SAEC_CACHE_DIR", str(tmp_path / "cache"))
    cpu_lif.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="building the C LIF kernel failed"):
            assert cpu_lif.library() is None
        x = torch.randn(4, 2, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning
            got = lif_scan(x, LIF(), cumulative="all")
        want = lif_scan(x, LIF(), cumulative="all", backend="torch")
        assert torch.equal(got.spikes, want.spikes) and torch.equal(got.U, want.U)
        monkeypatch.setenv("SAEC_NATIVE_KERNELS", "0")
        cpu_lif.library.cache_clear()
        assert cpu_lif.library() is None
    finally:
        monkeypatch.undo()
        cpu_lif.library.cache_clear()


def test_scan_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="scan backend must be 'auto' or 'torch', got 'cuda'"):
        lif_scan(torch.zeros(2, 1, 3), LIF(), backend="cuda")
    with pytest.raises(ValueError, match="scan backend must be 'auto' or 'torch', got 'cuda'"):
        Execution(scan_backend="cuda")
    with pytest.raises(ValueError, match="execution path must be 'fast' or 'reference', got 'quick'"):
        Execution(path="quick")


def test_the_model_passes_its_scan_backend_to_the_scan(monkeypatch):
    """The backend travels as an argument: the model's Execution reaches the kernel choice."""
    from saec.runtime.lif import dispatch

    _, graph = compile_spec(str(PRESETS["saec"]), ["encoding.timesteps=2"])
    model = SpikingAutoencoder(graph)
    seen = []
    real = dispatch.kernel_for
    monkeypatch.setattr(dispatch, "kernel_for", lambda t, backend: seen.append(backend) or real(t, backend))
    for backend in ("torch", "auto"):
        model.execution = Execution(scan_backend=backend)
        model(_images(1), generator=torch.Generator().manual_seed(1))
        assert seen and set(seen) == {backend}
        seen.clear()
    with pytest.raises(TypeError, match="execution must be a saec.runtime.execution.Execution, got 'fast'"):
        model.execution = "fast"
        model(_images(1))


# ---------------------------------------------------------------- Triton, interpreted
_TRITON_CHECK = textwrap.dedent("""
    import torch
    from saec.compiler.ops import LIF
    from saec.runtime import lif as L
    from saec.runtime.lif import dispatch
    from saec.runtime.kernels import cpu_lif, cuda_lif
    x = torch.randn(5, 2, 40, generator=torch.Generator().manual_seed(0)) * 1.3 + 0.2
    cases = 0
    for surrogate, reset, floor, clamp_first, cum in [
            ("spike_gated", "zero", "revive", True, "last"), ("straight_through", "zero", "clamp", False, "all"),
            ("fast_sigmoid", "subtract", "clamp", True, "none"), ("arctan", "none", None, False, "all"),
            ("spike_gated", "subtract", "clamp", False, "all"), ("straight_through", "zero", "revive", True, "last")]:
        for integrate in ["potential", "current"]:
            cut = ("cut", "pass")[(cases // 2 + cases) % 2]  # alternates over both integrate modes
            op = LIF(decay=0.9, surrogate=surrogate, slope=2.0, reset=reset, integrate=integrate,
                     clamp_first=clamp_first, lower_bound=None if floor is None else -1.0,
                     lower_bound_mode=floor or "clamp", reset_grad=cut, clamp_grad=cut,
                     decay_grad=cut == "pass", spike_when="ge" if cut == "cut" else "gt")
            outs = []
            for kernel in (cpu_lif, cuda_lif):
                dispatch.kernel_for = lambda t, backend, k=kernel: k
                xi = x.clone().requires_grad_()
                r = L.lif_scan(xi, op, cumulative=cum, record_potential=True, bool_spikes=True)
                w = torch.linspace(-1, 1, 40)
                loss = (r.spikes * w).sum() + 0.1 * (r.u * w).sum() + (0 if r.U is None else (r.U * w).sum())
                outs.append((r, torch.autograd.grad(loss, xi)[0]))
            (a, ga), (b, gb) = outs
            for name, p, q in zip(a._fields, a, b):
                assert (p is None and q is None) or torch.equal(p, q), (op, cum, name)
            torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-6)
            cases += 1
    print("triton cases", cases)
""")


@needs_c
def test_triton_kernels_match_the_c_scan_in_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _TRITON_CHECK], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "triton cases 12" in done.stdout


# ---------------------------------------------------------------- the whole network
PRESETS = {"saec": SPECS / "sae_dense.yaml", "reference": SPECS / "reference" / "sae_dense.yaml",
           "paper": SPECS / "paper" / "sae_dense.yaml"}
LAYERS = ("conv1", "conv2", "latent", "fc_dec", "deconv1", "output")


def _images(count: int) -> torch.Tensor:
    """MNIST-like images in [0, 1] (blurred random strokes; only the spike statistics matter)."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(count, 1, 28, 28, generator=gen) < 0.15).float()
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1).clamp(0, 1) * 1.5


def _train_pass(model, x, execution):
    model.execution = Execution(path=execution)
    model.zero_grad(set_to_none=True)
    out = model(x, generator=torch.Generator().manual_seed(1), record=set(LAYERS))
    loss, _ = objective(model, out, x)
    loss.backward()
    return out, loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked+pooled"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_fast_path_equals_reference_path_on_the_sae(preset, chunked, monkeypatch):
    if chunked:  # synapses over row chunks of 64 (T=8 x B=24 = 3 chunks); buffers above 1 KiB pooled
        monkeypatch.setattr(fastpath, "CHUNK_BYTES", 5000)
        monkeypatch.setattr(pool, "MIN_POOLED_BYTES", 1024)
    _, graph = compile_spec(str(PRESETS[preset]), ["encoding.timesteps=8"])
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():  # every layer must spike (the paper's init leaves the decoder silent at T=8)
        for p in model.parameters():
            p.mul_(2.0)
    x = _images(24 if chunked else 3)
    first = _train_pass(model, x, "fast")
    fast, fast_loss, fast_grads = _train_pass(model, x, "fast")  # a second step reuses the pool's buffers
    if chunked:
        assert model._pool.hits > 0 and model._pool.nbytes > 0
        held = model._pool.nbytes
        model.release_buffers()
        assert model._pool.nbytes == 0 < held
    assert torch.equal(first[1], fast_loss)
    for key, want in first[2].items():
        assert torch.equal(fast_grads[key], want), key
    ref, ref_loss, ref_grads = _train_pass(model, x, "reference")
    model.execution = Execution()
    with torch.no_grad():  # inference runs the same chunked synapses without autograd
        infer = model(x, generator=torch.Generator().manual_seed(1), record=set(LAYERS))
    for layer in LAYERS:
        assert torch.equal(fast.trains[layer], ref.trains[layer]), layer
        assert torch.equal(infer.trains[layer], ref.trains[layer]), layer
        assert fast.trains[layer].any(), layer
    assert torch.equal(fast_loss, ref_loss)
    # chunked: weight gradients are sums of per-chunk sums (another order over ~10^5 terms)
    tol = 5e-5 if chunked else 1e-5
    for key, want in ref_grads.items():
        scale = want.abs().max().item()
        assert scale > 0, key
        torch.testing.assert_close(fast_grads[key], want, rtol=tol, atol=tol * scale, msg=key)


def _saved_bytes(model, x, T):
    """Bytes of tensors that autograd keeps for backward, float and bool, parameters excluded."""
    params = {p.data_ptr() for p in model.parameters()}
    total = {"float": 0, "bool": 0}
    seen = set()

    def pack(t):
        key = (t.data_ptr(), t.dtype)
        if t.data_ptr() not in params and key not in seen:
            seen.add(key)
            kind = "bool" if t.dtype == torch.bool else ("float" if t.is_floating_point() else "other")
            if kind in total:
                total[kind] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, generator=torch.Generator().manual_seed(1))
        objective(model, out, x)
    return total


def test_fast_path_keeps_spikes_as_bool_and_little_float():
    """Per time step backward keeps ~1-2 bytes per neuron (bool spikes + keep mask); the only
    float tensor growing with T is the output layer's U(1..T) for the readout."""
    x = _images(2)
    saved = {}
    for T in (4, 8):
        _, graph = compile_spec(str(PRESETS["saec"]), [f"encoding.timesteps={T}"])
        model = SpikingAutoencoder(graph)
        saved[T] = _saved_bytes(model, x, T)
    neurons = 784 + 9216 + 12800 + 100 + 12800 + 9216 + 784  # input train + every layer's spikes
    per_step_bool = (saved[8]["bool"] - saved[4]["bool"]) / 4 / x.shape[0]
    per_step_float = (saved[8]["float"] - saved[4]["float"]) / 4 / x.shape[0]
    assert neurons <= per_step_bool <= 2 * neurons  # spikes, keep masks; nothing float
    assert per_step_float <= 4 * 784 * 2  # U(t) of the output layer (readout), +/- an argmax buffer
    # the reference path keeps float inputs and float states: many times more
    model.execution = Execution(path="reference")
    ref = _saved_bytes(model, x, 8)
    assert ref["float"] > 10 * saved[8]["float"]


def test_keep_freed_memory_is_opt_in_and_idempotent(monkeypatch):
    fastpath.keep_freed_memory.cache_clear()
    monkeypatch.delenv(fastpath.ENV_KEEP_FREED_MEMORY, raising=False)
    assert fastpath.keep_freed_memory() is False  # off by default: it raises the peak RSS
    fastpath.keep_freed_memory.cache_clear()
    monkeypatch.setenv(fastpath.ENV_KEEP_FREED_MEMORY, "1")
    applied = fastpath.keep_freed_memory()
    assert applied is (platform.libc_ver()[0] == "glibc")
    assert fastpath.keep_freed_memory() is applied
    fastpath.keep_freed_memory.cache_clear()


def test_spike_synapse_gradients_equal_autograd_for_every_synapse_kind():
    gen = torch.Generator().manual_seed(4)
    _, graph = compile_spec(str(PRESETS["saec"]), ["encoding.timesteps=2"])
    for name, in_shape in [("conv2", (6, 16, 24, 24)), ("latent", (6, 12800)), ("deconv1", (6, 32, 20, 20))]:
        op = graph.op(name)
        x = (torch.rand(in_shape, generator=gen) < 0.2).float()
        w = torch.randn({"conv2": (32, 16, 5, 5), "latent": (100, 12800), "deconv1": (32, 16, 5, 5)}[name],
                        generator=gen) * 0.1
        grads = []
        for fn in ("fast", "plain"):
            xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = (fastpath.spike_synapse(op, wi, None, xi, x.bool()) if fn == "fast"
                 else fastpath.synapse_forward(op, wi, None, xi))
            y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(9)))
            grads.append((y.detach(), xi.grad, wi.grad))
        (y_fast, gx_fast, gw_fast), (y_plain, gx_plain, gw_plain) = grads
        assert torch.equal(y_fast, y_plain), name  # forward: the same spikes downstream
        if name == "latent":  # addmm's own backward kernels: bit-identical
            assert torch.equal(gx_fast, gx_plain) and torch.equal(gw_fast, gw_plain)
        for a, b in ((gx_fast, gx_plain), (gw_fast, gw_plain)):  # channels-last backward: fp32 rounding
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item(), msg=name)



@pytest.mark.parametrize("chunk_bytes", [fastpath.CHUNK_BYTES, 60_000], ids=["one-chunk", "chunks"])
def test_spike_synapse_takes_the_producers_layout_and_reshapes_rows(chunk_bytes, monkeypatch):
    """A deferred flatten (channels-last conv spikes -> linear) and unflatten (linear spikes ->
    transposed conv), run in row chunks: same output and gradients as reshaping first."""
    monkeypatch.setattr(fastpath, "CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(6)
    _, graph = compile_spec(str(PRESETS["saec"]), ["encoding.timesteps=2"])
    T, B = 4, 40  # 160 rows: one chunk, or two of 80 (MIN_CHUNK_ROWS = 64)
    cases = [("latent", (T, B, 32, 20, 20), True, (12800,)), ("deconv1", (T, B, 12800), False, (32, 20, 20))]
    for name, shape, producer_cl, sample in cases:
        op = graph.op(name)
        x = (torch.rand(shape, generator=gen) < 0.2).float()
        if producer_cl:  # [T, B, C, H, W] whose steps are channels-last, as the LIF scan hands them out
            x = x.reshape(T * B, *shape[2:]).contiguous(memory_format=torch.channels_last).reshape(shape)
        w = torch.randn(*((100, 12800) if name == "latent" else (32, 16, 5, 5)), generator=gen) * 0.1
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        xi_strides = xi.stride()
        y = fastpath.spike_synapse(op, wi, None, xi, x.bool(), lead_dims=2, sample=sample)
        xp, wp = x.clone().requires_grad_(), w.clone().requires_grad_()
        yp = fastpath.synapse_forward(op, wp, None, xp.reshape(T * B, *sample))
        yp = yp.reshape(T, B, *yp.shape[1:])
        assert torch.equal(y, yp), name
        g = torch.randn(y.shape, generator=gen)
        y.backward(g)
        yp.backward(g)
        assert xi.grad.shape == x.shape and xi.grad.stride() == xi_strides  # the producer's layout
        torch.testing.assert_close(xi.grad, xp.grad, rtol=1e-5, atol=1e-5 * xp.grad.abs().max().item())
        torch.testing.assert_close(wi.grad, wp.grad, rtol=1e-5, atol=1e-5 * wp.grad.abs().max().item())


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_counts_carry_the_gradient_of_summed_spikes(backend):
    """The scan's counts output has the gradient of ``spikes.sum(0)`` (alone and next to a spike
    gradient), checked against the autograd oracle in float64."""
    from saec.runtime.lif import lif_scan_autograd

    op = LIF(decay=0.9, surrogate="fast_sigmoid", slope=2.0)
    x = torch.randn(6, 4, 30, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 1.5 + 0.3
    w = torch.linspace(-1, 1, 30, dtype=torch.float64)
    grads = []
    for scan in (functools.partial(lif_scan, backend=backend), lif_scan_autograd):
        for with_spikes in (False, True):
            xi = x.clone().requires_grad_()
            res = scan(xi, op, counts=True)
            loss = (res.counts * w).square().sum() + (res.spikes[2:] * w).sum() * with_spikes
            grads.append(torch.autograd.grad(loss, xi)[0])
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[3], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", [0, 2])
def test_single_output_transposed_conv_equals_torch(padding):
    """The output layer's transposed convolution (one channel, stride 1) as taps x spikes and
    shifted adds: torch's values within fp32 rounding, the same gradients, the same bits
    whatever the batch split (so chunking cannot change spikes)."""
    from saec.compiler import ops

    op = ops.ConvTranspose2d(in_channels=6, out_channels=1, kernel_size=(5, 3), padding=(padding, 1))
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(10, 6, 9, 7, generator=gen) < 0.3).float().contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(6, 1, 5, 3, generator=gen), torch.randn(1, generator=gen)
    outs = []
    for fn in ("saec", "torch"):
        xi, wi, bi = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
        y = (fastpath.synapse_forward(op, wi, bi, xi) if fn == "saec" else
             torch.nn.functional.conv_transpose2d(xi, wi, bi, padding=op.padding))
        y.backward(torch.rand(y.shape, generator=torch.Generator().manual_seed(4)))
        outs.append((y.detach(), xi.grad, wi.grad, bi.grad))
    assert outs[0][0].shape == outs[1][0].shape
    for a, c in zip(*outs):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    rows = torch.cat([fastpath.synapse_forward(op, w, b, x[i:i + 3]) for i in range(0, 10, 3)])
    assert torch.equal(rows, outs[0][0])
