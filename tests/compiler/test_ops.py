"""Op records: invariants checked at construction, facts derived on the op (readout divisor, kernel mode)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from saec.compiler import ops
from saec.compiler.errors import CompileError, InvalidOp

# (op type, the bad field values, field named in the message, rule in the message)
BAD = [
    (ops.Input, {"shape": (1, 0, 4)}, "shape", "positive integers"),
    (ops.PoissonEncode, {"timesteps": 0}, "timesteps", "integer > 0"),
    (ops.PoissonEncode, {"scale": 0.0}, "scale", r"must lie in \(0, 1\]"),
    (ops.PoissonEncode, {"scale": 1.5}, "scale", r"must lie in \(0, 1\]"),
    (ops.PoissonEncode, {"noise": -0.1}, "noise", r"must lie in \[0, 1\]"),
    (ops.PoissonEncode, {"noise_resample": "per_epoch"}, "noise_resample", "must be one of per_step, per_batch"),
    (ops.PoissonEncode, {"encoder_scale": 0.0}, "encoder_scale", r"must lie in \(0, 1\]"),
    (ops.Conv2d, {"in_channels": 0}, "in_channels", "integer > 0"),
    (ops.Conv2d, {"out_channels": -2}, "out_channels", "integer > 0"),
    (ops.Conv2d, {"kernel_size": (0, 3)}, "kernel_size", "positive integers"),
    (ops.Conv2d, {"kernel_size": (3,)}, "kernel_size", r"must be a pair"),
    (ops.Conv2d, {"stride": (1, 0)}, "stride", "positive integers"),
    (ops.Conv2d, {"padding": (-1, 0)}, "padding", "integers >= 0"),
    (ops.Conv2d, {"init_std_factor": 0.0}, "init_std_factor", "finite number > 0"),
    (ops.ConvTranspose2d, {"output_padding": (0, -1)}, "output_padding", "integers >= 0"),
    (ops.ConvTranspose2d, {"stride": (0, 0)}, "stride", "positive integers"),
    (ops.Linear, {"in_features": 0}, "in_features", "integer > 0"),
    (ops.Linear, {"out_features": 0}, "out_features", "integer > 0"),
    (ops.Linear, {"init_std_factor": math.inf}, "init_std_factor", "finite number > 0"),
    (ops.Unflatten, {"shape": ()}, "shape", "(must have )?at least one axis"),
    (ops.Unflatten, {"shape": (2, 0)}, "shape", "positive integers"),
    (ops.LIF, {"decay": -0.5}, "decay", r"must lie in \[0, 1\]"),
    (ops.LIF, {"decay": 1.01}, "decay", r"must lie in \[0, 1\]"),
    (ops.LIF, {"decay": math.nan}, "decay", r"must lie in \[0, 1\]"),
    (ops.LIF, {"threshold": 0.0}, "threshold", "finite number > 0"),
    (ops.LIF, {"threshold": math.inf}, "threshold", "finite number > 0"),
    (ops.LIF, {"slope": -1.0}, "slope", "finite number > 0"),
    (ops.LIF, {"lower_bound": math.nan}, "lower_bound", "finite number or None"),
    (ops.LIF, {"reset": "half"}, "reset", "must be one of zero, subtract, none"),
    (ops.LIF, {"spike_when": ">"}, "spike_when", "must be one of ge, gt"),
    (ops.LIF, {"surrogate": "sigmoid"}, "surrogate", "must be one of"),
    (ops.LeakyIntegrator, {"decay": -1.0}, "decay", r"must lie in \[0, 1\]"),
    (ops.LeakyIntegrator, {"gain": math.nan}, "gain", "finite number"),
    (ops.Reparameterize, {"latent_features": 0}, "latent_features", "integer > 0"),
    (ops.SumPool2d, {"kernel_size": (0, 2)}, "kernel_size", "positive integers"),
    (ops.SumPool2d, {"stride": (2, -2)}, "stride", "positive integers"),
    (ops.SumPool2d, {"padding": (-1, -1)}, "padding", "integers >= 0"),
    (ops.MaxCumulativeReadout, {"scale": 0.0}, "scale", "finite number > 0"),
    (ops.MaxCumulativeReadout, {"t_min": -1}, "t_min", "integer >= 0"),
]


@pytest.mark.parametrize("op_type, values, field, rule", BAD, ids=[f"{b[0].type}-{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_an_op_refuses_values_that_break_its_invariants(op_type, values, field, rule):
    with pytest.raises(InvalidOp, match=rf"^{op_type.type}: {field} (must be )?(an? )?{rule}.*, got ") as info:
        op_type(**values)
    assert isinstance(info.value, CompileError) and isinstance(info.value, ValueError)


def test_replace_and_json_are_checked_too():
    with pytest.raises(InvalidOp, match="lif: decay"):
        dataclasses.replace(ops.LIF(), decay=-0.1)
    with pytest.raises(InvalidOp, match="linear: in_features"):
        ops.op_from_dict({"type": "linear", "in_features": 0, "out_features": 2})


def test_every_op_type_constructs_with_its_defaults():
    for op_type in ops.OP_TYPES.values():
        if op_type is ops.Unflatten:
            op_type(shape=(1, 2, 2))
        else:
            op_type()


def test_edge_values_are_accepted():
    ops.LIF(decay=0.0), ops.LIF(decay=1.0), ops.LIF(lower_bound=2.0)  # floor above the threshold is a rule
    ops.PoissonEncode(scale=1.0, noise=1.0), ops.Conv2d(padding=(0, 0)), ops.MaxCumulativeReadout(t_min=0)


# ---------------------------------------------------------------- the readout divisor
def test_readout_divisor():
    assert ops.MaxCumulativeReadout(scale=0.25, divide_by_timesteps=True).divisor(8) == 2.0
    assert ops.MaxCumulativeReadout(scale=0.25, divide_by_timesteps=False).divisor(8) == 0.25
    assert ops.MaxCumulativeReadout(divide_by_timesteps=True).divisor_formula == "T*s"
    assert ops.MaxCumulativeReadout(divide_by_timesteps=False).divisor_formula == "s"


# ---------------------------------------------------------------- the kernel mode
LIF_FIELDS = {
    "spike_when": ["ge", "gt"], "reset": ["zero", "subtract", "none"], "lower_bound": [None, -1.0, 1.5],
    "lower_bound_mode": ["clamp", "revive"], "clamp_first": [True, False], "integrate": ["potential", "current"],
    "surrogate": ["straight_through", "spike_gated"], "reset_grad": ["pass", "cut"], "clamp_grad": ["pass", "cut"],
}


def _runtime_params(op: ops.LIF, for_backward: bool, dtype: torch.dtype) -> dict:
    """The kernel parameter record the runtime builds for ``op`` (its own decoding)."""
    from saec.runtime.lif.dispatch import kernel_params as _kernel_params

    fake_kernel = SimpleNamespace(LIFParams=lambda **kw: kw)
    return _kernel_params(fake_kernel, op, 4, 8, "all", for_backward, dtype)


@pytest.mark.parametrize("for_backward", [False, True])
def test_kernel_mode_is_the_runtime_decoding(for_backward):
    """``LIF.kernel_mode`` gives, for every combination of the fields, the flags the scan kernels get."""
    names = list(LIF_FIELDS)
    checked = 0
    for values in itertools.product(*LIF_FIELDS.values()):
        op = ops.LIF(**dict(zip(names, values)))
        mode = op.kernel_mode
        want = _runtime_params(op, for_backward, torch.float32)
        for flag in ("spike_ge", "reset", "floor", "floor_overlaps_spike", "integrate"):
            assert getattr(mode, flag) == want[flag], (op, flag)
        for flag in ("reset_cut", "floor_cut"):
            assert (getattr(mode, flag) if for_backward else 0) == want[flag], (op, flag)
        gate = mode.gate_mode if for_backward else 0
        if gate == 2 and want["gate_mode"] == 1:
            # the floor value cannot pass the spike test: "fired and not floored" is "fired"
            fires = op.floor_value >= op.threshold if op.spike_when == "ge" else op.floor_value > op.threshold
            assert not fires, op
        else:
            assert gate == want["gate_mode"], op
        checked += 1
    assert checked == math.prod(len(v) for v in LIF_FIELDS.values())


def _decoding_before_it_moved(op: ops.LIF, for_backward: bool, floor_fires) -> dict:
    """The runtime's own decoding of the LIF fields as it stood before ``LIF.kernel_mode`` took it over
    (saec/runtime/lif.py ``_kernel_params`` at commit 6a15be2), kept verbatim as an independent oracle."""
    floor = 0 if op.lower_bound is None else (1 if op.clamp_first else 2)
    reset_cut = for_backward and op.reset == "zero" and op.reset_grad == "cut"
    floor_cut = for_backward and floor != 0 and op.clamp_grad == "cut"
    gate_mode = 0
    if for_backward and op.surrogate == "spike_gated":
        gate_mode = 1
        if floor_cut and floor == 1:
            gate_mode = 2 if floor_fires(op) else 1
    elif floor_cut and floor == 1:
        gate_mode = 3
    return dict(spike_ge=int(op.spike_when == "ge"), reset=("zero", "subtract", "none").index(op.reset),
                floor=floor, floor_overlaps_spike=int(floor == 2 and op.lower_bound > op.threshold),
                integrate=int(op.integrate == "current"), reset_cut=int(reset_cut), floor_cut=int(floor_cut),
                gate_mode=gate_mode)


@pytest.mark.parametrize("for_backward", [False, True])
def test_kernel_mode_equals_the_decoding_it_replaced(for_backward):
    """Every combination of the fields gives the flags the kernels got before the decoding moved onto the op.

    The op cannot know the tensors' dtype, so where the floor value may pass the spike test its gate is 2
    ("fired and not floored"); the old decoding is asked as if the floor value fires, which is the case
    in which the two must agree exactly.
    """
    names = list(LIF_FIELDS)
    for values in itertools.product(*LIF_FIELDS.values()):
        op = ops.LIF(**dict(zip(names, values)))
        mode = dataclasses.asdict(op.kernel_mode)
        if not for_backward:
            mode.update(reset_cut=0, floor_cut=0, gate_mode=0)
        assert mode == _decoding_before_it_moved(op, for_backward, floor_fires=lambda o: True), op
