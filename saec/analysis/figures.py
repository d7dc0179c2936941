"""Figures of a trained run (matplotlib, Agg backend, PNG), as in the paper's Figures 2 and 5.

:func:`write_run_figures` writes all of them into ``RUN/figures/``:

- ``reconstructions.png``: input, Poisson encoding summed over T, reconstruction; one column per class.
- ``latent_raster.png`` (SAE): latent spike raster over time, one panel per class.
- ``firing_rates.png`` (SAE): per-neuron firing-rate histograms of the Poisson input and every spiking layer.
- ``latent_clustermap.png``: hierarchical clustermap (average linkage, euclidean) of the latent activity of
  10 validation examples per class, with class colours.
- ``receptive_fields.png``: kernels of the first and the last weighted layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from saec.compiler import ops  # noqa: E402
from saec.compiler.dispatch import OpTable  # noqa: E402
from saec.analysis import metrics as M  # noqa: E402
from saec.atomicwrite import save_figure as savefig  # noqa: E402
from saec.training.data import ImageSet  # noqa: E402
from saec.runtime.model import SpikingAutoencoder, module_key  # noqa: E402

# File names inside RUN/figures/.
RECONSTRUCTIONS = "reconstructions.png"
LATENT_RASTER = "latent_raster.png"
FIRING_RATES = "firing_rates.png"
LATENT_CLUSTERMAP = "latent_clustermap.png"
RECEPTIVE_FIELDS = "receptive_fields.png"

_DPI = 110
_MAX_KERNELS = 32  # kernels shown per layer in the receptive-field figure


def one_per_class(labels: torch.Tensor, classes: int = 10) -> list[int]:
    """Index of the first example of each class present, in class order."""
    found: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):
        found.setdefault(int(y), i)
        if len(found) == classes:
            break
    return [found[c] for c in sorted(found)]


def _class_colours(n: int = 10) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, path: Path) -> Path:
    savefig(fig, Path(path), dpi=_DPI)
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def reconstructions_figure(model: SpikingAutoencoder, data: ImageSet, path: Path, *, seed: int = 0,
                           device: torch.device | str = "cpu") -> Path:
    """Input, its Poisson encoding summed over T (SAE), and the reconstruction, one column per class."""
    idx = one_per_class(data.labels)
    x, encoded = data.batch(torch.tensor(idx), device)
    was = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    out = model(x, generator=gen, record=frozenset({"_encode"}), encoded=encoded)
    if encoded is not None:  # pre-encoded input: show the spike train that came with the data
        out.encoded = encoded
    model.train(was)
    rows = [("input", x.cpu())]
    if out.encoded is not None:
        rows.append((f"encoding (sum over T={out.encoded.shape[0]})", out.encoded.sum(0).cpu()))
    rows.append(("reconstruction", out.x_hat.cpu()))
    per_example = ((out.x_hat - x) ** 2).flatten(1).sum(1).cpu()
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.3 * len(idx), 1.45 * len(rows) + 0.4), squeeze=False)
    for r, (title, imgs) in enumerate(rows):
        for c in range(len(idx)):
            ax = axes[r][c]
            ax.imshow(imgs[c, 0].numpy(), cmap="gray", vmin=0 if r != 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title.split(" (")[0], fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel(f"L={per_example[c]:.1f}", fontsize=7)
            if r == 0:
                ax.set_title(str(int(data.labels[idx[c]])), fontsize=9)
    fig.suptitle(f"Reconstructions, one per class (mean L_rec of these {len(idx)}: "
                 f"{float(per_example.mean()):.2f})", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def latent_raster_figure(model: SpikingAutoencoder, data: ImageSet, path: Path, *, seed: int = 0,
                         device: torch.device | str = "cpu") -> Path:
    """Spike raster of the latent layer over time (x: step, y: neuron), one panel per class.

    Only for spiking models (``model.kind == "sae"``).
    """
    if model.kind != "sae":
        raise ValueError("a spike raster needs a spiking model (kind sae)")
    layer = model.graph.meta(model.latent_node)["layer"]
    idx = one_per_class(data.labels)
    x, encoded = data.batch(torch.tensor(idx), device)
    was = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    out = model(x, generator=gen, record=frozenset({layer}), encoded=encoded)
    model.train(was)
    train = out.trains[layer].flatten(2).cpu().numpy()  # [T, B, N]
    T, _, n = train.shape
    cols = min(5, len(idx))
    rows = math.ceil(len(idx) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows + 0.6), squeeze=False, sharex=True,
                             sharey=True)
    for k, ax in enumerate(axes.flat):
        if k >= len(idx):
            ax.axis("off")
            continue
        t, neuron = np.nonzero(train[:, k, :])
        ax.scatter(t + 1, neuron, marker="|", s=12, linewidths=0.8, color="k")
        ax.set_xlim(0.5, T + 0.5)
        ax.set_ylim(-0.5, n - 0.5)
        ax.set_title(f"digit {int(data.labels[idx[k]])}: {len(t)} spikes, "
                     f"{len(np.unique(neuron))}/{n} active", fontsize=7)
        if k % cols == 0:
            ax.set_ylabel("latent neuron", fontsize=7)
        if k >= (rows - 1) * cols:
            ax.set_xlabel("time step", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"Latent spike raster (layer `{layer}`, {n} neurons, T={T}), one example per class", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def firing_rates_figure(rates: dict[str, np.ndarray], path: Path, *, timesteps: int,
                        bursting_threshold: float = M.DEFAULT_BURSTING_THRESHOLD) -> Path:
    """Histograms of per-neuron firing rates, one panel per layer (the Poisson input first).

    Args:
        rates: ``{panel name: per-neuron rates [N]}`` in spikes per step (0..1), in display order.
        path: the PNG to write.
        timesteps: T (for the title).
        bursting_threshold: rate from which a neuron counts as bursting (annotated).
    """
    names = list(rates)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows + 0.5), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.axis("off")
            continue
        r = np.asarray(rates[names[k]], dtype=np.float64).reshape(-1)
        top = max(float(r.max()), 1.0 / timesteps)
        fractions, _, _ = ax.hist(r, bins=np.linspace(0.0, top, 41), weights=np.full(r.size, 1.0 / r.size),
                                  color="C0" if k else "C2")
        ax.set_yscale("log")
        # Fractions lie in (0, 1]; fixed limits keep a single full bin visible on the log axis.
        ax.set_ylim(float(fractions[fractions > 0].min()) / 2, 1.5)
        ax.set_title(f"{names[k]} ({r.size} neurons)", fontsize=8)
        ax.set_xlabel("firing rate (spikes / step)", fontsize=7)
        if k % cols == 0:
            ax.set_ylabel("fraction of neurons", fontsize=7)
        ax.tick_params(which="both", labelsize=6)
        dead = float(np.mean(r == 0))
        bursting = float(np.mean(r >= bursting_threshold))
        ax.text(0.97, 0.95, f"mean {r.mean():.3f}\ndead {100 * dead:.1f}%\nbursting {100 * bursting:.1f}%",
                transform=ax.transAxes, ha="right", va="top", fontsize=6,
                bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
    fig.suptitle(f"Per-neuron firing-rate distributions over the validation set (T={timesteps}; "
                 f"input = Poisson encoding)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def latent_clustermap_figure(latents: np.ndarray, labels: np.ndarray, path: Path, *, per_class: int = 10,
                             seed: int = 0, title: str = "latent activity") -> Path:
    """Hierarchical clustermap of latent activity: neurons x examples, ``per_class`` examples per class.

    Rows (neurons) and columns (examples) are each ordered by average-linkage
    clustering on euclidean distances (scipy.cluster.hierarchy), with the
    dendrograms drawn; a colour band above the matrix shows each example's
    class. Activity is scaled to [0, 1] over the matrix (to [-1, 1] by the
    largest magnitude when it has negative values, e.g. the VAE's z).

    Args:
        latents: [M, D] latent vectors of the validation set.
        labels: [M] class labels.
        path: the PNG to write.
        per_class: examples per class (fewer when a class has fewer).
        seed: seed of the example selection (:func:`saec.analysis.metrics.clustermap_selection`).
        title: what the activity is, for the title.
    """
    from scipy.cluster.hierarchy import dendrogram, linkage

    labels = np.asarray(labels).reshape(-1)
    classes, counts = np.unique(labels, return_counts=True)
    per_class = int(min(per_class, counts.min()))
    if per_class < 1 or len(classes) * per_class < 2:
        raise ValueError("a clustermap needs at least two examples")
    sel = M.clustermap_selection(labels, per_class=per_class, seed=seed)
    # The selection comes grouped by class; identical latents (e.g. silent examples) tie at distance 0 and
    # keep their input order in the dendrogram, which would draw a class grouping that the latents do not
    # have. Shuffled, ties carry no label information.
    sel = sel[np.random.default_rng(seed).permutation(sel.size)]
    act = np.asarray(latents, dtype=np.float64)[sel].T  # [D neurons, K examples]
    y = labels[sel]
    lo, hi = float(act.min()), float(act.max())
    if lo < 0:
        scale = max(abs(lo), abs(hi)) or 1.0
        act, vmin, cmap = act / scale, -1.0, "RdBu_r"
    else:
        act, vmin, cmap = (act - lo) / ((hi - lo) or 1.0), 0.0, "viridis"
    col_link = linkage(act.T, method="average", metric="euclidean")
    row_link = linkage(act, method="average", metric="euclidean") if act.shape[0] > 1 else None

    fig = plt.figure(figsize=(9.0, 7.0))
    ax_coldendro = fig.add_axes([0.17, 0.80, 0.68, 0.12])
    ax_band = fig.add_axes([0.17, 0.77, 0.68, 0.025])
    ax_heat = fig.add_axes([0.17, 0.08, 0.68, 0.685])
    ax_cbar = fig.add_axes([0.87, 0.08, 0.02, 0.685])
    col_order = dendrogram(col_link, ax=ax_coldendro, orientation="top", no_labels=True, color_threshold=0,
                           above_threshold_color="k")["leaves"]
    ax_coldendro.axis("off")
    if row_link is not None:
        ax_rowdendro = fig.add_axes([0.04, 0.08, 0.12, 0.685])
        row_order = dendrogram(row_link, ax=ax_rowdendro, orientation="left", no_labels=True, color_threshold=0,
                               above_threshold_color="k")["leaves"]
        ax_rowdendro.invert_yaxis()  # leaf 0 at the top, like the heatmap's first row
        ax_rowdendro.axis("off")
    else:
        row_order = [0]
    colours = _class_colours(len(classes))
    class_index = {c: i for i, c in enumerate(classes.tolist())}
    band = np.array([[colours[class_index[v]] for v in y[col_order].tolist()]])
    ax_band.imshow(band, aspect="auto", interpolation="nearest")
    ax_band.set_xticks([])
    ax_band.set_yticks([])
    im = ax_heat.imshow(act[np.ix_(row_order, col_order)], aspect="auto", interpolation="nearest", cmap=cmap,
                        vmin=vmin, vmax=1.0)
    ax_heat.set_xlabel(f"validation examples ({per_class} per class), clustered", fontsize=8)
    # Left of the row dendrogram, so the label does not run through it.
    fig.text(0.015, 0.08 + 0.685 / 2, "latent neurons, clustered", rotation=90, va="center", ha="center", fontsize=8)
    ax_heat.set_xticks([])
    ax_heat.set_yticks([])
    fig.colorbar(im, cax=ax_cbar).ax.tick_params(labelsize=7)
    ax_cbar.set_ylabel("scaled activity", fontsize=8)
    fig.legend(handles=[Patch(color=colours[i], label=str(c)) for i, c in enumerate(classes.tolist())],
               loc="upper right", ncol=1, fontsize=7, title="class", title_fontsize=7, frameon=False,
               bbox_to_anchor=(0.995, 0.99))
    fig.suptitle(f"Clustermap of {title} (average linkage, euclidean): {act.shape[0]} neurons x "
                 f"{act.shape[1]} examples", fontsize=9, x=0.5, y=0.985)
    return _save(fig, path)


#: op -> fn(op, weight, image shape, first layer?) -> 2-D tiles [K, h, w] showing what one unit of the layer
#: sees (first) or draws (last).
KERNEL_TILES = OpTable("receptive fields")


@KERNEL_TILES.register(ops.Conv2d)
def _conv_tiles(op: ops.Conv2d, weight: np.ndarray, image_shape: tuple[int, ...], first: bool) -> np.ndarray:
    # weight [out, in, kh, kw]: each output channel's kernel
    return weight.mean(axis=1) if first else weight.mean(axis=0)


@KERNEL_TILES.register(ops.ConvTranspose2d)
def _conv_transpose_tiles(op: ops.ConvTranspose2d, weight: np.ndarray, image_shape: tuple[int, ...],
                          first: bool) -> np.ndarray:
    # weight [in, out, kh, kw]: each input channel's stamp
    return weight.mean(axis=1) if not first else weight.mean(axis=0)


KERNEL_TILES.refuse((ops.Input, ops.Output, ops.PoissonEncode, ops.Flatten, ops.Unflatten, ops.LIF, ops.ReLU,
                     ops.Reparameterize, ops.LeakyIntegrator, ops.SumPool2d, ops.MaxCumulativeReadout),
                    "it has no weights to draw")


@KERNEL_TILES.register(ops.Linear)
def _linear_tiles(op: ops.Linear, weight: np.ndarray, image_shape: tuple[int, ...], first: bool) -> np.ndarray:
    # Linear weight [out, in]: a row is an input-image pattern, a column an output-image pattern
    # (image_shape is [C, H, W]; channels are averaged).
    if first and weight.shape[1] == math.prod(image_shape):
        return weight.reshape(weight.shape[0], *image_shape).mean(axis=1)
    if not first and weight.shape[0] == math.prod(image_shape):
        return weight.T.reshape(weight.shape[1], *image_shape).mean(axis=1)
    return weight[None]


def _kernel_tiles(op: ops.Op, weight: np.ndarray, image_shape: tuple[int, ...], first: bool) -> np.ndarray:
    """2-D tiles [K, h, w] showing what one unit of the layer sees (first) or draws (last)."""
    return KERNEL_TILES.lookup(op)(op, weight, image_shape, first)


def receptive_fields_figure(model: SpikingAutoencoder, path: Path) -> Path:
    """Kernels of the first and the last weighted layer (paper Fig. 2B).

    First layer (e.g. conv1): each output channel's kernel over the input
    image (mean over input channels). Last layer (e.g. the output
    conv-transpose): the pattern each of its input channels stamps onto the
    output image. Each row shares one symmetric colour scale (red positive,
    blue negative).
    """
    weighted = [n for n in model.order if model.graph.op(n).has_weights]
    image_shape = tuple(model.input_shape)
    picks = [(weighted[0], True), (weighted[-1], False)]
    tiles_by_row = []
    for node, first in picks:
        op = model.graph.op(node)
        w = model.synapses[module_key(node)].weight.detach().cpu().double().numpy()
        tiles_by_row.append((node, first, _kernel_tiles(op, w, image_shape, first)[:_MAX_KERNELS]))
    cols = min(max(t.shape[0] for _, _, t in tiles_by_row), 16)
    grid_rows = [math.ceil(t.shape[0] / cols) for _, _, t in tiles_by_row]
    # One empty spacer row between the blocks leaves room for the second block's heading.
    ratios: list[float] = []
    for i, nrows in enumerate(grid_rows):
        ratios += ([0.45] if i else []) + [1.0] * nrows
    n_rows = len(ratios)
    height = 0.8 * sum(ratios) + 0.8
    fig, axes = plt.subplots(n_rows, cols, figsize=(0.8 * cols + 0.4, height), squeeze=False,
                             gridspec_kw={"height_ratios": ratios})
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03, top=1 - 0.6 / height, wspace=0.08, hspace=0.1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    r0 = 0
    for (node, first, tiles), nrows in zip(tiles_by_row, grid_rows):
        m = float(np.abs(tiles).max()) or 1.0
        for k in range(tiles.shape[0]):
            ax = axes[r0 + k // cols][k % cols]
            ax.axis("on")
            ax.imshow(tiles[k], cmap="bwr", vmin=-m, vmax=m, interpolation="nearest", aspect="equal")
        pos = axes[r0][0].get_position()
        role = "first layer" if first else "last layer"
        fig.text(pos.x0, pos.y1 + 0.01, f"{role} `{node}`: {tiles.shape[0]} kernels {tiles.shape[1]}x"
                 f"{tiles.shape[2]} (colour scale ±{m:.2g}, red positive)", fontsize=8, va="bottom")
        r0 += nrows + 1
    fig.suptitle("Receptive fields: first-layer kernels (what a unit sees), last-layer kernels (what a unit "
                 "draws)", fontsize=9)
    return _save(fig, path)


def write_run_figures(folder: Path, model: SpikingAutoencoder, data: ImageSet, result, *, seed: int = 0,
                      device: torch.device | str = "cpu") -> dict[str, Path]:
    """Write every figure of a run into ``folder`` (``RUN/figures``).

    Args:
        folder: where the PNGs go.
        model: the trained network.
        data: the validation images (the figures' examples come from it).
        result: the :class:`saec.analysis.evaluate.EvalResult` of ``data``, with latents kept.
        seed: seed of the encoding noise and of the clustermap's example selection.
        device: where to run the model.

    Returns:
        ``{figure name: path}`` of the figures written. Spike-only figures
        (raster, firing rates) are skipped for AE/VAE; the clustermap is
        skipped when the set has fewer than two examples.
    """
    folder = Path(folder)
    written = {"reconstructions": reconstructions_figure(model, data, folder / RECONSTRUCTIONS, seed=seed,
                                                         device=device)}
    if model.kind == "sae":
        written["latent_raster"] = latent_raster_figure(model, data, folder / LATENT_RASTER, seed=seed,
                                                        device=device)
        acc = result.accumulator
        rates = {}
        if result.input_rates is not None:
            rates["Poisson input"] = result.input_rates
        rates.update({layer: acc.neuron_rates(layer) for layer in acc.layers})
        written["firing_rates"] = firing_rates_figure(rates, folder / FIRING_RATES, timesteps=model.timesteps,
                                                      bursting_threshold=acc.bursting_threshold)
    if result.latents is not None and len(result.latents) >= 2:
        what = {"sae": "latent firing rates", "ae": "latent ReLU activations", "vae": "latent z = mu"}
        layer = model.graph.meta(model.latent_node)["layer"]
        written["latent_clustermap"] = latent_clustermap_figure(
            result.latents, result.labels, folder / LATENT_CLUSTERMAP, seed=seed,
            title=f"{what.get(model.kind, 'latent activity')} (layer `{layer}`)")
    written["receptive_fields"] = receptive_fields_figure(model, folder / RECEPTIVE_FIELDS)
    return written
