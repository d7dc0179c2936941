"""Shared fixtures: repository paths and the real MNIST test-set folder.

The MNIST test set is looked for exactly as the command line looks for it
(:func:`saec.training.data.default_mnist_root`: ``$SAEC_MNIST_ROOT``, then
``./data/mnist``). A fresh
clone has none of these; only tests whose point is the test set itself need
it and skip, with the reason in the run's summary (``-rs`` in pyproject.toml).
Everything else trains and validates on the embedded ``mnist5k`` subset.
To run as a fresh clone would, point the search at an empty folder:
``SAEC_MNIST_ROOT=$(mktemp -d) pytest``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# Tests never measure an execution plan (saec/runtime/plan.py) nor read this machine's plan cache: the
# built-in plan, in this process and in the `saec` commands tests start (tests/runtime/test_plan.py asks
# for the others explicitly, with a fake timer and a temporary cache).
os.environ["SAEC_PLAN"] = "default"

from saec.training.data import default_mnist_root

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"
MNIST_TEST_IMAGES = "t10k-images-idx3-ubyte"


def find_mnist_test_set() -> Path | None:
    """The MNIST folder the command line would use, when it holds the test set.

    Returns:
        The root folder (as :func:`default_mnist_root` gives it), or None when
        that search finds no folder or the folder lacks the test images (plain
        or ``.gz``, in ``MNIST/raw``, ``raw`` or the folder itself).
    """
    root = default_mnist_root()
    if root is None:
        return None
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        if (folder / MNIST_TEST_IMAGES).is_file() or (folder / f"{MNIST_TEST_IMAGES}.gz").is_file():
            return root
    return None


#: The MNIST test set's root folder, or None (a fresh clone): found once, when the tests are collected.
MNIST_ROOT = find_mnist_test_set()
MNIST_MISSING = ("MNIST test set not found where `saec` looks ($SAEC_MNIST_ROOT, ./data/mnist); "
                 "set SAEC_MNIST_ROOT to an MNIST folder to run this")
#: For tests whose point is the real MNIST test set itself.
needs_mnist_test_set = pytest.mark.skipif(MNIST_ROOT is None, reason=MNIST_MISSING)


def pytest_report_header(config) -> str:
    return f"MNIST test set: {MNIST_ROOT or 'not found (tests that need it skip)'}"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def mnist_root() -> Path:
    """The real MNIST test set's root folder; skips (with the reason) when there is none."""
    if MNIST_ROOT is None:
        pytest.skip(MNIST_MISSING)
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
