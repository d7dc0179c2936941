"""Run figures: each file is a valid PNG of a sane size; what the reconstruction figure, the rate
histograms and the latent raster draw (images, per-image L_rec, bar heights and bins, spike marks) against
values computed here; clustermap edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saec.compiler.pipeline import compile_spec
from saec.analysis import figures as F
from saec.training.data import ImageSet
from saec.analysis.evaluate import evaluate
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


# ---------------------------------------------------------------- what the figures draw
@pytest.fixture
def drawn(monkeypatch) -> list:
    """Every matplotlib Figure the figure functions save, in order (inspected after the PNG is written)."""
    figures = []
    real_savefig = F.savefig

    def capture(fig, path, **kwargs):
        figures.append(fig)
        return real_savefig(fig, path, **kwargs)

    monkeypatch.setattr(F, "savefig", capture)
    return figures


def _grid(fig, rows: int, cols: int) -> list[list]:
    """The figure's subplot axes as rows x cols, in plt.subplots order (row-major)."""
    assert len(fig.axes) == rows * cols
    return [fig.axes[r * cols:(r + 1) * cols] for r in range(rows)]


def test_reconstruction_figure_draws_each_class_input_encoding_output_and_its_loss(tmp_path, images, drawn):
    model = _model("sae_dense.yaml", ["encoding.timesteps=4"])
    F.reconstructions_figure(model, images, tmp_path / "rec.png", seed=5)
    (fig,) = drawn
    labels = images.labels.numpy()
    first = [int(np.flatnonzero(labels == c)[0]) for c in range(10)]  # the first example of each class
    x = images.images[first]
    # The same forward pass (eval mode, encoding noise from seed 5), recomputed here.
    model.eval()
    with torch.no_grad():
        out = model(x, generator=torch.Generator().manual_seed(5), record=frozenset({"_encode"}))
    encoded_sum = out.encoded.sum(0).numpy()
    x_hat = out.x_hat.double().numpy()
    loss = ((x_hat - x.double().numpy()) ** 2).reshape(10, -1).sum(1)  # per image, float64
    assert loss.min() > 0 and np.ptp(loss) > 0.05  # distinct numbers: a column mix-up would show
    rows = _grid(fig, 3, 10)
    for c in range(10):
        assert rows[0][c].get_title() == str(c)
        (shown_input,) = rows[0][c].get_images()
        np.testing.assert_array_equal(shown_input.get_array(), x[c, 0].numpy())
        (shown_encoding,) = rows[1][c].get_images()
        np.testing.assert_array_equal(shown_encoding.get_array(), encoded_sum[c, 0])
        assert encoded_sum[c].max() <= 4 and np.all(encoded_sum[c] == np.round(encoded_sum[c]))
        (shown_output,) = rows[2][c].get_images()
        np.testing.assert_allclose(shown_output.get_array(), x_hat[c, 0], rtol=0, atol=1e-6)
        label = rows[2][c].get_xlabel()
        assert label.startswith("L=") and abs(float(label[2:]) - loss[c]) <= 0.05 + 1e-4, (c, label, loss[c])
    assert f"{loss.mean():.2f})" in fig._suptitle.get_text()


def test_rate_histogram_bars_are_the_fractions_of_neurons_per_bin(tmp_path, drawn):
    # 8 input neurons: 3 silent, 0.26 (bin 10 of 40 over [0, 1]), 0.51 twice (bin 20), 1.0 twice (the last
    # bin, closed on the right). 12 silent latent neurons at T = 4: all in the first bin of [0, 1/4].
    rates = {"Poisson input": np.array([0, 0, 0, 0.26, 0.51, 0.51, 1.0, 1.0]), "latent": np.zeros(12)}
    F.firing_rates_figure(rates, tmp_path / "r.png", timesteps=4)
    (fig,) = drawn
    panels = [ax for ax in fig.axes if ax.patches]
    assert [ax.get_title() for ax in panels] == ["Poisson input (8 neurons)", "latent (12 neurons)"]
    expected_input = np.zeros(40)
    expected_input[[0, 10, 20, 39]] = [3 / 8, 1 / 8, 2 / 8, 2 / 8]
    expected_latent = np.zeros(40)
    expected_latent[0] = 1.0
    for ax, expected, top in zip(panels, (expected_input, expected_latent), (1.0, 0.25)):
        bars = ax.patches
        assert len(bars) == 40
        np.testing.assert_allclose([b.get_height() for b in bars], expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose([b.get_x() for b in bars], np.arange(40) * top / 40, rtol=0, atol=1e-12)
        np.testing.assert_allclose([b.get_width() for b in bars], top / 40, rtol=1e-9)
    texts = [t.get_text() for t in panels[0].texts]
    # mean (3 * 0 + 0.26 + 2 * 0.51 + 2 * 1.0) / 8 = 0.41; 3 of 8 silent; 2 of 8 at or above 0.9.
    assert texts == ["mean 0.410\ndead 37.5%\nbursting 25.0%"]
    assert [t.get_text() for t in panels[1].texts] == ["mean 0.000\ndead 100.0%\nbursting 0.0%"]


def test_run_figures_histogram_every_layer_rate_of_the_evaluation(tmp_path, images, drawn):
    model = _model("sae_dense.yaml", ["encoding.timesteps=4"])
    result = evaluate(model, images, batch_size=32, keep_latents=True)
    written = F.write_run_figures(tmp_path, model, images, result)
    fig = drawn[list(written).index("firing_rates")]
    acc = result.accumulator
    rates = {"Poisson input": result.input_rates, **{layer: acc.neuron_rates(layer) for layer in acc.layers}}
    panels = [ax for ax in fig.axes if ax.patches]
    assert [ax.get_title() for ax in panels] == [f"{name} ({r.size} neurons)" for name, r in rates.items()]
    assert sum(r.sum() for r in rates.values()) > 0
    for ax, r in zip(panels, rates.values()):
        counts, edges = np.histogram(r, bins=np.linspace(0.0, max(r.max(), 1 / 4), 41))
        np.testing.assert_allclose([b.get_height() for b in ax.patches], counts / r.size, rtol=0, atol=1e-12)
        np.testing.assert_allclose([b.get_x() for b in ax.patches], edges[:-1], rtol=0, atol=1e-12)


def test_latent_raster_marks_each_spike_of_each_class_example(tmp_path, images, drawn):
    model = _model("sae_dense.yaml", ["encoding.timesteps=4", "neuron.threshold=0.3"])
    F.latent_raster_figure(model, images, tmp_path / "raster.png", seed=2)
    (fig,) = drawn
    labels = images.labels.numpy()
    first = [int(np.flatnonzero(labels == c)[0]) for c in range(10)]
    model.eval()
    with torch.no_grad():
        out = model(images.images[first], generator=torch.Generator().manual_seed(2), record=frozenset({"latent"}))
    train = out.trains["latent"].reshape(4, 10, -1).numpy()  # [T, example, neuron]
    assert train.sum() > 0
    panels = _grid(fig, 2, 5)
    for c in range(10):
        ax = panels[c // 5][c % 5]
        (marks,) = ax.collections
        t, neuron = np.nonzero(train[:, c, :])
        expected = sorted(zip((t + 1).tolist(), neuron.tolist()))  # steps drawn from 1 to T
        assert sorted(map(tuple, marks.get_offsets().tolist())) == expected, c
        assert ax.get_title().startswith(f"digit {c}: {len(t)} spikes, {len(np.unique(neuron))}/12 active")
