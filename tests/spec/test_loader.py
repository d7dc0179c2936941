"""Loading, presets and --set overrides."""

from __future__ import annotations

import pytest
import yaml

from saec.spec.loader import apply_overrides, load_spec, resolved_yaml
from saec.spec.presets import PRESETS
from saec.spec.schema import Spec
from tests.conftest import SPECS

ISSUE_SPEC = """\
name: sae_dense
kind: sae
latent: latent
input: {shape: [1, 28, 28]}
encoding: {type: poisson, timesteps: 100, scale: 0.2, noise: 0.0}
neuron: {type: lif, decay: 0.99, threshold: 1.0, reset: zero, lower_bound: -1.0}
layers:
  - {name: conv1, type: conv2d, out_channels: 16, kernel_size: 5}
  - {name: conv2, type: conv2d, out_channels: 32, kernel_size: 5}
  - {name: flat, type: flatten}
  - {name: latent, type: linear, out_features: 100}
  - {name: fc_dec, type: linear, out_features: 12800}
  - {name: unflat, type: unflatten, shape: [32, 20, 20]}
  - {name: deconv1, type: conv_transpose2d, out_channels: 16, kernel_size: 5}
  - {name: output, type: conv_transpose2d, out_channels: 1, kernel_size: 5}
readout: {type: max_cumulative_potential, scale: 0.2}
regularizers:
  p2: {weight: 0.01}
  a1: {weight: 0.01, layers: [latent]}
training: {epochs: 10, batch_size: 64, lr: 0.0005, optimizer: adam, seed: 0}
data: {dataset: mnist}
"""


def test_issue_spec_compiles_unchanged(tmp_path):
    path = tmp_path / "sae_dense.yaml"
    path.write_text(ISSUE_SPEC)
    spec = load_spec(path).spec
    assert spec.name == "sae_dense" and spec.kind == "sae"
    assert spec.layer("latent").out_features == 100
    assert spec.regularizers.a1.layers == ["latent"]
    assert spec.training.lr == 0.0005


def test_set_addresses_layers_by_name_and_parses_yaml_scalars():
    spec = load_spec(SPECS / "sae_dense.yaml", [
        "layers.latent.out_features=10", "training.lr=1e-3", "neuron.lower_bound=null",
        "regularizers.p1.weight=0.5", "layers.3.bias=true",
    ]).spec
    assert spec.layer("latent").out_features == 10
    assert spec.training.lr == 1e-3
    assert spec.neuron.lower_bound is None
    assert spec.regularizers.p1.weight == 0.5 and spec.regularizers.p1.layers is None
    assert spec.layers[3].bias is True


def test_apply_overrides_returns_touched_paths():
    data = {"layers": [{"name": "a", "x": 1}], "training": {}}
    touched = apply_overrides(data, ["layers.a.x=2", "training.epochs=3"])
    assert data == {"layers": [{"name": "a", "x": 2}], "training": {"epochs": 3}}
    assert touched == {("layers", 0, "x"), ("training", "epochs")}


@pytest.mark.parametrize("preset", ["saec", "reference", "paper"])
def test_preset_fills_every_semantic_field(preset):
    spec = load_spec(SPECS / "sae.yaml", [f"preset={preset}"]).spec
    dumped = spec.model_dump()
    for dotted, value in PRESETS[preset].items():
        node = dumped
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted
    assert (spec.training.grad_clip is not None) == (preset == "reference")
    assert (spec.encoding.encoder_scale == 0.2) == (preset == "reference")


def test_explicit_field_beats_preset():
    spec = load_spec(SPECS / "sae.yaml", ["preset=paper", "neuron.spike_when=gt"]).spec
    assert spec.neuron.spike_when == "gt"
    assert spec.neuron.lower_bound_mode == "clamp"


def test_schema_defaults_equal_the_saec_preset():
    defaults = Spec.model_validate(
        {"name": "x", "kind": "sae", "latent": "l", "input": {"shape": [4]},
         "layers": [{"name": "l", "type": "linear", "out_features": 4}]}
    ).model_dump()
    for dotted, value in PRESETS["saec"].items():
        node = defaults
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted


def test_resolved_yaml_round_trips(tmp_path):
    loaded = load_spec(SPECS / "sae_sparse.yaml")
    text = resolved_yaml(loaded.spec)
    data = yaml.safe_load(text)
    # every default written out, the deployable default's "no floor" included
    assert data["neuron"]["lower_bound_mode"] == "clamp" and data["neuron"]["lower_bound"] is None
    assert "lower_bound" in data["neuron"] and data["surrogate"]["type"] == "spike_gated"
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert load_spec(path).spec == loaded.spec


def test_bias_default_depends_on_kind():
    ae = load_spec(SPECS / "ae.yaml").spec
    assert [getattr(layer, "bias", None) for layer in ae.layers] == [False, False, None, True, True, None, False, False]
    sae = load_spec(SPECS / "sae.yaml").spec
    assert not any(getattr(layer, "bias", False) for layer in sae.layers)


def test_every_shipped_spec_has_a_header_comment():
    for path in sorted(SPECS.rglob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 20, path
