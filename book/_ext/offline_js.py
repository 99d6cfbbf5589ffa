"""Serve MathJax and the Jupyter widget manager from the built book itself (offline builds).

By default the book's pages load MathJax 3 and ``@jupyter-widgets/html-manager``
from a CDN, which needs internet access while reading. ``make book`` (and the
test build) instead fetch both npm packages into ``build/js`` (``make js``,
never committed) and set ``SSM_BOOK_JS`` to ``build/js/static``, a folder
laid out as::

    vendor/mathjax/tex-mml-chtml.js   (mathjax's es5/ folder: loader, fonts, extensions)
    vendor/widgets/embed.js           (html-manager's standalone bundle, standard widgets)

With ``SSM_BOOK_JS`` set, this extension

* adds that folder to ``html_static_path``, so Sphinx copies it to
  ``_build/html/_static/vendor/`` (the folder is outside the book's own
  ``_static``, whose ``.js`` files Jupyter Book would inject into every page);
* points ``mathjax_path`` at the local MathJax;
* replaces myst-nb's widget scripts (RequireJS and the AMD bundle from CDNs)
  by the local standalone bundle, which renders the standard widgets from
  the state saved in the notebook.

Without ``SSM_BOOK_JS`` (the online build) the CDN URLs stay.

In both builds it also adds a two-line shim to every page: the widget manager
typesets widget labels through MathJax 2's API (``MathJax.Hub.Queue``), which
MathJax 3 lacks, so without the shim every widget view throws a TypeError
in the reader's browser. The shim forwards the call to MathJax 3.
"""

from __future__ import annotations

import os
from pathlib import Path

from sphinx.errors import ConfigError

ENV = "SSM_BOOK_JS"
MATHJAX = "vendor/mathjax/tex-mml-chtml.js"
WIDGETS = "vendor/widgets/embed.js"
# Registered for the window's 'load' event before the widget manager registers its own
# (this script comes first in the page), so MathJax.Hub exists when widgets render.
MATHJAX2_SHIM = """window.addEventListener("load", () => { const mj = window.MathJax;
  if (mj && mj.typesetPromise && !mj.Hub) mj.Hub = {Queue: (cmd) => mj.typesetPromise([cmd[2]]).catch(() => {})}; });"""


def _use_local_js(app, config):
    root = os.environ.get(ENV, "").strip()
    if not root:
        return
    root = Path(root).resolve()
    missing = [name for name in (MATHJAX, WIDGETS) if not (root / name).is_file()]
    if missing:
        raise ConfigError(f"{ENV}={root} lacks {', '.join(missing)}: run 'make js' (needs npm), or unset {ENV}")
    config.html_static_path = [*config.html_static_path, str(root)]
    config.mathjax_path = MATHJAX  # relative: Sphinx serves it from _static/
    config.nb_ipywidgets_js = {WIDGETS: {}}


def setup(app):
    # priority > 500: after Jupyter Book and myst-nb have set their values
    app.connect("config-inited", _use_local_js, priority=900)
    app.add_js_file(None, body=MATHJAX2_SHIM, priority=200)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
