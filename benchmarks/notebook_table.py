"""Measured run times of the notebooks: the one loader every book page uses.

``python -m benchmarks.notebooks`` executes the chapter notebooks and writes
``book/data/notebook_times/<device-slug>.json``: on a CPU the file name starts
with ``cpu-``, on a GPU it is the GPU's slug. Each file holds::

    {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "date": "2026-05-01",
     "threads": 1,                       # optional: CPU threads the run used
     "triton": "3.6.0", "jobs": 4,       # optional: Triton's version; notebooks run side by side
     "note": "...",                      # optional: anything that affected the run, shown with it
     "results": [{"notebook": "01_continuous_time.ipynb", "seconds": 41.2, "ok": true}, ...]}

The course guide and the status page both render their tables from
:func:`load` and :func:`table`, so a new measurement (a new JSON file) shows up
on both pages at the next build and the numbers cannot disagree. Nothing here
needs torch: the book build imports it.
"""

from __future__ import annotations

import json
import pathlib
import re
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMES_DIR = ROOT / "book" / "data" / "notebook_times"
CHAPTERS_DIR = ROOT / "chapters"


@dataclass(frozen=True)
class Run:
    """One measurement file: a device, and each notebook's wall time on it."""

    path: pathlib.Path
    device: str
    kind: str                    # "cpu" or "gpu"
    date: str
    torch: str
    threads: int | None
    seconds: dict[str, float] = field(default_factory=dict)   # notebook file name -> seconds
    failed: frozenset[str] = frozenset()                        # notebooks that raised
    note: str = ""                                              # how the run went, where it matters
    triton: str | None = None
    jobs: int = 1                                               # notebooks that ran side by side

    @property
    def label(self) -> str:
        """Column heading: the device, and the thread count of a CPU run."""
        if self.kind == "cpu" and self.threads:
            return f"{self.device}, {self.threads} thread{'s' if self.threads > 1 else ''}"
        return self.device


def load(directory: pathlib.Path | str = TIMES_DIR) -> list[Run]:
    """Every measurement in ``directory``: CPU runs first, then GPU runs, each by name."""
    runs = []
    for path in sorted(pathlib.Path(directory).glob("*.json")):
        doc = json.loads(path.read_text())
        device = doc["device"]
        kind = "cpu" if path.name.startswith("cpu-") or device.upper().startswith("CPU") else "gpu"
        seconds = {r["notebook"]: float(r["seconds"]) for r in doc["results"]}
        failed = frozenset(r["notebook"] for r in doc["results"] if not r.get("ok", True))
        runs.append(Run(path, device, kind, doc.get("date", "?"), doc.get("torch", "?"),
                        doc.get("threads"), seconds, failed, doc.get("note", ""), doc.get("triton"),
                        int(doc.get("jobs", 1))))
    return sorted(runs, key=lambda r: (r.kind != "cpu", r.device))


def notebooks(directory: pathlib.Path | str = CHAPTERS_DIR) -> list[str]:
    """The notebook file names of the book, in file order (chapter number)."""
    return sorted(p.name for p in pathlib.Path(directory).glob("*.ipynb"))


def title(notebook: str, directory: pathlib.Path | str = CHAPTERS_DIR) -> str:
    """A notebook's title: the text of its first level-1 heading (or its file name)."""
    path = pathlib.Path(directory) / notebook
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return notebook
    for cell in cells:
        if cell["cell_type"] == "markdown":
            m = re.search(r"^#\s+(.+)$", "".join(cell["source"]), re.M)
            if m:
                return m.group(1).strip()
    return notebook


def format_seconds(seconds: float | None) -> str:
    """'45 s', '3.2 min'; an em dash for a notebook without a measurement."""
    if seconds is None:
        return "—"
    if seconds < 100:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def table(runs: list[Run] | None = None, names: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the run-time table: one row per notebook, one column per run.

    ``names`` defaults to the notebooks in chapters/ plus any notebook a run
    measured that is no longer there. A failed run shows "failed (N s)".
    """
    runs = load() if runs is None else runs
    names = list(names) if names is not None else notebooks()
    for run in runs:
        names += [n for n in sorted(run.seconds) if n not in names]
    header = ["notebook"] + [run.label for run in runs]
    rows = []
    for name in names:
        cells = [name.removesuffix(".ipynb")]
        for run in runs:
            text = format_seconds(run.seconds.get(name))
            cells.append(f"failed ({text})" if name in run.failed else text)
        rows.append(cells)
    return header, rows


def provenance(runs: list[Run] | None = None) -> list[str]:
    """One line per run: device, torch version, date and file, for a table's caption."""
    runs = load() if runs is None else runs
    lines = []
    for run in runs:
        versions = f"torch {run.torch}" + (f", Triton {run.triton}" if run.triton else "")
        shared = f", {run.jobs} notebooks side by side" if run.jobs > 1 else ""
        lines.append(f"{run.label}: {versions}, measured {run.date}{shared} ({run.path.name})"
                     + (f". {run.note}" if run.note else ""))
    return lines
