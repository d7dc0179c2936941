"""benchmarks/train_step.py --smoke: every framework trains a few tiny steps and the report
ends with the one-line summary (the real benchmark never runs in tests); each saec switch
changes what it claims to (observed by switch_probe.py in the worker's own code)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "train_step.py"
SUMMARY = re.compile(r"^saec_vs_best_peer=(\S+) mem_vs_snntorch=(\S+)$")


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_smoke_run_reports_every_framework_and_ends_with_the_summary():
    done = _run("--rounds", "1")
    lines = done.stdout.strip().splitlines()
    match = SUMMARY.match(lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) > 0 and math.isfinite(float(match.group(1)))
    rows = [line for line in lines if line.startswith("| 2 |") or line.startswith("| 3 |")]
    names = {row.split("|")[2].strip() for row in rows}
    assert {"saec", "torch_loop"} <= names
    for peer in ("snntorch", "spikingjelly"):  # present, or skipped with the install command
        assert peer in names or f"skipping {peer} unavailable" in done.stderr
    if "spikingjelly" not in names:
        assert "pip install --no-deps 'spikingjelly==2.0.0' loguru packaging tqdm" in done.stderr
    for row in rows:
        cells = row.split("|")
        assert float(cells[3]) > 0 and float(cells[7]) > 0  # wall and CPU seconds per step


def test_worker_processes_report_their_own_peak_memory():
    done = _run("--frameworks", "saec", "torch_loop", "--timesteps", "2", "--rounds", "1",
                env={"SAEC_BENCH_SUBPROCESS": "1"})
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| 2 |")]
    assert [r[2].strip() for r in rows] == ["saec", "torch_loop"]
    for r in rows:
        assert float(r[9].replace(",", "")) > 0  # peak MB of that worker alone
    assert SUMMARY.match(done.stdout.strip().splitlines()[-1])


def test_unknown_saec_switch_is_refused():
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--frameworks", "saec:warp-speed",
                           "--timesteps", "2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "unknown saec switches ['warp-speed']" in done.stderr + done.stdout


def test_every_saec_switch_runs():
    """The lever switches of benchmarks/README.md's lever log (a broken one would fail only
    in the long benchmark run)."""
    names = ["saec:torch-scan+float-saves+no-channels-last+no-pool+omp-active+ftz", "saec:reference",
             "saec:keep-memory+heap-no-trim-change", "saec:bf16"]
    done = _run("--frameworks", *names, "--timesteps", "2", "--rounds", "1")
    rows = [line.split("|")[2].strip() for line in done.stdout.splitlines() if line.startswith("| 2 |")]
    assert rows == names


# ---------------------------------------------------------------- each switch changes what it claims
PROBE = REPO / "tests" / "benchmarks" / "switch_probe.py"
# Five worker processes instead of fifteen: switches grouped so that within a group no switch moves another's
# observation. Each switch alone was probed once to see what it moves besides its own: torch-scan also drops
# the channels-last saves and most pooled buffers, float-saves a few pooled buffers, reference the fused scan
# and the C kernel calls; so no-pool and no-channels-last sit apart from torch-scan and float-saves.
PROBE_RUNS = ("saec", "saec:float-saves+thp+ftz+omp-active+torch-scan+keep-memory",
              "saec:reference+heap-no-trim-change", "saec:no-channels-last+bf16+no-pool",
              "saec:dense-wgrad+dense-igrad+dense-forward")
# What the worker may inherit that a switch sets: the probe starts without it.
SWITCH_ENVIRONMENT = ("OMP_WAIT_POLICY", "SAEC_KEEP_FREED_MEMORY", "SAEC_NATIVE_KERNELS", "THP_MEM_ALLOC_ENABLE")


@pytest.fixture(scope="module")
def observed() -> dict[str, dict]:
    """switch_probe.py's observations for each of PROBE_RUNS, keyed by switch ("" for plain saec)."""
    env = {k: v for k, v in os.environ.items() if k not in SWITCH_ENVIRONMENT}
    procs = {name: subprocess.Popen([sys.executable, str(PROBE), name], cwd=REPO, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in PROBE_RUNS}
    by_switch = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert [set(r) for r in result["replies"]] == [{"ready"}, {"seconds", "cpu_seconds"},
                                                       {"seconds", "cpu_seconds"}, {"peak_mb", "loss"}]
        assert math.isfinite(result["replies"][-1]["loss"])
        for switch in name.split(":", 1)[1].split("+") if ":" in name else [""]:
            by_switch[switch] = result
    return by_switch


def test_every_switch_has_a_probe(observed):
    source = SCRIPT.read_text()
    accepted = set(re.findall(r'"([a-z0-9-]+)"', re.search(r"unknown = switches - \{(.*?)\}", source, re.S)[1]))
    assert accepted == set(observed) - {""}


def test_no_pool_allocates_every_large_buffer_afresh(observed):
    base, switched = observed[""], observed["no-pool"]
    # Plain saec: the second step's large buffers all come back from the pool; no-pool: all are new.
    assert base["pool_hits"] > 0 and base["fresh_pool_tensors"] == 0
    assert switched["pool_hits"] == 0 and switched["fresh_pool_tensors"] >= base["pool_hits"]


def test_float_saves_keeps_float_inputs_instead_of_bool_spikes(observed):
    base, switched = observed[""]["saved"], observed["float-saves"]["saved"]
    moved = base["bool"] - switched["bool"]
    assert moved > 0 and switched["float32"] - base["float32"] == moved


def test_thp_aligns_large_blocks_to_pages(observed):
    assert not observed[""]["thp_aligned"] and observed["thp"]["thp_aligned"]


def test_dense_wgrad_computes_no_weight_gradient_from_spikes(observed):
    assert observed[""]["spike_weight_grad_calls"] > 0 and observed["dense-wgrad"]["spike_weight_grad_calls"] == 0


def test_dense_igrad_computes_no_input_gradient_at_the_active_inputs_only(observed):
    assert observed[""]["spike_input_grad_calls"] > 0 and observed["dense-igrad"]["spike_input_grad_calls"] == 0


def test_dense_forward_runs_no_spike_driven_forward(observed):
    assert observed[""]["spike_forward_calls"] == 6 and observed["dense-forward"]["spike_forward_calls"] == 0


def test_ftz_flushes_denormals(observed):
    assert not observed[""]["denormal_flushed"] and observed["ftz"]["denormal_flushed"]


def test_omp_active_leaves_the_wait_policy_unset(observed):
    assert observed[""]["omp_wait_policy"] == "PASSIVE" and observed["omp-active"]["omp_wait_policy"] is None


def test_reference_runs_without_the_fused_scan(observed):
    assert observed[""]["lif_scan_nodes"] > 0 and observed["reference"]["lif_scan_nodes"] == 0


def test_bf16_computes_in_bfloat16(observed):
    assert "bfloat16" not in observed[""]["computed"] and observed["bf16"]["computed"].get("bfloat16", 0) > 0
    # The loss is still reported in float32 and close to plain saec's (same weights and images).
    assert observed["bf16"]["replies"][-1]["loss"] == pytest.approx(observed[""]["replies"][-1]["loss"], rel=1e-2)


def test_torch_scan_never_calls_the_c_kernel(observed):
    if observed[""]["c_scan_calls"] == 0:
        pytest.skip("no C compiler: the C scan is not built, so plain saec does not call it either")
    assert observed["torch-scan"]["c_scan_calls"] == 0
    # the switch travels as the scan's backend argument (no global switch, no environment variable)
    assert observed[""]["scan_backends"] == ["auto"] and observed["torch-scan"]["scan_backends"] == ["torch"]


def test_channels_last_switch_makes_convolutions_contiguous(observed):
    assert observed[""]["saved"]["channels_last_4d"] > 0 and observed["no-channels-last"]["saved"]["channels_last_4d"] == 0


def test_keep_memory_and_heap_switch_move_large_blocks_to_the_heap(observed):
    base, keep, heap = observed[""], observed["keep-memory"], observed["heap-no-trim-change"]
    assert not base["heap_64mib"]  # glibc mmaps a 64 MiB block afresh and unmaps it on free
    assert keep["heap_64mib"] and keep["heap_kept_after_free"]  # from the heap, and kept there once freed
    assert heap["heap_64mib"] and heap["heap_trimmed_after_free"]  # from the heap; glibc trims it on free


# ---------------------------------------------------------------- the execution plan in the report
def test_the_report_prints_the_plan_saec_ran_with_and_replan_measures_it(tmp_path, monkeypatch, capsys):
    """--smoke runs the built-in plan and prints it one line per knob; --replan measures first (a fake
    timer here: nothing is timed) and the saec worker runs the measured plan."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import train_step

    from saec.runtime import plan as planning

    import torch

    monkeypatch.setattr(planning, "cache_dir", lambda: tmp_path / "plans")
    images = tmp_path / "images.pt"  # a few images of the right shape: no data set to load
    torch.save(torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)), images)
    args = ["--smoke", "--frameworks", "saec", "--timesteps", "2", "--rounds", "1", "--data", str(images),
            "--images", "4"]
    assert train_step.main(args) == 0
    out = capsys.readouterr().out
    assert "saec T=2 plan: default (policy default: nothing read or measured)" in out
    for knob in ("chunk_bytes: 8388608 (default)", "min_pooled_bytes: 1048576 (default)",
                 "conv2 channels_last: True (default)", "fc_dec handoff_layout: True (default)",
                 "output output_algorithm: gemm (default)", "output chunk_rows: 4 (default: chunks under"):
        assert f"\n  {knob}" in out, knob
    monkeypatch.setattr(planning, "median_timer", lambda *a, **k: lambda trial: 0.5 if trial.value == "onednn" else 1)
    ran = []
    real_trainer = train_step._saec_trainer
    monkeypatch.setattr(train_step, "_saec_trainer", lambda *a: ran.append(a[-1]) or real_trainer(*a))
    assert train_step.main([*args, "--replan"]) == 0
    out = capsys.readouterr().out
    assert "saec T=2 plan: output output_algorithm=onednn (measured in " in out
    assert "\n  output output_algorithm: onednn\n" in out
    assert [planning.ExecutionPlan.from_dict(doc).summary() for doc in ran] == [
        "conv_transpose2d(16x24x24->1x28x28 k5x5 s1x1 p0x0) output_algorithm=onednn"]


# ---------------------------------------------------------------- the dense floor
FLOOR_LINE = re.compile(r"^saec_vs_dense_floor=(\S+)$")


def test_smoke_run_reports_the_dense_floor_before_the_summary():
    done = _run("--frameworks", "saec", "dense_floor", "--timesteps", "2", "--rounds", "1")
    lines = done.stdout.strip().splitlines()
    assert SUMMARY.match(lines[-1]), lines[-1]
    match = FLOOR_LINE.match(lines[-2])
    assert match, lines[-2]
    assert float(match.group(1)) > 0 and math.isfinite(float(match.group(1)))
    rows = {line.split("|")[2].strip(): line.split("|") for line in lines if line.startswith("| 2 |")}
    assert set(rows) == {"saec", "dense_floor"}
    assert float(rows["dense_floor"][3]) > 0  # its s/step
    # no peer ran: the dense floor does not stand in for one
    assert lines[-1].startswith("saec_vs_best_peer=nan ")


def test_dense_floor_never_counts_as_a_peer():
    sys.path.insert(0, str(SCRIPT.parent))
    import argparse

    import train_step

    def result(name, T, seconds):
        return train_step.Result(name, T, seconds=[seconds], cpu_seconds=[seconds], peak_mb=100.0)

    # the dense floor is the fastest at both T; the best peer (snntorch) is 2x / 3x slower than saec
    all_results = {T: {"saec": result("saec", T, 1.0 * T), "snntorch": result("snntorch", T, k * T),
                       "dense_floor": result("dense_floor", T, 0.5 * T)}
                   for T, k in ((2, 2.0), (3, 3.0))}
    args = argparse.Namespace(device="cpu", threads=1, batch=2, rounds=1, warmup=0, plans={})
    speedup, mem_ratio, floor_ratio = train_step.report(all_results, args)
    assert speedup == pytest.approx(2.0) and mem_ratio == pytest.approx(1.0)
    assert floor_ratio == pytest.approx(0.5)


def test_dense_floor_does_the_nominal_conv_linear_work():
    """Forward, input and weight gradients of the six synapses on [T*B, ...]: the nominal count of
    peers.nominal_flops, less the first layer's input gradient (its input, the spikes, needs none)."""
    sys.path.insert(0, str(SCRIPT.parent))
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import peers
    from saec.compiler.pipeline import compile_spec
    from saec.runtime.model import SpikingAutoencoder

    T, B = 2, 2
    _, graph = compile_spec(str(REPO / "specs" / "sae_dense.yaml"), [f"encoding.timesteps={T}"])
    init = SpikingAutoencoder(graph)
    init.reset_parameters(torch.Generator().manual_seed(0))
    step = peers.dense_floor(graph, init.ir_state_dict(), 5e-4, torch.device("cpu"))
    x = torch.rand(B, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as counter:
        loss = step(x, torch.Generator().manual_seed(2))
    conv1_input_grad = 2 * graph.meta("conv1")["macs"] * T * B
    assert counter.get_total_flops() == peers.nominal_flops(graph, T, B) - conv1_input_grad
    assert math.isfinite(loss)


def test_profile_step_prints_the_ops_by_self_cpu_time():
    script = REPO / "benchmarks" / "profile_step.py"
    done = subprocess.run([sys.executable, str(script), "--timesteps", "2", "--batch", "2", "--warmup", "1",
                           "--steps", "1", "--rows", "4", "--threads", "1"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    head = next(line for line in lines if line.startswith("saec: "))
    assert "T=2 B=2" in head and "1 profiled steps after 1" in head
    total = float(head.split("self CPU of all ops ")[1].split(" ms")[0])
    rows = [line for line in lines if line.startswith("| `")]
    assert len(rows) == 4
    ms = [float(r.split("|")[3]) for r in rows]
    assert ms == sorted(ms, reverse=True) and 0 < sum(ms) <= total + 0.5  # largest first, a part of the whole
    bad = subprocess.run([sys.executable, str(script), "--steps", "0"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--steps and --rows must be at least 1" in bad.stderr
