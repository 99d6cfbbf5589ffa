"""Static checks of the chapter notebooks (their execution is nbval's job)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))


def test_there_are_chapters():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    """Notebooks are committed clean: small diffs, and the book build is what executes them."""
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; strip them (see CONTRIBUTING.md)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_shape(path):
    """A title, the set-up cell naming the device, exercises with a checked one, and references."""
    nb = json.loads(path.read_text())
    md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert re.match(r"#\s+\S", "".join(nb["cells"][0]["source"])), "the first cell is the chapter's title"
    assert "ssm_edu.describe()" in code and "for_device(" in code, "the set-up cell names the device and picks sizes for it"
    assert md.count("{exercise}") >= 4, "at least four exercises"
    assert "check(" in code, "at least one automatically checked exercise"
    assert "{cite:" in md, "citations into book/references.bib"
    assert "{bibliography}" not in md, "chapters cite into the global bibliography page; a second directive duplicates citations"


def test_toc_lists_exactly_the_chapters():
    toc = (ROOT / "_toc.yml").read_text()
    listed = set(re.findall(r"file:\s*chapters/(\S+)", toc))
    assert listed == {p.stem for p in NOTEBOOKS}
    for page in re.findall(r"file:\s*(book/\S+)", toc):
        assert (ROOT / f"{page}.md").exists() or (ROOT / f"{page}.ipynb").exists(), page


def test_nbval_waits_long_enough_for_cell_output(tmp_path):
    """The root conftest raises nbval's hard-coded 5 s wait for the messages after a cell (why: conftest.py).

    Collected in a subprocess, as CI collects: this fails if nbval renames the
    attribute (the hook would then silently do nothing) or the hook is lost.
    """
    (tmp_path / "record_timeouts.py").write_text(
        "import json, os\n"
        "def pytest_collection_finish(session):\n"
        "    cells = [i for i in session.items if type(i).__name__ == 'IPyNbCell']\n"
        "    with open(os.environ['RECORD_TO'], 'w') as f:\n"
        "        json.dump([getattr(i, 'output_timeout', None) for i in cells], f)\n")
    record = tmp_path / "timeouts.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "RECORD_TO": str(record)}
    subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "record_timeouts", "-p", "no:xdist",
                    str(NOTEBOOKS[0].relative_to(ROOT))], cwd=ROOT, env=env, check=True, capture_output=True)
    timeouts = json.loads(record.read_text())
    assert timeouts and min(timeouts) >= 60, timeouts


# Pages whose code only reads the results files and formats them (appendices that teach with code, such as a
# worked example, show it instead, and are not listed here).
RESULTS_PAGES = [ROOT / "book" / "performance.ipynb"]


@pytest.mark.parametrize("path", RESULTS_PAGES, ids=lambda p: p.name)
def test_results_page_code_is_folded(path):
    """The results pages show results, not the Python that formats them: every code cell hides its input."""
    nb = json.loads(path.read_text())
    shown = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and not {"hide-input", "remove-input"} & set(c.get("metadata", {}).get("tags", []))]
    assert not shown, f"{path.name}: code cells {shown} show their input; tag them hide-input (or remove-input)"
