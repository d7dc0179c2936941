"""data.transform applies to the MNIST datasets too (mnist, mnist5k), not only to custom data."""

from __future__ import annotations

from saec.spec.loader import load_spec
from saec.training.data import make_splits
from tests.conftest import SPECS


def test_mnist5k_is_resized_when_the_spec_asks(tmp_path):
    text = (SPECS / "targets" / "xylo_dense.yaml").read_text()
    (tmp_path / "spec.yaml").write_text(text)
    spec = load_spec(tmp_path / "spec.yaml", ["data.dataset=mnist5k", "data.validation.source=split"]).spec
    train, val = make_splits(spec.data, None, seed=0)
    assert tuple(train.images.shape[1:]) == tuple(val.images.shape[1:]) == (1, 2, 4)
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    assert float(train.images.mean()) > 0.05  # bilinear antialiased averages of the digits, not blank
    plain = load_spec(tmp_path / "spec.yaml", ["data.dataset=mnist5k", "data.validation.source=split",
                                               "data.transform.resize=null"]).spec
    assert tuple(make_splits(plain.data, None, seed=0)[0].images.shape[1:]) == (1, 28, 28)
