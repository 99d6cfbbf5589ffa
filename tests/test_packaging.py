"""kernels/ is installed as ssm_edu.kernels, never as a top-level `kernels` module."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROBE = (
    "import importlib.util, ssm_edu.kernels as k, pathlib;"
    "print(pathlib.Path(k.__file__).parent.name);"
    "print(importlib.util.find_spec('kernels') is None)"
)


def _run_in(cwd):
    # -I would drop the editable finder's .pth; -P (3.11+) keeps site-packages but not cwd.
    return subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_ssm_edu_kernels_imports_from_anywhere(tmp_path):
    for cwd in (tmp_path, ROOT / "chapters"):
        out = _run_in(cwd)
        assert out.returncode == 0, out.stderr
        folder, no_top_level = out.stdout.split()
        assert folder == "kernels"  # ssm_edu.kernels is the repository's kernels/ folder
        assert no_top_level == "True", f"a top-level 'kernels' module is importable from {cwd}"


def test_no_top_level_kernels_in_site_packages():
    import site

    for sp in site.getsitepackages():
        assert not (pathlib.Path(sp) / "kernels").exists()
        assert not (pathlib.Path(sp) / "kernels.py").exists()
