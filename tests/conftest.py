"""Shared fixtures: repository paths and the real MNIST test-set folder."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"
MNIST_ROOT = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def mnist_root() -> Path:
    if not (MNIST_ROOT / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists() and not (
        MNIST_ROOT / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    ).exists():
        pytest.skip(f"MNIST test set not found at {MNIST_ROOT}")
    return MNIST_ROOT
