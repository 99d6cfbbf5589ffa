"""The selective scan's new kernels compile for an H100 without one (benchmarks/compile_selective.py): the
backward kernel's default and the first kernels of chapter 7, with no register spills and a main loop found.
Subprocesses: the script turns the Triton interpreter off before the kernels are imported."""

import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "compile_selective.py"


@pytest.mark.parametrize("args", [["--bwd", "(the default)"], ["--ladder", "first kernel", "blocked steps"]],
                         ids=["backward", "first kernels"])
def test_compiles_without_spills(args):
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines()[2:] if line.strip()]
    assert len(rows) == len(args) - 1, out.stdout
    for line in rows:
        assert "COMPILE ERROR" not in line, line
        head = line.split("|")[0].split()
        regs, spill = int(head[-4]), head[-3]
        instr = int(line.split("|")[1].split()[0])
        assert 0 < regs <= 255 and spill == "0/0", line
        assert instr > 20, line
