"""The set-up cell every chapter starts with (Colab, a downloaded notebook, a fresh machine).

Where ``ssm_edu`` is not importable, the cell pip-installs the book's package
at the version the notebook belongs to; where it is, the cell does nothing.
The install test runs chapter 1 in a fresh virtual environment that has
everything but ``ssm_edu`` (PyTorch and the rest come from this environment
through a site directory without ssm_edu: nothing is downloaded), with
``SSM_EDU_SOURCE`` pointing at a copy of this checkout.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# The cell, exactly (HELPERS.md / DESIGN.md); only the version tag varies with the release.
SETUP = """\
# Set-up for Colab or a fresh machine: install the book's companion package at
# the version this notebook belongs to. Where ssm_edu is installed, nothing happens.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("ssm_edu") is None:
    source = os.environ.get("SSM_EDU_SOURCE", "git+https://github.com/ssm-edu/ssm-book@v{version}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"ssm_edu[triton] @ {{source}}"], check=True)"""


def _code_cells(path):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_starts_with_the_setup_cell(path):
    cells = _code_cells(path)
    assert cells[0] == SETUP.format(version=VERSION), f"{path.name}: the first code cell is not the set-up cell"
    tag = re.search(r"ssm-book@v([^\"]+)\"", cells[0]).group(1)
    assert tag == VERSION, f"{path.name}: installs v{tag}, but pyproject.toml says {VERSION}"
    assert "import ssm_edu" in cells[1] and "ssm_edu.describe()" in cells[1], "the imports cell (which names the device) must follow"


def test_version_agrees_with_the_package():
    import ssm_edu

    assert ssm_edu.__version__ == VERSION


def test_setup_cell_does_nothing_where_ssm_edu_is_installed():
    """No process is started and nothing is printed."""
    code = ("import subprocess\n"
            "def refuse(*a, **k): raise AssertionError('the set-up cell ran ' + repr(a))\n"
            "subprocess.run = refuse\n" + SETUP.format(version=VERSION))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "" and out.stderr == ""


def _site_without_ssm_edu(dest: pathlib.Path) -> pathlib.Path:
    """A site directory with links to everything in this environment's site-packages but ssm_edu."""
    dest.mkdir()
    for entry in pathlib.Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "ssm_edu" not in entry.name:
            (dest / entry.name).symlink_to(entry)
    return dest


RUN_CHAPTER = r"""
import sys, nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
argv = KernelSpecManager().get_kernel_spec("python3").argv
assert argv[0] == sys.executable, f"the kernel would not run in the fresh venv: {argv}"
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
outputs = "".join(o.get("text", "") for o in nb.cells[[c.cell_type for c in nb.cells].index("code")].outputs)
print("SETUP-CELL-OUTPUT:", repr(outputs))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chapter_runs_in_a_fresh_venv_without_ssm_edu(tmp_path):
    # a copy of the checkout: pip builds the package in place, and must not write into the repository
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md", "LICENSE.md", "ssm_edu", "kernels"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            source.mkdir(exist_ok=True)
            shutil.copy2(src, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    shared = _site_without_ssm_edu(tmp_path / "shared-site")
    (pathlib.Path(site) / "shared.pth").write_text(f"import site; site.addsitedir({str(shared)!r})\n")
    work = tmp_path / "work"  # where a reader's downloaded notebook would sit: no ssm_edu next to it
    work.mkdir()
    notebook = shutil.copy2(CHAPTERS[0], work / CHAPTERS[0].name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "MPLBACKEND"))}
    env.update(SSM_EDU_SOURCE=source.as_uri(), OMP_NUM_THREADS="1",
               PIP_NO_INDEX="1",  # everything but ssm_edu is there already: nothing may be downloaded
               PIP_NO_BUILD_ISOLATION="0",  # (sic) builds with this environment's setuptools, offline
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('ssm_edu'), u.find_spec('torch') is not None)"],
                           capture_output=True, text=True, check=True, cwd=work, env=env)
    assert probe.stdout.split() == ["None", "True"], f"the fresh venv must lack ssm_edu but have torch: {probe.stdout}"
    out = subprocess.run([str(python), "-c", RUN_CHAPTER, str(notebook), str(work)], cwd=work, env=env,
                         capture_output=True, text=True, timeout=560)
    assert out.returncode == 0, f"chapter 1 failed in the fresh venv:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    where = subprocess.run([str(python), "-c", "import ssm_edu; print(ssm_edu.__file__, ssm_edu.__version__)"],
                           capture_output=True, text=True, cwd=work, env=env, check=True).stdout.split()
    assert pathlib.Path(where[0]).is_relative_to(venv), f"ssm_edu was not installed into the fresh venv: {where}"
    assert where[1] == VERSION
    assert "SETUP-CELL-OUTPUT: ''" in out.stdout, f"the set-up cell printed something: {out.stdout[-2000:]}"
