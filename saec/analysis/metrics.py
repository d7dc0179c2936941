"""Evaluation metrics of the paper (latent activity, clustering, L_rec).

Pure functions: numpy arrays or torch tensors in, plain floats, ints and
dicts out. The activity metrics read per-layer spike *counts*:

    counts[b, i] = sum_t phi_i(t) for example b     (spikes, 0..T)

with the layer's neurons flattened into ``i`` (an input of shape
[B, C, H, W] is flattened to [B, C*H*W]). ``spike_counts`` turns spike
trains [T, B, ...] into counts.

Definitions (the paper's Tables 6-8 and section 3.2, as its published code computes them):

- active neuron: non-zero count for at least one example of the batch.
- ANR = N_active / N;  INP = 1 - ANR.
- AFR = total spikes / (B * N_active * T); 0.0 when no neuron is active
  (the paper's Table 6 reports AFR 0.00 for a fully silent layer).
- RAE = mean over examples of (neurons that fired for the example /
  N_active); 0.0 when no neuron is active.
- spikes per example = total spikes / B (not defined by the paper's code).
- per-neuron firing rate r_i = mean over examples of counts[b, i] / T, in
  [0, 1] (1 = a spike at every step). A neuron is *dead* when it never
  fired over the whole evaluated set (r_i == 0) and *bursting* when
  r_i >= ``bursting_threshold`` (default 0.9: on average a spike in at
  least 90% of the time steps).

The paper computes ANR/AFR/RAE per validation batch and averages over the
batches; ``BatchAccumulator`` does that with O(N) memory per layer.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist

# Default for "bursting": mean firing rate (spikes per step) at or above this.
DEFAULT_BURSTING_THRESHOLD = 0.9

# Distance metrics of paper Table 8, under scipy's names (in table order:
# euclidean, standardised euclidean, squared euclidean, manhattan,
# correlation).
DISTANCE_METRICS = ("euclidean", "seuclidean", "sqeuclidean", "cityblock", "correlation")

# Pairwise distances are computed in row blocks of about this many entries
# (float64: 32 MiB), so 10k latents never build the 50M-entry pdist vector.
_PAIR_BLOCK_ELEMENTS = 1 << 22

_PERCENTILES = (5, 25, 50, 75, 95)


# --------------------------------------------------------------------------
# Input conversion


def _to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached to the CPU."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_counts(counts: Any, timesteps: int | None = None) -> np.ndarray:
    """Validate spike counts and return them as float64 [B, N]."""
    arr = _to_numpy(counts)
    if arr.ndim < 2:
        raise ValueError(
            f"counts must have shape [B, N] (or [B, ...] to flatten), got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError("counts holds no examples (B = 0)")
    if arr.size == 0:
        raise ValueError("counts holds no neurons (N = 0)")
    arr = arr.reshape(arr.shape[0], -1).astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("counts contains NaN or infinite values")
    if arr.min() < 0:
        raise ValueError(f"counts must be non-negative, got minimum {arr.min():g}")
    if timesteps is not None:
        _check_timesteps(timesteps)
        if arr.max() > timesteps:
            raise ValueError(
                f"counts exceed timesteps: maximum count {arr.max():g} > T = {timesteps} "
                "(are these spike trains [T, B, N] rather than counts [B, N]?)"
            )
    return arr


def _check_timesteps(timesteps: int) -> None:
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps!r}")


def _check_bursting_threshold(threshold: float) -> None:
    if not (0.0 < threshold <= 1.0):
        raise ValueError(f"bursting_threshold must lie in (0, 1], got {threshold!r}")


def spike_counts(spikes: Any) -> np.ndarray:
    """Spike counts per example and neuron from spike trains.

    Args:
        spikes: spike trains [T, B, ...] of 0/1 values.

    Returns:
        counts [B, N] (float64), N = the product of the trailing dimensions.
    """
    arr = _to_numpy(spikes)
    if arr.ndim < 3:
        raise ValueError(f"spikes must have shape [T, B, N] (or [T, B, ...]), got shape {arr.shape}")
    return arr.reshape(arr.shape[0], arr.shape[1], -1).sum(axis=0, dtype=np.float64)


# --------------------------------------------------------------------------
# Per-batch activity metrics


def active_mask(counts: Any) -> np.ndarray:
    """Which neurons are active: non-zero count for at least one example.

    Args:
        counts: spike counts [B, N].

    Returns:
        bool array [N].
    """
    return np.any(_as_counts(counts) > 0, axis=0)


def anr(counts: Any) -> float:
    """Active neuron ratio: fraction of the N neurons active in this batch.

    Args:
        counts: spike counts [B, N].

    Returns:
        ANR in [0, 1].
    """
    return float(np.mean(active_mask(counts)))


def inp(counts: Any) -> float:
    """Inactive neuron proportion, 1 - ANR (paper Tables 6 and 7)."""
    return 1.0 - anr(counts)


def afr(counts: Any, timesteps: int) -> float:
    """Average firing rate of active neurons: spikes / (B * N_active * T).

    Args:
        counts: spike counts [B, N], each in 0..T.
        timesteps: T, the number of simulated steps.

    Returns:
        AFR in [0, 1], spikes per neuron per step; 0.0 when no neuron is
        active (no spikes at all), as the paper reports for silent layers.
    """
    arr = _as_counts(counts, timesteps)
    n_active = int(np.count_nonzero(np.any(arr > 0, axis=0)))
    if n_active == 0:
        return 0.0
    return float(arr.sum() / (arr.shape[0] * n_active * timesteps))


def rae(counts: Any) -> float:
    """Ratio of active neurons per example to all active neurons.

    Mean over examples of (neurons that fired for the example / N_active);
    1.0 when every active neuron fires for every example, small for a
    spatially sparse code.

    Args:
        counts: spike counts [B, N].

    Returns:
        RAE in [0, 1]; 0.0 when no neuron is active in the batch.
    """
    fired = _as_counts(counts) > 0
    n_active = int(np.count_nonzero(np.any(fired, axis=0)))
    if n_active == 0:
        return 0.0
    return float(np.mean(fired.sum(axis=1) / n_active))


def spikes_per_example(counts: Any) -> float:
    """Mean number of spikes one example causes in the layer (total / B)."""
    arr = _as_counts(counts)
    return float(arr.sum() / arr.shape[0])


# --------------------------------------------------------------------------
# Firing-rate distribution


def neuron_firing_rates(counts: Any, timesteps: int) -> np.ndarray:
    """Per-neuron firing rate: counts / T averaged over the examples.

    Args:
        counts: spike counts [B, N], each in 0..T.
        timesteps: T.

    Returns:
        rates [N] (float64) in [0, 1], spikes per step.
    """
    return _as_counts(counts, timesteps).mean(axis=0) / timesteps


def summarize_neuron_rates(
    rates: Any, bursting_threshold: float = DEFAULT_BURSTING_THRESHOLD
) -> dict[str, float | int]:
    """Distribution summary of per-neuron firing rates.

    Args:
        rates: per-neuron mean firing rates [N], in [0, 1] (spikes per step).
        bursting_threshold: a neuron with rate >= this is counted as bursting.

    Returns:
        dict with ``mean``, ``std`` (population, ddof 0), ``min``, ``p5``,
        ``p25``, ``p50``, ``p75``, ``p95`` (numpy's linear interpolation),
        ``max``; ``dead`` (neurons with rate exactly 0, i.e. no spike over
        the evaluated set), ``bursting`` (rate >= threshold), their
        fractions ``dead_fraction`` and ``bursting_fraction``,
        ``n_neurons`` and the ``bursting_threshold`` used.
    """
    _check_bursting_threshold(bursting_threshold)
    r = _to_numpy(rates).astype(np.float64, copy=False).reshape(-1)
    if r.size == 0:
        raise ValueError("rates holds no neurons")
    if not np.all(np.isfinite(r)):
        raise ValueError("rates contains NaN or infinite values")
    pct = np.percentile(r, _PERCENTILES)
    dead = int(np.count_nonzero(r == 0))
    bursting = int(np.count_nonzero(r >= bursting_threshold))
    summary: dict[str, float | int] = {
        "mean": float(r.mean()),
        "std": float(r.std()),
        "min": float(r.min()),
    }
    summary.update({f"p{p}": float(v) for p, v in zip(_PERCENTILES, pct)})
    summary.update(
        {
            "max": float(r.max()),
            "dead": dead,
            "bursting": bursting,
            "dead_fraction": dead / r.size,
            "bursting_fraction": bursting / r.size,
            "n_neurons": int(r.size),
            "bursting_threshold": float(bursting_threshold),
        }
    )
    return summary


def spike_concentration(spikes_per_neuron: Any, share: float = 0.9) -> dict[str, float | int]:
    """How many neurons do a layer's work: ANR calls a layer healthy when one neuron fires.

    Args:
        spikes_per_neuron: total spike count of each neuron over the evaluated set [N] (>= 0).
        share: the fraction of all spikes the smallest carrying set must hold (0 < share <= 1).

    Returns:
        dict with ``neurons_for_share`` (the fewest neurons, taken from the most active down,
        whose spikes are at least ``share`` of the layer's spikes; 0 when the layer is silent),
        ``effective_neurons`` (exp of the Shannon entropy, in nats, of the spike distribution
        p_i = s_i / sum s over neurons: N for uniform activity, 1 when one neuron carries all
        spikes, 0 when silent), ``share`` and ``n_neurons``.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    s = _to_numpy(spikes_per_neuron).astype(np.float64, copy=False).reshape(-1)
    if s.size == 0:
        raise ValueError("spikes_per_neuron holds no neurons")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("spikes_per_neuron must be finite and non-negative")
    total = float(s.sum())
    if total == 0.0:
        return {"neurons_for_share": 0, "effective_neurons": 0.0, "share": share, "n_neurons": int(s.size)}
    ranked = np.sort(s)[::-1].cumsum()
    # a relative tolerance so that share=1 and exact shares are not missed by rounding of the cumsum
    needed = int(np.searchsorted(ranked, share * total * (1.0 - 1e-12), side="left")) + 1
    p = s[s > 0] / total
    entropy = float(-(p * np.log(p)).sum())
    return {"neurons_for_share": min(needed, int(s.size)), "effective_neurons": float(np.exp(entropy)),
            "share": share, "n_neurons": int(s.size)}


def firing_rate_summary(
    counts: Any, timesteps: int, bursting_threshold: float = DEFAULT_BURSTING_THRESHOLD
) -> dict[str, float | int]:
    """Distribution of per-neuron firing rates over the examples in ``counts``.

    The rate of neuron i is mean_b counts[b, i] / T. ``dead`` counts neurons
    that never fired for any example in ``counts``; ``bursting`` counts
    neurons whose rate is >= ``bursting_threshold`` (default 0.9).

    Args:
        counts: spike counts [B, N] over the whole evaluated set, each in 0..T.
        timesteps: T.
        bursting_threshold: rate (spikes per step) from which a neuron is bursting.

    Returns:
        the dict of ``summarize_neuron_rates``.
    """
    return summarize_neuron_rates(neuron_firing_rates(counts, timesteps), bursting_threshold)


# --------------------------------------------------------------------------
# Averaging over validation batches


class _LayerTally:
    """Running sums for one layer (O(N) memory)."""

    def __init__(self, n_neurons: int) -> None:
        self.n_neurons = n_neurons
        self.n_batches = 0
        self.n_examples = 0
        self.anr_sum = 0.0
        self.afr_sum = 0.0
        self.rae_sum = 0.0
        self.total_spikes = 0.0
        self.neuron_spikes = np.zeros(n_neurons, dtype=np.float64)
        self.kept: list[np.ndarray] | None = None


class BatchAccumulator:
    """Per-batch ANR/AFR/RAE averaged over batches, plus whole-set rates.

    Feed it one dict ``{layer name: counts [B, N]}`` per validation batch.
    Like the paper, ANR, AFR and RAE are computed per batch and averaged
    over batches with equal weight (a last, partial batch counts as one
    batch). Spikes per example and the firing-rate summary use the whole
    set: spikes per example = all spikes / all examples, and a neuron is
    dead only if it fired for no example of any batch.

    Memory is O(N) per layer: per-neuron spike sums, not the counts.
    ``keep_counts`` names layers whose counts are stored as well (e.g. the
    latent layer, to compute s_intra/s_inter afterwards); ``True`` keeps all.

    Args:
        timesteps: T of the evaluated model.
        bursting_threshold: see ``summarize_neuron_rates``.
        keep_counts: False, True, or a collection of layer names.
    """

    def __init__(
        self,
        timesteps: int,
        bursting_threshold: float = DEFAULT_BURSTING_THRESHOLD,
        keep_counts: bool | Collection[str] = False,
    ) -> None:
        _check_timesteps(timesteps)
        _check_bursting_threshold(bursting_threshold)
        self.timesteps = int(timesteps)
        self.bursting_threshold = float(bursting_threshold)
        if isinstance(keep_counts, str):
            keep_counts = [keep_counts]
        self._keep_counts = keep_counts if isinstance(keep_counts, bool) else frozenset(keep_counts)
        self._layers: dict[str, _LayerTally] = {}

    @property
    def layers(self) -> tuple[str, ...]:
        """Layer names, in the order of the first batch."""
        return tuple(self._layers)

    def _keeps(self, name: str) -> bool:
        if isinstance(self._keep_counts, bool):
            return self._keep_counts
        return name in self._keep_counts

    def update(self, counts_by_layer: Mapping[str, Any]) -> None:
        """Add one batch: ``{layer name: counts [B, N]}``, same layers every batch."""
        if not counts_by_layer:
            raise ValueError("update needs counts for at least one layer")
        if "total" in counts_by_layer:
            raise ValueError("layer name `total` is reserved for the total over layers in result()")
        if self._layers and set(counts_by_layer) != set(self._layers):
            missing = sorted(set(self._layers) - set(counts_by_layer))
            extra = sorted(set(counts_by_layer) - set(self._layers))
            raise ValueError(
                f"batch {self.n_batches + 1}: layers differ from the first batch "
                f"(missing {missing}, unexpected {extra})"
            )
        # Validate everything before touching any tally, so a bad batch
        # leaves the accumulator unchanged.
        batch: dict[str, np.ndarray] = {}
        n_examples = None
        for name, counts in counts_by_layer.items():
            try:
                arr = _as_counts(counts, self.timesteps)
            except ValueError as err:
                raise ValueError(f"batch {self.n_batches + 1}, layer `{name}`: {err}") from None
            tally = self._layers.get(name)
            if tally is not None and arr.shape[1] != tally.n_neurons:
                raise ValueError(
                    f"batch {self.n_batches + 1}, layer `{name}`: expected {tally.n_neurons} "
                    f"neurons, got {arr.shape[1]}"
                )
            if n_examples is not None and arr.shape[0] != n_examples:
                raise ValueError(
                    f"batch {self.n_batches + 1}, layer `{name}`: {arr.shape[0]} examples, "
                    f"other layers have {n_examples}"
                )
            n_examples = arr.shape[0]
            batch[name] = arr
        for name, arr in batch.items():
            tally = self._layers.get(name)
            if tally is None:
                tally = self._layers[name] = _LayerTally(arr.shape[1])
                if self._keeps(name):
                    tally.kept = []
            tally.n_batches += 1
            tally.n_examples += arr.shape[0]
            tally.anr_sum += anr(arr)
            tally.afr_sum += afr(arr, self.timesteps)
            tally.rae_sum += rae(arr)
            tally.total_spikes += float(arr.sum())
            tally.neuron_spikes += arr.sum(axis=0)
            if tally.kept is not None:
                tally.kept.append(arr.copy())

    @property
    def n_batches(self) -> int:
        """Batches added so far."""
        return next(iter(self._layers.values())).n_batches if self._layers else 0

    def _tally(self, layer: str) -> _LayerTally:
        try:
            return self._layers[layer]
        except KeyError:
            raise KeyError(f"no counts for layer `{layer}`; layers: {list(self._layers)}") from None

    def neuron_rates(self, layer: str) -> np.ndarray:
        """Per-neuron firing rates [N] of ``layer`` over all examples seen (for histograms)."""
        tally = self._tally(layer)
        return tally.neuron_spikes / (tally.n_examples * self.timesteps)

    def counts(self, layer: str) -> np.ndarray:
        """All stored counts [M, N] of ``layer``, in the order they were added.

        Only for layers named in ``keep_counts``.
        """
        tally = self._tally(layer)
        if tally.kept is None:
            raise ValueError(f"counts of layer `{layer}` were not kept; pass keep_counts=[{layer!r}]")
        return np.concatenate(tally.kept, axis=0)

    def result(self) -> dict[str, dict[str, Any]]:
        """Metrics per layer, plus ``"total"`` spikes per example over all layers.

        Returns:
            ``{layer: {"anr", "inp", "afr", "rae"`` (means over batches),
            ``"spikes_per_example"`` (whole set), ``"n_batches"``,
            ``"n_examples"``, ``"firing_rates"`` (summarize_neuron_rates
            over the whole set), ``"neurons_90pct_spikes"``, ``"effective_neurons"``
            (spike_concentration over the whole set)}, ..., "total": {"spikes_per_example"}}``.
        """
        if not self._layers:
            raise ValueError("no batches added yet")
        out: dict[str, dict[str, Any]] = {}
        total = 0.0
        for name, tally in self._layers.items():
            n = tally.n_batches
            spe = tally.total_spikes / tally.n_examples
            total += spe
            mean_anr = tally.anr_sum / n
            out[name] = {
                "anr": mean_anr,
                "inp": 1.0 - mean_anr,
                "afr": tally.afr_sum / n,
                "rae": tally.rae_sum / n,
                "spikes_per_example": spe,
                "n_batches": n,
                "n_examples": tally.n_examples,
                "firing_rates": summarize_neuron_rates(
                    self.neuron_rates(name), self.bursting_threshold
                ),
            }
            concentration = spike_concentration(tally.neuron_spikes, 0.9)
            out[name]["neurons_90pct_spikes"] = concentration["neurons_for_share"]
            out[name]["effective_neurons"] = concentration["effective_neurons"]
        out["total"] = {"spikes_per_example": total}
        return out


# --------------------------------------------------------------------------
# Latent clustering: s_intra / s_inter (paper Table 8)


def _pair_distance_sums(
    x: np.ndarray, labels: np.ndarray, metric: str, extra: dict[str, Any]
) -> tuple[float, int, float, int]:
    """Sum and count of distances over same-class and different-class pairs i < j.

    Equivalent to masking ``pdist(x, metric, **extra)``, but in row blocks.
    """
    m = x.shape[0]
    block = max(1, _PAIR_BLOCK_ELEMENTS // m)
    intra_sum = inter_sum = 0.0
    intra_n = inter_n = 0
    for start in range(0, m - 1, block):
        stop = min(start + block, m - 1)
        d = cdist(x[start:stop], x[start:], metric, **extra)
        # Row r (example start + r) pairs with columns j > r only.
        upper = np.arange(d.shape[1])[None, :] > np.arange(d.shape[0])[:, None]
        same = labels[start:stop, None] == labels[None, start:]
        intra = upper & same
        inter = upper & ~same
        intra_sum += float(d[intra].sum())
        inter_sum += float(d[inter].sum())
        intra_n += int(intra.sum())
        inter_n += int(inter.sum())
    return intra_sum, intra_n, inter_sum, inter_n


def intra_inter_ratio(latents: Any, labels: Any, metric: str = "euclidean") -> dict[str, Any]:
    """Ratio of mean intra-class to mean inter-class latent distance.

    intra = mean distance over pairs of examples with the same label,
    inter = mean over pairs with different labels (each unordered pair
    once, as in ``scipy.spatial.distance.pdist``); ratio < 1 means that
    examples of a class lie closer together than examples of different
    classes. All five metrics are invariant to a global affine rescaling of
    the latents, so counts, rates, or min-max-scaled rates give one ratio.

    Degenerate cases, handled instead of letting NaN through:

    - ``seuclidean``: the variance V is computed from the data as scipy
      does (per column, ddof 1). Columns that are constant over the set
      (e.g. dead neurons) have V = 0, so scipy would give 0/0 = NaN; they
      add nothing to any distance and are dropped (``dropped_columns``).
    - ``correlation``: an example whose latent vector is constant (e.g.
      all zero: no latent spike) has no correlation with anything (scipy
      gives NaN); such examples are dropped from this metric
      (``dropped_rows``).
    - Fewer than two classes, no same-class pair, no different-class pair,
      or an inter-class mean of 0 (left after dropping) raise ValueError.

    Args:
        latents: [M, D] latent vectors (SAE: firing rate over T; AE/VAE: z).
        labels: [M] class labels.
        metric: one of DISTANCE_METRICS.

    Returns:
        dict with ``ratio`` (intra / inter), ``intra``, ``inter``,
        ``n_intra_pairs``, ``n_inter_pairs``, ``dropped_rows``,
        ``dropped_columns``.
    """
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"unknown distance metric {metric!r}; choose one of {list(DISTANCE_METRICS)}")
    x = _to_numpy(latents).astype(np.float64, copy=False)
    y = _to_numpy(labels).reshape(-1)
    if x.ndim != 2:
        raise ValueError(f"latents must have shape [M, D], got shape {x.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"latents has {x.shape[0]} rows but labels has {y.shape[0]} entries")
    if x.shape[1] == 0:
        raise ValueError("latents has no columns (D = 0)")
    if not np.all(np.isfinite(x)):
        raise ValueError("latents contains NaN or infinite values")

    dropped_rows = dropped_columns = 0
    extra: dict[str, Any] = {}
    if metric == "correlation":
        constant_row = np.ptp(x, axis=1) == 0
        dropped_rows = int(constant_row.sum())
        x, y = x[~constant_row], y[~constant_row]
    if len(np.unique(y)) < 2:
        raise ValueError(
            f"intra/inter ratio needs at least two classes, got {len(np.unique(y))}"
            + (f" after dropping {dropped_rows} constant rows" if dropped_rows else "")
        )
    if metric == "seuclidean":
        constant_col = np.ptp(x, axis=0) == 0
        dropped_columns = int(constant_col.sum())
        x = x[:, ~constant_col]
        if x.shape[1] == 0:
            raise ValueError("seuclidean: every latent column is constant, all distances are 0")
        # Computed once over the whole set, as pdist does; cdist on a row
        # block would otherwise use the block's variance.
        extra["V"] = np.var(x, axis=0, ddof=1)

    intra_sum, intra_n, inter_sum, inter_n = _pair_distance_sums(x, y, metric, extra)
    if intra_n == 0:
        raise ValueError("intra/inter ratio needs a same-class pair, but every class has one example")
    intra = intra_sum / intra_n
    inter = inter_sum / inter_n
    if inter == 0:
        raise ValueError(f"{metric}: all inter-class distances are 0, the ratio is undefined")
    ratio = intra / inter
    if not np.isfinite(ratio):
        raise ValueError(f"{metric}: non-finite ratio (intra {intra}, inter {inter})")
    return {
        "ratio": float(ratio),
        "intra": float(intra),
        "inter": float(inter),
        "n_intra_pairs": intra_n,
        "n_inter_pairs": inter_n,
        "dropped_rows": dropped_rows,
        "dropped_columns": dropped_columns,
    }


def s_intra_inter_all(
    latents: Any, labels: Any, metrics: Collection[str] = DISTANCE_METRICS
) -> dict[str, float]:
    """``{metric: s_intra / s_inter}`` for each metric (paper Table 8)."""
    return {m: intra_inter_ratio(latents, labels, m)["ratio"] for m in metrics}


# --------------------------------------------------------------------------
# Reconstruction loss and example selection


def reconstruction_loss_stats(per_example_losses: Any, batch_size: int) -> dict[str, float | int]:
    """L_rec averaged per example and as the mean of batch means.

    The paper reports the mean of batch means: consecutive batches of
    ``batch_size`` in the given order, the last partial batch counting as
    one batch. On the MNIST test set an all-zero output scores 89.34 per
    example but 89.46 as batch means with batch 64 (the last batch holds 16).

    Args:
        per_example_losses: [M] L_rec of each example (sum over pixels).
        batch_size: validation batch size.

    Returns:
        dict with ``per_example_mean``, ``batch_mean``, ``n_examples``, ``n_batches``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    losses = _to_numpy(per_example_losses).astype(np.float64, copy=False).reshape(-1)
    if losses.size == 0:
        raise ValueError("per_example_losses is empty")
    if not np.all(np.isfinite(losses)):
        raise ValueError("per_example_losses contains NaN or infinite values")
    batch_means = [losses[i : i + batch_size].mean() for i in range(0, losses.size, batch_size)]
    return {
        "per_example_mean": float(losses.mean()),
        "batch_mean": float(np.mean(batch_means)),
        "n_examples": int(losses.size),
        "n_batches": len(batch_means),
    }


def clustermap_selection(labels: Any, per_class: int = 10, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` examples of each class, for the clustermap.

    Deterministic for a given ``labels`` and ``seed``: the examples of each
    class are drawn without replacement with ``numpy.random.default_rng(seed)``.
    With MNIST's 10 classes and the default, 100 examples.

    Args:
        labels: [M] class labels.
        per_class: examples per class.
        seed: seed of the draw.

    Returns:
        int64 indices [n_classes * per_class], grouped by class in ascending
        label order, ascending within a class.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    y = _to_numpy(labels).reshape(-1)
    if y.size == 0:
        raise ValueError("labels is empty")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        if members.size < per_class:
            raise ValueError(f"class {cls.item()!r} has {members.size} examples, fewer than per_class = {per_class}")
        chosen.append(np.sort(rng.choice(members, size=per_class, replace=False)))
    return np.concatenate(chosen).astype(np.int64)
