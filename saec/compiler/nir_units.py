"""Units at the NIR boundary: saec's discrete per-step neuron parameters <-> NIR's continuous-time ones.

The one home of these conversions; the NIR exporter (:mod:`saec.exporters.nir`)
and importer (:mod:`saec.importers.nir`) both call them. Torch-free, nir-free.

NIR neurons are continuous-time, ``tau dv/dt = (v_leak - v) + r I`` (LIF, LI)
or ``dv/dt = r I`` (IF), with ``v_leak = 0`` here. One saec step is one
forward-Euler step of ``dt`` seconds (:data:`DT` unless a graph says
otherwise), so a step adds ``(dt / tau) (r I - v)``:

    decay = 1 - dt / tau          [dimensionless]   (tau = dt / (1 - decay))
    gain  = dt * r / tau          [v per unit of current]
    saec's LIF integrates u(t) = decay u(t-1) + I(t), i.e. gain 1, so r = 1 / (1 - decay)
    and v = u; a foreign graph with another gain has v = gain * u, so the threshold
    on u is v_threshold / gain.

The expressions are written exactly as the tested exports and imports
compute them (same operations, same order), so the floats do not change.
"""

from __future__ import annotations

#: Seconds of NIR time per saec time step: the value snnTorch's importer fixes (give Norse ``dt=DT``).
DT = 1e-4


# ---------------------------------------------------------------- saec -> NIR
def lif_tau_r(decay: float, dt: float = DT) -> tuple[float, float]:
    """NIR LIF (tau [s], r) of a saec LIF with ``decay`` < 1 (gain 1: v = u).

    Raises:
        ValueError: ``decay`` is 1 (no leak: the neuron is NIR's IF, see :func:`if_r`).
    """
    leak = 1.0 - decay
    if leak == 0.0:
        raise ValueError("decay 1 has no leak: the neuron is an IF, not a LIF")
    return dt / leak, 1.0 / leak


def if_r(dt: float = DT) -> float:
    """NIR IF r of a saec LIF with decay 1: ``dv/dt = r I`` with one Euler step adding I."""
    return 1.0 / dt


def li_tau_r(decay: float, gain: float, dt: float = DT) -> tuple[float, float]:
    """NIR LI (tau [s], r) of a saec leaky integrator (``decay`` < 1, ``gain``).

    Raises:
        ValueError: ``decay`` is 1 (no NIR LI has an infinite time constant).
    """
    leak = 1.0 - decay
    if leak == 0.0:
        raise ValueError("decay 1 has no NIR LI equivalent (tau would be infinite)")
    return dt / leak, gain / leak


# ---------------------------------------------------------------- NIR -> saec
def decay_from_tau(tau: float, dt: float) -> float:
    """Per-step decay of a NIR neuron with time constant ``tau`` [s] stepped by ``dt`` [s].

    Below 0 when tau < dt (forward Euler overshoots); the op's invariant refuses that.
    """
    return 1.0 - dt / tau


def gain_from_tau(tau: float, r: float, dt: float) -> float:
    """Per-step input gain ``dt * r / tau`` of a NIR LIF or LI (v units per unit of current)."""
    return dt * r / tau


def if_gain(r: float, dt: float) -> float:
    """Per-step input gain ``dt * r`` of a NIR IF."""
    return dt * r


def threshold_from_v(v_threshold: float, gain: float) -> float:
    """saec's threshold on u of a NIR neuron whose v = ``gain`` * u."""
    return v_threshold / gain
