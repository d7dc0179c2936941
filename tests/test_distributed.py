"""DistributedDataParallel training: 2 CPU processes (gloo) vs one process with the same global batch.

Why the comparison can be tight: under DDP every rank draws the Poisson
encoding of the whole global batch from the same generator and keeps its own
examples (saec.training.train._rank_inputs), so each example gets the spike
train a single process gives it. The data order, the initial weights and the
evaluation are the same too, and DDP averages the two ranks' gradients of
their (equal-sized) batch means, which is the gradient of the global batch
mean. What remains is float32 summation order: a gradient summed over 16 + 16
examples instead of 32 differs in the last bits, and Adam carries that into
the weights; measured here: losses agree to 7e-8 relative, weights to 1.2e-7
absolute (|w| up to 3.3). A membrane potential that lands within ~1e-6 of the
threshold could flip one spike, so the tolerances (1e-4 relative on losses,
1e-5 absolute on weights) leave room for that, and still fail for a real
mistake: drawing the encoding per rank (the natural bug) moves the losses by
0.2-0.8% and the weights by 1e-2 after 6 steps (measured).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from saec.compiler.pipeline import compile_spec
from saec.run import artifacts as A
from saec.run.train import train
from tests.conftest import SPECS

SMALL = ["layers.conv1.out_channels=2", "layers.conv2.out_channels=2", "layers.latent.out_features=12",
         "layers.fc_dec.out_features=800", "layers.unflat.shape=[2, 20, 20]", "layers.deconv1.out_channels=2"]
# 3 epochs x 2 steps of a global batch of 32 (16 per rank); 256 embedded images, 64 held out for validation.
SCHEDULE = ["training.epochs=3", "training.max_steps=2", "training.batch_size=32", "training.lr=0.001",
            "data.dataset=mnist5k", "data.train_limit=256", "data.validation.source=split",
            "data.validation.limit=64"]
RUNS = {"sae": ("sae_dense.yaml", ["encoding.timesteps=4"]), "ae": ("ae.yaml", [])}
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-5


def _compile(kind: str):
    spec_file, extra = RUNS[kind]
    loaded, graph = compile_spec(str(SPECS / spec_file), SMALL + SCHEDULE + extra)
    return loaded.spec, graph


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str, kinds: list[str]) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    writes: list[str] = []
    if rank != 0:  # record every artifact write a non-zero rank attempts (there must be none)
        for fn in ("write_text", "write_json", "write_jsonl", "save_weights", "save_torch", "savefig"):
            setattr(A, fn, lambda path, *a, _fn=fn, **k: writes.append(f"{_fn} {path}"))
    for kind in kinds:
        spec, graph = _compile(kind)
        train(spec, graph, Path(out) / kind, device="cpu", progress=False, log=lambda _: None)
    import torch.distributed as tdist

    tdist.destroy_process_group()
    Path(out, f"writes-rank{rank}.json").write_text(json.dumps(writes))


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / A.METRICS).read_text().splitlines()]


def _train_both_ways(root: Path, kinds: list[str]) -> Path:
    """Train ``kinds`` with 2 spawned gloo processes (root/ddp) and with one process (root/single)."""
    mp.spawn(_rank_main, args=(2, _free_port(), str(root / "ddp"), kinds), nprocs=2, join=True)
    for kind in kinds:
        spec, graph = _compile(kind)
        train(spec, graph, root / "single" / kind, device="cpu", progress=False, log=lambda _: None)
    return root


@pytest.fixture(scope="module")
def sae_runs(tmp_path_factory) -> Path:
    return _train_both_ways(tmp_path_factory.mktemp("ddp_sae"), ["sae"])


def _assert_same_training(ddp: Path, single: Path) -> None:
    h_ddp, h_single = _history(ddp), _history(single)
    assert [r["global_step"] for r in h_ddp] == [r["global_step"] for r in h_single] == [2, 4, 6]
    for key in ("train_loss", "train_rec", "val_rec_loss"):
        got = [r[key] for r in h_ddp]
        want = [r[key] for r in h_single]
        assert got == pytest.approx(want, rel=LOSS_RTOL), key
    # The loss must actually move, or matching curves would prove little.
    assert abs(h_single[-1]["train_loss"] - h_single[0]["train_loss"]) > 100 * LOSS_RTOL * h_single[0]["train_loss"]
    w_ddp, w_single = A.load_weights(ddp / A.WEIGHTS), A.load_weights(single / A.WEIGHTS)
    assert set(w_ddp) == set(w_single)
    for name in w_single:
        torch.testing.assert_close(w_ddp[name], w_single[name], rtol=0, atol=WEIGHT_ATOL, msg=name)
    e_ddp = json.loads((ddp / A.EVAL).read_text())
    e_single = json.loads((single / A.EVAL).read_text())
    assert e_ddp["rec_loss"] == pytest.approx(e_single["rec_loss"], rel=LOSS_RTOL)


def test_two_processes_match_one_process_with_the_same_global_batch(sae_runs):
    _assert_same_training(sae_runs / "ddp" / "sae", sae_runs / "single" / "sae")


def test_only_rank_zero_wrote_the_run_folder(sae_runs):
    assert json.loads((sae_runs / "ddp" / "writes-rank1.json").read_text()) == []
    run = sae_runs / "ddp" / "sae"
    assert A.load_torch(run / A.TRAIN_STATE)["complete"] is True
    assert (run / A.EVAL).is_file() and (run / A.FIGURES / "reconstructions.png").is_file()


@pytest.mark.slow
def test_two_processes_match_one_process_for_the_relu_baseline(tmp_path):
    # No encoding: the ranks' shards and DDP's gradient averaging alone.
    root = _train_both_ways(tmp_path, ["ae"])
    _assert_same_training(root / "ddp" / "ae", root / "single" / "ae")
