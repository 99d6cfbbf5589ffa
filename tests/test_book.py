"""Build the whole book as CI does: forced execution, warnings are errors, empty build folder."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.book
@pytest.mark.timeout(1800)
def test_book_builds_without_warnings(tmp_path):
    config = (ROOT / "_config.yml").read_text()
    forced = re.sub(r"execute_notebooks:\s*\w+", "execute_notebooks: force", config)
    # local_extensions paths are relative to the config file, which now lives elsewhere
    forced = forced.replace("bibstyle: book/_ext", f"bibstyle: {ROOT / 'book' / '_ext'}")
    assert "execute_notebooks: force" in forced
    (tmp_path / "_config.yml").write_text(forced)
    jb = pathlib.Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(ROOT), "--config", str(tmp_path / "_config.yml"), "--path-output", str(tmp_path), "-W", "-n", "--keep-going"]
    # The kernels must use matplotlib's inline backend, or no figure is rendered.
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1700)
    log = out.stdout + out.stderr
    (ROOT / "tests" / "artifacts").mkdir(exist_ok=True)
    (ROOT / "tests" / "artifacts" / "book-build.log").write_text(log)
    assert out.returncode == 0, "book build failed; see tests/artifacts/book-build.log\n" + log[-4000:]
    html = tmp_path / "_build" / "html"
    for nb in sorted((ROOT / "chapters").glob("*.ipynb")):
        page = (html / "chapters" / f"{nb.stem}.html").read_text()
        assert "Traceback" not in page, f"{nb.stem}: an error output was rendered"
        figures = re.findall(r'<img[^>]+src="\.\./_images/[^"]+\.png"', page)
        assert len(figures) >= 3, f"{nb.stem}: only {len(figures)} figures rendered"
        assert "application/vnd.jupyter.widget-state+json" in page or "widget" not in nb.read_text(), f"{nb.stem}: widget state not embedded"
