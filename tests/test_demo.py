"""`python -m saec.demo` (make demo): validation choice, the all-zero baseline, re-runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from saec import demo
from saec.run import artifacts as A
from saec.training import data
from tests.training.test_data import tiny_mnist


def test_all_zero_rec_loss_by_hand():
    images = torch.zeros(3, 1, 28, 28)
    images[0, 0, 0, :4] = 0.5  # sum of squares 1.0
    images[1, 0, 5, 5] = 1.0  # 1.0
    images[2, 0, :2, :2] = 1.0  # 4.0
    # batch 2: batch means (1 + 1) / 2 = 1 and 4 -> mean of batch means 2.5 (eval.json's averaging)
    assert demo.all_zero_rec_loss(images, 2) == pytest.approx(2.5)
    assert demo.all_zero_rec_loss(images, 64) == pytest.approx(2.0)


def test_validation_on_the_mnist_test_set_when_found(tmp_path, monkeypatch):
    # A stand-in MNIST test set (IDX files of 6 random images): the choice depends on the files, not the digits.
    mnist_root = tmp_path / "mnist"
    tiny_mnist(mnist_root / "MNIST" / "raw", "test")
    overrides, text = demo.validation_overrides(str(mnist_root))
    assert "data.validation.source=test" in overrides
    assert f"data.validation.limit={demo.VALIDATION_IMAGES}" in overrides
    assert f"data.validation.root={mnist_root}" in overrides
    assert text.startswith("the first 1000 MNIST test images")
    # Without --data-dir: found where the command line looks first, $SAEC_MNIST_ROOT.
    monkeypatch.setenv("SAEC_MNIST_ROOT", str(mnist_root))
    overrides, _ = demo.validation_overrides(None)
    assert f"data.validation.root={mnist_root.resolve()}" in overrides
    assert "data.validation.source=test" in overrides


def test_validation_falls_back_to_a_held_out_split(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "default_mnist_root", lambda: None)
    overrides, text = demo.validation_overrides(None)
    assert "data.validation.source=split" in overrides
    assert "held-out" in text and "--data-dir" in text
    # a folder without the test set is not taken either
    overrides, _ = demo.validation_overrides(str(tmp_path))
    assert "data.validation.source=split" in overrides


def test_bad_device_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert demo.main(["--device", "cuda", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_demo_reruns_into_the_same_folder(tmp_path, capsys):
    """Two demo runs in a row: the second replaces the first (same numbers: it is deterministic)."""
    out = tmp_path / "demo"
    first = demo.run_demo(out, epochs=1, timesteps=2, device="cpu", log=lambda line: None)
    second = demo.run_demo(out, epochs=1, timesteps=2, device="cpu")
    printed = capsys.readouterr().out
    assert f"run folder:      {out}" in printed and "reconstructions:" in printed
    assert f"(all-zero output on the same images: {second['zero_rec_loss']:.2f})" in printed
    assert f"latent layer:    {second['latent_neurons_90pct']} of 100 neurons carry 90 % of its spikes" in printed
    assert second["rec_loss"] == first["rec_loss"] and math.isfinite(second["rec_loss"])
    assert json.loads((out / A.EVAL).read_text())["rec_loss"] == second["rec_loss"]
    assert second["figure"].is_file()
