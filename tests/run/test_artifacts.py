"""Run-folder writers: atomic, no temp files left, ordinary permissions."""

from __future__ import annotations

import os
import stat

import torch

from saec.run import artifacts as A


def test_weights_round_trip_with_metadata_and_umask_permissions(tmp_path):
    state = {"conv1.weight": torch.randn(2, 1, 3, 3), "latent.bias": torch.zeros(4)}
    path = tmp_path / A.WEIGHTS
    A.save_weights(path, state, {"global_step": "7"})
    loaded = A.load_weights(path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert A.weights_metadata(path) == {"global_step": "7"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == [A.WEIGHTS]


def test_text_json_and_torch_writers_leave_no_temp_files(tmp_path):
    A.write_json(tmp_path / "a" / "x.json", {"k": 1})
    A.write_jsonl(tmp_path / "m.jsonl", [{"e": 1}, {"e": 2}])
    A.save_torch(tmp_path / "s.pt", {"step": 3, "t": torch.arange(3)})
    assert A.load_json(tmp_path / "a" / "x.json") == {"k": 1}
    assert (tmp_path / "m.jsonl").read_text().splitlines() == ['{"e": 1}', '{"e": 2}']
    assert A.load_torch(tmp_path / "s.pt")["step"] == 3
    names = sorted(p.name for p in tmp_path.rglob("*"))
    assert not [n for n in names if ".tmp" in n], names
