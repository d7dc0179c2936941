"""Semantic defaults: the one home of every default value the network's behaviour depends on.

The schema (:mod:`saec.spec.schema`) takes its field defaults from here, the
IR op records (:mod:`saec.compiler.ops`) take their dataclass defaults from
here, and the ``saec`` preset (:mod:`saec.spec.presets`) is these values on
the fields where the presets differ. ``tests/spec/test_defaults.py`` checks
that the three agree field by field.

The values are saec's deployable default: the published code's behaviour
without its ``revive`` floor and its encoder-scale bug (``docs/semantics.md``).
This module imports nothing from saec: the language and the compiler both
read it (the compiler may import the spec package; the spec never imports
the compiler).
"""

from __future__ import annotations

from typing import Any

#: Poisson encoding (paper Eq. 5-6), keyed by ``encoding.<field>``.
ENCODING: dict[str, Any] = {
    "timesteps": 100,  # T, steps per example
    "scale": 0.2,  # s, spike probability per step of a white pixel; also the readout divisor
    "noise": 0.0,  # epsilon, weight of uniform noise, 0..1
    # When xi is drawn: once per batch and held over the T steps (published code, REFERENCE.md), which
    # the saec and reference presets keep; the paper preset draws it per step.
    "noise_resample": "per_batch",
    "encoder_scale": None,  # the scale the encoder really uses; None: `scale`
}

#: The LIF neuron (paper Eq. 2-4, 7), keyed by ``neuron.<field>``.
NEURON: dict[str, Any] = {
    "decay": 0.99,  # per-step membrane decay factor, 0..1
    "threshold": 1.0,  # firing threshold, units of the input current
    "reset": "zero",
    "lower_bound": None,  # no membrane floor: NIR and the chips run the network exactly
    "lower_bound_mode": "clamp",
    "clamp_first": True,
    "spike_when": "gt",
    "integrate": "current",
}

#: The straight-through backward rules, keyed by ``surrogate.<field>``.
SURROGATE: dict[str, Any] = {
    "type": "spike_gated",
    "slope": 1.0,
    "reset_grad": "cut",
    "clamp_grad": "cut",
    "decay_grad": False,
}

#: The max-cumulative-potential readout (paper Eq. 8), keyed by ``readout.<field>``.
READOUT: dict[str, Any] = {
    "scale": 0.2,  # s, the readout divisor
    "t_min": 1,  # first step taking part in the max
    "divide_by_timesteps": True,  # divide by T*s instead of s
}

#: Weight initialisation (paper Eq. 13: std = factor * sqrt(2 / fan_in)), keyed by ``init.<field>``.
INIT: dict[str, Any] = {
    "linear_std_factor": 2.0,  # published code (Eq. 13 is 1)
    "conv_std_factor": 1.0,
}

#: Loss terms, keyed by ``regularizers.<field>`` (only the semantic switches).
REGULARIZERS: dict[str, Any] = {
    "potential_per_timestep": True,  # P1/P2 use U(T)/T (published code)
}

#: Every section above by its name in the spec.
SECTIONS: dict[str, dict[str, Any]] = {
    "encoding": ENCODING,
    "neuron": NEURON,
    "surrogate": SURROGATE,
    "readout": READOUT,
    "init": INIT,
    "regularizers": REGULARIZERS,
}


def default(path: str) -> Any:
    """The default of the dotted spec path ``section.field`` (``KeyError`` when it has none here)."""
    section, _, field = path.partition(".")
    return SECTIONS[section][field]
