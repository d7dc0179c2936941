"""``training.precision``: the training step's synapses under bf16 autocast, everything else float32.

Tiny networks (8 x 8 images, T = 3, batch 4), one optimizer step each. The run-level checks
(the log line, metrics.jsonl, resume continuing in bf16) are in tests/training/test_train.py; the
refusal with quantisation-aware training is in tests/runtime/test_qat.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from saec.compiler.pipeline import compile_spec
from saec.compiler.runconfig import RunConfig, Training
from saec.runtime import fastpath, layerwise
from saec.runtime.execution import Execution
from saec.runtime.model import NetOutput
from saec.training.imageset import ImageSet
from saec.training.objective import objective
from saec.training.train import Dist, Trainer, forward_precision, in_float32, setup_trainer, train_step

TINY_SAE = """\
name: tinybf16
kind: sae
latent: latent
input: {shape: [1, 8, 8]}
encoding: {timesteps: 3, scale: 0.5}
neuron: {threshold: 0.1}
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel_size: 3, bias: true}
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 7}
  - {name: fc_dec, type: linear, out_features: 108}
  - {name: unflat, type: unflatten, shape: [3, 6, 6]}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 3}
training: {batch_size: 4, lr: 0.01}
data: {dataset: mnist5k}
"""
TINY_AE = """\
name: tinyae
kind: ae
latent: latent
input: {shape: [1, 8, 8]}
layers:
  - {name: conv1, type: conv2d, out_channels: 3, kernel_size: 3}
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 7}
  - {name: fc_dec, type: linear, out_features: 108}
  - {name: unflat, type: unflatten, shape: [3, 6, 6]}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 3}
regularizers: {}
training: {batch_size: 4, lr: 0.01}
data: {dataset: mnist5k}
"""
TINY_VAE = TINY_AE.replace("kind: ae", "kind: vae").replace("regularizers: {}", "regularizers: {l2: 0.01, beta: 1.0}")
SPECS = {"sae": TINY_SAE, "ae": TINY_AE, "vae": TINY_VAE}
IMAGES = ImageSet(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
                  torch.zeros(4, dtype=torch.int64))
BATCH = torch.arange(4)
HOOKS = SimpleNamespace(kept_checkpoint=lambda: "no checkpoint")  # train_step names it only when the loss diverges


def make_trainer(tmp_path: Path, precision: str, kind: str = "sae", path: str = "fast") -> Trainer:
    """A trainer of the tiny network on the CPU, seed 0, the precision set as ``--set`` would."""
    spec = tmp_path / f"{kind}.yaml"
    spec.write_text(SPECS[kind])
    _, graph = compile_spec(str(spec), [f"training.precision={precision}"])
    trainer = setup_trainer(graph, RunConfig.of(graph).training, torch.device("cpu"), Dist())
    trainer.model.execution = Execution(path=path)
    return trainer


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.ir_state_dict().items()}


@pytest.fixture
def dtypes(monkeypatch):
    """The dtypes the synapses hand out and the LIF scans receive during the test, recorded."""
    seen: dict[str, set] = {"synapse_out": set(), "lif_in": set()}
    synapse_forward, spike_forward, lif_scan, lif_scan_autograd = (
        fastpath.synapse_forward, fastpath._spike_forward, layerwise.lif_scan, layerwise.lif_scan_autograd)

    def recorded(synapse):
        def run(*args, **kwargs):
            y = synapse(*args, **kwargs)
            seen["synapse_out"].add(y.dtype)
            return y
        return run

    def recorded_scan(scan):
        def run(current, *args, **kwargs):
            seen["lif_in"].add(current.dtype)
            return scan(current, *args, **kwargs)
        return run

    monkeypatch.setattr(fastpath, "synapse_forward", recorded(synapse_forward))
    monkeypatch.setattr(fastpath, "_spike_forward", recorded(spike_forward))  # the fast path's spike-driven forward
    monkeypatch.setattr(layerwise, "lif_scan", recorded_scan(lif_scan))
    monkeypatch.setattr(layerwise, "lif_scan_autograd", recorded_scan(lif_scan_autograd))
    return seen


# ---------------------------------------------------------------- the setting
def test_precision_defaults_to_fp32_and_reaches_the_run_config(tmp_path):
    (tmp_path / "t.yaml").write_text(TINY_SAE)
    loaded, graph = compile_spec(str(tmp_path / "t.yaml"))
    assert loaded.spec.training.precision == "fp32"
    assert RunConfig.of(graph).training.precision == "fp32"
    _, graph = compile_spec(str(tmp_path / "t.yaml"), ["training.precision=bf16"])
    assert RunConfig.of(graph).training.precision == "bf16"
    # an ir.json written before the field existed has no key: it trained in fp32
    old = RunConfig.of(graph).to_dict()
    del old["training"]["precision"]
    assert RunConfig.from_dict(old).training.precision == "fp32"


def test_forward_precision_is_autocast_only_for_bf16():
    cpu, a = torch.device("cpu"), torch.ones(2, 2)
    with forward_precision(Training(precision="bf16"), cpu):
        assert torch.mm(a, a).dtype == torch.bfloat16
        assert (a * a).dtype == torch.float32  # autocast casts matrix products, not elementwise ops
    with forward_precision(Training(precision="fp32"), cpu):
        assert torch.mm(a, a).dtype == torch.float32
    with pytest.raises(ValueError, match="training.precision must be one of fp32, bf16, got 'fp16'"):
        forward_precision(Training(precision="fp16"), cpu)


def test_in_float32_casts_low_precision_outputs_and_keeps_their_gradient():
    leaf = torch.ones(2, 3, dtype=torch.bfloat16, requires_grad=True)
    exact = torch.zeros(2, 3)
    out = in_float32(NetOutput(x_hat=leaf * 2, counts={"a": leaf + 1}, u_last={"b": exact}, mu=leaf * 3))
    assert out.x_hat.dtype == out.counts["a"].dtype == out.mu.dtype == torch.float32
    assert out.u_last["b"] is exact and out.logvar is None  # float32 and absent values pass as they are
    (out.x_hat.sum() + out.counts["a"].sum() + out.mu.sum()).backward()
    assert torch.equal(leaf.grad, torch.full((2, 3), 6.0, dtype=torch.bfloat16))


# ---------------------------------------------------------------- one training step
@pytest.mark.parametrize("path", ["fast", "reference"])
def test_bf16_step_runs_synapses_in_bf16_and_neurons_in_fp32(tmp_path, dtypes, path):
    trainer = make_trainer(tmp_path, "bf16", path=path)
    before = weights(trainer)
    parts = train_step(trainer, IMAGES, BATCH, HOOKS)
    assert dtypes["synapse_out"] == {torch.bfloat16}  # autocast is really on, for every synapse
    assert dtypes["lif_in"] == {torch.float32}  # the LIF scans (the fused C scan on the fast path) get fp32
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values()), parts
    after = weights(trainer)
    assert all(v.dtype == torch.float32 for v in after.values())  # the master weights stay fp32
    assert all(not torch.equal(before[k], after[k]) for k in before), "every layer's weights must change"
    # evaluation after a bf16 step runs in fp32: autocast ended with the step
    dtypes["synapse_out"].clear()
    with torch.no_grad():
        trainer.model(IMAGES.images, generator=torch.Generator().manual_seed(0))
    assert dtypes["synapse_out"] == {torch.float32}


def test_bf16_step_differs_from_fp32_and_fast_and_reference_paths_agree(tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        for path in ("fast", "reference"):
            trainer = make_trainer(tmp_path, precision, path=path)
            losses[precision, path] = train_step(trainer, IMAGES, BATCH, HOOKS)["loss"]
    assert losses["fp32", "fast"] == losses["fp32", "reference"]  # bit-identical paths (fp32)
    assert losses["bf16", "fast"] == pytest.approx(losses["bf16", "reference"], rel=1e-3)
    assert losses["bf16", "fast"] != losses["fp32", "fast"]  # the synapses' rounding shows in the loss ...
    assert losses["bf16", "fast"] == pytest.approx(losses["fp32", "fast"], rel=0.05)  # ... and is small


def test_fp32_step_is_the_plain_step_bit_for_bit(tmp_path):
    """precision fp32 is the training step as it was before the setting existed: no autocast, no casts."""
    stepped, plain = make_trainer(tmp_path, "fp32"), make_trainer(tmp_path, "fp32")
    parts = train_step(stepped, IMAGES, BATCH, HOOKS)
    x = IMAGES.images[BATCH]
    loss, _ = objective(plain.model, plain.model(x, generator=plain.noise), x)
    plain.opt.zero_grad(set_to_none=True)
    loss.backward()
    plain.opt.step()
    assert parts["loss"] == float(loss.detach())
    a, b = weights(stepped), weights(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_bf16_step_of_an_ae_or_vae_has_a_float32_loss(tmp_path, dtypes, monkeypatch, kind):
    """An AE's activations come out of the synapses in bf16; the loss is computed on them in fp32,
    and the VAE samples its latent in fp32."""
    from saec.training import train as train_module

    loss_dtypes, sampled = [], []

    def recorded_objective(model, out, x):
        loss_dtypes.extend([out.x_hat.dtype, *(c.dtype for c in out.counts.values())])
        loss_dtypes.extend([t.dtype for t in (out.mu, out.logvar) if t is not None])
        return objective(model, out, x)

    def recorded_reparameterize(h, *args):
        sampled.append(h.dtype)
        return reparameterize(h, *args)

    reparameterize = layerwise.reparameterize
    monkeypatch.setattr(train_module, "objective", recorded_objective)
    monkeypatch.setattr(layerwise, "reparameterize", recorded_reparameterize)
    trainer = make_trainer(tmp_path, "bf16", kind=kind)
    before = weights(trainer)
    parts = train_step(trainer, IMAGES, BATCH, HOOKS)
    assert torch.bfloat16 in dtypes["synapse_out"]
    assert set(loss_dtypes) == {torch.float32}
    assert sampled == ([torch.float32] if kind == "vae" else [])
    assert torch.isfinite(torch.tensor(parts["loss"]))
    after = weights(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)



def test_single_output_transposed_conv_under_bf16_sums_taps_in_fp32():
    """The output layer's own kernel (taps x spikes, then k*k shifted adds) under autocast: the taps come
    out of the matrix product in bf16, the adds run in fp32 and the sum is rounded to bf16 once."""
    from saec.compiler import ops

    op = ops.ConvTranspose2d(in_channels=6, out_channels=1, kernel_size=(5, 5), padding=(1, 1))
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(4, 6, 6, 6, generator=gen) < 0.5).float().contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(6, 1, 5, 5, generator=gen), torch.randn(1, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fastpath.synapse_forward(op, w, b, x)
    assert y.dtype == torch.bfloat16
    # the same taps (the same bf16 product), shifted and summed in `acc`
    taps = w.reshape(6, 25).t().bfloat16().matmul(x.permute(0, 2, 3, 1).reshape(-1, 6).t().bfloat16())
    taps = taps.view(5, 5, 4, 6, 6)

    def summed(acc: torch.dtype) -> torch.Tensor:
        full = torch.zeros(4, 10, 10, dtype=acc)
        for i in range(5):
            for j in range(5):
                full[:, i:i + 6, j:j + 6] += taps[i, j]
        return (full[:, 1:9, 1:9].unsqueeze(1) + b.view(1, 1, 1, 1)).bfloat16()

    assert torch.equal(y, summed(torch.float32))
    assert not torch.equal(y, summed(torch.bfloat16))  # summing in bf16 would round differently: the check can fail


def test_state_precision_copies_into_the_pool_in_the_current_layout():
    """The fp32 copy of a bf16 current comes from the step's buffer pool, keeps the layout and the gradient."""
    from saec.runtime.pool import BufferPool, use_pool

    current = torch.randn(2, 3, 8, 128, 128).to(torch.bfloat16)  # [T, B, C, H, W], 2 MB in fp32: pooled
    current = current.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    pool = BufferPool()
    with use_pool(pool):
        copy = layerwise.state_precision(current)
    assert copy.dtype == torch.float32 and copy.stride() == current.stride()
    assert torch.equal(copy, current.float()) and pool.misses == 1
    copy.sum().backward()
    assert current.grad.dtype == torch.bfloat16 and torch.equal(current.grad, torch.ones_like(current))
    gapped = current.detach()[:, :, :, ::2]  # not dense: torch's own cast, outside the pool
    with use_pool(pool):
        assert torch.equal(layerwise.state_precision(gapped), gapped.float())
    assert pool.misses == 1 and pool.hits == 0
    fp32 = torch.zeros(2, 2)
    assert layerwise.state_precision(fp32) is fp32


def test_bf16_fast_path_over_row_chunks_matches_the_reference_path(tmp_path, monkeypatch):
    """The fast path's synapses over row chunks (3 x 48 rows in 2 chunks; pooled buffers) under bf16:
    the same spikes as the reference path's whole-tensor autocast, weight gradients summed over the
    chunks in fp32 and handed out in fp32, within bf16 rounding of the reference path's."""
    from saec.runtime import pool

    monkeypatch.setattr(fastpath, "CHUNK_BYTES", 5000)
    monkeypatch.setattr(pool, "MIN_POOLED_BYTES", 1024)
    x = torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    results = {}
    for path in ("fast", "reference"):
        trainer = make_trainer(tmp_path, "bf16", path=path)
        with forward_precision(trainer.config, torch.device("cpu")):
            out = trainer.model(x, generator=torch.Generator().manual_seed(1), record={"conv1", "latent", "output"})
        loss, _ = objective(trainer.model, in_float32(out), x)
        loss.backward()
        results[path] = out, {k: p.grad for k, p in trainer.model.named_parameters()}
    (fast, fast_grads), (ref, ref_grads) = results["fast"], results["reference"]
    for layer in ("conv1", "latent", "output"):
        assert torch.equal(fast.trains[layer], ref.trains[layer]) and fast.trains[layer].any(), layer
    for key, want in ref_grads.items():
        assert fast_grads[key].dtype == torch.float32, key
        scale = want.abs().max().item()
        assert scale > 0, key
        torch.testing.assert_close(fast_grads[key], want, rtol=1e-2, atol=1e-2 * scale, msg=key)
