"""The run config: compiled beside the IR from the spec, JSON round trip, the one source training and data read."""

from __future__ import annotations

import json

import pytest

from saec.compiler.pipeline import compile_spec
from saec.compiler.runconfig import ATTR, Data, GradClip, RunConfig, Training, Validation, run_config
from tests.conftest import SPECS


def test_compile_puts_the_run_config_beside_the_network():
    loaded, graph = compile_spec(str(SPECS / "sae_dense.yaml"), [
        "training.lr=0.002", "training.grad_clip={mode: norm, max: 5}", "training.schedule.type=step",
        "data.dataset=mnist5k", "data.validation.source=split", "data.validation.limit=7", "training.max_steps=3"])
    config = RunConfig.of(graph)
    spec = loaded.spec
    assert config.training == Training(epochs=spec.training.epochs, batch_size=spec.training.batch_size, lr=0.002,
                                       optimizer=spec.training.optimizer, weight_decay=spec.training.weight_decay,
                                       schedule=config.training.schedule, seed=spec.training.seed,
                                       grad_clip=GradClip(mode="norm", max=5.0), max_steps=3)
    assert config.training.schedule.type == "step"
    assert config.data.dataset == "mnist5k"
    assert config.data.validation == Validation(source="split", fraction=spec.data.validation.fraction, limit=7)
    assert config.input_shape == tuple(spec.input.shape)
    # what the IR already holds is not copied: one home per fact
    assert not {"latent", "losses", "timesteps", "name"} & set(graph.attrs[ATTR])


def test_run_config_survives_json_and_ir_json():
    _, graph = compile_spec(str(SPECS / "sae_dense.yaml"), ["data.transform.resize=[20, 20]",
                                                            "data.validation.root=/some/where"])
    config = RunConfig.of(graph)
    assert config.data.transform.resize == (20, 20) and config.data.validation.root == "/some/where"
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    from saec.compiler.graph import IRGraph

    assert RunConfig.of(IRGraph.from_dict(json.loads(graph.to_json()))) == config


def test_run_config_is_frozen_and_refuses_unknown_keys():
    config = RunConfig()
    with pytest.raises(AttributeError):
        config.training.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="momentum"):
        RunConfig.from_dict({"training": {"momentum": 0.9}})


def test_data_settings_read_by_attribute_as_the_loaders_do():
    loaded, _ = compile_spec(str(SPECS / "sae_dense.yaml"), ["data.dataset=mnist5k"])
    data = run_config(loaded.spec).data
    assert isinstance(data, Data)
    for name in ("dataset", "root", "download", "train_limit", "torchvision"):
        assert getattr(data, name) == getattr(loaded.spec.data, name)
    assert data.validation.source == loaded.spec.data.validation.source
    assert data.transform.grayscale == loaded.spec.data.transform.grayscale
