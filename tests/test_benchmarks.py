"""The benchmark entry point: it refuses clearly without a GPU, and its registry is importable."""

import subprocess
import sys

import pytest
import torch

from benchmarks.suite import OPS, gpu_slug


def test_registry_and_slug():
    assert "discretize_diag" in OPS
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this checks the refusal on a machine without a CUDA GPU")
def test_bench_refuses_without_gpu():
    out = subprocess.run([sys.executable, "-m", "benchmarks"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "no CUDA GPU found" in out.stderr
