"""``{build-machine}``: when and on what this build ran (book/status.md).

One sentence: the date and time of the build, the CPU model, the number of
cores, and the Python and torch versions: the context of the CPU times that
``{nb-exec-table}`` lists on the same page (myst-nb records them while it
executes the notebooks). The recorded GPU runs come from
``{notebook-run-times}`` (book/_ext/ssm_book.py).

The status page is read again at every build: a page that reads the clock is
never up to date.
"""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class BuildMachine(SphinxDirective):
    def run(self):
        try:
            torch = metadata.version("torch")
        except metadata.PackageNotFoundError:
            torch = "not installed"
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = (f"This build: {now}, on {_cpu_model()} ({os.cpu_count()} logical cores, "
                f"{platform.system()} {platform.machine()}), Python {platform.python_version()}, torch {torch}.")
        return [nodes.paragraph(text=text)]


def _always_read(app, env, added, changed, removed):
    return [doc for doc in env.found_docs if doc == "book/status"]


def setup(app):
    app.add_directive("build-machine", BuildMachine)
    app.connect("env-get-outdated", _always_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
