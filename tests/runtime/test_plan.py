"""The per-machine execution plan (saec/runtime/plan.py).

- Every candidate value of every knob keeps the fast path bit-identical in spikes and loss to
  the reference path (and to inference and the step-by-step walk), for the saec and reference
  presets; gradients within the chunked tolerance of tests/runtime/test_fastpath.py.
- Each knob changes what runs (observed in the fast path's own calls).
- The planner keeps each knob's fastest candidate, given a fake timer (nothing is timed).
- The cache: round trip, another machine, a corrupt file or entry, the replan switch, an
  unwritable folder, where it lives; the policy switch SAEC_PLAN.
- The command line: `saec plan`, located one-line errors with exit code 2; `saec train` with a
  cached plan, which the checkpoint keeps for resume.
No test here measures anything: every timer is fake.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from saec.cli import app
from saec.compiler import ops
from saec.compiler.pipeline import compile_spec
from saec.errors import UserError
from saec.run import artifacts as A
from saec.runtime import fastpath
from saec.runtime import plan as planning
from saec.runtime.execution import Execution
from saec.runtime.kernels import cpu_spike
from saec.runtime.model import SpikingAutoencoder
from saec.runtime.plan import DEFAULT_LAYER, DEFAULT_PLAN, ExecutionPlan, LayerPlan
from saec.training import train as loop
from saec.training.objective import objective
from tests.conftest import SPECS
from tests.training.test_train import light_finish, mini  # noqa: F401 (light_finish: a fixture)

PRESETS = {"saec": SPECS / "sae_dense.yaml", "reference": SPECS / "reference" / "sae_dense.yaml"}
LAYERS = ("conv1", "conv2", "latent", "fc_dec", "deconv1", "output")
#: The SAE's layer structure on 8 x 8 images: conv 3x3 -> 6x6x4 -> conv 3x3 -> 4x4x4 = 64 -> 10 -> 64 -> back.
TINY = ["input.shape=[1,8,8]", "encoding.timesteps=4",
        "layers.conv1.out_channels=4", "layers.conv1.kernel_size=3",
        "layers.conv2.out_channels=4", "layers.conv2.kernel_size=3", "layers.latent.out_features=10",
        "layers.fc_dec.out_features=64", "layers.unflat.shape=[4,4,4]",
        "layers.deconv1.out_channels=4", "layers.deconv1.kernel_size=3", "layers.output.kernel_size=3"]
#: T = 4 x B = 48 = 192 rows: 64-row chunks make three of them.
BATCH = 48


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """A plan with ``threads`` sets torch's thread count for the process: each test gets it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _tiny_model(preset: str = "saec") -> SpikingAutoencoder:
    _, graph = compile_spec(str(PRESETS[preset]), TINY)
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():  # every layer must spike at T = 4 (the paper's init leaves the decoder silent)
        for p in model.parameters():
            p.mul_(3.0)
    return model


def _images(count: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(count, 1, 8, 8, generator=gen) < 0.3).float()
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1).clamp(0, 1) * 1.5


def _every_layer(model: SpikingAutoencoder, **choices) -> tuple[tuple[str, LayerPlan], ...]:
    return tuple(sorted((key, LayerPlan(**choices)) for key in set(model._layer_keys.values())))


#: id -> the plan, from the model (layer keys); together they hold every candidate value of every knob
#: (test_the_cases_cover_every_candidate_of_the_planner checks that against the planner's lists).
PLAN_CASES = {
    "default": lambda m: DEFAULT_PLAN,
    "chunk_bytes=1 (64-row chunks)": lambda m: ExecutionPlan(chunk_bytes=1),
    "chunk_rows=64": lambda m: ExecutionPlan(layers=_every_layer(m, chunk_rows=64)),
    "chunk_rows=70 (2 uneven chunks)": lambda m: ExecutionPlan(layers=_every_layer(m, chunk_rows=70)),
    "chunk_rows=whole": lambda m: ExecutionPlan(chunk_bytes=1, layers=_every_layer(m, chunk_rows=4 * BATCH)),
    "channels_last=False": lambda m: ExecutionPlan(layers=_every_layer(m, channels_last=False)),
    "handoff_layout=False": lambda m: ExecutionPlan(layers=_every_layer(m, handoff_layout=False)),
    "output_algorithm=onednn": lambda m: ExecutionPlan(layers=_every_layer(m, output_algorithm="onednn")),
    "weight_grad=dense": lambda m: ExecutionPlan(layers=_every_layer(m, weight_grad="dense")),
    "weight_grad=spike": lambda m: ExecutionPlan(layers=_every_layer(m, weight_grad="spike")),
    "input_grad=dense": lambda m: ExecutionPlan(layers=_every_layer(m, input_grad="dense")),
    "input_grad=spike": lambda m: ExecutionPlan(layers=_every_layer(m, input_grad="spike")),
    "forward=dense": lambda m: ExecutionPlan(layers=_every_layer(m, forward="dense")),
    "forward=dense, output_algorithm=onednn": lambda m: ExecutionPlan(
        layers=_every_layer(m, forward="dense", output_algorithm="onednn")),
    "forward=dense, channels_last=False": lambda m: ExecutionPlan(
        layers=_every_layer(m, forward="dense", channels_last=False)),
    "min_pooled_bytes=1024": lambda m: ExecutionPlan(min_pooled_bytes=1024),
    "min_pooled_bytes=256KiB": lambda m: ExecutionPlan(min_pooled_bytes=256 << 10),
    "min_pooled_bytes=16MiB": lambda m: ExecutionPlan(min_pooled_bytes=16 << 20),
    **{f"threads={k}": (lambda m, k=k: ExecutionPlan(threads=k)) for k in planning.thread_candidates() if k},
    "everything off the default": lambda m: ExecutionPlan(
        min_pooled_bytes=1024, threads=1,
        layers=_every_layer(m, chunk_rows=64, channels_last=False, handoff_layout=False, output_algorithm="onednn",
                            weight_grad="spike", input_grad="spike")),
}


def _train_pass(model, x, path, plan):
    model.execution = Execution(path=path, plan=plan)
    model.zero_grad(set_to_none=True)
    out = model(x, generator=torch.Generator().manual_seed(1), record={*LAYERS, "_encode"})
    loss, _ = objective(model, out, x)
    loss.backward()
    return out, loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("case", list(PLAN_CASES))
@pytest.mark.parametrize("preset", list(PRESETS))
def test_fast_path_equals_reference_path_under_every_plan(preset, case):
    model = _tiny_model(preset)
    plan = PLAN_CASES[case](model)
    x = _images(BATCH)
    _train_pass(model, x, "fast", plan)
    fast, fast_loss, fast_grads = _train_pass(model, x, "fast", plan)  # the second step reuses pooled buffers
    ref, ref_loss, ref_grads = _train_pass(model, x, "reference", plan)
    model.execution = Execution(plan=plan)
    with torch.no_grad():
        infer = model(x, generator=torch.Generator().manual_seed(1), record=set(LAYERS))
        stepwise = model.forward_stepwise(x, ref.encoded)
    for layer in LAYERS:
        assert fast.trains[layer].any(), layer  # the comparison means something only where spikes are
        assert torch.equal(fast.trains[layer], ref.trains[layer]), layer
        assert torch.equal(infer.trains[layer], ref.trains[layer]), layer
        assert torch.equal(stepwise[layer], ref.trains[layer]), layer
    assert torch.equal(fast_loss, ref_loss)
    for key, want in ref_grads.items():  # chunked weight gradients are sums of chunk sums
        scale = want.abs().max().item()
        assert scale > 0, key
        torch.testing.assert_close(fast_grads[key], want, rtol=5e-5, atol=5e-5 * scale, msg=key)


def test_the_cases_cover_every_candidate_of_the_planner():
    """Each value the planner may choose (on the tiny network and on the paper's at B = 64, T = 16) is
    one the bit-identity test above runs: chunk rows from 64 up stand for any rows from 64 up."""
    model = _tiny_model()
    tested: dict[str, set] = {}
    for make in PLAN_CASES.values():
        plan = make(model)
        tested.setdefault("min_pooled_bytes", set()).add(plan.min_pooled_bytes)
        tested.setdefault("threads", set()).add(plan.threads)
        for _, layer in plan.layers or (("", DEFAULT_LAYER),):
            for f in dataclasses.fields(LayerPlan):
                tested.setdefault(f.name, set()).add(getattr(layer, f.name))
    _, paper = compile_spec(str(PRESETS["saec"]), ["encoding.timesteps=16"])
    for graph, batch in ((model.graph, BATCH), (paper, 64)):
        for node, knobs in planning.plan_candidates(graph, batch).items():
            for knob, values in knobs.items():
                for value in values:
                    if knob == "chunk_rows" and value is not None:
                        assert value >= fastpath.MIN_CHUNK_ROWS and 64 in tested[knob], (node, value)
                    else:
                        assert value in tested[knob], (node, knob, value)


# ---------------------------------------------------------------- each knob changes what runs
def _observe(monkeypatch, model, plan) -> dict:
    """What the fast path did in one training step under ``plan``."""
    seen = {"chunks": [], "conv2d_layouts": set(), "gemm_calls": 0, "conv2_current": None, "fc_dec_dims": None,
            "spike_forward_calls": 0}
    real_chunks, real_conv2d, real_forward = fastpath._chunks, torch.nn.functional.conv2d, cpu_spike.forward

    def spike_forward(*args):
        seen["spike_forward_calls"] += 1
        return real_forward(*args)
    real_gemm, real_synapse = fastpath._single_output_transposed, fastpath.spike_synapse

    def chunks(*args, **kwargs):
        found = real_chunks(*args, **kwargs)
        seen["chunks"].append(len(found))
        return found

    def conv2d(x, *args, **kwargs):
        if x.shape[1] > 1:  # one channel: both layouts are the same bytes (conv1's input)
            seen["conv2d_layouts"].add("contiguous" if x.is_contiguous() else "channels_last")
        return real_conv2d(x, *args, **kwargs)

    def gemm(*args, **kwargs):
        seen["gemm_calls"] += 1
        return real_gemm(*args, **kwargs)

    def synapse(op, *args, **kwargs):
        y = real_synapse(op, *args, **kwargs)
        if isinstance(op, ops.Conv2d) and op.in_channels == 4:  # conv2, read by the latent linear
            seen["conv2_current"] = "contiguous" if y.is_contiguous() else "channels_last"
        if isinstance(op, ops.Linear) and op.out_features == 64:  # fc_dec, read by the transposed convs
            seen["fc_dec_dims"] = y.dim()
        return y

    monkeypatch.setattr(fastpath, "_chunks", chunks)
    monkeypatch.setattr(torch.nn.functional, "conv2d", conv2d)
    monkeypatch.setattr(fastpath, "_single_output_transposed", gemm)
    monkeypatch.setattr(fastpath, "spike_synapse", synapse)
    monkeypatch.setattr(cpu_spike, "forward", spike_forward)
    model.release_buffers()
    _train_pass(model, _images(BATCH), "fast", plan)
    seen["pooled"] = model._pool.misses
    monkeypatch.undo()
    return seen


@pytest.mark.parametrize("knob, value, observed, default_seen, planned_seen", [
    ("chunk_rows", 64, lambda s: max(s["chunks"]), 1, 3),
    ("channels_last", False, lambda s: s["conv2d_layouts"], {"channels_last"}, {"contiguous"}),
    ("handoff_layout", False, lambda s: (s["conv2_current"], s["fc_dec_dims"]), ("contiguous", 5),
     ("channels_last", 3)),
    ("output_algorithm", "onednn", lambda s: s["gemm_calls"] > 0, True, False),
    ("forward", "dense", lambda s: s["spike_forward_calls"], 6, 0),
])
def test_each_layer_knob_changes_what_runs(monkeypatch, knob, value, observed, default_seen, planned_seen):
    model = _tiny_model()
    # the dense forward's knobs show where the dense forward runs (the built-in forward is spike-driven)
    base = {"forward": "dense"} if knob in ("channels_last", "output_algorithm") else {}
    assert observed(_observe(monkeypatch, model, ExecutionPlan(layers=_every_layer(model, **base)))) == default_seen
    plan = ExecutionPlan(layers=_every_layer(model, **{**base, knob: value}))
    assert observed(_observe(monkeypatch, model, plan)) == planned_seen


def _kernel_ops(monkeypatch, model, kernel: str, knob: str) -> list:
    """The ops ``cpu_spike.<kernel>`` ran for in a training pass with ``knob`` "dense" on every layer
    (asserted: none), then in one with it "spike"."""
    calls = []
    real = getattr(cpu_spike, kernel)
    monkeypatch.setattr(cpu_spike, kernel, lambda op, *args: calls.append(op) or real(op, *args))
    _train_pass(model, _images(BATCH), "fast", ExecutionPlan(layers=_every_layer(model, **{knob: "dense"})))
    assert calls == []
    _train_pass(model, _images(BATCH), "fast", ExecutionPlan(layers=_every_layer(model, **{knob: "spike"})))
    return calls


@pytest.mark.skipif(cpu_spike.library() is None, reason="no C compiler: the spike-driven kernel is not built")
def test_the_weight_grad_knob_changes_what_runs(monkeypatch):
    calls = _kernel_ops(monkeypatch, _tiny_model(), "weight_grad", "weight_grad")
    assert sorted(type(op).__name__ for op in calls) == sorted(["Conv2d"] * 2 + ["Linear"] * 2 +
                                                               ["ConvTranspose2d"] * 2)


@pytest.mark.skipif(cpu_spike.library() is None, reason="no C compiler: the spike-driven kernel is not built")
@pytest.mark.parametrize("preset", list(PRESETS))
def test_the_input_grad_knob_changes_what_runs_where_the_input_is_spike_gated(monkeypatch, preset):
    model = _tiny_model(preset)
    gated = {name for name in LAYERS if name != "output"
             and model.graph.op(f"{name}.lif").surrogate == "spike_gated"}
    calls = _kernel_ops(monkeypatch, model, "input_grad", "input_grad")
    # every synapse reading a gated layer's spikes (conv1 reads the encoding: no input gradient)
    readers = {"conv1": "conv2", "conv2": "latent", "latent": "fc_dec", "fc_dec": "deconv1", "deconv1": "output"}
    assert sorted(id(op) for op in calls) == sorted(id(model.graph.op(readers[name])) for name in gated)
    assert len(gated) == 5  # both presets' surrogate is spike_gated (the published code's is)
    knobs = planning.plan_candidates(model.graph, BATCH)
    assert {node for node, k in knobs.items() if "input_grad" in k} == {readers[name] for name in gated}


def test_the_pool_threshold_changes_what_is_pooled(monkeypatch):
    model = _tiny_model()
    assert _observe(monkeypatch, model, DEFAULT_PLAN)["pooled"] == 0  # tiny tensors: all below 1 MiB
    assert _observe(monkeypatch, model, ExecutionPlan(min_pooled_bytes=1024))["pooled"] > 0


def test_the_thread_count_is_set_when_the_model_runs():
    model = _tiny_model()
    torch.set_num_threads(2)
    model.execution = Execution(plan=ExecutionPlan(threads=1))
    with torch.no_grad():
        model(_images(2))
    assert torch.get_num_threads() == 1
    model.execution = Execution()  # the default plan leaves the count as it is
    with torch.no_grad():
        model(_images(2))
    assert torch.get_num_threads() == 1


# ---------------------------------------------------------------- the planner
def test_the_planner_keeps_each_knobs_fastest_candidate():
    """A fake timer: 1 s for every trial except the candidates listed, so the plan is known; every
    listed candidate (plan_candidates) is tried exactly once and nothing is run."""
    _, graph = compile_spec(str(PRESETS["saec"]), ["encoding.timesteps=4"])
    batch = 64  # 256 rows: conv2 and deconv1 have chunk candidates
    layers = {layer.node: layer for layer in planning.synapse_layers(graph, batch)}
    candidates = planning.plan_candidates(graph, batch)
    assert candidates["conv2"]["chunk_rows"] == [None, 64]  # 1 chunk under 8 MiB, 4 under 2 MiB
    other_threads = (candidates["global"]["threads"] + [None])[1]  # 1 where torch runs more threads
    faster = {("output", "output_algorithm", "onednn"): 0.5, ("conv2", "channels_last", False): 0.9,
              ("conv1", "channels_last", False): 1.5, ("fc_dec", "handoff_layout", False): 0.7,
              ("conv2", "chunk_rows", 64): 0.8, ("global", "min_pooled_bytes", 16 << 20): 0.2,
              ("global", "threads", other_threads): 0.1}
    node_of = {layer.key: node for node, layer in layers.items()}
    tried = []

    def timer(trial: planning.Trial) -> float:
        node = "global" if trial.layer is None else node_of[trial.layer]
        tried.append((node, trial.knob, trial.value))
        return faster.get((node, trial.knob, trial.value), 1.0)

    plan = planning.plan_network(graph, batch, timer=timer)
    want = [(node, knob, value) for node, knobs in candidates.items() for knob, values in knobs.items()
            if len(values) > 1 for value in values]
    assert sorted(tried, key=repr) == sorted(want, key=repr) and len(tried) == len(set(tried))
    assert plan.min_pooled_bytes == 16 << 20 and plan.threads == other_threads
    assert plan.layer(layers["output"].key).output_algorithm == "onednn"
    assert plan.layer(layers["conv2"].key) == LayerPlan(chunk_rows=64, channels_last=False)
    assert plan.layer(layers["conv1"].key) == DEFAULT_LAYER  # slower off the default: kept
    assert plan.layer(layers["fc_dec"].key) == LayerPlan(handoff_layout=False)
    assert {key for key, _ in plan.layers} == {layers[n].key for n in ("output", "conv2", "fc_dec")}
    # ties keep the built-in plan
    assert planning.plan_network(graph, batch, timer=lambda trial: 1.0) == DEFAULT_PLAN
    assert planning.plan_network(graph, batch, device="meta", timer=timer) == DEFAULT_PLAN  # off the CPU


def test_the_planners_trials_run_each_layer_forward_and_backward():
    """The real trials (run once each, timed by nobody) on the tiny network: every candidate runs."""
    model = _tiny_model()
    runs = []

    def run_once(trial: planning.Trial) -> float:
        trial.run()
        runs.append((trial.knob, trial.value))
        return 1.0

    assert planning.plan_network(model.graph, BATCH, timer=run_once) == DEFAULT_PLAN
    assert ("output_algorithm", "onednn") in runs and ("handoff_layout", False) in runs
    assert ("min_pooled_bytes", 256 << 10) in runs and ("threads", None) in runs


def test_plan_records_round_trip_and_refuse_bad_values():
    model = _tiny_model()
    plan = PLAN_CASES["everything off the default"](model)
    assert ExecutionPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert not plan.is_default and DEFAULT_PLAN.is_default
    with pytest.raises(ValueError, match="output_algorithm must be one of gemm, onednn, got 'fft'"):
        LayerPlan(output_algorithm="fft")
    with pytest.raises(ValueError, match="weight_grad must be one of dense, spike or null, got 'sparse'"):
        LayerPlan(weight_grad="sparse")
    with pytest.raises(ValueError, match="chunk_rows must be a positive integer or null, got 0"):
        LayerPlan(chunk_rows=0)
    with pytest.raises(ValueError, match="min_pooled_bytes must be a positive integer or null, got -1"):
        ExecutionPlan(min_pooled_bytes=-1)
    with pytest.raises(ValueError, match="not an execution plan"):
        ExecutionPlan.from_dict({"chunk_bytes": None})
    with pytest.raises(TypeError, match="plan must be a saec.runtime.plan.ExecutionPlan"):
        Execution(plan={"chunk_bytes": None})


# ---------------------------------------------------------------- the cache
class CountingTimer:
    """A fake timer that counts trials: onednn is 'faster', so the plan is not the default."""

    def __init__(self) -> None:
        self.trials = 0

    def __call__(self, trial: planning.Trial) -> float:
        self.trials += 1
        return 0.5 if trial.value == "onednn" else 1.0


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A temporary plan cache folder (not through SAEC_CACHE_DIR: the C kernel would be rebuilt there)."""
    folder = tmp_path / "cache" / "plans"
    monkeypatch.setattr(planning, "cache_dir", lambda: folder)
    return folder


def _resolve(graph, timer, policy="auto", **kwargs):
    lines = []
    resolved = planning.resolve_plan(graph, BATCH, policy=policy, timer=timer, log=lines.append, **kwargs)
    return resolved, lines


def test_cache_round_trip(cache):
    graph = _tiny_model().graph
    timer = CountingTimer()
    first, lines = _resolve(graph, timer)
    assert first.source == "measured" and timer.trials > 0 and lines == []
    assert first.plan.layer(planning.synapse_layers(graph)[-1].key).output_algorithm == "onednn"
    path = planning.cache_path(planning.machine_fingerprint())
    assert first.path == path and path.parent == cache and list(cache.iterdir()) == [path]  # no temporaries
    doc = json.loads(path.read_text())
    assert doc["fingerprint"] == planning.machine_fingerprint() and doc["format"] == planning.CACHE_FORMAT
    assert list(doc["plans"]) == [planning.network_key(graph, BATCH)]
    assert first.line(graph).startswith("plan: output output_algorithm=onednn (measured in ")
    assert first.line(graph).endswith(f", cached in {path})")
    timer.trials = 0
    again, lines = _resolve(graph, timer)
    assert again.source == "cached" and again.plan == first.plan and timer.trials == 0 and lines == []
    assert again.line(graph) == f"plan: cached ({path}): output output_algorithm=onednn"
    # another batch size is another network shape: planned beside the first
    other = planning.resolve_plan(graph, 2, policy="auto", timer=timer, log=lines.append)
    assert other.source == "measured" and len(json.loads(path.read_text())["plans"]) == 2


def test_another_machine_plans_afresh(cache, monkeypatch):
    graph = _tiny_model().graph
    _resolve(graph, CountingTimer())
    real = planning.machine_fingerprint()
    monkeypatch.setattr(planning, "machine_fingerprint", lambda device="cpu": {**real, "threads": real["threads"] + 1})
    timer = CountingTimer()
    resolved, lines = _resolve(graph, timer)
    assert resolved.source == "measured" and timer.trials > 0 and lines == []
    assert len(list(cache.iterdir())) == 2  # one file per machine
    # a file under this machine's name that another machine wrote: one warning, planned afresh
    path = planning.cache_path(planning.machine_fingerprint())
    doc = json.loads(path.read_text())
    doc["fingerprint"]["cpu"] = "another CPU"
    path.write_text(json.dumps(doc))
    resolved, lines = _resolve(graph, CountingTimer())
    assert resolved.source == "measured" and len(lines) == 1
    assert lines[0].startswith(f"warning: plan cache {path}: made on another machine or setup")


@pytest.mark.parametrize("content, reason", [
    ("{not json", "ignored (Expecting property name"),
    ('{"format": 99, "plans": {}}', "ignored (not a saec plan cache of format 1)"),
    (None, "the entry for this network is unusable (chunk_rows must be a positive integer or null, got -3)"),
])
def test_a_corrupt_cache_is_ignored_with_one_warning_and_replanned(cache, content, reason):
    graph = _tiny_model().graph
    path = planning.cache_path(planning.machine_fingerprint())
    if content is None:  # a readable file whose entry for this network is broken
        _resolve(graph, CountingTimer())
        doc = json.loads(path.read_text())
        entry = doc["plans"][planning.network_key(graph, BATCH)]["plan"]
        bad_layer = {**dataclasses.asdict(DEFAULT_LAYER), "chunk_rows": -3}
        entry["layers"] = {"conv2d(1x8x8->4x6x6 k3x3 s1x1 p0x0)": bad_layer}
        content = json.dumps(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    timer = CountingTimer()
    resolved, lines = _resolve(graph, timer)
    assert resolved.source == "measured" and timer.trials > 0
    assert len(lines) == 1 and lines[0].startswith(f"warning: plan cache {path}: {reason}")
    assert lines[0].endswith(" the next plan measured replaces it")
    assert json.loads(path.read_text())["plans"]  # replaced by a good one
    assert _resolve(graph, CountingTimer())[0].source == "cached"


def test_replan_measures_again_and_replaces_the_entry(cache):
    graph = _tiny_model().graph
    _resolve(graph, CountingTimer())
    path = planning.cache_path(planning.machine_fingerprint())
    timer = lambda trial: 0.5 if trial.value is False else 1.0  # noqa: E731 - now layouts off are "faster"
    resolved, _ = _resolve(graph, timer, policy="replan")
    assert resolved.source == "measured"
    assert resolved.plan.layer(planning.synapse_layers(graph)[-1].key).output_algorithm == "gemm"
    cached = planning.cached_plan(planning.network_key(graph, BATCH), planning.machine_fingerprint(), print)
    assert cached == resolved.plan and len(json.loads(path.read_text())["plans"]) == 1


def test_default_policy_and_short_runs_measure_nothing(cache):
    graph = _tiny_model().graph
    timer = CountingTimer()
    resolved, lines = _resolve(graph, timer, policy="default")
    assert resolved.plan == DEFAULT_PLAN and resolved.source == "default" and timer.trials == 0
    resolved, lines = _resolve(graph, timer, measure=False)
    assert resolved.source == "unplanned" and resolved.plan == DEFAULT_PLAN and timer.trials == 0
    assert not cache.exists() and lines == []
    resolved, _ = _resolve(graph, timer, device="meta")
    assert resolved.source == "default" and resolved.reason == "nothing to plan on meta" and timer.trials == 0
    _, ae = compile_spec(str(SPECS / "ae.yaml"), [])
    resolved, _ = _resolve(ae, timer)
    assert resolved.reason == "nothing to plan for a network without spiking layers" and timer.trials == 0
    assert planning.plan_network(ae, 2, timer=timer) == DEFAULT_PLAN and timer.trials == 0
    with pytest.raises(ValueError, match="plan policy must be one of"):
        _resolve(graph, timer, policy="sometimes")


def test_an_unwritable_cache_warns_and_the_plan_is_still_used(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(planning, "cache_dir", lambda: blocker / "plans")
    resolved, lines = _resolve(_tiny_model().graph, CountingTimer())
    assert resolved.source == "measured" and not resolved.plan.is_default and resolved.path is None
    assert len(lines) == 1 and lines[0].startswith(f"warning: plan cache {blocker / 'plans'}")
    assert "cannot write it" in lines[0] and resolved.line().endswith("not cached)")


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.setenv("SAEC_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert planning.cache_dir() == tmp_path / "explicit" / "plans"
    monkeypatch.delenv("SAEC_CACHE_DIR")
    assert planning.cache_dir() == tmp_path / "xdg" / "saec" / "plans"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert planning.cache_dir() == tmp_path / "home" / ".cache" / "saec" / "plans"
    fingerprint = planning.machine_fingerprint()
    assert set(fingerprint) == {"cpu", "logical_cores", "torch", "threads", "device"}
    assert fingerprint["threads"] == torch.get_num_threads() and fingerprint["torch"] == torch.__version__


def test_the_policy_switch(monkeypatch):
    monkeypatch.delenv(planning.ENV_PLAN, raising=False)
    assert planning.plan_policy("auto") == "auto"
    monkeypatch.setenv(planning.ENV_PLAN, "replan")
    assert planning.plan_policy("auto") == "replan" and planning.plan_policy("auto", "default") == "default"
    monkeypatch.setenv(planning.ENV_PLAN, "bogus")
    with pytest.raises(UserError) as caught:
        planning.plan_policy("auto")
    assert str(caught.value) == "SAEC_PLAN: must be one of default, auto, replan, got 'bogus'"
    with pytest.raises(UserError) as caught:
        planning.plan_policy("default", "often")
    assert str(caught.value) == "plan: must be one of default, auto, replan, got 'often'"


# ---------------------------------------------------------------- the command line
runner = CliRunner()
TINY_SET = [word for item in TINY for word in ("--set", item)]


def _one_line_error(result) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_saec_plan_refuses_bad_input_in_one_located_line(tmp_path, cache):
    bad = tmp_path / "bad.yaml"
    text = PRESETS["saec"].read_text()
    bad.write_text(text.replace("out_features: 100", "out_feature: 100"))
    line = text[:text.index("out_features: 100")].count("\n") + 1
    err = _one_line_error(runner.invoke(app, ["plan", str(bad)]))
    assert err.startswith(f"error: {bad}:{line}: layers.latent.out_feature: unknown field 'out_feature'")
    err = _one_line_error(runner.invoke(app, ["plan", str(PRESETS["saec"]), "--set", "encoding.timestep=4"]))
    assert err.startswith("error: --set: encoding.timestep: unknown field 'timestep'")
    err = _one_line_error(runner.invoke(app, ["plan", str(PRESETS["saec"]), "--batch", "0"]))
    assert err == "error: --batch: must be at least 1, got 0"
    err = _one_line_error(runner.invoke(app, ["plan", str(PRESETS["saec"]), "--show", "--replan"]))
    assert err == "error: --show: give --show (print what is cached) or --replan (measure again), not both"
    assert not cache.exists()


def test_saec_train_refuses_a_bad_plan_policy(tmp_path, monkeypatch):
    monkeypatch.setenv(planning.ENV_PLAN, "fastest")
    out = tmp_path / "run"
    err = _one_line_error(runner.invoke(app, ["train", str(PRESETS["saec"]), "--out", str(out)]))
    assert err == "error: SAEC_PLAN: must be one of default, auto, replan, got 'fastest'"
    assert not out.exists()


def test_saec_plan_measures_caches_shows_and_replans(cache, monkeypatch):
    timer = CountingTimer()
    monkeypatch.setattr(planning, "median_timer", lambda *a, **k: timer)
    spec = str(PRESETS["saec"])
    path = planning.cache_path(planning.machine_fingerprint())
    shown = runner.invoke(app, ["plan", spec, *TINY_SET, "--show"])
    assert shown.exit_code == 0 and "plan: none cached for this network at B=64" in shown.stdout
    assert "  output output_algorithm: gemm (default)" in shown.stdout and timer.trials == 0
    assert "  conv1 weight_grad: by input activity, spike-driven up to 0.1 (default)" in shown.stdout
    measured = runner.invoke(app, ["plan", spec, *TINY_SET])
    assert measured.exit_code == 0, measured.stderr
    assert f"plan: output output_algorithm=onednn (measured in " in measured.stdout
    assert f"cached in {path})" in measured.stdout and "  output output_algorithm: onednn\n" in measured.stdout
    assert "  min_pooled_bytes: 1048576 (default)" in measured.stdout and timer.trials > 0
    trials = timer.trials
    cached = runner.invoke(app, ["plan", spec, *TINY_SET])
    assert f"plan: cached ({path}): output output_algorithm=onednn" in cached.stdout and timer.trials == trials
    shown = runner.invoke(app, ["plan", spec, *TINY_SET, "--show"])
    assert f"plan: cached ({path})" in shown.stdout and timer.trials == trials
    replanned = runner.invoke(app, ["plan", spec, *TINY_SET, "--replan"])
    assert "(measured in " in replanned.stdout and timer.trials == 2 * trials
    other_batch = runner.invoke(app, ["plan", spec, *TINY_SET, "--batch", "8", "--show"])
    assert "plan: none cached for this network at B=8" in other_batch.stdout
    ae = runner.invoke(app, ["plan", str(SPECS / "ae.yaml")])
    assert ae.exit_code == 0 and ae.stdout == "plan: default (nothing to plan for a network without spiking layers)\n"
    assert timer.trials == 2 * trials


@pytest.mark.usefixtures("light_finish")
def test_saec_train_uses_the_cached_plan_and_resume_keeps_it(tmp_path, cache, monkeypatch):
    """auto: the cached plan (this run is too short to measure one); the checkpoint keeps it, and a
    resume runs it although the cache has been emptied meanwhile."""
    from saec.run.train import train

    spec, graph = mini(tmp_path)
    model = SpikingAutoencoder(graph)
    output_key = model._layer_keys["output"]
    plan = ExecutionPlan(layers=((output_key, LayerPlan(output_algorithm="onednn")),))
    batch = spec.training.batch_size
    planning.store_plan(planning.network_key(model.graph, batch), plan, planning.machine_fingerprint(), 1.0, print)
    seen = []
    real_objective = objective

    def spy(m, *args, **kwargs):
        seen.append(m.execution.plan)
        return real_objective(m, *args, **kwargs)

    monkeypatch.setattr(loop, "objective", spy)
    lines = []
    out = tmp_path / "run"
    with pytest.raises(loop.TrainingInterrupted):
        train(spec, graph, out, device="cpu", progress=False, log=lines.append, plan="auto", stop_after_steps=1)
    assert f"plan: cached ({planning.cache_path(planning.machine_fingerprint())}): output output_algorithm=onednn" \
        in lines
    assert seen and all(p == plan for p in seen)
    assert ExecutionPlan.from_dict(A.load_torch(out / A.TRAIN_STATE)["plan"]) == plan
    for f in cache.iterdir():
        f.unlink()
    seen.clear()
    lines.clear()
    train(spec, graph, out, device="cpu", progress=False, log=lines.append, plan="auto", resume=True)
    assert "plan: the run's own, from its checkpoint (output output_algorithm=onednn)" in lines
    assert seen and all(p == plan for p in seen)
    # a short run with nothing cached: the default plan, nothing measured, said in one line
    lines.clear()
    with pytest.raises(loop.TrainingInterrupted):
        train(spec, graph, tmp_path / "fresh", device="cpu", progress=False, log=lines.append, plan="auto",
              stop_after_steps=1)
    assert [line for line in lines if line.startswith("plan:")] == [
        "plan: default (a short run of 6 steps is not worth measuring and none is cached for this network; "
        "`saec plan SPEC` measures one)"]
    assert not list(cache.iterdir())
