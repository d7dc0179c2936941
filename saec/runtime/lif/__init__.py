"""Leaky integrate-and-fire kernels: pure functions over an immutable ``LIF`` record.

One time step (docs/semantics.md, "One time step"; u'(0) = 0, U(0) = 0)::

    u(t)   = decay * u'(t-1) + I(t)
    v(t)   = floor rule applied to u(t)   if clamp_first else u(t)
    phi(t) = [v(t) >= threshold]          (spike_when="gt": strict >)
    u'(t)  = reset(v(t))                  if phi(t)
             floor_value                  if u(t) < lower_bound (and the floor rule is still due)
             v(t)                         otherwise
    U(t)   = decay * U(t-1) + u(t)        (integrate="potential"; u before the floor rule and reset)
    U(t)   = decay * (U(t-1) + I(t))      (integrate="current")

The floor rule sets a potential below ``lower_bound`` to ``op.floor_value``
(``lower_bound`` itself for mode ``clamp``, ``+threshold`` for ``revive``).
With ``clamp_first=False`` it applies only where the neuron did not spike.

Three entry points, in three modules:

- :func:`lif_scan` (:mod:`.scan`): all T steps of one layer at once (layer-wise
  multi-step execution), with a hand-written backward; the fast path. It runs as
  one fused kernel per layer where one applies (C on the CPU, built on first use;
  Triton on CUDA; :mod:`saec.runtime.kernels`), else as torch ops; the caller's
  ``backend`` argument and :mod:`.dispatch` choose (the kernels' mode flags come
  from the op, :attr:`saec.compiler.ops.LIF.kernel_mode`).
- :func:`lif_scan_autograd` (:mod:`.reference`): the same maths as a plain loop of
  torch ops whose straight-through rules are written with ``detach`` / ``where``
  tricks, so that autograd derives the gradient; slow, the oracle the fast
  backward is tested against.
- :func:`lif_step` (:mod:`.reference`): one step (the step-by-step reference
  execution); it is the per-step body of :func:`lif_scan_autograd`,
  differentiable the same way.

Backward (membrane-potential backpropagation with a straight-through
estimate). Per step the gradient rules are::

    d phi / d v   = surrogate(v)            (see :func:`_surrogate_grad`)
    d v / d u     = 1, or 0 where the floor rule applied and clamp_grad="cut"
                    (only with clamp_first; otherwise v is u)
    d u' / d u    = 0 at a spike if reset="zero" and reset_grad="cut";
                    0 where the floor rule applied and clamp_grad="cut"; else 1
                    (the spike inside a subtract reset is a constant)
    d u(t) / d u'(t-1) = d U(t) / d U(t-1) = decay if decay_grad else 1
    d U(t) / d u(t) = 1 (potential);  d U(t) / d I(t) = decay if decay_grad else 1 (current)

The recorded potential ``u`` (``record_potential=True``) is differentiable in
both implementations: its gradient enters as d L / d u(t) directly.
"""

from saec.runtime.lif.dispatch import SCAN_BACKENDS, ScanBackend, kernel_for
from saec.runtime.lif.reference import lif_scan_autograd, lif_step
from saec.runtime.lif.result import Cumulative, LIFResult
from saec.runtime.lif.scan import lif_scan

__all__ = ["SCAN_BACKENDS", "Cumulative", "LIFResult", "ScanBackend", "kernel_for", "lif_scan", "lif_scan_autograd",
           "lif_step"]
