"""One source per default: the schema, the ops and the ``saec`` preset agree field by field."""

from __future__ import annotations

import dataclasses

import pytest

from saec.compiler import ops
from saec.compiler.builder import build_ir
from saec.spec import defaults, presets, schema
from saec.spec.loader import load_spec

#: Spec section -> the schema model holding its fields.
MODELS = {
    "encoding": schema.PoissonEncodingSpec,
    "neuron": schema.LIFSpec,
    "surrogate": schema.SurrogateSpec,
    "readout": schema.ReadoutSpec,
    "init": schema.InitSpec,
    "regularizers": schema.RegularizerSpec,
}

#: Spec path -> the (op class, op field) pairs carrying it; [] for a default compiled into graph attrs.
OP_FIELDS = {
    **{f"encoding.{f}": [(ops.PoissonEncode, f)] for f in defaults.ENCODING},
    **{f"neuron.{f}": [(ops.LIF, f)] for f in defaults.NEURON},
    "surrogate.type": [(ops.LIF, "surrogate")],
    **{f"surrogate.{f}": [(ops.LIF, f)] for f in defaults.SURROGATE if f != "type"},
    **{f"readout.{f}": [(ops.MaxCumulativeReadout, f)] for f in defaults.READOUT},
    "init.linear_std_factor": [(ops.Linear, "init_std_factor")],
    "init.conv_std_factor": [(ops.Conv2d, "init_std_factor"), (ops.ConvTranspose2d, "init_std_factor")],
    "regularizers.potential_per_timestep": [],  # graph.attrs["losses"], no op field
}

ALL_PATHS = [f"{section}.{field}" for section, values in defaults.SECTIONS.items() for field in values]


def _op_default(op_type: type[ops.Op], field: str):
    return next(f.default for f in dataclasses.fields(op_type) if f.name == field)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_schema_default_is_the_default(path):
    section, field = path.split(".")
    assert MODELS[section].model_fields[field].default == defaults.default(path)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_op_default_is_the_default(path):
    assert path in OP_FIELDS, f"{path}: say which op field carries it (or [] for none)"
    for op_type, field in OP_FIELDS[path]:
        assert _op_default(op_type, field) == defaults.default(path), f"{op_type.__name__}.{field}"


def test_saec_preset_is_the_defaults_and_keeps_its_values():
    saec = presets.PRESETS["saec"]
    assert all(saec[path] == defaults.default(path) for path in saec)
    # the saec preset as it was written before the defaults had one home: the published code without its
    # revive floor (behaviour kept exactly)
    assert saec == {**presets._PUBLISHED_CODE, "neuron.lower_bound": None, "neuron.lower_bound_mode": "clamp"}
    assert saec["encoding.noise_resample"] == "per_batch" == presets.PRESETS["reference"]["encoding.noise_resample"]
    assert presets.PRESETS["paper"]["encoding.noise_resample"] == "per_step"


def test_noise_resample_agrees_everywhere():
    # the schema said per_batch, the op per_step; REFERENCE.md and the saec/reference presets say per_batch
    assert (schema.PoissonEncodingSpec().noise_resample == ops.PoissonEncode().noise_resample
            == presets.PRESETS["saec"]["encoding.noise_resample"] == "per_batch")


SPEC = """
name: tiny
kind: sae
latent: code
input: {shape: [1, 4, 4]}
layers:
  - {name: flat, type: flatten}
  - {name: code, type: linear, out_features: 3}
  - {name: back, type: linear, out_features: 16}
  - {name: img, type: unflatten, shape: [1, 4, 4], }
  - {name: out, type: conv_transpose2d, out_channels: 1, kernel_size: 1}
"""


@pytest.mark.parametrize("preset", [None, "saec"])
def test_a_spec_with_every_default_compiles_to_default_ops(tmp_path, preset):
    text = SPEC + (f"preset: {preset}\n" if preset else "")
    graph = build_ir(load_spec(str(tmp_path / "tiny.yaml"), text=text).spec)
    assert graph.op("_encode") == ops.PoissonEncode()
    assert graph.op("_readout") == ops.MaxCumulativeReadout()
    assert graph.op("code.lif") == ops.LIF()
    assert graph.op("code").init_std_factor == ops.Linear().init_std_factor
    assert graph.op("out").init_std_factor == ops.ConvTranspose2d().init_std_factor
    assert graph.attrs["losses"]["potential_per_timestep"] is defaults.REGULARIZERS["potential_per_timestep"]
