"""The student build (make book-student) and the exercises it depends on.

Every chapter's exercises have a kind, a hint and a solution; the student build
removes the solutions (plain and gated, code cells and their outputs included)
and keeps exercises and hints; and the check that guards it sees solution text
where there is some (it fails an instructor build) and passes a clean build.
"""

import json
import os
import pathlib
import subprocess
import sys

import nbformat
import pytest

from ssm_edu.exercises import _REGISTRY

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import ssm_book  # noqa: E402
import student_build  # noqa: E402

NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_have_kinds_hints_solutions_and_a_check(path):
    exs = ssm_book.exercises(path)
    assert len(exs) >= 4, "at least four exercises"
    for ex in exs:
        assert ex.label and "-ex-" in ex.label, f"{ex.title!r}: label it <chapter>-ex-<name>"
        assert ex.kinds, f"{ex.label}: give it a kind, e.g. ':class: derivation' ({', '.join(ssm_book.KINDS)})"
        assert ex.hints >= 1, f"{ex.label}: no hint dropdown"
        assert ex.solution, f"{ex.label}: no solution"
    kinds = {k for ex in exs for k in ex.kinds}
    assert kinds == set(ssm_book.KINDS), f"missing kinds: {set(ssm_book.KINDS) - kinds}"
    checks = {c for ex in exs for c in ex.checks}
    assert checks, "at least one exercise is checked by ssm_edu.exercises.check"
    assert checks <= set(_REGISTRY), f"unknown checks {checks - set(_REGISTRY)}"


def test_exercise_labels_are_unique_across_the_book():
    labels = [ex.label for p in NOTEBOOKS for ex in ssm_book.exercises(p)]
    assert len(labels) == len(set(labels))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stripping_a_notebook_removes_its_solutions_and_keeps_the_rest(path):
    nb = json.loads(path.read_text())
    fps = student_build.solution_fingerprints(path)
    assert all(fps.values()), f"solutions without text to check for: {[k for k, v in fps.items() if not v]}"
    stripped = ssm_book.strip_solutions(nb)
    text = ssm_book.notebook_text(stripped)
    for label, prints in fps.items():
        assert not [fp for fp in prints if ssm_book.contains(text, fp)], label
    before, after = ssm_book.exercises(nb), ssm_book.exercises(stripped)
    assert [(e.label, e.title, e.hints) for e in before] == [(e.label, e.title, e.hints) for e in after]
    assert not any(e.solution for e in after)
    # the cells before the exercises are untouched
    first = min(e.cell for e in before)
    assert stripped["cells"][:first] == nb["cells"][:first]


def _tiny_book(root: pathlib.Path):
    """A one-chapter book with a plain solution, and a gated one holding a code cell."""
    (root / "chapters").mkdir(parents=True)
    (root / "_config.yml").write_text(
        "title: tiny\nexecute:\n  execute_notebooks: force\n"
        "sphinx:\n  extra_extensions: [sphinx_exercise, sphinx_togglebutton]\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: index\nchapters:\n  - file: chapters/01_tiny\n")
    (root / "index.md").write_text("# A tiny book\n")
    md = nbformat.v4.new_markdown_cell
    nb = nbformat.v4.new_notebook(cells=[
        md("# Tiny\n\n```{exercise} Plain one\n:label: t-ex-plain\n:class: derivation\n\nShow it.\n```\n\n"
           "```{admonition} Hint\n:class: dropdown, tip\nLook at the first line.\n```\n\n"
           "```{solution} t-ex-plain\n:class: dropdown\n\nThe plain answer is hidden behind seven locked doors.\n```"),
        md("```{exercise} Gated one\n:label: t-ex-gated\n:class: implementation\n\nCompute it.\n```\n\n"
           "```{admonition} Hint\n:class: dropdown, tip\nUse a loop.\n```\n\n"
           "```{solution-start} t-ex-gated\n:class: dropdown\n```\n\nThe gated answer walks through the loop in words."),
        nbformat.v4.new_code_cell('total_of_secrets = sum(range(10))\nprint("gated output line", total_of_secrets)'),
        md("```{solution-end}\n```\n\nPublic text after the solutions."),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "chapters" / "01_tiny.ipynb")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tiny_book_student_build_hides_plain_and_gated_solutions(tmp_path):
    book = tmp_path / "book"
    _tiny_book(book)
    notebooks = [book / "chapters" / "01_tiny.ipynb"]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    jb = pathlib.Path(sys.executable).with_name("jupyter-book")
    teacher = subprocess.run([str(jb), "build", str(book), "--path-output", str(tmp_path / "teacher"), "-W", "-n"],
                             capture_output=True, text=True, env=env, timeout=250)
    assert teacher.returncode == 0, teacher.stdout[-3000:] + teacher.stderr[-3000:]
    student = student_build.build(tmp_path / "student", execute="force", root=book)
    assert student.returncode == 0, student.stdout[-3000:] + student.stderr[-3000:]
    teacher_html, student_html = tmp_path / "teacher" / "_build" / "html", tmp_path / "student" / "_build" / "html"

    page = (student_html / "chapters" / "01_tiny.html").read_text()
    for kept in ("Plain one", "Gated one", "Look at the first line", "Use a loop", "Public text after the solutions"):
        assert kept in page
    for gone in ("seven locked doors", "walks through the loop", "total_of_secrets", "gated output line"):
        assert gone not in page
        assert gone in (teacher_html / "chapters" / "01_tiny.html").read_text()
    download = (student_html / "_sources" / "chapters" / "01_tiny.ipynb").read_text()
    assert "seven locked doors" not in download and "total_of_secrets" not in download and "Use a loop" in download

    assert student_build.check(student_html, notebooks, teacher_html) == []
    problems = student_build.check(teacher_html, notebooks)      # the check must see solutions where they are
    assert any("t-ex-plain" in p for p in problems) and any("t-ex-gated" in p for p in problems)
    assert any("solution admonition" in p for p in problems)


@pytest.mark.book
@pytest.mark.timeout(1200)
def test_student_build_of_the_book_has_no_solution_text(tmp_path):
    """The real book, built without executing the notebooks: solution sources must all be gone."""
    result = student_build.build(tmp_path, execute="off")
    (ROOT / "tests" / "artifacts").mkdir(exist_ok=True)
    (ROOT / "tests" / "artifacts" / "book-student-build.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, "student build failed; see tests/artifacts/book-student-build.log\n" + result.stderr[-3000:]
    problems = student_build.check(tmp_path / "_build" / "html", NOTEBOOKS)
    assert not problems, "\n".join(problems)
