"""The closed set of IR op records.

Each op is a small frozen dataclass named after what it computes; its fields
are the physics and the hyper-parameters, never derived state (shapes, costs
and the like are written by passes into a node's ``meta``). Ops serialise
through one generic pair, :func:`op_to_dict` / :func:`op_from_dict`, keyed by
the ``type`` class variable.

Semantic defaults come from :mod:`saec.spec.defaults` (one home for the schema,
the presets and the ops). Every op checks its invariants when it is constructed
(``__post_init__``) and raises :class:`~saec.compiler.errors.InvalidOp` naming
the op and the field, so no stage ever sees a decay of -1 or a zero kernel.
Facts derived from an op's fields live on the op: the readout divisor
(:meth:`MaxCumulativeReadout.divisor`), the LIF kernel's mode flags
(:attr:`LIF.kernel_mode`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from saec.compiler.errors import InvalidOp
from saec.spec import defaults as D

Reset = Literal["zero", "subtract", "none"]
LowerBoundMode = Literal["clamp", "revive"]
SpikeWhen = Literal["ge", "gt"]
Integrate = Literal["potential", "current"]
SurrogateKind = Literal["straight_through", "spike_gated", "fast_sigmoid", "arctan"]
GradPath = Literal["pass", "cut"]
NoiseResample = Literal["per_step", "per_batch"]

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

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`InvalidOp` when a field breaks the op's invariants (subclasses add rules)."""

    def _fail(self, field: str, rule: str, value: Any) -> None:
        raise InvalidOp(f"{self.type}: {field} {rule}, got {value!r}")

    def _positive(self, *fields: str) -> None:
        """Each field, an int or a tuple of ints, is > 0."""
        for f in fields:
            value = getattr(self, f)
            if not all(isinstance(v, int) and v > 0 for v in _ints(value)):
                self._fail(f, "must be positive integers" if isinstance(value, tuple) else "must be an integer > 0",
                           value)

    def _non_negative(self, *fields: str) -> None:
        """Each field, an int or a tuple of ints, is >= 0."""
        for f in fields:
            value = getattr(self, f)
            if not all(isinstance(v, int) and v >= 0 for v in _ints(value)):
                self._fail(f, "must be integers >= 0" if isinstance(value, tuple) else "must be an integer >= 0",
                           value)

    def _pair(self, *fields: str) -> None:
        for f in fields:
            value = getattr(self, f)
            if not (isinstance(value, tuple) and len(value) == 2):
                self._fail(f, "must be a pair (h, w)", value)

    def _in_range(self, field: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
        """``lo <= value <= hi`` (``lo < value`` when ``lo_open``), finite."""
        value = getattr(self, field)
        ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > lo if lo_open else value >= lo) \
            and value <= hi
        if not ok:
            self._fail(field, f"must lie in {'(' if lo_open else '['}{lo:g}, {hi:g}]", value)

    def _above_zero(self, *fields: str) -> None:
        """Each field is a finite number > 0."""
        for f in fields:
            value = getattr(self, f)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                self._fail(f, "must be a finite number > 0", value)

    def _one_of(self, field: str, literal: Any) -> None:
        value = getattr(self, field)
        if value not in get_args(literal):
            self._fail(field, f"must be one of {', '.join(map(str, get_args(literal)))}", value)


def _ints(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)


# ---------------------------------------------------------------- graph ends
@dataclass(frozen=True)
class Input(Op):
    """Network input: one static example of ``shape`` (C, H, W), values in [0, 1]."""

    type: ClassVar[str] = "input"
    shape: tuple[int, ...] = ()

    def check(self) -> None:
        self._positive("shape")


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
    timesteps: int = D.ENCODING["timesteps"]  # T, number of discrete steps
    scale: float = D.ENCODING["scale"]  # s, dimensionless in (0, 1]; also the readout divisor
    noise: float = D.ENCODING["noise"]  # epsilon in [0, 1]
    noise_resample: NoiseResample = D.ENCODING["noise_resample"]  # when xi is drawn
    encoder_scale: float | None = D.ENCODING["encoder_scale"]  # scale the encoder really uses (None: ``scale``)

    def check(self) -> None:
        self._positive("timesteps")
        self._in_range("scale", 0.0, 1.0, lo_open=True)
        self._in_range("noise", 0.0, 1.0)
        self._one_of("noise_resample", NoiseResample)
        if self.encoder_scale is not None:
            self._in_range("encoder_scale", 0.0, 1.0, lo_open=True)

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
    init_std_factor: float = D.INIT["conv_std_factor"]  # std = factor * sqrt(2 / fan_in), paper Eq. 13

    def check(self) -> None:
        self._pair("kernel_size", "stride", "padding")
        self._positive("in_channels", "out_channels", "kernel_size", "stride")
        self._non_negative("padding")
        self._above_zero("init_std_factor")


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
    init_std_factor: float = D.INIT["conv_std_factor"]

    def check(self) -> None:
        self._pair("kernel_size", "stride", "padding", "output_padding")
        self._positive("in_channels", "out_channels", "kernel_size", "stride")
        self._non_negative("padding", "output_padding")
        self._above_zero("init_std_factor")


@dataclass(frozen=True)
class Linear(Op):
    """Fully connected layer, weight [out_features, in_features]."""

    type: ClassVar[str] = "linear"
    has_weights: ClassVar[bool] = True
    in_features: int = 1
    out_features: int = 1
    bias: bool = False
    init_std_factor: float = D.INIT["linear_std_factor"]

    def check(self) -> None:
        self._positive("in_features", "out_features")
        self._above_zero("init_std_factor")


@dataclass(frozen=True)
class Flatten(Op):
    """Flatten every axis of one example into one (batch and time excluded)."""

    type: ClassVar[str] = "flatten"


@dataclass(frozen=True)
class Unflatten(Op):
    """Reshape a flat example into ``shape``."""

    type: ClassVar[str] = "unflatten"
    shape: tuple[int, ...] = ()

    def check(self) -> None:
        if not self.shape:
            self._fail("shape", "must have at least one axis", self.shape)
        self._positive("shape")


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
    decay: float = D.NEURON["decay"]  # per-step membrane decay factor, dimensionless in [0, 1]
    threshold: float = D.NEURON["threshold"]  # firing threshold (> 0), in units of the input current
    reset: Reset = D.NEURON["reset"]  # zero: u'=0; subtract: u'=u-threshold; none: keep u
    lower_bound: float | None = D.NEURON["lower_bound"]  # floor of the membrane; None: no floor
    lower_bound_mode: LowerBoundMode = D.NEURON["lower_bound_mode"]  # clamp: set to lower_bound; revive: +threshold
    clamp_first: bool = D.NEURON["clamp_first"]  # apply the lower-bound rule before the spike test
    spike_when: SpikeWhen = D.NEURON["spike_when"]  # ge: u >= threshold (paper Eq. 3); gt: u > threshold
    integrate: Integrate = D.NEURON["integrate"]  # what the cumulative potential U sums
    surrogate: SurrogateKind = D.SURROGATE["type"]  # d phi / d u in backward
    slope: float = D.SURROGATE["slope"]  # surrogate slope (fast_sigmoid, arctan), > 0
    reset_grad: GradPath = D.SURROGATE["reset_grad"]  # pass: reset is noise (grad 1); cut: grad 0 at a spike
    clamp_grad: GradPath = D.SURROGATE["clamp_grad"]  # pass: lower-bound rule is noise; cut: grad 0 where applied
    decay_grad: bool = D.SURROGATE["decay_grad"]  # True: backward multiplies by decay; False: identity

    def check(self) -> None:
        self._in_range("decay", 0.0, 1.0)
        self._above_zero("threshold", "slope")
        if self.lower_bound is not None and not (isinstance(self.lower_bound, (int, float))
                                                 and math.isfinite(self.lower_bound)):
            self._fail("lower_bound", "must be a finite number or None", self.lower_bound)
        for field, literal in (("reset", Reset), ("lower_bound_mode", LowerBoundMode), ("spike_when", SpikeWhen),
                               ("integrate", Integrate), ("surrogate", SurrogateKind), ("reset_grad", GradPath),
                               ("clamp_grad", GradPath)):
            self._one_of(field, literal)

    @property
    def kernel_mode(self) -> "LIFKernelMode":
        """The fields decoded into the integer mode flags of the fused scan kernels (C, CUDA, torch).

        The backward flags (``reset_cut``, ``floor_cut``, ``gate_mode``) describe a scan
        that keeps what backward needs; a forward-only scan uses 0 for all three.
        """
        floor = 0 if self.lower_bound is None else (1 if self.clamp_first else 2)
        floor_cut = floor != 0 and self.clamp_grad == "cut"
        if self.surrogate == "spike_gated":
            # where the floor rule ran first and is cut, a neuron set to the floor value that then spikes
            # carries no spike gradient: "fired and not floored"
            gate_mode = 2 if floor_cut and floor == 1 else 1
        else:
            gate_mode = 3 if floor_cut and floor == 1 else 0
        return LIFKernelMode(
            spike_ge=int(self.spike_when == "ge"),
            reset=("zero", "subtract", "none").index(self.reset),
            floor=floor,
            floor_overlaps_spike=int(floor == 2 and self.lower_bound > self.threshold),
            integrate=int(self.integrate == "current"),
            reset_cut=int(self.reset == "zero" and self.reset_grad == "cut"),
            floor_cut=int(floor_cut),
            gate_mode=gate_mode,
        )

    @property
    def floor_value(self) -> float | None:
        """Value a potential below ``lower_bound`` is set to (None: no floor)."""
        if self.lower_bound is None:
            return None
        return self.threshold if self.lower_bound_mode == "revive" else self.lower_bound


@dataclass(frozen=True)
class LIFKernelMode:
    """Integer mode flags of the LIF scan kernels, decoded once from a :class:`LIF`'s fields."""

    spike_ge: int  # 1: spike at u >= threshold; 0: u > threshold
    reset: int  # 0 zero, 1 subtract, 2 none
    floor: int  # 0 no floor; 1 floor rule before the spike test (clamp_first); 2 after it
    floor_overlaps_spike: int  # 1: floor after the test and above the threshold, so both can act at once
    integrate: int  # 1: U sums the input current (published code); 0: U sums the potential (Eq. 7)
    reset_cut: int  # backward: no gradient through u at a spike
    floor_cut: int  # backward: no gradient where the floor rule acted
    # backward spike-gradient gate: 0 none; 1 where fired; 2 where fired and not floored (a runtime may
    # use 1 when the floor value cannot pass the spike test in its dtype: the masks are then equal);
    # 3 cut where the floor rule ran first (no spike gate)
    gate_mode: int


@dataclass(frozen=True)
class ReLU(Op):
    """Rectified linear activation (AE / VAE baselines)."""

    type: ClassVar[str] = "relu"


@dataclass(frozen=True)
class Reparameterize(Op):
    """VAE sampling: input [2*nz] = (mu, logvar); z = mu + exp(logvar / 2) * eps."""

    type: ClassVar[str] = "reparameterize"
    latent_features: int = 1

    def check(self) -> None:
        self._positive("latent_features")


@dataclass(frozen=True)
class LeakyIntegrator(Op):
    """Non-spiking leaky integrator (NIR ``LI``, read from NIR files); its output is v.

    v(t) = decay * v(t-1) + gain * I(t),  v(0) = 0.
    From NIR's tau dv/dt = (v_leak - v) + r I with v_leak = 0 and step dt:
    decay = 1 - dt/tau, gain = dt * r / tau.
    """

    type: ClassVar[str] = "leaky_integrator"
    decay: float = D.NEURON["decay"]  # per-step membrane decay factor, dimensionless in [0, 1]
    gain: float = 1.0  # per-step input gain, v units per unit of input current (finite)

    def check(self) -> None:
        self._in_range("decay", 0.0, 1.0)
        if not (isinstance(self.gain, (int, float)) and math.isfinite(self.gain)):
            self._fail("gain", "must be a finite number", self.gain)


# ---------------------------------------------------------------- pooling
@dataclass(frozen=True)
class SumPool2d(Op):
    """2-D sum pooling (NIR ``SumPool2d``): each output is the sum of its window, zero padding."""

    type: ClassVar[str] = "sum_pool2d"
    kernel_size: tuple[int, int] = (2, 2)  # window, pixels (h, w)
    stride: tuple[int, int] = (2, 2)  # pixels (h, w)
    padding: tuple[int, int] = (0, 0)  # zeros added on each side, pixels (h, w)

    def check(self) -> None:
        self._pair("kernel_size", "stride", "padding")
        self._positive("kernel_size", "stride")
        self._non_negative("padding")


# ---------------------------------------------------------------- readout
@dataclass(frozen=True)
class MaxCumulativeReadout(Op):
    """x_hat = max_{t in [t_min, T]} U_out(t) / divisor (paper Eq. 8).

    divisor = scale (paper) or timesteps * scale (``divide_by_timesteps``).
    With t_min = 0 the initial U(0) = 0 takes part, so x_hat >= 0.
    """

    type: ClassVar[str] = "max_cumulative_readout"
    scale: float = D.READOUT["scale"]  # s, dimensionless, > 0
    t_min: int = D.READOUT["t_min"]  # first step in the max, >= 0
    divide_by_timesteps: bool = D.READOUT["divide_by_timesteps"]

    def check(self) -> None:
        self._above_zero("scale")
        self._non_negative("t_min")

    def divisor(self, timesteps: int) -> float:
        """What max_t U(t) is divided by over ``timesteps`` steps: T * scale, or scale (paper Eq. 8)."""
        return timesteps * self.scale if self.divide_by_timesteps else self.scale

    @property
    def divisor_formula(self) -> str:
        """The divisor as a formula, ``T*s`` or ``s``."""
        return "T*s" if self.divide_by_timesteps else "s"


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
