"""The closed set of IR op records.

Each op is a small frozen dataclass named after what it computes; its fields
are the physics and the hyper-parameters, never derived state (shapes, costs
and the like are written by passes into a node's ``meta``). Ops serialise
through one generic pair, :func:`op_to_dict` / :func:`op_from_dict`, keyed by
the ``type`` class variable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Reset = Literal["zero", "subtract", "none"]
LowerBoundMode = Literal["clamp", "revive"]
SpikeWhen = Literal["ge", "gt"]
Integrate = Literal["potential", "current"]
SurrogateKind = Literal["straight_through", "spike_gated", "fast_sigmoid", "arctan"]
GradPath = Literal["pass", "cut"]

OP_TYPES: dict[str, type["Op"]] = {}


@dataclass(frozen=True)
class Op:
    """Base of every IR op; subclasses set ``type`` and register themselves."""

    type: ClassVar[str] = "op"
    #: True when the op holds trainable parameters (``weight`` / ``bias``).
    has_weights: ClassVar[bool] = False
    #: True for neuron ops that turn currents into spikes.
    spiking: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        OP_TYPES[cls.type] = cls


# ---------------------------------------------------------------- graph ends
@dataclass(frozen=True)
class Input(Op):
    """Network input: one static example of ``shape`` (C, H, W), values in [0, 1]."""

    type: ClassVar[str] = "input"
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class Output(Op):
    """Network output (the reconstruction x_hat), same shape as its producer."""

    type: ClassVar[str] = "output"


# ---------------------------------------------------------------- encoding
@dataclass(frozen=True)
class PoissonEncode(Op):
    """Rate (Bernoulli) encoding, paper Eq. 5-6.

    x' = (1 - noise) * x + noise * xi,  xi ~ U(0, 1);
    spike(t) = 1 if encoder_scale * x' > r(t),  r(t) ~ U(0, 1) per pixel per step.
    """

    type: ClassVar[str] = "poisson_encode"
    timesteps: int = 100  # T, number of discrete steps
    scale: float = 0.2  # s, dimensionless; also the readout divisor
    noise: float = 0.0  # epsilon in [0, 1]
    noise_resample: Literal["per_step", "per_batch"] = "per_step"  # when xi is drawn
    encoder_scale: float | None = None  # scale the encoder really uses (None: ``scale``)

    @property
    def effective_scale(self) -> float:
        return self.scale if self.encoder_scale is None else self.encoder_scale


# ---------------------------------------------------------------- synapses
@dataclass(frozen=True)
class Conv2d(Op):
    """2-D convolution, weight [out, in, k, k] (no bias unless ``bias``)."""

    type: ClassVar[str] = "conv2d"
    has_weights: ClassVar[bool] = True
    in_channels: int = 1
    out_channels: int = 1
    kernel_size: tuple[int, int] = (5, 5)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    bias: bool = False
    init_std_factor: float = 1.0  # std = factor * sqrt(2 / fan_in), paper Eq. 13


@dataclass(frozen=True)
class ConvTranspose2d(Op):
    """2-D transposed convolution, weight [in, out, k, k] (torch layout)."""

    type: ClassVar[str] = "conv_transpose2d"
    has_weights: ClassVar[bool] = True
    in_channels: int = 1
    out_channels: int = 1
    kernel_size: tuple[int, int] = (5, 5)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    bias: bool = False
    init_std_factor: float = 1.0


@dataclass(frozen=True)
class Linear(Op):
    """Fully connected layer, weight [out_features, in_features]."""

    type: ClassVar[str] = "linear"
    has_weights: ClassVar[bool] = True
    in_features: int = 1
    out_features: int = 1
    bias: bool = False
    init_std_factor: float = 1.0


@dataclass(frozen=True)
class Flatten(Op):
    """Flatten every axis of one example into one (batch and time excluded)."""

    type: ClassVar[str] = "flatten"


@dataclass(frozen=True)
class Unflatten(Op):
    """Reshape a flat example into ``shape``."""

    type: ClassVar[str] = "unflatten"
    shape: tuple[int, ...] = ()


# ---------------------------------------------------------------- neurons
@dataclass(frozen=True)
class LIF(Op):
    """Discrete leaky integrate-and-fire neuron (paper Eq. 2-4, 7).

    u(t)  = decay * u'(t-1) + I(t)
    phi(t)= [u(t) >= threshold]  (``spike_when="gt"``: strict >)
    u'(t) = reset if spiked; lower-bound rule if u(t) < lower_bound; else u(t)
    U(t)  = decay * U(t-1) + u(t)        (``integrate="potential"``, Eq. 7)
    U(t)  = decay * (U(t-1) + I(t))      (``integrate="current"``, published code)

    Backward fields describe the straight-through gradient; see docs/semantics.md.
    """

    type: ClassVar[str] = "lif"
    spiking: ClassVar[bool] = True
    decay: float = 0.99  # per-step membrane decay factor, dimensionless in [0, 1]
    threshold: float = 1.0  # firing threshold, in units of the input current
    reset: Reset = "zero"  # zero: u'=0; subtract: u'=u-threshold; none: keep u
    lower_bound: float | None = None  # floor of the membrane; None: no floor
    lower_bound_mode: LowerBoundMode = "clamp"  # clamp: set to lower_bound; revive: set to +threshold
    clamp_first: bool = True  # apply the lower-bound rule before the spike test
    spike_when: SpikeWhen = "gt"  # ge: u >= threshold (paper Eq. 3); gt: u > threshold
    integrate: Integrate = "current"  # what the cumulative potential U sums
    surrogate: SurrogateKind = "spike_gated"  # d phi / d u in backward
    slope: float = 1.0  # surrogate slope (fast_sigmoid, arctan)
    reset_grad: GradPath = "cut"  # pass: reset is noise (grad 1); cut: grad 0 at a spike
    clamp_grad: GradPath = "cut"  # pass: lower-bound rule is noise; cut: grad 0 where applied
    decay_grad: bool = False  # True: backward multiplies by decay; False: identity

    @property
    def floor_value(self) -> float | None:
        """Value a potential below ``lower_bound`` is set to (None: no floor)."""
        if self.lower_bound is None:
            return None
        return self.threshold if self.lower_bound_mode == "revive" else self.lower_bound


@dataclass(frozen=True)
class ReLU(Op):
    """Rectified linear activation (AE / VAE baselines)."""

    type: ClassVar[str] = "relu"


@dataclass(frozen=True)
class Reparameterize(Op):
    """VAE sampling: input [2*nz] = (mu, logvar); z = mu + exp(logvar / 2) * eps."""

    type: ClassVar[str] = "reparameterize"
    latent_features: int = 1


@dataclass(frozen=True)
class LeakyIntegrator(Op):
    """Non-spiking leaky integrator (NIR ``LI``, read from NIR files); its output is v.

    v(t) = decay * v(t-1) + gain * I(t),  v(0) = 0.
    From NIR's tau dv/dt = (v_leak - v) + r I with v_leak = 0 and step dt:
    decay = 1 - dt/tau, gain = dt * r / tau.
    """

    type: ClassVar[str] = "leaky_integrator"
    decay: float = 0.99  # per-step membrane decay factor, dimensionless in [0, 1]
    gain: float = 1.0  # per-step input gain, v units per unit of input current


# ---------------------------------------------------------------- pooling
@dataclass(frozen=True)
class SumPool2d(Op):
    """2-D sum pooling (NIR ``SumPool2d``): each output is the sum of its window, zero padding."""

    type: ClassVar[str] = "sum_pool2d"
    kernel_size: tuple[int, int] = (2, 2)  # window, pixels (h, w)
    stride: tuple[int, int] = (2, 2)  # pixels (h, w)
    padding: tuple[int, int] = (0, 0)  # zeros added on each side, pixels (h, w)


# ---------------------------------------------------------------- readout
@dataclass(frozen=True)
class MaxCumulativeReadout(Op):
    """x_hat = max_{t in [t_min, T]} U_out(t) / divisor (paper Eq. 8).

    divisor = scale (paper) or timesteps * scale (``divide_by_timesteps``).
    With t_min = 0 the initial U(0) = 0 takes part, so x_hat >= 0.
    """

    type: ClassVar[str] = "max_cumulative_readout"
    scale: float = 0.2
    t_min: int = 1
    divide_by_timesteps: bool = True


def op_to_dict(op: Op) -> dict[str, Any]:
    """Serialise an op to plain JSON types, ``type`` first."""
    out: dict[str, Any] = {"type": op.type}
    for f in dataclasses.fields(op):
        value = getattr(op, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def op_from_dict(data: dict[str, Any]) -> Op:
    """Inverse of :func:`op_to_dict`; unknown types raise ``KeyError``."""
    data = dict(data)
    cls = OP_TYPES[data.pop("type")]
    kwargs = {
        k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
    }
    return cls(**kwargs)
