"""Execute every chapter notebook top to bottom and record how long each took.

    python -m benchmarks.notebooks [--out FILE] [--jobs N] [chapters/NN_name.ipynb ...]

Runs each notebook in a fresh kernel (from its own folder, as a reader
would), unchanged: on a GPU machine the notebooks pick their GPU sizes
themselves. Writes book/data/notebook_times/<device-slug>.json with the
device, library versions, date and per-notebook seconds, and exits non-zero
if any notebook fails. By default every chapter and the book's notebook
pages (book/*.ipynb) run.

What the chapters measure themselves (``ssm_edu.results.record``: accuracies
of the models they train, say) is collected too: the kernels run with
``SSM_EDU_RECORD_DIR`` set, and the records are combined into
``chapter_runs.json`` beside the times, in the form that
``book/data/chapter_runs/<device-slug>.json`` keeps and the chapters quote.

``--jobs N`` runs N notebooks side by side (each in its own kernel), longest
first by the last recorded times: on a GPU machine with many cores the whole
book then takes about as long as its slowest chapter. Times measured that way
share the machine (the JSON's ``jobs`` field says how many ran together).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    import torch

    import ssm_edu
    from benchmarks.suite import gpu_slug

    parser = argparse.ArgumentParser(prog="python -m benchmarks.notebooks")
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    parser.add_argument("--save-dir", type=pathlib.Path, help="also write each executed notebook (with its outputs) here")
    parser.add_argument("--slow", type=float, default=10.0, help="print the cells that take longer than this (seconds)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks run side by side (each in its own kernel)")
    parser.add_argument("--note", default="", help="a sentence stored with the run (what else shared the machine, say)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "chapters").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.ipynb"))
    device = ssm_edu.device_name()
    out = args.out or ROOT / "book" / "data" / "notebook_times" / f"{gpu_slug(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    order = _longest_first(paths, ROOT / "book" / "data" / "notebook_times" / out.name)
    records = (out.parent / "chapter_records").resolve()  # absolute: the kernels run in the notebooks' folders
    shutil.rmtree(records, ignore_errors=True)  # this run's records only
    os.environ["SSM_EDU_RECORD_DIR"] = str(records)  # inherited by every kernel: ssm_edu.results.record writes there
    rows, failed = {}, False

    def write():  # after every notebook, so that a run cut short keeps what it measured
        doc = {"device": device, "torch": torch.__version__, "triton": _triton_version(),
               "date": datetime.date.today().isoformat(),
               "threads": torch.get_num_threads(), "jobs": args.jobs, **({"note": args.note} if args.note else {}),
               "results": [rows[p.name] for p in paths if p.name in rows]}  # threads: the kernels inherit OMP_NUM_THREADS
        out.write_text(json.dumps(doc, indent=1) + "\n")

    # processes, not threads: each runs its own client and kernel, and a notebook that kills its client cannot
    # take the others with it
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=spawn) as pool:
        futures = [pool.submit(_execute, path, args) for path in order]
        for future in concurrent.futures.as_completed(futures):
            row = future.result()
            rows[row["notebook"]] = row
            failed |= not row["ok"]
            print(f"{row['notebook']:40s} {row['seconds']:8.1f} s  {'ok' if row['ok'] else 'FAILED'}", flush=True)
            if not row["ok"]:
                print(row["error"], file=sys.stderr, flush=True)
            write()
    print(f"written {out}")
    if records.is_dir():
        chapters = {p.stem: {k: v for k, v in json.loads(p.read_text()).items() if k != "device"}
                    for p in sorted(records.glob("*.json"))}
        runs = out.parent / "chapter_runs.json"
        runs.write_text(json.dumps({"device": device, "chapters": chapters}, indent=1) + "\n")
        print(f"written {runs} (chapters: {', '.join(chapters)})")
    return 1 if failed else 0


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _longest_first(paths, recorded):
    """The notebooks ordered by their times in the ``recorded`` run, slowest first (unknown ones first of all)."""
    try:
        last = {r["notebook"]: r["seconds"] for r in json.loads(recorded.read_text())["results"]}
    except (OSError, ValueError, KeyError):
        last = {}
    return sorted(paths, key=lambda p: -last.get(p.name, float("inf")))


def _execute(path, args) -> dict:
    """Run one notebook in a fresh kernel; its row of the results (with the error, if any)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.on_cell_executed = _cell_timer(path.name, args.slow)
    start = time.perf_counter()
    try:
        client.execute()
        error = None
    except Exception as err:  # report every notebook, then fail
        error = f"{type(err).__name__}: {str(err)[-2000:]}"
    seconds = time.perf_counter() - start
    if args.save_dir:
        args.save_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, args.save_dir / path.name)
    return {"notebook": path.name, "seconds": round(seconds, 1), "ok": error is None, **({"error": error} if error else {})}


def _cell_timer(name, slow):
    """A callback for nbclient that prints the cells slower than ``slow`` seconds (where the time goes)."""
    last = [time.perf_counter()]

    def done(cell, cell_index, execute_reply):
        now = time.perf_counter()
        if now - last[0] > slow:
            first = cell.source.strip().splitlines()[0][:70] if cell.source.strip() else ""
            print(f"  {name} cell {cell_index}: {now - last[0]:.1f} s  {first}", flush=True)
        last[0] = now

    return done


if __name__ == "__main__":
    raise SystemExit(main())
