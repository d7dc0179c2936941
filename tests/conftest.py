"""Shared fixtures: repository paths and the real MNIST test-set folder."""

from __future__ import annotations

import signal
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


@pytest.fixture(autouse=True)
def interactive_sigint():
    """Ctrl-C behaves as in a terminal, whatever the test run inherited: a shell that starts
    pytest in the background (``... &``, nohup) makes SIGINT ignored, and Python and its
    child processes then keep ignoring it."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
