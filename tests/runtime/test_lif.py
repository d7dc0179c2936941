"""LIF kernels: forward against an independent float64 loop, fast backward against autograd."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from saec.compiler.ops import LIF
from saec.runtime.lif import LIFResult, lif_scan, lif_scan_autograd, lif_step

# The printed equations: a true clamp at -1 (Eq. 4), applied after the spike test.
PAPER = LIF(
    spike_when="ge", lower_bound=-1.0, lower_bound_mode="clamp", clamp_first=False, integrate="potential",
    surrogate="straight_through", reset_grad="pass", clamp_grad="pass", decay_grad=True,
)
# The published code's behaviour: below -1 the membrane is revived to +threshold (the schema's
# default has no floor, so the rule is stated here).
REFERENCE = LIF(lower_bound=-1.0, lower_bound_mode="revive")

MARGIN = 1e-3  # inputs whose potentials come this close to a decision boundary are redrawn


# ---------------------------------------------------------------- float64 reference
def reference_lif(current: np.ndarray, op: LIF) -> dict[str, np.ndarray | float]:
    """REFERENCE.md "One time step", one neuron at a time with Python scalars.

    Returns spikes, u (before floor rule and reset) and U, each [T, ...], and
    ``margin``: the smallest distance of a tested potential to the threshold or
    the lower bound (a value set by the floor rule is exact and not counted).
    """
    current = np.asarray(current, dtype=np.float64)
    T = current.shape[0]
    flat = current.reshape(T, -1)
    spikes, u_rec, U_rec = (np.zeros_like(flat) for _ in range(3))
    floor_to = op.threshold if op.lower_bound_mode == "revive" else op.lower_bound
    margin = math.inf
    for n in range(flat.shape[1]):
        u_after, U = 0.0, 0.0
        for t in range(T):
            u = op.decay * u_after + flat[t, n]
            below = op.lower_bound is not None and u < op.lower_bound
            if op.lower_bound is not None:
                margin = min(margin, abs(u - op.lower_bound))
            if op.clamp_first and below:
                v = floor_to
            else:
                v = u
                margin = min(margin, abs(v - op.threshold))
            fired = v >= op.threshold if op.spike_when == "ge" else v > op.threshold
            if fired:
                u_after = {"zero": 0.0, "subtract": v - op.threshold, "none": v}[op.reset]
            elif below and not op.clamp_first:
                u_after = floor_to
            else:
                u_after = v
            if op.integrate == "potential":
                U = op.decay * U + u
            else:
                U = op.decay * (U + flat[t, n])
            spikes[t, n], u_rec[t, n], U_rec[t, n] = float(fired), u, U
    shape = current.shape
    return {"spikes": spikes.reshape(shape), "u": u_rec.reshape(shape),
            "U": U_rec.reshape(shape), "margin": margin}


def draw_current(op: LIF, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0,
                 mean: float = 0.2, std: float = 1.0):
    """Random current whose trajectory stays MARGIN away from every decision boundary."""
    for attempt in range(100):
        rng = np.random.default_rng(seed * 1000 + attempt)
        x = torch.tensor(rng.normal(mean, std, size=shape)).to(dtype)
        ref = reference_lif(x.double().numpy(), op)
        if ref["margin"] >= MARGIN:
            return x, ref
    raise RuntimeError("no input kept away from the threshold")  # pragma: no cover


def _assert_matches_reference(res: LIFResult, ref: dict, dtype: torch.dtype) -> None:
    assert torch.equal(res.spikes, torch.from_numpy(ref["spikes"]).to(dtype))
    for name, got in (("u", res.u), ("U", res.U)):
        want = torch.from_numpy(ref[name])
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=name)
        else:
            scale = max(1.0, want.abs().max().item())
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * scale, msg=name)


FORWARD_OPS = {
    "paper": PAPER,
    "reference": REFERENCE,
    "paper_gt_subtract": dataclasses.replace(PAPER, spike_when="gt", reset="subtract"),
    "revive_after_spike_test": dataclasses.replace(REFERENCE, clamp_first=False, spike_when="ge"),
    "clamp_first_ge_revive": dataclasses.replace(REFERENCE, spike_when="ge", integrate="potential"),
    "no_floor_reset_none": LIF(lower_bound=None, reset="none", decay=0.9, threshold=2.0),
    # a floor above the threshold: spiking and the floor rule compete; the spike wins
    "floor_above_threshold": LIF(threshold=0.5, lower_bound=0.75, lower_bound_mode="clamp",
                                 clamp_first=False, reset="subtract"),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", list(FORWARD_OPS))
def test_forward_matches_float64_reference(name, dtype):
    op = FORWARD_OPS[name]
    x, ref = draw_current(op, (24, 3, 5), dtype, std=1.5 if op.threshold > 1 else 1.0)
    assert ref["spikes"].any() and not ref["spikes"].all()
    if op.lower_bound is not None:  # the floor rule must have fired somewhere
        assert (ref["u"] < op.lower_bound).any()

    _assert_matches_reference(lif_scan(x, op, cumulative="all", record_potential=True), ref, dtype)
    _assert_matches_reference(
        lif_scan(x.clone().requires_grad_(), op, cumulative="all", record_potential=True), ref, dtype)
    _assert_matches_reference(
        lif_scan_autograd(x, op, cumulative="all", record_potential=True), ref, dtype)


def test_paper_and_reference_presets_differ_where_documented():
    """The revive rule sets u < -threshold to +threshold; the paper's clamp sets it to -threshold."""
    x = torch.tensor([[-1.5], [0.0], [0.5]], dtype=torch.float64).unsqueeze(-1)  # [T=3, B=1, 1]
    ref = lif_scan(x, dataclasses.replace(REFERENCE, decay=1.0), record_potential=True)
    paper = lif_scan(x, dataclasses.replace(PAPER, decay=1.0), record_potential=True)
    # reference: u'(1) = +1 (revived, no spike under strict >), u(2) = 1 (no spike), u(3) = 1.5 spikes
    assert ref.u.flatten().tolist() == [-1.5, 1.0, 1.5]
    assert ref.spikes.flatten().tolist() == [0.0, 0.0, 1.0]
    # paper: u'(1) = -1 (clamped), u(2) = -1, u(3) = -0.5; the clamp holds the neuron down
    assert paper.u.flatten().tolist() == [-1.5, -1.0, -0.5]
    assert paper.spikes.flatten().tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------- fast backward vs autograd
def _grad_pair(op: LIF, x: torch.Tensor, cumulative: str, record: bool, seed: int = 1,
               spikes_grad: bool = True):
    """Gradient of a random linear functional of the outputs, by both implementations."""
    gen = torch.Generator().manual_seed(seed)
    weights = None
    grads, results = [], []
    for fn in (lif_scan, lif_scan_autograd):
        xi = x.detach().clone().requires_grad_()
        res = fn(xi, op, cumulative=cumulative, record_potential=record)
        if weights is None:
            weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype) if t is not None else None
                       for t in res]
        loss = sum((w * t).sum() for w, t in zip(weights, res)
                   if t is not None and (spikes_grad or t is not res.spikes))
        grads.append(torch.autograd.grad(loss, xi)[0])
        results.append(res)
    return grads, results


SURROGATES = ["straight_through", "spike_gated", "fast_sigmoid", "arctan"]
FLOORS = {"none": dict(lower_bound=None), "clamp": dict(lower_bound_mode="clamp"),
          "revive": dict(lower_bound_mode="revive")}


def _grad_input() -> torch.Tensor:
    # Strong enough to spike and to fall below the floor within 8 steps.
    gen = torch.Generator().manual_seed(7)
    return torch.randn(8, 2, 3, generator=gen, dtype=torch.float64) * 1.3 + 0.2


@pytest.mark.parametrize("floor", list(FLOORS))
@pytest.mark.parametrize("clamp_first", [True, False], ids=["clamp_first", "spike_first"])
@pytest.mark.parametrize("integrate", ["potential", "current"])
@pytest.mark.parametrize("reset", ["zero", "subtract", "none"])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_fast_backward_matches_autograd(surrogate, reset, integrate, clamp_first, floor):
    """Every surrogate x reset x reset_grad x clamp_grad x decay_grad x integrate x clamp_first
    x floor mode (the three gradient switches loop inside to keep the test count small)."""
    x = _grad_input()
    failures = []
    for reset_grad, clamp_grad, decay_grad in itertools.product(
            ["pass", "cut"], ["pass", "cut"], [True, False]):
        # spike_when alternates with the grad paths so that both appear with every other field.
        spike_when = "ge" if (reset_grad == clamp_grad) else "gt"
        op = LIF(decay=0.9, threshold=1.0, surrogate=surrogate, slope=2.0, reset=reset,
                 reset_grad=reset_grad, clamp_grad=clamp_grad, decay_grad=decay_grad,
                 integrate=integrate, clamp_first=clamp_first, spike_when=spike_when,
                 **FLOORS[floor])
        (g_fast, g_auto), (r_fast, r_auto) = _grad_pair(op, x, "all", True)
        assert torch.equal(r_fast.spikes, r_auto.spikes)
        assert r_fast.spikes.any()
        if op.lower_bound is not None:
            assert (r_fast.u < op.lower_bound).any()
        if not torch.allclose(g_fast, g_auto, rtol=1e-10, atol=1e-12):
            err = (g_fast - g_auto).abs().max().item()
            failures.append(f"reset_grad={reset_grad} clamp_grad={clamp_grad} "
                            f"decay_grad={decay_grad}: max |diff| {err:.3g}")
    assert not failures, "\n".join(failures)


GRAD_OPS = {
    "paper": PAPER,
    "reference": REFERENCE,
    "fast_sigmoid_cut": LIF(surrogate="fast_sigmoid", slope=5.0, decay_grad=True),
    "arctan_potential": dataclasses.replace(PAPER, surrogate="arctan", reset_grad="cut",
                                            clamp_grad="cut", decay_grad=False),
    "floor_above_threshold": FORWARD_OPS["floor_above_threshold"],
}


@pytest.mark.parametrize("record", [False, True], ids=["no_u", "u"])
@pytest.mark.parametrize("cumulative", ["none", "last", "all"])
@pytest.mark.parametrize("name", list(GRAD_OPS))
def test_fast_backward_every_output_combination(name, cumulative, record):
    op = GRAD_OPS[name]
    x = _grad_input()
    (g_fast, g_auto), _ = _grad_pair(op, x, cumulative, record)
    torch.testing.assert_close(g_fast, g_auto, rtol=1e-10, atol=1e-12)
    if cumulative != "none" or record:  # without the spikes' gradient
        (g_fast, g_auto), _ = _grad_pair(op, x, cumulative, record, spikes_grad=False)
        torch.testing.assert_close(g_fast, g_auto, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(GRAD_OPS))
def test_fast_backward_broadcast_upstream_gradient(name):
    """``spikes.sum()`` hands backward an expanded (stride-0) gradient."""
    op = GRAD_OPS[name]
    x = _grad_input()
    grads = []
    for fn in (lif_scan, lif_scan_autograd):
        xi = x.clone().requires_grad_()
        res = fn(xi, op, cumulative="last")
        (res.spikes.sum() + res.U.sum()).backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- hand-computed gradients
def _jacobian_row(op: LIF, current: list[float], t_out: int, what: str = "spikes") -> list[float]:
    """d (output at step t_out) / d I(t) for a single neuron, by the fast path."""
    x = torch.tensor(current, dtype=torch.float64).view(-1, 1, 1).requires_grad_()
    res = lif_scan(x, op, cumulative="all")
    out = res.spikes if what == "spikes" else res.U
    (g,) = torch.autograd.grad(out[t_out].sum(), x)
    return g.flatten().tolist()


def test_spike_gated_gradient_by_hand():
    op = dataclasses.replace(REFERENCE, decay=0.5, threshold=0.5)
    # u = 0.3, 0.45, 0.525: one spike, at step 3; d phi/d u = 1/threshold = 2 there
    assert _jacobian_row(op, [0.3, 0.3, 0.3], 2) == pytest.approx([2.0, 2.0, 2.0])
    assert _jacobian_row(dataclasses.replace(op, decay_grad=True), [0.3, 0.3, 0.3], 2) \
        == pytest.approx([0.5, 1.0, 2.0])
    # no spike at step 2: no gradient
    assert _jacobian_row(op, [0.3, 0.3, 0.3], 1) == [0.0, 0.0, 0.0]


def test_reset_cut_stops_the_membrane_path_by_hand():
    op = dataclasses.replace(REFERENCE, decay=0.5, threshold=0.5)
    # spikes at steps 1 and 3 (u = 0.6, 0.1, 0.55)
    current = [0.6, 0.1, 0.5]
    assert _jacobian_row(op, current, 2) == pytest.approx([0.0, 2.0, 2.0])
    assert _jacobian_row(dataclasses.replace(op, reset_grad="pass"), current, 2) \
        == pytest.approx([2.0, 2.0, 2.0])


def test_clamp_cut_stops_the_membrane_path_by_hand():
    base = dataclasses.replace(PAPER, decay=0.5, clamp_grad="cut")
    # u = -1.5 (clamped to -1), -0.5 + 0.2 = -0.3, -0.15 + 0.5 = 0.35; straight-through
    current = [-1.5, 0.2, 0.5]
    assert _jacobian_row(base, current, 2) == pytest.approx([0.0, 0.5, 1.0])
    assert _jacobian_row(dataclasses.replace(base, clamp_grad="pass"), current, 2) \
        == pytest.approx([0.25, 0.5, 1.0])


def test_paper_straight_through_gradient_by_hand():
    # identity surrogate, reset and clamp as noise, decay kept: d phi(3)/d I(t) = decay^(3-t)
    op = dataclasses.replace(PAPER, decay=0.5)
    assert _jacobian_row(op, [1.5, -2.0, 0.3], 2) == pytest.approx([0.25, 0.5, 1.0])


def test_cumulative_current_gradient_by_hand():
    # integrate="current": U(t) = decay * (U(t-1) + I(t)); dU(3)/dI(t) = decay^(4-t)
    op = dataclasses.replace(REFERENCE, decay=0.5, decay_grad=True)
    assert _jacobian_row(op, [0.3, 0.3, 0.3], 2, "U") == pytest.approx([0.125, 0.25, 0.5])
    # the published code's backward drops every decay factor
    assert _jacobian_row(REFERENCE, [0.3, 0.3, 0.3], 2, "U") == pytest.approx([1.0, 1.0, 1.0])


def test_surrogate_formulas_at_one_point():
    """Single step, no history: dphi/dI is the surrogate at v = I."""
    for surrogate, slope, v, want in [
        ("fast_sigmoid", 2.0, 1.5, 1.0 / (1.0 + 2.0 * 0.5) ** 2),
        ("arctan", 2.0, 1.5, 1.0 / (1.0 + (math.pi / 2 * 2.0 * 0.5) ** 2)),
        ("straight_through", 1.0, 0.2, 1.0),
        ("spike_gated", 1.0, 0.2, 0.0),
    ]:
        op = LIF(surrogate=surrogate, slope=slope, threshold=1.0)
        assert _jacobian_row(op, [v], 0) == pytest.approx([want]), surrogate


# ---------------------------------------------------------------- what backward keeps
def _saved_tensors(op: LIF, x: torch.Tensor) -> list[torch.Tensor]:
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lif_scan(x.clone().requires_grad_(), op, cumulative="all")
    return saved


@pytest.mark.parametrize("name", list(GRAD_OPS))
def test_backward_saves_bool_masks_and_membrane_only_when_needed(name):
    op = GRAD_OPS[name]
    saved = _saved_tensors(op, _grad_input())
    floats = [t for t in saved if t.is_floating_point()]
    assert all(t.dtype == torch.bool for t in saved if not t.is_floating_point())
    assert len(floats) == (1 if op.surrogate in ("fast_sigmoid", "arctan") else 0)
    assert len(saved) <= 3
    if name == "paper":  # identity surrogate, every path passes: nothing to keep
        assert saved == []


# ---------------------------------------------------------------- step-by-step execution
STEP_OPS = {
    **FORWARD_OPS,
    "reference_ge": dataclasses.replace(REFERENCE, spike_when="ge"),
    "subtract_revive": dataclasses.replace(REFERENCE, reset="subtract"),
}


@pytest.mark.parametrize("dyadic", [True, False], ids=["exact_ties", "random"])
@pytest.mark.parametrize("name", list(STEP_OPS))
def test_lif_step_is_bit_identical_to_scan(name, dyadic):
    op = STEP_OPS[name]
    gen = torch.Generator().manual_seed(3)
    if dyadic:
        # decay 1/2 and multiples of 1/4: every value is exact, so potentials land exactly
        # on the threshold and the lower bound, and ge/gt, </>= ties are exercised.
        op = dataclasses.replace(op, decay=0.5, threshold=1.0)
        x = torch.randint(-6, 7, (12, 4, 5), generator=gen).float() / 4
    else:
        x = torch.randn(40, 4, 5, generator=gen) * 1.2 + 0.2
    scan = lif_scan(x, op, cumulative="all", record_potential=True)
    if dyadic:
        assert (scan.u == op.threshold).any()
    state, spikes, Us = None, [], []
    for t in range(x.shape[0]):
        s, state = lif_step(x[t], state, op)
        spikes.append(s)
        Us.append(state[1])
    assert torch.equal(torch.stack(spikes), scan.spikes)
    assert torch.equal(torch.stack(Us), scan.U)


def test_lif_step_state_and_gradient():
    op = REFERENCE
    x = _grad_input()
    state, total = None, 0.0
    xi = x.clone().requires_grad_()
    for t in range(x.shape[0]):
        s, state = lif_step(xi[t], state, op)
        total = total + s.sum()
    (g_step,) = torch.autograd.grad(total + state[1].sum(), xi)
    xj = x.clone().requires_grad_()
    res = lif_scan(xj, op, cumulative="last")
    (g_scan,) = torch.autograd.grad(res.spikes.sum() + res.U.sum(), xj)
    torch.testing.assert_close(g_step, g_scan, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- interface
def test_outputs_shapes_dtypes_and_modes():
    x = torch.randn(5, 2, 3, 4)
    for cumulative, U_shape in [("none", None), ("last", (2, 3, 4)), ("all", (5, 2, 3, 4))]:
        res = lif_scan(x, REFERENCE, cumulative=cumulative)
        assert res.spikes.shape == x.shape and res.spikes.dtype == x.dtype
        assert set(res.spikes.unique().tolist()) <= {0.0, 1.0}
        assert res.u is None
        assert (res.U is None) if U_shape is None else (res.U.shape == U_shape)
    all_ = lif_scan(x, REFERENCE, cumulative="all", record_potential=True)
    assert torch.equal(lif_scan(x, REFERENCE, cumulative="last").U, all_.U[-1])
    assert all_.u.shape == x.shape


def test_grad_and_no_grad_paths_agree_and_layout_does_not_matter():
    x = torch.randn(6, 4, 3) * 1.5
    plain = lif_scan(x, REFERENCE, cumulative="all", record_potential=True)
    tracked = lif_scan(x.clone().requires_grad_(), REFERENCE, cumulative="all",
                       record_potential=True)
    strided = lif_scan(x.transpose(1, 2).contiguous().transpose(1, 2), REFERENCE,
                       cumulative="all", record_potential=True)
    assert plain.fired is None
    for a, b, c in zip(plain[:3], tracked[:3], strided[:3]):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_invalid_arguments_are_rejected_with_a_message():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="cumulative must be one of"):
        lif_scan(x, REFERENCE, cumulative="every")
    with pytest.raises(TypeError, match="floating-point"):
        lif_scan(torch.zeros(3, 2, dtype=torch.long), REFERENCE)
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        lif_scan(torch.zeros(3), REFERENCE)
    with pytest.raises(TypeError, match="LIF record"):
        lif_scan(x, object())
    with pytest.raises(ValueError, match="cumulative must be one of"):
        lif_scan_autograd(x, REFERENCE, cumulative="every")


def test_reference_loop_sanity():
    """The test's own reference on a hand-made trajectory (paper config, decay 1)."""
    op = dataclasses.replace(PAPER, decay=1.0)
    ref = reference_lif(np.array([[0.5], [0.5], [-3.0], [0.5]]), op)
    assert ref["spikes"].flatten().tolist() == [0.0, 1.0, 0.0, 0.0]
    assert ref["u"].flatten().tolist() == [0.5, 1.0, -3.0, -0.5]
    assert ref["U"].flatten().tolist() == [0.5, 1.5, -1.5, -2.0]
