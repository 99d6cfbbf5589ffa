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
