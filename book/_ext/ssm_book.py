"""The book's own Sphinx extension: tables built from the repository, and the student build.

Directives (used by book/course_guide.md; any page may use them):

``{notebook-run-times}``
    The measured run time of every notebook on every device that has a file in
    book/data/notebook_times/ (CPU and GPU runs side by side), rendered
    through benchmarks/notebook_table.py, the one loader of those files.
``{learning-objectives}``
    Each chapter's "after this chapter you will be able to" list, taken from
    its notebook, under a link to the chapter.
``{exercise-index}``
    Every exercise of every chapter: its kind (the ``:class:`` of its
    ``{exercise}`` directive: derivation, implementation or experiment) and the
    ``ssm_edu.exercises.check`` names its cells call.

Pages that use them are read again at every build: new measurement files
and changed notebooks must show.

The student build (``make book-student``) sets sphinx-exercise's
``hide_solutions``. sphinx-exercise 1.2 then drops ``{solution}`` blocks, but
not gated ones: ``{solution-start}`` returns nothing while ``{solution-end}``
still leaves a node no HTML writer knows, and the cells in between (code and
outputs included) stay on the page. With ``hide_solutions`` on, this
extension lets the gated solution be built and merged as usual and then
removes every solution node from the doctree; at the end of the build it
also strips the solutions from the notebooks copied to ``_sources/`` (the
download button). With ``hide_solutions`` off it changes nothing.

The notebook parsing (exercises, hints, solutions and their text) lives here
too, so that the student-build check (book/_ext/student_build.py) and the
tests read the notebooks exactly as this extension does.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
KINDS = ("derivation", "implementation", "experiment")

# ----------------------------------------------------------------------------
# Reading exercises and solutions out of a notebook
# ----------------------------------------------------------------------------

_OPEN = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[\w:-]+)\}[ \t]*(?P<arg>.*)$")
_CHECK = re.compile(r"""check\(\s*["']([\w.]+)["']""")


@dataclasses.dataclass
class ExerciseInfo:
    """One ``{exercise}`` of a notebook, with what belongs to it."""

    label: str
    title: str
    kinds: tuple[str, ...]
    cell: int                                   # index of the cell that opens it
    hints: int = 0                              # hint admonitions before the next exercise
    solution: str | None = None                 # "plain" or "gated"
    solution_parts: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (cell type, text)
    checks: list[str] = dataclasses.field(default_factory=list)                       # check("...") names


def _cells(nb) -> list[tuple[str, str]]:
    return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]


def _blocks(text: str):
    """Top-level fenced directives of a markdown cell: (name, argument, options, body, start, end) in lines."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i].strip())
        if not m:
            i += 1
            continue
        fence = m["fence"]
        j = i + 1
        while j < len(lines) and not (set(lines[j].strip()) == {fence[0]} and len(lines[j].strip()) >= len(fence)):
            j += 1
        body = lines[i + 1 : j]
        options = {}
        while body and body[0].startswith(":") and re.match(r"^:[\w-]+:", body[0]):
            key, _, value = body[0][1:].partition(":")
            options[key] = value.strip()
            body = body[1:]
        yield m["name"], m["arg"].strip(), options, "\n".join(body), i, min(j, len(lines) - 1)
        i = j + 1


def exercises(nb: dict | str | pathlib.Path) -> list[ExerciseInfo]:
    """The exercises of a notebook (a path or its JSON), in order, with hints, solutions and checks."""
    if not isinstance(nb, dict):
        nb = json.loads(pathlib.Path(nb).read_text())
    found: list[ExerciseInfo] = []
    by_label: dict[str, ExerciseInfo] = {}
    gated: ExerciseInfo | None = None           # inside a gated solution
    for index, (kind, text) in enumerate(_cells(nb)):
        if kind != "markdown":
            if gated is not None:
                gated.solution_parts.append((kind, text))
            if found and kind == "code":
                found[-1].checks += _CHECK.findall(text)
            continue
        lines = text.split("\n")
        taken = 0                               # lines of this cell already assigned to a gated solution
        for name, arg, options, body, start, end in _blocks(text):
            if gated is not None and name != "solution-end":
                continue                        # a directive inside a gated solution belongs to it
            if name in ("exercise", "exercise-start"):
                label = options.get("label", "")
                classes = tuple(c for c in re.split(r"[\s,]+", options.get("class", "")) if c)
                ex = ExerciseInfo(label, arg, tuple(c for c in classes if c in KINDS), index)
                ex.checks += _CHECK.findall(body)
                found.append(ex)
                by_label[label] = ex
            elif name == "admonition" and arg.lower().startswith("hint") and found:
                found[-1].hints += 1
            elif name == "solution" and arg in by_label:
                by_label[arg].solution = "plain"
                by_label[arg].solution_parts.append(("markdown", body))
            elif name == "solution-start" and arg in by_label:
                gated = by_label[arg]
                gated.solution = "gated"
                taken = end + 1
            elif name == "solution-end" and gated is not None:
                gated.solution_parts.append(("markdown", "\n".join(lines[taken:start])))
                gated, taken = None, end + 1
        if gated is not None and taken < len(lines):
            gated.solution_parts.append(("markdown", "\n".join(lines[taken:])))
    return found


def objectives(nb: dict | str | pathlib.Path) -> list[str]:
    """The markdown bullet list that follows "you will be able to" in a notebook's opening cells."""
    if not isinstance(nb, dict):
        nb = json.loads(pathlib.Path(nb).read_text())
    for kind, text in _cells(nb)[:4]:
        if kind != "markdown" or "able to" not in text:
            continue
        items = []
        for line in text.split("able to", 1)[1].split("\n")[1:]:
            if line.startswith("- ") or (items and line.startswith("  ") and line.strip()):
                items.append(line)
            elif items:
                break                           # the first line after the list ends it
        return items
    return []


def strip_solutions(nb: dict) -> dict:
    """A copy of the notebook without its solutions (plain and gated); everything else unchanged."""
    nb = json.loads(json.dumps(nb))
    cells, inside = [], False
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] != "markdown":
            if not inside:
                cells.append(cell)
            continue
        lines = text.split("\n")
        keep = [not inside] * len(lines)
        for name, _arg, _options, _body, start, end in _blocks(text):
            if name == "solution" and not inside:
                keep[start : end + 1] = [False] * (end + 1 - start)
            elif name == "solution-start" and not inside:
                inside = True
                keep[start:] = [False] * (len(lines) - start)
            elif name == "solution-end" and inside:
                inside = False
                keep[end + 1 :] = [True] * (len(lines) - end - 1)
        kept = "\n".join(line for line, k in zip(lines, keep) if k).strip("\n")
        if kept.strip():
            cell["source"] = kept.splitlines(keepends=True)
            cells.append(cell)
    nb["cells"] = cells
    return nb


# ----------------------------------------------------------------------------
# Text fingerprints: what of a solution must not appear in the student build
# ----------------------------------------------------------------------------

_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$|\\begin\{(\w+\*?)\}.*?\\end\{\1\}", re.S)
_ROLE = re.compile(r"\{[\w:-]+\}`[^`]*`")
_FENCE = re.compile(r"^\s*(`{3,}|:{3,}).*$|^:[\w-]+:.*$", re.M)


def normalise(text: str) -> str:
    """Lower case, words only: what survives rendering (markup, smart quotes, highlighting)."""
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


def fingerprints(parts: list[tuple[str, str]], min_words: int = 5) -> set[str]:
    """Normalised pieces of a solution that the rendered page contains verbatim.

    Markdown is cut at roles ({eq}, {cite:t}, ...), which render as other text,
    and at math, whose TeX is kept as its own piece (MathJax renders it in the
    browser, so the HTML holds the TeX). Code contributes each line.
    """
    found = set()
    for kind, text in parts:
        if kind == "code":
            pieces = text.split("\n")
            need = 4
        else:
            text = _FENCE.sub("\n", text)
            maths = [m.group(0) for m in _MATH.finditer(text)]
            pieces = maths + re.split(r"\n\s*\n", _ROLE.sub("\n\n", _MATH.sub("\n\n", text)))
            need = min_words
        for piece in pieces:
            norm = normalise(piece)
            if len(norm.split()) >= need and len(norm) >= 16:
                found.add(norm)
    return found


def html_text(page: str) -> str:
    """The normalised text of an HTML page (tags removed, entities decoded)."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S | re.I)
    page = re.sub(r"</?(p|div|li|ul|ol|tr|td|th|br|h\d|pre|section|table|dd|dt|dl)\b[^>]*>", "\n", page, flags=re.I)
    return normalise(html.unescape(re.sub(r"<[^>]+>", "", page)))


def notebook_text(nb: dict, with_outputs: bool = False) -> str:
    """The normalised text of a notebook's cells (sources, and text outputs if asked)."""
    out = []
    for cell in nb["cells"]:
        out.append("".join(cell["source"]))
        if with_outputs:
            for o in cell.get("outputs", []):
                out.append("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")))
    return normalise("\n".join(out))


def contains(haystack: str, needle: str) -> bool:
    """Whole-word containment of one normalised text in another."""
    return f" {needle} " in f" {haystack} "


# ----------------------------------------------------------------------------
# Sphinx: directives
# ----------------------------------------------------------------------------


def _notebook_table():
    """benchmarks/notebook_table.py, loaded by path (the book build does not put the repository on sys.path)."""
    name = "_ssm_book_notebook_table"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "notebook_table.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module              # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def _inline_math(text: str):
    """Text with $...$ spans as docutils nodes: plain text and inline maths (an exercise's title, say)."""
    from docutils import nodes

    parts = re.split(r"\$([^$]+)\$", text)  # even indices: text, odd: maths
    return [nodes.math(text=p) if i % 2 else nodes.Text(p) for i, p in enumerate(parts) if p]


def _table(nodes, header, rows, widths=None):
    table = nodes.table(classes=["ssm-table"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for w in widths or [1] * len(header):
        group += nodes.colspec(colwidth=w)
    head, body = nodes.thead(), nodes.tbody()
    group += head
    group += body
    for target, cells in ((head, [header]), (body, rows)):
        for cells_of_row in cells:
            row = nodes.row()
            for cell in cells_of_row:
                entry = nodes.entry()
                entry += cell if isinstance(cell, nodes.Node) else nodes.paragraph(text=str(cell))
                row += entry
            target += row
    return table


def setup(app):
    from docutils import nodes
    from sphinx import addnodes
    from sphinx.transforms import SphinxTransform
    from sphinx.util.docutils import SphinxDirective
    from sphinx_exercise.directive import SolutionStartDirective
    from sphinx_exercise.nodes import solution_node

    app.setup_extension("sphinx_exercise")

    def chapters_in_order(env) -> list[pathlib.Path]:
        """The chapter notebooks of the build, in the order of the table of contents."""
        order = []
        toc = getattr(env.app.config, "external_toc_path", None)
        if toc:
            path = pathlib.Path(toc) if pathlib.Path(toc).is_absolute() else pathlib.Path(env.srcdir) / toc
            if path.is_file():
                order = re.findall(r"file:\s*(chapters/[\w.-]+?)(?:\.ipynb)?\s*$", path.read_text(), re.M)
        docs = [f"chapters/{p.stem}" for p in sorted((ROOT / "chapters").glob("*.ipynb"))]
        docs = [d for d in docs if d in env.found_docs]
        rank = {d: i for i, d in enumerate(order)}
        return [ROOT / f"{d}.ipynb" for d in sorted(docs, key=lambda d: (rank.get(d, len(rank)), d))]

    def always_read(env):
        if not hasattr(env, "ssm_book_dynamic"):
            env.ssm_book_dynamic = set()
        env.ssm_book_dynamic.add(env.docname)

    class NotebookTimes(SphinxDirective):
        """``{notebook-run-times}``: the measured run time of every notebook, one column per device."""

        def run(self):
            always_read(self.env)
            nt = _notebook_table()
            for path in sorted(nt.TIMES_DIR.glob("*.json")):
                self.env.note_dependency(str(path))
            runs = nt.load()
            header, rows = nt.table(runs)
            out = [_table(nodes, header, rows)]
            if runs:
                notes = nodes.bullet_list()
                for line in nt.provenance(runs):
                    notes += nodes.list_item("", nodes.paragraph(text=line))
                out.append(notes)
            else:
                out.append(nodes.paragraph(text="No measurements yet: run python -m benchmarks.notebooks."))
            return out

    class ExerciseIndex(SphinxDirective):
        """``{exercise-index}``: every chapter's exercises, their kinds and automatic checks."""

        def run(self):
            always_read(self.env)
            nt, rows = _notebook_table(), []
            for path in chapters_in_order(self.env):
                self.env.note_dependency(str(path))
                for i, ex in enumerate(exercises(path)):
                    chapter = nodes.paragraph()
                    if i == 0:
                        ref = addnodes.pending_xref("", nodes.inline(text=nt.title(path.name)), refdomain="std",
                                                    reftype="doc", reftarget=f"/chapters/{path.stem}",
                                                    refexplicit=True, refwarn=True)
                        chapter += ref
                    title = nodes.paragraph()
                    title += addnodes.pending_xref("", nodes.inline(text=ex.title or ex.label), refdomain="std",
                                                   reftype="ref", reftarget=ex.label, refexplicit=True, refwarn=True)
                    checks = nodes.paragraph()
                    for k, name in enumerate(dict.fromkeys(ex.checks)):
                        checks += nodes.Text(", " if k else "")
                        checks += nodes.literal(text=name)
                    rows.append([chapter, title, ", ".join(ex.kinds) or "—", checks])
            table = _table(nodes, ["chapter", "exercise", "kind", "automatic check"], rows, [3, 4, 2, 3])
            table["classes"].append("exercise-index")  # its links' $...$ become maths once resolved (below)
            return [table]

    class LearningObjectives(SphinxDirective):
        """``{learning-objectives}``: each chapter's "you will be able to" list, read from its notebook."""

        def run(self):
            from docutils.statemachine import StringList

            always_read(self.env)
            nt, lines = _notebook_table(), []
            for path in chapters_in_order(self.env):
                self.env.note_dependency(str(path))
                number = int(path.stem[:2]) if path.stem[:2].isdigit() else 0
                label = f"Chapter {number}: " if number else ""
                lines += [f"**{label}{{doc}}`{nt.title(path.name)} </chapters/{path.stem}>`**", ""]
                lines += objectives(path) or ["(This chapter does not list its objectives.)"]
                lines.append("")
            node = nodes.container(classes=["ssm-objectives"])
            self.state.nested_parse(StringList(lines, source=self.env.docname), self.content_offset, node)
            return [node]

    class StudentSolutionStart(SolutionStartDirective):
        """Build gated solutions even when hidden, so that they merge into one node that can be removed."""

        def run(self):
            config = self.env.app.config
            hidden = config.hide_solutions
            config.hide_solutions = False
            try:
                return super().run()
            finally:
                config.hide_solutions = hidden

    class RemoveSolutions(SphinxTransform):
        """With hide_solutions: remove every solution node, after sphinx-exercise merged the gated ones (priority 10)."""

        default_priority = 11

        def apply(self):
            if self.config.hide_solutions:
                for node in list(self.document.findall(solution_node)):
                    node.parent.remove(node)

    def strip_sources(app, exception):
        """With hide_solutions: the notebooks offered for download lose their solutions too."""
        if exception is not None or not app.config.hide_solutions:
            return
        for path in pathlib.Path(app.outdir, "_sources").rglob("*.ipynb"):
            path.write_text(json.dumps(strip_solutions(json.loads(path.read_text())), indent=1, ensure_ascii=False) + "\n")

    def outdated(app, env, added, changed, removed):
        return sorted(getattr(env, "ssm_book_dynamic", set()) & set(env.found_docs))

    def purge(app, env, docname):
        getattr(env, "ssm_book_dynamic", set()).discard(docname)

    def merge(app, env, docnames, other):
        env.ssm_book_dynamic = getattr(env, "ssm_book_dynamic", set()) | (getattr(other, "ssm_book_dynamic", set()) & set(docnames))

    def maths_in_exercise_titles(app, doctree, docname):
        """An exercise's title may hold maths ($\\tilde C$): the resolved link's text is plain, so its
        $...$ spans become inline maths here, after the references are resolved."""
        for table in doctree.findall(nodes.table):
            if "exercise-index" not in table["classes"]:
                continue
            for ref in table.findall(nodes.reference):
                text = ref.astext()
                if "$" in text:
                    ref.clear()
                    ref += nodes.inline("", "", *_inline_math(text))

    app.connect("doctree-resolved", maths_in_exercise_titles)
    app.connect("env-get-outdated", outdated)
    app.connect("env-purge-doc", purge)
    app.connect("env-merge-info", merge)
    app.add_directive("notebook-run-times", NotebookTimes)
    app.add_directive("exercise-index", ExerciseIndex)
    app.add_directive("learning-objectives", LearningObjectives)
    app.add_directive("solution-start", StudentSolutionStart, override=True)
    app.add_transform(RemoveSolutions)
    app.connect("build-finished", strip_sources)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
