"""The benchmark entry point: it refuses clearly without a GPU, its registry is importable, the offline compile runs."""

import pathlib
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


def test_offline_compile_of_the_default_selective_scan():
    """benchmarks/compile_selective.py (kernels/selective.py's table): the default compiles for sm_90 without
    spilling, and its main loop is found (instructions and MUFU operations counted). A subprocess: the script
    turns the Triton interpreter off before the kernels are imported."""
    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "compile_selective.py"
    out = subprocess.run([sys.executable, str(script), "(the default)"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[-1]
    assert "COMPILE ERROR" not in line, line
    fields = line.split()
    regs, spill = int(fields[4]), fields[5]
    instr, mufu = int(fields[9]), int(fields[10].split("(")[0])
    assert 0 < regs <= 255 and spill == "0/0", line
    assert instr > 100 and mufu > 0, line
