"""Build the book without solutions, and prove that no solution text is left.

    python book/_ext/student_build.py [--out _build/student] [--execute cache|off|force] [--check-only]

``make book-student`` runs this. It writes a copy of _config.yml with
sphinx-exercise's ``hide_solutions: true`` and the book's extension
(book/_ext/ssm_book.py, which also removes gated solutions and strips the
downloadable notebooks), builds into ``<out>/_build/html`` with the same
flags as ``make book`` (-W -n --keep-going), and then checks the result:

1. From every chapter notebook it collects the text of each solution
   (``{solution}`` blocks and everything between ``{solution-start}`` and
   ``{solution-end}``, code cells included) as normalised fingerprints:
   prose between markup, each piece of math, each line of code. Pieces that
   also occur outside the solutions (in any chapter or page of the book) are
   dropped, since they may legitimately appear. A solution without any fingerprint fails
   the check: it could not be verified.
2. No fingerprint may occur in any page or downloadable notebook of the
   student build, and no solution admonition may be rendered.
3. Every exercise and every hint must still be there.
4. If the instructor build (``make book``: _build/html) exists, each
   solution must have at least one fingerprint that IS found there: this
   shows that the check can see every solution it claims to check. (Pages
   older than their notebook are skipped: they show an earlier text.)

Execution reuses the instructor build's cache (_build/.jupyter_cache), so
after ``make book`` no notebook runs again.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ssm_book  # noqa: E402

ROOT = ssm_book.ROOT
EXT_DIR = pathlib.Path(__file__).resolve().parent


def student_config(source: pathlib.Path = ROOT / "_config.yml", execute: str = "cache", root: pathlib.Path = ROOT) -> str:
    """_config.yml for the student build: hidden solutions, the book's extension, absolute paths."""
    config = yaml.safe_load(source.read_text())
    sphinx = config.setdefault("sphinx", {})
    sphinx.setdefault("config", {})["hide_solutions"] = True
    local = {name: str((root / path).resolve()) for name, path in (sphinx.get("local_extensions") or {}).items()}
    local["ssm_book"] = str(EXT_DIR)
    sphinx["local_extensions"] = local
    ex = config.setdefault("execute", {})
    ex["execute_notebooks"] = execute
    if execute == "cache":
        ex["cache"] = str(root / "_build" / ".jupyter_cache")  # the instructor build's executed notebooks
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def build(out: pathlib.Path, execute: str = "cache", root: pathlib.Path = ROOT, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run jupyter-book on ``root`` with the student configuration; the HTML lands in out/_build/html."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "_config.yml").write_text(student_config(root / "_config.yml", execute, root))
    jb = pathlib.Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(root), "--config", str(out / "_config.yml"), "--path-output", str(out),
           "-W", "-n", "--keep-going", *(extra or [])]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}   # the kernels' inline backend renders figures
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _pages(html_dir: pathlib.Path):
    """(relative path, normalised text) of every page and downloadable source in a built book."""
    for path in sorted(html_dir.rglob("*")):
        if path.suffix == ".html":
            yield path.relative_to(html_dir), ssm_book.html_text(path.read_text(errors="replace"))
        elif path.suffix == ".ipynb":
            yield path.relative_to(html_dir), ssm_book.notebook_text(json.loads(path.read_text()), with_outputs=True)
        elif path.suffix in (".md", ".txt") and "_sources" in path.parts:
            yield path.relative_to(html_dir), ssm_book.normalise(path.read_text(errors="replace"))


def _public_text(root: pathlib.Path) -> str:
    """The normalised text of everything in the book that is not a solution: the pages and the stripped chapters."""
    parts = [ssm_book.normalise(p.read_text(errors="replace")) for p in sorted((root / "book").glob("*.md"))]
    for nb in sorted((root / "chapters").glob("*.ipynb")):
        parts.append(ssm_book.notebook_text(ssm_book.strip_solutions(json.loads(nb.read_text()))))
    return "\n".join(parts)


def solution_fingerprints(notebook: pathlib.Path) -> dict[str, set[str]]:
    """label -> fingerprints of its solution that occur nowhere else in the book's sources.

    A piece of a solution that the exercise, the chapter or another page also
    says (a formula, a call like ``check("ch02.zoh", zoh)``) may legitimately
    remain, so it is not a fingerprint.
    """
    nb = json.loads(notebook.read_text())
    rest = ssm_book.notebook_text(ssm_book.strip_solutions(nb))
    root = notebook.resolve().parents[1]
    if (root / "book").is_dir():
        rest += "\n" + _public_text(root)
    out = {}
    for ex in ssm_book.exercises(nb):
        if ex.solution:
            out[ex.label] = {fp for fp in ssm_book.fingerprints(ex.solution_parts)
                             if not any(ssm_book.contains(part, fp) for part in rest.split("\n"))}
    return out


def check(student_html: pathlib.Path, notebooks: list[pathlib.Path], instructor_html: pathlib.Path | None = None) -> list[str]:
    """Problems found in a student build (an empty list when it is clean). See the module docstring."""
    problems = []
    pages = dict(_pages(student_html))
    if not pages:
        return [f"no pages found in {student_html}"]
    teacher = dict(_pages(instructor_html)) if instructor_html and instructor_html.is_dir() else None
    for notebook in notebooks:
        if pathlib.Path("chapters", notebook.stem + ".html") not in pages:
            continue                            # not part of this build (not in the table of contents)
        nb = json.loads(notebook.read_text())
        page = pages[pathlib.Path("chapters", notebook.stem + ".html")]
        for ex in ssm_book.exercises(nb):
            if ssm_book.normalise(ex.title) and not ssm_book.contains(page, ssm_book.normalise(ex.title)):
                problems.append(f"{notebook.name}: exercise {ex.label} ({ex.title!r}) is missing from the student page")
        raw = (student_html / "chapters" / (notebook.stem + ".html"))
        if raw.exists():
            text = raw.read_text(errors="replace")
            if 'class="solution' in text or "admonition solution" in text:
                problems.append(f"{raw.relative_to(student_html)}: a solution admonition is rendered")
            hints = sum(ex.hints for ex in ssm_book.exercises(nb))
            if text.count("Hint</p>") < hints:
                problems.append(f"{raw.relative_to(student_html)}: {hints} hints expected, {text.count('Hint</p>')} rendered")
        for label, fps in solution_fingerprints(notebook).items():
            if not fps:
                problems.append(f"{notebook.name}: the solution to {label} has no text of its own to check for")
                continue
            for where, text in pages.items():
                leaked = sorted(fp for fp in fps if ssm_book.contains(text, fp))
                if leaked:
                    problems.append(f"{where}: text of the solution to {label} remains: {leaked[0][:80]!r}"
                                    + (f" (and {len(leaked) - 1} more)" if len(leaked) > 1 else ""))
            teacher_page = instructor_html / "chapters" / (notebook.stem + ".html") if teacher is not None else None
            # calibrate only against an instructor page built after the notebook last changed
            if teacher_page is not None and teacher_page.exists() and teacher_page.stat().st_mtime >= notebook.stat().st_mtime:
                page_t = teacher.get(pathlib.Path("chapters", notebook.stem + ".html"), "")
                if not any(ssm_book.contains(page_t, fp) for fp in fps):
                    problems.append(f"{notebook.name}: no text of the solution to {label} is found in the instructor "
                                    "build either, so this check cannot see it")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python book/_ext/student_build.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "_build" / "student")
    parser.add_argument("--execute", default="cache", choices=["cache", "force", "off"])
    parser.add_argument("--check-only", action="store_true", help="check an existing student build")
    args = parser.parse_args(argv)
    if not args.check_only:
        result = build(args.out, args.execute)
        (args.out / "build.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            print((result.stdout + result.stderr)[-4000:])
            print(f"The student build failed; the log is in {args.out / 'build.log'}")
            return 1
    html_dir = args.out / "_build" / "html"
    instructor = ROOT / "_build" / "html"
    notebooks = sorted((ROOT / "chapters").glob("*.ipynb"))
    problems = check(html_dir, notebooks, instructor if instructor.is_dir() else None)
    for p in problems:
        print("✗", p)
    if problems:
        print(f"The student build at {html_dir} is not clean: {len(problems)} problem(s).")
        return 1
    calibrated = "" if instructor.is_dir() else " (no instructor build in _build/html to calibrate against: run make book first)"
    print(f"✓ No solution text in the student build{calibrated}.\n"
          f"Open: file://{html_dir.resolve()}/index.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
