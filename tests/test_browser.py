"""The browser checks themselves, on two small hand-written pages (seconds; no book build).

The real run over the built book is tests/test_book.py::test_book_in_a_browser.
These tests make sure that its checks can fail: a page with unrendered maths, a
broken image, a broken link, an error output, an unrendered widget and a CDN
script must report each of them, and a correct page, with MathJax served
locally as `make js` installs it, must report nothing.
"""

import os
import pathlib

import pytest

from browser import Chromium, check_book_page, find_chromium, listing_problems, serve

ROOT = pathlib.Path(__file__).resolve().parents[1]
JS = ROOT / "build" / "js" / "static"
REQUIRE_BROWSER = os.environ.get("SSM_BOOK_REQUIRE_BROWSER") == "1"

GOOD = r"""<!DOCTYPE html><html><head><title>good</title>
<script>window.MathJax = {options: {processHtmlClass: "math"}};</script>
<script defer src="vendor/mathjax/tex-mml-chtml.js"></script></head>
<body><article>
<h1 id="top">A page</h1>
<p>Inline <span class="math notranslate nohighlight">\(x_k = \bar{A} x_{k-1}\)</span> and displayed:</p>
<div class="math notranslate nohighlight">\[K_l = C \bar{A}^l \bar{B}\]</div>
<img src="_images/fig.png" alt="a figure">
<p><a href="#top">up</a> <a href="other.html#there">there</a></p>
<pre>print("\\(not maths, code\\)")</pre>
</article></body></html>"""

BAD = r"""<!DOCTYPE html><html><head><title>bad</title>
<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script></head>
<body><article>
<p>Inline <span class="math notranslate nohighlight">\(x_k\)</span>, and $$y = \sum_k K_k$$.</p>
<img src="_images/missing.png">
<p><a href="missing.html">gone</a> <a href="other.html#nowhere">no anchor</a></p>
<div class="cell_output"><pre>Traceback (most recent call last):
ValueError: discretize: A must have shape (N, N)</pre></div>
<script type="application/vnd.jupyter.widget-view+json">{"version_major": 2, "version_minor": 0, "model_id": "abc"}</script>
</article></body></html>"""

# The smallest valid PNG: one transparent pixel.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6300010000050001"
                    "0d0a2db40000000049454e44ae426082")


def _chromium():
    path = find_chromium()
    if path is None:
        if REQUIRE_BROWSER:
            pytest.fail("Chromium not found (apt-get install chromium); SSM_BOOK_REQUIRE_BROWSER=1")
        pytest.skip("Chromium not found (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "good.html").write_text(GOOD)
    (root / "bad.html").write_text(BAD)
    (root / "other.html").write_text('<html><body><p id="there">here</p></body></html>')
    kernel = "@triton.jit\ndef k(x_ptr):\n    pass"
    (root / "listing.html").write_text(f"<html><body><details><pre>{kernel}</pre></details></body></html>")
    (root / "wide.html").write_text(f"<html><body><pre>{kernel}  # {'x' * 90}</pre></body></html>")
    (root / "_images").mkdir()
    (root / "_images" / "fig.png").write_bytes(PNG)
    if (JS / ".installed").is_file():
        (root / "vendor").mkdir()
        (root / "vendor" / "mathjax").symlink_to(JS / "vendor" / "mathjax")
    return root


@pytest.mark.slow
def test_checks_catch_what_a_reader_would_see(site):
    with serve(site) as base, Chromium(_chromium()) as browser:
        report, problems = check_book_page(browser.open(f"{base}/bad.html"), base, site, chapter=True)
    text = "\n".join(problems)
    for expected in ("MathJax did not load", "maths not typeset", "raw TeX in the text", "image does not load",
                     "error output", "widget not rendered", "link to a missing file", "link to a missing anchor",
                     "request failed: https://cdn.jsdelivr.net"):
        assert expected in text, f"{expected!r} not reported; got:\n{text}"


@pytest.mark.slow
def test_local_mathjax_renders_offline(site):
    if not (site / "vendor" / "mathjax").is_dir():
        reason = "no local MathJax: run 'make js' (needs npm)"
        if REQUIRE_BROWSER:
            pytest.fail(reason)
        pytest.skip(reason)
    with serve(site) as base, Chromium(_chromium()) as browser:
        page = browser.open(f"{base}/good.html")
        report, problems = check_book_page(page, base, site, chapter=True)
        png = page.screenshot()
    assert problems == []
    assert report["mjx"] == 2 and report["math_elements"] == 2
    assert png.startswith(b"\x89PNG")


@pytest.mark.slow
def test_kernel_listing_check(site):
    """A folded listing counts; a page without one, and a listing wider than the column, are reported."""
    with serve(site) as base, Chromium(_chromium()) as browser:
        found = {name: listing_problems(browser.open(f"{base}/{name}.html")) for name in ("listing", "wide", "other")}
    assert found["listing"] == []
    assert "wider" not in found["wide"][0] and "characters" in found["wide"][0]
    assert "no Triton kernel source" in found["other"][0]
