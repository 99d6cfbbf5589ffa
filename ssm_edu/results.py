"""Measured GPU results, as the chapters and the performance appendix read them.

The benchmark suite (``python -m benchmarks``, on a GPU) writes one JSON file
per GPU model under ``book/data/benchmarks/``; this module only reads them, so
the book shows real measurements without a GPU at build time. Each row:

    {"op": "selective_scan", "impl": "triton", "pass": "fwd",
     "shape": "B8 D2048 L2048 N16", "dtype": "bf16",
     "median_us": 0.0, "floor_us": 0.0, "fraction_of_floor": 0.0,
     "date": "YYYY-MM-DD", "torch": "...", "triton": "..."}

``median_us`` is ``None`` (with a ``missing`` reason) for a peer that was not
available in that run. ``bwd_config`` names the backward kernel's launch
configuration of a training row timed before the current default. A copy of ``ssm_edu`` installed outside the repository
(Colab) has no data folder: every function then returns nothing, and the
chapters say where the measurements are published instead.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib

DATA = pathlib.Path(__file__).resolve().parents[1] / "book" / "data" / "benchmarks"
# What the chapters themselves measured in a recorded run of every notebook on a GPU (accuracies of trained
# models, say): benchmarks/notebooks.py sets SSM_EDU_RECORD_DIR, the chapters call ``record``, and the files
# are committed here, one per device, so that the prose can quote the GPU run it describes.
CHAPTER_RUNS = DATA.parent / "chapter_runs"

# The performance goals of the book's kernels (set 2026-11-27, training passes 2026-12-07): the
# operation, the goal row's shape, pass and dtype, the peer it must beat, and
# the least fraction of the roofline floor it must reach.
GOALS = [
    {"op": "selective_scan", "shape": "B8 D2048 L2048 N16", "pass": "fwd", "dtype": "bf16", "peer": "mamba_ssm", "min_floor": 0.50},
    {"op": "selective_scan", "shape": "B8 D2048 L2048 N16", "pass": "fwd+bwd", "dtype": "bf16", "peer": "mamba_ssm", "min_floor": 0.0},
    {"op": "ssd", "shape": "B4 L4096 H128 P64 N128 G1", "pass": "fwd", "dtype": "bf16", "peer": "mamba_ssm", "min_floor": 0.34},
    {"op": "ssd", "shape": "B4 L4096 H128 P64 N128 G1", "pass": "fwd+bwd", "dtype": "bf16", "peer": "mamba_ssm", "min_floor": 0.20},
    {"op": "selective_state_update", "shape": "B256 H80 P64 N128", "pass": "fwd", "dtype": "fp32", "peer": "mamba_ssm", "min_floor": 0.85},
    {"op": "mamba3", "shape": "B4 L4096 H32 P64 N128 G1", "pass": "fwd", "dtype": "bf16", "peer": "mamba_ssm", "min_floor": 0.0},
    {"op": "mamba3", "shape": "B4 L4096 H32 P64 N128 G1", "pass": "fwd+bwd", "dtype": "bf16", "peer": "mamba_ssm", "min_floor": 0.0},
    {"op": "causal_conv", "shape": "B64 H768 L4096", "pass": "fwd", "dtype": "bf16", "peer": "torch", "min_speedup": 2.0},
]


def newest_log(folder: pathlib.Path, pattern: str, measured, device: str | None = None) -> dict | None:
    """The newest (by ``date``) of the JSON logs in ``folder`` named by ``pattern`` for which ``measured(doc)``
    holds (a run on a GPU, not a dry run), and of ``device`` when it is given; None where there is none (a copy
    of ``ssm_edu`` installed without the book's data has no folder)."""
    found = []
    for path in sorted(folder.glob(pattern)) if folder.is_dir() else []:
        doc = json.loads(path.read_text())
        if measured(doc) and (device is None or doc.get("device") == device):
            found.append(doc)
    return max(found, key=lambda d: d.get("date", "")) if found else None


def devices() -> list[dict]:
    """Every results file: its device, versions, date and rows (an empty list without data)."""
    if not DATA.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(DATA.glob("*.json"))]


def rows(op: str | None = None, device: str | None = None, **match) -> list[dict]:
    """Rows of one operation (all by default), optionally filtered by any field, each with its ``device``."""
    out = []
    for doc in devices():
        if device and doc["device"] != device:
            continue
        for r in doc["results"]:
            if (op is None or r["op"] == op) and all(r.get(k) == v for k, v in match.items()):
                out.append({"device": doc["device"]} | r)
    return out


def median_us(op: str, impl: str, shape: str, pass_: str = "fwd", device: str | None = None) -> float | None:
    """The measured median of one row, or None when it was not measured (or is missing)."""
    found = [r for r in rows(op, device, impl=impl, shape=shape, **{"pass": pass_}) if r.get("median_us")]
    return found[0]["median_us"] if found else None


def goal_table(device: str | None = None) -> list[dict]:
    """One line per goal: our time, the peer's, the speed-up, the fraction of the floor, and whether it is met."""
    table = []
    for g in GOALS:
        for doc in devices():
            if device and doc["device"] != device:
                continue
            kw = dict(shape=g["shape"], pass_=g["pass"], device=doc["device"])
            ours = median_us(g["op"], "triton", **kw)
            peer = median_us(g["op"], g["peer"], **kw)
            floor = [r["floor_us"] for r in rows(g["op"], doc["device"], impl="triton", shape=g["shape"], **{"pass": g["pass"]})
                     if r.get("floor_us")]
            line = {"device": doc["device"], "op": g["op"], "shape": g["shape"], "pass": g["pass"], "dtype": g["dtype"],
                    "peer": g["peer"],
                    "ours_us": ours, "peer_us": peer, "floor_us": floor[0] if floor else None}
            line["speedup"] = peer / ours if ours and peer else None
            line["fraction_of_floor"] = line["floor_us"] / ours if ours and line["floor_us"] else None
            need_speed = g.get("min_speedup", 1.0 + 1e-9)
            line["met"] = (
                line["speedup"] is not None and line["speedup"] >= need_speed
                and (line["fraction_of_floor"] or 0.0) >= g.get("min_floor", 0.0)
            )
            table.append(line)
    return table


def record(chapter: str, **values) -> None:
    """Keep ``values`` (JSON-able) of a chapter's recorded run; a no-op unless ``SSM_EDU_RECORD_DIR`` is set.

    A reader's run records nothing. ``python -m benchmarks.notebooks`` sets the
    variable, and each call merges into ``<dir>/<chapter>.json`` with the device,
    the torch version and the date.
    """
    folder = os.environ.get("SSM_EDU_RECORD_DIR")
    if not folder:
        return
    import torch

    from .device import device_name

    path = pathlib.Path(folder) / f"{chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.update(device=device_name(), torch=torch.__version__, date=datetime.date.today().isoformat())
    doc.setdefault("values", {}).update(values)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def recorded(chapter: str) -> list[dict]:
    """The committed records of a chapter, one per device: ``{"device", "torch", "date", "values"}``."""
    if not CHAPTER_RUNS.is_dir():
        return []
    out = []
    for path in sorted(CHAPTER_RUNS.glob("*.json")):
        doc = json.loads(path.read_text())
        if chapter in doc.get("chapters", {}):
            out.append({"device": doc["device"], **doc["chapters"][chapter]})
    return out


__all__ = ["DATA", "CHAPTER_RUNS", "GOALS", "devices", "rows", "median_us", "goal_table", "record", "recorded"]
