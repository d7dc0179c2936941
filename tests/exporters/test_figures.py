"""Run figures: each file is written, is a valid PNG of a sane size; edge cases of the clustermap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saec.compiler.pipeline import compile_spec
from saec.exporters import figures as F
from saec.runtime.data import ImageSet
from saec.runtime.evaluate import evaluate
from saec.runtime.model import SpikingAutoencoder
from tests.conftest import SPECS

# The paper's network shrunk: 2-channel convs, 12 latent neurons, T = 4.
SMALL = ["layers.conv1.out_channels=2", "layers.conv2.out_channels=2", "layers.latent.out_features=12",
         "layers.fc_dec.out_features=800", "layers.unflat.shape=[2, 20, 20]", "layers.deconv1.out_channels=2"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _model(spec: str, extra: list[str]) -> SpikingAutoencoder:
    _, graph = compile_spec(str(SPECS / spec), SMALL + extra)
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model


@pytest.fixture(scope="module")
def images() -> ImageSet:
    # 12 examples per class; digit-like blobs are not needed, the figures only plot what the model does.
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(120, 1, 28, 28, generator=gen) * (torch.rand(120, 1, 28, 28, generator=gen) > 0.7)
    return ImageSet(x, torch.arange(120) % 10, "random")


def assert_png(path: Path, min_side: int = 200, max_side: int = 4000) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert min_side <= w <= max_side and min_side <= h <= max_side, (path.name, w, h)


def test_sae_run_figures_are_written(tmp_path, images):
    model = _model("sae_dense.yaml", ["encoding.timesteps=4"])
    result = evaluate(model, images, batch_size=32, keep_latents=True)
    written = F.write_run_figures(tmp_path / "figures", model, images, result)
    assert set(written) == {"reconstructions", "latent_raster", "firing_rates", "latent_clustermap",
                            "receptive_fields"}
    for path in written.values():
        assert_png(path)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(
        [F.RECONSTRUCTIONS, F.LATENT_RASTER, F.FIRING_RATES, F.LATENT_CLUSTERMAP, F.RECEPTIVE_FIELDS])


@pytest.mark.parametrize("spec", ["ae.yaml", "vae.yaml"])
def test_baseline_figures_skip_the_spike_plots(tmp_path, images, spec):
    model = _model(spec, [])
    result = evaluate(model, images, batch_size=32, keep_latents=True)
    written = F.write_run_figures(tmp_path, model, images, result)
    assert set(written) == {"reconstructions", "latent_clustermap", "receptive_fields"}
    for path in written.values():
        assert_png(path)
    with pytest.raises(ValueError, match="spiking model"):
        F.latent_raster_figure(model, images, tmp_path / "raster.png")


def test_clustermap_handles_few_examples_negative_values_and_one_neuron(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0] * 3 + [1] * 12 + [2] * 12)  # class 0 has only 3 examples: 3 per class are drawn
    assert_png(F.latent_clustermap_figure(rng.normal(size=(27, 6)), labels, tmp_path / "vae_like.png"))
    assert_png(F.latent_clustermap_figure(rng.random((27, 1)), labels, tmp_path / "one_neuron.png"))
    with pytest.raises(ValueError, match="two examples"):
        F.latent_clustermap_figure(np.ones((1, 4)), np.array([3]), tmp_path / "none.png")


def test_firing_rate_histograms_of_silent_layers(tmp_path):
    # A dead layer (all rates 0) must still plot: the x range falls back to one spike per T.
    path = F.firing_rates_figure({"Poisson input": np.zeros(784), "latent": np.zeros(12)}, tmp_path / "r.png",
                                 timesteps=4)
    assert_png(path)


def test_kernel_tiles_of_each_synapse_kind():
    from saec.compiler import ops

    # Conv2d weight [out, in, kh, kw]: the first layer shows each output channel's kernel.
    w = np.arange(3 * 1 * 5 * 5, dtype=float).reshape(3, 1, 5, 5)
    np.testing.assert_array_equal(F._kernel_tiles(ops.Conv2d(out_channels=3), w, (1, 28, 28), first=True), w[:, 0])
    # ConvTranspose2d weight [in, out, kh, kw]: the last layer shows each input channel's stamp.
    wt = np.arange(4 * 1 * 5 * 5, dtype=float).reshape(4, 1, 5, 5)
    np.testing.assert_array_equal(F._kernel_tiles(ops.ConvTranspose2d(in_channels=4), wt, (1, 28, 28),
                                                  first=False), wt[:, 0])
    # Linear: rows are input images (first layer), columns output images (last layer).
    wl = np.arange(3 * 784, dtype=float).reshape(3, 784)
    lin = ops.Linear(in_features=784, out_features=3)
    np.testing.assert_array_equal(F._kernel_tiles(lin, wl, (1, 28, 28), first=True), wl.reshape(3, 28, 28))
    np.testing.assert_array_equal(F._kernel_tiles(lin, wl.T, (1, 28, 28), first=False), wl.reshape(3, 28, 28))
