"""Build the whole book as CI does (forced execution, warnings are errors, empty build folder),
then read every page of it in a real browser, offline.

The two tests share one build (a module-scoped fixture: with ``--dist loadfile``
this file runs on one worker, so the book is built once).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from browser import Chromium, check_book_page, find_chromium, listing_problems, serve

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
JS = ROOT / "build" / "js" / "static"  # `make js`: MathJax and the widget manager for offline reading
#: CI sets this: a missing Chromium (or offline JavaScript) fails the browser test instead of skipping it.
REQUIRE_BROWSER = os.environ.get("SSM_BOOK_REQUIRE_BROWSER") == "1"
#: Pages photographed for the test artefacts: (page, what to scroll to first or None).
SCREENSHOTS = [("book/intro.html", None), ("chapters/01_continuous_time.html", None),
               ("chapters/02_discretisation.html", ".widget-subarea"), ("chapters/06_diagonal_scans.html", ".widget-subarea")]


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """The book built from scratch into a temporary folder; the log goes to tests/artifacts/book-build.log."""
    tmp_path = tmp_path_factory.mktemp("book")
    config = (ROOT / "_config.yml").read_text()
    forced = re.sub(r"execute_notebooks:\s*\w+", "execute_notebooks: force", config)
    # local_extensions paths are relative to the config file, which now lives elsewhere
    forced = forced.replace(": book/_ext", f": {ROOT / 'book' / '_ext'}")
    assert "execute_notebooks: force" in forced
    (tmp_path / "_config.yml").write_text(forced)
    if not (JS / ".installed").is_file() and shutil.which("make") and shutil.which("npm"):
        subprocess.run(["make", "-s", "js"], cwd=ROOT, check=False)
    jb = pathlib.Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(ROOT), "--config", str(tmp_path / "_config.yml"), "--path-output", str(tmp_path), "-W", "-n", "--keep-going"]
    # The kernels must use matplotlib's inline backend, or no figure is rendered.
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "SSM_BOOK_JS")}
    if (JS / ".installed").is_file():
        env["SSM_BOOK_JS"] = str(JS)  # book/_ext/offline_js.py
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1700)
    log = out.stdout + out.stderr
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "book-build.log").write_text(log)
    return SimpleNamespace(ok=out.returncode == 0, log=log, html=tmp_path / "_build" / "html")


@pytest.mark.book
@pytest.mark.timeout(1800)
def test_book_builds_without_warnings(built_book):
    assert built_book.ok, "book build failed; see tests/artifacts/book-build.log\n" + built_book.log[-4000:]
    html = built_book.html
    for nb in sorted((ROOT / "chapters").glob("*.ipynb")):
        page = (html / "chapters" / f"{nb.stem}.html").read_text()
        # style sheets may name pygments' Generic.Traceback token (a highlighted listing brings one): not an error
        text = re.sub(r"<style.*?</style>", "", page, flags=re.S)
        assert "Traceback" not in text and "highlight-ipythontb" not in text, f"{nb.stem}: an error output was rendered"
        figures = re.findall(r'<img[^>]+src="\.\./_images/[^"]+\.png"', page)
        assert len(figures) >= 3, f"{nb.stem}: only {len(figures)} figures rendered"
        assert "application/vnd.jupyter.widget-state+json" in page or "widget" not in nb.read_text(), f"{nb.stem}: widget state not embedded"


def _unavailable(reason):
    if REQUIRE_BROWSER:
        pytest.fail(reason + " (SSM_BOOK_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


# The chapters that show a Triton kernel's source on the page (kernels a reader can read).
KERNEL_LISTINGS = {"05_s4", "07_mamba", "08_mamba2_ssd", "09_mamba3"}


@pytest.mark.book
@pytest.mark.timeout(900)
def test_book_in_a_browser(built_book):
    """Every page of the built book in headless Chromium, with no internet: see browser.check_book_page."""
    chromium = find_chromium()
    if chromium is None:
        _unavailable("Chromium not found (apt-get install chromium)")
    if not built_book.ok:
        pytest.fail("the book did not build (see test_book_builds_without_warnings)")
    html = built_book.html
    if not (html / "_static" / "vendor" / "mathjax" / "tex-mml-chtml.js").is_file():
        _unavailable("the book was built without local MathJax ('make js' needs npm), so it cannot be read offline")
    chapters = sorted(html.glob("chapters/*.html"))
    assert len(chapters) == len(list((ROOT / "chapters").glob("*.ipynb")))
    pages = chapters + sorted(html.glob("book/*.html"))
    shots = ARTIFACTS / "screenshots"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    problems, summary = {}, {}
    with serve(html) as base, Chromium(chromium) as browser:
        for path in pages:
            rel = path.relative_to(html).as_posix()
            page = browser.open(f"{base}/{rel}")
            report, found = check_book_page(page, base, html, chapter=rel.startswith("chapters/"))
            if pathlib.Path(rel).stem in KERNEL_LISTINGS:
                found = found + listing_problems(page)
            summary[rel] = {k: v for k, v in report.items() if k != "links"} | {"links": len(report["links"]), "problems": found}
            if found:
                problems[rel] = found
            for shot, scroll_to in SCREENSHOTS:
                if shot == rel:
                    name = rel.replace("/", "_").removesuffix(".html")
                    page.screenshot(shots / f"{name}.png")
                    if scroll_to and page.evaluate(f"!!document.querySelector('{scroll_to}')"):
                        page.evaluate(f"document.querySelector('{scroll_to}').scrollIntoView({{block: 'center'}}); "
                                      "new Promise(r => setTimeout(r, 300))")
                        page.screenshot(shots / f"{name}_widget.png")
            page.close()
        summary["_browser"] = browser.version
    (ARTIFACTS / "browser-report.json").write_text(json.dumps(summary, indent=1) + "\n")
    listing = "\n".join(f"{rel}:\n  " + "\n  ".join(p[:300] for p in found[:10]) for rel, found in problems.items())
    assert not problems, "problems a reader would see (details in tests/artifacts/browser-report.json):\n" + listing
