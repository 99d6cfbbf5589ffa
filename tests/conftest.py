"""Shared pytest set-up: a non-interactive matplotlib backend and a fixed seed per test."""

import matplotlib

# In this process only: setting MPLBACKEND in the environment instead would
# reach the notebook kernels (nbval, the book build) and replace their inline
# backend, so that no figure would be rendered.
matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def gen():
    """A fresh, seeded generator for tests that draw random inputs."""
    return torch.Generator().manual_seed(1234)


def pytest_collection_modifyitems(config, items):
    """Start the book builds first.

    The from-scratch book build executes every chapter and is by far the
    longest test. With ``-n 2 --dist loadfile`` (make test) a file is handed to
    a worker in collection order, so putting it first lets the other worker run
    the rest of the suite meanwhile instead of leaving the build for the end.
    """
    items.sort(key=lambda item: 0 if item.get_closest_marker("book") else 1)
