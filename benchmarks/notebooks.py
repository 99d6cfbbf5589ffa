"""Execute every chapter notebook top to bottom and record how long each took.

    python -m benchmarks.notebooks [--out FILE] [chapters/NN_name.ipynb ...]

Runs each notebook in a fresh kernel (from the chapters/ folder, as a reader
would), unchanged: on a GPU machine the notebooks pick their GPU sizes
themselves. Writes book/data/notebook_times/<device-slug>.json with the
device, library versions, date and per-notebook seconds, and exits non-zero
if any notebook fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    import nbformat
    import torch
    from nbclient import NotebookClient

    import ssm_edu
    from benchmarks.suite import gpu_slug

    parser = argparse.ArgumentParser(prog="python -m benchmarks.notebooks")
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    parser.add_argument("--save-dir", type=pathlib.Path, help="also write each executed notebook (with its outputs) here")
    parser.add_argument("--slow", type=float, default=10.0, help="print the cells that take longer than this (seconds)")
    parser.add_argument("--note", default="", help="a sentence stored with the run (what else shared the machine, say)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "chapters").glob("*.ipynb"))
    device = ssm_edu.device_name()
    out = args.out or ROOT / "book" / "data" / "notebook_times" / f"{gpu_slug(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, failed = [], False
    for path in paths:
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
            failed = True
        seconds = time.perf_counter() - start
        rows.append({"notebook": path.name, "seconds": round(seconds, 1), "ok": error is None, **({"error": error} if error else {})})
        print(f"{path.name:40s} {seconds:8.1f} s  {'ok' if error is None else 'FAILED'}", flush=True)
        if error:
            print(error, file=sys.stderr, flush=True)
        if args.save_dir:
            args.save_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, args.save_dir / path.name)
        # written after every notebook, so that a run cut short keeps what it measured
        doc = {"device": device, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
               "threads": torch.get_num_threads(), **({"note": args.note} if args.note else {}),
               "results": rows}  # threads: the kernels inherit OMP_NUM_THREADS
        out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"written {out}")
    return 1 if failed else 0


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
