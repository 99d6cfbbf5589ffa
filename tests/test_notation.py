"""Every symbol of the chapters' mathematics appears on the notation page (book/notation.md).

A symbol here is what a reader must be able to look up: a Latin or Greek
letter, a decorated one ($\\bar A$, $\\tilde C$, $\\hat K$) or a set
($\\mathbb R$). Words inside \\text{}, \\mathrm{} and \\operatorname{} are not
symbols. The test reads the math of each chapter's markdown cells and of the
notation page in the same way and reports what the page lacks, by chapter.
"""

import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))

GREEK = set(r"""alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi pi rho
sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega ell""".split())
_MATH = re.compile(r"\$\$(.*?)\$\$|\$([^$\n]+)\$|\\begin\{(align\*?|equation\*?|gather\*?)\}(.*?)\\end\{\3\}", re.S)
_WORDS = re.compile(r"\\(?:text|mathrm|operatorname|textrm|texttt|mathtt|begin|end|label|tag)\s*\{[^{}]*\}")
_BASE = r"(?:[A-Za-z]|\\[A-Za-z]+)"


def _math(markdown: str) -> list[str]:
    markdown = re.sub(r"```(?!\{).*?```", "", markdown, flags=re.S)   # code blocks hold no math
    markdown = re.sub(r"`[^`\n]*`", "", markdown)                      # nor does inline code
    return [m.group(1) or m.group(2) or m.group(4) or "" for m in _MATH.finditer(markdown)]


def symbols(markdown: str) -> set[str]:
    """The symbols of the math in a markdown text, normalised (e.g. 'A', '\\lambda', '\\bar A', '\\mathbb R')."""
    found = set()
    for tex in _math(markdown):
        tex = _WORDS.sub(" ", tex)
        tex = re.sub(r"\\(?:mathbb|mathcal|mathbf|boldsymbol)\s*\{?\s*(\w)\s*\}?", lambda m: f" SET{m.group(1)} ", tex)
        for deco, base in re.findall(r"\\(bar|tilde|hat|overline)\s*\{?\s*(" + _BASE + r")", tex):
            found.add(f"\\{'bar' if deco == 'overline' else deco} {base}")
        for name in re.findall(r"\\([A-Za-z]+)", tex):
            if name in GREEK:
                found.add("\\" + name)
        for s in re.findall(r"SET(\w)", tex):
            found.add(f"\\mathbb {s}")
        plain = re.sub(r"\\[A-Za-z]+|SET\w", " ", tex)
        found |= set(re.findall(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])", plain))
    return found


def _markdown(path: pathlib.Path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")


def test_the_extraction_sees_what_it_should():
    found = symbols(r"Let $\bar A = e^{\Delta A}$ and $\tilde C \in \mathbb{C}^{N}$, "
                    r"$$\text{for all } k \quad \operatorname{Re}\lambda_k < 0$$")
    # a decorated letter counts as the letter too (C from \tilde C)
    assert found == {"\\bar A", "e", "\\Delta", "A", "\\tilde C", "C", "\\mathbb C", "N", "k", "\\lambda"}


def test_notation_page_lists_symbols_of_every_kind():
    page = symbols((ROOT / "book" / "notation.md").read_text())
    assert {"A", "\\Delta", "\\bar A", "\\mathbb R"} <= page


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_symbol_of_the_chapter_is_on_the_notation_page(path):
    page = symbols((ROOT / "book" / "notation.md").read_text())
    missing = sorted(symbols(_markdown(path)) - page)
    assert not missing, f"add to book/notation.md: {', '.join(missing)}"
