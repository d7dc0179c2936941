"""The run layer's folder and data helpers: old run folders without a run config, the one validation loader."""

from __future__ import annotations

import json

import pytest

from saec.compiler.pipeline import compile_spec
from saec.compiler.runconfig import ATTR, RunConfig
from saec.errors import UserError
from saec.run import artifacts as A
from saec.run.folder import load_run, write_run_header
from saec.run.report import validation_set
from saec.training.data import DataError, make_splits
from tests.conftest import SPECS
from tests.training.test_data import tiny_mnist


def test_run_folder_keeps_the_run_config_and_an_older_folder_gets_it_from_its_spec(tmp_path):
    loaded, graph = compile_spec(str(SPECS / "ae.yaml"), ["data.dataset=mnist5k", "training.lr=0.003"])
    write_run_header(tmp_path, loaded.spec, graph)
    _, reloaded = load_run(tmp_path)
    assert RunConfig.of(reloaded) == RunConfig.of(graph)
    # a run folder written before run configs existed: ir.json without one
    doc = json.loads((tmp_path / A.IR).read_text())
    del doc["attrs"][ATTR]
    (tmp_path / A.IR).write_text(json.dumps(doc))
    _, old = load_run(tmp_path)
    assert RunConfig.of(old) == RunConfig.of(graph) and RunConfig.of(old).training.lr == 0.003


def test_validation_needs_only_the_test_set(tmp_path):
    """``saec eval``, ``stats`` and ``export`` load the validation set one way: the test set alone is enough."""
    images, _ = tiny_mnist(tmp_path, "test", n=9)
    loaded, graph = compile_spec(str(SPECS / "ae.yaml"), ["data.dataset=mnist", "data.validation.source=test",
                                                          "data.validation.limit=5"])
    config = RunConfig.of(graph)
    val = validation_set(config, tmp_path)
    assert len(val) == 5 and val.name == "mnist/test"
    assert (val.images[:, 0] * 255).round().to(images.dtype).equal(images[:5])
    assert len(validation_set(config, tmp_path, limit=2)) == 2
    with pytest.raises(DataError, match="train set not found"):  # what training itself needs
        make_splits(config.data, tmp_path, seed=config.training.seed)


def test_validation_split_is_the_one_training_validates_on():
    loaded, graph = compile_spec(str(SPECS / "ae.yaml"), ["data.dataset=mnist5k", "data.validation.source=split",
                                                          "data.validation.fraction=0.002", "training.seed=3"])
    config = RunConfig.of(graph)
    _, trained_on = make_splits(config.data, None, seed=config.training.seed)
    assert validation_set(config).images.equal(trained_on.images)
    assert validation_set(loaded.spec).images.equal(trained_on.images)  # a spec reads the same


def test_validation_errors_are_one_located_line(tmp_path):
    _, graph = compile_spec(str(SPECS / "ae.yaml"), ["data.dataset=mnist", "data.validation.source=test"])
    config = RunConfig.of(graph)
    with pytest.raises(UserError, match=r"^--limit: must be a positive number of images, got 0$"):
        validation_set(config, tmp_path, limit=0)
    with pytest.raises(UserError, match=r"^data: .*test set not found"):
        validation_set(config, tmp_path / "empty")
