"""Metrics on hand-built cases whose answers are worked out in the comments."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from saec.analysis import metrics as M
from tests.conftest import MNIST_ROOT, needs_mnist_test_set

T = 4
# 3 examples x 4 neurons, T = 4. Neurons 0 and 2 never fire (dead), neuron 3
# fires at 11 of 12 example-steps (rate 11/12 >= 0.9: bursting).
COUNTS = np.array(
    [
        [0, 2, 0, 4],
        [0, 0, 0, 4],
        [0, 1, 0, 3],
    ]
)


# --------------------------------------------------------------------------
# Per-batch activity metrics


def test_active_mask_anr_inp():
    np.testing.assert_array_equal(M.active_mask(COUNTS), [False, True, False, True])
    assert M.anr(COUNTS) == 0.5  # 2 of 4 neurons active
    assert M.inp(COUNTS) == 0.5


def test_afr():
    # 14 spikes / (B=3 * N_active=2 * T=4) = 14/24
    assert M.afr(COUNTS, T) == pytest.approx(7 / 12)


def test_rae():
    # fired per example: 2, 1, 2 of N_active = 2 -> mean(1, 0.5, 1) = 5/6
    assert M.rae(COUNTS) == pytest.approx(5 / 6)


def test_spikes_per_example():
    assert M.spikes_per_example(COUNTS) == pytest.approx(14 / 3)


def test_torch_input_and_flattening():
    # [B, C, H, W] = [3, 2, 1, 2] flattens to the same [3, 4] matrix.
    t = torch.tensor(COUNTS, dtype=torch.float32).reshape(3, 2, 1, 2)
    assert M.anr(t) == 0.5
    assert M.afr(t, T) == pytest.approx(7 / 12)
    assert M.rae(t) == pytest.approx(5 / 6)


def test_spike_counts_from_trains():
    rng = np.random.default_rng(0)
    spikes = (rng.random((T, 3, 2, 2)) < 0.5).astype(np.float32)
    counts = M.spike_counts(torch.from_numpy(spikes))
    assert counts.shape == (3, 4)
    np.testing.assert_array_equal(counts, spikes.sum(axis=0).reshape(3, 4))


def test_no_active_neurons():
    zeros = np.zeros((3, 4))
    assert M.anr(zeros) == 0.0
    assert M.inp(zeros) == 1.0
    assert M.afr(zeros, T) == 0.0  # defined as 0, not 0/0
    assert M.rae(zeros) == 0.0
    assert M.spikes_per_example(zeros) == 0.0


def test_everything_fires_every_step():
    full = np.full((2, 5), T)
    assert M.anr(full) == 1.0
    assert M.afr(full, T) == 1.0
    assert M.rae(full) == 1.0


@pytest.mark.parametrize(
    ("counts", "timesteps", "match"),
    [
        (np.array([1, 2, 3]), T, r"shape \[B, N\]"),
        (np.zeros((0, 4)), T, "no examples"),
        (np.array([[1, -1]]), T, "non-negative"),
        (np.array([[1, np.nan]]), T, "NaN"),
        (np.array([[1, 5]]), T, "exceed timesteps"),
        (COUNTS, 0, "positive integer"),
    ],
)
def test_invalid_counts(counts, timesteps, match):
    with pytest.raises(ValueError, match=match):
        M.afr(counts, timesteps)


# --------------------------------------------------------------------------
# Firing-rate distribution


def test_firing_rate_summary_by_hand():
    # rates = [0, 3/12, 0, 11/12]; sorted [0, 0, 1/4, 11/12]; mean 7/24;
    # deviations (-7, -7, -1, 15)/24 -> variance 324/2304 -> std 0.375.
    # Linear percentiles at index q*3: p5 -> 0, p25 -> 0, p50 -> 1/8,
    # p75 -> 1/4 + 0.25*(2/3) = 5/12, p95 -> 1/4 + 0.85*(2/3) = 49/60.
    s = M.firing_rate_summary(COUNTS, T)
    expected = {
        "mean": 7 / 24,
        "std": 0.375,
        "min": 0.0,
        "p5": 0.0,
        "p25": 0.0,
        "p50": 1 / 8,
        "p75": 5 / 12,
        "p95": 49 / 60,
        "max": 11 / 12,
    }
    for key, value in expected.items():
        assert s[key] == pytest.approx(value), key
    assert s["dead"] == 2
    assert s["bursting"] == 1
    assert s["dead_fraction"] == 0.5
    assert s["bursting_fraction"] == 0.25
    assert s["n_neurons"] == 4
    assert s["bursting_threshold"] == 0.9


def test_bursting_threshold_is_inclusive_and_configurable():
    # rates 3/12 and 11/12: threshold 11/12 still counts neuron 3 (>=);
    # 0.25 counts both active neurons; 0.95 counts none.
    assert M.firing_rate_summary(COUNTS, T, bursting_threshold=11 / 12)["bursting"] == 1
    assert M.firing_rate_summary(COUNTS, T, bursting_threshold=0.25)["bursting"] == 2
    assert M.firing_rate_summary(COUNTS, T, bursting_threshold=0.95)["bursting"] == 0
    with pytest.raises(ValueError, match=r"bursting_threshold must lie in \(0, 1\]"):
        M.firing_rate_summary(COUNTS, T, bursting_threshold=0.0)


# --------------------------------------------------------------------------
# Averaging over batches


def test_accumulator_averages_batches_and_summarises_whole_set():
    # Batch 1 = COUNTS: ANR 1/2, AFR 7/12, RAE 5/6, 14 spikes.
    # Batch 2 (one example, T = 4): neuron 0 fires once.
    #   ANR 1/4, AFR 1/(1*1*4) = 1/4, RAE 1, 1 spike.
    acc = M.BatchAccumulator(timesteps=T)
    acc.update({"latent": COUNTS})
    acc.update({"latent": torch.tensor([[1, 0, 0, 0]])})
    r = acc.result()["latent"]
    assert r["anr"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert r["inp"] == pytest.approx(1 - 3 / 8)
    assert r["afr"] == pytest.approx((7 / 12 + 1 / 4) / 2)
    assert r["rae"] == pytest.approx((5 / 6 + 1) / 2)
    assert r["n_batches"] == 2
    assert r["n_examples"] == 4
    # whole set: 15 spikes over 4 examples
    assert r["spikes_per_example"] == pytest.approx(15 / 4)
    # whole set rates: neuron sums [1, 3, 0, 11] / (4 examples * 4 steps);
    # neuron 0 fired in batch 2 only, so only neuron 2 is dead.
    np.testing.assert_allclose(acc.neuron_rates("latent"), [1 / 16, 3 / 16, 0, 11 / 16])
    fr = r["firing_rates"]
    assert fr["dead"] == 1
    assert fr["bursting"] == 0  # 11/16 < 0.9
    assert fr["max"] == pytest.approx(11 / 16)


def test_accumulator_total_spikes_over_layers():
    acc = M.BatchAccumulator(timesteps=T)
    acc.update({"conv1": np.ones((2, 3)), "latent": COUNTS[:2]})
    res = acc.result()
    # conv1: 6 spikes / 2 = 3; latent: 10 spikes / 2 = 5
    assert res["conv1"]["spikes_per_example"] == 3
    assert res["latent"]["spikes_per_example"] == 5
    assert res["total"]["spikes_per_example"] == 8
    assert acc.layers == ("conv1", "latent")


def test_accumulator_keeps_counts_only_when_asked():
    acc = M.BatchAccumulator(timesteps=T, keep_counts="latent")
    acc.update({"conv1": np.ones((2, 3)), "latent": COUNTS[:2]})
    acc.update({"conv1": np.ones((1, 3)), "latent": COUNTS[2:]})
    np.testing.assert_array_equal(acc.counts("latent"), COUNTS)
    with pytest.raises(ValueError, match="counts of layer `conv1` were not kept"):
        acc.counts("conv1")


def test_accumulator_rejects_inconsistent_batches():
    acc = M.BatchAccumulator(timesteps=T)
    acc.update({"latent": COUNTS})
    with pytest.raises(ValueError, match=r"batch 2, layer `latent`: expected 4 neurons, got 3"):
        acc.update({"latent": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"batch 2: layers differ .*missing \['latent'\], unexpected \['dec'\]"):
        acc.update({"dec": np.zeros((2, 4))})
    with pytest.raises(ValueError, match=r"batch 2, layer `latent`: counts exceed timesteps"):
        acc.update({"latent": np.full((2, 4), T + 1)})
    # rejected batches left the tallies untouched
    assert acc.result()["latent"]["n_batches"] == 1
    with pytest.raises(ValueError, match="no batches"):
        M.BatchAccumulator(timesteps=T).result()
    with pytest.raises(KeyError, match="no counts for layer `enc`"):
        acc.neuron_rates("enc")


# --------------------------------------------------------------------------
# s_intra / s_inter

# 1-D, two classes: A at 0 and 1, B at 10 and 11.
# intra pairs: |0-1| = 1, |10-11| = 1; inter: 10, 11, 9, 10.
LINE = np.array([[0.0], [1.0], [10.0], [11.0]])
LINE_LABELS = np.array([0, 0, 1, 1])


def test_intra_inter_euclidean_by_hand():
    r = M.intra_inter_ratio(LINE, LINE_LABELS, "euclidean")
    assert r["intra"] == pytest.approx(1.0)
    assert r["inter"] == pytest.approx(10.0)
    assert r["ratio"] == pytest.approx(0.1)
    assert (r["n_intra_pairs"], r["n_inter_pairs"]) == (2, 4)
    assert M.intra_inter_ratio(LINE, LINE_LABELS, "cityblock")["ratio"] == pytest.approx(0.1)


def test_intra_inter_sqeuclidean_by_hand():
    # inter (100 + 121 + 81 + 100) / 4 = 100.5
    r = M.intra_inter_ratio(LINE, LINE_LABELS, "sqeuclidean")
    assert r["inter"] == pytest.approx(100.5)
    assert r["ratio"] == pytest.approx(1 / 100.5)


def test_intra_inter_cityblock_differs_from_euclidean_in_2d():
    # A: (0,0), (3,4): euclidean 5, cityblock 7. B: (10,0), (10,0): 0.
    x = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0], [10.0, 0.0]])
    y = np.array([0, 0, 1, 1])
    assert M.intra_inter_ratio(x, y, "euclidean")["intra"] == pytest.approx(2.5)
    assert M.intra_inter_ratio(x, y, "cityblock")["intra"] == pytest.approx(3.5)


def test_seuclidean_drops_constant_column():
    # Column 1 is constant (a dead neuron): scipy's default V gives NaN.
    x = np.hstack([LINE, np.full((4, 1), 5.0)])
    assert np.isnan(pdist(x, "seuclidean")).all()
    # Column 0: var([0, 1, 10, 11], ddof=1) = 101/3, so distances are
    # |dx| / sqrt(101/3) and the ratio stays 0.1.
    r = M.intra_inter_ratio(x, LINE_LABELS, "seuclidean")
    assert r["dropped_columns"] == 1
    assert r["intra"] == pytest.approx(1 / np.sqrt(101 / 3))
    assert r["ratio"] == pytest.approx(0.1)


def test_correlation_by_hand_and_constant_rows_dropped():
    # Centred rows: a1 = (-1, 0, 1), a2 = (-1, 1, 0), b1 = (1, 0, -1),
    # b2 = (0, 1, -1), each of norm sqrt(2); distance = 1 - dot / 2.
    # intra: d(a1,a2) = 0.5, d(b1,b2) = 0.5. inter: d(a1,b1) = 2,
    # d(a1,b2) = 1.5, d(a2,b1) = 1.5, d(a2,b2) = 0.5 -> mean 1.375.
    # ratio 0.5 / 1.375 = 4/11. The constant rows (no spike at all, or
    # all equal) have no correlation: dropped, not NaN.
    x = np.array(
        [[1, 2, 3], [1, 3, 2], [0, 0, 0], [3, 2, 1], [2, 3, 1], [5, 5, 5]], dtype=float
    )
    y = np.array([0, 0, 0, 1, 1, 1])
    r = M.intra_inter_ratio(x, y, "correlation")
    assert r["dropped_rows"] == 2
    assert r["intra"] == pytest.approx(0.5)
    assert r["inter"] == pytest.approx(1.375)
    assert r["ratio"] == pytest.approx(4 / 11)


@pytest.mark.parametrize("metric", M.DISTANCE_METRICS)
def test_matches_masked_pdist_with_small_blocks(metric, monkeypatch):
    # Row blocks of 7 entries force many partial blocks; the result must
    # equal the plain pdist computation.
    monkeypatch.setattr(M, "_PAIR_BLOCK_ELEMENTS", 7)
    rng = np.random.default_rng(1)
    x = rng.random((23, 5))
    y = rng.integers(0, 3, size=23)
    d = pdist(x, metric)
    i, j = np.triu_indices(len(x), k=1)
    same = y[i] == y[j]
    r = M.intra_inter_ratio(x, y, metric)
    assert r["intra"] == pytest.approx(d[same].mean(), rel=1e-12)
    assert r["inter"] == pytest.approx(d[~same].mean(), rel=1e-12)


def _clustered(rng, n_classes=10, per_class=30, dim=20, spread=0.05):
    centres = rng.random((n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centres[labels] + spread * rng.standard_normal((len(labels), dim))
    return x, labels


def test_clustered_data_ratio_below_one_random_labels_near_one():
    rng = np.random.default_rng(2)
    x, labels = _clustered(rng)
    clustered = M.s_intra_inter_all(x, labels)
    assert set(clustered) == set(M.DISTANCE_METRICS)
    assert all(v < 0.5 for v in clustered.values()), clustered
    shuffled = M.s_intra_inter_all(x, rng.permutation(labels))
    assert all(abs(v - 1) < 0.05 for v in shuffled.values()), shuffled


def test_ratio_invariant_to_rescaling():
    # counts or rates (counts / T) give the same ratio
    rng = np.random.default_rng(3)
    x, labels = _clustered(rng, n_classes=3, per_class=5, dim=4)
    a = M.s_intra_inter_all(x, labels)
    b = M.s_intra_inter_all(x * 16 + 3, labels)
    for metric in M.DISTANCE_METRICS:
        assert b[metric] == pytest.approx(a[metric], rel=1e-9)


@pytest.mark.parametrize(
    ("latents", "labels", "metric", "match"),
    [
        (LINE, np.zeros(4), "euclidean", "at least two classes, got 1"),
        (LINE, np.arange(4), "euclidean", "same-class pair"),
        (LINE, LINE_LABELS, "cosine", "unknown distance metric 'cosine'"),
        (LINE, LINE_LABELS[:3], "euclidean", "4 rows but labels has 3"),
        (np.array([[0.0], [np.nan], [1.0], [2.0]]), LINE_LABELS, "euclidean", "NaN"),
        (np.zeros((4, 3)), LINE_LABELS, "euclidean", "all inter-class distances are 0"),
        (np.zeros((4, 3)), LINE_LABELS, "seuclidean", "every latent column is constant"),
        (np.zeros((4, 3)), LINE_LABELS, "correlation", "after dropping 4 constant rows"),
    ],
)
def test_intra_inter_errors(latents, labels, metric, match):
    with pytest.raises(ValueError, match=match):
        M.intra_inter_ratio(latents, labels, metric)


# --------------------------------------------------------------------------
# Reconstruction loss, clustermap selection


def test_reconstruction_loss_stats_by_hand():
    # batches of 2: [1, 2], [3, 4], [5] -> means 1.5, 3.5, 5 -> 10/3
    s = M.reconstruction_loss_stats(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), batch_size=2)
    assert s["per_example_mean"] == pytest.approx(3.0)
    assert s["batch_mean"] == pytest.approx(10 / 3)
    assert (s["n_examples"], s["n_batches"]) == (5, 3)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        M.reconstruction_loss_stats([1.0], batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        M.reconstruction_loss_stats([], batch_size=2)


@needs_mnist_test_set
def test_all_zero_output_on_mnist_test_set():
    from saec.training.data import load_images

    x = load_images("mnist", "test", MNIST_ROOT).images.reshape(-1, 784).double().numpy()
    s = M.reconstruction_loss_stats((x**2).sum(axis=1), batch_size=64)
    assert s["per_example_mean"] == pytest.approx(89.34, abs=0.005)
    assert s["batch_mean"] == pytest.approx(89.46, abs=0.005)
    assert s["n_batches"] == 157  # 156 full batches and one of 16


def test_clustermap_selection():
    labels = np.repeat(np.arange(10), 15)[::-1]  # 15 per class, shuffled order
    idx = M.clustermap_selection(labels, per_class=10, seed=0)
    assert idx.shape == (100,)
    assert len(set(idx.tolist())) == 100
    np.testing.assert_array_equal(labels[idx], np.repeat(np.arange(10), 10))
    np.testing.assert_array_equal(idx, M.clustermap_selection(labels, per_class=10, seed=0))
    assert not np.array_equal(idx, M.clustermap_selection(labels, per_class=10, seed=1))
    with pytest.raises(ValueError, match="class 3 has 2 examples, fewer than per_class = 10"):
        M.clustermap_selection(np.array([0] * 10 + [3] * 2), per_class=10)


# --------------------------------------------------------------------------
# spike concentration: how many neurons carry the spikes


def test_spike_concentration_one_neuron_does_the_work():
    # 100 neurons all "active" (ANR 1) but one carries 95 % of the spikes
    s = np.ones(100)
    s[7] = 99 * 19.0  # 1881 of 1980 spikes = 0.95
    c = M.spike_concentration(s, 0.9)
    assert c["neurons_for_share"] == 1
    p = s / s.sum()
    assert c["effective_neurons"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert 1.0 < c["effective_neurons"] < 2.0


def test_spike_concentration_uniform_and_exact_shares():
    c = M.spike_concentration(np.full(10, 3.0), 0.9)
    assert c["neurons_for_share"] == 9  # 9 x 3 = 27 of 30 spikes is exactly 90 %
    assert c["effective_neurons"] == pytest.approx(10.0, rel=1e-12)
    assert M.spike_concentration(np.full(10, 3.0), 1.0)["neurons_for_share"] == 10
    # 0.91 needs a tenth neuron
    assert M.spike_concentration(np.full(10, 3.0), 0.91)["neurons_for_share"] == 10
    c = M.spike_concentration(np.array([0, 0, 5, 0, 45]), 0.9)
    assert c["neurons_for_share"] == 1 and c["n_neurons"] == 5


def test_spike_concentration_silent_layer_and_bad_input():
    c = M.spike_concentration(np.zeros(4))
    assert c["neurons_for_share"] == 0 and c["effective_neurons"] == 0.0
    with pytest.raises(ValueError, match="share"):
        M.spike_concentration(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        M.spike_concentration(np.array([1.0, -1.0]))


def test_layer_tally_reports_spike_concentration():
    counts = np.zeros((4, 5))
    counts[:, 0] = 8  # neuron 0: 32 spikes
    counts[0, 1:] = 1  # neurons 1..4: 1 spike each, so every neuron is active (ANR 1)
    acc = M.BatchAccumulator(timesteps=8)
    acc.update({"latent": counts[:2]})
    acc.update({"latent": counts[2:]})
    res = acc.result()["latent"]
    assert res["anr"] == pytest.approx(0.6)  # batch 1: 5 of 5 active; batch 2: 1 of 5
    # 32 of 36 spikes = 0.889 < 0.9, so a second neuron is needed: 33 / 36 = 0.917
    assert res["neurons_90pct_spikes"] == 2
    p = np.array([32, 1, 1, 1, 1]) / 36
    assert res["effective_neurons"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-12)
